"""Cameras: quaternions, SEVA normalisation, Plücker rays and camera_qt against independent math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from worldstereo_core.cameras import (
    camera_qt,
    matrix_to_quaternion,
    normalize_cameras,
    normalize_cameras_joint,
    plucker_embedding,
    quaternion_to_matrix,
)
from worldstereo_core.errors import InvalidCameraError


def random_w2c(n: int, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    out[:, :3, 3] = rng.normal(size=(n, 3)) * spread
    return out


def centers_of(w2c: np.ndarray) -> np.ndarray:
    return np.linalg.inv(w2c)[:, :3, 3]


# --- quaternions -------------------------------------------------------------------------------


def test_quaternion_matches_scipy_and_round_trips():
    R = Rotation.random(200, random_state=3)
    mats = R.as_matrix()
    q = matrix_to_quaternion(mats)
    assert isinstance(q, np.ndarray) and q.shape == (200, 4)
    ref = R.as_quat()[:, [3, 0, 1, 2]]  # scipy is (x, y, z, w)
    ref = np.where(ref[:, :1] < 0, -ref, ref)
    np.testing.assert_allclose(q, ref, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(quaternion_to_matrix(q), mats, atol=1e-12)


def test_quaternion_known_values_and_180_degrees():
    # 90° about z: q = (cos 45°, 0, 0, sin 45°)
    Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    q = matrix_to_quaternion(Rz)
    assert torch.allclose(q, torch.tensor([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], dtype=torch.float64))
    # 180° about x: w = 0, the unstable case of the naive formula
    Rx = torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64))
    q = matrix_to_quaternion(Rx)
    assert torch.allclose(q.abs(), torch.tensor([0.0, 1, 0, 0], dtype=torch.float64))
    assert torch.allclose(quaternion_to_matrix(q), Rx)


def test_quaternion_batched_and_half_turns_match_scipy():
    """The one rotation → quaternion of the package (COLMAP export, WorldMirror pose input,
    camera_qt): batched over any leading shape, exact at 180° turns about any axis."""
    Rs = Rotation.random(24, random_state=0).as_matrix()
    Rs[0] = Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
    Rs[1] = Rotation.from_rotvec(np.array([0, 1, 1]) / np.sqrt(2) * np.pi).as_matrix()
    Rs[2] = np.eye(3)
    q = matrix_to_quaternion(Rs.reshape(2, 3, 4, 3, 3))
    assert q.shape == (2, 3, 4, 4)
    q = q.reshape(24, 4)
    ref = Rotation.from_matrix(Rs).as_quat()[:, [3, 0, 1, 2]]
    # w = 0 for half turns: q and −q are both valid there, compare up to sign
    sign = np.sign(np.sum(q * ref, axis=1, keepdims=True))
    np.testing.assert_allclose(q, ref * sign, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)


def test_look_at_c2w_against_independent_construction():
    from worldstereo_core.cameras import look_at_c2w

    rng = np.random.default_rng(0)
    eye, target = rng.normal(size=(16, 3)), rng.normal(size=(16, 3)) + [0, 0, 5]
    c2w = look_at_c2w(eye, target).numpy()
    assert c2w.shape == (16, 4, 4)
    for e, t, T in zip(eye, target, c2w):
        R = T[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(T[:3, 3], e)
        # the target projects to the image centre line: on the camera's +z axis
        p = R.T @ (t - e)
        np.testing.assert_allclose(p[:2], 0, atol=1e-12)
        assert p[2] == pytest.approx(np.linalg.norm(t - e))
        # world up (−y) appears up in the image: the image's down axis (camera +y) points away from it
        assert R[:, 1] @ np.array([0, -1.0, 0]) < 0
        # no roll: the image x axis is horizontal (orthogonal to world up)
        assert abs(R[:, 0] @ np.array([0, 1.0, 0])) < 1e-12
    with pytest.raises(InvalidCameraError, match="coincides"):
        look_at_c2w([1, 2, 3], [1, 2, 3])
    with pytest.raises(InvalidCameraError, match="parallel"):
        look_at_c2w([0, 0, 0], [0, 5, 0])


def test_quaternion_bad_shapes():
    with pytest.raises(InvalidCameraError):
        matrix_to_quaternion(np.eye(4))
    with pytest.raises(InvalidCameraError):
        quaternion_to_matrix(np.zeros(3))
    with pytest.raises(InvalidCameraError):
        quaternion_to_matrix(np.zeros(4))


# --- normalisation -----------------------------------------------------------------------------


def test_normalize_cameras_identity_rotation_and_distance_two():
    w2c = random_w2c(21, seed=1)
    n = normalize_cameras(w2c)
    assert isinstance(n, np.ndarray) and n.dtype == np.float64
    np.testing.assert_allclose(n[0, :3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(centers_of(n)[0]), 2.0, rtol=1e-12)
    # centred: with no outliers the mean of the centres is the origin
    np.testing.assert_allclose(centers_of(n).mean(0), 0.0, atol=1e-12)
    # relative poses are preserved up to the global scale
    moved = centers_of(w2c @ np.linalg.inv(w2c[0]))
    s = 2.0 / np.linalg.norm(moved[0] - moved.mean(0))
    rel_in = w2c[5] @ np.linalg.inv(w2c[9])
    rel_out = n[5] @ np.linalg.inv(n[9])
    np.testing.assert_allclose(rel_out[:3, :3], rel_in[:3, :3], atol=1e-10)
    np.testing.assert_allclose(rel_out[:3, 3], s * rel_in[:3, 3], atol=1e-10)
    assert not np.shares_memory(n, w2c)


def test_normalize_cameras_is_invariant_to_world_frame():
    w2c = random_w2c(10, seed=2)
    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    M[:3, 3] = [4.0, -2.0, 7.0]
    # same cameras in a moved world: w2c' = w2c · M⁻¹
    np.testing.assert_allclose(normalize_cameras(w2c @ np.linalg.inv(M)), normalize_cameras(w2c), atol=1e-9)
    # and in a scaled world (scale 3)
    scaled = w2c.copy()
    scaled[:, :3, 3] *= 3
    np.testing.assert_allclose(normalize_cameras(scaled), normalize_cameras(w2c), atol=1e-9)


def test_uni3c_normalisation_takes_camera_0_out_on_the_left():
    """Uni3C's order (w2c₀⁻¹ · w2cᵢ) is invariant to a common change of the *camera* frame (G · w2cᵢ),
    WorldStereo's (w2cᵢ · w2c₀⁻¹) to a change of the world frame; they differ for a generic path."""
    w2c = random_w2c(9, seed=5)
    G = np.eye(4)
    G[:3, :3] = Rotation.from_euler("xyz", [-25, 40, 5], degrees=True).as_matrix()
    G[:3, 3] = [1.0, 2.0, -3.0]
    uni = normalize_cameras(w2c, convention="uni3c")
    np.testing.assert_allclose(normalize_cameras(G @ w2c, convention="uni3c"), uni, atol=1e-9)
    assert not np.allclose(normalize_cameras(w2c @ G, convention="uni3c"), uni, atol=1e-3)
    assert not np.allclose(normalize_cameras(w2c), uni, atol=1e-3)
    np.testing.assert_allclose(uni[0, :3, :3], np.eye(3), atol=1e-9)  # camera 0 is the identity either way
    assert np.linalg.norm(np.linalg.inv(uni[0])[:3, 3]) == pytest.approx(2.0)
    # the Plücker maps follow the convention
    K = np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    np.testing.assert_allclose(
        plucker_embedding(w2c, np.tile(K, (9, 1, 1)), 16, 16, convention="uni3c"),
        plucker_embedding(uni, np.tile(K, (9, 1, 1)), 16, 16, normalize=False),
        atol=1e-9,
    )
    with pytest.raises(InvalidCameraError, match="uni3c"):
        normalize_cameras(w2c, convention="left")


