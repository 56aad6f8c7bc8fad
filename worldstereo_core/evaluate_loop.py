"""The paper's §4.3 protocol as the paper runs it: the full model with memory carried across
trajectories.

:func:`evaluate_scene_loop` runs one scene loop (:func:`~worldstereo_core.pipeline.run_scene_loop`)
with the 3D cache and memory bank carried from trajectory to trajectory, reconstructs all
generated views together, aligns them by the initial frame's depth
(:func:`~worldstereo_core.evaluate.depth_anchor_alignment`) and scores the cloud metrics,
RotErr / TransErr / ATE and JOG3R's RRA / RTA / mAA, plus the appendix's memory benchmark
(PSNR / SSIM / LPIPS of revisited views against their earlier generations).
:func:`evaluate_synthetic_loop` runs it on a synthetic scene with the oracle;
:func:`evaluate_real_scene` on a MipNeRF360-style folder (:func:`load_scene_folder`).

This module sits above the loop; :mod:`worldstereo_core.evaluate` (per-trajectory protocol,
reconstructors, alignment) sits below it and never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .align import Similarity
from .cameras import ArrayLike, Cameras, as_tensor
from .errors import (
    InvalidImageError,
    InvalidInputError,
    MissingFileError,
    MissingInputError,
    ShapeMismatchError,
)
from .evaluate import (
    REVISIT_DISTANCE_FRACTION,
    REVISIT_ROTATION_DEG,
    OracleReconstructor,
    ProgressFn,
    Reconstructor,
    Report,
    check_alignment,
    depth_anchor_alignment,
    format_score,
    icp_alignment,
    overall_scores,
    score_setup,
)
from .interfaces import FrameGenerator, LoopConfig, default_config
from .metrics import image_scores, metrics_report, pose_accuracy, rotation_angles
from .oracle import oracle_models
from .pipeline import DEFAULT_TRAJECTORIES, run_scene_loop
from .pointcloud import PointCloud, unproject_depths, voxel_downsample
from .recon.reconstruct import (
    Reconstruction,
)
from .synthetic import SyntheticScene
from .trajectory import load_camera_json


def find_revisits(
    cameras: Cameras, groups: Sequence[int], max_rotation_deg: float, max_distance: float
) -> list[tuple[int, int]]:
    """Pairs ``(later, earlier)`` of views at the same pose, ``earlier`` from an earlier group.

    ``groups[i]`` is the trajectory view ``i`` was generated in (negative: not generated, e.g.
    the input view, never matched either way: the benchmark compares generations with
    generations); a view is matched with the nearest (by centre distance) view of an earlier
    trajectory within both tolerances.
    """
    g = torch.as_tensor(list(groups))
    if g.numel() != len(cameras):
        raise ShapeMismatchError(f"{g.numel()} group labels for {len(cameras)} cameras")
    c2w = cameras.c2w.double().cpu()
    centres, R = c2w[:, :3, 3], c2w[:, :3, :3]
    out: list[tuple[int, int]] = []
    for i in range(len(cameras)):
        if g[i] < 0:
            continue
        earlier = ((g < g[i]) & (g >= 0)).nonzero()[:, 0]
        if earlier.numel() == 0:
            continue
        dist = (centres[earlier] - centres[i]).norm(dim=-1)
        ang = rotation_angles(R[earlier], R[i].expand(len(earlier), 3, 3))
        ok = (dist < max_distance) & (ang < max_rotation_deg)
        if bool(ok.any()):
            j = earlier[ok][int(torch.argmin(dist[ok]))]
            out.append((i, int(j)))
    return out


#: The summary table's camera columns: (title, key of a per-trajectory row).
_CAMERA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RotErr°", "rot_err_deg"),
    ("TransErr", "trans_err"),
    ("ATE", "ate"),
    ("RRA@15", "rra@15"),
    ("RTA@15", "rta@15"),
    ("mAA@30", "maa@30"),
)


@dataclass(frozen=True)
class LoopEvaluationReport(Report):
    """The §4.3 numbers of the full model on one scene (memory carried across trajectories).

    Attributes:
        scene: a label.
        alignment: ``"depth_anchor"``, ``"anchors"`` or ``"icp"``.
        threshold / thresholds / extent: as :class:`EvaluationReport`.
        overall: precision / recall / fscore / auc of the reconstructed cloud of every generated
            frame, and the mean of each camera metric over the trajectories.
        trajectories: per trajectory, in generation order: ``name``, ``start``, ``num_frames``,
            RotErr / TransErr / ATE and RRA@τ / RTA@τ / mAA(30) of its cameras (its start view
            and its generated keyframes; a bank-view start is not reconstructed, so left out).
        memory: the memory benchmark (PSNR / SSIM / LPIPS of revisited views against their
            earlier generations, ``pairs``), or None when no view was revisited.
        num_gt_points, num_frames: sizes.
    """

    scene: str
    alignment: str
    threshold: float
    thresholds: tuple[float, ...]
    extent: float
    overall: Mapping[str, float]
    trajectories: tuple[Mapping[str, object], ...]
    memory: Mapping[str, object] | None
    num_gt_points: int
    num_frames: int

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["trajectories"] = [dict(t) for t in self.trajectories]
        d["memory"] = None if self.memory is None else dict(self.memory)
        return d

    def summary(self) -> str:
        """A short human-readable table (for a node's text output)."""

        o = self.overall
        lines = [
            (
                f"scene {self.scene}: full model, memory carried over {len(self.trajectories)} trajectories, "
                f"{self.alignment} alignment, threshold {self.threshold:.4g}, {self.num_gt_points} ground-truth points"
            ),
            f"cloud: P {o['precision']:.4f}  R {o['recall']:.4f}  F {o['fscore']:.4f}  AUC {o['auc']:.4f}",
            f"{'trajectory':<12}" + "".join(f"{title:>9}" for title, _ in _CAMERA_COLUMNS),
        ]
        for t in self.trajectories:
            lines.append(f"{t['name']:<12}" + "".join(format_score(t.get(key), 9) for _, key in _CAMERA_COLUMNS))
        m = self.memory
        if m is None:
            lines.append("memory benchmark: no generated view revisits an earlier generation")
        else:
            lp = "n/a (see lpips_status)" if m["lpips"] is None else f"{m['lpips']:.4f}"
            ps = "identical" if m["psnr"] is None else f"{m['psnr']:.2f}"
            lines.append(
                f"memory benchmark ({m['num_pairs']} revisited views): PSNR {ps}  SSIM {m['ssim']:.4f}  LPIPS {lp}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class LoopEvaluationResult:
    """A scored scene loop: the §4.3 report and the run behind it.

    Attributes:
        report: the §4.3 numbers (:class:`LoopEvaluationReport`).
        loop: the scene loop's result (cache, memory bank, steps).
        cloud: the reconstructed cloud of all generated frames, in the ground truth's frame.
        transform: reconstructor's frame → ground truth's.
        frames / cameras: what was reconstructed: the input view then every trajectory's
            generated keyframes (1 … F−1), with the requested cameras.
        reconstruction: the reconstructor's output.
        revisits: ``(later, earlier)`` frame indices the memory benchmark compared.
    """

    report: LoopEvaluationReport
    loop: object = field(repr=False)
    cloud: PointCloud = field(repr=False)
    transform: Similarity = field(repr=False)
    frames: torch.Tensor = field(repr=False)
    cameras: Cameras = field(repr=False)
    reconstruction: Reconstruction = field(repr=False)
    revisits: tuple[tuple[int, int], ...] = ()


def evaluate_scene_loop(
    generator: FrameGenerator,
    depth_estimator,
    reconstructor: Reconstructor,
    image: ArrayLike,
    cameras: Cameras,
    depth: ArrayLike,
    gt_cloud: PointCloud | ArrayLike | Callable[[Cameras], PointCloud],
    *,
    trajectories: Sequence = DEFAULT_TRAJECTORIES,
    config=None,
    valid: ArrayLike | None = None,
    anchor_depth: ArrayLike | None = None,
    alignment: str = "depth_anchor",
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    threshold_fraction: float = 0.01,
    icp_distance: float | None = None,
    icp_iterations: int = 50,
    voxel_size: float | None = None,
    lpips=None,
    revisit_rotation_deg: float = REVISIT_ROTATION_DEG,
    revisit_distance: float | None = None,
    seed: int = 0,
    scene: str = "scene",
    progress: ProgressFn | None = None,
) -> LoopEvaluationResult:
    """Paper §4.3 on the full model: one scene loop, memory carried across trajectories.

    1. **Generate**: :func:`~worldstereo_core.pipeline.run_scene_loop` from the input view —
       each trajectory sees the 3D cache (GGM) and memory bank (SSM) that every earlier
       trajectory updated, as the model runs in use (not each trajectory from a fresh scene,
       as :func:`evaluate_generation` does).
    2. **Reconstruct** the input view and every trajectory's generated keyframes (1 … F−1)
       in **one** reconstructor call, so the whole scene shares one frame (our choice: the
       paper reconstructs the generated views together; it does not say in one call or per clip).
    3. **Align** (``alignment``): ``"depth_anchor"`` = Umeyama between the reconstructed and
       the true points of the initial frame (:func:`depth_anchor_alignment`; the paper's
       alignment for MipNeRF360-style data, whose only metric depth is the first frame's),
       ``"anchors"`` = the reconstructor's own camera-centre Umeyama, ``"icp"`` = first camera
       + scaled ICP.
    4. **Score**: P / R / F / AUC of the aligned cloud against ``gt_cloud``; per trajectory
       RotErr / TransErr / ATE and RRA / RTA / mAA (:func:`~worldstereo_core.metrics.pose_accuracy`)
       of the reconstructed cameras against the requested ones.
    5. **Memory benchmark** (appendix): every generated view whose pose an earlier trajectory
       already generated (:func:`find_revisits`) is compared with that earlier generation:
       PSNR / SSIM, and LPIPS if ``lpips`` (a callable) is given.

    Args:
        generator, depth_estimator: the loop's models (:class:`~worldstereo_core.interfaces.FrameGenerator`,
            :class:`~worldstereo_core.interfaces.DepthEstimator`).
        reconstructor: ``reconstructor(frames, cameras) → Reconstruction`` for scoring
            (WorldMirror without priors for honest camera metrics).
        image, cameras, depth, valid: the input view ``[1, H, W, 3]``, its camera, its z-depth
            (the loop's first cache) and optional mask.
        gt_cloud: true surface points in the cameras' frame, or a callable ``cameras →
            PointCloud`` given every camera of the run (synthetic scenes: what they saw).
        trajectories, config: the loop's (presets or
            :class:`~worldstereo_core.interfaces.TrajectorySpec`; :class:`~worldstereo_core.interfaces.LoopConfig`).
        anchor_depth: the initial frame's true depth (default ``depth``).
        voxel_size: voxel-downsample the aligned cloud before scoring (None: every point; at the
            release's 21 keyframes × 5 clips at 480×832 that is tens of millions).
        revisit_distance: centre tolerance of a revisit (default
            :data:`REVISIT_DISTANCE_FRACTION` × the input's median depth).
        progress: ``progress(step, total)``; may raise to interrupt.
    """
    check_alignment(alignment)
    if config is None:
        config = LoopConfig()
    if not callable(gt_cloud):
        gt, extent, thr, ths = score_setup(gt_cloud, threshold, thresholds, threshold_fraction)
    total = 1 + 5 * len(trajectories) + 2

    def tick(step: int) -> None:
        if progress is not None:
            progress(step, total)

    loop = run_scene_loop(
        as_tensor(image).float(),
        cameras,
        as_tensor(depth).float(),
        generator,
        depth_estimator,
        trajectories,
        config,
        valid=valid,
        seed=seed,
        progress=lambda s, _t: tick(s),
    )
    # what is reconstructed: the input view, then each clip's generated keyframes 1..F-1
    frames = [as_tensor(image).float().reshape(1, *loop.steps[0].frames.shape[1:])]
    cams = [cameras]
    groups = [-1]
    per_traj_idx: list[list[int]] = []
    n = 1
    for ti, s in enumerate(loop.steps):
        F = len(s.keyframes)
        own = list(range(n, n + F - 1))
        if s.start == "input":
            start = [0]
        elif s.start == "continue":
            start = [per_traj_idx[-1][-1]]
        else:  # a memory-bank view: not among the reconstructed frames
            start = []
        per_traj_idx.append(start + own)
        frames.append(s.frames[1:])
        cams.append(s.keyframes[1:F])
        groups += [ti] * (F - 1)
        n += F - 1
    all_frames = torch.cat(frames)
    all_cams = Cameras.cat(cams)
    if callable(gt_cloud):
        gt, extent, thr, ths = score_setup(gt_cloud(all_cams), threshold, thresholds, threshold_fraction)
    rec = reconstructor(all_frames, all_cams)
    if not isinstance(rec, Reconstruction):
        raise InvalidInputError(f"the reconstructor must return a Reconstruction, got {type(rec).__name__}")
    if len(rec.cameras) != len(all_cams):
        raise ShapeMismatchError(f"the reconstructor returned {len(rec.cameras)} cameras for {len(all_cams)} frames")
    tick(total - 1)

    if alignment == "depth_anchor":
        anchor = depth if anchor_depth is None else anchor_depth
        T = depth_anchor_alignment(rec, anchor, cameras)
    elif alignment == "icp":
        gate = float(icp_distance) if icp_distance is not None else 5.0 * thr
        T = icp_alignment(rec, all_cams, gt, gate, icp_iterations)
    else:
        T = Similarity.identity()
    cloud = PointCloud(as_tensor(T.apply(rec.cloud.points.double())).float(), rec.cloud.colors)
    if voxel_size is not None:
        cloud = voxel_downsample(cloud, voxel_size)
    pred_c2w, want_c2w = rec.cameras.c2w.double(), all_cams.c2w.double()
    per: list[dict] = []
    for s, idx in zip(loop.steps, per_traj_idx):
        row: dict[str, object] = {"name": s.name, "start": s.start, "num_frames": len(idx)}
        if len(idx) >= 2:
            ii = torch.tensor(idx)
            cm = metrics_report(pred_c2w=pred_c2w[ii], gt_c2w=want_c2w[ii])
            row.update(rot_err_deg=cm["rot_err_deg"], trans_err=cm.get("trans_err"), ate=cm.get("ate"))
            row.update(pose_accuracy(pred_c2w[ii], want_c2w[ii]))
        per.append(row)
    keys = ["rot_err_deg", "trans_err", "ate"] + [k for k in (per[0] if per else {}) if "@" in k]
    overall = overall_scores(cloud, gt, thr, ths, per, keys)

    # memory benchmark: revisited views against their earlier generations
    dist = revisit_distance if revisit_distance is not None else REVISIT_DISTANCE_FRACTION * loop.median_depth
    pairs = find_revisits(all_cams, groups, revisit_rotation_deg, dist)
    memory = None
    if pairs:
        later = torch.tensor([p[0] for p in pairs])
        earlier = torch.tensor([p[1] for p in pairs])
        memory = image_scores(all_frames[later], all_frames[earlier], lpips)
    tick(total)
    report = LoopEvaluationReport(
        scene=scene,
        alignment=alignment,
        threshold=thr,
        thresholds=ths,
        extent=extent,
        overall=overall,
        trajectories=tuple(per),
        memory=memory,
        num_gt_points=int(gt.shape[0]),
        num_frames=len(all_cams),
    )
    return LoopEvaluationResult(report, loop, cloud, T, all_frames, all_cams, rec, tuple(pairs))


def evaluate_synthetic_loop(
    scene: SyntheticScene,
    *,
    height: int = 224,
    width: int = 392,
    trajectories: Sequence = DEFAULT_TRAJECTORIES,
    revisit: bool = True,
    config=None,
    generator: FrameGenerator | None = None,
    reconstructor: Reconstructor | None = None,
    depth_corruption=None,
    gt_voxel_size: float | None = None,
    seed: int = 0,
    **kwargs,
) -> LoopEvaluationResult:
    """:func:`evaluate_scene_loop` on a synthetic scene: its default view with exact depth,
    the oracle generator (unless ``generator``) and oracle depth (``depth_corruption``
    optional), :class:`OracleReconstructor` for scoring (sizes multiples of 14), the surface
    points every camera of the run saw as ground truth (one point per voxel of ``extent / 400``);
    the reconstruction is thinned to voxels of ``extent / 1000`` unless ``voxel_size`` is given
    (``None``: every point) — below the smallest AUC distance (0.1 % of the extent), so scoring
    stays fast (millions of points otherwise) at a small cost in AUC (room, 224×392, default
    trajectories: AUC 0.919 thinned vs 0.946 with every point; P / R / F unchanged to 1e-3).
    ``revisit`` appends the first
    trajectory again (a second pass with the memory the whole run built), which is what the
    memory benchmark compares (our choice of revisit: the appendix's trajectories were not
    reachable). Other keyword arguments go to :func:`evaluate_scene_loop`."""
    view = scene.default_view(height, width)
    cfg = config if config is not None else default_config(height, width)
    gen, depth_fn = oracle_models(scene, depth_corruption, seed)
    if generator is not None:
        gen = generator
    trajs = list(trajectories) + ([trajectories[0]] if revisit and trajectories else [])
    rec = reconstructor if reconstructor is not None else OracleReconstructor(scene)
    kwargs.setdefault("scene", scene.name)
    kwargs.setdefault("voxel_size", scene.extent / 1000.0)
    return evaluate_scene_loop(
        gen,
        depth_fn,
        rec,
        view.image,
        view.cameras,
        view.depth,
        lambda cams: scene.surface_points(cams, voxel_size=gt_voxel_size),
        trajectories=trajs,
        config=cfg,
        valid=view.valid,
        seed=seed,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# Real scenes (MipNeRF360-style folders)
# ---------------------------------------------------------------------------------------------

#: Image files a scene folder's ``images/`` may hold.
SCENE_IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RealScene:
    """A captured scene to evaluate on (MipNeRF360-style), read by :func:`load_scene_folder`.

    Attributes:
        name: the folder's name.
        images: ``[N, H, W, 3]`` float32 in [0, 1]; ``images[0]`` is the input view.
        cameras: their ``N`` cameras (``H × W``), the world frame of the ground truth.
        depth: ``[N, H, W]`` z-depth (0 = unknown), or None when the folder has none.
        points: the ground-truth cloud (``points.ply``), or None.
    """

    name: str
    images: torch.Tensor
    cameras: Cameras
    depth: torch.Tensor | None
    points: PointCloud | None

    def ground_truth(self) -> PointCloud:
        """``points.ply`` if given, else every depth map lifted with its camera."""
        if self.points is not None:
            return self.points
        if self.depth is None:
            raise MissingFileError(f"scene {self.name!r} has neither points.ply nor depth/: nothing to score against")
        return unproject_depths(self.depth, self.cameras.K, self.cameras.c2w, self.images, self.depth > 0)

    def anchor_depth(self) -> torch.Tensor:
        """``[H, W]`` true depth of the input view (the depth-anchor alignment's anchor)."""
        if self.depth is None:
            # points.ply rendered into the view is no anchor: where the sampled surface is
            # sparse, farther surfaces show through (a quarter of the pixels off by > 2 %).
            raise MissingFileError(
                f"scene {self.name!r} has no depth/: the depth-anchor alignment needs the input view's depth "
                "(add depth/<stem>.npy), or use alignment 'anchors' or 'icp'"
            )
        return self.depth[0]


def load_scene_folder(folder: str | os.PathLike, height: int | None = None, width: int | None = None) -> RealScene:
    """Read a scene folder (our layout, documented in the README's "Evaluation"):

    ``images/`` (PNG / JPEG, sorted by name; the first is the input view), ``camera.json`` (one
    camera per image, the upstream format :func:`~worldstereo_core.trajectory.load_camera_json`
    reads: w2c OpenCV extrinsics, intrinsics in pixels of the images), optional ``depth/``
    (``<image stem>.npy`` float z-depth per image in the cameras' units, 0 = unknown; read
    without pickles) and optional ``points.ply`` (a ground-truth cloud in the cameras' world).
    Images and depth are resized to ``height × width`` when given (bicubic / nearest; K
    rescaled). At least one of ``depth/`` and ``points.ply`` is needed to score clouds.
    """
    from PIL import Image

    root = Path(folder)
    img_dir, cam_file = root / "images", root / "camera.json"
    if not img_dir.is_dir() or not cam_file.is_file():
        raise MissingFileError(f"{root} must hold images/ and camera.json (optional depth/, points.ply)")
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in SCENE_IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MissingFileError(f"{img_dir} holds no {'/'.join(SCENE_IMAGE_SUFFIXES)} image")
    cams = load_camera_json(cam_file).cameras
    if len(cams) != len(files):
        raise ShapeMismatchError(
            f"camera.json has {len(cams)} cameras for {len(files)} images in {img_dir}; give one per image"
        )
    H0, W0 = cams.height, cams.width
    H, W = (height or H0), (width or W0)
    imgs = []
    for p in files:
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"cannot read the image {p.name}: {exc}") from None
        if rgb.size != (W0, H0):
            raise ShapeMismatchError(f"{p.name} is {rgb.size[0]}×{rgb.size[1]} but camera.json is for {W0}×{H0} images")
        if (H, W) != (H0, W0):
            rgb = rgb.resize((W, H), Image.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
    depth = None
    depth_dir = root / "depth"
    if depth_dir.is_dir():
        maps = []
        for p in files:
            f = depth_dir / f"{p.stem}.npy"
            if not f.is_file():
                raise MissingFileError(f"depth/ has no {f.name} for {p.name}; give one depth map per image (or none)")
            try:
                d = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidImageError(f"cannot read {f.name} as a numeric .npy array: {exc}") from None
            d = torch.from_numpy(np.asarray(d, dtype=np.float32))
            if tuple(d.shape) != (H0, W0) or not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
                raise InvalidImageError(
                    f"{f.name} must be a finite non-negative [{H0}, {W0}] depth map, got shape {tuple(d.shape)}"
                )
            if (H, W) != (H0, W0):
                d = torch.nn.functional.interpolate(d[None, None], size=(H, W), mode="nearest")[0, 0]
            maps.append(d)
        depth = torch.stack(maps)
    ply = root / "points.ply"
    from .pointcloud import load_ply

    points = load_ply(ply) if ply.is_file() else None
    if depth is None and points is None:
        raise MissingFileError(f"{root} has neither depth/ nor points.ply: there is no ground truth to score against")
    cams = cams.resized(H, W)
    # float32 like every camera the loop plans (camera.json is read as float64)
    cams = Cameras(as_tensor(cams.w2c).float(), as_tensor(cams.K).float(), H, W)
    return RealScene(root.name, torch.stack(imgs), cams, depth, points)


def evaluate_real_scene(
    scene: RealScene,
    generator: FrameGenerator,
    depth_estimator,
    reconstructor: Reconstructor,
    *,
    input_depth: ArrayLike | None = None,
    alignment: str = "depth_anchor",
    **kwargs,
) -> LoopEvaluationResult:
    """:func:`evaluate_scene_loop` on a captured scene: its first image and camera are the
    input view, the loop's first cache comes from ``input_depth`` (e.g. MoGe's estimate, as
    the model runs in use) or else the folder's depth of that view, the ground truth is
    :meth:`RealScene.ground_truth`, and ``"depth_anchor"`` aligns with the folder's depth of
    the input view. Other keyword arguments go to :func:`evaluate_scene_loop`."""
    if input_depth is None:
        if scene.depth is None:
            raise MissingInputError(
                f"scene {scene.name!r} has no depth/: give the input view's depth (e.g. a MoGe estimate) to start the loop"
            )
        input_depth = scene.depth[:1]
    anchor = scene.anchor_depth() if alignment == "depth_anchor" else None
    kwargs.setdefault("scene", scene.name)
    return evaluate_scene_loop(
        generator,
        depth_estimator,
        reconstructor,
        scene.images[:1],
        scene.cameras[:1],
        input_depth,
        scene.ground_truth(),
        anchor_depth=anchor,
        alignment=alignment,
        **kwargs,
    )


__all__ = [
    "find_revisits",
    "LoopEvaluationReport",
    "LoopEvaluationResult",
    "evaluate_scene_loop",
    "evaluate_synthetic_loop",
    "SCENE_IMAGE_SUFFIXES",
    "RealScene",
    "load_scene_folder",
    "evaluate_real_scene",
]
