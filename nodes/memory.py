"""Memory nodes: the SSM memory bank, frustum-overlap retrieval, and alignment + merge."""

from __future__ import annotations

import json
import os

import torch

from worldstereo_core import interfaces, merge, render
from worldstereo_core import memory as mem_lib
from worldstereo_core import retrieval as ret_lib
from worldstereo_core.errors import (
    InvalidInputError,
    InvalidOptionError,
    MissingInputError,
    ShapeMismatchError,
    WorldStereoError,
)

from .comfy_v3 import io
from .common import (
    CATEGORY,
    Cameras,
    Depth,
    MemoryBank,
    PointCloud,
    Retrieval,
    Trajectory,
    clip_alignment_input,
    dtype_input,
    inspector_ui,
    load_model_file,
    model_name_input,
    one_trajectory,
    output_folder,
    reference_cut_input,
    register_model_folder,
    retrieval_mode_input,
    search_aliases,
    seed_input,
    size_inputs,
    z_depth,
)

SUB = f"{CATEGORY}/memory"

DINOv2 = io.Custom("WS_DINOV2")  # worldstereo_core.models.dinov2.DINOv2FeatureExtractor
DINOV2_FOLDER = "dinov2"  # models/dinov2/<name>/: the hub's config.json + model.safetensors
register_model_folder(DINOV2_FOLDER)


def _frames_cameras(frames: torch.Tensor, trajectory):
    """The cameras of a batch of generated frames: the trajectory's keyframes when the batch
    holds 21 frames of an 81-pose trajectory, else its poses one to one."""
    traj = one_trajectory(trajectory, "each clip updates the bank on its own")
    if frames.shape[0] == len(traj):
        cams = traj.cameras
    elif frames.shape[0] == len(traj.keyframe_indices()):
        cams = traj.keyframes()
    else:
        raise ShapeMismatchError(
            f"{frames.shape[0]} frames for a trajectory of {len(traj)} poses ({len(traj.keyframe_indices())} "
            "keyframes); give one frame per pose or per keyframe"
        )
    if (cams.height, cams.width) != tuple(frames.shape[1:3]):
        cams = cams.resized(frames.shape[1], frames.shape[2])
    return traj, cams


def _bank_folder(name: str) -> str:
    """A bank folder under ComfyUI's output folder; names never leave it (symlinks resolved)."""
    return output_folder(name, "bank folder")


class MemoryBankCreate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoMemoryBankCreate",
            display_name="Memory Bank Create (WorldStereo)",
            **search_aliases("MemoryBank"),
            category=SUB,
            description="Starts the Spatial-Stereo Memory (SSM) bank: the views the model may retrieve as "
            "references — the input image, or a panorama's perspective views — with their cameras.",
            inputs=[
                io.Image.Input("images", tooltip="The starting views (one input image, or N panorama views)."),
                Cameras.Input("cameras", tooltip="One camera per view (w2c, K)."),
                io.String.Input("label", default="input", tooltip="Source label of these views in the bank."),
            ],
            outputs=[MemoryBank.Output(display_name="bank", tooltip="The memory bank.")],
        )

    @classmethod
    def execute(cls, images, cameras, label) -> io.NodeOutput:
        if images.shape[0] != len(cameras):
            raise ShapeMismatchError(f"{images.shape[0]} images but {len(cameras)} cameras; give one camera per view")
        if (cameras.height, cameras.width) != tuple(images.shape[1:3]):
            cameras = cameras.resized(images.shape[1], images.shape[2])
        labels = [label] if len(cameras) == 1 else [f"{label}:{i:02d}" for i in range(len(cameras))]
        bank = mem_lib.MemoryBank.from_views(images[..., :3].float(), cameras, labels)
        return io.NodeOutput(bank, ui=inspector_ui("memory bank", memory=bank))


