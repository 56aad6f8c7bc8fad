"""Reconstruction nodes: WorldMirror 2.0 and depth fusion (frames → depth, cloud, cameras)."""

from __future__ import annotations

import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (
    AlignmentFailedError,
    MissingInputError,
    ShapeMismatchError,
)
from worldstereo_core.merge import align_clip_depth
from worldstereo_core.pointcloud import RELEASE_EDGE_THRESHOLD
from worldstereo_core.pointcloud import PointCloud as PointCloudValue
from worldstereo_core.recon import reconstruct as rec_lib
from worldstereo_core.recon import worldmirror as wm_lib
from worldstereo_core.recon.estimators import MoGeDepthEstimator

from .comfy_v3 import io
from .common import (
    CATEGORY,
    Depth,
    PointCloud,
    Progress,
    Trajectory,
    dtype_input,
    inspector_ui,
    load_model_file,
    model_name_input,
    register_model_folder,
    search_aliases,
    trajectories_of,
)
from .common import (
    Cameras as CamerasSocket,
)
from .depth import MoGe, depth_preview

SUB_RECON = f"{CATEGORY}/reconstruction"

# A loaded worldstereo_core.recon.worldmirror.WorldMirror (eval mode, on ComfyUI's torch device).
WorldMirror = io.Custom("WS_WORLDMIRROR")

MODEL_FOLDER = "worldmirror"  # models/worldmirror/: model.safetensors + config.json per subfolder (HY-World-2.0)

register_model_folder(MODEL_FOLDER)


def _clip_inputs() -> list:
    """``frames`` and ``trajectory``: the clips both reconstruction nodes take."""
    return [
        io.Image.Input("frames", tooltip="The generated frames: the clips of the trajectories, concatenated in order."),
        Trajectory.Input(
            "trajectory",
            tooltip="The trajectory (or the scene loop's tuple of them) the frames follow: 21 "
            "frames per trajectory are its keyframes, otherwise one frame per pose.",
        ),
    ]


def _remove_depth_edges_input() -> io.Boolean.Input:
    return io.Boolean.Input(
        "remove_depth_edges",
        default=True,
        tooltip="Drop pixels on depth discontinuities (release rule), which would smear "
        "between foreground and background.",
    )


def _outputs(depth: str, cameras: str) -> list:
    """depth, cloud, cameras, depth_preview: what both reconstruction nodes give (their own tooltips for depth
    and cameras). New objects per call: ComfyUI numbers a schema's outputs in place."""
    return [
        Depth.Output(display_name="depth", tooltip=depth),
        PointCloud.Output(
            display_name="cloud", tooltip="The frames' points in the world frame (not merged into the cache)."
        ),
        CamerasSocket.Output(display_name="cameras", tooltip=cameras),
        io.Image.Output(
            display_name="depth_preview",
            tooltip="Disparity in the turbo colormap (near = red, far = blue, dropped = black).",
        ),
    ]


def _clips(frames: torch.Tensor, trajectory) -> tuple[torch.Tensor, list]:
    """``(frames [F, H, W, 3] float on the CPU, the cameras of each trajectory's clip at the frames' size)``."""
    if frames.ndim != 4:
        raise ShapeMismatchError(f"frames must be an IMAGE batch [F, H, W, 3], got {tuple(frames.shape)}")
    x = frames[..., :3].float().cpu()
    return x, rec_lib.clip_cameras(trajectories_of(trajectory), *x.shape[:3])


def _reconstruction(depth: torch.Tensor, cloud, cameras) -> io.NodeOutput:
    """A reconstruction node's outputs (depth, cloud, cameras, depth preview) and its inspector entry."""
    return io.NodeOutput(
        depth,
        cloud,
        cameras,
        depth_preview(depth),
        ui=inspector_ui("reconstruction", cloud=cloud, trajectories=[cameras]),
    )


