"""Export nodes: point clouds, scenes with camera frustums, camera.json, videos, reports, COLMAP and
nerfstudio (transforms.json) folders."""

from __future__ import annotations

import json
import os

from worldstereo_core import export, safe_json
from worldstereo_core import trajectory as traj_lib
from worldstereo_core.errors import OutputPathError
from worldstereo_core.recon import reconstruct as rec_lib

from . import comfy_v3
from .comfy_v3 import io
from .common import (
    CATEGORY,
    PointCloud,
    Trajectory,
    filename_prefix_input,
    max_points_input,
    one_trajectory,
    relative_output_path,
    save_folder_path,
    save_path,
    saved,
    saved_path_output,
    trajectories_of,
)
from .common import Cameras as CamerasSocket

SUB = f"{CATEGORY}/export"


def _write_export_folder(filename_prefix: str, write) -> str:
    """Write a fresh output folder ``<prefix>_00001_`` atomically (a hidden temporary folder
    renamed at the end, so a failure leaves nothing behind); returns its relative path."""
    from worldstereo_core import atomic

    full, rel = save_folder_path(filename_prefix)
    try:
        atomic.write_folder(full, lambda tmp: write(str(tmp)))
    except FileExistsError:
        raise OutputPathError(f"output folder {rel} appeared while writing; run the node again") from None
    return rel


def _views_inputs() -> list:
    """``frames`` and ``cameras``: the views an exported folder holds (COLMAP, transforms.json)."""
    return [
        io.Image.Input("frames", tooltip="The frames, one per camera, in order."),
        CamerasSocket.Input(
            "cameras",
            tooltip="Their cameras (e.g. WorldMirror Reconstruct Frames' or Depth "
            "Fusion's cameras); K is rescaled if the frames are another size of the same aspect.",
        ),
    ]


def _views(frames, cameras, cloud):
    """``(frames [N, H, W, 3] on the CPU, their cameras at the frames' size, the cloud or None)``,
    checked before anything is written."""
    x = frames[..., :3].float().cpu()
    (cams,) = rec_lib.clip_cameras([cameras], x.shape[0], x.shape[1], x.shape[2])
    return x, cams, cloud.require_nonempty() if cloud is not None else None


def file3d_outputs(socket: str, what: str) -> list:
    """``model_3d``: the saved file as ComfyUI's File3D value (``io.<socket>``, e.g. File3DGLB), appended
    after ``model_file`` on builds that have File3D types (:data:`.comfy_v3.HAS_FILE3D`); none on others."""
    if not comfy_v3.HAS_FILE3D:
        return []
    return [
        getattr(io, socket).Output(
            display_name="model_3d",
            tooltip=f"The saved {what} as ComfyUI's 3D file (for core Preview 3D and 3D nodes; "
            "ComfyUI builds with File3D types).",
        )
    ]


def saved_3d_file_output(info) -> io.NodeOutput:
    """A 3D save node's outputs: the path relative to the output folder, then (where the build has File3D
    types) the file itself as a File3D; the file is shown in the node's 3D preview."""
    rel, ui = relative_output_path(info), {"3d": [saved(info)]}
    if comfy_v3.HAS_FILE3D:
        return io.NodeOutput(rel, comfy_v3.File3D(str(info[0])), ui=ui)
    return io.NodeOutput(rel, ui=ui)


class SavePointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSavePointCloud",
            display_name="Save Point Cloud PLY (WorldStereo)",
            category=SUB,
            description="Writes a point cloud as a binary PLY (positions, colours, normals) in the "
            "output folder. Its model_file output feeds ComfyUI's Preview 3D node.",
            is_output_node=True,
            inputs=[
                PointCloud.Input("cloud", tooltip="The point cloud to save (e.g. the merged 3D cache)."),
                filename_prefix_input("worldstereo/cloud"),
            ],
            outputs=[
                saved_path_output("model_file"),
                *file3d_outputs("File3DAny", "PLY point cloud"),
            ],
        )

    @classmethod
    def execute(cls, cloud, filename_prefix) -> io.NodeOutput:
        info = save_path(filename_prefix, "ply")
        export.save_pointcloud_ply(info[0], cloud.require_nonempty())
        return saved_3d_file_output(info)


