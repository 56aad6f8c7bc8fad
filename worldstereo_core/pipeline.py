"""The scene loop: one input view → 3D cache → trajectories → generated frames → merged cloud.

This is the paper's multi-trajectory loop (DESIGN §1):

1. the input view's depth is lifted into the first **3D cache**; the **memory bank** starts
   with the input image;
2. for each trajectory in order (default orbit → up → right → left), planned from the input
   camera with presets scaled by the input view's median depth:

   a. the cache is rendered at the 21 keyframe cameras (the GGM condition: render + hole
      mask, first frame replaced by the input image);
   b. references are retrieved from the memory bank (SSM: frustum overlap, ≤ 8 views);
   c. a :class:`FrameGenerator` makes the keyframes (the video model — or, in tests and the
      demo, :class:`OracleGenerator`, which ray-casts a synthetic scene);
   d. a :class:`DepthEstimator` gives their depth (WorldMirror / MoGe — or the oracle's
      exact depth, optionally corrupted);
   e. each frame's depth is aligned to the depth rendered from the current cache (robust
      scale/shift over covered pixels), lifted with the known cameras and merged into the
      cache; 8 keyframes join the memory bank;
3. the merged cloud is the result.

:func:`merge_clip` is step 2e on its own (one clip onto a cache: per-frame depth scale/shift,
or one robust similarity per clip with :func:`align_cloud_to_cache` for reconstructions that
bring their own cloud). :func:`run_scene_loop` is the generic loop (it may start from a given
memory bank and cache, e.g. a panorama's); :func:`run_oracle_loop` runs it on a
:class:`~worldstereo_core.synthetic.SyntheticScene` with the oracle and scores the merged cloud
against the scene's true surfaces (precision / recall / F-score at 1 % of the scene extent).

``progress(step, total)`` is called after each stage; it may raise to interrupt the loop
(ComfyUI nodes pass their interruption check there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from .align import Similarity, fit_depth_scale_shift, robust_umeyama, umeyama
from .cameras import Cameras
from .errors import AlignmentError, InvalidDepthError, InvalidImageError, InvalidTrajectoryError, MemoryBankError
from .memory import Cache3D, MemoryBank
from .metrics import pointcloud_prf
from .pointcloud import (
    RELEASE_EDGE_BETA,
    RELEASE_EDGE_THRESHOLD,
    PointCloud,
    depth_edge_mask,
    unproject_depths,
    validate_depth,
)
from .render import RELEASE_RADIUS, RenderResult, render_point_cloud
from .retrieval import Retrieval, score_bank, select_references
from .synthetic import SyntheticScene, SyntheticView, corrupt_depth
from .trajectory import DEFAULT_NUM_FRAMES, DEFAULT_NUM_KEYFRAMES, PRESETS, Trajectory, make_preset

__all__ = [
    "DEFAULT_TRAJECTORIES",
    "References",
    "FrameGenerator",
    "DepthEstimator",
    "OracleGenerator",
    "OracleDepth",
    "DepthCorruption",
    "LoopConfig",
    "FrameAlignment",
    "TrajectoryStep",
    "SceneLoopResult",
    "LoopScores",
    "OracleLoopResult",
    "CloudAlignment",
    "ClipMerge",
    "run_scene_loop",
    "run_oracle_loop",
    "merge_clip",
    "align_cloud_to_cache",
    "cache_surface_depth",
    "median_depth_in_view",
]

#: The paper's order of trajectories (appendix): orbit → up → right → left.
DEFAULT_TRAJECTORIES: tuple[str, ...] = ("orbit", "up", "right", "left")

ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Interfaces: what the video model and the reconstruction model plug into
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class References:
    """Views retrieved from the memory bank for one trajectory (the SSM input).

    Attributes:
        images: tuple of ``R`` images ``[H_i, W_i, 3]`` in [0, 1].
        w2c: ``[R, 4, 4]``; K: ``[R, 3, 3]`` (each in pixels of its image).
        ref_index: ``[R]`` the release's ``ref_index`` (latent slot − 1 of the first keyframe
            that chose the reference).
        bank_indices: ``[R]`` indices into the memory bank.
        sources: labels of the chosen bank entries.
    """

    images: tuple[torch.Tensor, ...]
    w2c: torch.Tensor
    K: torch.Tensor
    ref_index: torch.Tensor
    bank_indices: torch.Tensor
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def from_retrieval(bank: MemoryBank, retrieval: Retrieval) -> "References":
        sub = bank.subset(retrieval.indices)
        return References(sub.frames, sub.w2c, sub.K, retrieval.ref_index, retrieval.indices, sub.sources)


@runtime_checkable
class FrameGenerator(Protocol):
    """Makes the keyframes of one trajectory (the video model's place in the loop).

    Args:
        image: ``[1, H, W, 3]`` the input image (first frame of every clip).
        cameras: the ``F`` keyframe cameras (``H × W``), keyframe 0 = the input camera.
        render: ``[F, H, W, 3]`` the cache rendered at them (GGM condition, frame 0 = input).
        mask: ``[F, H, W]`` hole mask, 1 = hole.
        references: retrieved memory views (SSM condition).
    Returns:
        ``[F, H, W, 3]`` frames in [0, 1] at the given cameras.
    """

    def __call__(
        self, image: torch.Tensor, cameras: Cameras, render: torch.Tensor, mask: torch.Tensor, references: References
    ) -> torch.Tensor: ...


@runtime_checkable
class DepthEstimator(Protocol):
    """Depth of generated frames at known cameras (reconstruction's place in the loop).

    Returns ``(depth [F, H, W], valid [F, H, W] bool)``; depth may be off by a per-frame
    scale and shift — the loop aligns it to the cache.
    """

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]: ...


class _LastRender:
    """``scene.render`` remembering its last call, so the oracle's frames and depth for the
    same keyframes cost one ray cast (the two are asked for one after the other)."""

    def __init__(self, scene: SyntheticScene) -> None:
        self.scene = scene
        self._key: tuple | None = None
        self._out = None

    def __call__(self, cameras: Cameras):
        key = (cameras.height, cameras.width, cameras.w2c.detach().cpu().clone(), cameras.K.detach().cpu().clone())
        if (
            self._key is not None
            and key[:2] == self._key[:2]
            and key[2].shape == self._key[2].shape
            and torch.equal(key[2], self._key[2])
            and torch.equal(key[3], self._key[3])
        ):
            return self._out
        self._out = self.scene.render(cameras)
        self._key = key
        return self._out


class OracleGenerator:
    """The synthetic scene's exact renders at the requested cameras (ignores the conditions)."""

    def __init__(self, scene: SyntheticScene, renderer: Callable[[Cameras], object] | None = None) -> None:
        self.scene = scene
        self._render = renderer or scene.render

    def __call__(self, image, cameras, render, mask, references) -> torch.Tensor:
        return self._render(cameras).rgb.clone()


@dataclass(frozen=True)
class DepthCorruption:
    """How :class:`OracleDepth` degrades exact depth (see :func:`synthetic.corrupt_depth`).

    Attributes:
        scale_range: per-frame scale ``U[1 − r, 1 + r]`` and shift ``U[−r, r] × median``.
        noise: relative per-pixel Gaussian noise (0.01 = 1 %).
        hole_fraction: fraction of 8×8 blocks dropped.
    """

    scale_range: float = 0.2
    noise: float = 0.01
    hole_fraction: float = 0.0


class OracleDepth:
    """Exact z-depth of the scene at the frames' cameras, optionally corrupted per frame.

    Deterministic: call ``i`` draws its corruption from ``seed`` and ``i``. The applied
    per-frame maps are kept in :attr:`applied` (``(scale [F], shift [F])`` per call) so tests
    can compare them with what the loop recovered.
    """

    def __init__(
        self,
        scene: SyntheticScene,
        corruption: DepthCorruption | None = None,
        seed: int = 0,
        renderer: Callable[[Cameras], object] | None = None,
    ) -> None:
        self.scene = scene
        self._render = renderer or scene.render
        self.corruption = corruption
        self.seed = int(seed)
        self.applied: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._render(cameras)
        if self.corruption is None:
            self.applied.append((torch.ones(len(cameras)), torch.zeros(len(cameras))))
            return out.depth.clone(), out.valid.clone()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self.applied))
        c = self.corruption
        cd = corrupt_depth(out.depth, c.scale_range, c.noise, c.hole_fraction, generator=g, valid=out.valid)
        self.applied.append((cd.scale, cd.shift))
        return cd.depth, cd.valid


# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the scene loop (release values where the release has one).

    Attributes:
        num_frames: poses per trajectory (release: 81).
        num_keyframes: frames generated per trajectory (release: 21).
        preset_params: per-trajectory overrides for :func:`trajectory.make_preset`, as
            ``((name, {param: value}), …)``.
        radius: splat radius of the cache renders, pytorch3d NDC units (release: 0.008, made
            for 480×832; raise it for small test resolutions so the render is not all holes).
        retrieval_mode: ``"aabb"`` (release) or ``"volume"`` (paper).
        max_references: at most this many references per trajectory (release: 8).
        bank_update: keyframes of each clip added to the memory bank (release: 8).
        voxel_fraction: cache voxel size as a fraction of the input median depth.
        max_points: cap on the cache size (None: no cap).
        edge_threshold: the release's depth-edge removal when lifting depth (None: off);
            its sharpness is scaled with the resolution (see :func:`_lift`).
        far_contract: the release's far-depth compression of the *input* depth (None: off;
            the release uses 8.0 — it moves far geometry, so exact-geometry runs keep it off).
        min_covered_fraction: a frame whose covered pixels (cache surface ∩ valid depth) are
            fewer than this fraction of the image is skipped (not merged).
        outlier_removal: statistical outlier removal of incoming points on merge. Off by
            default: on a perspective cloud the far surfaces are sparser, so a global
            mean + 2σ neighbour-distance test deletes correct far points (room scene: recall
            0.91 with it, 1.00 without); flying pixels are already dropped by the edge test.
        align_depth_window: frames are aligned to :func:`cache_surface_depth` of the cache,
            which averages the points within this relative depth of each pixel's nearest.
        align_context_frames: how many of the clip's latest aligned frames join the cache in
            the alignment target of the next frame.
        max_fit_pixels: pixels (a seeded random subset of the covered ones) per depth fit.
        clip_alignment: how each clip is aligned to the cache (:func:`merge_clip`): ``"depth"``
            (per-frame scale/shift) or ``"umeyama"`` (one similarity per clip).
    """

    num_frames: int = DEFAULT_NUM_FRAMES
    num_keyframes: int = DEFAULT_NUM_KEYFRAMES
    preset_params: tuple[tuple[str, dict], ...] = ()
    radius: float = RELEASE_RADIUS
    retrieval_mode: str = "aabb"
    max_references: int = 8
    bank_update: int = 8
    voxel_fraction: float = 0.01
    max_points: int | None = 2_000_000
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD
    far_contract: float | None = None
    min_covered_fraction: float = 0.02
    outlier_removal: bool = False
    align_depth_window: float = 0.05
    align_context_frames: int = 4
    max_fit_pixels: int = 4096
    clip_alignment: str = "depth"

    def params_for(self, name: str) -> dict:
        for n, p in self.preset_params:
            if n == name:
                return dict(p)
        return {}


@dataclass(frozen=True)
class FrameAlignment:
    """Per-frame depth alignment of one clip (``[F]`` each; frame 0, the input view, is not
    aligned: scale 1, shift 0, status ``"input"``).

    Attributes:
        scale, shift: ``aligned = scale · depth + shift``.
        covered: pixels usable for the fit (covered by the cache surface, valid depth).
        inliers: pixels the robust fit kept.
        status: per frame ``"input"``, ``"aligned"`` or ``"skipped"`` (too few covered
            pixels or a failed fit; its points are not merged).
        rmse: ``[F]`` residual of the aligned frame against the cache over its inlier pixels
            (depth units; NaN where not aligned). None in results made before it existed.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    covered: torch.Tensor
    inliers: torch.Tensor
    status: tuple[str, ...]
    rmse: torch.Tensor | None = None


