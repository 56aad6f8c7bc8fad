"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from worldstereo_core.errors import AlignmentFailedError, InvalidCameraError, InvalidPointCloudError
from worldstereo_core.metrics import (
    ate,
    metrics_report,
    nn_distances,
    pointcloud_auc,
    pointcloud_prf,
    rot_err,
    trans_err,
)


def _traj(n: int = 5) -> np.ndarray:
    """c2w poses moving along x with a slow yaw."""
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2w[i, :3, :3] = Rotation.from_euler("y", 5 * i, degrees=True).as_matrix()
        c2w[i, :3, 3] = [i * 0.5, 0.1 * i * i, 0.0]
    return c2w


def _world(T: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    return T[None] @ c2w


def test_rot_err_one_frame_rotated_by_known_angle():
    gt = _traj()
    pred = gt.copy()
    pred[3, :3, :3] = pred[3, :3, :3] @ Rotation.from_euler("x", 12, degrees=True).as_matrix()
    assert rot_err(pred, gt) == pytest.approx(12.0, abs=1e-9)
    assert rot_err(pred, gt, degrees=False) == pytest.approx(math.radians(12), abs=1e-12)
    # Invariant to a global change of world frame (relative to the first camera).
    G = np.eye(4)
    G[:3, :3] = Rotation.from_rotvec([0.3, -1.0, 0.2]).as_matrix()
    G[:3, 3] = [1, 2, 3]
    assert rot_err(_world(G, pred), gt) == pytest.approx(12.0, abs=1e-9)
    assert rot_err(torch.from_numpy(gt), torch.from_numpy(gt)) == pytest.approx(0.0, abs=1e-6)


def test_trans_err_hand_computed():
    gt = np.tile(np.eye(4), (3, 1, 1))
    gt[1, :3, 3] = [1, 0, 0]
    gt[2, :3, 3] = [2, 0, 0]  # farthest at 2 -> normalised centres 0, 0.5, 1 on x
    pred = gt.copy()
    pred[:, :3, 3] *= 7.0  # scale does not matter
    pred[1, :3, 3] = [7.0, 7.0, 0]  # -> normalised (0.5, 0.5, 0): error 0.5
    assert trans_err(pred, gt) == pytest.approx(0.5, abs=1e-12)
    # Global similarity of the prediction's world changes nothing.
    G = np.eye(4)
    G[:3, :3] = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    G[:3, 3] = [5, -1, 2]
    assert trans_err(_world(G, pred), gt) == pytest.approx(0.5, abs=1e-9)
    static = np.tile(np.eye(4), (3, 1, 1))
    with pytest.raises(InvalidCameraError, match="moves"):
        trans_err(static, static)


def test_ate_zero_after_similarity_and_known_rmse():
    gt = _traj(6)
    S = np.eye(4)
    S[:3, :3] = 2.5 * Rotation.from_rotvec([0.4, 0.1, -0.3]).as_matrix()
    S[:3, 3] = [1, -2, 0.5]
    pred = np.einsum("ij,fjk->fik", S, gt)
    assert ate(pred, gt) == pytest.approx(0.0, abs=1e-9)
    # Straight line: collinear centres are fine for ATE.
    line = np.tile(np.eye(4), (4, 1, 1))
    line[:, 0, 3] = np.arange(4.0)
    assert ate(line * 1, line) == pytest.approx(0.0, abs=1e-12)
    # Perturbation ±e orthogonal to the unit square: by symmetry R = I, t centres it, and
    # Umeyama's scale is s = 0.5 / (0.5 + e²) (cross-variance over pred variance), so
    # RMSE² = 0.5·(s − 1)² + s²e². Centres (0,0,0),(1,0,0),(0,1,0),(1,1,0); pred z = +e,-e,-e,+e.
    sq = np.tile(np.eye(4), (4, 1, 1))
    sq[:, :2, 3] = [[0, 0], [1, 0], [0, 1], [1, 1]]
    pr = sq.copy()
    pr[:, 2, 3] = [0.01, -0.01, -0.01, 0.01]
    e = 0.01
    s = 0.5 / (0.5 + e**2)
    assert ate(pr, sq) == pytest.approx(math.sqrt(0.5 * (s - 1) ** 2 + s**2 * e**2), rel=1e-9)
    assert ate(pr, sq, with_scale=False) == pytest.approx(e, rel=1e-9)
    with pytest.raises(InvalidCameraError, match="one per frame"):
        ate(gt[:3], gt)
    with pytest.raises(InvalidCameraError, match=r"\[F, 4, 4\]"):
        ate(gt[:, :3], gt[:, :3])
    with pytest.raises(AlignmentFailedError, match="coincide"):
        ate(np.tile(np.eye(4), (3, 1, 1)), gt[:3])


def test_pointcloud_prf_hand_computed():
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    pred = np.array([[0.0, 0.05, 0], [1, 0.05, 0], [10, 0, 0]])  # 2 of 3 within 0.1
    p, r, f = pointcloud_prf(pred, gt, 0.1)
    assert p == pytest.approx(2 / 3)
    assert r == pytest.approx(2 / 4)
    assert f == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert pointcloud_prf(gt, gt, 1e-6) == (1.0, 1.0, 1.0)
    assert pointcloud_prf(gt + 100, gt, 0.1) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(nn_distances(pred, gt, chunk=2), [0.05, 0.05, 7.0])
    with pytest.raises(InvalidPointCloudError, match="empty"):
        pointcloud_prf(np.zeros((0, 3)), gt, 0.1)
    with pytest.raises(InvalidPointCloudError, match="positive"):
        pointcloud_prf(pred, gt, 0.0)


def test_pointcloud_auc_hand_computed():
    gt = np.array([[0.0, 0, 0], [1, 0, 0]])
    pred = np.array([[0.0, 0.2, 0], [1, 0.6, 0]])  # distances 0.2 and 0.6 both ways
    # F(t) = 0 for t <= 0.2, 0.5 on (0.2, 0.6], 1 above; thresholds 0.1..1.0 step 0.1.
    th = np.linspace(0.1, 1.0, 10)
    f = np.array([0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1.0])
    expected = np.sum((f[1:] + f[:-1]) * 0.1 / 2) / 0.9
    assert pointcloud_auc(pred, gt, th) == pytest.approx(expected)
    assert pointcloud_auc(gt, gt, torch.tensor([0.1, 0.2])) == pytest.approx(1.0)
    with pytest.raises(InvalidPointCloudError, match="increasing"):
        pointcloud_auc(pred, gt, [0.2, 0.1])


def test_metrics_report_keys():
    rng = np.random.default_rng(0)
    gt = rng.uniform(size=(500, 3))
    rep = metrics_report(gt, gt, pred_c2w=_traj(), gt_c2w=_traj())
    assert rep["fscore"] == 1.0 and rep["auc"] == pytest.approx(1.0)
    assert rep["rot_err_deg"] == pytest.approx(0.0, abs=1e-6)
    assert rep["trans_err"] == pytest.approx(0.0, abs=1e-9)
    assert rep["ate"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InvalidPointCloudError, match="both"):
        metrics_report(gt)
