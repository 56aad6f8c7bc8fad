"""Retrieval: hand-computed frustum boxes, analytic volumes, the fixture panorama bank."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection
from scipy.spatial.transform import Rotation

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidCameraError, InvalidTrajectoryError
from worldstereo_core.memory import MemoryBank
from worldstereo_core.retrieval import (
    angle_penalty,
    frustum_corners,
    retrieve,
    score_bank,
    select_references,
)
from worldstereo_core.trajectory import Trajectory

# A 2×2 image with f = 1 and the principal point at the centre: corner rays (±1, ±1, 1).
K2 = np.array([[1.0, 0, 1], [0, 1, 1], [0, 0, 1]])
L = 10 / math.sqrt(3)  # far corner coordinates along each axis (unit rays scaled to 10)


def _w2c(R=np.eye(3), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    w = np.eye(4)
    w[:3, :3] = R
    w[:3, 3] = -R @ np.asarray(centre)
    return w


def test_frustum_corners_are_unit_rays_scaled():
    c = frustum_corners(_w2c()[None], K2[None], 2, 2)
    r = 1 / math.sqrt(3)
    expected_near = 0.1 * r * np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])
    np.testing.assert_allclose(c[0, :4], expected_near, atol=1e-12)
    np.testing.assert_allclose(c[0, 4:], expected_near * 100, atol=1e-10)
    # Distance from the centre is near / far (spherical caps, not z-planes).
    np.testing.assert_allclose(np.linalg.norm(c[0], axis=1), [0.1] * 4 + [10.0] * 4)


def test_aabb_score_translation_hand_computed():
    # Box of the frustum: x, y in [-L, L], z in [0.1/√3, L]. Shifting the camera by a along x
    # shifts the box: IoU = (2L − a) / (2L + a); same orientation → penalty 1.
    a = 3.0
    s = score_bank(_w2c()[None], K2[None], np.stack([_w2c(), _w2c(centre=(a, 0, 0))]), K2[None].repeat(2, 0), 2, 2)
    assert s.shape == (1, 2)
    assert s[0, 0] == pytest.approx(1.0, abs=1e-8)  # identical camera
    assert s[0, 1] == pytest.approx((2 * L - a) / (2 * L + a), rel=1e-9)


def test_aabb_facing_away_is_zero_and_penalty_values():
    back = _w2c(Rotation.from_euler("y", 180, degrees=True).as_matrix())
    s = score_bank(_w2c()[None], K2[None], back[None], K2[None], 2, 2)
    assert s[0, 0] == 0.0
    assert float(angle_penalty(torch.tensor(90.0))) == 1.0
    assert float(angle_penalty(torch.tensor(30.0))) == 1.0
    assert float(angle_penalty(torch.tensor(180.0))) == pytest.approx(math.exp(-2.5))
    # Penalty applied exactly for a 120° turn at the same centre.
    turn = _w2c(Rotation.from_euler("y", 120, degrees=True).as_matrix())
    raw = score_bank(_w2c()[None], K2[None], turn[None], K2[None], 2, 2, use_angle_penalty=False)
    pen = score_bank(_w2c()[None], K2[None], turn[None], K2[None], 2, 2)
    assert raw[0, 0] > 0
    assert pen[0, 0] == pytest.approx(raw[0, 0] * math.exp(-30 / 180 * 5), rel=1e-9)


def _halfspaces(w2c, K, W, H, n=0.1, f=10.0):
    """Rows [a, b] with a·X + b ≤ 0 describing the z-depth frustum in world coordinates."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    k0, k1, k2 = K
    cam = [(-np.array([0, 0, 1.0]), n), (np.array([0, 0, 1.0]), -f), (-k0, 0.0), (k0 - W * k2, 0.0), (-k1, 0.0), (k1 - H * k2, 0.0)]
    return np.array([np.append(a @ R, a @ t + b) for a, b in cam])


def _volume(hs):
    A, b = hs[:, :3], hs[:, 3]
    nrm = np.linalg.norm(A, axis=1)
    res = linprog([0, 0, 0, -1.0], A_ub=np.hstack([A, nrm[:, None]]), b_ub=-b, bounds=[(None, None)] * 3 + [(0, None)])
    if res.status != 0 or res.x[3] < 1e-9:
        return 0.0
    return ConvexHull(HalfspaceIntersection(hs, res.x[:3]).intersections).volume


K_WIDE = np.array([[300.0, 0, 208], [0, 300, 120], [0, 0, 1]])


