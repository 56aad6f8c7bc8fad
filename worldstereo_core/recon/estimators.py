"""Depth estimators for the scene loop (:class:`~worldstereo_core.interfaces.DepthEstimator`).

``estimator(frames [F, H, W, 3], cameras) → (depth [F, H, W], valid [F, H, W] bool)`` gives
the z-depth of generated frames at their known cameras; the loop then aligns each frame to
the cache, so a per-frame scale/shift error is tolerated.

* :class:`MoGeDepthEstimator` — MoGe-2 per frame, told each frame's horizontal field of view
  from the known ``K`` (so only MoGe's shift is recovered and the depth is consistent with
  the pinhole the loop lifts it with).
* :class:`WorldMirrorDepthEstimator` — WorldMirror on the whole clip with the known cameras
  as priors (:func:`~worldstereo_core.recon.reconstruct.reconstruct_with_worldmirror`,
  ``camera_source="known"``): its depth is brought into our units by the similarity between
  predicted and known cameras; valid = confidence and edge masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cameras import ArrayLike, Cameras, as_tensor
from ..errors import InvalidCameraError, InvalidImageError
from ..pointcloud import RELEASE_EDGE_THRESHOLD
from .moge import MoGeModel, predict_depth
from .reconstruct import RELEASE_CONF_QUANTILE, RELEASE_TARGET_SIZE, Reconstruction, reconstruct_with_worldmirror

__all__ = ["MoGeDepthEstimator", "WorldMirrorDepthEstimator", "fov_x_degrees"]

ProgressFn = Callable[[int, int], None]


def _check(frames: ArrayLike, cameras: Cameras) -> torch.Tensor:
    x = as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise InvalidImageError(f"frames must be an IMAGE batch [F, H, W, 3] with F ≥ 1, got {tuple(x.shape)}")
    if not isinstance(cameras, Cameras):
        raise InvalidCameraError(f"cameras must be a Cameras batch, got {type(cameras).__name__}")
    if len(cameras) != x.shape[0]:
        raise InvalidCameraError(
            f"got {x.shape[0]} frames but {len(cameras)} cameras; give exactly one camera per frame"
        )
    if (cameras.height, cameras.width) != tuple(x.shape[1:3]):
        raise InvalidCameraError(
            f"cameras are for {cameras.height}×{cameras.width} images but the frames are "
            f"{x.shape[1]}×{x.shape[2]}; use cameras.resized(H, W) so K is in pixels of the frames"
        )
    return x


def fov_x_degrees(cameras: Cameras) -> torch.Tensor:
    """``[F]`` horizontal field of view in degrees, ``2·atan(W / 2fx)`` (principal point ignored)."""
    fx = cameras.K[:, 0, 0].detach().double().cpu()
    return torch.rad2deg(2 * torch.atan(cameras.width / (2 * fx)))


class MoGeDepthEstimator:
    """MoGe-2 depth of each frame at its known field of view.

    Args:
        model: a loaded :class:`~worldstereo_core.recon.moge.MoGeModel`.
        resolution_level: MoGe's token budget 0..9 (9 = upstream default).
        batch_size: frames per network call.
        use_known_fov: pass each camera's horizontal FoV (else MoGe recovers its own focal,
            which the loop's lifting with the known K would then contradict).
        progress: ``progress(done, F)`` after each batch; may raise to interrupt.
    """

    def __init__(
        self,
        model: MoGeModel,
        resolution_level: int = 9,
        batch_size: int = 4,
        use_known_fov: bool = True,
        progress: ProgressFn | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise InvalidImageError(f"batch_size must be ≥ 1, got {batch_size}")
        self.model = model
        self.resolution_level = int(resolution_level)
        self.batch_size = int(batch_size)
        self.use_known_fov = bool(use_known_fov)
        self.progress = progress

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        x = _check(frames, cameras)
        n = x.shape[0]
        fov = fov_x_degrees(cameras) if self.use_known_fov else None
        depth, valid = [], []
        for s in range(0, n, self.batch_size):
            e = min(n, s + self.batch_size)
            pred = predict_depth(
                self.model, x[s:e], fov_x=None if fov is None else fov[s:e], resolution_level=self.resolution_level
            )
            depth.append(torch.as_tensor(pred.depth).float().cpu().reshape(e - s, *x.shape[1:3]))
            valid.append(torch.as_tensor(pred.mask).bool().cpu().reshape(e - s, *x.shape[1:3]))
            if self.progress is not None:
                self.progress(e, n)
        d, v = torch.cat(depth), torch.cat(valid)
        v = v & torch.isfinite(d) & (d > 0)
        return torch.where(v, d, torch.zeros_like(d)), v


class WorldMirrorDepthEstimator:
    """WorldMirror depth of a clip at its known cameras, in our units.

    Args:
        model: a loaded WorldMirror (:func:`~worldstereo_core.recon.worldmirror.load_worldmirror`).
        use_priors: give the known cameras (c2w + K) to the network, as WorldStereo does.
        target_size, conf_quantile, edge_threshold, chunk_size: as in
            :func:`~worldstereo_core.recon.reconstruct.reconstruct_with_worldmirror`.
        progress: passed on to it (4 stages per call).

    :attr:`last` keeps the latest :class:`~worldstereo_core.recon.reconstruct.Reconstruction`.
    """

    def __init__(
        self,
        model,
        use_priors: bool = True,
        target_size: int = RELEASE_TARGET_SIZE,
        conf_quantile: float | None = RELEASE_CONF_QUANTILE,
        edge_threshold: float | None = RELEASE_EDGE_THRESHOLD,
        chunk_size: int = 8,
        progress: ProgressFn | None = None,
    ) -> None:
        self.model = model
        self.use_priors = bool(use_priors)
        self.target_size = int(target_size)
        self.conf_quantile = conf_quantile
        self.edge_threshold = edge_threshold
        self.chunk_size = int(chunk_size)
        self.progress = progress
        self.last: Reconstruction | None = None

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        x = _check(frames, cameras)
        rec = reconstruct_with_worldmirror(
            self.model,
            x,
            cameras,
            target_size=self.target_size,
            use_priors=self.use_priors,
            conf_quantile=self.conf_quantile,
            edge_threshold=self.edge_threshold,
            camera_source="known",
            chunk_size=self.chunk_size,
            progress=self.progress,
        )
        self.last = rec
        v = rec.mask.bool().cpu() & (rec.depth > 0)
        return torch.where(v, rec.depth, torch.zeros_like(rec.depth)).float().cpu(), v
