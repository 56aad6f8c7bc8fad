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


def _run_and_compare(
    comfy_server, api: dict, frame_sources: list[str], loop_id: str, tag: str, tol: float, extra: tuple = ()
) -> dict:
    """Run ``api`` (the graph plus the loop node ``loop_id``) and check that the graph and the loop
    give the same frames (8-bit PNGs; ``frame_sources`` are the graph's frame nodes, in trajectory
    order), merged cloud and memory bank (floats, to ``tol``). Returns the outputs (the loop's cloud
    ``901``, frames ``903`` and the ``extra`` output nodes included)."""
    from worldstereo_core.memory import MemoryBank

    (graph_ply,) = [i for i in _ids(api, "WorldStereoSavePointCloud") if i not in extra]
    (graph_bank,) = [i for i in _ids(api, "WorldStereoMemoryBankSave") if i not in extra]
    api[graph_bank]["inputs"]["folder"] = f"{tag}/graph_bank"
    frame_nodes = []
    for k, src in enumerate(frame_sources):  # the graph keeps its frames as MP4: save them as PNG too
        api[f"80{k}"] = _node("SaveImage", images=[src, 0], filename_prefix=f"{tag}/graph_frames_{k}")
        frame_nodes.append(f"80{k}")
    api["901"] = _node("WorldStereoSavePointCloud", cloud=[loop_id, 0], filename_prefix=f"{tag}/loop_cloud")
    api["902"] = _node("WorldStereoMemoryBankSave", bank=[loop_id, 2], folder=f"{tag}/loop_bank")
    api["903"] = _node("SaveImage", images=[loop_id, 5], filename_prefix=f"{tag}/loop_frames")

    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    outputs = _outputs(comfy_server, result, [graph_ply, "901", "903", *frame_nodes, *extra])

    # frames: the keyframes of both trajectories, in order
    graph_frames = _images(comfy_server, outputs, frame_nodes).float()
    loop_frames = _images(comfy_server, outputs, ["903"]).float()
    assert graph_frames.shape == loop_frames.shape and graph_frames.shape[0] == 2 * 21
    assert (graph_frames - loop_frames).abs().max() <= (0 if tol < 1e-4 else 1)  # 8-bit rounding of floats

    # merged cloud: same points and colours (same order: both come out of the same voxel grid)
    graph_cloud, loop_cloud = _ply(comfy_server, outputs, graph_ply), _ply(comfy_server, outputs, "901")
    assert len(graph_cloud) == len(loop_cloud) > 100
    for x, y in ((graph_cloud.points, loop_cloud.points), (graph_cloud.colors, loop_cloud.colors)):
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), rtol=tol, atol=tol)

    # memory bank: input view + 8 keyframes per trajectory, same frames, cameras and labels
    out = comfy_server.base_dir / "output" / tag
    a, b = MemoryBank.load(out / "graph_bank"), MemoryBank.load(out / "loop_bank")
    assert len(a) == len(b) == 1 + 2 * 8 and list(a.sources) == list(b.sources)
    torch.testing.assert_close(a.w2c, b.w2c)
    torch.testing.assert_close(a.K, b.K)
    for x, y in zip(a.frames, b.frames):
        torch.testing.assert_close(x.float(), y.float(), rtol=tol, atol=tol)
    return outputs


def test_step_by_step_graph_equals_the_oracle_scene_loop(comfy_server, object_info):
    from workflow_api import ui_to_api

    api = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
    (scene,) = _ids(api, "WorldStereoSyntheticScene")
    presets = [api[i]["inputs"]["preset"] for i in _ids(api, "WorldStereoTrajectoryBuilder")]
    assert presets == ["orbit", "up"]
    # the Scene Loop on the same input view, trajectories and seed
    api["900"] = _node(
        "WorldStereoOracleSceneLoop",
        scene=[scene, 3],
        image=[scene, 0],
        depth=[scene, 1],
        camera=[scene, 2],
        trajectories=",".join(presets),
        clip_depth="exact",
        retrieval_mode="aabb",
        seed=0,
    )
    _run_and_compare(comfy_server, api, _ids(api, "WorldStereoOracleGenerate"), "900", "ws_equal", tol=1e-5)


