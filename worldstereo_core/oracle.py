"""The oracle: a synthetic scene standing in for the video model and the depth model, and the
score of a merged cloud against the scene's true surfaces.

:class:`OracleGenerator` renders the :class:`~worldstereo_core.synthetic.SyntheticScene`
exactly at the requested keyframes (a :class:`~worldstereo_core.interfaces.FrameGenerator`
that ignores its conditions); :class:`OracleDepth` gives the exact z-depth there, optionally
corrupted per frame (:class:`DepthCorruption`), as a
:class:`~worldstereo_core.interfaces.DepthEstimator`. :func:`score_cloud` measures precision /
recall / F-score of a cloud against the surface points the run's cameras saw.
:func:`worldstereo_core.pipeline.run_oracle_loop` puts the three around the scene loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cameras import Cameras
from .errors import InvalidTrajectoryError
from .metrics import pointcloud_prf
from .pointcloud import PointCloud
from .synthetic import SyntheticScene, SyntheticView, corrupt_depth

__all__ = [
    "OracleGenerator",
    "OracleDepth",
    "DepthCorruption",
    "LoopScores",
    "SyntheticScene",
    "SyntheticView",
    "oracle_models",
    "score_cloud",
]


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

    def __call__(self, image, cameras, render, mask, references, prompt=None) -> torch.Tensor:
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


def oracle_models(
    scene: SyntheticScene, corruption: DepthCorruption | None = None, seed: int = 0
) -> tuple[OracleGenerator, OracleDepth]:
    """The generator and depth estimator of one oracle run, sharing one ray cast per clip
    (the loop asks for a clip's frames, then for their depth at the same cameras)."""
    if not isinstance(scene, SyntheticScene):
        raise InvalidTrajectoryError(f"the oracle needs a SyntheticScene, got {type(scene).__name__}")
    shared = _LastRender(scene)
    return OracleGenerator(scene, renderer=shared), OracleDepth(scene, corruption, seed, renderer=shared)


def score_cloud(
    scene: SyntheticScene, cloud: PointCloud, cameras: Cameras, threshold_fraction: float = 0.01
) -> tuple[PointCloud, LoopScores]:
    """Score ``cloud`` against the scene's surface points seen by at least one of ``cameras``.

    Returns ``(ground_truth, scores)``; precision / recall / F-score are measured at
    ``threshold_fraction × scene.extent`` (the scene's bounding-box diagonal).
    """
    gt = scene.surface_points(cameras)
    threshold = threshold_fraction * scene.extent
    p, r, f = pointcloud_prf(cloud.points, gt.points, threshold)
    return gt, LoopScores(p, r, f, threshold, scene.extent, len(cloud), len(gt))
