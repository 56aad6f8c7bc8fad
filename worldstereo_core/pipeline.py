"""The scene loop: one input view → 3D cache → trajectories → generated frames → merged cloud.

This is the paper's multi-trajectory loop (ARCHITECTURE §1):

1. the input view's depth is lifted into the first **3D cache**; the **memory bank** starts
   with the input image;
2. for each trajectory in order (default orbit → up → right → left), planned from the input
   camera with presets scaled by the input view's median depth:

   a. the cache is rendered at the 21 keyframe cameras (the GGM condition: render + hole
      mask, first frame replaced by the input image);
   b. references are retrieved from the memory bank (SSM: frustum overlap, ≤ 8 views);
   c. a :class:`~worldstereo_core.interfaces.FrameGenerator` makes the keyframes (the video
      model — or, in tests and the demo, :class:`~worldstereo_core.oracle.OracleGenerator`,
      which ray-casts a synthetic scene);
   d. a :class:`~worldstereo_core.interfaces.DepthEstimator` gives their depth (WorldMirror /
      MoGe — or the oracle's exact depth, optionally corrupted);
   e. each frame's depth is aligned to the depth rendered from the current cache (robust
      scale/shift over covered pixels), lifted with the known cameras and merged into the
      cache (:func:`worldstereo_core.merge.merge_clip`); 8 keyframes join the memory bank;
3. the merged cloud is the result.

:func:`run_scene_loop` is the generic loop (it may start from a given memory bank and cache,
e.g. a panorama's); :func:`run_oracle_loop` runs it on a
:class:`~worldstereo_core.synthetic.SyntheticScene` with the oracle
(:mod:`worldstereo_core.oracle`) and scores the merged cloud against the scene's true surfaces
(precision / recall / F-score at 1 % of the scene extent).

``progress(step, total)`` is called after each stage; it may raise to interrupt the loop
(ComfyUI nodes pass their interruption check there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cameras import Cameras
from .errors import InvalidDepthError, InvalidImageError, InvalidInputError, InvalidOptionError, InvalidTrajectoryError
from .interfaces import (
    START_CONTINUE,
    START_INPUT,
    DepthEstimator,
    FrameGenerator,
    LoopConfig,
    ProgressFn,
    TrajectorySpec,
    default_config,
    trajectory_specs,
)
from .memory import Cache3D, MemoryBank
from .merge import CLIP_ALIGNMENTS, FrameAlignment, first_cache, merge_clip
from .oracle import DepthCorruption, LoopScores, SyntheticScene, SyntheticView, oracle_models, score_cloud
from .pointcloud import PointCloud, validate_depth
from .recon.reconstruct import resize_frames
from .render import RenderResult, median_depth_in_view, render_point_cloud
from .retrieval import REDUCE_RULES, RETRIEVAL_MODES, ImageFeatures, References, RetrievalShortcut, retrieve
from .trajectory import PRESETS, Trajectory, make_preset

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRAJECTORIES",
    "TrajectoryStep",
    "SceneLoopResult",
    "OracleLoopResult",
    "run_scene_loop",
    "run_oracle_loop",
    "steps_report",
    "loop_report",
]

#: The paper's order of trajectories (appendix): orbit → up → right → left.
DEFAULT_TRAJECTORIES: tuple[str, ...] = ("orbit", "up", "right", "left")


@dataclass(frozen=True)
class TrajectoryStep:
    """Everything one trajectory of the loop produced.

    Attributes:
        name: preset name.
        trajectory: the full trajectory (``num_frames`` poses).
        start: where the clip started (:class:`~worldstereo_core.interfaces.TrajectorySpec`):
            ``"input"``, ``"continue"`` or a memory-bank view index.
        prompt: the clip's own prompt (None: the generator's scene prompt).
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
    start: str | int = START_INPUT
    prompt: str | None = None


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


