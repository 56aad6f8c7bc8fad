"""Core nodes in: a depth map from another pack (a plain IMAGE or MASK through ComfyUI's Load Image
and Image To Mask) becomes this pack's z-depth with Depth From Image and lifts into a cloud."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

H, W = 48, 64


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def test_depth_map_image_and_mask_from_core_nodes_lift_to_the_expected_depth(comfy_server):
    from worldstereo_core.pointcloud import load_ply

    # a disparity map as another pack writes it: near = bright (v = 0.25 .. 1.0, left to right)
    v = np.tile(np.linspace(0.25, 1.0, W, dtype=np.float32), (H, 1))
    Image.fromarray((v * 255).round().astype(np.uint8)).convert("RGB").save(
        comfy_server.base_dir / "input" / "ws_disp.png"
    )
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(comfy_server.base_dir / "input" / "ws_rgb.png")
    graph = {
        "1": _node("LoadImage", image="ws_disp.png"),
        "2": _node("LoadImage", image="ws_rgb.png"),
        "3": _node("WorldStereoDepthFromImage", convention="disparity", scale=2.0, image=["1", 0]),
        "4": _node("ImageToMask", image=["1", 0], channel="red"),
        "5": _node("WorldStereoDepthFromImage", convention="disparity", scale=2.0, mask=["4", 0]),
        "6": _node(
            "WorldStereoBuildPointCloud",
            image=["2", 0],
            depth=["3", 0],
            fov_degrees=60.0,
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "7": _node(
            "WorldStereoBuildPointCloud",
            image=["2", 0],
            depth=["5", 0],
            fov_degrees=60.0,
            remove_depth_edges=False,
            compress_far_depth=False,
            max_points=0,
        ),
        "8": _node("WorldStereoSavePointCloud", cloud=["6", 0], filename_prefix="ws_core/from_image"),
        "9": _node("WorldStereoSavePointCloud", cloud=["7", 0], filename_prefix="ws_core/from_mask"),
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    clouds = [load_ply(f) for f in sorted(comfy_server.output_files(result)) if f.suffix == ".ply"]
    assert len(clouds) == 2
    a, b = clouds
    assert len(a) == len(b) == H * W
    torch.testing.assert_close(torch.as_tensor(a.points), torch.as_tensor(b.points))
    # identity camera: z is the depth; z = 2 / v, from 2 (v = 1) to 8 (v = 0.25), up to 8-bit rounding
    z = torch.as_tensor(a.points)[:, 2]
    assert float(z.min()) == torch.tensor(2.0).item() and abs(float(z.max()) - 8.0) < 0.05


def test_scene_loop_video_output_saves_with_core_save_video(comfy_server):
    """Core nodes out: the loop's frames as ComfyUI's VIDEO go straight into core Save Video."""
    graph = {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=96, height=64),
        "2": _node(
            "WorldStereoOracleSceneLoop",
            scene=["1", 3],
            image=["1", 0],
            depth=["1", 1],
            camera=["1", 2],
            trajectories="orbit",
            clip_depth="exact",
            retrieval_mode="aabb",
            seed=0,
        ),
        "3": _node("SaveVideo", video=["2", 7], filename_prefix="ws_core/loop_video", format="mp4", codec="h264"),
        "4": _node("GetVideoComponents", video=["2", 7]),
        "5": _node("SaveImage", images=["4", 0], filename_prefix="ws_core/loop_video_frames"),
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    files = comfy_server.output_files(result)
    videos = [f for f in files if f.suffix == ".mp4"]
    assert videos and videos[0].stat().st_size > 1000
    frames = [f for f in files if f.suffix == ".png"]
    assert len(frames) == 21  # the 21 keyframes of the one trajectory, as the VIDEO carries them
