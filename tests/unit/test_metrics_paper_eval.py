"""The paper-evaluation metrics against hand-computed cases and independent brute-force math:
RRA / RTA / mAA (JOG3R's relative-pose accuracy), PSNR and SSIM (memory benchmark)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d
from scipy.spatial.transform import Rotation

from worldstereo_core.errors import (
    InvalidCameraError,
    InvalidImageError,
    ShapeMismatchError,
)
from worldstereo_core.metrics import (
    LPIPS_UNAVAILABLE,
    image_scores,
    pose_accuracy,
    psnr,
    relative_pose_errors,
    ssim,
)


def _pose(R: np.ndarray, c: list[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, c
    return m


I3 = np.eye(3)


def _three(pred_R2: np.ndarray = I3, pred_c1=(1.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    gt = np.stack([_pose(I3, [0, 0, 0]), _pose(I3, [1, 0, 0]), _pose(I3, [0, 0, 1])])
    pred = np.stack([_pose(I3, [0, 0, 0]), _pose(I3, list(pred_c1)), _pose(pred_R2, [0, 0, 1])])
    return pred, gt


def test_rra_rta_maa_hand_computed_rotation_case():
    # camera 2 turned by 20° about y: pairs (0,1) exact, (0,2) and (1,2) 20° off; translations exact
    pred, gt = _three(pred_R2=Rotation.from_euler("y", 20, degrees=True).as_matrix())
    rot, trans, valid = relative_pose_errors(pred, gt)
    np.testing.assert_allclose(rot.numpy(), [0.0, 20.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(trans.numpy(), [0.0, 0.0, 0.0], atol=1e-6)
    assert valid.all()
    acc = pose_accuracy(pred, gt)
    for t in (5, 10, 15):
        assert acc[f"rra@{t}"] == pytest.approx(1 / 3)
        assert acc[f"rta@{t}"] == 1.0
    assert acc["rra@30"] == 1.0
    # worst errors [0, 20, 20]: 1/3 of pairs under τ for τ = 1..20, all for τ = 21..30
    assert acc["maa@30"] == pytest.approx((20 * (1 / 3) + 10 * 1.0) / 30)
    assert acc["num_pairs"] == 3


def test_rta_hand_computed_translation_directions():
    # camera 1 predicted at (1, 1, 0) instead of (1, 0, 0): pair (0,1) 45° off,
    # pair (1,2) true (−1, 0, 1) vs predicted (−1, −1, 1): arccos(2 / √6)
    pred, gt = _three(pred_c1=(1.0, 1.0, 0.0))
    rot, trans, _ = relative_pose_errors(pred, gt)
    np.testing.assert_allclose(rot.numpy(), 0.0, atol=1e-9)
    np.testing.assert_allclose(trans.numpy(), [45.0, 0.0, math.degrees(math.acos(2 / math.sqrt(6)))], atol=1e-9)
    acc = pose_accuracy(pred, gt)
    assert acc["rta@30"] == pytest.approx(1 / 3)  # 0° only (35.26° and 45° are over)
    assert acc["rta@5"] == pytest.approx(1 / 3)
    assert acc["rra@5"] == 1.0
    # worst = [45, 0, 35.26]: under τ for τ ≥ 1: 1/3 ; never 2/3 within 30
    assert acc["maa@30"] == pytest.approx(1 / 3)


def test_translation_sign_ambiguity_is_folded_as_upstream():
    pred, gt = _three(pred_c1=(-2.0, 0.0, 0.0))  # opposite direction, other length
    _, trans, _ = relative_pose_errors(pred, gt)
    assert float(trans[0]) == pytest.approx(0.0, abs=1e-9)


def _random_traj(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    R = Rotation.from_rotvec(rng.normal(size=(n, 3)) * 0.4).as_matrix()
    return np.stack([_pose(R[k], list(rng.normal(size=3))) for k in range(n)])


def test_relative_pose_errors_match_brute_force_loops():
    gt, pred = _random_traj(6, 0), _random_traj(6, 1)
    rot, trans, _ = relative_pose_errors(pred, gt)
    k = 0
    for i in range(6):
        for j in range(i + 1, 6):
            rg = np.linalg.inv(gt[i]) @ gt[j]
            rp = np.linalg.inv(pred[i]) @ pred[j]
            ang = Rotation.from_matrix(rg[:3, :3].T @ rp[:3, :3]).magnitude()
            assert float(rot[k]) == pytest.approx(math.degrees(ang), abs=1e-7)
            a, b = rg[:3, 3], rp[:3, 3]
            t = math.degrees(math.acos(np.clip(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))
            assert float(trans[k]) == pytest.approx(t, abs=1e-6)
            k += 1


def test_pose_accuracy_ignores_a_global_similarity_of_the_prediction():
    gt = _random_traj(5, 3)
    S = _pose(Rotation.from_euler("xyz", [30, -50, 10], degrees=True).as_matrix(), [4, -2, 1])
    moved = S[None] @ gt
    moved[:, :3, 3] *= 3.0  # scale the world
    acc = pose_accuracy(moved, gt)
    assert acc["rra@5"] == 1.0 and acc["rta@5"] == 1.0 and acc["maa@30"] == 1.0


def test_pose_accuracy_pairs_without_true_baseline_are_left_out_of_rta():
    gt = np.stack(
        [
            _pose(I3, [0, 0, 0]),
            _pose(Rotation.from_euler("y", 10, degrees=True).as_matrix(), [0, 0, 0]),
        ]
    )
    acc = pose_accuracy(gt, gt)
    assert acc["rta@5"] is None and acc["rra@5"] == 1.0 and acc["maa@30"] == 1.0
    with pytest.raises(InvalidCameraError):
        pose_accuracy(gt[:1], gt[:1])


def test_psnr_against_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 12, 17, 3, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(3, 12, 17, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    an, bn = a.numpy(), b.numpy()
    want = [10 * math.log10(1.0 / float(((an[k] - bn[k]) ** 2).mean())) for k in range(3)]
    np.testing.assert_allclose(psnr(a, b).numpy(), want, rtol=1e-10)
    assert math.isinf(float(psnr(a, a)[0]))


def _ssim_brute(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM: 11-tap Gaussian σ = 1.5, whole-sample symmetric borders, C1/C2 at L = 1."""
    r = np.arange(11) - 5
    k = np.exp(-(r**2) / (2 * 1.5**2))
    k /= k.sum()

    def blur(z):
        return correlate1d(correlate1d(z, k, axis=0, mode="mirror"), k, axis=1, mode="mirror")

    C1, C2 = 0.01**2, 0.03**2
    vals = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        vals.append(((2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2))).mean())
    return float(np.mean(vals))