@dataclass(frozen=True)
class TrajectoryStep:
    """Everything one trajectory of the loop produced.

    Attributes:
        name: preset name.
        trajectory: the full trajectory (``num_frames`` poses).
        keyframes: the ``F`` keyframe cameras the frames were generated at.
        render: the GGM condition (cache rendered at the keyframes; frame 0 = input image).
        references: the retrieved memory views.
        frames: ``[F, H, W, 3]`` generated frames.
        depth: ``[F, H, W]`` their depth as estimated (before alignment); valid: ``[F, H, W]``.
        alignment: per-frame scale/shift fits.
        cache_points: size of the cache after merging this clip.
    """

    name: str
    trajectory: Trajectory
    keyframes: Cameras
    render: RenderResult
    references: References
    frames: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    alignment: FrameAlignment
    cache_points: int


@dataclass(frozen=True)
class SceneLoopResult:
    """Output of :func:`run_scene_loop`.

    Attributes:
        cache: the final 3D cache (``cache.cloud`` is the merged point cloud).
        bank: the final memory bank.
        steps: one :class:`TrajectoryStep` per trajectory, in order.
        median_depth: the input view's median depth (what the presets were scaled by).
        input_cloud: the first cache (the input view's cloud, or the cache the loop was given).
    """

    cache: Cache3D
    bank: MemoryBank
    steps: tuple[TrajectoryStep, ...]
    median_depth: float
    input_cloud: PointCloud

    @property
    def cloud(self) -> PointCloud:
        return self.cache.cloud

    @property
    def cameras(self) -> Cameras:
        """All cameras frames were made at: the input camera then every clip's keyframes 1..F−1."""
        first = self.steps[0].keyframes[0] if self.steps else None
        items = ([first] if first is not None else []) + [s.keyframes[1 : len(s.keyframes)] for s in self.steps]
        return Cameras.cat(items)


