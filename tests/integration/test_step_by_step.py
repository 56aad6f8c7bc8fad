"""The loop composed from separate nodes gives the Scene Loop's result (issue 12 §2).

``example_workflows/preview_synthetic_step_by_step.json`` (Build Point Cloud → Memory Bank Create →
per trajectory: Trajectory Builder → GGM Render Cache / Retrieve 3D FOV → Oracle Generate →
Umeyama Merge → Memory Bank Update) runs unchanged on the real server, next to an Oracle Scene
Loop on the same synthetic view with the same trajectories and seed. The merged cloud, the
generated frames and the memory bank must agree to float tolerance.
"""

from __future__ import annotations

import json
import time

import torch

from testsupport import REPO_ROOT

WORKFLOW = REPO_ROOT / "example_workflows" / "preview_synthetic_step_by_step.json"


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _ids(api: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in api.items() if v["class_type"] == class_type), key=int)


def _outputs(comfy_server, result, wanted: list[str]) -> dict:
    """/history may lag the success event by a moment: poll until every wanted node reported."""
    deadline = time.time() + 30
    outputs = result.outputs
    while not all(k in outputs for k in wanted) and time.time() < deadline:
        time.sleep(0.2)
        outputs = comfy_server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    return outputs


def _ply(comfy_server, outputs: dict, node_id: str):
    from worldstereo_core.pointcloud import load_ply

    (item,) = outputs[node_id]["3d"]
    return load_ply(comfy_server.base_dir / "output" / item.get("subfolder", "") / item["filename"])


def _images(comfy_server, outputs: dict, node_ids: list[str]) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    frames = []
    for nid in node_ids:
        for item in outputs[nid]["images"]:
            path = comfy_server.base_dir / "output" / item.get("subfolder", "") / item["filename"]
            frames.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))))
    return torch.stack(frames)


def test_step_by_step_graph_equals_the_oracle_scene_loop(comfy_server, object_info):
    from workflow_api import ui_to_api

    from worldstereo_core.memory import MemoryBank

    api = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
    (scene,) = _ids(api, "WorldStereoSyntheticScene")
    presets = [api[i]["inputs"]["preset"] for i in _ids(api, "WorldStereoTrajectoryBuilder")]
    assert presets == ["orbit", "up"]
    (graph_ply,) = _ids(api, "WorldStereoSavePointCloud")
    (graph_bank,) = _ids(api, "WorldStereoMemoryBankSave")
    api[graph_bank]["inputs"]["folder"] = "ws_equal/graph_bank"
    oracles = _ids(api, "WorldStereoOracleGenerate")
    # the graph's generated keyframes, saved as PNG (the workflow keeps them as MP4)
    for k, oid in enumerate(oracles):
        api[f"80{k}"] = _node("SaveImage", images=[oid, 0], filename_prefix=f"ws_equal/graph_frames_{k}")
    # the Scene Loop on the same input view, trajectories and seed
    api["900"] = _node("WorldStereoOracleSceneLoop", scene=[scene, 3], image=[scene, 0], depth=[scene, 1],
                       camera=[scene, 2], trajectories=",".join(presets), clip_depth="exact", retrieval_mode="aabb",
                       seed=0)
    api["901"] = _node("WorldStereoSavePointCloud", cloud=["900", 0], filename_prefix="ws_equal/loop_cloud")
    api["902"] = _node("WorldStereoMemoryBankSave", bank=["900", 2], folder="ws_equal/loop_bank")
    api["903"] = _node("SaveImage", images=["900", 5], filename_prefix="ws_equal/loop_frames")

    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    frame_nodes = [f"80{k}" for k in range(len(oracles))]
    outputs = _outputs(comfy_server, result, [graph_ply, "901", "903", *frame_nodes])

    # frames: the oracle's keyframes of both trajectories, in order
    graph_frames = _images(comfy_server, outputs, frame_nodes)
    loop_frames = _images(comfy_server, outputs, ["903"])
    assert graph_frames.shape == loop_frames.shape == (2 * 21, *graph_frames.shape[1:])
    assert torch.equal(graph_frames, loop_frames)

    # merged cloud: same points and colours (same order: both come out of the same voxel grid)
    graph_cloud, loop_cloud = _ply(comfy_server, outputs, graph_ply), _ply(comfy_server, outputs, "901")
    assert len(graph_cloud) == len(loop_cloud) > 1000
    torch.testing.assert_close(torch.as_tensor(graph_cloud.points), torch.as_tensor(loop_cloud.points),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(graph_cloud.colors), torch.as_tensor(loop_cloud.colors),
                               rtol=1e-5, atol=1e-5)

    # memory bank: input view + 8 keyframes per trajectory, same frames, cameras and labels
    out = comfy_server.base_dir / "output"
    graph_bank_value = MemoryBank.load(out / "ws_equal" / "graph_bank")
    loop_bank_value = MemoryBank.load(out / "ws_equal" / "loop_bank")
    assert len(graph_bank_value) == len(loop_bank_value) == 1 + 2 * 8
    assert list(graph_bank_value.sources) == list(loop_bank_value.sources)
    torch.testing.assert_close(graph_bank_value.w2c, loop_bank_value.w2c)
    torch.testing.assert_close(graph_bank_value.K, loop_bank_value.K)
    for a, b in zip(graph_bank_value.frames, loop_bank_value.frames):
        torch.testing.assert_close(a.float(), b.float())