class LoadWorldMirror(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoLoadWorldMirror",
            display_name="Load WorldMirror 2.0 (WorldStereo)",
            category=SUB_RECON,
            description="Loads WorldMirror 2.0 (HY-World-2.0 worldrecon), the feed-forward reconstruction model "
            "WorldStereo runs on its generated frames, from models/worldmirror/: a subfolder holding "
            "model.safetensors + config.json (as released), or a loose .safetensors file (default layout, or "
            "a file written by save_worldmirror with its config inside).",
            inputs=[
                model_name_input(
                    MODEL_FOLDER, "Weights under models/worldmirror/ (e.g. HY-WorldMirror-2.0/model.safetensors)."
                ),
                dtype_input("Weight precision. fp16/bf16 halve the memory on a GPU; use fp32 on CPU."),
            ],
            outputs=[WorldMirror.Output(display_name="worldmirror", tooltip="The loaded WorldMirror model.")],
        )

    @classmethod
    def execute(cls, model_name, dtype) -> io.NodeOutput:
        return io.NodeOutput(load_model_file(wm_lib.load_worldmirror, MODEL_FOLDER, model_name, dtype, "WorldMirror"))


def depth_fusion(x: torch.Tensor, clips: list, moge, cache, edges: float | None):
    """MoGe-2 depth of every frame at its known camera, aligned to the cache frame by frame
    (:func:`worldstereo_core.merge.align_clip_depth`, the loop's alignment) and lifted: ``(depth, cloud,
    cameras)``, the depth a ``WorldDepth`` (merging it later does not align it again)."""
    F_ = x.shape[0]
    if moge is None:
        raise MissingInputError("depth fusion needs a depth model: connect Load MoGe-2 to moge")
    if cache is None:
        raise MissingInputError("depth fusion aligns the frames to the 3D cache: connect the cache")
    cams = Cameras.cat(clips)
    progress = Progress(2 * F_)
    est = MoGeDepthEstimator(moge, progress=lambda done, _t: progress(done, 2 * F_))
    mono, valid = est(x, cams)
    fused = align_clip_depth(
        cache.require_nonempty("3D cache"),
        x,
        mono,
        valid,
        cams,
        edge_threshold=edges,
        progress=lambda done, _t: progress(F_ + done, 2 * F_),
    )
    if len(fused.cloud) == 0:
        raise AlignmentFailedError(
            "no frame overlapped the 3D cache enough to align its depth; check that the cache and the "
            "trajectory are in the same world (the cache built from the trajectory's start view)"
        )
    depth = fused.depth.float()  # a WorldDepth (0 outside the kept pixels): merging it will not re-align it
    cloud = fused.cloud
    return depth, cloud, cams


