"""One clip onto the 3D cache: align its depth to the cache, lift it, merge it.

Step 2e of the scene loop (:mod:`worldstereo_core.pipeline`), usable on its own (the Align &
Merge Clip node): :func:`merge_clip` aligns a generated clip either per frame or with one
robust similarity for the whole clip (:func:`align_cloud_to_cache`, for reconstructions that
bring their own cloud), lifts the aligned depth with the known cameras (depth edges dropped,
:func:`lift_depth`) and merges the points into a new :class:`~worldstereo_core.memory.Cache3D`.

:func:`align_clip_depth` is *the* per-frame depth alignment — used by the loop (through
:func:`merge_clip`), by depth fusion (the Depth Fusion node calls it directly) and by the merge
node. Its aligned depth comes back as
:class:`WorldDepth`, a tensor that says it is already in the cache's world units, so a clip
fused to the cache and then merged is not aligned a second time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .align import Similarity, fit_depth_scale_shift, robust_umeyama, umeyama
from .cameras import Cameras
from .errors import (
    AlignmentFailedError,
    InvalidDepthError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPointCloudError,
    InvalidTrajectoryError,
)
from .interfaces import LoopConfig
from .memory import Cache3D
from .pointcloud import RELEASE_EDGE_THRESHOLD, PointCloud, compress_far_depth, depth_edges, unproject_depths
from .render import cache_surface_depth

log = logging.getLogger(__name__)

#: How a clip's depth is brought onto the cache (``merge_clip``'s ``alignment``, the loop's
#: ``LoopConfig.clip_alignment``): "depth", per-frame robust scale/shift (the loop's default), or
#: "umeyama", one similarity for the whole clip.
CLIP_ALIGNMENTS = ("depth", "umeyama")

__all__ = [
    "CLIP_ALIGNMENTS",
    "WorldDepth",
    "ClipDepthAlignment",
    "align_clip_depth",
    "FrameAlignment",
    "CloudAlignment",
    "ClipMerge",
    "merge_clip",
    "align_cloud_to_cache",
    "lift_depth",
    "first_cache",
]


class WorldDepth(torch.Tensor):
    """Z-depth ``[F, H, W]`` already aligned to the 3D cache (its world frame and units).

    :func:`align_clip_depth` returns its aligned depth as this type; :func:`merge_clip` lifts such
    depth as it is instead of fitting scale and shift again. The mark survives what passes a
    clip along unchanged (``.float()``, ``.to()``, ``.cpu()``, ``.clone()``, ``.detach()``,
    indexing); any other operation gives a plain tensor, since its result is no longer the
    aligned depth. Make one with ``WorldDepth.mark(t)``; test with ``isinstance(d, WorldDepth)``.
    """

    _KEEPS = frozenset(
        {
            torch.Tensor.float,
            torch.Tensor.to,
            torch.Tensor.cpu,
            torch.Tensor.cuda,
            torch.Tensor.clone,
            torch.Tensor.detach,
            torch.Tensor.contiguous,
            torch.Tensor.__getitem__,
        }
    )

    @staticmethod
    def mark(depth: torch.Tensor) -> WorldDepth:
        return torch.as_tensor(depth).as_subclass(WorldDepth)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if func in cls._KEEPS:
            return out
        return _plain(out)


def _plain(x):
    if isinstance(x, WorldDepth):
        return x.as_subclass(torch.Tensor)
    if isinstance(x, (tuple, list)):
        return type(x)(_plain(v) for v in x)
    return x


@dataclass(frozen=True)
class FrameAlignment:
    """Per-frame depth alignment of one clip (``[F]`` each; frame 0, the input view, is not
    aligned: scale 1, shift 0, status ``"input"``).

    Attributes:
        scale, shift: ``aligned = scale · depth + shift``.
        covered: pixels usable for the fit (covered by the cache surface, valid depth).
        inliers: pixels the robust fit kept.
        status: per frame ``"input"``, ``"aligned"``, ``"skipped"`` (too few covered
            pixels or a failed fit; its points are not merged) or ``"given"`` (the depth was
            already aligned to the cache, a :class:`WorldDepth`; lifted as it is).
        rmse: ``[F]`` residual of the aligned frame against the cache over its inlier pixels
            (depth units; NaN where not aligned). None in results made before it existed.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    covered: torch.Tensor
    inliers: torch.Tensor
    status: tuple[str, ...]
    rmse: torch.Tensor | None = None


