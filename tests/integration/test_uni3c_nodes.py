"""The Uni3C nodes refuse mismatched inputs before sampling, with errors that say what to connect."""

from __future__ import annotations

import json

from testsupport import WORKFLOWS, ci_overrides, write_tiny_weights_for


def _api(comfy_server, object_info) -> tuple[dict, dict]:
    """The shipped Uni3C workflow with the CI sizes and tiny weights under its real file names."""
    from workflow_api import ui_to_api

    path = next(p for p in WORKFLOWS if p.stem == "uni3c")
    api = ui_to_api(json.loads(path.read_text()), object_info)
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    api = ci_overrides(api)
    ids = {node["class_type"]: key for key, node in api.items()}
    return api, ids


def test_uni3c_control_needs_one_render_per_pose_of_a_1_plus_4k_trajectory(comfy_server, object_info):
    api, ids = _api(comfy_server, object_info)
    api[ids["WorldStereoTrajectoryBuilder"]]["inputs"]["num_frames"] = 80
    result = comfy_server.run(api, timeout=600)
    assert result.status == "error"
    assert result.error["node_id"] == ids["WorldStereoUni3CControl"]
    assert "1 + 4k" in result.error["exception_message"]

    api, ids = _api(comfy_server, object_info)
    api[ids["WorldStereoRenderCache"]]["inputs"]["keyframes_only"] = True  # 21 keyframes, not 81 poses
    result = comfy_server.run(api, timeout=600)
    assert result.status == "error" and result.error["node_id"] == ids["WorldStereoUni3CControl"]
    assert "keyframes_only off" in result.error["exception_message"]


def test_sampler_refuses_a_keyframe_condition_for_a_uni3c_model(comfy_server, object_info):
    api, ids = _api(comfy_server, object_info)
    control = api[ids["WorldStereoUni3CControl"]]
    control["class_type"] = "WorldStereoGGMControl"  # same inputs, keyframe condition
    videos = set((comfy_server.base_dir / "output").rglob("uni3c_video*"))
    result = comfy_server.run(api, timeout=600)
    assert result.status == "error" and result.error["node_id"] == ids["WorldStereoSampler"]
    assert "connect Uni3C Control" in result.error["exception_message"]
    assert set((comfy_server.base_dir / "output").rglob("uni3c_video*")) == videos, "a failed run left a video behind"