def _tiny_step_by_step(comfy_server, object_info) -> tuple[dict, list[str]]:
    """``step_by_step.json`` as CI runs it (tiny random weights under the real file names, the CI
    size 96×64) plus a WorldStereo Scene Loop (node ``900``) on the same image, depth, model and
    seed. Returns the API graph and the ids of its DMDSampler nodes, in trajectory order."""
    from testsupport import ci_overrides, write_tiny_weights_for
    from workflow_api import ui_to_api
    from worldstereo_core.interfaces import default_config

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
    s0 = api[samplers[0]]["inputs"]
    api["900"] = _node(
        "WorldStereoSceneLoop",
        model=[model, 0],
        image=[size, 0],
        camera=[depth, 1],
        depth=[depth, 0],
        worldmirror=[wm, 0],
        prompt=s0["prompt"],
        negative_prompt=s0["negative_prompt"],
        trajectories=",".join(presets),
        sampler=s0["sampler"],
        steps=s0["steps"],
        cfg=s0["cfg"],
        shift=s0["shift"],
        seed=0,
        retrieval_mode="aabb",
        depth_resolution_level=0,
        prompts="",
        starts="",
    )
    return api, samplers


def test_real_step_by_step_graph_equals_the_scene_loop_with_tiny_weights(comfy_server, object_info):
    """The same with the video model: ``step_by_step.json`` (DMDSampler, WorldMirror reconstruction)
    against a WorldStereo Scene Loop on the same image, depth, model and seed, with tiny random
    weights written under the real file names and the CI size (96×64)."""
    api, samplers = _tiny_step_by_step(comfy_server, object_info)
    _run_and_compare(comfy_server, api, samplers, "900", "ws_equal_tiny", tol=1e-4)