def test_ssim_against_brute_force_and_closed_form():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 20, 24, 3, generator=g, dtype=torch.float64)
    b = 0.7 * a + 0.3 * torch.rand(2, 20, 24, 3, generator=g, dtype=torch.float64)
    got = ssim(a, b).numpy()
    for k in range(2):
        assert got[k] == pytest.approx(_ssim_brute(a[k].numpy(), b[k].numpy()), abs=1e-9)
    # constant images: no variance, SSIM = luminance term (2 μa μb + C1) / (μa² + μb² + C1) everywhere
    c1, c2 = (
        torch.full((1, 16, 16, 3), 0.2, dtype=torch.float64),
        torch.full((1, 16, 16, 3), 0.6, dtype=torch.float64),
    )
    C1 = 0.01**2
    assert float(ssim(c1, c2)[0]) == pytest.approx((2 * 0.2 * 0.6 + C1) / (0.04 + 0.36 + C1), abs=1e-7)


def test_image_scores_lpips_plug_in_and_its_absence():
    a = torch.rand(2, 16, 16, 3)
    b = (a * 0.8).clamp(0, 1)
    out = image_scores(a, b)
    assert out["lpips"] is None and out["lpips_status"] == LPIPS_UNAVAILABLE
    l1 = image_scores(a, b, lpips=lambda x, y: (x - y).abs().flatten(1).mean(1))
    assert l1["lpips"] == pytest.approx(float((a - b).abs().mean()), rel=1e-5) and l1["lpips_status"] == "computed"
    with pytest.raises(ShapeMismatchError):
        image_scores(a, b, lpips=lambda x, y: torch.zeros(5))
    with pytest.raises(InvalidImageError):
        image_scores(a, b[:1])
