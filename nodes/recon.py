"""Reconstruction nodes: WorldMirror 2.0, depth fusion, COLMAP / nerfstudio exports, the §4.3 benchmark."""

from __future__ import annotations

import os

import torch
from .comfy_v3 import io

from worldstereo_core import evaluate as eval_lib
from worldstereo_core import export
from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (
    AlignmentFailedError,
    InvalidOptionError,
    MissingInputError,
    OutputPathError,
    ShapeMismatchError,
)
from worldstereo_core.pointcloud import RELEASE_EDGE_THRESHOLD, PointCloud as PointCloudValue
from worldstereo_core.recon import reconstruct as rec_lib
from worldstereo_core.recon import worldmirror as wm_lib
from worldstereo_core.recon.estimators import MoGeDepthEstimator
from worldstereo_core.merge import align_clip_depth

from .common import (
    CATEGORY,
    DTYPES,
    Cameras as CamerasSocket,
    Depth,
    PointCloud,
    Progress,
    Scene,
    Trajectory,
    inspector_ui,
    model_file_path,
    model_files,
    option,
    register_model_folder,
    save_folder_path,
    trajectories_of,
)
from .depth import MoGe, depth_preview

SUB_RECON = f"{CATEGORY}/reconstruction"
SUB_EXPORT = f"{CATEGORY}/export"

# A loaded worldstereo_core.recon.worldmirror.WorldMirror (eval mode, on ComfyUI's torch device).
WorldMirror = io.Custom("WS_WORLDMIRROR")

MODEL_FOLDER = "worldmirror"  # models/worldmirror/: model.safetensors + config.json per subfolder (HY-World-2.0)

register_model_folder(MODEL_FOLDER)


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
                io.Combo.Input("model_name", options=model_files(MODEL_FOLDER),
                               tooltip="Weights under models/worldmirror/ (e.g. HY-WorldMirror-2.0/model.safetensors)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp32",
                               tooltip="Weight precision. fp16/bf16 halve the memory on a GPU; use fp32 on CPU."),
            ],
            outputs=[WorldMirror.Output(display_name="worldmirror", tooltip="The loaded WorldMirror model.")],
        )

    @classmethod
    def execute(cls, model_name, dtype) -> io.NodeOutput:
        import comfy.model_management

        path = model_file_path(MODEL_FOLDER, model_name, "WorldMirror")
        model = wm_lib.load_worldmirror(path, device=comfy.model_management.get_torch_device(),
                                        dtype=option(DTYPES, dtype, "dtype"))
        return io.NodeOutput(model)