def test_core_encoders_reach_the_scene_loop_as_they_reach_the_sampler(comfy_server, object_info):
    """Core nodes in (issue 12 §4): ComfyUI's CLIPLoader (type wan) + CLIP Text Encode and CLIP Vision
    Loader + CLIP Vision Encode feed the CONDITIONING and CLIP_VISION_OUTPUT of every DMDSampler of
    the step-by-step graph and of the Scene Loop, whose loader has no encoders of its own: the loop
    equals the composed graph. A second Scene Loop, with the loader's own UMT5 and the same text,
    equals the first: ComfyUI's CONDITIONING is read as the embedding Wan's encoder makes."""
    from testsupport import write_tiny_weights_for

    api, samplers = _tiny_step_by_step(comfy_server, object_info)
    loader_inputs = object_info["WorldStereoLoadModel"]["input"]["required"]
    options = {name: loader_inputs[name][1]["options"] for name in ("text_encoder", "clip_vision")}  # V3 COMBO
    skip_text, skip_clip = (next(o for o in opts if o.startswith("none (connect")) for opts in options.values())
    (size,) = _ids(api, "ImageScale")
    (model,) = _ids(api, "WorldStereoLoadModel")
    loader = api[model]["inputs"]
    # float32 on both sides: ComfyUI's text encoder runs in float32 on the tiny file (the plugin)
    loader["dtype"] = "fp32"
    text = "a bright kitchen with a window"  # short: the tiny tokenizer stays under Wan's 512 tokens
    api["700"] = _node("CLIPLoader", clip_name=loader["text_encoder"], type="wan", device="default")
    api["701"] = _node("CLIPTextEncode", text=text, clip=["700", 0])
    api["702"] = _node("CLIPVisionLoader", clip_name=loader["clip_vision"])
    api["703"] = _node("CLIPVisionEncode", clip_vision=["702", 0], image=[size, 0], crop="none")
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    api["710"] = _node("WorldStereoLoadModel", **{**loader, "clip_vision": skip_clip})  # own UMT5, no CLIP
    loader.update(text_encoder=skip_text, clip_vision=skip_clip)  # no encoders: the core nodes replace them
    for nid in [*samplers, "900"]:
        api[nid]["inputs"].update(positive=["701", 0], clip_vision_output=["703", 0])
    own_text = {k: v for k, v in api["900"]["inputs"].items() if k != "positive"}
    api["910"] = _node("WorldStereoSceneLoop", **{**own_text, "model": ["710", 0], "prompt": text})
    api["911"] = _node("WorldStereoSavePointCloud", cloud=["910", 0], filename_prefix="ws_core_enc/own_text_cloud")
    api["912"] = _node("SaveImage", images=["910", 5], filename_prefix="ws_core_enc/own_text_frames")

    outputs = _run_and_compare(comfy_server, api, samplers, "900", "ws_core_enc", tol=1e-4, extra=("911", "912"))
    own_frames, core_frames = _images(comfy_server, outputs, ["912"]), _images(comfy_server, outputs, ["903"])
    assert own_frames.shape == core_frames.shape and own_frames.shape[0] == 2 * 21
    assert (own_frames.float() - core_frames.float()).abs().max() <= 1  # 8-bit rounding of floats
    # the two text encoders agree to ~1e-6 (float32), not bit for bit; the frames agree to 8-bit
    # rounding, but the robust depth fits and voxel merge amplify that at a few points (on the tiny
    # random model: 330 of 43 190 moved more than 1e-3), so ≥ 98 % of each cloud must have a point of the
    # other within 1e-3
    from scipy.spatial import cKDTree

    own, core = (torch.as_tensor(_ply(comfy_server, outputs, n).points).double().numpy() for n in ("911", "901"))
    assert len(own) > 100 and abs(len(own) - len(core)) <= 0.01 * len(core)
    for a, b in ((own, core), (core, own)):
        dist, _ = cKDTree(b).query(a)
        assert (dist < 1e-3).mean() >= 0.98, f"{(dist >= 1e-3).sum()} of {len(a)} points have no match"


def test_paper_ssm_step_by_step_graph_equals_the_scene_loop_with_tiny_weights(comfy_server, object_info):
    """The paper-SSM variant from the separate nodes: a tiny ``paper-dmd`` checkpoint (random weights, memory
    branch non-zero so the pointmaps matter) in the shipped graph, whose GGM Controls get the cache their GGM
    Render Cache rendered; the DMDSampler then pairs references and reads pointmaps as the loop does."""
    from tiny_models import write_tiny_worldstereo

    api, samplers = _tiny_step_by_step(comfy_server, object_info)
    name = "worldstereo-paper-dmd-tiny"
    write_tiny_worldstereo(comfy_server.base_dir / "models" / "worldstereo" / name, "paper-dmd")
    (model,) = _ids(api, "WorldStereoLoadModel")
    api[model]["inputs"]["checkpoint"] = f"{name}/model.safetensors"  # the listed form (folder/weights file)
    api[model]["inputs"]["variant"] = "auto"  # read from config.json: worldstereo-paper-memory-dmd
    for gid in _ids(api, "WorldStereoGGMControl"):  # the shipped graph wires it: a paper checkpoint just runs
        render_id = api[gid]["inputs"]["render"][0]
        assert api[gid]["inputs"]["cache"] == api[render_id]["inputs"]["cache"]  # the cache that was rendered
    _run_and_compare(comfy_server, api, samplers, "900", "ws_equal_paper", tol=1e-4)

    # without the cache the sampler says what to connect (and the loop is not needed for that)
    for gid in _ids(api, "WorldStereoGGMControl"):
        del api[gid]["inputs"]["cache"]
    del api["900"]
    result = comfy_server.run({k: v for k, v in api.items() if not k.startswith(("80", "90"))}, timeout=600)
    assert result.status == "error" and "GGM Control's cache input" in str(result.error)
