"""Every example workflow converts to an API graph and executes to success on the server."""

from __future__ import annotations

import json

import pytest

from testsupport import WORKFLOWS


def test_there_are_example_workflows():
    assert any(p.name == "preview_synthetic.json" for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_executes(comfy_server, object_info, path):
    from workflow_api import ui_to_api

    workflow = json.loads(path.read_text())
    assert workflow.get("version") == 0.4 and workflow["nodes"] and "links" in workflow
    api = ui_to_api(workflow, object_info)
    result = comfy_server.run(api, timeout=900, workflow=workflow)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    for f in comfy_server.output_files(result):
        assert f.is_file() and f.stat().st_size > 0, f
