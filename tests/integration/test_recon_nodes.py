"""Reconstruction nodes on the real server: tiny WorldMirror weights in models/worldmirror/ and
tiny MoGe-2 weights in models/moge/; SyntheticScene → TrajectoryBuilder → OracleGenerate →
Reconstruct Frames (both backends) → SavePointCloud / COLMAP / transforms.json; Evaluate."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG, tiny_worldmirror_config

RECON_NODES = (
    "WorldStereoLoadWorldMirror",
    "WorldStereoWorldMirrorRecon",
    "WorldStereoDepthFusion",
    "WorldStereoSaveColmap",
    "WorldStereoSaveTransformsJson",
    "WorldStereoEvaluate",
)
TINY_WM = "tiny/model.safetensors"
TINY_MOGE = "tiny/model.safetensors"
H, W = 64, 96  # the synthetic scene's sizes are multiples of 16; the core resizes to multiples of 14
NUM = 21  # poses = keyframes, so the trajectory's 21 keyframes are every pose


@pytest.fixture(scope="module")
def tiny_weights(comfy_server) -> None:
    from worldstereo_core.recon.moge import MoGeModel, save_moge
    from worldstereo_core.recon.worldmirror import WorldMirror, save_worldmirror

    torch.manual_seed(0)
    save_worldmirror(
        WorldMirror(tiny_worldmirror_config()).eval(), comfy_server.base_dir / "models" / "worldmirror" / "tiny"
    )
    model = MoGeModel(TINY_MOGE_CONFIG)
    g = torch.Generator().manual_seed(4)  # as test_depth_nodes: random weights whose focal fit is positive
    state = {
        k: v if k.endswith(("image_mean", "image_std")) else torch.randn(v.shape, generator=g) * 0.1
        for k, v in model.state_dict().items()
    }
    state["mask_head.output_blocks.3.bias"] = torch.full((1,), 8.0)  # every pixel valid
    model.load_state_dict(state)
    save_moge(model, comfy_server.base_dir / "models" / "moge" / "tiny")


@pytest.fixture(scope="module")
def recon_nodes(comfy_server, tiny_weights) -> dict:
    info = comfy_server.object_info()
    missing = [n for n in RECON_NODES if n not in info]
    assert not missing, f"{missing} not registered: add nodes.recon.NODES to nodes/__init__.py"
    return {n: info[n] for n in RECON_NODES}


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _outputs(comfy_server, result) -> dict:
    """The prompt's outputs (/history may lag the execution_success event: poll)."""
    deadline = time.time() + 30
    outputs = result.outputs
    while not outputs and time.time() < deadline:
        time.sleep(0.2)
        outputs = comfy_server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    return outputs


def _front(preset: str = "orbit") -> dict:
    """Scene (1), trajectory (2) and oracle frames (3) at H × W."""
    return {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=W, height=H),
        "2": _node(
            "WorldStereoTrajectoryBuilder",
            camera=["1", 2],
            preset=preset,
            median_depth=0.0,
            angle=0.0,
            extent=0.0,
            num_frames=NUM,
            camera_json="",
            keyframes="",
            depth=["1", 1],
        ),
        "3": _node("WorldStereoOracleGenerate", scene=["1", 3], trajectory=["2", 0], keyframes_only=True),
    }


def _recon(backend: str, **extra) -> dict:
    inputs = dict(
        frames=["3", 0],
        trajectory=["2", 0],
        backend=backend,
        use_priors=True,
        target_size=98,
        conf_quantile=0.15,
        remove_depth_edges=True,
        camera_source="known",
    )
    inputs.update(extra)
    return _node("WorldStereoWorldMirrorRecon", **inputs)


def _expected_w2c() -> torch.Tensor:
    """The trajectory TrajectoryBuilder makes, computed here from the core."""
    from worldstereo_core import synthetic
    from worldstereo_core.trajectory import make_preset

    view = synthetic.make_scene("room", 0).default_view(H, W)
    d = view.depth[view.depth > 0].double().median()
    return make_preset("orbit", view.cameras[:1], float(d), num_frames=NUM).keyframes().w2c.double()


