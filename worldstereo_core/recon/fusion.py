"""Depth fusion: per-frame depth of a clip aligned to the 3D cache, lifted with known cameras.

The alternative to WorldMirror for reconstructing generated frames (the paper's loop with a
monocular depth model such as MoGe-2): each frame's depth is correct only up to a scale and
a shift, but the frames' cameras are known exactly and most of each frame sees surfaces the
cache already holds. So, frame by frame, in order:

1. the cache's front-surface depth is read at the frame's camera
   (:func:`~worldstereo_core.render.cache_surface_depth`, an unbiased per-pixel mean of the
   nearest points — the target);
2. a robust ``target ≈ scale · depth + shift`` fit over the pixels that have both
   (:func:`~worldstereo_core.align.fit_depth_scale_shift`) — frames sharing fewer than
   ``min_covered_fraction`` of their pixels with the target are *skipped* (depth 0, no
   points), since a fit on a sliver of overlap is a guess;
3. the aligned frame is lifted with its camera (depth edges dropped) and joins the target of
   the next frames (the latest ``context_frames`` of them), so new foreground the cache never
   saw is aligned against its neighbours instead of against the background behind it.

The result is in the cache's world frame and units. It does not merge into the cache —
that is the caller's choice (a Cache3D merge). The alignment is the scene loop's
(:func:`~worldstereo_core.merge.merge_clip`, ``alignment="depth"``, ``skip_first=False``,
same defaults): the tests hold the two to the same scales, shifts and points; this function
adds the per-pixel aligned depth and mask, and per-frame progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..align import fit_depth_scale_shift
from ..cameras import ArrayLike, Cameras, as_tensor
from ..errors import (
    AlignmentFailedError,
    InvalidCameraError,
    InvalidDepthError,
    InvalidImageError,
    InvalidOptionError,
    InvalidPointCloudError,
)
from ..pointcloud import RELEASE_EDGE_BETA, RELEASE_EDGE_THRESHOLD, PointCloud, depth_edge_mask, unproject_depths
from ..render import cache_surface_depth

__all__ = ["DepthFusion", "fuse_depth_to_cache"]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class DepthFusion:
    """A clip's depth aligned to the cache (:func:`fuse_depth_to_cache`).

    Attributes:
        depth: ``[F, H, W]`` aligned z-depth in the cache's units; 0 where invalid or the
            frame was skipped.
        valid: ``[F, H, W]`` bool, the pixels that made the cloud.
        cloud: the lifted points (frames' colours), in the cache's world frame.
        scale, shift: ``[F]`` float64, ``aligned = scale · depth + shift`` (1, 0 when skipped).
        covered: ``[F]`` pixels shared with the alignment target.
        status: per frame ``"aligned"`` or ``"skipped"``.
    """

    depth: torch.Tensor
    valid: torch.Tensor
    cloud: PointCloud
    scale: torch.Tensor
    shift: torch.Tensor
    covered: torch.Tensor
    status: tuple[str, ...]


def _edges(depth: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """``[H, W]`` depth-edge mask with the release rule, sharpness scaled to the resolution
    (the release's β is tuned for 480 rows; per-pixel gradients grow as the image shrinks)."""
    if threshold is None or not bool((depth > 0).any()):
        return torch.zeros_like(depth, dtype=torch.bool)
    beta = RELEASE_EDGE_BETA * min(depth.shape) / 480.0
    return torch.as_tensor(depth_edge_mask(depth, threshold, beta)).bool()


def fuse_depth_to_cache(
    cache: PointCloud,
    frames: ArrayLike,
    depth: ArrayLike,
    cameras: Cameras,
    valid: ArrayLike | None = None,
    *,
    window: float = 0.05,
    min_covered_fraction: float = 0.02,
    context_frames: int = 4,
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD,
    max_fit_pixels: int = 4096,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> DepthFusion:
    """Align each frame's depth to the cache and lift it (see the module doc).

    Args:
        cache: the current 3D cache (world frame); not modified.
        frames: ``[F, H, W, 3]`` colours in [0, 1].
        depth: ``[F, H, W]`` z-depth up to a per-frame scale and shift (0 = none).
        cameras: the frames' ``F`` cameras, ``H × W``, in the cache's world.
        valid: optional ``[F, H, W]`` bool of usable depth (default: depth > 0).
        window: relative depth window of :func:`~worldstereo_core.render.cache_surface_depth`.
        min_covered_fraction: frames sharing fewer pixels with the target are skipped.
        context_frames: aligned frames of this clip added to the next frames' target.
        edge_threshold: drop depth-edge pixels when lifting (None keeps them).
        max_fit_pixels: a seeded random subset of this many pixels per fit.
        seed: seeds the robust fits (frame ``f`` uses ``seed + f``).
        progress: ``progress(done, F)`` after each frame; may raise to interrupt.
    """
    if not isinstance(cache, PointCloud) or len(cache) == 0:
        raise InvalidPointCloudError("depth fusion needs a non-empty 3D cache to align the frames' depth to")
    if not isinstance(cameras, Cameras):
        raise InvalidCameraError(f"cameras must be a Cameras batch, got {type(cameras).__name__}")
    img = as_tensor(frames).detach().float().cpu()
    d = as_tensor(depth).detach().float().cpu()
    F_, H, W = len(cameras), cameras.height, cameras.width
    if img.ndim != 4 or img.shape[-1] != 3:
        raise InvalidImageError(f"frames must be [F, H, W, 3], got {tuple(img.shape)}")
    if tuple(img.shape[:3]) != (F_, H, W) or tuple(d.shape) != (F_, H, W):
        raise InvalidDepthError(
            f"frames {tuple(img.shape[:3])}, depth {tuple(d.shape)} and cameras ({F_} × {H}×{W}) disagree; "
            "give one depth map and one camera per frame, at the frames' size"
        )
    if not torch.isfinite(d).all() or bool((d < 0).any()):
        raise InvalidDepthError("depth must be finite and ≥ 0 (0 = unknown)")
    v = (d > 0) if valid is None else (as_tensor(valid).detach().bool().cpu().reshape(F_, H, W) & (d > 0))
    if not (0.0 <= min_covered_fraction < 1.0):
        raise InvalidOptionError(f"min_covered_fraction must be in [0, 1), got {min_covered_fraction}")

    scale = torch.ones(F_, dtype=torch.float64)
    shift = torch.zeros(F_, dtype=torch.float64)
    covered = torch.zeros(F_, dtype=torch.long)
    status = ["skipped"] * F_
    out_d = torch.zeros(F_, H, W)
    out_v = torch.zeros(F_, H, W, dtype=torch.bool)
    min_px = max(16, int(min_covered_fraction * H * W))
    clouds: list[PointCloud] = []
    cache_pts = cache.points.detach().float().cpu()
    for f in range(F_):
        context = [cache_pts] + [c.points for c in clouds[-context_frames:]] if context_frames > 0 else [cache_pts]
        td, tc = cache_surface_depth(context, cameras[f], window)
        usable = tc[0] & v[f]
        covered[f] = int(usable.sum())
        if int(covered[f]) >= min_px:
            if int(covered[f]) > max_fit_pixels:  # the fit's cost grows with the pixels, its accuracy barely
                g = torch.Generator().manual_seed(seed + f)
                idx = torch.nonzero(usable.flatten()).flatten()
                sub = torch.zeros(H * W, dtype=torch.bool)
                sub[idx[torch.randperm(idx.numel(), generator=g)[:max_fit_pixels]]] = True
                usable = sub.reshape(H, W)
            try:
                s, b, _ = fit_depth_scale_shift(d[f], td[0], usable, seed=seed + f)
            except AlignmentFailedError:
                s, b = float("nan"), float("nan")
            if math.isfinite(s) and math.isfinite(b) and s > 0:
                aligned = (s * d[f].double() + b).float()
                keep = v[f] & (aligned > 0)
                aligned = torch.where(keep, aligned, torch.zeros_like(aligned))
                keep = keep & ~_edges(aligned, edge_threshold)
                if bool(keep.any()):
                    scale[f], shift[f], status[f] = s, b, "aligned"
                    out_d[f] = aligned
                    out_v[f] = keep
                    c = cameras[f]
                    clouds.append(unproject_depths(aligned[None], c.K, c.c2w, img[f][None].clamp(0, 1), keep[None]))
        if progress is not None:
            progress(f + 1, F_)
    cloud = PointCloud.cat(clouds) if clouds else PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    return DepthFusion(out_d, out_v, cloud, scale, shift, covered, tuple(status))