class MemoryBankUpdate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoMemoryBankUpdate",
            display_name="Memory Bank Update (WorldStereo)",
            **search_aliases("MemoryBank"),
            category=SUB,
            description="Adds a generated clip to the memory bank as the release does: 8 keyframes chosen "
            "uniformly (the first, the input view, skipped) join with their cameras. Returns a new bank; "
            "the input bank is unchanged.",
            inputs=[
                MemoryBank.Input("bank", tooltip="The bank to extend."),
                io.Image.Input("frames", tooltip="Generated frames (21 keyframes or every pose)."),
                Trajectory.Input("trajectory", tooltip="The trajectory the frames were generated along."),
                io.Int.Input(
                    "num_frames_added",
                    default=8,
                    min=1,
                    max=80,
                    tooltip="How many frames of the clip join the bank (release: 8).",
                ),
                io.String.Input("label", default="traj", tooltip="Source label of the clip's entries."),
            ],
            outputs=[MemoryBank.Output(display_name="bank", tooltip="The extended bank.")],
        )

    @classmethod
    def execute(cls, bank, frames, trajectory, num_frames_added, label) -> io.NodeOutput:
        traj, cams = _frames_cameras(frames, trajectory)
        updated = bank.update(frames[..., :3].float(), cams, label, num=num_frames_added)
        return io.NodeOutput(updated, ui=inspector_ui("memory bank", memory=updated, trajectories=[traj]))


class MemoryBankSave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoMemoryBankSave",
            display_name="Memory Bank Save (WorldStereo)",
            category=SUB,
            description="Saves the bank to a folder in the output folder, atomically: a crash never leaves "
            "a half-written bank, and an existing bank is replaced only once the new one is complete.",
            is_output_node=True,
            inputs=[
                MemoryBank.Input("bank", tooltip="The bank to save."),
                io.String.Input(
                    "folder", default="worldstereo/memory_bank", tooltip="Folder relative to ComfyUI's output folder."
                ),
            ],
            outputs=[io.String.Output(display_name="folder", tooltip="The folder written (relative).")],
        )

    @classmethod
    def execute(cls, bank, folder) -> io.NodeOutput:
        bank.save(_bank_folder(folder))
        return io.NodeOutput(folder, ui={"text": [f"saved {len(bank)} views to {folder}"]})


class MemoryBankLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoMemoryBankLoad",
            display_name="Memory Bank Load (WorldStereo)",
            category=SUB,
            description="Loads a bank saved by Memory Bank Save from the output folder.",
            inputs=[
                io.String.Input(
                    "folder", default="worldstereo/memory_bank", tooltip="Folder relative to ComfyUI's output folder."
                ),
            ],
            outputs=[MemoryBank.Output(display_name="bank", tooltip="The loaded bank.")],
        )

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        bank = mem_lib.MemoryBank.load(_bank_folder(folder))
        return io.NodeOutput(bank, ui=inspector_ui("memory bank", memory=bank))

    @classmethod
    def fingerprint_inputs(cls, folder):
        try:
            manifest = os.path.join(_bank_folder(folder), "manifest.json")
        except WorldStereoError:
            return float("nan")  # execute says what is wrong with the folder
        return os.path.getmtime(manifest) if os.path.exists(manifest) else float("nan")


def _resize_hwc(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(img.shape[:2]) == (h, w):
        return img
    x = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0)


class LoadDINOv2(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoLoadDINOv2",
            display_name="Load DINOv2 (WorldStereo)",
            category=SUB,
            description="Loads DINOv2 (the release uses facebook/dinov2-base) for Retrieve 3D FOV's release "
            "reference cut (dinov2_fps): its image features decide which 8 views are kept when more qualify. "
            "Put the hub's config.json + model.safetensors in a subfolder of models/dinov2/ "
            "(e.g. models/dinov2/dinov2-base/); nothing is downloaded.",
            inputs=[
                model_name_input(
                    DINOV2_FOLDER,
                    "Weights under models/dinov2/ (e.g. dinov2-base/model.safetensors), with "
                    "the hub's config.json in the same folder.",
                ),
                dtype_input("Weight precision (fp32 as the release; fp16/bf16 halve the memory)."),
            ],
            outputs=[DINOv2.Output(display_name="dinov2", tooltip="The DINOv2 image-feature extractor.")],
        )

    @classmethod
    def execute(cls, model_name, dtype) -> io.NodeOutput:
        from worldstereo_core.models.dinov2 import load_dinov2

        def load(path: str, **device_dtype):
            return load_dinov2(os.path.dirname(path), **device_dtype)  # the folder: config.json beside the weights

        layout = "the hub's config.json + model.safetensors"
        return io.NodeOutput(load_model_file(load, DINOV2_FOLDER, model_name, dtype, "DINOv2", layout))


