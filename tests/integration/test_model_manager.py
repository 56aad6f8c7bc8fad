"""Our models live under ComfyUI's memory manager: a run registers the bundle, the frontend's
"Unload models" (POST /free) offloads it, and the next run loads it back and still generates.
Uses the fp8 weight format and block swap, so their node path is exercised end to end (tiny, CPU)."""

from __future__ import annotations

import json
import time

from testsupport import WORKFLOWS, ci_overrides, write_tiny_weights_for


def _single_view_api(comfy_server, object_info) -> tuple[dict, dict]:
    """The shipped single-view workflow with the CI sizes and tiny weights under its real file names."""
    from workflow_api import ui_to_api

    path = next(p for p in WORKFLOWS if p.stem == "single_view")
    api = ui_to_api(json.loads(path.read_text()), object_info)
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    api = ci_overrides(api)
    ids = {node["class_type"]: key for key, node in api.items()}
    loader = api[ids["WorldStereoLoadModel"]]["inputs"]
    loader.update(weight_dtype="fp8_e4m3fn_scaled", blocks_to_swap=1)
    api[ids["WorldStereoSceneLoop"]]["inputs"]["trajectories"] = "orbit"
    return api, ids


def _wait_for(comfy_server, text: str, start: int, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = comfy_server.log()[start:]
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the server log:\n{comfy_server.log()[start:][-3000:]}")


def test_unload_models_offloads_the_bundle_and_the_next_run_reloads_it(comfy_server, object_info):
    api, ids = _single_view_api(comfy_server, object_info)
    start = len(comfy_server.log())
    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    # registered: ComfyUI's manager loaded our bundle like any of its models
    _wait_for(comfy_server, "Requested to load WorldStereoBundle", start)

    # the frontend's "Unload models" button
    start = len(comfy_server.log())
    assert comfy_server.post("/free", json={"unload_models": True}).status_code == 200
    _wait_for(comfy_server, "WorldStereo: offloaded dmd", start)

    # a new seed re-runs the loop with the cached (offloaded) model: it is loaded back and works
    start = len(comfy_server.log())
    api[ids["WorldStereoSceneLoop"]]["inputs"]["seed"] = 7
    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    _wait_for(comfy_server, "Requested to load WorldStereoBundle", start)
