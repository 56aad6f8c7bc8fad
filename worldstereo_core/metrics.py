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

Relative-pose accuracy (JOG3R's camera metrics, which follow PoseDiffusion / DUSt3R / VGGT):
over every pair ``i < j`` of a trajectory, the relative rotation error is the angle between
the predicted and true relative rotations and the relative translation error the angle between
the predicted and true relative translation *directions* (scale-free; sign ambiguity folded as
upstream's ``min(θ, 180° − θ)``). ``RRA@τ`` / ``RTA@τ`` are the fractions of pairs under
``τ`` degrees; ``mAA(30)`` is the mean over ``τ = 1 … 30`` of the fraction of pairs whose
*larger* error is under ``τ`` (upstream's 1°-binned cumulative histogram).

Point-cloud metrics (Tanks-and-Temples style): precision = fraction of predicted points
within ``threshold`` of the ground truth, recall = fraction of ground-truth points within
``threshold`` of the prediction (strict ``<``), F = harmonic mean.

Image metrics (the memory benchmark: revisited views against their earlier generations):
PSNR and SSIM through kornia (SSIM: 11-pixel Gaussian window, σ = 1.5, ``C1 = (0.01 L)²``,
``C2 = (0.03 L)²`` — Wang et al. 2004, the settings every LPIPS/SSIM benchmark uses); LPIPS is
a plug-in (:data:`ImageDistance`) because its backbone weights ship only as pickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .align import _umeyama_batched
from .cameras import ArrayLike, as_tensor, validate_pose_stack
from .errors import (
    AlignmentFailedError,
    InvalidCameraError,
    InvalidImageError,
    InvalidPointCloudError,
    ShapeMismatchError,
)
from .pointcloud import PointCloud

__all__ = [
    "LPIPS_UNAVAILABLE",
    "MAA_MAX_THRESHOLD_DEG",
    "RRA_RTA_THRESHOLDS_DEG",
    "ImageDistance",
    "ate",
    "image_scores",
    "metrics_report",
    "nn_distances",
    "pointcloud_auc",
    "pointcloud_prf",
    "pose_accuracy",
    "psnr",
    "relative_pose_errors",
    "rot_err",
    "rotation_angles",
    "ssim",
    "trans_err",
]

#: The thresholds (degrees) RRA and RTA are reported at (JOG3R reports RRA / RTA at fixed
#: angles and mAA up to 30°; these are the issue's choice: 5, 10, 15 and 30°).
RRA_RTA_THRESHOLDS_DEG: tuple[float, ...] = (5.0, 10.0, 15.0, 30.0)
#: mAA(30): the accuracy curve is averaged over integer thresholds 1 … 30 degrees (PoseDiffusion's
#: ``calculate_auc_np(max_threshold=30)``, which DUSt3R, VGGT and JOG3R report).
MAA_MAX_THRESHOLD_DEG: int = 30
#: ``distance(a [N, H, W, 3], b [N, H, W, 3]) → [N]`` in [0, 1] images, e.g. LPIPS.
ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Why reports say ``lpips: null``, and how to get it.
LPIPS_UNAVAILABLE = (
    "LPIPS not available: its AlexNet/VGG backbone and linear-layer weights are published only as "
    "pickled .pth files (the lpips package fetches the backbone from torchvision at run time), and this "
    "pack reads safetensors only and never downloads; pass your own distance as lpips=callable "
    "(images [N, H, W, 3] in [0, 1] → [N]) to the Python API, e.g. lpips.LPIPS(net='alex') wrapped"
)


def _poses(x: ArrayLike, name: str) -> torch.Tensor:
    p = as_tensor(x).detach().to(dtype=torch.float64).cpu()
    validate_pose_stack(p, name)
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
    th = _thresholds(thresholds)
    return _auc(nn_distances(pred, gt), nn_distances(gt, pred), th)


def _thresholds(thresholds: Sequence[float] | ArrayLike) -> np.ndarray:
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.detach().cpu().numpy()
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if th.size == 0 or not np.isfinite(th).all() or (th <= 0).any():
        raise InvalidPointCloudError("thresholds must be one or more positive finite distances")
    if (np.diff(th) <= 0).any():
        raise InvalidPointCloudError("thresholds must be strictly increasing")
    return th


def _auc(d_pred: np.ndarray, d_gt: np.ndarray, th: np.ndarray) -> float:
    """:func:`pointcloud_auc` from the two nearest-neighbour distance arrays."""
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
        out["auc"] = _auc(d_pred, d_gt, _thresholds(thresholds))  # the distances above, not computed twice
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


# ---------------------------------------------------------------------------------------------
# Relative-pose accuracy (RRA / RTA / mAA)
# ---------------------------------------------------------------------------------------------


def relative_pose_errors(
    pred_c2w: ArrayLike, gt_c2w: ArrayLike, eps: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair relative rotation and translation-direction errors over all pairs ``i < j``.

    The relative pose of pair ``(i, j)`` is camera ``j`` seen from camera ``i``,
    ``w2c_i · c2w_j`` (the frame does not matter: a global similarity of either trajectory
    changes neither error). The translation error is the angle between the two relative
    translation directions folded to ``[0°, 90°]`` (``min(θ, 180° − θ)``, upstream's
    ``ambiguity=True``).

    Args:
        pred_c2w, gt_c2w: ``[F, 4, 4]`` camera-to-world poses, ``F ≥ 2``.
        eps: a true relative translation shorter than ``eps ×`` the largest true baseline has
            no direction: that pair gets no translation error (``valid_t`` False). A predicted
            one that short while the true one is not counts as 90° (no direction recovered).

    Returns:
        ``(rot_deg [P], trans_deg [P], valid_t [P] bool)`` with ``P = F (F − 1) / 2`` pairs
        in the order ``(0, 1), (0, 2), …, (1, 2), …``.
    """
    a, b = _pair(pred_c2w, gt_c2w)
    if a.shape[0] < 2:
        raise InvalidCameraError("relative pose accuracy needs at least 2 cameras (it scores camera pairs)")
    i, j = torch.triu_indices(a.shape[0], a.shape[0], offset=1)

    def rel(c2w: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(c2w[i], c2w[j])  # c2w_i⁻¹ c2w_j = w2c_i · c2w_j

    ra, rb = rel(a), rel(b)
    rot = rotation_angles(ra[:, :3, :3], rb[:, :3, :3], degrees=True)
    ta, tb = ra[:, :3, 3], rb[:, :3, 3]
    na, nb = ta.norm(dim=-1), tb.norm(dim=-1)
    valid = nb > eps * max(float(nb.max()), 1e-300)
    # atan2(|a × b|, a · b): the same angle as arccos of the cosine, accurate near 0° and 180°
    ang = torch.rad2deg(torch.atan2(torch.linalg.cross(ta, tb).norm(dim=-1), (ta * tb).sum(-1)))
    ang = torch.minimum(ang, 180.0 - ang)
    ang = torch.where(na > eps * max(float(na.max()), 1e-300), ang, torch.full_like(ang, 90.0))
    return rot, torch.where(valid, ang, torch.zeros_like(ang)), valid


def pose_accuracy(
    pred_c2w: ArrayLike,
    gt_c2w: ArrayLike,
    thresholds: Sequence[float] = RRA_RTA_THRESHOLDS_DEG,
    max_threshold: int = MAA_MAX_THRESHOLD_DEG,
) -> dict[str, float]:
    """RRA@τ, RTA@τ (fractions in [0, 1]) and ``mAA`` of a trajectory (module doc).

    ``RRA@τ`` = fraction of pairs with rotation error ``< τ``; ``RTA@τ`` = fraction of pairs
    with a translation direction whose error is ``< τ`` (pairs without a true baseline left
    out; ``None`` if no pair has one); ``mAA`` = mean over ``τ = 1 … max_threshold`` of the
    fraction of pairs with ``max(rot, trans) < τ`` (pairs without a baseline: rotation only).
    Keys: ``rra@5``, ``rta@5`` …, ``maa@30``, ``num_pairs``.
    """
    rot, trans, valid = relative_pose_errors(pred_c2w, gt_c2w)
    out: dict[str, float] = {}
    for t in thresholds:
        key = f"{float(t):g}"
        out[f"rra@{key}"] = float((rot < t).double().mean())
        out[f"rta@{key}"] = float((trans[valid] < t).double().mean()) if bool(valid.any()) else None
    worst = torch.where(valid, torch.maximum(rot, trans), rot)
    taus = torch.arange(1, int(max_threshold) + 1, dtype=torch.float64)
    out[f"maa@{int(max_threshold)}"] = float((worst[None, :] < taus[:, None]).double().mean(1).mean())
    out["num_pairs"] = int(rot.shape[0])
    return out


# ---------------------------------------------------------------------------------------------
# Image metrics (memory benchmark)
# ---------------------------------------------------------------------------------------------


def _images(a: ArrayLike, b: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_tensor(a).detach().to(torch.float64).cpu()
    y = as_tensor(b).detach().to(torch.float64).cpu()
    x = x[None] if x.ndim == 3 else x
    y = y[None] if y.ndim == 3 else y
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape != y.shape:
        raise InvalidImageError(
            f"images must be two IMAGE batches of one shape [N, H, W, 3], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise InvalidImageError("images contain NaN or inf values")
    return x, y


def psnr(a: ArrayLike, b: ArrayLike, max_val: float = 1.0) -> torch.Tensor:
    """``[N]`` PSNR in dB of image pairs ``[N, H, W, 3]`` (``inf`` where they are identical)."""
    import kornia

    x, y = _images(a, b)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    # kornia's psnr averages over the whole batch; per pair it is the same formula on one image.
    inf = torch.tensor(math.inf, dtype=x.dtype)
    return torch.stack([kornia.metrics.psnr(x[k], y[k], max_val) if mse[k] > 0 else inf for k in range(x.shape[0])])


def ssim(a: ArrayLike, b: ArrayLike, window_size: int = 11, max_val: float = 1.0) -> torch.Tensor:
    """``[N]`` mean SSIM of image pairs ``[N, H, W, 3]`` (kornia: Gaussian window σ = 1.5,
    reflect padding, channels averaged)."""
    import kornia

    x, y = _images(a, b)
    m = kornia.metrics.ssim(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2), window_size, max_val)
    return m.flatten(1).mean(1)


def image_scores(generated: ArrayLike, reference: ArrayLike, lpips: ImageDistance | None = None) -> dict[str, object]:
    """Mean PSNR / SSIM (/ LPIPS) of ``generated`` against ``reference`` ``[N, H, W, 3]``.

    PSNR is averaged over pairs with a finite value (identical pairs are counted in
    ``identical_pairs``; all identical gives None, which JSON can hold, unlike ``inf``). Without ``lpips`` the report says
    ``lpips: None`` and ``lpips_status`` = :data:`LPIPS_UNAVAILABLE`.
    """
    x, y = _images(generated, reference)
    p = psnr(x, y)
    finite = torch.isfinite(p)
    out: dict[str, object] = {
        # JSON has no infinity: all-identical pairs give None (counted in identical_pairs)
        "psnr": float(p[finite].mean()) if bool(finite.any()) else None,
        "ssim": float(ssim(x, y).mean()),
        "num_pairs": int(x.shape[0]),
        "identical_pairs": int((~finite).sum()),
    }
    if lpips is None:
        out["lpips"], out["lpips_status"] = None, LPIPS_UNAVAILABLE
    else:
        d = torch.as_tensor(lpips(x.float(), y.float())).detach().double().reshape(-1)
        if d.shape[0] != x.shape[0] or not torch.isfinite(d).all():
            raise ShapeMismatchError(
                f"the lpips callable must return {x.shape[0]} finite distances, got shape {tuple(d.shape)}"
            )
        out["lpips"], out["lpips_status"] = float(d.mean()), "computed"
    return out
