"""Depth and panorama nodes on the real server: tiny MoGe-2 weights in models/moge/,
LoadMoGe → DepthEstimate (perspective and panorama), the panorama bank and panorama cloud."""

from __future__ import annotations

import time

import pytest
import torch

from comfy_server import PromptRejected
from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG

DEPTH_NODES = (
    "WorldStereoLoadMoGe",
    "WorldStereoDepthEstimate",
    "WorldStereoPanoramaViews",
    "WorldStereoPanoramaPointCloud",
)
TINY = "tiny/model.safetensors"


@pytest.fixture(scope="module")
def tiny_moge(comfy_server) -> str:
    """Deterministic tiny MoGe-2 weights under the server's models/moge/tiny/; returns the combo value."""
    from worldstereo_core.recon.moge import MoGeModel, save_moge

    model = MoGeModel(TINY_MOGE_CONFIG)
    # random weights give random point maps; this seed's fits a positive focal (checked once)
    g = torch.Generator().manual_seed(4)
    state = {
        k: v if k.endswith(("image_mean", "image_std")) else torch.randn(v.shape, generator=g) * 0.1
        for k, v in model.state_dict().items()
    }
    state["mask_head.output_blocks.3.bias"] = torch.full((1,), 8.0)  # sigmoid ≈ 1: every pixel valid
    model.load_state_dict(state)
    save_moge(model, comfy_server.base_dir / "models" / "moge" / "tiny")
    return TINY


@pytest.fixture(scope="module")
def depth_nodes(comfy_server, tiny_moge) -> dict:
    """``/object_info`` of the depth nodes, fetched after the weights were written."""
    info = comfy_server.object_info()
    missing = [n for n in DEPTH_NODES if n not in info]
    assert not missing, f"{missing} not registered: add nodes.depth.NODES to nodes/__init__.py"
    return {n: info[n] for n in DEPTH_NODES}


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _outputs(comfy_server, result) -> dict:
    """The prompt's outputs. /history is written after execution_success is sent, so the
    history the harness read right after the event may still be empty: poll for it."""
    deadline = time.time() + 30
    outputs = result.outputs
    while not outputs and time.time() < deadline:
        time.sleep(0.2)
        outputs = comfy_server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    return outputs


def _image_sizes(comfy_server, result, node_id: str) -> list[tuple[int, int]]:
    from PIL import Image

    items = _outputs(comfy_server, result)[node_id]["images"]
    sizes = []
    for item in items:
        path = comfy_server.base_dir / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
        with Image.open(path) as im:
            sizes.append(im.size)  # (width, height)
    return sizes


def _cloud(comfy_server, result, node_id: str):
    from worldstereo_core.pointcloud import load_ply

    (item,) = _outputs(comfy_server, result)[node_id]["3d"]
    return load_ply(comfy_server.base_dir / "output" / item.get("subfolder", "") / item["filename"])