def _shortcut_sources(config: LoopConfig, trajectories: Sequence[str]) -> dict[int, RetrievalShortcut]:
    """Trajectory position → its retrieval shortcut, the source named by the bank label its
    earlier clip gets (``"traj{j}:{name}"``). Raises for a shortcut naming a trajectory that is
    not run, or a source that does not come before its target."""
    out: dict[int, RetrievalShortcut] = {}
    for entry in config.retrieval_shortcuts:
        if len(entry) != 3:
            raise InvalidTrajectoryError(
                f"a retrieval shortcut is (trajectory, kind, source_trajectory), got {entry!r}"
            )
        target, kind, source = entry
        if target not in trajectories or source not in trajectories:
            raise InvalidTrajectoryError(
                f"retrieval shortcut {entry!r}: both trajectories must be in this run ({list(trajectories)})"
            )
        ti = list(trajectories).index(target)
        src = [j for j in range(ti) if trajectories[j] == source]
        if not src:
            raise InvalidTrajectoryError(
                f"retrieval shortcut {entry!r}: {source!r} must run before {target!r} (its clip must be in the bank)"
            )
        out[ti] = RetrievalShortcut(kind, f"traj{src[-1]}:{source}")
    return out


def _without_geometry(render: RenderResult) -> RenderResult:
    """The GGM ablation's condition: every keyframe but the first (the start image) an empty
    render, all holes (mask 1) and no depth."""
    rgb, mask, depth = render.rgb.clone(), torch.ones_like(render.mask), torch.zeros_like(render.depth)
    rgb[1:] = 0
    mask[0] = render.mask[0]
    return RenderResult(rgb, depth, mask)