class SaveSceneGLB(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveSceneGLB",
            display_name="Save Scene GLB (WorldStereo)",
            category=SUB,
            description="Writes a GLB holding the point cloud and every trajectory as camera "
            "frustums (one colour each). Opens in Preview 3D and Blender.",
            is_output_node=True,
            inputs=[
                PointCloud.Input("cloud", tooltip="Point cloud to include (downsampled to max_points)."),
                filename_prefix_input("worldstereo/scene"),
                max_points_input(
                    "Keep at most this many points in the GLB (a deterministic subset).",
                    500_000,
                    min=1_000,
                    max=20_000_000,
                    step=1_000,
                ),
                Trajectory.Input("trajectory_1", optional=True, tooltip="A trajectory drawn as frustums."),
                Trajectory.Input("trajectory_2", optional=True, tooltip="A trajectory drawn as frustums."),
                Trajectory.Input("trajectory_3", optional=True, tooltip="A trajectory drawn as frustums."),
                Trajectory.Input("trajectory_4", optional=True, tooltip="A trajectory drawn as frustums."),
            ],
            outputs=[
                saved_path_output("model_file"),
                *file3d_outputs("File3DGLB", "GLB scene"),
            ],
        )

    @classmethod
    def execute(
        cls,
        cloud,
        filename_prefix,
        max_points,
        trajectory_1=None,
        trajectory_2=None,
        trajectory_3=None,
        trajectory_4=None,
    ) -> io.NodeOutput:
        trajs = []
        for i, t in enumerate((trajectory_1, trajectory_2, trajectory_3, trajectory_4)):
            if t is None:
                continue
            for j, tr in enumerate(trajectories_of(t)):
                trajs.append((tr.name or f"trajectory_{i + 1}_{j}", tr.cameras))
        info = save_path(filename_prefix, "glb")
        export.save_cameras_glb(info[0], cloud.require_nonempty(), trajs, max_points=max_points)
        return saved_3d_file_output(info)


class SaveCameraJson(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveCameraJson",
            display_name="Save camera.json (WorldStereo)",
            category=SUB,
            description="Writes a trajectory as camera.json in the upstream WorldStereo format "
            "(w2c extrinsics, intrinsics in pixels, motion list).",
            is_output_node=True,
            inputs=[
                Trajectory.Input("trajectory", tooltip="The trajectory to save."),
                filename_prefix_input("worldstereo/camera"),
            ],
            outputs=[saved_path_output()],
        )

    @classmethod
    def execute(cls, trajectory, filename_prefix) -> io.NodeOutput:
        traj = one_trajectory(trajectory, "camera.json holds one")  # checked before the output name is taken
        info = save_path(filename_prefix, "json")
        traj_lib.save_camera_json(info[0], traj)
        return io.NodeOutput(relative_output_path(info), ui={"text": [relative_output_path(info)]})


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveVideo",
            display_name="Save MP4 (WorldStereo)",
            category=SUB,
            description="Encodes frames (renders, hole masks, generated keyframes) as an H.264 MP4 "
            "in the output folder.",
            is_output_node=True,
            inputs=[
                io.Image.Input("frames", tooltip="Frames to encode, in order."),
                filename_prefix_input("worldstereo/video"),
                io.Float.Input(
                    "fps",
                    default=8.0,
                    min=0.5,
                    max=60.0,
                    step=0.5,
                    tooltip="Frames per second of the video (21 keyframes at 8 fps ≈ 2.6 s).",
                ),
            ],
            outputs=[saved_path_output()],
        )

    @classmethod
    def execute(cls, frames, filename_prefix, fps) -> io.NodeOutput:
        info = save_path(filename_prefix, "mp4")
        export.save_video_mp4(info[0], frames, fps=fps)
        return io.NodeOutput(relative_output_path(info), ui={"images": [saved(info)], "animated": (True,)})


class SaveReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveReport",
            display_name="Save Metrics Report (WorldStereo)",
            category=SUB,
            description="Saves a metrics report (JSON text from the scene loop or Evaluate) to the "
            "output folder and shows it on the node.",
            is_output_node=True,
            inputs=[
                io.String.Input("report", force_input=True, tooltip="A JSON metrics report."),
                filename_prefix_input("worldstereo/metrics"),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, report, filename_prefix) -> io.NodeOutput:
        data = safe_json.loads(report, what="report")  # bounded: a pasted report is user text
        info = save_path(filename_prefix, "json")
        export.write_text_atomic(info[0], json.dumps(data, indent=2))  # atomic: temp file + rename
        return io.NodeOutput(ui={"text": [json.dumps(data, indent=2)], "files": [saved(info)]})


class SaveColmap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveColmap",
            display_name="Save COLMAP Model (WorldStereo)",
            category=SUB,
            description="Writes the frames and their cameras as a COLMAP text model in a new output folder: "
            "images/frame_00000.png…, sparse/0/cameras.txt (PINHOLE), images.txt (world-to-camera, OpenCV — "
            "COLMAP's own convention) and points3D.txt (the cloud, if connected). Gaussian-splatting and NeRF "
            "tools read this layout.",
            is_output_node=True,
            inputs=[
                *_views_inputs(),
                filename_prefix_input("worldstereo/colmap", "folder"),
                max_points_input(
                    "Keep at most this many points in points3D.txt (a deterministic subset; 0 = all).", 1_000_000
                ),
                PointCloud.Input("cloud", optional=True, tooltip="Initial points for points3D.txt."),
            ],
            outputs=[saved_path_output(tooltip="The model folder, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, frames, cameras, filename_prefix, max_points, cloud=None) -> io.NodeOutput:
        x, cams, pts = _views(frames, cameras, cloud)

        def write(full: str) -> None:
            names = export.save_images_png(os.path.join(full, "images"), x)
            export.save_colmap_text(
                os.path.join(full, "sparse", "0"), cams, names, pts, max_points=max_points if max_points > 0 else None
            )

        rel = _write_export_folder(filename_prefix, write)
        return io.NodeOutput(rel, ui={"text": [rel]})


class SaveTransformsJson(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveTransformsJson",
            display_name="Save transforms.json (WorldStereo)",
            category=SUB,
            description="Writes the frames and their cameras for nerfstudio in a new output folder: "
            "images/frame_00000.png… and transforms.json (camera-to-world in OpenGL axes, fl_x/fl_y/cx/cy/w/h), "
            "plus sparse_pc.ply named as ply_file_path when a cloud is connected (splatfacto's initialisation).",
            is_output_node=True,
            inputs=[
                *_views_inputs(),
                filename_prefix_input("worldstereo/nerfstudio", "folder"),
                PointCloud.Input("cloud", optional=True, tooltip="Initial points, written as sparse_pc.ply."),
            ],
            outputs=[saved_path_output(tooltip="transforms.json, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, frames, cameras, filename_prefix, cloud=None) -> io.NodeOutput:
        x, cams, pts = _views(frames, cameras, cloud)

        def write(full: str) -> None:
            names = export.save_images_png(os.path.join(full, "images"), x)
            ply = None
            if pts is not None:
                export.save_pointcloud_ply(os.path.join(full, "sparse_pc.ply"), pts)
                ply = "sparse_pc.ply"
            export.save_transforms_json(
                os.path.join(full, "transforms.json"), cams, [f"images/{n}" for n in names], ply_file_path=ply
            )

        rel = _write_export_folder(filename_prefix, write)
        path = f"{rel}/transforms.json"
        return io.NodeOutput(path, ui={"text": [path]})


NODES = [SavePointCloud, SaveSceneGLB, SaveCameraJson, SaveVideo, SaveReport, SaveColmap, SaveTransformsJson]