class WorldMirrorRecon(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoWorldMirrorRecon",
            display_name="Reconstruct Frames (WorldStereo)",
            category=SUB_RECON,
            description="Reconstructs generated frames taken along known trajectories into the scene's world "
            "frame. backend worldmirror (the release): WorldMirror 2.0 per clip with the known cameras as "
            "priors, frames resized to multiples of 14 (long side target_size), low-confidence and depth-edge "
            "pixels dropped, the network's frame mapped onto ours by Umeyama on the camera centres. backend "
            "depth_fusion: MoGe-2 depth per frame (at the known field of view), each frame's scale and shift "
            "fitted to the 3D cache's surface depth, lifted with the known cameras.",
            inputs=[
                io.Image.Input("frames", tooltip="The generated frames: the clips of the trajectories, concatenated in order."),
                Trajectory.Input("trajectory",
                                 tooltip="The trajectory (or the scene loop's tuple of them) the frames follow: 21 "
                                 "frames per trajectory are its keyframes, otherwise one frame per pose."),
                io.Combo.Input("backend", options=["worldmirror", "depth_fusion"], default="worldmirror",
                               tooltip="worldmirror: feed-forward reconstruction (needs a WorldMirror model). "
                               "depth_fusion: MoGe-2 depth aligned to the cache (needs a MoGe model and the cache)."),
                io.Boolean.Input("use_priors", default=True,
                                 tooltip="worldmirror: give the known cameras (pose + intrinsics) to the network, "
                                 "as WorldStereo does."),
                io.Int.Input("target_size", default=rec_lib.RELEASE_TARGET_SIZE, min=28, max=2048, step=14,
                             tooltip="worldmirror: the network's long side before rounding down to a multiple of 14 "
                             "(release 832 → 826); frames are never upsampled."),
                io.Float.Input("conf_quantile", default=rec_lib.RELEASE_CONF_QUANTILE, min=0.0, max=0.95, step=0.01,
                               tooltip="worldmirror: drop each frame's least confident pixels below this quantile "
                               "(release 0.15 = 15 %; 0 keeps all)."),
                io.Boolean.Input("remove_depth_edges", default=True,
                                 tooltip="Drop pixels on depth discontinuities (release rule), which would smear "
                                 "between foreground and background."),
                io.Combo.Input("camera_source", options=["known", "predicted"], default="known",
                               tooltip="worldmirror: lift the depth with the known cameras (the trajectory; exact "
                               "in WorldStereo) or with WorldMirror's own cameras moved into our frame (upstream)."),
                WorldMirror.Input("worldmirror", optional=True, tooltip="From Load WorldMirror 2.0 (backend worldmirror)."),
                MoGe.Input("moge", optional=True, tooltip="From Load MoGe-2 (backend depth_fusion)."),
                PointCloud.Input("cache", optional=True,
                                 tooltip="The current 3D cache, in the trajectories' world (backend depth_fusion)."),
            ],
            outputs=[
                Depth.Output(display_name="depth",
                             tooltip="Z-depth of every frame at the frames' size in world units; 0 where dropped "
                             "(confidence, edges, not aligned)."),
                PointCloud.Output(display_name="cloud", tooltip="The frames' points in the world frame (not merged "
                                  "into the cache)."),
                CamerasSocket.Output(display_name="cameras",
                                     tooltip="The cameras the depth is expressed with, one per frame, at the frames' size."),
                io.Image.Output(display_name="depth_preview",
                                tooltip="Disparity in the turbo colormap (near = red, far = blue, dropped = black)."),
            ],
        )

    @classmethod
    def execute(cls, frames, trajectory, backend, use_priors, target_size, conf_quantile, remove_depth_edges,
                camera_source, worldmirror=None, moge=None, cache=None) -> io.NodeOutput:
        if frames.ndim != 4:
            raise ShapeMismatchError(f"frames must be an IMAGE batch [F, H, W, 3], got {tuple(frames.shape)}")
        x = frames[..., :3].float().cpu()
        F_, H, W = x.shape[:3]
        clips = rec_lib.clip_cameras(trajectories_of(trajectory), F_, H, W)
        edges = RELEASE_EDGE_THRESHOLD if remove_depth_edges else None
        if backend == "worldmirror":
            if worldmirror is None:
                raise MissingInputError("backend worldmirror needs a model: connect Load WorldMirror 2.0 to worldmirror")
            progress = Progress(4 * len(clips))
            recs = rec_lib.reconstruct_clips(
                worldmirror, x, clips, target_size=target_size, use_priors=use_priors,
                conf_quantile=conf_quantile if conf_quantile > 0 else None, edge_threshold=edges,
                camera_source=camera_source, progress=progress,
            )
            depth = torch.cat([torch.where(r.mask, r.depth, torch.zeros(())) for r in recs]).float()
            cloud = PointCloudValue.cat([r.cloud for r in recs])
            cams = Cameras.cat([r.cameras for r in recs])
        else:
            if moge is None:
                raise MissingInputError("backend depth_fusion needs a depth model: connect Load MoGe-2 to moge")
            if cache is None:
                raise MissingInputError("backend depth_fusion aligns the frames to the 3D cache: connect the cache")
            cams = Cameras.cat(clips)
            progress = Progress(2 * F_)
            est = MoGeDepthEstimator(moge, progress=lambda done, _t: progress(done, 2 * F_))
            mono, valid = est(x, cams)
            fused = align_clip_depth(cache.require_nonempty("3D cache"), x, mono, valid, cams, edge_threshold=edges,
                                     progress=lambda done, _t: progress(F_ + done, 2 * F_))
            if len(fused.cloud) == 0:
                raise AlignmentFailedError(
                    "no frame overlapped the 3D cache enough to align its depth; check that the cache and the "
                    "trajectory are in the same world (the cache built from the trajectory's start view)"
                )
            depth = fused.depth.float()  # a WorldDepth (0 outside the kept pixels): merging it will not re-align it
            cloud = fused.cloud
        return io.NodeOutput(depth, cloud, cams, depth_preview(depth),
                             ui=inspector_ui("reconstruction", cloud=cloud, trajectories=[cams]))


