"""Trajectory starts in the nodes: the loops' `starts`/`prompts` controls, Last Frame and Camera,
Memory Bank View — checked before any clip runs, and the next trajectory really starts where asked."""

from __future__ import annotations

import json

import numpy as np


def _scene(width=96, height=64) -> dict:
    return {
        "class_type": "WorldStereoSyntheticScene",
        "inputs": {"scene": "room", "seed": 0, "width": width, "height": height},
    }


def _builder(camera, preset, **kw) -> dict:
    inputs = {
        "camera": camera,
        "preset": preset,
        "median_depth": 1.0,
        "angle": 0.0,
        "extent": 0.0,
        "num_frames": 81,
        "camera_json": "",
        "keyframes": "",
    }
    return {"class_type": "WorldStereoTrajectoryBuilder", "inputs": {**inputs, **kw}}


def _saved_cameras(comfy_server, result, node_id):
    rel = result.outputs[node_id]["text"][0]
    data = json.loads((comfy_server.base_dir / "output" / rel).read_text())
    return np.array(data["extrinsic"]), np.array(data["intrinsic"])


def test_oracle_loop_continues_from_the_last_frame_and_rejects_bad_starts(comfy_server):
    graph = {
        "1": _scene(),
        "2": {
            "class_type": "WorldStereoOracleSceneLoop",
            "inputs": {
                "scene": ["1", 3],
                "image": ["1", 0],
                "depth": ["1", 1],
                "camera": ["1", 2],
                "trajectories": "orbit,right",
                "clip_depth": "exact",
                "retrieval_mode": "aabb",
                "seed": 0,
                "starts": "input, continue",
            },
        },
        "3": {
            "class_type": "WorldStereoSaveReport",
            "inputs": {"report": ["2", 6], "filename_prefix": "worldstereo/starts"},
        },
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    report = json.loads(result.outputs["3"]["text"][0])
    assert [t["start"] for t in report["trajectories"]] == ["input", "continue"]
    assert report["scores"]["fscore"] > 0.9

    graph["2"]["inputs"]["starts"] = "continue, input"
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error" and result.error["node_id"] == "2"
    assert "cannot 'continue'" in result.error["exception_message"]
    graph["2"]["inputs"]["starts"] = "input"  # one start for two trajectories
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error" and "1 starts for 2 trajectories" in result.error["exception_message"]
    graph["2"]["inputs"]["starts"] = "input, view:4"  # the oracle loop's bank is the input image alone
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error" and "not in the memory bank" in result.error["exception_message"]
    assert not any(p.get("node") == "2" and p.get("value", 0) > 1 for p in result.progress), "a clip ran"


def test_scene_loop_checks_prompt_count_before_loading_anything_heavy(comfy_server):
    graph = {
        "1": _scene(),
        "2": {
            "class_type": "WorldStereoLoadModel",
            "inputs": {
                "checkpoint": "worldstereo-memory-dmd",
                "variant": "auto",
                "text_encoder": "umt5_xxl_tiny.safetensors",
                "clip_vision": "clip_vision_h_tiny.safetensors",
                "vae": "wan_2.1_vae_tiny.safetensors",
                "wan_folder": "",
                "dtype": "fp32",
                "offload": "none",
                "attention_backend": "default",
            },
        },
        "3": {
            "class_type": "WorldStereoLoadMoGe",
            "inputs": {"model_name": "moge-2-tiny/model.safetensors", "variant": "auto", "dtype": "fp32"},
        },
        "4": {
            "class_type": "WorldStereoSceneLoop",
            "inputs": {
                "model": ["2", 0],
                "image": ["1", 0],
                "camera": ["1", 2],
                "depth": ["1", 1],
                "moge": ["3", 0],
                "prompt": "a room",
                "negative_prompt": "",
                "trajectories": "orbit,up",
                "sampler": "auto",
                "steps": 0,
                "cfg": 5.0,
                "shift": 0.0,
                "seed": 0,
                "retrieval_mode": "aabb",
                "depth_resolution_level": 0,
                "prompts": "a red sofa\na window\na lamp\n\n",
                "starts": "",
            },
        },
        "5": {
            "class_type": "WorldStereoSaveReport",
            "inputs": {"report": ["4", 6], "filename_prefix": "worldstereo/never"},
        },
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "error" and result.error["node_id"] == "4"
    assert "3 prompts for 2 trajectories" in result.error["exception_message"]


def test_last_frame_and_bank_view_start_the_next_trajectory(comfy_server):
    graph = {
        "1": _scene(),
        "2": {
            "class_type": "WorldStereoMemoryBankCreate",
            "inputs": {"images": ["1", 0], "cameras": ["1", 2], "label": "input"},
        },
        "3": {
            "class_type": "WorldStereoMemoryBankView",
            "inputs": {"bank": ["2", 0], "index": 0, "width": 128, "height": 80},
        },
        "4": _builder(["3", 1], "wonder"),
        "5": {
            "class_type": "WorldStereoOracleGenerate",
            "inputs": {"scene": ["1", 3], "trajectory": ["4", 0], "keyframes_only": True},
        },
        "6": {"class_type": "WorldStereoLastFrame", "inputs": {"frames": ["5", 0], "trajectory": ["4", 0]}},
        "7": _builder(["6", 1], "up"),
        "8": {
            "class_type": "WorldStereoSaveCameraJson",
            "inputs": {"trajectory": ["4", 0], "filename_prefix": "worldstereo/first"},
        },
        "9": {
            "class_type": "WorldStereoSaveCameraJson",
            "inputs": {"trajectory": ["7", 0], "filename_prefix": "worldstereo/next"},
        },
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    w2c1, K1 = _saved_cameras(comfy_server, result, "8")
    w2c2, _ = _saved_cameras(comfy_server, result, "9")
    np.testing.assert_allclose(w2c2[0], w2c1[-1], atol=1e-5)  # the next trajectory starts at the last pose
    # the bank view resized from 96×64 to 128×80: K follows (principal point at the new centre)
    np.testing.assert_allclose(K1[0][:2, 2], [64.0, 40.0], atol=1e-4)
    assert not np.allclose(w2c1[0], w2c1[-1])  # the wonder walk moved

    graph["6"]["inputs"]["frames"] = ["1", 0]  # one image is not this trajectory's frames
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error" and result.error["node_id"] == "6"
    assert "21 or 81 frames" in result.error["exception_message"]
    graph["6"]["inputs"]["frames"] = ["5", 0]
    graph["3"]["inputs"]["index"] = 3
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "has 1 views" in result.error["exception_message"]