class Retrieve3DFOV(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoRetrieve3DFOV",
            display_name="Retrieve 3D FOV (WorldStereo)",
            **search_aliases("Retrieve3DFOV"),
            category=SUB,
            description="Retrieves the memory-bank views that overlap the trajectory most (SSM references): "
            "every keyframe 1..20 scores every bank camera by frustum overlap and takes its best; when more "
            "than max_references views qualify, the reference cut keeps that many (the release: DINOv2 + "
            "image-quality farthest-point sampling). A shortcut pushes the trajectory towards an earlier "
            "clip's views, as the release does for aerial and panorama-view trajectories.",
            inputs=[
                Trajectory.Input("trajectory", tooltip="The target trajectory."),
                MemoryBank.Input("bank", tooltip="The memory bank to retrieve from."),
                retrieval_mode_input(
                    "mode",
                    "aabb: the release (IoU of the frustums' bounding boxes × angle penalty); "
                    "volume: the paper's true frustum-volume overlap.",
                ),
                io.Int.Input(
                    "max_references",
                    default=8,
                    min=1,
                    max=8,
                    tooltip="At most this many references (the released model takes up to 8).",
                ),
                reference_cut_input(
                    "How more than max_references candidates are cut. dinov2_fps: the release "
                    "(needs the dinov2 input); spread: evenly along the trajectory (needs no model); "
                    "coverage: greedy best total overlap; fps: farthest cameras."
                ),
                io.Combo.Input(
                    "shortcut",
                    options=["none", *ret_lib.SHORTCUT_KINDS],
                    default="none",
                    tooltip="The release's retrieval shortcut towards shortcut_source's views: aerial "
                    "(every keyframe but 4, 8, 12, 16), view_first / view_second (keyframes 1, 2, 3, "
                    "5, 7, 9, 13, 17; view_second uses the first half of the source clip).",
                ),
                io.String.Input(
                    "shortcut_source",
                    default="",
                    tooltip="Bank label of the earlier clip the shortcut leans on (the label given "
                    "to Memory Bank Update, e.g. traj0). Only used with a shortcut.",
                ),
                DINOv2.Input("dinov2", optional=True, tooltip="From Load DINOv2; needed by reference_cut dinov2_fps."),
            ],
            outputs=[
                Retrieval.Output(display_name="retrieval", tooltip="References, their ref_index and scores."),
                io.Image.Output(
                    display_name="references", tooltip="The reference views, resized to the trajectory's resolution."
                ),
                io.String.Output(display_name="summary", tooltip="JSON: bank index, source, ref_index, score."),
            ],
        )

    @classmethod
    def execute(
        cls,
        trajectory,
        bank,
        mode,
        max_references,
        reference_cut="spread",
        shortcut="none",
        shortcut_source="",
        dinov2=None,
    ) -> io.NodeOutput:
        traj = one_trajectory(trajectory, "retrieval works on one trajectory at a time")
        cams = traj.cameras
        if reference_cut == "dinov2_fps" and dinov2 is None:
            raise MissingInputError(
                "reference_cut dinov2_fps (the release's cut) needs DINOv2: connect Load DINOv2, or choose spread"
            )
        cut = None if shortcut == "none" else ret_lib.RetrievalShortcut(shortcut, shortcut_source)
        refs = ret_lib.retrieve(
            traj, bank, mode=mode, max_refs=max_references, reduce=reference_cut, image_features=dinov2, shortcut=cut
        )
        images = torch.stack([_resize_hwc(f.float(), cams.height, cams.width) for f in refs.images])
        summary = [
            {"bank_index": int(i), "source": src, "ref_index": int(r), "score": float(s)}
            for i, src, r, s in zip(refs.bank_indices, refs.sources, refs.ref_index, refs.scores)
        ]
        ui = inspector_ui("retrieval", trajectories=[traj], memory=bank, retrieval=[refs])
        return io.NodeOutput(refs, images, json.dumps(summary, indent=1), ui=ui)