class SaveColmap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveColmap",
            display_name="Save COLMAP Model (WorldStereo)",
            category=SUB_EXPORT,
            description="Writes the frames and their cameras as a COLMAP text model in a new output folder: "
            "images/frame_00000.png…, sparse/0/cameras.txt (PINHOLE), images.txt (world-to-camera, OpenCV — "
            "COLMAP's own convention) and points3D.txt (the cloud, if connected). Gaussian-splatting and NeRF "
            "tools read this layout.",
            is_output_node=True,
            inputs=[
                io.Image.Input("frames", tooltip="The frames, one per camera, in order."),
                CamerasSocket.Input("cameras", tooltip="Their cameras (e.g. Reconstruct Frames' cameras); K is "
                                    "rescaled if the frames are another size of the same aspect."),
                io.String.Input("filename_prefix", default="worldstereo/colmap",
                                tooltip="Output folder prefix, relative to ComfyUI's output folder."),
                io.Int.Input("max_points", default=1_000_000, min=0, max=50_000_000, step=10_000,
                             tooltip="Keep at most this many points in points3D.txt (a deterministic subset; 0 = all)."),
                PointCloud.Input("cloud", optional=True, tooltip="Initial points for points3D.txt."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The model folder, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, frames, cameras, filename_prefix, max_points, cloud=None) -> io.NodeOutput:
        x = frames[..., :3].float().cpu()
        (cams,) = rec_lib.clip_cameras([cameras], x.shape[0], x.shape[1], x.shape[2])
        pts = cloud.require_nonempty() if cloud is not None else None  # inputs checked before anything is written

        def write(full: str) -> None:
            names = export.save_images_png(os.path.join(full, "images"), x)
            export.save_colmap_text(os.path.join(full, "sparse", "0"), cams, names, pts,
                                    max_points=max_points if max_points > 0 else None)

        rel = _write_export_folder(filename_prefix, write)
        return io.NodeOutput(rel, ui={"text": [rel]})


class SaveTransformsJson(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSaveTransformsJson",
            display_name="Save transforms.json (WorldStereo)",
            category=SUB_EXPORT,
            description="Writes the frames and their cameras for nerfstudio in a new output folder: "
            "images/frame_00000.png… and transforms.json (camera-to-world in OpenGL axes, fl_x/fl_y/cx/cy/w/h), "
            "plus sparse_pc.ply named as ply_file_path when a cloud is connected (splatfacto's initialisation).",
            is_output_node=True,
            inputs=[
                io.Image.Input("frames", tooltip="The frames, one per camera, in order."),
                CamerasSocket.Input("cameras", tooltip="Their cameras (e.g. Reconstruct Frames' cameras); K is "
                                    "rescaled if the frames are another size of the same aspect."),
                io.String.Input("filename_prefix", default="worldstereo/nerfstudio",
                                tooltip="Output folder prefix, relative to ComfyUI's output folder."),
                PointCloud.Input("cloud", optional=True, tooltip="Initial points, written as sparse_pc.ply."),
            ],
            outputs=[io.String.Output(display_name="path",
                                      tooltip="transforms.json, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, frames, cameras, filename_prefix, cloud=None) -> io.NodeOutput:
        x = frames[..., :3].float().cpu()
        (cams,) = rec_lib.clip_cameras([cameras], x.shape[0], x.shape[1], x.shape[2])
        pts = cloud.require_nonempty() if cloud is not None else None  # inputs checked before anything is written

        def write(full: str) -> None:
            names = export.save_images_png(os.path.join(full, "images"), x)
            ply = None
            if pts is not None:
                export.save_pointcloud_ply(os.path.join(full, "sparse_pc.ply"), pts)
                ply = "sparse_pc.ply"
            export.save_transforms_json(os.path.join(full, "transforms.json"), cams,
                                        [f"images/{n}" for n in names], ply_file_path=ply)

        rel = _write_export_folder(filename_prefix, write)
        path = f"{rel}/transforms.json"
        return io.NodeOutput(path, ui={"text": [path]})


class Evaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        # models imports this module, so its socket type is taken at schema time
        from .models import WSModel

        return io.Schema(
            node_id="WorldStereoEvaluate",
            display_name="Evaluate Reconstruction Benchmark (WorldStereo)",
            category=SUB_RECON,
            description="The paper's §4.3 protocol. protocol=full_model (the paper's): one scene loop over the "
            "trajectories with the 3D cache and memory bank carried from clip to clip, every generated keyframe "
            "reconstructed together, aligned to the ground truth (depth_anchor: Umeyama on the initial frame's "
            "depth, the paper's MipNeRF360 alignment; anchors; icp) and scored: precision / recall / F-score, AUC, "
            "RotErr / TransErr / ATE, RRA / RTA at 5/10/15/30° and mAA(30), and the memory benchmark (PSNR / SSIM "
            "of views revisiting an earlier generation; LPIPS only through the Python API). "
            "protocol=per_trajectory: each trajectory from a fresh scene. The scene is the synthetic one (oracle "
            "generator) or a real one: a folder in ComfyUI's input folder with images/, camera.json and depth/ "
            "or points.ply, generated with the connected WorldStereo model and reconstructed with WorldMirror.",
            is_output_node=True,
            inputs=[
                Scene.Input("scene", optional=True,
                            tooltip="The synthetic scene (Synthetic Scene's scene output). Leave it unconnected "
                            "to evaluate the scene_folder."),
                io.String.Input("trajectories", default=",".join(eval_lib.BENCHMARK_TRAJECTORIES),
                                tooltip="Comma-separated presets, in generation order (benchmark: "
                                "eloop,up,left,right)."),
                io.Int.Input("width", default=392, min=28, max=2048, step=2,
                             tooltip="Frame width (a multiple of 14 for the oracle reconstructor; of 16 for the "
                             "real model)."),
                io.Int.Input("height", default=224, min=28, max=2048, step=2,
                             tooltip="Frame height (a multiple of 14 for the oracle reconstructor; of 16 for "
                             "the real model)."),
                io.Int.Input("num_keyframes", default=21, min=2, max=81,
                             tooltip="Frames generated per trajectory (the released model: 21 of 81 poses)."),
                io.Combo.Input("alignment", options=list(eval_lib.LOOP_ALIGNMENTS), default="anchors",
                               tooltip="depth_anchor: Umeyama between the reconstructed and true points of the "
                               "initial frame (the paper's, needs its true depth); anchors: the reconstruction's "
                               "Umeyama on camera centres; icp: first camera + scaled ICP against the ground "
                               "truth."),
                io.Float.Input("pose_noise_deg", default=0.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Oracle reconstructor: rotate each predicted camera by this angle about a "
                               "random axis (camera 0 untouched), like a real reconstructor's error."),
                io.Float.Input("threshold_fraction", default=0.01, min=0.0001, max=0.2, step=0.001,
                               tooltip="F-score distance as a fraction of the ground truth's bounding-box diagonal."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the pose noise, the generation and the loop's robust fits."),
                WorldMirror.Input("worldmirror", optional=True,
                                  tooltip="Reconstruct with this WorldMirror (no camera priors) instead of the "
                                  "oracle; needed for a scene_folder (also gives the loop its depth there)."),
                io.Combo.Input("protocol", options=["full_model", "per_trajectory"], default="full_model",
                               optional=True,
                               tooltip="full_model: one loop, memory carried across trajectories (the paper); "
                               "per_trajectory: each trajectory on its own from the input view."),
                io.Boolean.Input("revisit", default=True, optional=True,
                                 tooltip="full_model: run the first trajectory again at the end, so the memory "
                                 "benchmark compares its views with their first generation."),
                io.String.Input("scene_folder", default="", optional=True,
                                tooltip="A real scene: a folder in ComfyUI's input folder with images/ (the first "
                                "is the input view), camera.json (one camera per image), depth/<stem>.npy and/or "
                                "points.ply. Used when no synthetic scene is connected."),
                WSModel.Input("model", optional=True,
                              tooltip="From Load WorldStereo Model: generates the scene_folder's trajectories "
                              "(the synthetic scene uses the oracle)."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="scene_folder: what the scene looks like (the model's prompt)."),
                MoGe.Input("moge", optional=True,
                           tooltip="scene_folder: estimate the input view's depth with MoGe-2 (as the model runs "
                           "in use) instead of reading depth/."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="JSON report (per trajectory and overall).")],
        )

    @classmethod
    def execute(cls, trajectories, width, height, num_keyframes, alignment, pose_noise_deg, threshold_fraction,
                seed, scene=None, worldmirror=None, protocol="full_model", revisit=True, scene_folder="",
                model=None, prompt="", moge=None) -> io.NodeOutput:
        from worldstereo_core.interfaces import default_config

        names = [t.strip() for t in trajectories.split(",") if t.strip()]
        if not names:
            raise InvalidOptionError("no trajectories given; e.g. eloop,up,left,right")
        alignment = option({a: a for a in eval_lib.LOOP_ALIGNMENTS}, alignment, "alignment")
        protocol = option({"full_model": "full_model", "per_trajectory": "per_trajectory"}, protocol, "protocol")
        cfg = default_config(height, width, num_keyframes=num_keyframes)
        if scene is None:
            result = _evaluate_folder(scene_folder, names + names[:1] * bool(revisit), cfg, height, width,
                                      alignment, threshold_fraction, seed, worldmirror, model, prompt, moge, protocol)
        else:
            if worldmirror is not None:
                reconstructor = eval_lib.WorldMirrorReconstructor(worldmirror, target_size=max(width, height))
            else:
                reconstructor = eval_lib.OracleReconstructor(scene, pose_noise_deg=pose_noise_deg, seed=seed)
            if protocol == "full_model":
                progress = Progress(1 + 5 * (len(names) + bool(revisit)) + 2)
                result = eval_lib.evaluate_synthetic_loop(
                    scene, height=height, width=width, trajectories=names, revisit=revisit, config=cfg,
                    reconstructor=reconstructor, alignment=alignment, threshold_fraction=threshold_fraction,
                    seed=seed, progress=progress,
                )
            else:
                progress = Progress(max(1, len(names)))
                result = eval_lib.evaluate_synthetic(
                    scene, height=height, width=width, names=names, reconstructor=reconstructor,
                    num_keyframes=num_keyframes, alignment=alignment, threshold_fraction=threshold_fraction,
                    progress=progress,
                )
        report = result.report
        return io.NodeOutput(report.to_json(), ui={"text": [report.summary()]})


def _evaluate_folder(scene_folder, names, cfg, height, width, alignment, threshold_fraction, seed, worldmirror,
                     model, prompt, moge, protocol):
    """The full-model protocol on a real scene folder with the real model (see Evaluate)."""
    from worldstereo_core.models.generate import WorldStereoFrameGenerator
    from worldstereo_core.recon.estimators import WorldMirrorDepthEstimator

    from .common import input_folder

    if not str(scene_folder).strip():
        raise MissingInputError("connect a synthetic scene, or give scene_folder (a folder in ComfyUI's input folder)")
    if protocol != "full_model":
        raise InvalidOptionError("a scene_folder is evaluated with protocol=full_model (the paper's); set it")
    folder = input_folder(scene_folder, "scene_folder")
    real = eval_lib.load_scene_folder(folder, height, width)  # inputs checked before minutes of generation
    if alignment == "depth_anchor":
        real.anchor_depth()  # a folder without depth/ fails here, not after the loop
    if model is None or worldmirror is None:
        raise MissingInputError(
            "a scene_folder needs the WorldStereo model (Load WorldStereo Model → model) to generate and "
            "WorldMirror (Load WorldMirror → worldmirror) to reconstruct; the oracle exists only for synthetic scenes"
        )
    input_depth = None
    if moge is not None:
        depth, _valid = MoGeDepthEstimator(moge)(real.images[:1], real.cameras[:1])
        input_depth = depth
    progress = Progress(1 + 5 * len(names) + 2)
    generator = WorldStereoFrameGenerator(model, prompt, seed=seed)
    return eval_lib.evaluate_real_scene(
        real, generator, WorldMirrorDepthEstimator(worldmirror), eval_lib.WorldMirrorReconstructor(worldmirror),
        input_depth=input_depth, alignment=alignment, trajectories=names, config=cfg,
        threshold_fraction=threshold_fraction, seed=seed, progress=progress,
    )


NODES = [LoadWorldMirror, WorldMirrorRecon, SaveColmap, SaveTransformsJson, Evaluate]