def _fit(
    pred: torch.Tensor, target: torch.Tensor, usable: torch.Tensor, seed: int, max_pixels: int
) -> tuple[float, float, int] | None:
    """Robust ``target ≈ s · pred + b`` on at most ``max_pixels`` usable pixels (a seeded
    random subset: the fit's cost grows with the pixel count, its accuracy barely does)."""
    n = int(usable.sum())
    if n > max_pixels:
        g = torch.Generator().manual_seed(seed)
        idx = torch.nonzero(usable.flatten()).flatten()
        pick = idx[torch.randperm(n, generator=g)[:max_pixels]]
        usable = torch.zeros(usable.numel(), dtype=torch.bool)
        usable[pick] = True
        usable = usable.reshape(pred.shape)
    try:
        s, b, inl = fit_depth_scale_shift(pred, target, usable, seed=seed)
    except AlignmentFailedError:
        return None
    if not (math.isfinite(s) and math.isfinite(b)) or s <= 0:
        return None
    return s, b, int(inl.sum())


def lift_depth(
    depth: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor, cameras: Cameras, edge_threshold: float | None
) -> PointCloud | None:
    """World points of the valid pixels of ``depth [F, H, W]``, depth edges dropped
    (:func:`~worldstereo_core.pointcloud.depth_edges`, the release's rule at this resolution)."""
    keep, d = _keep_without_edges(depth, valid, edge_threshold)
    if not bool(keep.any()):
        return None
    return unproject_depths(d, cameras.K, cameras.c2w, frames.clamp(0, 1), keep)