def _quat_to_R(q) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_nodes_and_model_folder(recon_nodes):
    spec = recon_nodes["WorldStereoLoadWorldMirror"]["input"]["required"]["model_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert TINY_WM in options
    assert recon_nodes["WorldStereoLoadWorldMirror"]["output"] == ["WS_WORLDMIRROR"]
    assert recon_nodes["WorldStereoWorldMirrorRecon"]["output"] == ["WS_DEPTH", "WS_POINTCLOUD", "WS_CAMERAS", "IMAGE"]
    for name, info in recon_nodes.items():
        assert info["category"].startswith("WorldStereo/"), name
        assert info["description"], name
        for section in ("required", "optional"):
            for key, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{key} has no tooltip"


def test_worldmirror_recon_and_exports(comfy_server, recon_nodes):
    from worldstereo_core.pointcloud import load_ply

    graph = _front()
    graph.update(
        {
            "4": _node("WorldStereoLoadWorldMirror", model_name=TINY_WM, dtype="fp32"),
            "5": _recon("worldmirror", worldmirror=["4", 0]),
            "6": _node("WorldStereoSavePointCloud", cloud=["5", 1], filename_prefix="ws_test/wm_cloud"),
            "7": _node("SaveImage", images=["5", 3], filename_prefix="ws_test/wm_depth"),
            "8": _node(
                "WorldStereoSaveColmap",
                frames=["3", 0],
                cameras=["5", 2],
                filename_prefix="ws_test/colmap",
                max_points=500,
                cloud=["5", 1],
            ),
            "9": _node(
                "WorldStereoSaveTransformsJson",
                frames=["3", 0],
                cameras=["5", 2],
                filename_prefix="ws_test/nerfstudio",
                cloud=["5", 1],
            ),
        }
    )
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    outputs = _outputs(comfy_server, result)
    out_dir = comfy_server.base_dir / "output"

    (item,) = outputs["6"]["3d"]
    cloud = load_ply(out_dir / item.get("subfolder", "") / item["filename"])
    assert len(cloud) > 0 and torch.isfinite(torch.as_tensor(cloud.points)).all()
    assert len(outputs["7"]["images"]) == NUM

    # COLMAP: 21 PNGs, and images.txt holds the trajectory's w2c (camera_source=known)
    (rel,) = outputs["8"]["text"]
    root = out_dir / rel
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"frame_{i:05d}.png" for i in range(NUM)]
    lines = [
        ln for ln in (root / "sparse" / "0" / "images.txt").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert len(lines) == NUM
    want = _expected_w2c()
    for i, line in enumerate(lines):
        f = line.split()
        R = _quat_to_R([float(v) for v in f[1:5]])
        t = np.array([float(v) for v in f[5:8]])
        assert f[9] == f"frame_{i:05d}.png"
        assert np.allclose(R, want[i, :3, :3].numpy(), atol=1e-4) and np.allclose(t, want[i, :3, 3].numpy(), atol=1e-4)
    cam_line = [
        ln for ln in (root / "sparse" / "0" / "cameras.txt").read_text().splitlines() if not ln.startswith("#")
    ][0]
    assert cam_line.split()[1:4] == ["PINHOLE", str(W), str(H)]
    pts = [ln for ln in (root / "sparse" / "0" / "points3D.txt").read_text().splitlines() if not ln.startswith("#")]
    assert 0 < len(pts) <= 500

    # nerfstudio: transforms.json c2w = inverse(w2c) with the OpenGL axis flip
    (rel,) = outputs["9"]["text"]
    doc = json.loads((out_dir / rel).read_text())
    assert len(doc["frames"]) == NUM and doc["w"] == W and doc["h"] == H and doc["ply_file_path"] == "sparse_pc.ply"
    folder = (out_dir / rel).parent
    assert (folder / "sparse_pc.ply").is_file()
    for i, fr in enumerate(doc["frames"]):
        assert (folder / fr["file_path"]).is_file()
        c2w_gl = np.array(fr["transform_matrix"])
        c2w = np.linalg.inv(want[i].numpy())
        assert np.allclose(c2w_gl, c2w @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-4)


def test_depth_fusion_backend(comfy_server, recon_nodes):
    from worldstereo_core.pointcloud import load_ply

    graph = _front()
    graph.update(
        {
            "4": _node(
                "WorldStereoBuildPointCloud",
                image=["1", 0],
                depth=["1", 1],
                camera=["1", 2],
                fov_degrees=60.0,
                remove_depth_edges=False,
                compress_far_depth=False,
                max_points=0,
            ),
            "5": _node("WorldStereoLoadMoGe", model_name=TINY_MOGE, variant="auto", dtype="fp32"),
            "6": _recon("depth_fusion", moge=["5", 0], cache=["4", 0]),
            "7": _node("WorldStereoSavePointCloud", cloud=["6", 1], filename_prefix="ws_test/fusion_cloud"),
            "8": _node("SaveImage", images=["6", 3], filename_prefix="ws_test/fusion_depth"),
            # chained into the merge node: the fused depth is already aligned to the cache, so it is lifted as it
            # is (mode "given", scale 1) instead of being fitted a second time
            "9": _node(
                "WorldStereoUmeyamaMerge",
                cache=["4", 0],
                frames=["3", 0],
                depth=["6", 0],
                trajectory=["2", 0],
                mode="depth",
                voxel_size_fraction=0.01,
                seed=0,
                skip_first_frame=False,
            ),
            "10": _node("WorldStereoSaveReport", report=["9", 2], filename_prefix="ws_test/fusion_merge"),
            # the Depth Fusion node is the same computation as the old node's depth_fusion backend
            "11": _node(
                "WorldStereoDepthFusion",
                frames=["3", 0],
                trajectory=["2", 0],
                moge=["5", 0],
                cache=["4", 0],
                remove_depth_edges=True,
            ),
            "12": _node("WorldStereoSavePointCloud", cloud=["11", 1], filename_prefix="ws_test/fusion_node_cloud"),
        }
    )
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    outputs = _outputs(comfy_server, result)
    (item,) = outputs["7"]["3d"]
    cloud = load_ply(comfy_server.base_dir / "output" / item.get("subfolder", "") / item["filename"])
    assert len(cloud) > 0 and torch.isfinite(torch.as_tensor(cloud.points)).all()
    assert len(outputs["8"]["images"]) == NUM
    (item,) = outputs["12"]["3d"]
    node_cloud = load_ply(comfy_server.base_dir / "output" / item.get("subfolder", "") / item["filename"])
    assert torch.equal(torch.as_tensor(node_cloud.points), torch.as_tensor(cloud.points))
    report = json.loads(outputs["10"]["text"][0])
    assert report["mode"] == "given" and report["scale"] == 1.0
    assert {f["status"] for f in report["frames"]} <= {"given"} and report["points_added"] > 0


def test_recon_errors_say_what_to_connect(comfy_server, recon_nodes):
    graph = _front()
    graph.update(
        {
            "5": _recon("worldmirror"),
            "6": _node("WorldStereoSavePointCloud", cloud=["5", 1], filename_prefix="ws_test/never"),
        }
    )
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error"
    assert "Load WorldMirror" in result.error["exception_message"], result.error
    # frames of another trajectory length: the count does not match
    graph["2"]["inputs"]["num_frames"] = 30
    graph["3"] = _node("WorldStereoOracleGenerate", scene=["1", 3], trajectory=["2", 0], keyframes_only=False)
    graph["4"] = _node(
        "WorldStereoTrajectoryBuilder",
        camera=["1", 2],
        preset="up",
        median_depth=0.0,
        angle=0.0,
        extent=0.0,
        num_frames=NUM,
        camera_json="",
        keyframes="",
        depth=["1", 1],
    )
    graph["7"] = _node("WorldStereoLoadWorldMirror", model_name=TINY_WM, dtype="fp32")
    graph["5"] = _recon("worldmirror", trajectory=["4", 0], worldmirror=["7", 0])
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error"
    assert "got 30 frames" in result.error["exception_message"], result.error


def test_evaluate_reports_fscore(comfy_server, recon_nodes):
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=W, height=H),
        "2": _node(
            "WorldStereoEvaluate",
            scene=["1", 3],
            trajectories="eloop,up",
            width=84,
            height=56,
            num_keyframes=5,
            alignment="anchors",
            pose_noise_deg=0.0,
            threshold_fraction=0.01,
            seed=0,
            protocol="per_trajectory",
        ),
        "3": _node("WorldStereoSaveReport", report=["2", 0], filename_prefix="ws_test/eval"),
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    outputs = _outputs(comfy_server, result)
    report = json.loads(outputs["3"]["text"][0])
    assert [t["name"] for t in report["trajectories"]] == ["eloop", "up"]
    # the oracle reconstructs exact depth: nearly every point lies on the true surface
    assert report["overall"]["fscore"] > 0.9 and report["overall"]["precision"] > 0.95
    assert report["trajectories"][0]["rot_err_deg"] < 1e-3
    assert "overall" in outputs["2"]["text"][0]