def test_normalize_cameras_drops_far_outlier_from_mean():
    # 80 cameras on a unit ring plus one absurdly far camera: the centring ignores the outlier
    # (it lies beyond 10× the 97 % quantile of the distances to the median centre).
    c = np.zeros((81, 3))
    ang = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    c[:80, 0], c[:80, 1] = np.cos(ang), np.sin(ang)
    c[80] = [1e4, 0, 0]
    w2c = np.tile(np.eye(4), (81, 1, 1))
    w2c[:, :3, 3] = -c
    n = normalize_cameras(w2c)
    nc = centers_of(n)
    np.testing.assert_allclose(nc[:80].mean(0), 0.0, atol=1e-9)  # ring centred, not the outlier
    np.testing.assert_allclose(np.linalg.norm(nc[0]), 2.0)


def test_normalize_single_camera_is_identity():
    w2c = random_w2c(1, seed=5)
    np.testing.assert_allclose(normalize_cameras(w2c)[0], np.eye(4), atol=1e-12)


def test_normalize_rejects_non_rigid():
    w2c = random_w2c(3)
    w2c[1, :3, :3] *= 2
    with pytest.raises(InvalidCameraError, match="not rigid"):
        normalize_cameras(w2c)


# --- Plücker rays ------------------------------------------------------------------------------


