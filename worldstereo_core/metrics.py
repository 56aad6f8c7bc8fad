"""Evaluation metrics: camera accuracy of generated videos and point-cloud quality.

Camera metrics (CameraCtrl / CamI2V convention, used by the WorldStereo paper) compare the
cameras recovered from a generated video with the cameras it was asked to follow:

* ``RotErr = Σ_i arccos((tr(R_gen,i R_gt,iᵀ) − 1) / 2)`` — reported in **degrees** here
  (``degrees=False`` gives radians); rotations are taken relative to each trajectory's first
  camera, so a global rotation of either trajectory does not count.
* ``TransErr = Σ_i ‖T_gt,i − T_gen,i‖`` with ``T`` the camera centres expressed in the first
  camera's frame and each trajectory divided by the distance of its farthest centre from the
  first one (recovered cameras have an arbitrary scale).
* ``ATE``: RMSE of the camera centres after a Sim(3) (Umeyama) alignment of the predicted
  centres onto the ground truth.

Point-cloud metrics (Tanks-and-Temples style): precision = fraction of predicted points
within ``threshold`` of the ground truth, recall = fraction of ground-truth points within
``threshold`` of the prediction (strict ``<``), F = harmonic mean.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .align import _umeyama_batched
from .cameras import ArrayLike, as_tensor
from .errors import AlignmentFailedError, InvalidCameraError, InvalidPointCloudError
from .pointcloud import PointCloud

__all__ = [
    "rotation_angles",
    "rot_err",
    "trans_err",
    "ate",
    "nn_distances",
    "pointcloud_prf",
    "pointcloud_auc",
    "metrics_report",
]


def _poses(x: ArrayLike, name: str) -> torch.Tensor:
    p = as_tensor(x).detach().to(dtype=torch.float64).cpu()
    if p.ndim != 3 or p.shape[-2:] != (4, 4):
        raise InvalidCameraError(f"{name} must have shape [F, 4, 4], got {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise InvalidCameraError(f"{name} holds 0 cameras")
    if not torch.isfinite(p).all():
        raise InvalidCameraError(f"{name} contains NaN or inf values")
    return p


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _poses(pred, "pred_c2w"), _poses(gt, "gt_c2w")
    if a.shape != b.shape:
        raise InvalidCameraError(f"pred has {a.shape[0]} cameras but gt has {b.shape[0]}; give one per frame")
    return a, b


def _relative(c2w: torch.Tensor) -> torch.Tensor:
    """Poses relative to the first camera: ``c2w_0⁻¹ · c2w_i`` ``[F, 4, 4]``."""
    return torch.linalg.solve(c2w[:1].expand_as(c2w), c2w)


def rotation_angles(R_a: ArrayLike, R_b: ArrayLike, degrees: bool = True) -> torch.Tensor:
    """Per-pair rotation angle ``arccos((tr(R_a R_bᵀ) − 1) / 2)`` of ``[F, 3, 3]`` batches ``[F]``."""
    a = as_tensor(R_a).to(torch.float64)
    b = as_tensor(R_b).to(device=a.device, dtype=torch.float64)
    M = a @ b.transpose(-1, -2)
    # Same angle as arccos((tr M − 1)/2), but atan2 of (sin, cos) stays accurate near 0 and π
    # where arccos loses half the digits.
    cos = (M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([M[:, 2, 1] - M[:, 1, 2], M[:, 0, 2] - M[:, 2, 0], M[:, 1, 0] - M[:, 0, 1]], -1)
    ang = torch.atan2(skew.norm(dim=-1) / 2, cos)
    return torch.rad2deg(ang) if degrees else ang


def rot_err(pred_c2w: ArrayLike, gt_c2w: ArrayLike, degrees: bool = True) -> float:
    """RotErr: sum over frames of the angle between relative rotations (degrees by default).

    Args:
        pred_c2w, gt_c2w: ``[F, 4, 4]`` camera-to-world poses (w2c works too: the angle
            between two rotations is the same for their inverses).
    """
    a, b = _pair(pred_c2w, gt_c2w)
    ra, rb = _relative(a)[:, :3, :3], _relative(b)[:, :3, :3]
    return float(rotation_angles(ra, rb, degrees).sum())


def _normalised_centres(c2w: torch.Tensor, name: str) -> torch.Tensor:
    T = _relative(c2w)[:, :3, 3]
    far = float(T.norm(dim=-1).max())
    if far <= 1e-12:
        raise InvalidCameraError(
            f"{name}: every camera sits at the first camera's position; TransErr needs a trajectory that moves"
        )
    return T / far


def trans_err(pred_c2w: ArrayLike, gt_c2w: ArrayLike) -> float:
    """TransErr: ``Σ_i ‖T_gt,i − T_gen,i‖`` of first-camera-relative centres, each trajectory
    scaled so its farthest centre is at distance 1 from the first camera."""
    a, b = _pair(pred_c2w, gt_c2w)
    return float((_normalised_centres(b, "gt_c2w") - _normalised_centres(a, "pred_c2w")).norm(dim=-1).sum())


def ate(pred_c2w: ArrayLike, gt_c2w: ArrayLike, with_scale: bool = True) -> float:
    """Absolute trajectory error: RMSE of camera centres after Sim(3) alignment of pred onto gt.

    Straight-line trajectories are fine (the rotation about the line does not change the
    residual). ``with_scale=False`` gives the SE(3) variant.
    """
    a, b = _pair(pred_c2w, gt_c2w)
    pa, pb = a[:, :3, 3], b[:, :3, 3]
    if a.shape[0] < 2:
        return 0.0
    if float((pa - pa.mean(0)).norm(dim=-1).max()) <= 1e-12:
        raise AlignmentFailedError("pred_c2w: all camera centres coincide; ATE needs cameras that move")
    s, R, t, _, _ = _umeyama_batched(pa[None], pb[None], with_scale)
    aligned = s[0] * pa @ R[0].T + t[0]
    return float(((aligned - pb) ** 2).sum(-1).mean().sqrt())


def _cloud(x: PointCloud | ArrayLike, name: str) -> np.ndarray:
    pts = x.points if isinstance(x, PointCloud) else x
    p = as_tensor(pts).detach().to(dtype=torch.float64).cpu().numpy()
    if p.ndim != 2 or p.shape[-1] != 3:
        raise InvalidPointCloudError(f"{name} must be a PointCloud or [N, 3] points, got shape {p.shape}")
    if p.shape[0] == 0:
        raise InvalidPointCloudError(f"{name} is empty (0 points); nothing to evaluate")
    if not np.isfinite(p).all():
        raise InvalidPointCloudError(f"{name} has NaN/inf coordinates; drop them before evaluating")
    return p


def nn_distances(query: PointCloud | ArrayLike, reference: PointCloud | ArrayLike, chunk: int = 1 << 18) -> np.ndarray:
    """``[N]`` distance from each query point to its nearest reference point (KD-tree, chunked)."""
    from scipy.spatial import cKDTree

    q, r = _cloud(query, "query"), _cloud(reference, "reference")
    tree = cKDTree(r)
    out = np.empty(q.shape[0], dtype=np.float64)
    for i in range(0, q.shape[0], chunk):
        out[i : i + chunk] = tree.query(q[i : i + chunk], k=1)[0]
    return out


def _prf(d_pred: np.ndarray, d_gt: np.ndarray, threshold: float) -> tuple[float, float, float]:
    p = float((d_pred < threshold).mean())
    r = float((d_gt < threshold).mean())
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def pointcloud_prf(
    pred: PointCloud | ArrayLike, gt: PointCloud | ArrayLike, threshold: float
) -> tuple[float, float, float]:
    """Precision, recall and F-score of ``pred [N, 3]`` against ``gt [M, 3]`` at ``threshold``."""
    if not (threshold > 0 and math.isfinite(threshold)):
        raise InvalidPointCloudError(f"threshold must be a positive distance, got {threshold}")
    return _prf(nn_distances(pred, gt), nn_distances(gt, pred), float(threshold))


def pointcloud_auc(
    pred: PointCloud | ArrayLike, gt: PointCloud | ArrayLike, thresholds: Sequence[float] | ArrayLike
) -> float:
    """Normalised area under the F-score-vs-threshold curve, in [0, 1].

    Trapezoidal integral of F over the given increasing ``thresholds`` divided by their range
    ``max − min`` (a perfect reconstruction scores 1). With a single threshold it is the
    F-score there.
    """
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.detach().cpu().numpy()
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if th.size == 0 or not np.isfinite(th).all() or (th <= 0).any():
        raise InvalidPointCloudError("thresholds must be one or more positive finite distances")
    if (np.diff(th) <= 0).any():
        raise InvalidPointCloudError("thresholds must be strictly increasing")
    d_pred, d_gt = nn_distances(pred, gt), nn_distances(gt, pred)
    f = np.array([_prf(d_pred, d_gt, t)[2] for t in th])
    if th.size == 1:
        return float(f[0])
    area = float(np.sum((f[1:] + f[:-1]) * np.diff(th)) / 2)
    return area / float(th[-1] - th[0])


def metrics_report(
    pred_cloud: PointCloud | ArrayLike | None = None,
    gt_cloud: PointCloud | ArrayLike | None = None,
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    pred_c2w: ArrayLike | None = None,
    gt_c2w: ArrayLike | None = None,
) -> dict:
    """Every metric the given inputs allow, as a JSON-ready dict of floats.

    Clouds give ``precision``, ``recall``, ``fscore`` (at ``threshold``; default 1 % of the
    ground truth's bounding-box diagonal, recorded as ``threshold``) and ``auc`` (over
    ``thresholds``; default 20 steps from 0.1 % to 2 % of that diagonal). Cameras give
    ``rot_err_deg``, ``trans_err``, ``ate`` (``trans_err`` is omitted for static cameras).
    """
    out: dict = {}
    if (pred_cloud is None) != (gt_cloud is None):
        raise InvalidPointCloudError("give both pred_cloud and gt_cloud (or neither)")
    if pred_cloud is not None:
        g = _cloud(gt_cloud, "gt_cloud")
        diag = float(np.linalg.norm(g.max(0) - g.min(0)))
        if threshold is None:
            threshold = 0.01 * diag
        if thresholds is None:
            thresholds = list(np.linspace(0.001, 0.02, 20) * diag)
        d_pred, d_gt = nn_distances(pred_cloud, g), nn_distances(g, pred_cloud)
        p, r, f = _prf(d_pred, d_gt, float(threshold))
        out.update(precision=p, recall=r, fscore=f, threshold=float(threshold), extent=diag)
        out["auc"] = pointcloud_auc(pred_cloud, g, thresholds)
        out["num_pred_points"] = int(d_pred.shape[0])
        out["num_gt_points"] = int(d_gt.shape[0])
    if (pred_c2w is None) != (gt_c2w is None):
        raise InvalidCameraError("give both pred_c2w and gt_c2w (or neither)")
    if pred_c2w is not None:
        out["rot_err_deg"] = rot_err(pred_c2w, gt_c2w, degrees=True)
        try:
            out["trans_err"] = trans_err(pred_c2w, gt_c2w)
        except InvalidCameraError:
            pass
        try:
            out["ate"] = ate(pred_c2w, gt_c2w)
        except AlignmentFailedError:
            pass
    return out