def test_evaluate_full_model_protocol_and_scene_folder_errors(comfy_server, recon_nodes):
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=W, height=H),
        # a saved workflow's inputs, plus the paper's protocol (memory carried, depth anchor)
        "2": _node(
            "WorldStereoEvaluate",
            scene=["1", 3],
            trajectories="eloop,up",
            width=84,
            height=56,
            num_keyframes=5,
            alignment="depth_anchor",
            pose_noise_deg=0.0,
            threshold_fraction=0.01,
            seed=0,
        ),
        "3": _node("WorldStereoSaveReport", report=["2", 0], filename_prefix="ws_test/eval_full"),
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    report = json.loads(_outputs(comfy_server, result)["3"]["text"][0])
    assert [t["name"] for t in report["trajectories"]] == ["eloop", "up", "eloop"]  # the revisit pass
    assert report["alignment"] == "depth_anchor" and report["overall"]["fscore"] > 0.9
    assert report["trajectories"][0]["maa@30"] == 1.0 and report["memory"]["ssim"] > 0.999
    # a real scene: the folder is checked before anything runs, and must stay in ComfyUI's folders
    evaluate = {
        "trajectories": "orbit",
        "width": 96,
        "height": 64,
        "num_keyframes": 5,
        "alignment": "depth_anchor",
        "pose_noise_deg": 0.0,
        "threshold_fraction": 0.01,
        "seed": 0,
    }
    for folder, message in (("", "scene_folder"), ("../../etc", "not inside"), ("no_such_scene", "no such folder")):
        g = {
            "2": _node("WorldStereoEvaluate", scene_folder=folder, **evaluate),
            "3": _node("WorldStereoSaveReport", report=["2", 0], filename_prefix="ws_test/never"),
        }
        result = comfy_server.run(g, timeout=300)
        assert result.status == "error" and message in result.error["exception_message"], result.error


