"""The reconstruction benchmark (paper §4.3): generate → reconstruct → align → score.

Two protocols. The paper's (the full model, memory carried across trajectories) runs the scene
loop and lives above it, in :mod:`worldstereo_core.evaluate_loop`; it uses the reconstructors,
:func:`depth_anchor_alignment` and the scoring defined here. :func:`evaluate_generation`,
described next, scores each trajectory on its own from the input view. This module never
imports the loop.

For one scene (an input view and a ground-truth cloud) and the benchmark's trajectories
(``eloop``, ``up``, ``left``, ``right``: :data:`BENCHMARK_TRAJECTORIES`), each trajectory is
evaluated on its own:

1. **Generate** its keyframes from the input view with a
   :class:`~worldstereo_core.interfaces.FrameGenerator` (the GGM condition is the input view's
   cloud rendered along the trajectory when a ``cache`` is given, else an empty render; the
   SSM reference is the input image — the memory bank a fresh scene starts with).
2. **Reconstruct** the frames with a :data:`Reconstructor` —
   ``reconstructor(frames, cameras) → Reconstruction`` — whose cloud and cameras are already
   in our frame via Umeyama on the camera centres (predicted ↔ requested, see
   :mod:`worldstereo_core.recon.reconstruct`). For honest camera metrics the reconstructor
   must *not* feed the requested cameras as priors (:class:`WorldMirrorReconstructor` defaults
   to ``use_priors=False``).
3. **Align** to the ground truth:

   * ``alignment="anchors"`` — keep the reconstruction's own similarity (Umeyama on the
     anchor correspondences = predicted camera centres ↔ requested camera centres);
   * ``alignment="icp"`` — start from the *first* camera (predicted first camera put on the
     requested one; scale = median camera-z of the ground-truth points inside the first
     camera's view / median predicted depth of frame 0) and refine with scaled point-to-point
     ICP against the ground truth (:func:`~worldstereo_core.align.icp_refine`, gate
     ``icp_distance``, default 5 × the F-score threshold).

4. **Score** with :func:`~worldstereo_core.metrics.metrics_report`: precision / recall /
   F-score at ``threshold`` (default 1 % of the ground truth's bounding-box diagonal), AUC of
   F over ``thresholds`` (default 20 steps from 0.1 % to 2 % of the diagonal), and RotErr
   (degrees, summed over frames) / TransErr / ATE of the reconstructed cameras against the
   requested ones. The report also scores the union of the aligned clouds of all
   trajectories (``overall``) and averages the camera metrics.

:func:`evaluate_synthetic` runs the whole protocol on a synthetic scene with the oracle
generator and an oracle reconstructor (exact depth, cameras in another similarity frame,
optional pose noise), which is what the tests and the demo use today; real benchmarks
(Tanks-and-Temples, MipNeRF360) need the user's ground-truth cloud in the trajectories' frame
(:func:`load_benchmark_trajectories` reads the release's ``renders/traj_*/camera.json``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .align import Similarity, icp_refine, umeyama
from .cameras import ArrayLike, Cameras, as_tensor, invert_rigid
from .errors import (
    AlignmentFailedError,
    InvalidCameraError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPointCloudError,
    InvalidTrajectoryError,
    MissingFileError,
    MissingInputError,
    ShapeMismatchError,
)
from .interfaces import FrameGenerator, References
from .metrics import metrics_report
from .oracle import OracleGenerator
from .pointcloud import PointCloud, unproject_depths, voxel_downsample
from .recon.reconstruct import (
    RELEASE_CONF_QUANTILE,
    RELEASE_TARGET_SIZE,
    Reconstruction,
    reconstruct_with_worldmirror,
)
from .recon.worldmirror import WorldMirrorOutput
from .synthetic import SyntheticScene
from .trajectory import (
    DEFAULT_NUM_FRAMES,
    DEFAULT_NUM_KEYFRAMES,
    Trajectory,
    load_camera_json,
    make_preset,
)

__all__ = [
    "BENCHMARK_TRAJECTORIES",
    "Reconstructor",
    "WorldMirrorReconstructor",
    "OracleReconstructor",
    "TrajectoryScores",
    "EvaluationReport",
    "EvaluationResult",
    "benchmark_presets",
    "load_benchmark_trajectories",
    "evaluate_generation",
    "evaluate_synthetic",
    "LOOP_ALIGNMENTS",
    "REVISIT_ROTATION_DEG",
    "REVISIT_DISTANCE_FRACTION",
    "depth_anchor_alignment",
    "Report",
    "format_score",
    "overall_scores",
    "check_alignment",
    "score_setup",
    "icp_alignment",
]

#: The release's reconstruction-benchmark trajectories (``renders/traj_<name>/camera.json``).
BENCHMARK_TRAJECTORIES: tuple[str, ...] = ("eloop", "up", "left", "right")

#: ``reconstructor(frames [F, H, W, 3], cameras) → Reconstruction`` (cloud in our frame).
Reconstructor = Callable[[torch.Tensor, Cameras], Reconstruction]
ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Reconstructors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldMirrorReconstructor:
    """:func:`~worldstereo_core.recon.reconstruct.reconstruct_with_worldmirror` as a
    :data:`Reconstructor`; priors off by default (the benchmark measures the generator's
    cameras, so the reconstructor must not be told them)."""

    model: Callable[..., WorldMirrorOutput]
    use_priors: bool = False
    target_size: int = RELEASE_TARGET_SIZE
    conf_quantile: float | None = RELEASE_CONF_QUANTILE
    edge_threshold: float | None = 0.35
    chunk_size: int = 8

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> Reconstruction:
        return reconstruct_with_worldmirror(
            self.model,
            frames,
            cameras,
            target_size=self.target_size,
            use_priors=self.use_priors,
            conf_quantile=self.conf_quantile,
            edge_threshold=self.edge_threshold,
            chunk_size=self.chunk_size,
        )


def _perturbation(n: int, deg: float, seed: int) -> torch.Tensor:
    """``[n, 3, 3]`` rotations by ``deg`` degrees about random axes (the first is identity)."""
    g = torch.Generator().manual_seed(int(seed))
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    ang = torch.full((n,), math.radians(deg), dtype=torch.float64)
    ang[0] = 0.0
    Kx = torch.zeros(n, 3, 3, dtype=torch.float64)
    Kx[:, 0, 1], Kx[:, 0, 2], Kx[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    Kx = Kx - Kx.transpose(1, 2)
    s, c = ang.sin()[:, None, None], ang.cos()[:, None, None]
    return torch.eye(3, dtype=torch.float64) + s * Kx + (1 - c) * Kx @ Kx


class OracleReconstructor:
    """A stand-in for WorldMirror on synthetic scenes (a :data:`Reconstructor`).

    It "predicts" the scene's exact depth at the frames' cameras, and cameras expressed in
    another frame ``network_frame`` (network = S(ours)), each camera's rotation turned by
    ``pose_noise_deg`` about a random axis (camera 0 untouched) — the kind of error a real
    reconstructor makes. The prediction then goes through the same
    :func:`~worldstereo_core.recon.reconstruct.reconstruct_with_worldmirror` as WorldMirror
    (priors off, no resize: the frames' size is used as ``target_size`` and must be a
    multiple of 14). :attr:`perturbations` keeps the rotations applied per call.
    """

    def __init__(
        self,
        scene: SyntheticScene,
        network_frame: Similarity | None = None,
        pose_noise_deg: float = 0.0,
        seed: int = 0,
        conf_quantile: float | None = None,
        edge_threshold: float | None = None,
    ) -> None:
        self.scene = scene
        self.frame = network_frame or Similarity(
            0.5, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([1.0, 2.0, -0.5])
        )
        if not (pose_noise_deg >= 0 and math.isfinite(pose_noise_deg)):
            raise InvalidOptionError(f"pose_noise_deg must be a finite angle ≥ 0, got {pose_noise_deg}")
        self.pose_noise_deg = float(pose_noise_deg)
        self.seed = int(seed)
        self.conf_quantile = conf_quantile
        self.edge_threshold = edge_threshold
        self.perturbations: list[torch.Tensor] = []

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> Reconstruction:
        H, W = cameras.height, cameras.width
        if H % 14 or W % 14:
            raise ShapeMismatchError(
                f"OracleReconstructor needs frame sizes that are multiples of 14 (no resize), got {H}×{W}"
            )
        depth = self.scene.render(cameras).depth.double()
        Rn = _perturbation(len(cameras), self.pose_noise_deg, self.seed * 7919 + len(self.perturbations))
        self.perturbations.append(Rn)
        c2w = cameras.c2w.double().cpu()
        g = self.frame
        net = c2w.clone()
        net[:, :3, :3] = g.R @ c2w[:, :3, :3] @ Rn
        net[:, :3, 3] = g.s * c2w[:, :3, 3] @ g.R.T + g.t
        K = cameras.K.double().cpu()

        def model(images, priors, frames_chunk_size=8):
            return WorldMirrorOutput(
                depth=(depth * g.s)[None].float(),
                depth_conf=torch.ones(1, *depth.shape),
                c2w=net[None].float(),
                K=K[None].float(),
            )

        return reconstruct_with_worldmirror(
            model,
            frames,
            cameras,
            target_size=max(H, W),
            use_priors=False,
            conf_quantile=self.conf_quantile,
            edge_threshold=self.edge_threshold,
        )


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def benchmark_presets(
    first: Cameras,
    median_depth: float,
    names: Sequence[str] = BENCHMARK_TRAJECTORIES,
    num_frames: int = DEFAULT_NUM_FRAMES,
    num_keyframes: int = DEFAULT_NUM_KEYFRAMES,
) -> dict[str, Cameras]:
    """The benchmark's trajectories as presets from ``first`` (81 poses → 21 keyframes each)."""
    return {n: make_preset(n, first, median_depth, num_frames).keyframes(num_keyframes) for n in names}