def test_plucker_shape_order_and_invariants():
    F, H, W = 4, 6, 8
    w2c = torch.tensor(random_w2c(F, seed=7), dtype=torch.float32)
    K = torch.tensor([[9.0, 0, 4], [0, 8, 3], [0, 0, 1]])
    emb = plucker_embedding(w2c, K, H, W)
    assert isinstance(emb, torch.Tensor) and emb.shape == (F, 6, H, W) and emb.dtype == torch.float32
    d, m = emb[:, :3].double(), emb[:, 3:].double()
    assert torch.allclose(d.norm(dim=1), torch.ones(F, H, W, dtype=torch.float64), atol=1e-6)
    assert (d * m).sum(1).abs().max() < 1e-5  # d · (o × d) = 0
    # moment is o × d with o the (normalised) camera centre, for every pixel
    o = torch.tensor(centers_of(normalize_cameras(w2c.double().numpy())))
    expect = torch.cross(o[:, :, None, None].expand_as(d), d, dim=1)
    assert torch.allclose(m, expect, atol=1e-5)


def test_plucker_hand_computed_pixel_uses_release_grid():
    # Identity camera, f = 10, c = (4, 3), 8 × 6 image, no normalisation.
    w2c = np.eye(4)[None]
    K = np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]])
    emb = plucker_embedding(w2c, K, 6, 8, normalize=False)
    # Pixel column i = 2, row j = 1 is sampled at (x, y) = (2 − 0.5, 1 + 0.5) = (1.5, 1.5):
    # camera ray ((1.5 − 4)/10, (1.5 − 3)/10, 1) = (−0.25, −0.15, 1).
    ray = np.array([-0.25, -0.15, 1.0])
    np.testing.assert_allclose(emb[0, :3, 1, 2], ray / np.linalg.norm(ray), atol=1e-12)
    np.testing.assert_allclose(emb[0, 3:, 1, 2], 0.0, atol=1e-12)  # centre at the origin
    # Translated camera (centre c = (1, 2, 3)): moment = c × d
    w2c_t = np.eye(4)[None].copy()
    w2c_t[0, :3, 3] = -np.array([1.0, 2.0, 3.0])
    emb_t = plucker_embedding(w2c_t, K, 6, 8, normalize=False)
    d = ray / np.linalg.norm(ray)
    np.testing.assert_allclose(emb_t[0, 3:, 1, 2], np.cross([1.0, 2.0, 3.0], d), atol=1e-12)


def test_plucker_normalized_equals_plucker_of_normalized_poses():
    w2c = random_w2c(5, seed=11)
    K = np.array([[20.0, 0, 8], [0, 20, 6], [0, 0, 1]])
    a = plucker_embedding(w2c, K, 12, 16, normalize=True)
    b = plucker_embedding(normalize_cameras(w2c), K, 12, 16, normalize=False)
    np.testing.assert_allclose(a, b, atol=1e-12)
    # first view after normalisation has identity rotation: directions are the camera rays
    Kinv = np.linalg.inv(K)
    pix = np.array([3 - 0.5, 4 + 0.5, 1.0])
    d = Kinv @ pix
    np.testing.assert_allclose(a[0, :3, 4, 3], d / np.linalg.norm(d), atol=1e-12)


