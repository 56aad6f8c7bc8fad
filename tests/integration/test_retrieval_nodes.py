"""Retrieve 3D FOV on the real server: a 41-pose trajectory (keyframes every 2nd pose) retrieving
from a bank that holds an earlier clip, with the release's DINOv2 reference cut (the tiny DINOv2
the server's models/dinov2/ holds) and its aerial shortcut; the published inspector links show
what was chosen."""

from __future__ import annotations

import time

import pytest

from worldstereo_core import scene_codec as codec


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


@pytest.fixture(scope="module")
def tiny_dinov2(comfy_server) -> str:
    """The combo value of the tiny DINOv2 the server's models/dinov2/ holds (tests/tiny_models.py)."""
    from tiny_models import TINY_DINOV2_FOLDER

    return f"{TINY_DINOV2_FOLDER}/model.safetensors"


def _graph(dinov2: str, cut: str, shortcut: str, source: str) -> dict:
    traj = dict(median_depth=0.0, angle=0.0, extent=0.0, num_frames=41, camera_json="", keyframes="")
    return {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=96, height=64),
        "2": _node("WorldStereoTrajectoryBuilder", camera=["1", 2], preset="orbit", depth=["1", 1], **traj),
        "3": _node("WorldStereoOracleGenerate", scene=["1", 3], trajectory=["2", 0], keyframes_only=True),
        "4": _node("WorldStereoMemoryBankCreate", images=["1", 0], cameras=["1", 2], label="input"),
        "5": _node(
            "WorldStereoMemoryBankUpdate",
            bank=["4", 0],
            frames=["3", 0],
            trajectory=["2", 0],
            num_frames_added=8,
            label="traj0",
        ),
        "6": _node("WorldStereoTrajectoryBuilder", camera=["1", 2], preset="left", depth=["1", 1], **traj),
        "7": _node("WorldStereoLoadDINOv2", model_name=dinov2, dtype="fp32"),
        "8": _node(
            "WorldStereoRetrieve3DFOV",
            trajectory=["6", 0],
            bank=["5", 0],
            mode="aabb",
            max_references=2,
            reference_cut=cut,
            shortcut=shortcut,
            shortcut_source=source,
            dinov2=["7", 0],
        ),
        "9": _node("PreviewImage", images=["8", 1]),
    }


def _links(comfy_server, result, node_id: str = "8") -> dict:
    deadline = time.time() + 30
    outputs = result.outputs
    while node_id not in outputs and time.time() < deadline:
        time.sleep(0.2)
        outputs = comfy_server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    token = outputs[node_id]["worldstereo_inspector"][0]["token"]
    return codec.decode(comfy_server.get(f"/worldstereo/inspector/{token}").content)


def test_retrieve_node_release_cut_and_shortcut(comfy_server, tiny_dinov2):
    info = comfy_server.object_info()
    spec = info["WorldStereoLoadDINOv2"]["input"]["required"]["model_name"]
    assert tiny_dinov2 in (spec[1]["options"] if spec[0] == "COMBO" else spec[0])
    for name, spec in info["WorldStereoRetrieve3DFOV"]["input"].get("optional", {}).items():
        assert spec[1].get("tooltip"), name
    result = comfy_server.run(_graph(tiny_dinov2, "dinov2_fps", "aerial", "traj0"), timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    h = _links(comfy_server, result)
    (r,) = h["retrieval"]
    links = r["links"]
    # the model's keyframes of 41 poses: every 2nd pose; 20 targets
    assert h["trajectories"][0]["keyframes"] == list(range(0, 41, 2))
    assert [link["pose"] for link in links] == list(range(2, 41, 2))
    assert len(r["references"]) <= 2
    labels = h["memory"]["labels"]
    assert all(labels[i].startswith("traj0:") for i in r["references"])  # the aerial shortcut's clip won


def test_retrieve_node_dinov2_cut_needs_the_model(comfy_server, tiny_dinov2):
    graph = _graph(tiny_dinov2, "dinov2_fps", "none", "")
    del graph["8"]["inputs"]["dinov2"]
    del graph["7"]
    result = comfy_server.run(graph, timeout=600)
    assert result.status != "success"
    assert "Load DINOv2" in str(result.error), result.error