def load_benchmark_trajectories(
    folder: str | os.PathLike,
    names: Sequence[str] = BENCHMARK_TRAJECTORIES,
    first: Cameras | None = None,
    scale: float = 1.0,
) -> dict[str, Cameras]:
    """Read ``folder/renders/traj_<name>/camera.json`` (or ``folder/traj_<name>/…``).

    With ``first`` given, each trajectory is re-anchored on it: pose ``i`` becomes
    ``c2w_first · (c2w_0⁻¹ c2w_i)`` with the relative translation multiplied by ``scale``, and
    K is rescaled from the file's image size to ``first``'s. Without it the file's frame and
    intrinsics are kept (a real benchmark's ground-truth cloud lives in that frame).
    """
    root = Path(folder)
    base = root / "renders" if (root / "renders").is_dir() else root
    out: dict[str, Cameras] = {}
    for name in names:
        path = base / f"traj_{name}" / "camera.json"
        if not path.is_file():
            raise MissingFileError(
                f"benchmark trajectory {name!r} not found: {path} (expected renders/traj_<name>/camera.json)"
            )
        cams = load_camera_json(path).cameras
        if first is not None:
            if len(first) != 1:
                raise InvalidCameraError("first must be a single camera to re-anchor the benchmark trajectories on")
            if not (scale > 0 and math.isfinite(scale)):
                raise InvalidOptionError(f"scale must be a positive number, got {scale}")
            c2w = cams.c2w.double()
            rel = torch.linalg.solve(c2w[:1].expand_as(c2w), c2w)
            rel[:, :3, 3] *= float(scale)
            new_c2w = first.c2w.double()[0] @ rel
            K = as_tensor(cams.resized(first.height, first.width).K)
            cams = Cameras(invert_rigid(new_c2w).to(first.w2c.dtype), K.to(first.w2c.dtype), first.height, first.width)
        out[name] = cams
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrajectoryScores:
    """Scores of one trajectory (``trans_err`` / ``ate`` are None when the cameras do not move)."""

    name: str
    num_frames: int
    num_points: int
    precision: float
    recall: float
    fscore: float
    auc: float
    rot_err_deg: float
    trans_err: float | None
    ate: float | None
    alignment: str