def test_model_folder_lists_the_tiny_weights(depth_nodes, tiny_moge):
    spec = depth_nodes["WorldStereoLoadMoGe"]["input"]["required"]["model_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert tiny_moge in options
    outputs = depth_nodes["WorldStereoDepthEstimate"]["output"]
    assert outputs == ["WS_DEPTH", "WS_CAMERAS", "MASK", "IMAGE", "IMAGE", "WS_PANO_DISTANCE"]
    assert depth_nodes["WorldStereoLoadMoGe"]["output"] == ["WS_MOGE"]


def test_perspective_depth_estimate(comfy_server, depth_nodes, tiny_moge):
    H, W = 64, 96
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=W, height=H),
        "2": _node("WorldStereoLoadMoGe", model_name=tiny_moge, variant="auto", dtype="fp32"),
        "3": _node(
            "WorldStereoDepthEstimate", moge=["2", 0], image=["1", 0], mode="auto", fov_x=0.0, resolution_level=0
        ),
        "4": _node("SaveImage", images=["3", 4], filename_prefix="ws_test/depth_preview"),
        "5": _node("SaveImage", images=["3", 3], filename_prefix="ws_test/normals"),
        "6": _node("MaskToImage", mask=["3", 2]),
        "7": _node("SaveImage", images=["6", 0], filename_prefix="ws_test/invalid"),
        # depth + camera feed the cache builder, which checks that depth matches the image size
        "8": _node(
            "WorldStereoBuildPointCloud",
            image=["1", 0],
            depth=["3", 0],
            camera=["3", 1],
            fov_degrees=60.0,
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "9": _node("WorldStereoSavePointCloud", cloud=["8", 0], filename_prefix="ws_test/moge_cloud"),
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    for node_id in ("4", "5", "7"):
        assert _image_sizes(comfy_server, result, node_id) == [(W, H)], node_id
    cloud = _cloud(comfy_server, result, "9")
    assert len(cloud) == H * W  # every pixel valid (mask head biased to 1), nothing removed
    assert torch.isfinite(torch.as_tensor(cloud.points)).all()
    assert (torch.as_tensor(cloud.points)[:, 2] > 0).all()  # in front of the identity camera


def test_panorama_nodes(comfy_server, depth_nodes, tiny_moge):
    H, W = 64, 128  # 2:1, so DepthEstimate's auto mode takes the panorama route
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=1, width=W, height=H),
        "2": _node("WorldStereoPanoramaViews", panorama=["1", 0]),
        "3": _node("SaveImage", images=["2", 0], filename_prefix="ws_test/pano_views"),
        "4": _node("WorldStereoLoadMoGe", model_name=tiny_moge, variant="auto", dtype="fp32"),
        "5": _node(
            "WorldStereoDepthEstimate", moge=["4", 0], image=["1", 0], mode="auto", fov_x=0.0, resolution_level=0
        ),
        "6": _node("SaveImage", images=["5", 4], filename_prefix="ws_test/pano_depth"),
        "7": _node(
            "WorldStereoPanoramaPointCloud",
            panorama=["1", 0],
            distance=["5", 0],
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "8": _node("WorldStereoSavePointCloud", cloud=["7", 0], filename_prefix="ws_test/pano_cloud"),
        # the distance output (WS_PANO_DISTANCE) is the one to use; the depth output above is the path of
        # workflows saved before it existed, and gives the same cloud
        "9": _node(
            "WorldStereoPanoramaPointCloud",
            panorama=["1", 0],
            distance=["5", 5],
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "10": _node("WorldStereoSavePointCloud", cloud=["9", 0], filename_prefix="ws_test/pano_cloud_distance"),
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    assert _image_sizes(comfy_server, result, "3") == [(832, 480)] * 27
    assert _image_sizes(comfy_server, result, "6") == [(W, H)]
    cloud = _cloud(comfy_server, result, "8")
    assert len(cloud) == H * W
    radius = torch.as_tensor(cloud.points).double().norm(dim=-1)
    assert torch.isfinite(radius).all() and (radius > 0).all()
    assert torch.equal(torch.as_tensor(_cloud(comfy_server, result, "10").points), torch.as_tensor(cloud.points))


def test_panorama_distance_is_not_z_depth(comfy_server, depth_nodes, tiny_moge):
    """A panorama's ray distance lifted as z-depth would bend every plane: Build Point Cloud refuses it;
    Panorama Point Cloud refuses z-depth in turn."""
    H, W = 64, 128
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=1, width=W, height=H),
        "4": _node("WorldStereoLoadMoGe", model_name=tiny_moge, variant="auto", dtype="fp32"),
        "5": _node(
            "WorldStereoDepthEstimate", moge=["4", 0], image=["1", 0], mode="auto", fov_x=0.0, resolution_level=0
        ),
        "7": _node(
            "WorldStereoBuildPointCloud",
            image=["1", 0],
            depth=["5", 0],
            fov_degrees=60.0,
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "8": _node("WorldStereoSavePointCloud", cloud=["7", 0], filename_prefix="ws_test/never"),
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error"
    assert (
        "ray distance" in result.error["exception_message"]
        and "Panorama Point Cloud" in result.error["exception_message"]
    ), result.error
    graph["7"] = _node(
        "WorldStereoPanoramaPointCloud",
        panorama=["1", 0],
        distance=["1", 1],
        remove_depth_edges=False,
        compress_far_depth=False,
        max_points=0,
    )
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error"
    assert "z-depth, not a panorama's ray distance" in result.error["exception_message"], result.error


def test_panorama_views_refuse_a_non_panorama(comfy_server, depth_nodes):
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=96, height=64),
        "2": _node("WorldStereoPanoramaViews", panorama=["1", 0]),
        "3": _node("SaveImage", images=["2", 0], filename_prefix="ws_test/bad_pano"),
    }
    result = comfy_server.run(graph, timeout=120)
    assert result.status == "error"
    assert "2:1" in result.error["exception_message"], result.error


def test_missing_weights_say_where_to_put_them(comfy_server, depth_nodes):
    graph = {
        "1": _node("WorldStereoLoadMoGe", model_name="nope/model.safetensors", variant="auto", dtype="fp32"),
        "2": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=64, height=64),
        "3": _node(
            "WorldStereoDepthEstimate", moge=["1", 0], image=["2", 0], mode="auto", fov_x=0.0, resolution_level=0
        ),
        "4": _node("SaveImage", images=["3", 4], filename_prefix="ws_test/never"),
    }
    try:
        result = comfy_server.run(graph, timeout=120)
    except PromptRejected as e:  # a server that checks combo values refuses it up front
        assert "nope/model.safetensors" in str(e)
        return
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "nope/model.safetensors" in message and "models/moge/" in message, message
