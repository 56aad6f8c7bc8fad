"""Geometry nodes: point clouds from depth, trajectories, and the GGM render of the 3D cache."""

from __future__ import annotations

import torch

from worldstereo_core import cameras as cam_lib
from worldstereo_core import pointcloud as pc_lib
from worldstereo_core import render as render_lib
from worldstereo_core import safe_json
from worldstereo_core import trajectory as traj_lib
from worldstereo_core.errors import InvalidCameraError, InvalidDepthError, InvalidTrajectoryError, MalformedJsonError
from worldstereo_core.merge import first_cache

from .comfy_v3 import io
from .common import (
    CATEGORY,
    Cameras,
    Depth,
    PointCloud,
    Trajectory,
    cap_points,
    image_to_hwc,
    input_file,
    inspector_ui,
    max_points_input,
    render_trajectories,
    search_aliases,
    z_depth,
)
from .inspector import PresetPlanner

SUB = f"{CATEGORY}/geometry"


def _median_depth(depth: torch.Tensor) -> float:
    valid = depth[depth > 0]
    if valid.numel() == 0:
        raise InvalidTrajectoryError("the depth map has no valid pixel, so the scene's median depth is unknown")
    return float(valid.double().median())


class BuildPointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoBuildPointCloud",
            display_name="Build Point Cloud (WorldStereo)",
            **search_aliases("BuildPointCloud"),
            category=SUB,
            description="Lifts an image and its z-depth into a coloured world point cloud (the first "
            "3D cache), the way the release does: unprojection at pixel centres, far-depth "
            "compression beyond 8x the median, and removal of points on depth edges (their test "
            "scaled to the image's resolution, as the Scene Loop does). With voxel_size_fraction 0.01 "
            "and compress_far_depth off it is exactly the Scene Loop's first cache.",
            inputs=[
                io.Image.Input("image", tooltip="The input view (first image of the batch is used)."),
                Depth.Input(
                    "depth",
                    tooltip="Its z-depth in world units, same size as the image (a depth map "
                    "from another pack, IMAGE or MASK: through Depth From Image).",
                ),
                Cameras.Input(
                    "camera",
                    optional=True,
                    tooltip="The view's camera (w2c, K). Without it: identity pose and fov_degrees.",
                ),
                io.Float.Input(
                    "fov_degrees",
                    default=60.0,
                    min=1.0,
                    max=179.0,
                    step=0.5,
                    tooltip="Horizontal field of view, used only when no camera is connected.",
                ),
                io.Boolean.Input(
                    "remove_depth_edges",
                    default=True,
                    tooltip="Drop points on depth discontinuities (Sobel on normalised disparity), "
                    "which would otherwise smear between foreground and background.",
                ),
                io.Boolean.Input(
                    "compress_far_depth",
                    default=True,
                    tooltip="Compress depth beyond 8x the median (2m − m²/d), as the release does, "
                    "so the far background stays near the scene.",
                ),
                max_points_input(),
                io.Float.Input(
                    "voxel_size_fraction",
                    default=0.0,
                    min=0.0,
                    max=0.2,
                    step=0.0005,
                    optional=True,
                    tooltip="Voxel grid of the cache, as a fraction of the depth's median: each "
                    "voxel keeps the mean of its points (0 = keep every point). The Scene Loop's "
                    "first cache uses 0.01 (with compress_far_depth off).",
                ),
            ],
            outputs=[
                PointCloud.Output(display_name="cloud", tooltip="World point cloud with colours."),
                Cameras.Output(display_name="camera", tooltip="The camera used (connected or made from the FoV)."),
            ],
        )

    @classmethod
    def execute(
        cls,
        image,
        depth,
        fov_degrees,
        remove_depth_edges,
        compress_far_depth,
        max_points,
        camera=None,
        voxel_size_fraction=0.0,
    ) -> io.NodeOutput:
        img = image_to_hwc(image)
        depth = z_depth(depth)
        d = depth[0] if depth.ndim == 3 else depth
        H, W = d.shape[-2:]
        if img.shape[:2] != (H, W):
            raise InvalidDepthError(
                f"image is {img.shape[0]}×{img.shape[1]} but depth is {H}×{W}; resize one to match the other"
            )
        if camera is None:
            K = cam_lib.intrinsics_from_fov(fov_degrees, H, W).float()[None]
            camera = cam_lib.Cameras(torch.eye(4)[None], K, H, W)
        elif (camera.height, camera.width) != (H, W):
            camera = camera.resized(H, W)
        # the scene loop's own first step, so a graph of separate nodes builds the same cache
        _, cache = first_cache(
            img[None],
            d[None].float(),
            camera[:1],
            edge_threshold=pc_lib.RELEASE_EDGE_THRESHOLD if remove_depth_edges else None,
            far_contract=pc_lib.RELEASE_FAR_CONTRACT if compress_far_depth else None,
            voxel_fraction=voxel_size_fraction if voxel_size_fraction > 0 else None,
        )
        cloud = cap_points(cache.cloud, max_points)
        return io.NodeOutput(cloud, camera[:1], ui=inspector_ui("point cloud", cloud=cloud, trajectories=[camera[:1]]))


class DepthFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoDepthFromImage",
            display_name="Depth From Image (WorldStereo)",
            category=SUB,
            description="Turns a depth map made by another pack (an IMAGE or a MASK, e.g. Depth Anything, MiDaS, "
            "Marigold) into this pack's z-depth, for Build Point Cloud, Trajectory Builder and the Scene Loop. "
            "Convention: depth = larger values are farther (z = scale × v); disparity = larger values are nearer "
            "(z = scale / v, what relative depth models output). Values ≤ 0 are unknown.",
            inputs=[
                io.Combo.Input(
                    "convention",
                    options=list(pc_lib.DEPTH_MAP_CONVENTIONS),
                    default="disparity",
                    tooltip="depth: larger = farther (z = scale × value); disparity: larger = nearer "
                    "(z = scale / value; Depth Anything / MiDaS-style maps).",
                ),
                io.Float.Input(
                    "scale",
                    default=1.0,
                    min=1e-6,
                    max=1e6,
                    step=0.01,
                    tooltip="World units: z = scale × value (depth) or scale / value (disparity). Relative "
                    "maps have no metric scale; the loop only needs a consistent one.",
                ),
                io.Image.Input("image", optional=True, tooltip="A depth map as an IMAGE (its first channel is read)."),
                io.Mask.Input("mask", optional=True, tooltip="A depth map as a MASK (used if no image is connected)."),
            ],
            outputs=[Depth.Output(display_name="depth", tooltip="z-depth [N, H, W] in world units, 0 where unknown.")],
        )

    @classmethod
    def execute(cls, convention, scale, image=None, mask=None) -> io.NodeOutput:
        if image is not None:
            values = image[..., 0]
        elif mask is not None:
            values = mask if mask.ndim == 3 else mask[None]
        else:
            raise InvalidDepthError("connect a depth map to image (IMAGE) or mask (MASK)")
        return io.NodeOutput(pc_lib.depth_from_map(values, convention, scale))


class TrajectoryBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoTrajectoryBuilder",
            display_name="Trajectory Builder (WorldStereo)",
            **search_aliases("TrajectoryBuilder"),
            category=SUB,
            description="Plans a camera trajectory from the input camera: a preset (orbit, up, left, "
            "right, aerial, …) scaled by the scene's median depth, or a camera.json / keyframe list. "
            "With a cache connected, moves that would pass through geometry are shortened (halved) "
            "as the release does.",
            inputs=[
                Cameras.Input("camera", tooltip="The start camera (the input view's)."),
                io.Combo.Input(
                    "preset",
                    options=[*traj_lib.PRESETS.keys(), "camera_json", "keyframes"],
                    default="orbit",
                    tooltip="A preset motion, or camera_json (load a file) or keyframes (the JSON below).",
                ),
                io.Float.Input(
                    "median_depth",
                    default=0.0,
                    min=0.0,
                    max=1e6,
                    step=0.01,
                    tooltip="The scene's median depth seen from the camera (world units). "
                    "0 = take it from the depth input.",
                ),
                io.Float.Input(
                    "angle",
                    default=0.0,
                    min=0.0,
                    max=360.0,
                    step=1.0,
                    tooltip="Rotation angle in degrees for up/down/left/right/pan (0 = preset default: "
                    "45° up, 90° left/right).",
                ),
                io.Float.Input(
                    "extent",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=0.01,
                    tooltip="Radius (orbit/eloop) or distance (forward/backward/wonder) as a fraction of "
                    "the median depth (0 = preset default, e.g. orbit 0.3).",
                ),
                io.Int.Input(
                    "num_frames",
                    default=81,
                    min=2,
                    max=1024,
                    tooltip="Number of poses (the released model uses 81; it works on 21 keyframes).",
                ),
                io.String.Input(
                    "camera_json",
                    default="",
                    multiline=False,
                    tooltip="A camera.json (upstream format) for preset = camera_json, relative to "
                    "ComfyUI's input folder (append ' [output]' for one in the output folder).",
                ),
                io.String.Input(
                    "keyframes",
                    default="",
                    multiline=True,
                    tooltip='JSON list of keyframes for preset = keyframes: each {"position": [x,y,z], '
                    '"look_at": [x,y,z], "up"?: [x,y,z]} or {"w2c": 4×4}; interpolated smoothly '
                    "(slerp). Edited by dragging in the node's 3D view.",
                ),
                Depth.Input("depth", optional=True, tooltip="Depth of the start view, for the median depth."),
                PointCloud.Input(
                    "cache", optional=True, tooltip="The current 3D cache: moves through its geometry are shortened."
                ),
            ],
            outputs=[Trajectory.Output(display_name="trajectory", tooltip="The planned camera path.")],
            # an output node, so the editor gets the run's preview even when the graph is cached
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, camera, preset, median_depth, angle, extent, num_frames, camera_json, keyframes, depth=None, cache=None
    ) -> io.NodeOutput:
        depth = None if depth is None else z_depth(depth)
        first = camera[:1]
        if preset == "camera_json":
            if not camera_json.strip():
                raise InvalidTrajectoryError("preset is camera_json but no camera_json path was given")
            # only files inside ComfyUI's input/output folders, checked after resolving symlinks;
            # camera.json K is in pixels of the file's own image: rescale it to the start view
            path = input_file(camera_json, "camera_json")
            traj = traj_lib.load_camera_json(path).resized(first.height, first.width)
            return io.NodeOutput(traj, ui=cls._ui(traj, first, cache, depth))
        if preset == "keyframes":
            try:
                kfs = safe_json.loads(keyframes, what="keyframes")
            except MalformedJsonError as e:
                raise InvalidTrajectoryError(str(e)) from None
            traj = traj_lib.from_keyframes(kfs, first.K[0], first.height, first.width, num_frames=num_frames)
            return io.NodeOutput(traj, ui=cls._ui(traj, first, cache, depth))
        m = median_depth if median_depth > 0 else (_median_depth(depth) if depth is not None else None)
        if m is None:
            raise InvalidTrajectoryError("set median_depth or connect the depth of the start view")
        points = cache.points if cache is not None and len(cache) > 0 else None
        traj, _ = traj_lib.preset_from_controls(
            preset, first, m, angle=angle, extent=extent, num_frames=num_frames, cache_points=points
        )
        return io.NodeOutput(traj, ui=cls._ui(traj, first, cache, depth))

    @staticmethod
    def _ui(traj, first, cache, depth) -> dict:
        # the start camera and the depth's median go with the preview, so the browser can
        # re-plan presets live (route .../preset) while the user changes the controls
        depth_median = None
        if depth is not None:
            try:
                depth_median = _median_depth(depth)
            except InvalidTrajectoryError:
                pass
        return inspector_ui("trajectory", cloud=cache, trajectories=[traj], planner=PresetPlanner(first, depth_median))


class RenderCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoRenderCache",
            display_name="GGM Render Cache (WorldStereo)",
            category=SUB,
            description="Renders the 3D cache along a trajectory: the Global-Geometric Memory (GGM) "
            "condition of the video model — colour render, hole mask (1 = hole) and z-depth, with "
            "the release's splatting (radius 0.008 NDC, nearest surface wins).",
            inputs=[
                PointCloud.Input("cache", tooltip="The 3D cache (point cloud) to render."),
                Trajectory.Input("trajectory", tooltip="Camera path to render along."),
                io.Boolean.Input(
                    "keyframes_only",
                    default=True,
                    tooltip="Render only the 21 keyframes the model works on (else every pose).",
                ),
                io.Float.Input(
                    "radius",
                    default=render_lib.RELEASE_RADIUS,
                    min=0.0005,
                    max=0.1,
                    step=0.0005,
                    tooltip="Splat radius in NDC units (release: 0.008).",
                ),
                io.Image.Input(
                    "first_frame",
                    optional=True,
                    tooltip="Replaces the first render (the release puts the input image there).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="render", tooltip="Rendered colours [F, H, W, 3]."),
                io.Mask.Output(display_name="hole_mask", tooltip="1 where nothing was rendered (hole), 0 covered."),
                Depth.Output(display_name="depth", tooltip="Rendered z-depth (0 in holes)."),
            ],
        )

    @classmethod
    def execute(cls, cache, trajectory, keyframes_only, radius, first_frame=None) -> io.NodeOutput:
        first = None if first_frame is None else image_to_hwc(first_frame)

        def render(cams):
            if first is not None and first.shape[:2] != (cams.height, cams.width):
                raise InvalidCameraError(
                    f"first_frame is {first.shape[0]}×{first.shape[1]} but the trajectory renders "
                    f"{cams.height}×{cams.width}; resize the image or the trajectory"
                )
            return render_lib.render_point_cloud(
                cache.require_nonempty("3D cache"), cams, radius=radius, first_frame=first
            )

        trajs, renders = render_trajectories(trajectory, keyframes_only, render)
        return io.NodeOutput(
            torch.cat([r.rgb for r in renders]).float(),
            torch.cat([r.mask for r in renders]).float(),
            torch.cat([r.depth for r in renders]).float(),
            ui=inspector_ui("GGM render", cloud=cache, trajectories=trajs),
        )


NODES = [BuildPointCloud, DepthFromImage, TrajectoryBuilder, RenderCache]