def format_score(x: float | None, width: int) -> str:
    """One right-aligned cell of a report table: 4 decimals, or a dash for a missing value."""
    return f"{'—':>{width}}" if x is None else f"{x:>{width}.4f}"


class Report:
    """What the evaluation reports share: plain-dict and JSON forms (subclasses are dataclasses
    with ``thresholds`` and ``overall``; they add their own nested fields to :meth:`as_dict`)."""

    def as_dict(self) -> dict:
        d = asdict(self)  # type: ignore[call-overload]
        d["thresholds"] = list(self.thresholds)  # type: ignore[attr-defined]
        d["overall"] = dict(self.overall)  # type: ignore[attr-defined]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (plain floats; ``null`` for missing values)."""
        return json.dumps(self.as_dict(), indent=indent)


@dataclass(frozen=True)
class EvaluationReport(Report):
    """The benchmark's numbers for one scene.

    Attributes:
        scene: a label.
        threshold: the F-score distance; ``thresholds``: the AUC distances; ``extent``: the
            ground truth's bounding-box diagonal they were derived from (world units).
        alignment: ``"anchors"`` or ``"icp"``.
        trajectories: per-trajectory scores, in the order evaluated.
        overall: precision / recall / fscore / auc of the union of the aligned clouds, and the
            mean of each camera metric over the trajectories that have it.
        num_gt_points: size of the ground-truth cloud.
    """

    scene: str
    threshold: float
    thresholds: tuple[float, ...]
    extent: float
    alignment: str
    trajectories: tuple[TrajectoryScores, ...]
    overall: Mapping[str, float]
    num_gt_points: int

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["trajectories"] = [asdict(t) for t in self.trajectories]
        return d

    def summary(self) -> str:
        """A short human-readable table (for a node's text output)."""
        lines = [
            f"scene {self.scene}: threshold {self.threshold:.4g} ({self.alignment} alignment), "
            f"{self.num_gt_points} ground-truth points",
            f"{'trajectory':<12}{'P':>8}{'R':>8}{'F':>8}{'AUC':>8}{'RotErr°':>10}{'TransErr':>10}{'ATE':>10}",
        ]

        for t in self.trajectories:
            lines.append(
                f"{t.name:<12}{t.precision:>8.4f}{t.recall:>8.4f}{t.fscore:>8.4f}{t.auc:>8.4f}"
                f"{format_score(t.rot_err_deg, 10)}{format_score(t.trans_err, 10)}{format_score(t.ate, 10)}"
            )
        o = self.overall
        lines.append(
            f"{'overall':<12}{o['precision']:>8.4f}{o['recall']:>8.4f}{o['fscore']:>8.4f}{o['auc']:>8.4f}"
            f"{format_score(o.get('rot_err_deg'), 10)}{format_score(o.get('trans_err'), 10)}{format_score(o.get('ate'), 10)}"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class EvaluationResult:
    """The report plus what it was computed from.

    Attributes:
        report: the numbers.
        clouds: per trajectory, the reconstructed cloud aligned to the ground truth.
        transforms: per trajectory, the similarity from the reconstructor's output frame
            (our frame, via its own anchors) to the ground truth's (identity for ``anchors``).
        frames: per trajectory, the generated keyframes ``[F, H, W, 3]``.
        reconstructions: per trajectory, the reconstructor's output.
    """

    report: EvaluationReport
    clouds: Mapping[str, PointCloud]
    transforms: Mapping[str, Similarity]
    frames: Mapping[str, torch.Tensor] = field(repr=False)
    reconstructions: Mapping[str, Reconstruction] = field(repr=False)


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


def icp_alignment(
    rec: Reconstruction, requested: Cameras, gt: np.ndarray, max_distance: float, iterations: int
) -> Similarity:
    """First-camera alignment + scaled ICP, as a map from ``rec``'s frame to the ground truth's."""
    # Work in the network frame so the first-camera start does not depend on rec.sim.
    to_net = rec.sim.inverse()
    net_c2w = rec.prediction.c2w.double()
    want = requested.c2w.double().cpu()[0]
    R = want[:3, :3] @ net_c2w[0, :3, :3].T
    # scale: GT points inside camera 0's view (median camera z) over predicted depth of frame 0
    w2c0 = requested.w2c.double().cpu()[0]
    K0 = requested.K.double().cpu()[0]
    g = torch.as_tensor(gt, dtype=torch.float64)
    cam = g @ w2c0[:3, :3].T + w2c0[:3, 3]
    z = cam[:, 2]
    front = z > 1e-9
    uv = (cam[front] @ K0.T)[:, :2] / z[front, None]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < requested.width) & (uv[:, 1] >= 0) & (uv[:, 1] < requested.height)
    d0 = rec.prediction.depth[0].double()
    d0 = d0[d0 > 0]
    if int(inside.sum()) >= 3 and d0.numel() > 0:
        s0 = float(z[front][inside].median() / d0.median())
    else:
        s0 = 1.0
    t = want[:3, 3] - s0 * (R @ net_c2w[0, :3, 3])
    init = Similarity(s0, R, t)
    net_pts = as_tensor(to_net.apply(rec.cloud.points.double())).cpu().numpy()
    res = icp_refine(net_pts, gt, init, max_distance=max_distance, with_scale=True, max_iterations=iterations)
    return res.transform.compose(to_net)


