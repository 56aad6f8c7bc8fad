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
    cam = [
        (-np.array([0, 0, 1.0]), n),
        (np.array([0, 0, 1.0]), -f),
        (-k0, 0.0),
        (k0 - W * k2, 0.0),
        (-k1, 0.0),
        (k1 - H * k2, 0.0),
    ]
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
    half = score_bank(
        _w2c()[None], K_WIDE[None], other[None], K_half[None], 240, 416, mode=mode, bank_sizes=[(120, 208)]
    )
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
    return MemoryBank(
        tuple(torch.full((*hw, 3), 0.5) for _ in range(n)),
        torch.as_tensor(w),
        torch.as_tensor(k),
        tuple(f"v{i}" for i in range(n)),
    )


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
    total = lambda res: sc[np.arange(20), res.assignment.numpy()].sum()
    assert total(cov) >= (1 - 1 / math.e) * total(r)
    # Hand case: three views picked, one allowed. Spread keeps the first in trajectory order;
    # coverage keeps the view that serves every keyframe well (column sum 2.8).
    small = np.array([[1.0, 0.0, 0.9], [0.0, 1.0, 0.9], [0.0, 0.0, 1.0]])
    assert select_references(small, _bank(3), max_refs=1).assignment.tolist() == [0, 0, 0]
    one = select_references(small, _bank(3), max_refs=1, reduce="coverage")
    assert one.bank_indices.tolist() == [2] and one.assignment.tolist() == [2, 2, 2] and one.ref_index.tolist() == [0]
    bank = _bank(
        20,
        np.stack([_w2c(Rotation.from_euler("y", 9 * i, degrees=True).as_matrix(), (0.1 * i, 0, 0)) for i in range(20)]),
    )
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
    r = retrieve(
        traj, _bank(len(bank_poses), w[bank_poses].numpy(), k[bank_poses].numpy(), hw=(48, 64)), max_refs=len(kf)
    )
    assert len(r.slots) == len(traj.keyframes()) - 1  # one target row per model keyframe 1..
    assert r.slots.tolist() == list(range(1, len(kf)))
    assert r.poses.tolist() == kf[1:].tolist()
    # each keyframe retrieves its own camera; ref_index + 1 is the keyframe slot it shows
    assert [int(bank_poses[a]) for a in r.assignment] == kf[1:].tolist()
    for b, ri in zip(r.bank_indices.tolist(), r.ref_index.tolist()):
        assert bank_poses[b] == kf[ri + 1]
        torch.testing.assert_close(w[bank_poses[b]], traj.keyframes().w2c[ri + 1].double())


# ---------------------------------------------------------------------------------------------
# the release's reference cut (dinov2_fps) and retrieval shortcuts
# ---------------------------------------------------------------------------------------------


def test_image_quality_scores_against_independent_math():
    """Grey = OpenCV BGR2GRAY of the RGB array (so 0.114 R + 0.587 G + 0.299 B), Laplacian with
    mirrored borders (scipy's mode='mirror' = OpenCV's REFLECT_101), 256-bin entropy, std."""
    from scipy import ndimage
    from scipy.stats import entropy

    from worldstereo_core.retrieval import image_quality_scores

    g = np.random.default_rng(0)
    img = g.random((23, 31, 3))
    u8 = np.round(img * 255).astype(np.int64)
    gray = np.round(u8 @ np.array([0.114, 0.587, 0.299]))
    (score,) = image_quality_scores([torch.from_numpy(img)])
    ours_gray = (u8[..., 0] * 1868 + u8[..., 1] * 9617 + u8[..., 2] * 4899 + 8192) >> 14
    assert np.abs(ours_gray - gray).max() <= 1  # fixed point vs float weights: at most one level
    lap = ndimage.laplace(ours_gray.astype(float), mode="mirror")
    hist = np.bincount(ours_gray.ravel(), minlength=256)
    expected = 0.4 * np.log1p(lap.var()) + 0.3 * entropy(hist, base=2) + 0.3 * ours_gray.std() / 128
    assert score == pytest.approx(expected, abs=1e-6)
    # a flat image: no sharpness, no entropy, no contrast
    assert image_quality_scores([torch.full((8, 8, 3), 0.5)])[0] == pytest.approx(0.0, abs=1e-6)
    # detail raises the score
    blur = torch.from_numpy(ndimage.uniform_filter(img, size=(5, 5, 1)))
    assert image_quality_scores([torch.from_numpy(img)])[0] > image_quality_scores([blur])[0]


