"""Depth and panorama nodes: MoGe-2 monocular depth, panorama depth, the panorama view bank."""

from __future__ import annotations

import math

import torch

from worldstereo_core import panorama as pano_lib
from worldstereo_core import pointcloud as pc_lib
from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidDepthError, InvalidImageError, MissingInputError
from worldstereo_core.recon import moge as moge_lib
from worldstereo_core.recon import panorama_depth as pano_depth_lib

from .comfy_v3 import io
from .common import (
    CATEGORY,
    Depth,
    PanoDistance,
    PointCloud,
    Progress,
    cap_points,
    dtype_input,
    image_to_hwc,
    inspector_ui,
    is_pano_distance,
    load_model_file,
    mark_pano_distance,
    max_points_input,
    model_name_input,
    register_model_folder,
    size_inputs,
)
from .common import Cameras as CamerasSocket

SUB_DEPTH = f"{CATEGORY}/depth"
SUB_PANORAMA = f"{CATEGORY}/panorama"

# A loaded worldstereo_core.recon.moge.MoGeModel (eval mode, on ComfyUI's torch device).
MoGe = io.Custom("WS_MOGE")

MODEL_FOLDER = "moge"  # models/moge/: loose .safetensors files or one subfolder per model
_PANORAMA_BATCH = 4  # perspective views per MoGe call in panorama mode (12 views in all)

register_model_folder(MODEL_FOLDER)