def _input_reference(image: torch.Tensor, first: Cameras):
    return References(
        (image[0],),
        first.w2c[:1],
        first.K[:1],
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        ("input",),
    )


def evaluate_generation(
    generator: FrameGenerator,
    reconstructor: Reconstructor,
    image: ArrayLike,
    trajectories: Mapping[str, Cameras | Trajectory],
    gt_cloud: PointCloud | ArrayLike,
    *,
    cache: PointCloud | None = None,
    alignment: str = "anchors",
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    threshold_fraction: float = 0.01,
    icp_distance: float | None = None,
    icp_iterations: int = 50,
    voxel_size: float | None = None,
    render_radius: float | None = None,
    scene: str = "scene",
    progress: ProgressFn | None = None,
    anchor_depth: ArrayLike | None = None,
) -> EvaluationResult:
    """Run the benchmark protocol (module doc) for one scene.

    Args:
        generator: ``generator(image, cameras, render, mask, references) → [F, H, W, 3]``.
        reconstructor: ``reconstructor(frames, cameras) → Reconstruction``.
        image: ``[1, H, W, 3]`` (or ``[H, W, 3]``) input view in [0, 1]; its camera is frame 0
            of every trajectory.
        trajectories: name → keyframe cameras (``H × W``; a :class:`Trajectory` is used whole).
        gt_cloud: ground-truth surface points in the trajectories' world frame.
        cache: optional cloud of the input view, rendered along each trajectory as the GGM
            condition (else the render is empty: black, mask all holes).
        alignment: ``"anchors"``, ``"icp"`` or ``"depth_anchor"`` (Umeyama on the input view's
            depth: ``anchor_depth``, see :func:`depth_anchor_alignment`).
        threshold / thresholds: F-score and AUC distances (defaults: ``threshold_fraction`` and
            0.1 %…2 % of the ground truth's bounding-box diagonal).
        icp_distance: ICP correspondence gate (default 5 × ``threshold``).
        voxel_size: voxel-downsample each aligned cloud before scoring (None: keep all points).
        render_radius: splat radius for the GGM render (default: the release's, scaled so it
            covers the same pixels at this height as at 480 rows).
        progress: ``progress(step, total)`` after each trajectory; may raise to interrupt.
    """
    check_alignment(alignment)
    if alignment == "depth_anchor" and anchor_depth is None:
        raise MissingInputError("alignment='depth_anchor' needs anchor_depth (the input view's true depth)")
    if not trajectories:
        raise InvalidInputError("no trajectories to evaluate; pass e.g. benchmark_presets(first, median_depth)")
    img = as_tensor(image).float()
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[0] != 1 or img.shape[-1] != 3:
        raise InvalidImageError(f"image must be one IMAGE [1, H, W, 3], got {tuple(as_tensor(image).shape)}")
    H, W = int(img.shape[1]), int(img.shape[2])
    gt, extent, thr, ths = score_setup(gt_cloud, threshold, thresholds, threshold_fraction)
    gate = float(icp_distance) if icp_distance is not None else 5.0 * thr

    cams_by_name: dict[str, Cameras] = {}
    for name, tr in trajectories.items():
        cams = tr.cameras if isinstance(tr, Trajectory) else tr
        if not isinstance(cams, Cameras):
            raise InvalidInputError(f"trajectory {name!r} must be Cameras or a Trajectory, got {type(tr).__name__}")
        if (cams.height, cams.width) != (H, W):
            raise InvalidCameraError(
                f"trajectory {name!r} is for {cams.height}×{cams.width} images but the input image is {H}×{W}; "
                "use cameras.resized(H, W)"
            )
        if len(cams) < 2:
            raise InvalidTrajectoryError(
                f"trajectory {name!r} has {len(cams)} camera; the benchmark needs a moving camera"
            )
        cams_by_name[str(name)] = cams

    radius = render_radius
    if cache is not None and radius is None:
        from .render import RELEASE_RADIUS

        radius = RELEASE_RADIUS * max(1.0, 480.0 / min(H, W))

    scores: list[TrajectoryScores] = []
    clouds: dict[str, PointCloud] = {}
    transforms: dict[str, Similarity] = {}
    all_frames: dict[str, torch.Tensor] = {}
    recs: dict[str, Reconstruction] = {}
    total = len(cams_by_name)
    for i, (name, cams) in enumerate(cams_by_name.items()):
        F = len(cams)
        if cache is not None:
            from .render import render_point_cloud

            r = render_point_cloud(cache, cams, radius=radius, first_frame=img[0])
            render, mask = r.rgb, r.mask
        else:
            render, mask = torch.zeros(F, H, W, 3), torch.ones(F, H, W)
            render[0], mask[0] = img[0], 0.0
        frames = torch.as_tensor(generator(img, cams, render, mask, _input_reference(img, cams[:1]))).float()
        if tuple(frames.shape) != (F, H, W, 3):
            raise InvalidImageError(
                f"the generator returned {tuple(frames.shape)} for {name!r}; expected {(F, H, W, 3)}"
            )
        rec = reconstructor(frames, cams)
        if not isinstance(rec, Reconstruction):
            raise InvalidInputError(f"the reconstructor must return a Reconstruction, got {type(rec).__name__}")
        if len(rec.cameras) != F:
            raise ShapeMismatchError(
                f"the reconstructor returned {len(rec.cameras)} cameras for {F} frames of {name!r}"
            )
        if alignment == "icp":
            T = icp_alignment(rec, cams, gt, gate, icp_iterations)
        elif alignment == "depth_anchor":  # frame 0 of every trajectory is the input view
            T = depth_anchor_alignment(rec, anchor_depth, cams[:1])
        else:
            T = Similarity.identity()
        pts = as_tensor(T.apply(rec.cloud.points.double())).float()
        cloud = PointCloud(pts, rec.cloud.colors)
        if voxel_size is not None:
            cloud = voxel_downsample(cloud, voxel_size)
        c2w = rec.cameras.c2w.double()
        m = metrics_report(cloud.points, gt, thr, ths, c2w, cams.c2w.double())
        scores.append(
            TrajectoryScores(
                name=name,
                num_frames=F,
                num_points=len(cloud),
                precision=m["precision"],
                recall=m["recall"],
                fscore=m["fscore"],
                auc=m["auc"],
                rot_err_deg=m["rot_err_deg"],
                trans_err=m.get("trans_err"),
                ate=m.get("ate"),
                alignment=rec.alignment if alignment == "anchors" else alignment,
            )
        )
        clouds[name], transforms[name], all_frames[name], recs[name] = cloud, T, frames, rec
        if progress is not None:
            progress(i + 1, total)

    union = PointCloud.cat(list(clouds.values()))
    overall = overall_scores(union, gt, thr, ths, [asdict(s) for s in scores], ("rot_err_deg", "trans_err", "ate"))
    report = EvaluationReport(
        scene=scene,
        threshold=thr,
        thresholds=ths,
        extent=extent,
        alignment=alignment,
        trajectories=tuple(scores),
        overall=overall,
        num_gt_points=int(gt.shape[0]),
    )
    return EvaluationResult(report, clouds, transforms, all_frames, recs)