def test_plucker_and_camera_qt_golden_values_from_release():
    # Numbers printed by the released models/camera.py (get_camera_embedding with
    # normalize=True, is_w2c=True; unified_camera_normalization + matrix_to_quaternion) in
    # float32 for these two cameras. They pin the grid offset, channel order and normalisation.
    w2c = torch.tensor(
        [
            [[1.0, 0, 0, 0.1], [0, 1, 0, -0.2], [0, 0, 1, 0.3], [0, 0, 0, 1]],
            [[0.0, 0, 1, 1.0], [0, 1, 0, 0.0], [-1, 0, 0, 2.0], [0, 0, 0, 1]],
        ]
    )
    K = torch.tensor([[4.0, 0, 2], [0, 4, 1.5], [0, 0, 1]]).expand(2, 3, 3)
    emb = plucker_embedding(w2c, K, 3, 4)
    release_f0_j0_i0 = [-0.51847583, -0.20739034, 0.82956135, 0.27992800, 1.24101400, 0.48520851]
    release_f1_j2_i3 = [-0.96308684, 0.24077171, 0.12038586, 0.12999399, 0.37914914, 0.28165361]
    assert torch.allclose(emb[0, :, 0, 0], torch.tensor(release_f0_j0_i0), atol=1e-6)
    assert torch.allclose(emb[1, :, 2, 3], torch.tensor(release_f1_j2_i3), atol=1e-6)
    # the same pixel by hand: camera 0 has R = I after normalisation; (i=0, j=0) is sampled at
    # (−0.5, 0.5) → ray (−0.625, −0.25, 1)
    ray = torch.tensor([-0.625, -0.25, 1.0])
    assert torch.allclose(emb[0, :3, 0, 0], ray / ray.norm(), atol=1e-6)
    qt, qr = camera_qt(w2c, w2c[1:2])
    release_qt = [
        [1.0, 0.0, 0.0, 0.0, 1.88966942, -0.17996852, -0.62988985],
        [0.70710677, 0.0, 0.70710677, 0.0, 0.62988985, 0.17996852, 1.88966942],
    ]
    assert torch.allclose(qt, torch.tensor(release_qt), atol=1e-6)
    assert torch.allclose(qr[0], qt[1], atol=1e-7)


def test_plucker_bad_inputs():
    w2c = random_w2c(2)
    K = np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]])
    with pytest.raises(InvalidCameraError, match="zero focal"):
        plucker_embedding(w2c, np.array([[0.0, 0, 4], [0, 10, 3], [0, 0, 1]]), 6, 8)
    with pytest.raises(InvalidCameraError, match="intrinsics"):
        plucker_embedding(w2c, np.stack([K] * 3), 6, 8)
    with pytest.raises(InvalidCameraError, match="positive"):
        plucker_embedding(w2c, K, 0, 8)
    with pytest.raises(InvalidCameraError, match="shape"):
        plucker_embedding(w2c[:, :3], K, 6, 8)
    bad = w2c.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidCameraError, match="NaN"):
        plucker_embedding(bad, K, 6, 8)


# --- camera_qt ---------------------------------------------------------------------------------


def test_camera_qt_first_target_identity_and_consistent_with_joint_normalisation():
    w2c = random_w2c(21, seed=4)
    ref = random_w2c(3, seed=9)
    qt, qr = camera_qt(w2c, ref)
    assert qt.shape == (21, 7) and qr.shape == (3, 7) and isinstance(qt, np.ndarray)
    np.testing.assert_allclose(qt[0, :4], [1, 0, 0, 0], atol=1e-12)
    tn, rn = normalize_cameras_joint(w2c, ref)
    np.testing.assert_allclose(qt[:, 4:], tn[:, :3, 3], atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(qr[:, :4]), rn[:, :3, :3], atol=1e-12)
    # targets normalise exactly as normalize_cameras does (references do not affect them)
    np.testing.assert_allclose(tn, normalize_cameras(w2c), atol=1e-10)
    # references keep their pose relative to the targets, up to the same scale
    s = np.linalg.norm(centers_of(tn)[1] - centers_of(tn)[2]) / np.linalg.norm(centers_of(w2c)[1] - centers_of(w2c)[2])
    rel_in = ref[1] @ np.linalg.inv(w2c[3])
    rel_out = rn[1] @ np.linalg.inv(tn[3])
    np.testing.assert_allclose(rel_out[:3, :3], rel_in[:3, :3], atol=1e-10)
    np.testing.assert_allclose(rel_out[:3, 3], s * rel_in[:3, 3], atol=1e-9)


def test_camera_qt_single_view_reference_is_first_target():
    w2c = torch.tensor(random_w2c(21, seed=8), dtype=torch.float32)
    qt, qr = camera_qt(w2c, w2c[:1])
    assert isinstance(qt, torch.Tensor) and qt.dtype == torch.float32
    assert torch.allclose(qr[0], qt[0])
    assert torch.allclose(qt[0, 4:].norm(), torch.tensor(2.0), atol=1e-5)


def test_camera_qt_bad_reference():
    with pytest.raises(InvalidCameraError, match="w2c_ref"):
        camera_qt(random_w2c(3), np.eye(3)[None])