def test_volume_mode_identical_disjoint_and_forward_shift():
    W, H, n, f = 416, 240, 0.1, 10.0
    cams = np.stack([_w2c(), _w2c(centre=(0, 0, 100.0)), _w2c(centre=(0, 0, 2.0))])
    s = score_bank(_w2c()[None], K_WIDE[None], cams, K_WIDE[None].repeat(3, 0), H, W, mode="volume")
    assert s[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert s[0, 1] == 0.0
    # Forward shift by d: the shifted pyramid lies inside the first for z > d, so
    # I/V = ((f − d)³ − n³) / (f³ − n³) and IoU = I / (2V − I).
    d = 2.0
    r = ((f - d) ** 3 - n**3) / (f**3 - n**3)
    assert s[0, 2] == pytest.approx(r / (2 - r), abs=0.005)


def test_volume_mode_matches_exact_polyhedral_iou():
    rng = np.random.default_rng(0)
    W, H = 416, 240
    for _ in range(4):
        other = _w2c(Rotation.from_rotvec(rng.normal(size=3) * 0.4).as_matrix(), rng.normal(size=3) * 1.5)
        h1, h2 = _halfspaces(_w2c(), K_WIDE, W, H), _halfspaces(other, K_WIDE, W, H)
        v1, v2, vi = _volume(h1), _volume(h2), _volume(np.vstack([h1, h2]))
        exact = vi / (v1 + v2 - vi)
        assert v1 == pytest.approx(W * H / 300**2 * (10**3 - 0.1**3) / 3, rel=1e-9)
        got = score_bank(_w2c()[None], K_WIDE[None], other[None], K_WIDE[None], H, W, mode="volume")[0, 0]
        assert got == pytest.approx(exact, abs=0.005)


@pytest.mark.parametrize("mode", ["aabb", "volume"])
def test_bank_sizes_per_camera(mode):
    # The same frustum described at half resolution must score the same.
    other = _w2c(Rotation.from_euler("y", 20, degrees=True).as_matrix(), (0.3, 0, 0))
    K_half = K_WIDE.copy()
    K_half[:2] /= 2
    full = score_bank(_w2c()[None], K_WIDE[None], other[None], K_WIDE[None], 240, 416, mode=mode)
    half = score_bank(_w2c()[None], K_WIDE[None], other[None], K_half[None], 240, 416, mode=mode, bank_sizes=[(120, 208)])
    assert half[0, 0] == pytest.approx(full[0, 0], abs=1e-9)
    wrong = score_bank(_w2c()[None], K_WIDE[None], other[None], K_half[None], 240, 416, mode=mode)
    assert abs(wrong[0, 0] - full[0, 0]) > 1e-3  # without sizes it is a different frustum


def test_score_bank_kinds_and_errors():
    t = torch.from_numpy(_w2c())[None]
    s = score_bank(t, torch.from_numpy(K2)[None], t, torch.from_numpy(K2)[None], 2, 2)
    assert isinstance(s, torch.Tensor) and s.shape == (1, 1)
    with pytest.raises(InvalidCameraError, match="unknown retrieval mode"):
        score_bank(t, K2[None], t, K2[None], 2, 2, mode="iou")
    with pytest.raises(InvalidCameraError, match="near < far"):
        score_bank(t, K2[None], t, K2[None], 2, 2, near=1.0, far=0.5)
    with pytest.raises(InvalidCameraError, match="bank_sizes"):
        score_bank(t, K2[None], t, K2[None], 2, 2, bank_sizes=[(1, 2), (3, 4)])
    with pytest.raises(InvalidCameraError, match="intrinsics"):
        score_bank(t, K2[None], t.repeat(2, 1, 1), K2[None].repeat(3, 0), 2, 2)
    with pytest.raises(InvalidCameraError, match="rigid"):
        score_bank(t * 2, K2[None], t, K2[None], 2, 2)
    with pytest.raises(InvalidCameraError, match="zero focal"):
        score_bank(t, np.zeros((1, 3, 3)), t, K2[None], 2, 2)
    with pytest.raises(InvalidCameraError, match="positive"):
        score_bank(t, K2[None], t, K2[None], 2, 0)


def _bank(n: int, w2c: np.ndarray | None = None, K: np.ndarray | None = None, hw=(2, 2)) -> MemoryBank:
    """A memory bank of ``n`` views (flat grey frames of ``hw``); identity cameras by default."""
    w = np.repeat(np.eye(4)[None], n, 0) if w2c is None else w2c
    k = np.repeat(K2[None], n, 0) if K is None else K
    return MemoryBank(tuple(torch.full((*hw, 3), 0.5) for _ in range(n)), torch.as_tensor(w), torch.as_tensor(k),
                      tuple(f"v{i}" for i in range(n)))


def _diag_scores(T=20, N=20):
    t, c = np.meshgrid(np.arange(T), np.arange(N), indexing="ij")
    return np.exp(-np.abs(t - c).astype(float))


def test_select_references_first_slot_and_ties():
    # Keyframes 1..4 choose bank views 5, 5, 2, 5 → refs [5, 2] at slots 1 and 3.
    sc = np.zeros((4, 6))
    sc[[0, 1, 3], 5] = 1.0
    sc[2, 2] = 1.0
    sc[2, 4] = 1.0  # tie with view 2: the lower index wins
    r = select_references(sc, _bank(6))
    assert r.bank_indices.tolist() == [5, 2]
    assert r.ref_slot.tolist() == [1, 3]
    assert r.ref_index.tolist() == [0, 2]
    assert r.assignment.tolist() == [5, 5, 2, 5]
    r2 = select_references(sc, _bank(6), keyframe_slots=[2, 4, 6, 8])
    assert r2.ref_slot.tolist() == [2, 6] and r2.ref_index.tolist() == [1, 5]


def test_select_references_reductions():
    sc = _diag_scores()  # 20 keyframes, each prefers its own view
    r = select_references(sc, _bank(20), max_refs=8)
    # spread: positions floor(linspace(0, 19, 8) + 0.5) of the first-choice order.
    kept = [0, 3, 5, 8, 11, 14, 16, 19]
    assert r.bank_indices.tolist() == kept
    # Each keyframe re-assigned to the nearest kept view (ties → lower index).
    expected = [min(kept, key=lambda k: (abs(k - t), k)) for t in range(20)]
    assert r.assignment.tolist() == expected
    assert r.ref_index.tolist() == [expected.index(k) for k in kept]
    cov = select_references(sc, _bank(20), max_refs=8, reduce="coverage")
    assert len(cov) == 8 and len(set(cov.bank_indices.tolist())) == 8
    # Greedy coverage is within (1 − 1/e) of the best 8-subset (submodular maximisation),
    # so it cannot fall far below spread's subset.
    total = lambda res: sc[np.arange(20), res.assignment.numpy()].sum()  # noqa: E731
    assert total(cov) >= (1 - 1 / math.e) * total(r)
    # Hand case: three views picked, one allowed. Spread keeps the first in trajectory order;
    # coverage keeps the view that serves every keyframe well (column sum 2.8).
    small = np.array([[1.0, 0.0, 0.9], [0.0, 1.0, 0.9], [0.0, 0.0, 1.0]])
    assert select_references(small, _bank(3), max_refs=1).assignment.tolist() == [0, 0, 0]
    one = select_references(small, _bank(3), max_refs=1, reduce="coverage")
    assert one.bank_indices.tolist() == [2] and one.assignment.tolist() == [2, 2, 2] and one.ref_index.tolist() == [0]
    bank = _bank(20, np.stack([_w2c(Rotation.from_euler("y", 9 * i, degrees=True).as_matrix(), (0.1 * i, 0, 0)) for i in range(20)]))
    fps = select_references(sc, bank, max_refs=8, reduce="fps")
    assert len(fps) == 8
    assert fps.bank_indices.tolist() == select_references(sc, bank, max_refs=8, reduce="fps").bank_indices.tolist()
    assert len(select_references(sc, _bank(20), max_refs=25)) == 20


def test_select_references_errors():
    with pytest.raises(InvalidTrajectoryError, match="non-empty"):
        select_references(np.zeros((0, 3)), _bank(3))
    with pytest.raises(InvalidTrajectoryError, match="NaN"):
        select_references(np.full((2, 2), np.nan), _bank(2))
    with pytest.raises(InvalidTrajectoryError, match="one per row"):
        select_references(np.ones((2, 2)), _bank(2), keyframe_slots=[1])
    with pytest.raises(InvalidTrajectoryError, match="increasing"):
        select_references(np.ones((2, 2)), _bank(2), keyframe_slots=[0, 1])
    with pytest.raises(InvalidTrajectoryError, match="max_refs"):
        select_references(np.ones((2, 2)), _bank(2), max_refs=0)
    with pytest.raises(InvalidCameraError, match="unknown reduce"):
        select_references(_diag_scores(), _bank(20), reduce="dinov2")
    with pytest.raises(InvalidTrajectoryError, match="score the bank"):
        select_references(_diag_scores(), _bank(3))


def _pano(fixtures_dir):
    root = fixtures_dir / "upstream_examples/examples/panorama/9c2dd62c7bb946a49e8e51278277eb6a"
    bank = json.loads((root / "pano_bank/cameras.json").read_text())
    keys = sorted(bank)
    bw = np.array([bank[k]["extrinsic"] for k in keys])
    bk = np.array([bank[k]["intrinsic"] for k in keys])
    return root, bw, bk


def _pano_bank(bw: np.ndarray, bk: np.ndarray) -> MemoryBank:
    """The fixture bank at 1/16 of its 480×832 size (K scaled with it: the same frustums)."""
    k = bk.copy()
    k[:, :2] /= 16
    return _bank(len(bw), bw, k, hw=(30, 52))


@pytest.mark.parametrize(
    "traj, indices, ref_index",
    [
        # right rotation: the start view, then the bank view 10 it turns towards
        ("view0/traj0", [0, 10], [0, 6]),
        # left rotation: mirror image (bank view 3 is the mirror of 10)
        ("view0/traj1", [0, 3], [0, 6]),
        # surround move: six views following the sweep
        ("target_machine_0/traj0", [10, 2, 26, 25, 24, 23], [0, 1, 7, 12, 16, 19]),
    ],
)
def test_fixture_pano_bank_retrieval_is_deterministic(fixtures_dir, traj, indices, ref_index):
    root, bw, bk = _pano(fixtures_dir)
    cam = json.loads((root / traj / "camera.json").read_text())
    tw, tk = np.array(cam["extrinsic"]), np.array(cam["intrinsic"])
    bank = _pano_bank(bw, bk)
    a = retrieve(Cameras(torch.from_numpy(tw), torch.from_numpy(tk), 480, 832), bank)
    b = retrieve(Trajectory(Cameras(torch.from_numpy(tw).float(), torch.from_numpy(tk).float(), 480, 832)), bank)
    assert a.bank_indices.tolist() == b.bank_indices.tolist() == indices
    assert a.ref_index.tolist() == b.ref_index.tolist() == ref_index
    assert len(a.assignment) == 20 and a.slots.tolist() == list(range(1, 21))
    # The first keyframe sits right next to keyframe 0, which looks along bank view 0 (same
    # rotation): for the rotations it must retrieve bank view 0.
    if "traj" in traj and traj.startswith("view0"):
        np.testing.assert_allclose(tw[0, :3, :3], bw[0, :3, :3], atol=1e-6)
        assert a.assignment[0] == 0


def test_retrieve_subsamples_81_poses(fixtures_dir):
    root, bw, bk = _pano(fixtures_dir)
    cam = json.loads((root / "view0/traj0/camera.json").read_text())
    tw, tk = np.array(cam["extrinsic"]), np.array(cam["intrinsic"])
    # Upsample 21 keyframes to 81 poses by repeating; every 4th pose gives them back.
    w81 = np.concatenate([np.repeat(tw[:-1], 4, 0), tw[-1:]])
    k81 = np.concatenate([np.repeat(tk[:-1], 4, 0), tk[-1:]])
    bank = _pano_bank(bw, bk)

    def cams(w, k):
        return Cameras(torch.from_numpy(w), torch.from_numpy(k), 480, 832)

    assert retrieve(cams(w81, k81), bank).assignment.tolist() == retrieve(cams(tw, tk), bank).assignment.tolist()
    with pytest.raises(InvalidTrajectoryError, match="at least 2"):
        retrieve(cams(tw[:1], tk[:1]), bank)
    with pytest.raises(InvalidTrajectoryError, match="MemoryBank"):
        retrieve(cams(tw, tk), bank.w2c)


@pytest.mark.parametrize("num_poses", [2, 41, 81, 101, 1024])
def test_retrieval_targets_are_the_models_keyframes(num_poses):
    """Retrieval scores exactly the keyframes the model generates (one definition), whatever the
    pose count: a bank holding every keyframe's own camera (shuffled) is retrieved one to one,
    and each reference's ref_index points at the keyframe whose pose it shows."""
    from worldstereo_core.cameras import Cameras, intrinsics_from_fov
    from worldstereo_core.trajectory import keyframe_indices, make_preset

    first = Cameras(torch.eye(4, dtype=torch.float64)[None], intrinsics_from_fov(60, 48, 64), 48, 64)
    traj = make_preset("left", first, 2.0, num_frames=num_poses)
    kf = keyframe_indices(num_poses)
    np.testing.assert_array_equal(kf, traj.keyframe_indices())
    assert len(kf) == min(num_poses, 21) and kf[0] == 0 and kf[-1] == num_poses - 1
    order = np.random.default_rng(num_poses).permutation(len(kf) - 1)
    bank_poses = kf[1:][order]  # bank view b shows trajectory pose bank_poses[b]
    w, k = traj.w2c.double(), traj.K.double()
    r = retrieve(traj, _bank(len(bank_poses), w[bank_poses].numpy(), k[bank_poses].numpy(), hw=(48, 64)), max_refs=len(kf))
    assert len(r.slots) == len(traj.keyframes()) - 1  # one target row per model keyframe 1..
    assert r.slots.tolist() == list(range(1, len(kf)))
    assert r.poses.tolist() == kf[1:].tolist()
    # each keyframe retrieves its own camera; ref_index + 1 is the keyframe slot it shows
    assert [int(bank_poses[a]) for a in r.assignment] == kf[1:].tolist()
    for b, ri in zip(r.bank_indices.tolist(), r.ref_index.tolist()):
        assert bank_poses[b] == kf[ri + 1]
        torch.testing.assert_close(w[bank_poses[b]], traj.keyframes().w2c[ri + 1].double())