def _finite(x: float) -> float | None:
    """JSON has no NaN: unknown values are null."""
    return float(x) if x == x and abs(float(x)) != float("inf") else None


class UmeyamaMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoUmeyamaMerge",
            display_name="Align & Merge Clip (WorldStereo)",
            **search_aliases("UmeyamaMerge"),
            category=SUB,
            description="Brings a reconstructed clip onto the 3D cache and merges it: depth mode (the scene "
            "loop's, the default) fits each frame's depth to the depth of the cache's surface (robust "
            "scale/shift, frame by frame); umeyama mode fits one robust similarity (scale, rotation, shift) from "
            "pixel correspondences between the clip's lifted depth and the cache's surface. Depth already aligned "
            "to the cache (Depth Fusion) is merged as it is, never fitted twice. Reports the "
            "scale and the residual (RMSE). (Node id WorldStereoUmeyamaMerge, its name before.)",
            inputs=[
                PointCloud.Input("cache", tooltip="The current 3D cache (world point cloud)."),
                io.Image.Input(
                    "frames", tooltip="The clip's frames (21 keyframes or every pose); they colour the points."
                ),
                Depth.Input(
                    "depth",
                    tooltip="The frames' reconstructed / estimated z-depth, same size as the frames "
                    "(0 = unknown); its scale may be off — that is what is fitted.",
                ),
                Trajectory.Input(
                    "trajectory", tooltip="The trajectory the frames were generated along (known cameras)."
                ),
                clip_alignment_input(
                    "mode",
                    "depth: per-frame scale/shift (corrects per-frame scale drift); umeyama: one "
                    "similarity for the whole clip (corrects a global scale/pose error).",
                ),
                io.Float.Input(
                    "voxel_size_fraction",
                    default=0.01,
                    min=0.0005,
                    max=0.2,
                    step=0.0005,
                    tooltip="Merge voxel size as a fraction of the cache's median depth seen from the "
                    "trajectory's first camera (the loop uses 0.01).",
                ),
                seed_input("Seed of the robust fits (same seed, same result)."),
                io.Boolean.Input(
                    "skip_first_frame",
                    default=True,
                    optional=True,
                    tooltip="Frame 0 is the input view, already in the cache: do not merge it again.",
                ),
                Depth.Input(
                    "start_depth",
                    optional=True,
                    tooltip="The input view's depth: the voxel size is voxel_size_fraction × its median, "
                    "as in the Scene Loop (else the cache's median depth seen from the trajectory's "
                    "first camera).",
                ),
            ],
            outputs=[
                PointCloud.Output(display_name="cache", tooltip="The merged cache (the input cache is unchanged)."),
                PointCloud.Output(display_name="clip_cloud", tooltip="The clip's aligned points that were merged."),
                io.String.Output(
                    display_name="report", tooltip="JSON: scale(s)/shift(s) or the similarity, RMSE, points added."
                ),
            ],
        )

    @classmethod
    def execute(
        cls, cache, frames, depth, trajectory, mode, voxel_size_fraction, seed, skip_first_frame=True, start_depth=None
    ) -> io.NodeOutput:
        depth = z_depth(depth)
        if len(cache) == 0:
            raise MissingInputError("the cache is empty; build it first (Build Point Cloud) and connect it")
        traj, cams = _frames_cameras(frames, trajectory)
        img = frames[..., :3].float()
        d = depth.float()
        if tuple(d.shape) != tuple(img.shape[:3]):
            raise ShapeMismatchError(
                f"depth is {tuple(d.shape)} but frames are {tuple(img.shape[:3])}; give one depth map per frame, "
                "at the frames' size"
            )
        if start_depth is not None:  # the loop's rule: the input view's median depth
            start_depth = z_depth(start_depth, "start_depth")
            valid = start_depth[start_depth > 0]
            if valid.numel() == 0:
                from worldstereo_core.errors import InvalidDepthError

                raise InvalidDepthError("start_depth has no valid pixel; connect the input view's depth")
            median = float(valid.double().median())
        else:
            median = render.median_depth_in_view(cache, cams[:1])
        voxel = voxel_size_fraction * median
        config = interfaces.default_config(cams.height, cams.width)
        clip = merge.merge_clip(
            mem_lib.Cache3D(cache, voxel),
            img,
            d,
            d > 0,
            cams,
            config,
            seed=seed,
            skip_first=skip_first_frame,
            alignment=mode,
        )
        al = clip.alignment
        aligned = [i for i, st in enumerate(al.status) if st in ("aligned", "given")]
        report = {
            "mode": "given" if "given" in al.status else mode,  # already-aligned depth is never refitted
            "scale": _finite(clip.similarity.s)
            if clip.similarity is not None
            else (_finite(al.scale[aligned].median()) if aligned else None),
            "rmse": _finite(clip.rmse),
            "points_added": len(clip.cloud_added),
            "cache_points_before": len(cache),
            "cache_points_after": len(clip.cache),
            "voxel_size": voxel,
            "median_depth": median,
            "aligned_frames": len(aligned),
            "frames": [
                {
                    "index": i,
                    "status": st,
                    "scale": _finite(al.scale[i]),
                    "shift": _finite(al.shift[i]),
                    "covered": int(al.covered[i]),
                    "inliers": int(al.inliers[i]),
                    "rmse": _finite(al.rmse[i]) if al.rmse is not None else None,
                }
                for i, st in enumerate(al.status)
            ],
        }
        if clip.similarity is not None:
            sim = clip.similarity
            report["similarity"] = {
                "scale": sim.s,
                "rotation": sim.R.tolist(),
                "translation": sim.t.tolist(),
                "matrix": sim.matrix().tolist(),
            }
        text = f"{report['mode']}: scale {report['scale']}, RMSE {report['rmse']}, +{report['points_added']} points"
        ui = {"text": [text], **inspector_ui("merged cache", cloud=clip.cache.cloud, trajectories=[traj])}
        return io.NodeOutput(clip.cache.cloud, clip.cloud_added, json.dumps(report, indent=1), ui=ui)


