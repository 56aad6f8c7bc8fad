"""Alignment against transforms built by hand (scipy rotations, known scales, planted outliers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from worldstereo_core.align import (
    Similarity,
    apply_depth_scale_shift,
    fit_depth_scale_shift,
    icp_refine,
    robust_umeyama,
    umeyama,
)
from worldstereo_core.errors import (
    AlignmentFailedError,
    InvalidDepthError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPointCloudError,
    ShapeMismatchError,
)
from worldstereo_core.pointcloud import PointCloud


def _random_sim(rng: np.random.Generator):
    R = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
    s = float(rng.uniform(0.2, 5.0))
    t = rng.normal(size=3) * 3
    return s, R, t


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_recovers_random_similarity_float64(seed):
    rng = np.random.default_rng(seed)
    s, R, t = _random_sim(rng)
    src = rng.normal(size=(50, 3))
    dst = s * src @ R.T + t
    s2, R2, t2 = umeyama(src, dst)
    assert isinstance(R2, np.ndarray) and R2.dtype == np.float64
    assert abs(s2 - s) < 1e-6
    np.testing.assert_allclose(R2, R, atol=1e-6)
    np.testing.assert_allclose(t2, t, atol=1e-6)


def test_umeyama_torch_in_torch_out_and_rigid_mode():
    rng = np.random.default_rng(7)
    _, R, t = _random_sim(rng)
    src = torch.from_numpy(rng.normal(size=(20, 3)))
    dst = src @ torch.from_numpy(R).T + torch.from_numpy(t)
    s2, R2, t2 = umeyama(src, dst, with_scale=False)
    assert isinstance(R2, torch.Tensor) and s2 == 1.0
    torch.testing.assert_close(R2, torch.from_numpy(R), atol=1e-9, rtol=0)
    torch.testing.assert_close(t2, torch.from_numpy(t), atol=1e-9, rtol=0)


def test_umeyama_planar_points_and_reflection_gives_rotation():
    rng = np.random.default_rng(3)
    s, R, t = _random_sim(rng)
    src = rng.normal(size=(30, 3))
    src[:, 2] = 0.0  # coplanar: still a unique solution
    dst = s * src @ R.T + t
    s2, R2, t2 = umeyama(src, dst)
    np.testing.assert_allclose(R2, R, atol=1e-8)
    # Mirrored target: the best *rotation* must still have det +1.
    mirrored = dst * np.array([1.0, 1.0, -1.0])
    _, Rm, _ = umeyama(rng.normal(size=(30, 3)), mirrored[:30])
    assert np.linalg.det(Rm) == pytest.approx(1.0, abs=1e-9)


def test_umeyama_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(AlignmentFailedError, match="at least 3"):
        umeyama(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)))
    with pytest.raises(ShapeMismatchError, match="same shape"):
        umeyama(rng.normal(size=(5, 3)), rng.normal(size=(6, 3)))
    line = np.outer(np.arange(10.0), [1.0, 2.0, 3.0])
    with pytest.raises(AlignmentFailedError, match="collinear"):
        umeyama(line, line + 1)
    with pytest.raises(AlignmentFailedError, match="coincide"):
        umeyama(np.ones((5, 3)), rng.normal(size=(5, 3)))
    bad = rng.normal(size=(5, 3))
    bad[1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        umeyama(bad, rng.normal(size=(5, 3)))
    with pytest.raises(ShapeMismatchError, match=r"\[N, 3\]"):
        umeyama(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)))


@pytest.mark.parametrize("threshold", [None, 0.05])
def test_robust_umeyama_with_30_percent_outliers(threshold):
    rng = np.random.default_rng(11)
    s, R, t = _random_sim(rng)
    n = 200
    src = rng.normal(size=(n, 3))
    dst = s * src @ R.T + t
    out = rng.choice(n, size=60, replace=False)
    dst[out] += rng.normal(size=(60, 3)) * 5 + 3
    s2, R2, t2, inl = robust_umeyama(src, dst, threshold=threshold)
    truth = np.ones(n, bool)
    truth[out] = False
    np.testing.assert_array_equal(inl, truth)
    assert abs(s2 - s) < 1e-6
    np.testing.assert_allclose(R2, R, atol=1e-6)
    np.testing.assert_allclose(t2, t, atol=1e-6)
    # The plain fit is visibly wrong on the same data (so the test can fail).
    s3, _, _ = umeyama(src, dst)
    assert abs(s3 - s) > 1e-2


def test_robust_umeyama_deterministic():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    dst = src * 2 + rng.normal(size=(40, 3)) * 0.01
    a = robust_umeyama(src, dst, seed=5)
    b = robust_umeyama(src, dst, seed=5)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[3], b[3])


def test_similarity_algebra():
    rng = np.random.default_rng(4)
    a = Similarity(*_random_sim(rng))
    b = Similarity(*_random_sim(rng))
    p = rng.normal(size=(10, 3))
    np.testing.assert_allclose(a.compose(b).apply(p), a.apply(b.apply(p)), atol=1e-10)
    np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-10)
    M = a.matrix().numpy()
    ph = np.concatenate([p, np.ones((10, 1))], 1)
    np.testing.assert_allclose((ph @ M.T)[:, :3], a.apply(p), atol=1e-10)
    back = Similarity.from_matrix(M)
    assert back.s == pytest.approx(a.s)
    np.testing.assert_allclose(back.R.numpy(), a.R.numpy(), atol=1e-10)
    pt = torch.from_numpy(p).float()
    assert a.apply(pt).dtype == torch.float32
    with pytest.raises(InvalidInputError, match="positive"):
        Similarity(-1.0, np.eye(3), np.zeros(3))
    with pytest.raises(InvalidInputError, match="proper similarity"):
        Similarity.from_matrix(np.diag([1.0, 1.0, -1.0, 1.0]))


def _surface(n: int = 2000) -> np.ndarray:
    """A closed, bumpy, non-symmetric blob (so ICP has a unique answer and cannot slide)."""
    d = np.random.default_rng(0).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = 1 + 0.25 * np.sin(3 * d[:, 0] + 1) * np.cos(2 * d[:, 1]) + 0.15 * d[:, 2] ** 2 + 0.1 * d[:, 0]
    return d * r[:, None] * np.array([1.0, 0.8, 0.6])


def test_icp_recovers_small_perturbation():
    dst = _surface()
    R = Rotation.from_rotvec([0.03, -0.02, 0.04]).as_matrix()
    t = np.array([0.03, -0.02, 0.01])
    truth = Similarity(1.0, R, t)
    src = truth.inverse().apply(dst)  # truth maps src onto dst
    res = icp_refine(PointCloud(src, np.zeros_like(src)), dst, init=None, max_distance=0.2)
    assert res.fitness > 0.99
    np.testing.assert_allclose(res.transform.R.numpy(), R, atol=1e-6)
    np.testing.assert_allclose(res.transform.t.numpy(), t, atol=1e-6)
    assert res.inlier_rmse < 1e-6


def test_icp_with_scale_and_init():
    dst = _surface()
    truth = Similarity(1.2, Rotation.from_rotvec([0.02, 0.01, -0.03]).as_matrix(), [0.02, 0.0, -0.01])
    src = truth.inverse().apply(dst)
    init = Similarity(1.15, np.eye(3), np.zeros(3))
    res = icp_refine(src, dst, init=init.matrix(), max_distance=0.2, with_scale=True, max_iterations=100)
    assert res.transform.s == pytest.approx(1.2, abs=1e-6)
    np.testing.assert_allclose(res.transform.t.numpy(), truth.t.numpy(), atol=1e-6)
    with pytest.raises(InvalidPointCloudError, match="at least 3"):
        icp_refine(np.zeros((2, 3)), dst)
    with pytest.raises(InvalidOptionError, match="max_distance"):
        icp_refine(src, dst, max_distance=0)


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_depth_scale_shift_exact_with_outliers(space):
    rng = np.random.default_rng(5)
    pred = rng.uniform(1.0, 4.0, size=(32, 40))
    scale, shift = 1.7, 0.3
    if space == "depth":
        target = scale * pred + shift
    else:
        target = 1.0 / (scale / pred + shift)
    bad = rng.random(pred.shape) < 0.25
    target = np.where(bad, target * rng.uniform(1.5, 3.0, size=pred.shape), target)
    target[0, :5] = np.nan  # non-finite pixels are excluded, not fatal
    valid = np.ones_like(pred, bool)
    valid[-1] = False
    a, b, inl = fit_depth_scale_shift(pred, target, valid, space=space)
    assert a == pytest.approx(scale, abs=1e-9) and b == pytest.approx(shift, abs=1e-9)
    expected = ~bad & valid & np.isfinite(target)
    np.testing.assert_array_equal(inl, expected)
    aligned = apply_depth_scale_shift(pred, a, b, space)
    np.testing.assert_allclose(aligned[expected], target[expected], rtol=1e-9)


def test_depth_scale_shift_errors():
    d = np.ones((4, 4))
    with pytest.raises(InvalidDepthError, match="differ in size"):
        fit_depth_scale_shift(d, np.ones((4, 5)))
    with pytest.raises(InvalidDepthError, match="valid mask"):
        fit_depth_scale_shift(d, d, np.ones((3, 3), bool))
    with pytest.raises(AlignmentFailedError, match="constant"):
        fit_depth_scale_shift(d, d * 2)
    with pytest.raises(AlignmentFailedError, match="valid pixel"):
        fit_depth_scale_shift(np.arange(16.0).reshape(4, 4) + 1, d, np.zeros((4, 4), bool))
    with pytest.raises(InvalidDepthError, match=r"\[H, W\]"):
        fit_depth_scale_shift(np.ones((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(InvalidOptionError, match="space"):
        fit_depth_scale_shift(d, d, space="log")