def test_real_step_by_step_graph_equals_the_scene_loop_with_tiny_weights(comfy_server, object_info):
    """The same with the video model: ``step_by_step.json`` (DMDSampler, WorldMirror reconstruction)
    against a WorldStereo Scene Loop on the same image, depth, model and seed, with tiny random
    weights written under the real file names and the CI size (96×64)."""
    from testsupport import ci_overrides, write_tiny_weights_for
    from workflow_api import ui_to_api

    from worldstereo_core.interfaces import default_config
    from worldstereo_core.memory import MemoryBank

    workflow = json.loads((REPO_ROOT / "example_workflows" / "step_by_step.json").read_text())
    api = ci_overrides(ui_to_api(workflow, object_info))
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    (size,) = _ids(api, "ImageScale")
    (depth,) = _ids(api, "WorldStereoDepthEstimate")
    (model,) = _ids(api, "WorldStereoLoadModel")
    (wm,) = _ids(api, "WorldStereoLoadWorldMirror")
    samplers = _ids(api, "WorldStereoSampler")
    presets = [api[i]["inputs"]["preset"] for i in _ids(api, "WorldStereoTrajectoryBuilder")]
    h, w = api[size]["inputs"]["height"], api[size]["inputs"]["width"]
    # the loop scales the release's splat radius below 480 rows (default_config); at the release's
    # 480×832 both use 0.008, the Render Cache default the workflow keeps
    for rid in _ids(api, "WorldStereoRenderCache"):
        api[rid]["inputs"]["radius"] = default_config(h, w).radius
    (graph_ply,) = _ids(api, "WorldStereoSavePointCloud")
    (graph_bank,) = _ids(api, "WorldStereoMemoryBankSave")
    api[graph_bank]["inputs"]["folder"] = "ws_equal_tiny/graph_bank"
    for k, sid in enumerate(samplers):
        api[f"80{k}"] = _node("SaveImage", images=[sid, 0], filename_prefix=f"ws_equal_tiny/graph_frames_{k}")
    s0 = api[samplers[0]]["inputs"]
    api["900"] = _node(
        "WorldStereoSceneLoop", model=[model, 0], image=[size, 0], camera=[depth, 1], depth=[depth, 0],
        worldmirror=[wm, 0], prompt=s0["prompt"], negative_prompt=s0["negative_prompt"],
        trajectories=",".join(presets), sampler=s0["sampler"], steps=s0["steps"], cfg=s0["cfg"], shift=s0["shift"],
        seed=0, retrieval_mode="aabb", depth_resolution_level=0, prompts="", starts="",
    )
    api["901"] = _node("WorldStereoSavePointCloud", cloud=["900", 0], filename_prefix="ws_equal_tiny/loop_cloud")
    api["902"] = _node("WorldStereoMemoryBankSave", bank=["900", 2], folder="ws_equal_tiny/loop_bank")
    api["903"] = _node("SaveImage", images=["900", 5], filename_prefix="ws_equal_tiny/loop_frames")

    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    frame_nodes = [f"80{k}" for k in range(len(samplers))]
    outputs = _outputs(comfy_server, result, [graph_ply, "901", "903", *frame_nodes])

    graph_frames = _images(comfy_server, outputs, frame_nodes).float()
    loop_frames = _images(comfy_server, outputs, ["903"]).float()
    assert graph_frames.shape == loop_frames.shape == (2 * 21, h, w, 3)
    assert (graph_frames - loop_frames).abs().max() <= 1  # 8-bit PNGs of float frames

    graph_cloud, loop_cloud = _ply(comfy_server, outputs, graph_ply), _ply(comfy_server, outputs, "901")
    assert len(graph_cloud) == len(loop_cloud) > 100
    torch.testing.assert_close(torch.as_tensor(graph_cloud.points), torch.as_tensor(loop_cloud.points),
                               rtol=1e-4, atol=1e-4)

    out = comfy_server.base_dir / "output" / "ws_equal_tiny"
    a, b = MemoryBank.load(out / "graph_bank"), MemoryBank.load(out / "loop_bank")
    assert len(a) == len(b) == 1 + 2 * 8 and list(a.sources) == list(b.sources)
    torch.testing.assert_close(a.w2c, b.w2c)
    for x, y in zip(a.frames, b.frames):
        torch.testing.assert_close(x.float(), y.float(), rtol=1e-4, atol=1e-4)