def _keep_without_edges(
    depth: torch.Tensor, valid: torch.Tensor, edge_threshold: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, depth with 0 outside keep)``: valid positive pixels off the depth edges."""
    depth = torch.as_tensor(depth).as_subclass(torch.Tensor)
    keep = valid & (depth > 0)
    d = torch.where(keep, depth, torch.zeros_like(depth))  # 0 = no depth (holes, invalid)
    keep = keep & ~depth_edges(d, edge_threshold)
    return keep, torch.where(keep, d, torch.zeros_like(d))


@dataclass(frozen=True)
class ClipDepthAlignment:
    """A clip's depth aligned to the cache frame by frame (:func:`align_clip_depth`).

    Attributes:
        depth: ``[F, H, W]`` :class:`WorldDepth`, aligned z-depth in the cache's units; 0 where
            not kept (invalid, depth edges) or the frame was not aligned.
        valid: ``[F, H, W]`` bool, the pixels that made the cloud.
        cloud: the lifted aligned points (the frames' colours) in the cache's world frame.
        alignment: per-frame scale, shift, covered / inlier counts, status and residual.
        rmse: RMS depth residual of the inlier pixels over all aligned frames (NaN if none).
    """

    depth: WorldDepth
    valid: torch.Tensor
    cloud: PointCloud
    alignment: FrameAlignment
    rmse: float


def align_clip_depth(
    cache: Cache3D | PointCloud | torch.Tensor,
    frames: torch.Tensor | None,
    depth: torch.Tensor,
    valid: torch.Tensor | None,
    cameras: Cameras,
    *,
    window: float = 0.05,
    min_covered_fraction: float = 0.02,
    context_frames: int = 4,
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD,
    max_fit_pixels: int = 4096,
    seed: int = 0,
    skip_first: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ClipDepthAlignment:
    """Align each frame's depth to the cache's surface, in order, and lift it: the one per-frame
    depth alignment of the pack (the loop's, depth fusion's and the merge node's).

    Per frame ``f``: the target is :func:`~worldstereo_core.render.cache_surface_depth` of the
    cache plus the latest ``context_frames`` frames of this clip already aligned (new foreground
    the cache never saw then occludes the cached background behind it instead of outvoting the
    true surface); a robust ``target ≈ scale · depth + shift`` fit
    (:func:`~worldstereo_core.align.fit_depth_scale_shift`) runs on a seeded subset of at most
    ``max_fit_pixels`` of the pixels both have. A frame sharing fewer than
    ``max(16, min_covered_fraction · H · W)`` pixels with the target, or whose fit fails or has a
    non-positive scale, is skipped (not lifted; logged).

    Args:
        cache: the 3D cache (or its cloud, or its points ``[N, 3]``); unchanged.
        frames: ``[F, H, W, 3]`` colours in [0, 1] (None: grey points).
        depth: ``[F, H, W]`` z-depth up to a per-frame scale and shift (0 = none; NaN/inf unusable).
        valid: ``[F, H, W]`` usable depth (None: depth > 0).
        cameras: the frames' ``F`` cameras (``H × W``) in the cache's world.
        window: relative depth window of ``cache_surface_depth``.
        edge_threshold: drop depth-edge pixels when lifting
            (:func:`~worldstereo_core.pointcloud.depth_edges`; None keeps them).
        seed: seeds the fits (frame ``f`` uses ``seed + f``).
        skip_first: frame 0 is the input view (already in the cache): not aligned, not lifted.
        progress: ``progress(done, F)`` after each frame; may raise to interrupt.
    """
    img, d, v, _ = _clip_inputs(frames, depth, valid, cameras, allow_points=False)
    if not (0.0 <= min_covered_fraction < 1.0):
        raise InvalidOptionError(f"min_covered_fraction must be in [0, 1), got {min_covered_fraction}")
    cloud = cache.cloud if isinstance(cache, Cache3D) else cache
    points = cloud.points if isinstance(cloud, PointCloud) else torch.as_tensor(cloud)
    if points.ndim != 2 or points.shape[-1] != 3 or len(points) == 0:
        raise InvalidPointCloudError("the 3D cache is empty; build it first (Build Point Cloud) to align the depth to")
    points = points.detach().float().cpu()
    F, H, W = len(cameras), cameras.height, cameras.width
    first = 1 if skip_first else 0
    scale = torch.ones(F, dtype=torch.float64)
    shift = torch.zeros(F, dtype=torch.float64)
    covered = torch.zeros(F, dtype=torch.long)
    inliers = torch.zeros(F, dtype=torch.long)
    rmse_f = torch.full((F,), float("nan"), dtype=torch.float64)
    out_d = torch.zeros(F, H, W)
    out_v = torch.zeros(F, H, W, dtype=torch.bool)
    status = ["input"] * first + ["skipped"] * (F - first)
    min_px = max(16, int(min_covered_fraction * H * W))
    rgb = img if img is not None else torch.full((F, H, W, 3), 0.5)
    new_clouds: list[PointCloud] = []
    sq_sum, sq_n = 0.0, 0
    for f in range(first, F):
        context = [points] + ([c.points for c in new_clouds[-context_frames:]] if context_frames > 0 else [])
        td, tc = cache_surface_depth(context, cameras[f], window)
        usable = tc[0] & v[f]
        covered[f] = int(usable.sum())
        fit = _fit(d[f], td[0], usable, seed + f, max_fit_pixels) if covered[f] >= min_px else None
        if fit is None:
            why = "no usable depth fit" if covered[f] >= min_px else f"{int(covered[f])} covered pixels < {min_px}"
            log.info("frame %d of the clip skipped (%s); its points are not merged", f, why)
        else:
            scale[f], shift[f], inliers[f] = fit
            status[f] = "aligned"
            aligned = (fit[0] * d[f].double() + fit[1]).float()
            res = (aligned - td[0])[usable].abs()
            gate = max(2.5 * 1.4826 * float(res.median()), 1e-9 * float(td[0].max()))
            r_in = res[res < gate].double()
            if r_in.numel():
                rmse_f[f] = float(r_in.pow(2).mean().sqrt())
                sq_sum, sq_n = sq_sum + float(r_in.pow(2).sum()), sq_n + r_in.numel()
            keep, kept = _keep_without_edges(aligned[None], v[f][None], edge_threshold)
            out_d[f], out_v[f] = kept[0], keep[0]
            if bool(keep.any()):
                c = cameras[f]
                new_clouds.append(unproject_depths(kept, c.K, c.c2w, rgb[f][None].clamp(0, 1), keep))
        if progress is not None:
            progress(f + 1, F)
    n_aligned = status.count("aligned")
    if n_aligned < F - first:
        log.warning("%d of %d frames of the clip aligned to the cache; the others were skipped", n_aligned, F - first)
    al = FrameAlignment(scale, shift, covered, inliers, tuple(status), rmse_f)
    added = PointCloud.cat(new_clouds) if new_clouds else _empty_cloud()
    rmse = math.sqrt(sq_sum / sq_n) if sq_n else float("nan")
    return ClipDepthAlignment(WorldDepth.mark(out_d), out_v, added, al, rmse)


def first_cache(
    image: torch.Tensor,
    depth: torch.Tensor,
    cameras: Cameras,
    valid: torch.Tensor | None = None,
    *,
    edge_threshold: float | None,
    far_contract: float | None,
    voxel_fraction: float | None,
    max_points: int | None = None,
    remove_outliers: bool = False,
) -> tuple[PointCloud, Cache3D]:
    """The input view lifted into the first 3D cache: the scene loop's step 1, and Build Point Cloud.

    ``depth [1, H, W]`` (0 = none; ``valid`` may drop more pixels) is far-compressed
    (``far_contract``, None = off), lifted with :func:`lift_depth` (``edge_threshold``, None =
    keep edges) and merged into an empty cache whose voxel is ``voxel_fraction ×`` the median of
    the valid depth (None = no voxel grid) and point cap ``max_points``.

    Returns:
        ``(input_cloud, cache)``: the lifted points and the cache made of them.
    Raises:
        InvalidDepthError: no pixel survives the mask or the edge test.
    """
    d0 = torch.as_tensor(depth).float()
    keep = (d0 > 0) if valid is None else (torch.as_tensor(valid).reshape(d0.shape).bool() & (d0 > 0))
    if not bool(keep.any()):
        raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
    voxel = None if voxel_fraction is None else voxel_fraction * float(d0[keep].double().median())
    d_in = d0
    if far_contract is not None:
        d_in = torch.as_tensor(compress_far_depth(d0, far_contract))
    cloud = lift_depth(d_in, keep, image, cameras, edge_threshold)
    if cloud is None:
        raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
    return cloud, Cache3D.empty(voxel, max_points).merge(cloud, remove_outliers=remove_outliers)


@dataclass(frozen=True)
class CloudAlignment:
    """One similarity taking a clip's reconstruction onto the cache (:func:`align_cloud_to_cache`).

    Attributes:
        similarity: reconstruction frame → cache world (``x ↦ s·R·x + t``).
        rmse: root-mean-square 3D distance of the inlier pairs after alignment (world units).
        num_pairs: correspondences found (pixels with both a reconstruction point and cache surface).
        num_inliers: pairs the robust fit kept.
        covered: ``[F]`` correspondences per frame; inliers: ``[F]`` inliers per frame.
        cloud: the aligned reconstruction (valid pixels of the merged frames, depth edges dropped).
    """

    similarity: Similarity
    rmse: float
    num_pairs: int
    num_inliers: int
    covered: torch.Tensor
    inliers: torch.Tensor
    cloud: PointCloud


@dataclass(frozen=True)
class ClipMerge:
    """Output of :func:`merge_clip`.

    Attributes:
        cache: the new cache (the input cache is unchanged).
        alignment: per-frame scale/shift (``"umeyama"``: the similarity's scale on every frame,
            shift 0) with covered/inlier counts and status.
        cloud_added: the aligned points that were merged (before voxel merging).
        similarity: the clip's similarity (``"umeyama"`` mode only, else None).
        rmse: alignment residual: ``"depth"`` — RMS depth residual of the inlier pixels over
            all aligned frames; ``"umeyama"`` — RMS 3D distance of the inlier pairs. NaN when no
            frame was aligned.
    """

    cache: Cache3D
    alignment: FrameAlignment
    cloud_added: PointCloud
    similarity: Similarity | None = None
    rmse: float = float("nan")


def _empty_cloud() -> PointCloud:
    z = torch.zeros(0, 3)
    return PointCloud(z, z.clone())


def point_map(depth: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """World points ``[F, H, W, 3]`` of z-depth ``[F, H, W]`` through pixel centres."""
    F, H, W = depth.shape
    K = cameras.K.to(torch.float64)
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij"
    )
    x = (u[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    cam = torch.stack([x, y, torch.ones_like(x)], -1) * depth.to(torch.float64)[..., None]
    c2w = cameras.c2w.to(torch.float64)
    return torch.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


def _clip_inputs(frames, depth, valid, cameras: Cameras, allow_points: bool):
    if not isinstance(cameras, Cameras):
        raise InvalidTrajectoryError(f"cameras must be a Cameras batch, got {type(cameras).__name__}")
    F, H, W = len(cameras), cameras.height, cameras.width
    d = torch.as_tensor(depth)
    is_points = d.ndim == 4 and d.shape[-1] == 3
    if is_points and not allow_points:
        raise InvalidDepthError("a point map [F, H, W, 3] needs alignment='umeyama'; 'depth' aligns z-depth [F, H, W]")
    if tuple(d.shape[:3]) != (F, H, W) or not (is_points or d.ndim == 3):
        want = f"[{F}, {H}, {W}]" + (f" or a point map [{F}, {H}, {W}, 3]" if allow_points else "")
        raise InvalidDepthError(
            f"clip depth is {tuple(d.shape)} but the {F} cameras are {H}×{W}; give {want} (one map per camera)"
        )
    d = d.detach().float() if not is_points else d.detach().to(torch.float64)
    # a model's NaN/inf pixels are unusable, not an error; negative values may be legitimate
    # (affine-invariant depth before its shift is fitted), so only ``valid`` decides
    finite = torch.isfinite(d) if not is_points else torch.isfinite(d).all(-1)
    if valid is None:
        v = finite if is_points else finite & (d > 0)
    else:
        v = torch.as_tensor(valid).bool()
        if tuple(v.shape) != (F, H, W):
            raise InvalidDepthError(f"valid mask is {tuple(v.shape)}; expected [{F}, {H}, {W}]")
        v = v & finite
    d = torch.where(finite[..., None] if is_points else finite, d, torch.zeros_like(d))
    img = None
    if frames is not None:
        img = torch.as_tensor(frames).detach().float()
        if tuple(img.shape) != (F, H, W, 3):
            raise InvalidImageError(f"clip frames are {tuple(img.shape)}; expected [{F}, {H}, {W}, 3] (one per camera)")
    return img, d, v, is_points


def align_cloud_to_cache(
    reconstruction: torch.Tensor,
    cameras: Cameras,
    cache: Cache3D | PointCloud,
    valid: torch.Tensor | None = None,
    colors: torch.Tensor | None = None,
    source_cameras: Cameras | None = None,
    config: LoopConfig = LoopConfig(),
    seed: int = 0,
    skip_first: bool = False,
) -> CloudAlignment:
    """One robust similarity bringing a clip's reconstruction onto the cache (WorldMirror-style
    output, with its own cloud in its own frame and scale).

    Correspondences are pixels: at pixel ``(f, u, v)`` the reconstruction's point is paired
    with the cache's surface point on that pixel's ray (:func:`cache_surface_depth` at the
    known camera ``f``, lifted through the pixel centre). :func:`align.robust_umeyama` (LMedS)
    fits the similarity on a seeded subset of ``config.max_fit_pixels`` pairs; it is then
    refitted by least squares on every pair within 2.5 robust σ (twice).

    Args:
        reconstruction: a point map ``[F, H, W, 3]`` in the reconstruction's frame, or z-depth
            ``[F, H, W]`` lifted with ``source_cameras`` (the reconstruction's own cameras) or,
            without them, with ``cameras`` (then the similarity corrects one global error of the
            whole clip; a per-frame scale error is :func:`merge_clip`'s ``"depth"`` mode's job).
        cameras: the ``F`` known cameras of the frames, in the cache's world.
        cache: the 3D cache (or its cloud).
        valid: ``[F, H, W]`` usable reconstruction pixels (default: depth > 0 / all points).
        colors: ``[F, H, W, 3]`` colours of the points (default grey).
        config: ``align_depth_window``, ``max_fit_pixels`` and ``edge_threshold`` are used.
        skip_first: leave frame 0 out of the returned cloud (it still gives correspondences:
            in a generated clip it is the input view, whose points the cache already holds).
    Raises:
        AlignmentFailedError: fewer than ``max(16, min_covered_fraction × H × W)`` correspondences
            (the clip does not overlap the cache) or a degenerate fit.
    """
    img, rec, v, is_points = _clip_inputs(colors, reconstruction, valid, cameras, allow_points=True)
    F, H, W = len(cameras), cameras.height, cameras.width
    if is_points:
        src = rec
    else:
        sc = cameras if source_cameras is None else source_cameras
        if not isinstance(sc, Cameras) or len(sc) != F or (sc.height, sc.width) != (H, W):
            raise InvalidTrajectoryError(f"source_cameras must be {F} cameras of {H}×{W}, like the known cameras")
        src = point_map(rec, sc)
    cloud = cache.cloud if isinstance(cache, Cache3D) else cache
    if not isinstance(cloud, PointCloud):
        raise InvalidInputError(f"cache must be a Cache3D or PointCloud, got {type(cache).__name__}")
    if len(cloud) == 0:
        raise AlignmentFailedError("the cache is empty; there is nothing to align the reconstruction to")
    td, tc = cache_surface_depth(cloud, cameras, config.align_depth_window)
    pair = v & tc
    n = int(pair.sum())
    need = max(16, int(config.min_covered_fraction * H * W))
    if n < need:
        raise AlignmentFailedError(
            f"only {n} pixels have both a reconstruction point and cache surface (need ≥ {need}); "
            "the clip does not overlap the cache — check that the cameras match the frames"
        )
    dst = point_map(td, cameras)[pair]
    srcp = src[pair]
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(n, generator=g)[: config.max_fit_pixels]
    s, R, t, _ = robust_umeyama(srcp[pick], dst[pick], seed=int(seed))
    sim = Similarity(s, R, t)
    floor = 1e-9 * float((dst.max(0).values - dst.min(0).values).norm().clamp_min(1e-12))
    inl = torch.ones(n, dtype=torch.bool)
    for _ in range(2):  # least squares on all pairs within 2.5 robust σ of the current fit
        res = (sim.apply(srcp) - dst).norm(dim=-1)
        inl = res < max(2.5 * 1.4826 * float(res.median()), floor)
        if int(inl.sum()) < 3:
            break
        s, R, t = umeyama(srcp[inl], dst[inl])
        sim = Similarity(s, R, t)
    res = (sim.apply(srcp) - dst).norm(dim=-1)
    inl = res < max(2.5 * 1.4826 * float(res.median()), floor)
    rmse = float(res[inl].pow(2).mean().sqrt()) if bool(inl.any()) else float("nan")
    frame_of = torch.arange(F)[:, None, None].expand(F, H, W)[pair]
    covered = torch.bincount(frame_of, minlength=F)
    inliers = torch.bincount(frame_of[inl], minlength=F)

    # the aligned cloud: valid pixels, depth edges (of the aligned z in the known cameras) dropped
    world = sim.apply(src.reshape(-1, 3)).reshape(F, H, W, 3)
    w2c = cameras.w2c.to(torch.float64)
    z = torch.einsum("fj,fhwj->fhw", w2c[:, 2, :3], world) + w2c[:, 2, 3, None, None]
    keep = v & (z > 0)
    keep = keep & ~depth_edges(torch.where(keep, z, torch.zeros_like(z)).float(), config.edge_threshold)
    if skip_first:
        keep[0] = False
    rgb = img if img is not None else torch.full((F, H, W, 3), 0.5)
    out = PointCloud(world[keep].float(), rgb[keep].clamp(0, 1)) if bool(keep.any()) else _empty_cloud()
    return CloudAlignment(sim, rmse, n, int(inl.sum()), covered, inliers, out)


def merge_clip(
    cache: Cache3D,
    frames: torch.Tensor,
    depth: torch.Tensor,
    valid: torch.Tensor | None,
    cameras: Cameras,
    config: LoopConfig = LoopConfig(),
    seed: int = 0,
    skip_first: bool = True,
    alignment: str = "depth",
    source_cameras: Cameras | None = None,
) -> ClipMerge:
    """Align one clip's depth to the cache, lift it with the known cameras and merge it.

    ``alignment="depth"`` (the loop's default): :func:`align_clip_depth` with the config's
    settings — frames aligned in order, each by a robust per-frame ``scale · depth + shift`` fit
    to the cache's surface depth (frames sharing too few pixels with it are skipped).

    Depth that is already a :class:`WorldDepth` (e.g. depth fusion's output) is lifted as it is
    whatever ``alignment`` says: status ``"given"``, scale 1, shift 0 — a clip is never aligned
    twice.

    ``alignment="umeyama"``: one similarity for the whole clip (:func:`align_cloud_to_cache`);
    ``depth`` may then also be a point map ``[F, H, W, 3]`` in the reconstruction's frame, and
    ``source_cameras`` the reconstruction's own cameras for its depth.

    Args:
        cache: the current cache (its voxel size / point cap govern the merge); unchanged.
        frames: ``[F, H, W, 3]`` colours in [0, 1].
        depth: ``[F, H, W]`` z-depth (0 = none), up to per-frame scale/shift.
        valid: ``[F, H, W]`` usable depth (None: depth > 0).
        cameras: the frames' ``F`` cameras (``H × W``) in the cache's world.
        config: loop settings used here (alignment, edges, outlier removal).
        seed: seeds the robust fits (frame ``f`` of ``"depth"`` uses ``seed + f``).
        skip_first: frame 0 is the input view (already in the cache): not aligned, not merged.
    Returns:
        :class:`ClipMerge`.
    """
    if alignment not in CLIP_ALIGNMENTS:
        raise InvalidOptionError(f"alignment must be one of {CLIP_ALIGNMENTS}, got {alignment!r}")
    if not isinstance(cache, Cache3D):
        raise InvalidInputError(f"merge_clip needs a Cache3D, got {type(cache).__name__}")
    F = len(cameras) if isinstance(cameras, Cameras) else 0
    first = 1 if skip_first else 0

    if isinstance(depth, WorldDepth):  # already aligned to the cache (depth fusion): never twice
        log.info("merge_clip: the depth is already aligned to the cache (WorldDepth); lifting it as it is")
        img, d, v, _ = _clip_inputs(frames, depth, valid, cameras, allow_points=False)
        if skip_first:
            v = v.clone()
            v[0] = False
        rgb = img if img is not None else torch.full((*d.shape, 3), 0.5)
        added = lift_depth(d, v, rgb, cameras, config.edge_threshold) or _empty_cloud()
        counts = v.flatten(1).sum(1)
        status = ("input",) * first + ("given",) * (F - first)
        al = FrameAlignment(
            torch.ones(F, dtype=torch.float64),
            torch.zeros(F, dtype=torch.float64),
            counts,
            counts,
            status,
            torch.full((F,), float("nan"), dtype=torch.float64),
        )
        new = cache.merge(added, remove_outliers=config.outlier_removal) if len(added) else cache
        return ClipMerge(new, al, added, None, float("nan"))

    if alignment == "umeyama":
        img, d, v, _ = _clip_inputs(frames, depth, valid, cameras, allow_points=True)
        scale = torch.ones(F, dtype=torch.float64)
        rmse_f = torch.full((F,), float("nan"), dtype=torch.float64)
        ca = align_cloud_to_cache(d, cameras, cache, v, img, source_cameras, config, seed, skip_first)
        scale[first:] = ca.similarity.s
        status = ("input",) * first + ("aligned",) * (F - first)
        rmse_f[first:] = ca.rmse
        al = FrameAlignment(scale, torch.zeros(F, dtype=torch.float64), ca.covered, ca.inliers, status, rmse_f)
        new = cache.merge(ca.cloud, remove_outliers=config.outlier_removal) if len(ca.cloud) else cache
        return ClipMerge(new, al, ca.cloud, ca.similarity, ca.rmse)

    aligned = align_clip_depth(
        cache,
        frames,
        depth,
        valid,
        cameras,
        window=config.align_depth_window,
        min_covered_fraction=config.min_covered_fraction,
        context_frames=config.align_context_frames,
        edge_threshold=config.edge_threshold,
        max_fit_pixels=config.max_fit_pixels,
        seed=seed,
        skip_first=skip_first,
    )
    added = aligned.cloud
    new = cache.merge(added, remove_outliers=config.outlier_removal) if len(added) else cache
    return ClipMerge(new, aligned.alignment, added, None, aligned.rmse)