def run_scene_loop(
    image: torch.Tensor,
    cameras: Cameras,
    depth: torch.Tensor,
    generator: FrameGenerator,
    depth_estimator: DepthEstimator,
    trajectories: Sequence[str | TrajectorySpec] = DEFAULT_TRAJECTORIES,
    config: LoopConfig = LoopConfig(),
    valid: torch.Tensor | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    bank: MemoryBank | None = None,
    cache: Cache3D | None = None,
    image_features: ImageFeatures | None = None,
) -> SceneLoopResult:
    """Run the paper's loop from one input view (see the module doc).

    Args:
        image: ``[1, H, W, 3]`` input image in [0, 1].
        cameras: the input camera (one pose of ``H × W``); it defines the world frame.
        depth: ``[1, H, W]`` z-depth of the input view in the cameras' units (0 = none). May
            be None when ``cache`` is given (the median depth then comes from the cache).
        generator: makes each clip's keyframes (:class:`FrameGenerator`).
        depth_estimator: gives their depth (:class:`DepthEstimator`).
        trajectories: preset names, in order, or :class:`~worldstereo_core.interfaces.TrajectorySpec`
            (preset + start + prompt; :func:`~worldstereo_core.interfaces.trajectory_specs` builds
            them). A trajectory starting from ``"input"`` is planned from the input camera and
            scaled by the input's median depth; from ``"continue"`` (the previous clip's last
            frame and camera) or a bank view (its image and camera) it is planned from that camera
            and scaled by the cache's median depth seen from it. That start image opens the clip
            (GGM render frame 0, hole-free; the generator's first frame).
        config: loop settings.
        valid: optional ``[1, H, W]`` mask of usable input depth (True = keep).
        seed: makes the robust fits reproducible.
        progress: ``progress(step, total)`` after each stage (5 per trajectory + 1).
        bank: start from this memory bank instead of the input image alone (e.g. a
            panorama's 27 views); the input image still opens every clip that starts from "input".
        cache: start from this 3D cache instead of the input depth's cloud (e.g. a
            panorama's cloud, in the input camera's world). Without a voxel size of its own
            it gets ``config.voxel_fraction ×`` the median depth (and ``config.max_points``).
        image_features: images → features for ``config.reference_cut = "dinov2_fps"`` (the
            release's reference cut; :func:`worldstereo_core.models.dinov2.load_dinov2`).
    Returns:
        :class:`SceneLoopResult`.
    """
    if len(trajectories) == 0:
        raise InvalidTrajectoryError("no trajectories given; pass at least one preset name (e.g. 'orbit')")
    specs = trajectory_specs(trajectories)
    unknown = [s.preset for s in specs if s.preset not in PRESETS]
    if unknown:
        raise InvalidTrajectoryError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    views = len(bank) if isinstance(bank, MemoryBank) else 1  # without a bank: the input image only
    beyond = [s.start for s in specs if isinstance(s.start, int) and s.start >= views]
    if beyond:
        raise InvalidInputError(
            f"trajectory start view(s) {beyond} are not in the memory bank the loop starts with ({views} views, "
            f"numbered 0..{views - 1}); pass the bank (e.g. the panorama's 27 views) or pick a smaller number"
        )
    shortcuts = _shortcut_sources(config, [s.preset for s in specs])
    if config.reference_cut not in REDUCE_RULES:
        raise InvalidTrajectoryError(
            f"unknown reference_cut {config.reference_cut!r}; use one of {', '.join(REDUCE_RULES)}"
        )
    if config.reference_cut == "dinov2_fps" and image_features is None:
        raise InvalidTrajectoryError(
            "reference_cut='dinov2_fps' (the release's cut) needs image_features (load_dinov2 of facebook/dinov2-base); "
            "pass them, or use another reference_cut"
        )
    if config.clip_alignment not in CLIP_ALIGNMENTS:
        raise InvalidOptionError(
            f"config.clip_alignment must be one of {CLIP_ALIGNMENTS}, got {config.clip_alignment!r}"
        )
    if config.retrieval_mode not in RETRIEVAL_MODES:  # checked here, not in the first clip
        raise InvalidTrajectoryError(
            f"unknown retrieval mode {config.retrieval_mode!r}; use 'aabb' (release) or 'volume' (paper)"
        )
    img, d0 = _check_inputs(image, cameras, depth, allow_no_depth=cache is not None)
    H, W = cameras.height, cameras.width
    total = 1 + 5 * len(specs)
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total)

    # 1. input view → first cache and memory bank (or the given ones)
    if bank is not None and not isinstance(bank, MemoryBank):
        raise InvalidInputError(f"bank must be a MemoryBank, got {type(bank).__name__}")
    if cache is not None and (not isinstance(cache, Cache3D) or len(cache) == 0):
        raise InvalidInputError(
            "cache must be a non-empty Cache3D (e.g. Cache3D(cloud)); or pass None to start from the depth"
        )
    if d0 is not None:
        keep0 = (d0 > 0) if valid is None else (torch.as_tensor(valid).reshape(d0.shape).bool() & (d0 > 0))
        if not bool(keep0.any()):
            raise InvalidDepthError("no input pixel survived the depth mask; the first cache would be empty")
        median_depth = float(d0[keep0].double().median())
    else:
        median_depth = median_depth_in_view(cache.cloud, cameras)
    voxel = config.voxel_fraction * median_depth
    if cache is None:
        input_cloud, cache = first_cache(
            img,
            d0,
            cameras,
            keep0,
            edge_threshold=config.edge_threshold,
            far_contract=config.far_contract,
            voxel_fraction=config.voxel_fraction,
            max_points=config.max_points,
            remove_outliers=config.outlier_removal,
        )
    else:
        input_cloud = cache.cloud
        if cache.voxel_size is None:
            cache = Cache3D(cache.cloud, voxel, cache.max_points if cache.max_points is not None else config.max_points)
    if bank is None:
        bank = MemoryBank.from_image(img[0], cameras.w2c[0], cameras.K[0], label="input")
    tick()

    steps: list[TrajectoryStep] = []
    for ti, spec in enumerate(specs):
        name = spec.preset
        # 2a. plan the trajectory from its start view and render the cache along it (GGM condition)
        start_img, start_cam, scale = _start_view(spec.start, img, cameras, median_depth, steps, bank, cache)
        traj = make_preset(name, start_cam, scale, config.num_frames, **config.params_for(name))
        kf = traj.keyframes(config.num_keyframes)
        render = render_point_cloud(cache.cloud, kf, radius=config.radius, first_frame=start_img[0])
        if not config.ggm:  # ablation: cameras only, no geometry (first frame stays the start image)
            render = _without_geometry(render)
        tick()

        # 2b. retrieve references for keyframes 1.. from the memory bank (SSM condition)
        refs = retrieve(
            traj,
            bank,
            mode=config.retrieval_mode,
            max_refs=config.max_references,
            num_keyframes=config.num_keyframes,
            reduce=config.reference_cut,
            image_features=image_features,
            shortcut=shortcuts.get(ti),
        )
        tick()

        # 2c. generate the clip's keyframes
        extra = {} if spec.prompt is None else {"prompt": spec.prompt}  # see FrameGenerator
        # generators that read the 3D cache itself (the paper-SSM variants' pointmaps) say so with uses_cache
        if getattr(generator, "uses_cache", False):
            extra["cache"] = cache.cloud
        given = refs if config.ssm else None  # SSM ablation: no references reach the generator
        frames = torch.as_tensor(generator(start_img, kf, render.rgb, render.mask, given, **extra)).float()
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
        clip = merge_clip(
            cache, frames, fd, fv, kf, config, seed=seed * 7919 + ti * 101, alignment=config.clip_alignment
        )
        cache = clip.cache
        F = len(kf)
        log.info(
            "trajectory %d/%d %s: %d references, %d of %d frames aligned, cache %d points",
            ti + 1,
            len(trajectories),
            name,
            len(refs),
            clip.alignment.status.count("aligned"),
            F - 1,
            len(cache),
        )
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
                start=spec.start,
                prompt=spec.prompt,
            )
        )
        tick()

    return SceneLoopResult(cache, bank, tuple(steps), median_depth, input_cloud)