def _normals_image(normals: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Normals ``[N, H, W, 3]`` (OpenCV camera frame) as the usual normal-map colours.

    OpenCV's y points down and z away from the viewer; normal maps show x right, y up and z
    towards the viewer, hence the sign flips. Invalid pixels (and models without a normal
    head) are black.
    """
    if normals is None:
        return torch.zeros(*mask.shape, 3)
    rgb = 0.5 + 0.5 * normals.float() * torch.tensor([1.0, -1.0, -1.0])
    return torch.where(mask[..., None], rgb.clamp(0, 1), torch.zeros_like(rgb))


def _turbo(x: torch.Tensor) -> torch.Tensor:
    """Turbo colormap ``[...] in [0, 1] → [..., 3]`` (Mikhailov's polynomial fit)."""
    coeffs = torch.tensor(
        [
            [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
            [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
            [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
        ],
        dtype=torch.float32,
    )
    powers = torch.stack([x**k for k in range(6)], dim=-1)
    return (powers @ coeffs.T).clamp(0, 1)


def depth_preview(depth: torch.Tensor) -> torch.Tensor:
    """Depth ``[N, H, W]`` (0 = unknown) → turbo-coloured disparity, near = red, unknown = black.

    Each image is normalised on its own 1st–99th percentile of disparity, so one stray
    near point does not wash the picture out.
    """
    out = torch.zeros(*depth.shape, 3)
    for i, d in enumerate(depth.float()):
        valid = d > 0
        if not valid.any():
            continue
        disp = torch.where(valid, 1.0 / d.clamp_min(1e-12), torch.zeros_like(d))
        vals = disp[valid]
        if vals.numel() > 1_000_000:  # quantile has an input-size limit; a subsample is plenty
            vals = vals[torch.randperm(vals.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        lo, hi = torch.quantile(vals, torch.tensor([0.01, 0.99]))
        x = ((disp - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        out[i] = torch.where(valid[..., None], _turbo(x), torch.zeros(3))
    return out


class LoadMoGe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoLoadMoGe",
            display_name="Load MoGe-2 (WorldStereo)",
            category=SUB_DEPTH,
            description="Loads a MoGe-2 monocular geometry model (the release uses moge-2-vitl-normal) from "
            "models/moge/: a .safetensors file, or a subfolder holding model.safetensors + config.json. "
            "Upstream ships model.pt pickles, which are never loaded: convert them once to safetensors "
            "(the error message gives the one-line command).",
            inputs=[
                model_name_input(
                    MODEL_FOLDER, "Weights under models/moge/ (e.g. moge-2-vitl-normal/model.safetensors)."
                ),
                io.Combo.Input(
                    "variant",
                    options=["auto", *sorted(moge_lib.MOGE_VARIANTS)],
                    default="auto",
                    tooltip="Architecture. auto: the config.json beside the weights, else the file's "
                    'embedded config (metadata "config", or "model_config" in older files), else a variant name found in the file or folder name.',
                ),
                dtype_input(
                    "Weight precision. fp32 still runs in fp16 autocast on a GPU, as upstream; "
                    "fp16/bf16 halve the memory (use fp32 on CPU)."
                ),
            ],
            outputs=[MoGe.Output(display_name="moge", tooltip="The loaded MoGe-2 model.")],
        )

    @classmethod
    def execute(cls, model_name, variant, dtype) -> io.NodeOutput:
        config = None if variant == "auto" else variant
        return io.NodeOutput(
            load_model_file(moge_lib.load_moge, MODEL_FOLDER, model_name, dtype, "MoGe", config=config)
        )


class DepthEstimate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoDepthEstimate",
            display_name="Depth Estimate MoGe-2 (WorldStereo)",
            category=SUB_DEPTH,
            description="Monocular geometry with MoGe-2: metric z-depth, the camera intrinsics (focal recovered "
            "from the predicted point map unless the FoV is given), a validity mask and normals. For a 2:1 "
            "equirectangular panorama it runs MoGe's panorama method (12 perspective views, merged in "
            "log-distance): the distance output is then the distance along each pixel's ray from the panorama "
            "centre (its own socket type) — feed it to Panorama Point Cloud.",
            inputs=[
                MoGe.Input("moge", tooltip="A model from Load MoGe-2."),
                io.Image.Input("image", tooltip="The image(s); every image of the batch is estimated."),
                io.Combo.Input(
                    "mode",
                    options=["auto", "perspective", "panorama"],
                    default="auto",
                    tooltip="auto: panorama when the image is exactly 2:1 (width = 2 × height), else perspective.",
                ),
                io.Float.Input(
                    "fov_x",
                    default=0.0,
                    min=0.0,
                    max=179.0,
                    step=0.1,
                    tooltip="Known horizontal field of view in degrees (perspective mode); 0 = estimate it.",
                ),
                io.Int.Input(
                    "resolution_level",
                    default=9,
                    min=0,
                    max=9,
                    tooltip="MoGe's inference resolution: 0 = fewest ViT tokens (fast), 9 = most (upstream default).",
                ),
            ],
            outputs=[
                Depth.Output(
                    display_name="depth",
                    tooltip="Metric z-depth [N, H, W], 0 where invalid. A panorama has no z-depth: in "
                    "panorama mode this carries the ray distance, marked so that only Panorama Point "
                    "Cloud accepts it (kept for saved workflows) — use the distance output.",
                ),
                CamerasSocket.Output(
                    display_name="camera",
                    tooltip="Perspective: identity pose + the estimated K (pixels of the image). "
                    "Panorama: the panorama bank's centre view (panorama frame, 832×480).",
                ),
                io.Mask.Output(
                    display_name="invalid_mask",
                    tooltip="1 where MoGe found no geometry (sky, undefined), 0 where the depth is "
                    "valid — ComfyUI's mask sense (1 = area to fill), like the render hole mask.",
                ),
                io.Image.Output(
                    display_name="normals",
                    tooltip="Normals as a normal map (x right = red, up = green, towards the "
                    "viewer = blue); black where invalid or when the model has no normal head.",
                ),
                io.Image.Output(
                    display_name="depth_preview",
                    tooltip="Disparity in the turbo colormap (near = red, far = blue, invalid = black).",
                ),
                PanoDistance.Output(
                    display_name="distance",
                    tooltip="Panorama mode: the distance along each equirectangular pixel's ray from "
                    "the panorama centre [N, H, W], 0 where invalid — for Panorama Point Cloud. "
                    "Perspective mode: nothing (use depth).",
                ),
            ],
        )

    @classmethod
    def execute(cls, moge, image, mode, fov_x, resolution_level) -> io.NodeOutput:
        if image.ndim != 4:
            raise InvalidImageError(f"expected an IMAGE batch [N, H, W, C], got shape {tuple(image.shape)}")
        N, H, W = image.shape[:3]
        panorama = mode == "panorama" or (mode == "auto" and W == 2 * H)
        if panorama:
            return cls._panorama(moge, image, resolution_level)
        progress = Progress(N)
        depth, mask, normals, K = [], [], [], []
        for i in range(N):
            pred = moge_lib.predict_depth(
                moge,
                image_to_hwc(image, i),
                fov_x=fov_x if fov_x > 0 else None,
                resolution_level=resolution_level,
            )
            depth.append(pred.depth.float().cpu())
            mask.append(pred.mask.cpu())
            normals.append(pred.normals.float().cpu() if pred.normals is not None else None)
            K.append(pred.K.float().cpu())
            progress(i + 1)
        depth_t, mask_t = torch.stack(depth), torch.stack(mask)
        normals_t = torch.stack(normals) if normals[0] is not None else None
        camera = Cameras(torch.eye(4).repeat(N, 1, 1), torch.stack(K), H, W)
        return io.NodeOutput(
            depth_t, camera, (~mask_t).float(), _normals_image(normals_t, mask_t), depth_preview(depth_t), None
        )

    @classmethod
    def _panorama(cls, moge, image, resolution_level) -> io.NodeOutput:
        N, H, W = image.shape[:3]
        per_view = pano_depth_lib.moge_view_predictor(
            moge, resolution_level=resolution_level, batch_size=_PANORAMA_BATCH
        )
        chunks = math.ceil(12 / _PANORAMA_BATCH)
        progress = Progress(N * chunks)
        done = 0

        def predictor(views: torch.Tensor, cameras: Cameras):
            # chunked here (not inside MoGe's batches) so that cancel answers between chunks
            nonlocal done
            depth, mask = [], []
            for s in range(0, views.shape[0], _PANORAMA_BATCH):
                d, m = per_view(views[s : s + _PANORAMA_BATCH], cameras[s : s + _PANORAMA_BATCH])
                depth.append(torch.as_tensor(d).cpu())
                mask.append(torch.as_tensor(m).cpu())
                done += 1
                progress(done)
            return torch.cat(depth), torch.cat(mask)

        dist, mask = [], []
        for i in range(N):
            out = pano_depth_lib.predict_panorama_depth(image_to_hwc(image, i).cpu(), predictor)
            seen = torch.as_tensor(out.mask).bool()
            dist.append(torch.where(seen, torch.as_tensor(out.distance).float(), torch.zeros(())))
            mask.append(seen)
        dist_t, mask_t = torch.stack(dist), torch.stack(mask)
        camera = pano_lib.panorama_bank_cameras(torch.float32)[0]
        camera = Cameras(camera.w2c.repeat(N, 1, 1), camera.K.repeat(N, 1, 1), camera.height, camera.width)
        # the depth output carries it too, for workflows saved before `distance` existed; marked, so that
        # only Panorama Point Cloud takes it
        legacy = mark_pano_distance(dist_t.clone())
        return io.NodeOutput(
            legacy,
            camera,
            (~mask_t).float(),
            _normals_image(None, mask_t),
            depth_preview(dist_t),
            mark_pano_distance(dist_t),
        )


class PanoramaViews(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoPanoramaViews",
            display_name="Panorama Views (WorldStereo)",
            category=SUB_PANORAMA,
            description="Splits an equirectangular panorama into the release's panorama memory bank: 27 "
            "perspective views of 832×480 (120° × 90° FoV) at three elevations × nine azimuths, with their "
            "cameras in the panorama frame (z up, the image centre looks along −x).",
            inputs=[
                io.Image.Input(
                    "panorama", tooltip="Equirectangular panorama, exactly 2:1 (the first image of the batch)."
                ),
                *size_inputs(
                    pano_lib.BANK_WIDTH,
                    pano_lib.BANK_HEIGHT,
                    min=64,
                    max=4096,
                    step=16,
                    optional=True,
                    tooltips=(
                        "View width (multiple of 16). Release: 832. The field of view stays 120° × 90°.",
                        "View height (multiple of 16). Release: 480; the paper's 576p panorama "
                        "inference: 576 (with width 1008, the same aspect).",
                    ),
                ),
            ],
            outputs=[
                io.Image.Output(display_name="views", tooltip="The 27 bank views [27, height, width, 3]."),
                CamerasSocket.Output(display_name="cameras", tooltip="Their cameras (w2c, K), release order."),
            ],
        )

    @classmethod
    def execute(cls, panorama, width=pano_lib.BANK_WIDTH, height=pano_lib.BANK_HEIGHT) -> io.NodeOutput:
        cameras = pano_lib.panorama_bank_cameras(torch.float32, height, width)
        views = pano_lib.panorama_bank_views(image_to_hwc(panorama), cameras)
        return io.NodeOutput(views.clamp(0, 1).float(), cameras)


class PanoramaPointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoPanoramaPointCloud",
            display_name="Panorama Point Cloud (WorldStereo)",
            category=SUB_PANORAMA,
            description="Lifts an equirectangular panorama and its per-pixel ray distance (Depth Estimate in "
            "panorama mode) into a coloured point cloud in the panorama frame — the frame of the panorama "
            "bank cameras, so it is the 3D cache for a panorama run.",
            inputs=[
                io.Image.Input("panorama", tooltip="Equirectangular panorama, 2:1 (the first image of the batch)."),
                io.MultiType.Input(
                    "distance",
                    types=[PanoDistance, Depth],
                    tooltip="Distance along each pixel's ray from the panorama centre (Depth Estimate's distance "
                    "output in panorama mode), same size as the panorama; 0 = unknown (dropped). z-depth is "
                    "refused: it is not a ray distance.",
                ),
                io.Boolean.Input(
                    "remove_depth_edges",
                    default=True,
                    tooltip="Drop points on distance discontinuities, which would otherwise smear "
                    "between foreground and background (release threshold).",
                ),
                io.Boolean.Input(
                    "compress_far_depth",
                    default=True,
                    tooltip="Compress distances beyond 8x the median (2m − m²/d), as the release does "
                    "for perspective depth, so the far background stays near the scene.",
                ),
                max_points_input(),
            ],
            outputs=[PointCloud.Output(display_name="cloud", tooltip="Point cloud in the panorama frame.")],
        )

    @classmethod
    def execute(cls, panorama, distance, remove_depth_edges, compress_far_depth, max_points) -> io.NodeOutput:
        if distance is None:
            raise MissingInputError(
                "distance is empty: Depth Estimate ran in perspective mode; give it the 2:1 panorama (mode auto "
                "or panorama)"
            )
        if not is_pano_distance(distance):
            raise InvalidDepthError(
                "distance is z-depth, not a panorama's ray distance; connect the distance output of Depth Estimate "
                "run on the panorama"
            )
        d = distance[0] if distance.ndim == 3 else distance
        cloud = pano_lib.panorama_point_cloud(
            image_to_hwc(panorama),
            d.float(),
            far_contract=pc_lib.RELEASE_FAR_CONTRACT if compress_far_depth else None,
            edge_threshold=pc_lib.RELEASE_EDGE_THRESHOLD if remove_depth_edges else None,
        )
        cloud = cap_points(cloud, max_points)
        return io.NodeOutput(cloud, ui=inspector_ui("panorama point cloud", cloud=cloud))


NODES = [LoadMoGe, DepthEstimate, PanoramaViews, PanoramaPointCloud]