@dataclass(frozen=True)
class LoopScores:
    """Merged cloud against the truth (points seen by at least one camera of the run).

    Attributes:
        precision, recall, fscore: at ``threshold``.
        threshold: ``threshold_fraction × extent``.
        extent: the scene's extent (diagonal of its bounding box).
        num_points, num_gt_points: sizes of the two clouds.
    """

    precision: float
    recall: float
    fscore: float
    threshold: float
    extent: float
    num_points: int
    num_gt_points: int

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class OracleLoopResult:
    """Output of :func:`run_oracle_loop`: the loop's result, the input view, the ground truth
    and the scores. ``applied_corruption`` holds the true per-frame (scale, shift) applied to
    each clip's depth (ones / zeros without corruption)."""

    loop: SceneLoopResult
    view: SyntheticView
    ground_truth: PointCloud
    scores: LoopScores
    applied_corruption: tuple[tuple[torch.Tensor, torch.Tensor], ...] = field(default=())

    @property
    def cloud(self) -> PointCloud:
        return self.loop.cloud

    @property
    def steps(self) -> tuple[TrajectoryStep, ...]:
        return self.loop.steps


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _check_inputs(
    image: torch.Tensor, cameras: Cameras, depth: torch.Tensor | None, allow_no_depth: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(cameras, Cameras) or len(cameras) != 1:
        raise InvalidTrajectoryError("the scene loop needs the input camera as a Cameras batch of exactly 1 pose")
    img = image[None] if image.ndim == 3 else image
    if img.ndim != 4 or img.shape[0] != 1 or img.shape[-1] != 3:
        raise InvalidImageError(f"input image must be [1, H, W, 3] or [H, W, 3], got {tuple(image.shape)}")
    if depth is None:
        if not allow_no_depth:
            raise InvalidDepthError("no input depth given; pass the input view's depth, or a starting cache")
        if tuple(img.shape[1:3]) != (cameras.height, cameras.width):
            raise InvalidImageError(
                f"input image {tuple(img.shape[1:3])} and camera {(cameras.height, cameras.width)} sizes differ; "
                "resize the image (or rescale K with Cameras.resized)"
            )
        return img.float(), None
    d = depth[None] if depth.ndim == 2 else depth
    if d.ndim != 3 or d.shape[0] != 1:
        raise InvalidDepthError(f"input depth must be [1, H, W] or [H, W], got {tuple(depth.shape)}")
    hw = (cameras.height, cameras.width)
    if tuple(img.shape[1:3]) != hw or tuple(d.shape[1:]) != hw:
        raise InvalidDepthError(
            f"input image {tuple(img.shape[1:3])}, depth {tuple(d.shape[1:])} and camera {hw} sizes differ; "
            "resize them to one size (and rescale K with Cameras.resized)"
        )
    validate_depth(d, "input depth")
    if not bool((d > 0).any()):
        raise InvalidDepthError("input depth has no positive pixel; the first cache would be empty")
    return img.float(), d.float()


def cache_surface_depth(
    cloud: PointCloud | torch.Tensor | Sequence[torch.Tensor], cameras: Cameras, window: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased depth of a point cloud's front surface at every pixel: ``(depth, covered) [F, H, W]``.

    ``cloud`` is a :class:`PointCloud`, points ``[N, 3]`` or a list of such tensors (taken
    as their union, without concatenating them). Each point falls in the pixel cell
    containing its projection; per cell the points within ``window`` (relative z) of the
    nearest one are averaged. A splat renderer's z-buffer reports the *nearest* point
    instead, which is biased towards the camera wherever the surface is slanted or the cache
    is noisy (each merge would then shrink the scene by a few per cent — measured: −2 … −4 %
    per trajectory with 1 % depth noise). Cells no point falls in are not covered (depth 0).
    """
    if isinstance(cloud, PointCloud):
        parts = [cloud.points]
    elif isinstance(cloud, torch.Tensor):
        parts = [cloud]
    else:
        parts = list(cloud)
    F, H, W = len(cameras), cameras.height, cameras.width
    dev = parts[0].device if parts else cameras.device
    w2c = cameras.w2c.to(device=dev, dtype=torch.float32)
    K = cameras.K.to(device=dev, dtype=torch.float32)
    P = K @ w2c[:, :3, :]  # [F, 3, 4]: pixel-homogeneous projection
    depth = torch.zeros(F, H * W, dtype=torch.float32, device=dev)
    for f in range(F):
        pix_all, z_all = [], []
        for pts in parts:
            hom = pts.to(torch.float32) @ P[f, :, :3].T + P[f, :, 3]
            z = hom[:, 2]
            front = z > 1e-6
            hom, z = hom[front], z[front]
            u = torch.floor(hom[:, 0] / z).long()
            v = torch.floor(hom[:, 1] / z).long()
            inb = (u >= 0) & (u < W) & (v >= 0) & (v < H)
            pix_all.append(v[inb] * W + u[inb])
            z_all.append(z[inb])
        pix, zf = torch.cat(pix_all), torch.cat(z_all)
        if pix.numel() == 0:
            continue
        zmin = torch.full((H * W,), float("inf"), device=dev).scatter_reduce(0, pix, zf, reduce="amin")
        near = zf <= zmin[pix] * (1 + window)
        total = torch.zeros(H * W, device=dev).index_add_(0, pix[near], zf[near])
        count = torch.zeros(H * W, device=dev).index_add_(0, pix[near], torch.ones_like(zf[near]))
        depth[f] = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    depth = depth.reshape(F, H, W)
    return depth, depth > 0


def median_depth_in_view(cloud: PointCloud, cameras: Cameras) -> float:
    """Median depth of the cloud's front surface seen by the (first) camera, per pixel (a plain
    median over points would count hidden points and weigh dense regions more)."""
    d, covered = cache_surface_depth(cloud, cameras[:1])
    if not bool(covered.any()):
        raise InvalidDepthError(
            "no point of the given cache is in view of the input camera, so its median depth is unknown; "
            "pass the input depth too, or check that the cache and camera share one world"
        )
    return float(d[covered].double().median())


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
    except AlignmentError:
        return None
    if not (math.isfinite(s) and math.isfinite(b)) or s <= 0:
        return None
    return s, b, int(inl.sum())


def _lift(
    depth: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor, cameras: Cameras, edge_threshold: float | None
) -> PointCloud | None:
    """World points of the valid pixels of ``depth [F, H, W]``, depth edges dropped.

    The release's edge test (Sobel of normalised disparity, ``exp(−β·g) < threshold``) is
    tuned for 480-row images: gradients per pixel grow as the image shrinks, so β is scaled
    by ``min(H, W) / 480`` to flag the same edges at any resolution (at 120 rows the
    unscaled test flags ~40 % of a smooth floor).
    """
    keep = valid & (depth > 0)
    d = torch.where(keep, depth, torch.zeros_like(depth))  # 0 = no depth (holes, invalid)
    if edge_threshold is not None:
        beta = RELEASE_EDGE_BETA * min(cameras.height, cameras.width) / 480.0
        edges = torch.stack([torch.as_tensor(depth_edge_mask(x, edge_threshold, beta)) for x in d])
        keep = keep & ~edges
    if not bool(keep.any()):
        return None
    return unproject_depths(d, cameras.K, cameras.c2w, frames.clamp(0, 1), keep)


# ---------------------------------------------------------------------------------------------
# One clip onto the cache: alignment + lift + merge
# ---------------------------------------------------------------------------------------------


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


def _point_map(depth: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """World points ``[F, H, W, 3]`` of z-depth ``[F, H, W]`` through pixel centres."""
    F, H, W = depth.shape
    K = cameras.K.to(torch.float64)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    x = (u[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    cam = torch.stack([x, y, torch.ones_like(x)], -1) * depth.to(torch.float64)[..., None]
    c2w = cameras.c2w.to(torch.float64)
    return torch.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


def _not_edges(z: torch.Tensor, cameras: Cameras, edge_threshold: float | None) -> torch.Tensor:
    """``[F, H, W]`` True where a pixel of z-depth ``z`` (0 = none) is not on a depth edge
    (same resolution-scaled rule as :func:`_lift`)."""
    if edge_threshold is None:
        return torch.ones_like(z, dtype=torch.bool)
    beta = RELEASE_EDGE_BETA * min(cameras.height, cameras.width) / 480.0
    return ~torch.stack([torch.as_tensor(depth_edge_mask(x, edge_threshold, beta)) for x in z.float()])


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
        AlignmentError: fewer than ``max(16, min_covered_fraction × H × W)`` correspondences
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
        src = _point_map(rec, sc)
    cloud = cache.cloud if isinstance(cache, Cache3D) else cache
    if not isinstance(cloud, PointCloud):
        raise MemoryBankError(f"cache must be a Cache3D or PointCloud, got {type(cache).__name__}")
    if len(cloud) == 0:
        raise AlignmentError("the cache is empty; there is nothing to align the reconstruction to")
    td, tc = cache_surface_depth(cloud, cameras, config.align_depth_window)
    pair = v & tc
    n = int(pair.sum())
    need = max(16, int(config.min_covered_fraction * H * W))
    if n < need:
        raise AlignmentError(
            f"only {n} pixels have both a reconstruction point and cache surface (need ≥ {need}); "
            "the clip does not overlap the cache — check that the cameras match the frames"
        )
    dst = _point_map(td, cameras)[pair]
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
    keep = keep & _not_edges(torch.where(keep, z, torch.zeros_like(z)), cameras, config.edge_threshold)
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

    ``alignment="depth"`` (the loop's default): frames are aligned in order, each by a robust
    per-frame ``scale · depth + shift`` fit to :func:`cache_surface_depth` over the pixels it
    shares with the cache (≥ ``config.min_covered_fraction`` of the image, else the frame is
    skipped), and each aligned frame joins the next frames' target (the latest
    ``config.align_context_frames`` of them): new foreground the cache never saw then
    occludes the cached background behind it instead of outvoting the true surface.

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
    if alignment not in ("depth", "umeyama"):
        raise AlignmentError(f"alignment must be 'depth' or 'umeyama', got {alignment!r}")
    if not isinstance(cache, Cache3D):
        raise MemoryBankError(f"merge_clip needs a Cache3D, got {type(cache).__name__}")
    img, d, v, _ = _clip_inputs(frames, depth, valid, cameras, allow_points=alignment == "umeyama")
    F, H, W = len(cameras), cameras.height, cameras.width
    first = 1 if skip_first else 0
    scale = torch.ones(F, dtype=torch.float64)
    shift = torch.zeros(F, dtype=torch.float64)
    covered = torch.zeros(F, dtype=torch.long)
    inliers = torch.zeros(F, dtype=torch.long)
    rmse_f = torch.full((F,), float("nan"), dtype=torch.float64)

    if alignment == "umeyama":
        ca = align_cloud_to_cache(d, cameras, cache, v, img, source_cameras, config, seed, skip_first)
        scale[first:] = ca.similarity.s
        status = ("input",) * first + ("aligned",) * (F - first)
        rmse_f[first:] = ca.rmse
        al = FrameAlignment(scale, shift, ca.covered, ca.inliers, status, rmse_f)
        new = cache.merge(ca.cloud, remove_outliers=config.outlier_removal) if len(ca.cloud) else cache
        return ClipMerge(new, al, ca.cloud, ca.similarity, ca.rmse)

    status = ["input"] * first + ["skipped"] * (F - first)
    min_px = max(16, int(config.min_covered_fraction * H * W))
    new_clouds: list[PointCloud] = []
    sq_sum, sq_n = 0.0, 0
    for f in range(first, F):
        # the cache and the last few aligned frames of this clip (nearest to frame f)
        context = [cache.cloud.points] + [c.points for c in new_clouds[-config.align_context_frames :]]
        td, tc = cache_surface_depth(context, cameras[f], config.align_depth_window)
        usable = tc[0] & v[f]
        covered[f] = int(usable.sum())
        fit = None
        if covered[f] >= min_px:
            fit = _fit(d[f], td[0], usable, seed + f, config.max_fit_pixels)
        if fit is None:
            continue
        scale[f], shift[f], inliers[f] = fit
        status[f] = "aligned"
        aligned = (fit[0] * d[f].double() + fit[1]).float()[None]
        res = (aligned[0] - td[0])[usable].abs()
        gate = max(2.5 * 1.4826 * float(res.median()), 1e-9 * float(td[0].max()))
        r_in = res[res < gate].double()
        if r_in.numel():
            rmse_f[f] = float(r_in.pow(2).mean().sqrt())
            sq_sum, sq_n = sq_sum + float(r_in.pow(2).sum()), sq_n + r_in.numel()
        rgb = img[f][None] if img is not None else torch.full((1, H, W, 3), 0.5)
        pts = _lift(aligned, v[f][None] & (aligned > 0), rgb, cameras[f], config.edge_threshold)
        if pts is not None:
            new_clouds.append(pts)
    added = PointCloud.cat(new_clouds) if new_clouds else _empty_cloud()
    new = cache.merge(added, remove_outliers=config.outlier_removal) if new_clouds else cache
    al = FrameAlignment(scale, shift, covered, inliers, tuple(status), rmse_f)
    return ClipMerge(new, al, added, None, math.sqrt(sq_sum / sq_n) if sq_n else float("nan"))


def run_scene_loop(
    image: torch.Tensor,
    cameras: Cameras,
    depth: torch.Tensor,
    generator: FrameGenerator,
    depth_estimator: DepthEstimator,
    trajectories: Sequence[str] = DEFAULT_TRAJECTORIES,
    config: LoopConfig = LoopConfig(),
    valid: torch.Tensor | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    bank: MemoryBank | None = None,
    cache: Cache3D | None = None,
) -> SceneLoopResult:
    """Run the paper's loop from one input view (see the module doc).

    Args:
        image: ``[1, H, W, 3]`` input image in [0, 1].
        cameras: the input camera (one pose of ``H × W``); it defines the world frame.
        depth: ``[1, H, W]`` z-depth of the input view in the cameras' units (0 = none). May
            be None when ``cache`` is given (the median depth then comes from the cache).
        generator: makes each clip's keyframes (:class:`FrameGenerator`).
        depth_estimator: gives their depth (:class:`DepthEstimator`).
        trajectories: preset names, in order.
        config: loop settings.
        valid: optional ``[1, H, W]`` mask of usable input depth (True = keep).
        seed: makes the robust fits reproducible.
        progress: ``progress(step, total)`` after each stage (5 per trajectory + 1).
        bank: start from this memory bank instead of the input image alone (e.g. a
            panorama's 27 views); the input image still opens every clip.
        cache: start from this 3D cache instead of the input depth's cloud (e.g. a
            panorama's cloud, in the input camera's world). Without a voxel size of its own
            it gets ``config.voxel_fraction ×`` the median depth (and ``config.max_points``).
    Returns:
        :class:`SceneLoopResult`.
    """
    if len(trajectories) == 0:
        raise InvalidTrajectoryError("no trajectories given; pass at least one preset name (e.g. 'orbit')")
    unknown = [t for t in trajectories if t not in PRESETS]
    if unknown:
        raise InvalidTrajectoryError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    if config.clip_alignment not in ("depth", "umeyama"):
        raise AlignmentError(f"config.clip_alignment must be 'depth' or 'umeyama', got {config.clip_alignment!r}")
    img, d0 = _check_inputs(image, cameras, depth, allow_no_depth=cache is not None)
    H, W = cameras.height, cameras.width
    total = 1 + 5 * len(trajectories)
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total)

    # 1. input view → first cache and memory bank (or the given ones)
    if bank is not None and not isinstance(bank, MemoryBank):
        raise MemoryBankError(f"bank must be a MemoryBank, got {type(bank).__name__}")
    if cache is not None and (not isinstance(cache, Cache3D) or len(cache) == 0):
        raise MemoryBankError("cache must be a non-empty Cache3D (e.g. Cache3D(cloud)); or pass None to start from the depth")
    if d0 is not None:
        keep0 = (d0 > 0) if valid is None else (torch.as_tensor(valid).reshape(d0.shape).bool() & (d0 > 0))
        if not bool(keep0.any()):
            raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
        median_depth = float(d0[keep0].double().median())
    else:
        median_depth = median_depth_in_view(cache.cloud, cameras)
    voxel = config.voxel_fraction * median_depth
    if cache is None:
        d_in = d0
        if config.far_contract is not None:
            from .pointcloud import compress_far_depth

            d_in = torch.as_tensor(compress_far_depth(d0, config.far_contract))
        input_cloud = _lift(d_in, keep0, img, cameras, config.edge_threshold)
        if input_cloud is None:
            raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
        cache = Cache3D.empty(voxel, config.max_points).merge(input_cloud, remove_outliers=config.outlier_removal)
    else:
        input_cloud = cache.cloud
        if cache.voxel_size is None:
            cache = Cache3D(cache.cloud, voxel, cache.max_points if cache.max_points is not None else config.max_points)
    if bank is None:
        bank = MemoryBank.from_image(img[0], cameras.w2c[0], cameras.K[0], label="input")
    tick()

    steps: list[TrajectoryStep] = []
    for ti, name in enumerate(trajectories):
        # 2a. plan the trajectory and render the cache along it (GGM condition)
        traj = make_preset(name, cameras, median_depth, config.num_frames, **config.params_for(name))
        kf = traj.keyframes(config.num_keyframes)
        render = render_point_cloud(cache.cloud, kf, radius=config.radius, first_frame=img[0])
        tick()

        # 2b. retrieve references for keyframes 1.. from the memory bank (SSM condition)
        scores = score_bank(
            kf.w2c[1:], kf.K[1:], bank.w2c, bank.K, W, H, mode=config.retrieval_mode, bank_sizes=bank.sizes
        )
        retrieval = select_references(scores, list(range(1, len(kf))), config.max_references, bank_w2c=bank.w2c)
        refs = References.from_retrieval(bank, retrieval)
        tick()

        # 2c. generate the clip's keyframes
        frames = torch.as_tensor(generator(img, kf, render.rgb, render.mask, refs)).float()
        if tuple(frames.shape) != (len(kf), H, W, 3):
            raise InvalidImageError(
                f"the frame generator returned {tuple(frames.shape)}; expected {(len(kf), H, W, 3)} (one frame per keyframe)"
            )
        tick()

        # 2d. depth of the frames
        fd, fv = depth_estimator(frames, kf)
        fd = torch.as_tensor(fd).float().reshape(len(kf), H, W)
        fv = torch.as_tensor(fv).bool().reshape(len(kf), H, W)
        tick()

        # 2e. align each frame's depth to the surface depth of the cache, lift, merge.
        clip = merge_clip(cache, frames, fd, fv, kf, config, seed=seed * 7919 + ti * 101, alignment=config.clip_alignment)
        cache = clip.cache
        F = len(kf)
        bank = bank.update(frames, kf, label=f"traj{ti}:{name}", num=min(config.bank_update, F - 1))
        steps.append(
            TrajectoryStep(
                name=name,
                trajectory=traj,
                keyframes=kf,
                render=render,
                references=refs,
                frames=frames,
                depth=fd,
                valid=fv,
                alignment=clip.alignment,
                cache_points=len(cache),
            )
        )
        tick()

    return SceneLoopResult(cache, bank, tuple(steps), median_depth, input_cloud)


def default_config(height: int, width: int, **changes) -> LoopConfig:
    """Release settings, with the splat radius scaled so the release's 1.92 px at 480 rows
    holds at a smaller ``height × width`` (else small test renders are mostly holes)."""
    return LoopConfig(radius=RELEASE_RADIUS * max(1.0, 480.0 / min(height, width)), **changes)


def run_oracle_loop(
    scene: SyntheticScene,
    trajectories: Sequence[str] = DEFAULT_TRAJECTORIES,
    height: int = 240,
    width: int = 416,
    depth_corruption: DepthCorruption | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    config: LoopConfig | None = None,
    threshold_fraction: float = 0.01,
    view: SyntheticView | None = None,
) -> OracleLoopResult:
    """The scene loop on a synthetic scene with the oracle generator, scored against the truth.

    The input view's depth is exact (the cameras live in the scene's metric frame, so the
    first cache must too); each clip's depth comes from :class:`OracleDepth`, corrupted by
    ``depth_corruption`` if given. The ground truth is the scene's surface points seen by at
    least one camera of the run (input + every keyframe); precision / recall / F-score are
    measured at ``threshold_fraction × scene.extent``.

    Args:
        scene: e.g. ``synthetic.make_scene("room")``.
        height, width: render size of every view.
        config: loop settings (default :class:`LoopConfig` with the splat radius scaled so the
            release's 1.92 px at 480 rows holds at ``height``).
        view: the input view to start from (default: ``scene.default_view(height, width)``;
            when given, ``height`` and ``width`` are the view's).
    """
    if not isinstance(scene, SyntheticScene):
        raise InvalidTrajectoryError(f"run_oracle_loop needs a SyntheticScene, got {type(scene).__name__}")
    if view is None:
        view = scene.default_view(height, width)
    height, width = view.cameras.height, view.cameras.width
    if config is None:
        config = default_config(height, width)
    shared = _LastRender(scene)  # frames and depth of a clip: one ray cast
    depth_fn = OracleDepth(scene, depth_corruption, seed, renderer=shared)
    loop = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        OracleGenerator(scene, renderer=shared),
        depth_fn,
        trajectories,
        config,
        valid=view.valid,
        seed=seed,
        progress=progress,
    )
    cams = loop.cameras
    gt = scene.surface_points(cams)
    threshold = threshold_fraction * scene.extent
    p, r, f = pointcloud_prf(loop.cloud.points, gt.points, threshold)
    scores = LoopScores(p, r, f, threshold, scene.extent, len(loop.cloud), len(gt))
    return OracleLoopResult(loop, view, gt, scores, tuple(depth_fn.applied))


def steps_report(steps: Sequence[TrajectoryStep]) -> list[dict]:
    """JSON-ready summary of what the loop did per trajectory: references chosen, how the
    frames' depth was aligned, the cache size after the merge."""
    out = []
    for s in steps:
        a = s.alignment
        out.append({
            "name": s.name,
            "poses": len(s.trajectory),
            "keyframes": len(s.keyframes),
            "hole_fraction": float(s.render.mask[1:].float().mean()) if len(s.keyframes) > 1 else 0.0,
            "references": [
                {"bank_index": int(i), "source": src, "ref_index": int(r)}
                for i, src, r in zip(s.references.bank_indices, s.references.sources, s.references.ref_index)
            ],
            "aligned_frames": sum(st == "aligned" for st in a.status),
            "alignment_status": list(a.status),
            "depth_scale": [float(x) for x in a.scale],
            "depth_shift": [float(x) for x in a.shift],
            "cache_points": int(s.cache_points),
        })
    return out


def loop_report(result: OracleLoopResult) -> dict:
    """A JSON-ready summary of an oracle run: scores, then :func:`steps_report`."""
    return {
        "view": {"height": result.view.cameras.height, "width": result.view.cameras.width},
        "scores": result.scores.as_dict(),
        "median_depth": float(result.loop.median_depth),
        "memory_bank_views": len(result.loop.bank),
        "trajectories": steps_report(result.steps),
    }