def _start_view(
    start: str | int,
    image: torch.Tensor,
    cameras: Cameras,
    median_depth: float,
    steps: Sequence[TrajectoryStep],
    bank: MemoryBank,
    cache: Cache3D,
) -> tuple[torch.Tensor, Cameras, float]:
    """``(image [1, H, W, 3], camera (1 pose, H × W), preset scale)`` a clip starts from."""
    H, W = cameras.height, cameras.width
    if start == START_INPUT:
        return image, cameras, median_depth
    if start == START_CONTINUE:
        if not steps:
            raise InvalidTrajectoryError("the first trajectory cannot 'continue': there is no previous clip yet")
        prev = steps[-1]
        # the last keyframe is the trajectory's last pose (keyframes include both ends)
        view, cam = prev.frames[-1:], prev.keyframes[len(prev.keyframes) - 1 :]
    else:
        h, w = (int(v) for v in bank.sizes[start])
        view = resize_frames(bank.frames[start][None], (H, W)).permute(0, 2, 3, 1)
        cam = Cameras(bank.w2c[start : start + 1], bank.K[start : start + 1], h, w).resized(H, W)
    try:
        scale = median_depth_in_view(cache.cloud, cam)
    except InvalidDepthError:  # nothing of the cache in view: keep the input's scale
        scale = median_depth
    return view.float(), cam, scale


def run_oracle_loop(
    scene: SyntheticScene,
    trajectories: Sequence[str | TrajectorySpec] = DEFAULT_TRAJECTORIES,
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
    generator, depth_fn = oracle_models(scene, depth_corruption, seed)
    loop = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        generator,
        depth_fn,
        trajectories,
        config,
        valid=view.valid,
        seed=seed,
        progress=progress,
    )
    gt, scores = score_cloud(scene, loop.cloud, loop.cameras, threshold_fraction)
    return OracleLoopResult(loop, view, gt, scores, tuple(depth_fn.applied))


def steps_report(steps: Sequence[TrajectoryStep]) -> list[dict]:
    """JSON-ready summary of what the loop did per trajectory: references chosen, how the
    frames' depth was aligned, the cache size after the merge."""
    out = []
    for s in steps:
        a = s.alignment
        out.append(
            {
                "name": s.name,
                "start": s.start,
                "prompt": s.prompt,
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
            }
        )
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
