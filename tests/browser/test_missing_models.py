"""A shipped workflow opened on a server without the model files: the frontend offers every model
the workflow declares, with its folder and official download URL.

What a workflow declares: a loader's ``properties.models`` entries whose name is one of its widget
values. The two frontends show them differently:

* 1.32.9 (served by ComfyUI 0.3.75): the missing-models dialog, shown only while the setting
  ``Comfy.Workflow.ShowMissingModelsWarning`` is on (the test turns it on). Each row reads
  ``<directory> / <name>`` and its download button carries the URL.
* 1.58.1: an "N issues found" toast whose *View details* opens the Issues panel. It scans the loader
  widgets whose value is a model file name (a file extension) absent from the combo's options, and
  takes the folder and URL from the node's ``properties.models``; each row reads the name and the
  folder, and *Copy URL* copies the model's page (the URL with ``/resolve/`` → ``/blob/``). The
  WorldStereo checkpoint is offered there too because its combo lists each checkpoint folder by its
  weights file (``worldstereo-memory-dmd/model.safetensors``), not by the folder name.

The browser never reaches the network: requests leaving the machine are aborted.
"""

from __future__ import annotations

import json

import pytest

from testsupport import REPO_ROOT

DIALOG_ROWS_JS = """() => Array.from(document.querySelectorAll('.comfy-missing-models [role=option]')).map(li => ({
  text: li.innerText.replace(/\\s+/g, ' ').trim(),
  titles: Array.from(li.querySelectorAll('[title]')).map(e => e.getAttribute('title')),
  error: li.querySelector('.p-message') ? li.querySelector('.p-message').innerText : null,
}))"""

# 1.58.1 Issues panel: the row of a model (the smallest element holding its name button and its
# "Download <name>" button); returns the row's text and clicks its Copy URL button
ISSUE_ROW_JS = """([name, click]) => {
  const label = Array.from(document.querySelectorAll('button[title]')).find(b => b.getAttribute('title') === name);
  if (!label) return null;
  const download = `button[aria-label="Download ${name}"]`;
  let row = label.parentElement;
  while (row && !row.querySelector(download)) row = row.parentElement;
  const copy = row && row.querySelector('button[aria-label="Copy URL"]');
  if (!copy) return {text: label.innerText, copy: false};
  if (click) copy.click();
  return {text: row.innerText.replace(/\\s+/g, ' ').trim(), copy: true};
}"""


def declared_models(workflow: dict) -> dict[tuple[str, str], str]:
    """``{(directory, name): url}`` of the loaders' ``properties.models`` entries their widgets select."""
    declared = {}
    for node in workflow["nodes"]:
        values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        for m in node.get("properties", {}).get("models", []):
            if m["name"] in values:
                declared[(m["directory"], m["name"])] = m["url"]
    return declared


@pytest.mark.parametrize("name", ["single_view", "uni3c"])
def test_missing_models_are_offered_with_folder_and_download_url(offline_app_page, name):
    app = offline_app_page
    ui_server = app.server
    workflow = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    declared = declared_models(workflow)
    assert "models" not in workflow  # every entry sits on the loader whose widget names it
    # the WorldStereo checkpoint, the Wan encoders, VAE and base model
    assert len(declared) >= 5 and any(directory == "worldstereo" for directory, _ in declared), declared
    for directory, file in declared:  # the server has none of them
        assert not (ui_server.base_dir / "models" / directory / file).exists()
    r = ui_server.post("/api/settings", json={"Comfy.Workflow.ShowMissingModelsWarning": True})
    assert r.ok, r.text
    try:
        app.open()  # the page reads its settings when it loads
        app.load_workflow(workflow)
        _check_offered(app.page, ui_server.frontend_label, declared)
    finally:  # the server is shared: later tests load workflows without the dialog
        ui_server.post("/api/settings", json={"Comfy.Workflow.ShowMissingModelsWarning": False})
    assert app.errors == []


def _check_offered(page, frontend: str, declared: dict) -> None:
    """Each declared model is offered with its folder and URL, in the frontend's own way (module doc)."""
    if frontend == "1.32.9":
        page.wait_for_selector(".comfy-missing-models [role=option]", timeout=30_000)
        rows = page.evaluate(DIALOG_ROWS_JS)
        assert len(rows) == len(declared), [r["text"] for r in rows]
        for (directory, file), url in declared.items():
            label = f"{directory} / {file}"
            found = [r for r in rows if label in r["text"]]
            assert found, f"{label} is not in the dialog: {[r['text'] for r in rows]}"
            assert url in found[0]["titles"], f"{label}: the dialog offers {found[0]['titles']}, not {url}"
            # the folder is one the server knows (else 'Invalid directory'), source and suffix allowed
            assert found[0]["error"] is None, f"{label}: {found[0]['error']}"
    else:
        page.get_by_text("View details").click(timeout=30_000)
        page.get_by_text("Missing Models").wait_for(timeout=30_000)
        for (directory, file), url in declared.items():
            row = page.evaluate(ISSUE_ROW_JS, [file, True])
            assert row is not None, f"{file} is not in the Issues panel"
            assert row["copy"], f"{file} has no download URL in the Issues panel"
            assert directory in row["text"].split(), f"{file}: the row reads {row['text']!r}, not {directory}"
            page.wait_for_timeout(200)
            copied = page.evaluate("() => navigator.clipboard.readText()")
            assert copied in (url, url.replace("/resolve/", "/blob/")), f"{file}: Copy URL gave {copied}"