def evaluate_synthetic(
    scene: SyntheticScene,
    *,
    height: int = 224,
    width: int = 392,
    names: Sequence[str] = BENCHMARK_TRAJECTORIES,
    generator: FrameGenerator | None = None,
    reconstructor: Reconstructor | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
    num_keyframes: int = DEFAULT_NUM_KEYFRAMES,
    gt_voxel_size: float | None = None,
    **kwargs,
) -> EvaluationResult:
    """The benchmark on a synthetic scene: the scene's default view as input, the benchmark
    presets scaled by its median depth, the exact input cloud as the GGM cache, the surface
    points seen by the input or any requested camera as ground truth. ``generator`` defaults
    to the oracle (exact renders), ``reconstructor`` to :class:`OracleReconstructor` (exact
    depth; sizes must then be multiples of 14). Other keyword arguments go to
    :func:`evaluate_generation`."""
    view = scene.default_view(height, width)
    trajs = benchmark_presets(view.cameras, view.median_depth, names, num_frames, num_keyframes)
    cache = unproject_depths(view.depth, view.cameras.K, view.cameras.c2w, view.image, view.valid)
    all_cams = Cameras.cat([view.cameras] + list(trajs.values()))
    gt = scene.surface_points(all_cams, voxel_size=gt_voxel_size)
    gen = generator if generator is not None else OracleGenerator(scene)
    rec = reconstructor if reconstructor is not None else OracleReconstructor(scene)
    kwargs.setdefault("scene", scene.name)
    kwargs.setdefault("anchor_depth", view.depth[0])
    return evaluate_generation(gen, rec, view.image, trajs, gt, cache=cache, **kwargs)