class WorldMirrorRecon(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoWorldMirrorRecon",
            display_name="WorldMirror Reconstruct Frames (WorldStereo)",
            **search_aliases("WorldMirrorRecon"),
            category=SUB_RECON,
            description="Reconstructs generated frames taken along known trajectories into the scene's world "
            "frame with WorldMirror 2.0 (the release): per clip with the known cameras as priors, frames resized "
            "to multiples of 14 (long side target_size), low-confidence and depth-edge pixels dropped, the "
            "network's frame mapped onto ours by Umeyama on the camera centres. Monocular depth aligned to the "
            "cache is the Depth Fusion node; backend depth_fusion here runs the same thing, kept so that "
            "workflows saved with it still run.",
            inputs=[
                *_clip_inputs(),
                io.Combo.Input(
                    "backend",
                    options=["worldmirror", "depth_fusion"],
                    default="worldmirror",
                    tooltip="worldmirror: feed-forward reconstruction (needs a WorldMirror model). "
                    "depth_fusion: what the Depth Fusion node does (MoGe-2 depth aligned to the cache; "
                    "needs a MoGe model and the cache) — kept for saved workflows; use that node.",
                ),
                io.Boolean.Input(
                    "use_priors",
                    default=True,
                    tooltip="worldmirror: give the known cameras (pose + intrinsics) to the network, "
                    "as WorldStereo does.",
                ),
                io.Int.Input(
                    "target_size",
                    default=rec_lib.RELEASE_TARGET_SIZE,
                    min=28,
                    max=2048,
                    step=14,
                    tooltip="worldmirror: the network's long side before rounding down to a multiple of 14 "
                    "(release 832 → 826); frames are never upsampled.",
                ),
                io.Float.Input(
                    "conf_quantile",
                    default=rec_lib.RELEASE_CONF_QUANTILE,
                    min=0.0,
                    max=0.95,
                    step=0.01,
                    tooltip="worldmirror: drop each frame's least confident pixels below this quantile "
                    "(release 0.15 = 15 %; 0 keeps all).",
                ),
                _remove_depth_edges_input(),
                io.Combo.Input(
                    "camera_source",
                    options=["known", "predicted"],
                    default="known",
                    tooltip="worldmirror: lift the depth with the known cameras (the trajectory; exact "
                    "in WorldStereo) or with WorldMirror's own cameras moved into our frame (upstream).",
                ),
                WorldMirror.Input(
                    "worldmirror", optional=True, tooltip="From Load WorldMirror 2.0 (backend worldmirror)."
                ),
                MoGe.Input("moge", optional=True, tooltip="From Load MoGe-2 (backend depth_fusion)."),
                PointCloud.Input(
                    "cache",
                    optional=True,
                    tooltip="The current 3D cache, in the trajectories' world (backend depth_fusion).",
                ),
            ],
            outputs=_outputs(
                depth="Z-depth of every frame at the frames' size in world units; 0 where dropped "
                "(confidence, edges, not aligned).",
                cameras="The cameras the depth is expressed with, one per frame, at the frames' size.",
            ),
        )

    @classmethod
    def execute(
        cls,
        frames,
        trajectory,
        backend,
        use_priors,
        target_size,
        conf_quantile,
        remove_depth_edges,
        camera_source,
        worldmirror=None,
        moge=None,
        cache=None,
    ) -> io.NodeOutput:
        x, clips = _clips(frames, trajectory)
        edges = RELEASE_EDGE_THRESHOLD if remove_depth_edges else None
        if backend == "worldmirror":
            if worldmirror is None:
                raise MissingInputError(
                    "backend worldmirror needs a model: connect Load WorldMirror 2.0 to worldmirror"
                )
            progress = Progress(4 * len(clips))
            recs = rec_lib.reconstruct_clips(
                worldmirror,
                x,
                clips,
                target_size=target_size,
                use_priors=use_priors,
                conf_quantile=conf_quantile if conf_quantile > 0 else None,
                edge_threshold=edges,
                camera_source=camera_source,
                progress=progress,
            )
            depth = torch.cat([torch.where(r.mask, r.depth, torch.zeros(())) for r in recs]).float()
            cloud = PointCloudValue.cat([r.cloud for r in recs])
            cams = Cameras.cat([r.cameras for r in recs])
        else:
            depth, cloud, cams = depth_fusion(x, clips, moge, cache, edges)
        return _reconstruction(depth, cloud, cams)


class DepthFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoDepthFusion",
            display_name="Depth Fusion MoGe-2 (WorldStereo)",
            category=SUB_RECON,
            description="Reconstructs generated frames taken along known trajectories with monocular depth: MoGe-2 "
            "depth per frame (at the known field of view), each frame's scale and shift fitted to the 3D cache's "
            "surface depth (the scene loop's alignment, frame by frame; frames that share too little with the "
            "cache are dropped), lifted with the known cameras. The depth comes out in the cache's units and is "
            "marked as aligned, so Align & Merge Clip merges it without fitting it again.",
            inputs=[
                *_clip_inputs(),
                MoGe.Input("moge", tooltip="From Load MoGe-2."),
                PointCloud.Input("cache", tooltip="The current 3D cache, in the trajectories' world."),
                _remove_depth_edges_input(),
            ],
            outputs=_outputs(
                depth="Z-depth of every frame at the frames' size in the cache's units; 0 where "
                "dropped (invalid, edges, frame not aligned).",
                cameras="The frames' known cameras, one per frame, at the frames' size.",
            ),
        )

    @classmethod
    def execute(cls, frames, trajectory, moge, cache, remove_depth_edges) -> io.NodeOutput:
        x, clips = _clips(frames, trajectory)
        edges = RELEASE_EDGE_THRESHOLD if remove_depth_edges else None
        return _reconstruction(*depth_fusion(x, clips, moge, cache, edges))


NODES = [LoadWorldMirror, WorldMirrorRecon, DepthFusion]
