"""Fixtures that run a real ComfyUI server with the pack installed."""

from __future__ import annotations

import pytest

from testsupport import REPO_ROOT, require_comfyui

# test support beside the pack: ComfyUI's CLIPLoader / CLIP Vision Loader read the tiny encoder files
CORE_ENCODER_PLUGIN = REPO_ROOT / "tests" / "comfy_plugins" / "ws_tiny_core_encoders"


@pytest.fixture(scope="session")
def comfy_server():
    """A ComfyUI 0.3.75 server (CPU, loopback, free port) with this pack in custom_nodes."""
    require_comfyui()
    from comfy_server import ComfyServer
    from tiny_models import write_tiny_models

    server = ComfyServer()
    # tiny random weights in the real file layouts, where users put the real ones
    write_tiny_models(server.base_dir / "models")
    plugins = server.base_dir / "custom_nodes"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / CORE_ENCODER_PLUGIN.name).symlink_to(CORE_ENCODER_PLUGIN, target_is_directory=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def our_nodes(comfy_server, object_info) -> dict:
    """``/object_info`` entries of this pack's nodes."""
    nodes = {k: v for k, v in object_info.items() if "worldstereo" in v.get("python_module", "").lower()}
    assert nodes, "no WorldStereo nodes registered; server log:\n" + comfy_server.log()[-4000:]
    return nodes