# ---------------------------------------------------------------------------------------------
# §4.3 as the paper runs it: the full model, memory carried across trajectories
# ---------------------------------------------------------------------------------------------

#: How a reconstruction is put into the ground truth's frame for scoring.
#: ``"depth_anchor"`` is the paper's choice for MipNeRF360-style data (Umeyama between the
#: reconstructed and the true points of the initial frame); ``"anchors"`` keeps the
#: reconstructor's own camera-centre Umeyama; ``"icp"`` refines a first-camera start by ICP.
LOOP_ALIGNMENTS: tuple[str, ...] = ("depth_anchor", "anchors", "icp")


def overall_scores(
    cloud: PointCloud,
    gt: np.ndarray,
    threshold: float,
    thresholds: Sequence[float],
    per_trajectory: Sequence[Mapping[str, object]],
    camera_keys: Sequence[str],
) -> dict[str, float]:
    """A report's ``overall``: precision / recall / fscore / auc of ``cloud`` against ``gt``, and
    per camera metric in ``camera_keys`` its mean over the trajectories that have it (not None)."""
    om = metrics_report(cloud.points, gt, threshold, thresholds)
    overall: dict[str, float] = {k: om[k] for k in ("precision", "recall", "fscore", "auc")}
    for key in camera_keys:
        vals = [row[key] for row in per_trajectory if row.get(key) is not None]
        if vals:
            overall[key] = float(np.mean(vals))
    return overall