def test_evaluate_real_scene_folder_with_the_model(comfy_server, recon_nodes):
    """A captured scene (synthetic renders written as a folder in input/) through the real
    (tiny) model and WorldMirror: the whole full-model protocol runs and reports every metric."""
    from PIL import Image

    from worldstereo_core.synthetic import make_scene
    from worldstereo_core.trajectory import Trajectory, make_preset, save_camera_json

    scene = make_scene("room")
    view = scene.default_view(64, 96)
    cams = make_preset("orbit", view.cameras, view.median_depth, 81).keyframes(4)
    out = scene.render(cams)
    root = comfy_server.base_dir / "input" / "ws_eval_scene"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    for i in range(len(cams)):
        Image.fromarray((out.rgb[i].numpy() * 255).round().astype(np.uint8)).save(root / "images" / f"{i:02d}.png")
        np.save(root / "depth" / f"{i:02d}.npy", out.depth[i].numpy())
    save_camera_json(root / "camera.json", Trajectory(cams))
    graph = {
        "1": _node(
            "WorldStereoLoadModel",
            checkpoint="worldstereo-memory-dmd",
            variant="auto",
            text_encoder="umt5_xxl_tiny.safetensors",
            clip_vision="clip_vision_h_tiny.safetensors",
            vae="wan_2.1_vae_tiny.safetensors",
            wan_folder="",
            dtype="fp32",
            offload="none",
            attention_backend="default",
        ),
        "7": _node("WorldStereoLoadWorldMirror", model_name=TINY_WM, dtype="fp32"),
        "2": _node(
            "WorldStereoEvaluate",
            trajectories="orbit",
            width=96,
            height=64,
            num_keyframes=5,
            alignment="depth_anchor",
            pose_noise_deg=0.0,
            threshold_fraction=0.01,
            seed=0,
            scene_folder="ws_eval_scene",
            model=["1", 0],
            worldmirror=["7", 0],
            prompt="a room",
        ),
        "3": _node("WorldStereoSaveReport", report=["2", 0], filename_prefix="ws_test/eval_real"),
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    report = json.loads(_outputs(comfy_server, result)["3"]["text"][0])
    assert report["scene"] == "ws_eval_scene" and report["alignment"] == "depth_anchor"
    assert [t["name"] for t in report["trajectories"]] == ["orbit", "orbit"]  # the revisit pass
    assert report["num_frames"] == 9 and report["num_gt_points"] > 1000
    m = report["memory"]  # the second orbit against the first: one pair per generated keyframe
    assert m["num_pairs"] == 4 and 0.0 < m["ssim"] <= 1.0 and m["lpips"] is None
    for key in ("precision", "recall", "fscore", "auc", "rot_err_deg", "rra@15", "maa@30"):
        assert 0.0 <= report["overall"][key] <= (1.0 if key != "rot_err_deg" else 1e4), key