class MemoryBankView(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoMemoryBankView",
            display_name="Memory Bank View (WorldStereo)",
            category=SUB,
            description="One view of a memory bank, image and camera, to start a trajectory from (e.g. any of the "
            "panorama's 27 views, as the release starts panorama trajectories from several views). Resized to "
            "the generation size if given (K follows).",
            inputs=[
                MemoryBank.Input("bank", tooltip="The memory bank (e.g. Memory Bank Create of Panorama Views)."),
                io.Int.Input("index", default=0, min=0, max=100_000, tooltip="View number, from 0 (panorama: 0..26)."),
                *size_inputs(
                    0,
                    0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltips=(
                        "Output width (multiple of 16); 0 = the view's own size.",
                        "Output height (multiple of 16); 0 = the view's own size.",
                    ),
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The view [1, H, W, 3]."),
                Cameras.Output(display_name="camera", tooltip="Its camera (K at the output size)."),
            ],
        )

    @classmethod
    def execute(cls, bank, index, width, height) -> io.NodeOutput:
        from worldstereo_core.cameras import Cameras as CameraBatch
        from worldstereo_core.recon.reconstruct import resize_frames

        if index >= len(bank):
            raise InvalidInputError(
                f"the bank has {len(bank)} views (0..{len(bank) - 1}); index {index} is not one of them"
            )
        if (width == 0) != (height == 0):
            raise InvalidOptionError("set both width and height (multiples of 16), or leave both 0 for the view's size")
        h, w = (int(v) for v in bank.sizes[index])
        out_h, out_w = (height, width) if width else (h, w)
        cam = CameraBatch(bank.w2c[index : index + 1], bank.K[index : index + 1], h, w)
        image = resize_frames(bank.frames[index][None], (out_h, out_w)).permute(0, 2, 3, 1).contiguous()
        return io.NodeOutput(image, cam.resized(out_h, out_w) if (out_h, out_w) != (h, w) else cam)


NODES = [
    MemoryBankCreate,
    MemoryBankUpdate,
    MemoryBankSave,
    MemoryBankLoad,
    MemoryBankView,
    LoadDINOv2,
    Retrieve3DFOV,
    UmeyamaMerge,
]