def check_alignment(alignment: str) -> None:
    """Raise :class:`InvalidOptionError` unless ``alignment`` is one of :data:`LOOP_ALIGNMENTS`."""
    if alignment not in LOOP_ALIGNMENTS:
        raise InvalidOptionError(f"unknown alignment {alignment!r}; use one of {', '.join(LOOP_ALIGNMENTS)}")


#: Revisit tolerances of the memory benchmark: a generated view revisits an earlier
#: generation when their rotations differ by less than this many degrees and their centres by
#: less than :data:`REVISIT_DISTANCE_FRACTION` × the input view's median depth. Our choice (the
#: appendix's exact pairing was not reachable): tight enough that only the same pose matches,
#: loose enough for float round-off of re-planned trajectories.
REVISIT_ROTATION_DEG: float = 0.5
REVISIT_DISTANCE_FRACTION: float = 0.005


def depth_anchor_alignment(
    rec: Reconstruction,
    anchor_depth: ArrayLike,
    anchor_camera: Cameras,
    frame: int = 0,
    max_pixels: int = 50_000,
) -> Similarity:
    """The similarity putting ``rec`` on the ground truth through the initial frame's depth.

    Every pixel of ``frame`` with a kept reconstructed depth and a positive true depth gives
    one correspondence: the reconstructed point (``rec.depth`` unprojected with
    ``rec.cameras``) and the true point (``anchor_depth`` unprojected with ``anchor_camera``);
    Umeyama's least-squares similarity maps the first onto the second (the paper's anchor
    alignment for MipNeRF360-style scenes, whose only metric depth is the initial frame's).
    At most ``max_pixels`` evenly strided pixels are used.

    Args:
        rec: the reconstruction (its frame ``frame`` must be the anchor view).
        anchor_depth: ``[H, W]`` (or ``[1, H, W]``) true z-depth of that view, 0 = unknown.
        anchor_camera: its true camera (one pose, ``H × W``).

    Returns:
        :class:`Similarity` from ``rec``'s frame to the ground truth's.
    """
    d_gt = as_tensor(anchor_depth).detach().double().cpu()
    d_gt = d_gt[0] if d_gt.ndim == 3 and d_gt.shape[0] == 1 else d_gt
    if not isinstance(anchor_camera, Cameras) or len(anchor_camera) != 1:
        raise InvalidCameraError("anchor_camera must be one camera (the initial frame's)")
    if not 0 <= frame < len(rec.cameras):
        raise InvalidOptionError(f"anchor frame {frame} is not one of the reconstruction's {len(rec.cameras)} frames")
    d_pred = rec.depth[frame].detach().double().cpu()
    if tuple(d_gt.shape) != tuple(d_pred.shape) or (anchor_camera.height, anchor_camera.width) != tuple(d_pred.shape):
        raise ShapeMismatchError(
            f"anchor depth {tuple(d_gt.shape)}, anchor camera {(anchor_camera.height, anchor_camera.width)} and "
            f"reconstructed frames {tuple(d_pred.shape)} must have one size; resize the depth to the frames"
        )
    keep = rec.mask[frame].cpu().bool() & (d_pred > 0) & torch.isfinite(d_gt) & (d_gt > 0)
    n = int(keep.sum())
    if n < 3:
        raise AlignmentFailedError(
            f"only {n} pixels of the anchor frame have both a reconstructed and a true depth; the depth-anchor "
            "alignment needs at least 3 (check the anchor depth, or use alignment='anchors')"
        )
    idx = keep.flatten().nonzero()[:, 0]
    idx = idx[:: max(1, -(-idx.numel() // int(max_pixels)))]
    sel = torch.zeros(keep.numel(), dtype=torch.bool)
    sel[idx] = True
    sel = sel.reshape(keep.shape)[None]
    cam = rec.cameras[frame : frame + 1]
    pred = unproject_depths(d_pred[None], cam.K.double().cpu(), cam.c2w.double().cpu(), mask=sel).points.double()
    true = unproject_depths(
        d_gt[None], anchor_camera.K.double().cpu(), anchor_camera.c2w.double().cpu(), mask=sel
    ).points.double()
    s, R, t = umeyama(pred, true)
    return Similarity(s, R, t)


def score_setup(
    gt_pts: PointCloud | ArrayLike,
    threshold: float | None,
    thresholds: Sequence[float] | None,
    threshold_fraction: float,
) -> tuple[np.ndarray, float, float, tuple[float, ...]]:
    """``(gt [N, 3] float64, extent, threshold, AUC thresholds)`` of a ground-truth cloud (checked)."""
    gt = as_tensor(gt_pts.points if isinstance(gt_pts, PointCloud) else gt_pts).detach().double().cpu().numpy()
    if gt.ndim != 2 or gt.shape[-1] != 3 or gt.shape[0] < 3 or not np.isfinite(gt).all():
        raise InvalidPointCloudError(f"gt_cloud must hold ≥ 3 finite points [N, 3], got shape {gt.shape}")
    extent = float(np.linalg.norm(gt.max(0) - gt.min(0)))
    if not extent > 0:
        raise InvalidPointCloudError("gt_cloud has zero extent (all points coincide)")
    thr = float(threshold) if threshold is not None else threshold_fraction * extent
    if not (thr > 0 and math.isfinite(thr)):
        raise InvalidOptionError(f"threshold must be a positive distance, got {threshold}")
    ths = tuple(float(t) for t in (thresholds if thresholds is not None else np.linspace(0.001, 0.02, 20) * extent))
    return gt, extent, thr, ths