def test_farthest_point_sampling_hand_case_and_quality_bias():
    from worldstereo_core.retrieval import farthest_point_sampling

    # points on a line: start nearest the centroid (2), then the far ends, farthest first
    f = np.array([[0.0], [1.0], [2.1], [3.0], [5.0]])
    assert farthest_point_sampling(f, 3) == [2, 4, 0]
    # two equally far candidates: the sharper image wins (distance × (1 + 0.1·(q − 0.5)))
    f2 = np.array([[0.0], [-1.0], [1.0]])
    assert farthest_point_sampling(f2, 2, quality=np.array([0.5, 0.0, 1.0]))[1] == 2
    assert farthest_point_sampling(f2, 2, quality=np.array([0.5, 1.0, 0.0]))[1] == 1


def _twenty_views(seed: int = 0) -> MemoryBank:
    """20 bank views turning about y; frames are noise of per-view strength (view 7 is flat)."""
    g = torch.Generator().manual_seed(seed)
    w2c = np.stack(
        [_w2c(Rotation.from_euler("y", 9 * i, degrees=True).as_matrix(), (0.1 * i, 0, 0)) for i in range(20)]
    )
    frames = tuple(torch.full((12, 16, 3), 0.5) if i == 7 else torch.rand(12, 16, 3, generator=g) for i in range(20))
    return MemoryBank(
        frames, torch.as_tensor(w2c), torch.as_tensor(np.repeat(K2[None], 20, 0)), tuple(f"v{i}" for i in range(20))
    )


def test_release_cut_dinov2_fps():
    bank = _twenty_views()
    sc = _diag_scores()  # keyframe t prefers view t
    seen = []

    def clustered(images):  # image features: views 0-9 one cluster, 10-19 another, far apart
        seen.append(len(images))
        ids = [next(i for i, f in enumerate(bank.frames) if f is im) for im in images]
        return np.array([[100.0 * (i >= 10), float(i % 10)] for i in ids])

    r = select_references(sc, bank, max_refs=8, reduce="dinov2_fps", image_features=clustered)
    assert seen == [20]  # one feature per distinct candidate view
    kept = r.bank_indices.tolist()
    assert 1 <= len(kept) <= 8 and len(set(kept)) == len(kept)
    assert any(k < 10 for k in kept) and any(k >= 10 for k in kept)  # both image clusters
    # every keyframe is re-assigned to its best kept view; ref_index = its first keyframe
    assert set(r.assignment.tolist()) == set(kept)
    assert all(sc[t, a] == max(sc[t, k] for k in kept) for t, a in enumerate(r.assignment.tolist()))
    assert r.ref_index.tolist() == [r.assignment.tolist().index(k) for k in kept]
    # deterministic; differs from the camera-only rule once images matter
    again = select_references(sc, bank, max_refs=8, reduce="dinov2_fps", image_features=clustered)
    assert again.bank_indices.tolist() == kept
    # the flat view 7 loses near-ties to textured ones: with identical image features everywhere,
    # the selection is the camera FPS reweighted by quality, and 7 (quality 0) is never the start
    flat = select_references(
        sc, bank, max_refs=8, reduce="dinov2_fps", image_features=lambda im: np.zeros((len(im), 4))
    )
    assert flat.bank_indices.tolist()[0] != 7
    with pytest.raises(InvalidTrajectoryError, match="DINOv2"):
        select_references(sc, bank, max_refs=8, reduce="dinov2_fps")
    with pytest.raises(InvalidTrajectoryError, match="one row per image"):
        select_references(sc, bank, max_refs=8, reduce="dinov2_fps", image_features=lambda im: np.zeros((1, 4)))
    # no cut needed: the features are never computed
    seen.clear()
    assert len(select_references(sc, bank, max_refs=20, reduce="dinov2_fps", image_features=clustered)) == 20
    assert seen == []


