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

:func:`run_scene_loop` is the generic loop; :func:`run_oracle_loop` runs it on a
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

from .align import fit_depth_scale_shift
from .cameras import Cameras
from .errors import AlignmentError, InvalidDepthError, InvalidImageError, InvalidTrajectoryError
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
    "run_scene_loop",
    "run_oracle_loop",
    "cache_surface_depth",
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
    """

    scale: torch.Tensor
    shift: torch.Tensor
    covered: torch.Tensor
    inliers: torch.Tensor
    status: tuple[str, ...]


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
        input_cloud: the first cache (input view only).
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


def _check_inputs(image: torch.Tensor, cameras: Cameras, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(cameras, Cameras) or len(cameras) != 1:
        raise InvalidTrajectoryError("the scene loop needs the input camera as a Cameras batch of exactly 1 pose")
    img = image[None] if image.ndim == 3 else image
    if img.ndim != 4 or img.shape[0] != 1 or img.shape[-1] != 3:
        raise InvalidImageError(f"input image must be [1, H, W, 3] or [H, W, 3], got {tuple(image.shape)}")
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
) -> SceneLoopResult:
    """Run the paper's loop from one input view (see the module doc).

    Args:
        image: ``[1, H, W, 3]`` input image in [0, 1].
        cameras: the input camera (one pose of ``H × W``); it defines the world frame.
        depth: ``[1, H, W]`` z-depth of the input view in the cameras' units (0 = none).
        generator: makes each clip's keyframes (:class:`FrameGenerator`).
        depth_estimator: gives their depth (:class:`DepthEstimator`).
        trajectories: preset names, in order.
        config: loop settings.
        valid: optional ``[1, H, W]`` mask of usable input depth (True = keep).
        seed: makes the robust fits reproducible.
        progress: ``progress(step, total)`` after each stage (5 per trajectory + 1).
    Returns:
        :class:`SceneLoopResult`.
    """
    if len(trajectories) == 0:
        raise InvalidTrajectoryError("no trajectories given; pass at least one preset name (e.g. 'orbit')")
    unknown = [t for t in trajectories if t not in PRESETS]
    if unknown:
        raise InvalidTrajectoryError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    img, d0 = _check_inputs(image, cameras, depth)
    H, W = cameras.height, cameras.width
    total = 1 + 5 * len(trajectories)
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total)

    # 1. input view → first cache and memory bank
    keep0 = (d0 > 0) if valid is None else (torch.as_tensor(valid).reshape(d0.shape).bool() & (d0 > 0))
    median_depth = float(d0[keep0].double().median())
    d_in = d0
    if config.far_contract is not None:
        from .pointcloud import compress_far_depth

        d_in = torch.as_tensor(compress_far_depth(d0, config.far_contract))
    input_cloud = _lift(d_in, keep0, img, cameras, config.edge_threshold)
    if input_cloud is None:
        raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
    voxel = config.voxel_fraction * median_depth
    cache = Cache3D.empty(voxel, config.max_points).merge(input_cloud, remove_outliers=config.outlier_removal)
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
        # Frames are aligned in order and each joins the alignment target as soon as it is
        # aligned: new foreground (the side of a house the cache never saw) then occludes
        # the cached background behind it in the next frame's target, instead of letting
        # that background leak through and outvote the true surface in the robust fit.
        F = len(kf)
        scale = torch.ones(F, dtype=torch.float64)
        shift = torch.zeros(F, dtype=torch.float64)
        covered = torch.zeros(F, dtype=torch.long)
        inliers = torch.zeros(F, dtype=torch.long)
        status = ["input"] + ["skipped"] * (F - 1)
        min_px = max(16, int(config.min_covered_fraction * H * W))
        new_clouds: list[PointCloud] = []
        for f in range(1, F):
            # the cache and the last few aligned frames of this clip (nearest to frame f)
            context = [cache.cloud.points] + [c.points for c in new_clouds[-config.align_context_frames :]]
            td, tc = cache_surface_depth(context, kf[f], config.align_depth_window)
            usable = tc[0] & fv[f]
            covered[f] = int(usable.sum())
            fit = None
            if covered[f] >= min_px:
                fit = _fit(fd[f], td[0], usable, seed * 7919 + ti * 101 + f, config.max_fit_pixels)
            if fit is None:
                continue
            scale[f], shift[f], inliers[f] = fit
            status[f] = "aligned"
            aligned = (fit[0] * fd[f].double() + fit[1]).float()[None]
            pts = _lift(aligned, fv[f][None] & (aligned > 0), frames[f][None], kf[f], config.edge_threshold)
            if pts is not None:
                new_clouds.append(pts)
        if new_clouds:
            cache = cache.merge(PointCloud.cat(new_clouds), remove_outliers=config.outlier_removal)
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
                alignment=FrameAlignment(scale, shift, covered, inliers, tuple(status)),
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


def loop_report(result: OracleLoopResult) -> dict:
    """A JSON-ready summary of an oracle run: scores, then per trajectory what the loop did
    (references chosen, how the frames' depth was aligned, the cache size after the merge)."""
    steps = []
    for s in result.steps:
        a = s.alignment
        steps.append({
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
    return {
        "view": {"height": result.view.cameras.height, "width": result.view.cameras.width},
        "scores": result.scores.as_dict(),
        "median_depth": float(result.loop.median_depth),
        "memory_bank_views": len(result.loop.bank),
        "trajectories": steps,
    }
