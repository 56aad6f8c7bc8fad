"""The pack in the real frontend: clean load, example workflows load, convert and execute."""

from __future__ import annotations

import json

import pytest

from testsupport import WORKFLOWS


def test_frontend_loads_without_page_errors(app_page):
    assert app_page.errors == []
    ours = {t for t in app_page.registered_types() if t.startswith("WorldStereo")}
    assert ours, "the frontend lists no WorldStereo node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_converts_and_executes(app_page, path):
    from workflow_api import ui_to_api

    workflow = json.loads(path.read_text())
    missing = {n["type"] for n in workflow["nodes"]} - app_page.registered_types() - {"Note", "Reroute", "MarkdownNote"}
    assert not missing, f"node types unknown to the frontend: {missing}"
    app_page.load_workflow(workflow)
    text = app_page.body_text()
    assert "Invalid workflow" not in text
    assert "missing" not in text.lower() or "Missing Node" not in text, text[:2000]
    assert app_page.errors == []

    api_from_page = app_page.api_graph()
    server = app_page.server
    # Our headless converter (used by the main job and by tests/integration/test_workflows.py,
    # which executes every workflow on the server) must agree with the frontend's.
    info = server.object_info()

    def declared(node_type: str) -> set[str]:
        spec = info[node_type]["input"]
        return set(spec.get("required", {})) | set(spec.get("optional", {}))

    # The page adds _meta titles and values of frontend-only widgets (Preview3D's "image"),
    # which the server ignores; compare what the server reads.
    page_graph = {
        k: {
            "class_type": v["class_type"],
            "inputs": {n: x for n, x in v["inputs"].items() if n in declared(v["class_type"])},
        }
        for k, v in api_from_page.items()
    }
    assert ui_to_api(workflow, info) == page_graph
    # The server accepts the page's graph (validation passes); the integration test already
    # runs the same graph to success, so it is cancelled here rather than run a third time.
    r = server.post("/prompt", json={"prompt": api_from_page, "client_id": "browser-test"})
    assert r.status_code == 200, r.text
    server.post("/queue", json={"delete": [r.json()["prompt_id"]]})
    server.interrupt()