def test_release_cut_counts_every_keyframe_row():
    """The release samples over one row per target keyframe: a view chosen by many keyframes
    pulls the centroid (and so the first pick) towards itself."""
    from worldstereo_core.retrieval import _release_cut

    bank = _twenty_views()
    no_images = lambda im: np.zeros((len(im), 2))
    once = _release_cut(np.arange(10), bank, 4, no_images)
    heavy = _release_cut(np.array([0] * 11 + list(range(1, 10))), bank, 4, no_images)  # view 0 by 11 keyframes
    assert len(once) == len(heavy) == 4
    assert heavy[0] < once[0]  # the start (nearest the centroid) moves towards view 0


def test_shortcut_bonus_follows_the_release_slots():
    from worldstereo_core.retrieval import RetrievalShortcut, shortcut_bonus

    sources = ["input"] + [f"traj0:orbit:kf{i}" for i in range(8)] + [f"traj1:up:kf{i}" for i in range(8)]
    slots = np.arange(1, 21)
    b = shortcut_bonus(RetrievalShortcut("aerial", "traj0:orbit"), sources, slots, 21)
    pool = [4, 6, 8]  # the clip's entries 3, 5, 7 (bank indices 1 + 3, 1 + 5, 1 + 7)
    for row, slot in enumerate(slots):
        if slot in (4, 8, 12, 16):
            assert b[row].sum() == 0
        else:
            assert b[row].tolist() == [1.0 if c == pool[int(slot / 21 * 3)] else 0.0 for c in range(len(sources))]
    v1 = shortcut_bonus(RetrievalShortcut("view_first", "traj1:up"), sources, slots, 21)
    assert sorted(int(s) for s in slots[v1.sum(1) > 0]) == [1, 2, 3, 5, 7, 9, 13, 17]
    assert set(np.nonzero(v1)[1].tolist()) <= {12, 14, 16}
    v2 = shortcut_bonus(RetrievalShortcut("view_second", "traj1:up"), sources, slots, 21)
    assert set(np.nonzero(v2)[1].tolist()) == {12}  # first half (4 entries)[3::2] = entry 3
    # "traj1" alone matches "traj1:up:…" but not "traj10:…"; an unknown clip gives no bonus
    assert shortcut_bonus(RetrievalShortcut("aerial", "traj1"), sources + ["traj10:x:kf0"], slots, 21)[:, -1].sum() == 0
    assert shortcut_bonus(RetrievalShortcut("aerial", "traj7"), sources, slots, 21).sum() == 0
    with pytest.raises(InvalidTrajectoryError, match="unknown retrieval shortcut"):
        RetrievalShortcut("wonder", "traj0")
    with pytest.raises(InvalidTrajectoryError, match="bank label"):
        RetrievalShortcut("aerial", " ")


def test_retrieve_with_a_shortcut_takes_the_pushed_views():
    from worldstereo_core.cameras import intrinsics_from_fov
    from worldstereo_core.retrieval import RetrievalShortcut
    from worldstereo_core.trajectory import make_preset

    first = Cameras(torch.eye(4, dtype=torch.float64)[None], intrinsics_from_fov(60, 24, 32), 24, 32)
    traj = make_preset("left", first, 2.0)
    far = make_preset("right", first, 2.0).keyframes()  # looks the other way: low overlap
    frames = torch.rand(len(far), 24, 32, 3)
    bank = MemoryBank.from_views(frames[:1], traj.keyframes()[:1], ["input"])
    bank = bank.update(frames, far, "traj0:right")
    plain = retrieve(traj, bank)
    pushed = retrieve(traj, bank, shortcut=RetrievalShortcut("aerial", "traj0:right"))
    clip = [i for i, s in enumerate(bank.sources) if s.startswith("traj0:right:")]
    pool = clip[3::2]
    free = {4, 8, 12, 16}
    for row, slot in enumerate(pushed.slots.tolist()):
        if slot not in free:
            assert pushed.assignment[row] == pool[int(slot / 21 * len(pool))]
        else:
            assert pushed.assignment[row] == plain.assignment[row]
    # reported scores are overlaps, never the +1 bonus
    assert float(pushed.scores.max()) <= 1.0
