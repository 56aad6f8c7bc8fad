"""Trajectories: presets, keyframes, obstacle-aware shortening and camera.json I/O."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from worldstereo_core.cameras import Cameras, intrinsics_from_fov, look_at_c2w
from worldstereo_core.errors import CorruptFileError, InvalidFileError, InvalidTrajectoryError
from worldstereo_core.trajectory import (
    PRESETS,
    EmptyCameraJsonError,
    Trajectory,
    from_keyframes,
    keyframe_indices,
    load_camera_json,
    make_preset,
    preset_from_controls,
    save_camera_json,
    shorten_against_cloud,
)

H, W = 48, 64


def first_camera(seed: int | None = None) -> Cameras:
    w2c = np.eye(4)
    if seed is not None:
        w2c[:3, :3] = Rotation.random(random_state=seed).as_matrix()
        w2c[:3, 3] = np.random.default_rng(seed).normal(size=3)
    return Cameras(torch.tensor(w2c[None]), intrinsics_from_fov(60, H, W), H, W)


def project(cams: Cameras, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [F, 2] and z-depth [F] of world point X in every camera."""
    w2c = cams.w2c.double().numpy()
    Xc = w2c[:, :3, :3] @ X + w2c[:, :3, 3]
    uv = np.einsum("fij,fj->fi", cams.K.double().numpy(), Xc)
    return uv[:, :2] / uv[:, 2:], Xc[:, 2]


def rot_angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


# --- Trajectory --------------------------------------------------------------------------------


def test_keyframe_indices_follow_release_linspace():
    cams = make_preset("left", first_camera(), 2.0, 81)
    assert len(cams) == 81
    np.testing.assert_array_equal(cams.keyframe_indices(), np.arange(0, 81, 4))
    kf = cams.keyframes()
    assert len(kf) == 21 and torch.equal(kf.w2c[5], cams.w2c[20])
    np.testing.assert_array_equal(keyframe_indices(41), np.arange(0, 41, 2))
    np.testing.assert_array_equal(keyframe_indices(101), np.arange(0, 101, 5))
    # 50 poses: linspace(0, 49, 21) truncated (2.45 → 2, 4.9 → 4, 7.35 → 7, …)
    t50 = make_preset("up", first_camera(), 2.0, 50)
    idx = t50.keyframe_indices()
    np.testing.assert_array_equal(idx[:5], [0, 2, 4, 7, 9])
    assert idx[-1] == 49 and len(idx) == 21
    # short trajectories are used whole
    np.testing.assert_array_equal(make_preset("up", first_camera(), 2.0, 10).keyframe_indices(), np.arange(10))
    with pytest.raises(InvalidTrajectoryError):
        t50.keyframe_indices(0)


def test_trajectory_rejects_non_cameras():
    with pytest.raises(InvalidTrajectoryError):
        Trajectory(np.eye(4)[None])  # type: ignore[arg-type]


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_starts_at_first_camera(name):
    first = first_camera(seed=3)
    traj = make_preset(name, first, 2.5)
    assert len(traj) == 81 and traj.name == name
    assert torch.allclose(traj.w2c[0], first.w2c[0], atol=1e-12)
    assert torch.equal(traj.K, first.K.expand(81, 3, 3))
    assert (traj.cameras.height, traj.cameras.width) == (H, W)


def test_up_45_rotates_about_centre_at_median_depth():
    m = 3.0
    first = first_camera(seed=5)
    traj = make_preset("up", first, m)
    c2w0 = first.c2w[0].double().numpy()
    centre = c2w0[:3, 3] + m * c2w0[:3, 2]
    uv, z = project(traj.cameras, centre)
    # the centre stays at the principal point at depth m in every frame
    np.testing.assert_allclose(uv, np.tile([W / 2, H / 2], (81, 1)), atol=1e-9)
    np.testing.assert_allclose(z, m, atol=1e-12)
    rel = np.linalg.inv(c2w0) @ traj.cameras.c2w[-1].double().numpy()
    assert rot_angle_deg(rel[:3, :3]) == pytest.approx(45.0, abs=1e-9)
    # about the camera x axis, lifting the camera (−y in OpenCV) and pitching it down
    np.testing.assert_allclose(rel[:3, 3], [0, -m * math.sin(math.pi / 4), m * (1 - math.cos(math.pi / 4))], atol=1e-12)
    # linear in angle: frame 40 is at 22.5°
    rel40 = np.linalg.inv(c2w0) @ traj.cameras.c2w[40].double().numpy()
    assert rot_angle_deg(rel40[:3, :3]) == pytest.approx(22.5, abs=1e-9)


@pytest.mark.parametrize("name,sign", [("left", -1), ("right", 1)])
def test_left_right_90_orbit_the_centre(name, sign):
    m = 2.0
    traj = make_preset(name, first_camera(), m)
    c2w = traj.cameras.c2w.double().numpy()
    np.testing.assert_allclose(c2w[-1, :3, 3], [sign * m, 0, m], atol=1e-12)
    assert rot_angle_deg(c2w[-1, :3, :3]) == pytest.approx(90.0)
    uv, z = project(traj.cameras, np.array([0, 0, m]))
    np.testing.assert_allclose(uv, np.tile([W / 2, H / 2], (81, 1)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3] - [0, 0, m], axis=1), m)


def test_orbit_and_eloop_close_and_look_at_centre():
    m = 4.0
    for name, rx, ry in [("orbit", 0.3, 0.3), ("eloop", 0.3, 0.4)]:
        traj = make_preset(name, first_camera(), m)
        c = traj.cameras.centers.double().numpy()
        np.testing.assert_allclose(c[-1], c[0], atol=1e-9)  # closed loop
        np.testing.assert_allclose(c[:, 2], 0, atol=1e-12)  # in the first camera's image plane
        np.testing.assert_allclose(c[:, 0].max(), rx * m, rtol=1e-3)
        np.testing.assert_allclose(c[:, 1].min(), -2 * ry * m, rtol=1e-9)  # half-way: a = π
        uv, _ = project(traj.cameras, np.array([0, 0, m]))
        np.testing.assert_allclose(uv, np.tile([W / 2, H / 2], (81, 1)), atol=1e-9)


def test_forward_backward_pan():
    m = 2.0
    fwd = make_preset("forward", first_camera(), m, distance=0.5)
    np.testing.assert_allclose(fwd.cameras.centers[-1].numpy(), [0, 0, 1.0], atol=1e-12)
    bwd = make_preset("backward", first_camera(), m, distance=0.25)
    np.testing.assert_allclose(bwd.cameras.centers[-1].numpy(), [0, 0, -0.5], atol=1e-12)
    pan = make_preset("pan", first_camera(), m, angle=30)
    np.testing.assert_allclose(pan.cameras.centers.numpy(), 0, atol=1e-12)
    z_last = pan.cameras.c2w[-1, :3, 2].numpy()
    np.testing.assert_allclose(z_last, [math.sin(math.radians(30)), 0, math.cos(math.radians(30))], atol=1e-12)


def test_aerial_rises_then_turns():
    m = 2.0
    traj = make_preset("aerial", first_camera(), m, 81, theta=30, phi=90)
    c2w = traj.cameras.c2w.double().numpy()
    n_phi = round(90 / 120 * 80)  # the release's split of the 80 moves
    mid = c2w[80 - n_phi]
    assert rot_angle_deg(mid[:3, :3]) == pytest.approx(30.0)
    np.testing.assert_allclose(mid[:3, 3], [0, -m * 0.5, m * (1 - math.cos(math.radians(30)))], atol=1e-12)
    # the turn keeps the height and the distance to the vertical line through the centre
    np.testing.assert_allclose(c2w[80 - n_phi :, 1, 3], -m * 0.5, atol=1e-12)
    r = np.linalg.norm(c2w[80 - n_phi :, [0, 2], 3] - [0, m], axis=1)
    np.testing.assert_allclose(r, r[0], atol=1e-12)
    uv, _ = project(traj.cameras, np.array([0, 0, m]))
    np.testing.assert_allclose(uv, np.tile([W / 2, H / 2], (81, 1)), atol=1e-9)


RECON = "upstream_examples/examples/reconstruction"


@pytest.mark.parametrize("scene", ["bicycle", "Caterpillar"])
def test_presets_reproduce_release_reconstruction_trajectories(fixtures_dir, scene):
    base = fixtures_dir / RECON / scene / "renders"
    eloop = load_camera_json(base / "traj_eloop" / "camera.json")
    rel = torch.linalg.inv(eloop.cameras.c2w[0]) @ eloop.cameras.c2w[5]
    m = float(rel[0, 3]) / 0.3  # the ellipse's x radius at a = π/2 is 0.3·m
    first = eloop.cameras[0]
    # the release turns about the gravity axis of its world frame: world_up = −y there
    up = {"world_up": (0, -1, 0)}
    for name, kw in [("eloop", {}), ("up", up), ("left", {"angle": 180, **up}), ("right", {"angle": 180, **up})]:
        ref = load_camera_json(base / f"traj_{name}" / "camera.json")
        ours = make_preset(name, first, m, len(ref), **kw)
        assert torch.allclose(ours.w2c, ref.w2c, atol=1e-5), name


def test_preset_bad_inputs():
    first = first_camera()
    with pytest.raises(InvalidTrajectoryError, match="unknown preset"):
        make_preset("spiral", first, 1.0)
    with pytest.raises(InvalidTrajectoryError, match="does not take"):
        make_preset("up", first, 1.0, radius_x=2)
    with pytest.raises(InvalidTrajectoryError, match="median depth"):
        make_preset("up", first, 0.0)
    with pytest.raises(InvalidTrajectoryError, match="median depth"):
        make_preset("up", first, float("nan"))
    with pytest.raises(InvalidTrajectoryError, match="exactly 1"):
        make_preset("up", Cameras.cat([first, first]), 1.0)
    with pytest.raises(InvalidTrajectoryError, match="at least 2"):
        make_preset("up", first, 1.0, num_frames=1)
    with pytest.raises(InvalidTrajectoryError, match="world_up"):
        make_preset("up", first, 1.0, world_up=(0, 0, 0))
    with pytest.raises(InvalidTrajectoryError, match="≥ 0"):
        make_preset("forward", first, 1.0, distance=-1)


# --- keyframes ---------------------------------------------------------------------------------


def test_from_keyframes_slerp_midpoint_and_endpoints():
    K = intrinsics_from_fov(60, H, W)
    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = Rotation.from_euler("y", 90, degrees=True).as_matrix().T  # w2c of a camera turned 90°
    b[:3, 3] = -b[:3, :3] @ np.array([2.0, 0, 0])  # centred at (2, 0, 0)
    traj = from_keyframes([a, b], K, H, W, num_frames=5, position_interp="linear")
    c2w = traj.cameras.c2w.double().numpy()
    np.testing.assert_allclose(traj.w2c[0].numpy(), a, atol=1e-12)
    np.testing.assert_allclose(traj.w2c[-1].numpy(), b, atol=1e-12)
    # midpoint: 45° about y, centre half-way
    np.testing.assert_allclose(c2w[2, :3, :3], Rotation.from_euler("y", 45, degrees=True).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(c2w[2, :3, 3], [1.0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[1, :3, :3], Rotation.from_euler("y", 22.5, degrees=True).as_matrix(), atol=1e-12)


def test_from_keyframes_look_at_and_cubic_through_keyframes():
    K = intrinsics_from_fov(60, H, W)
    target = np.array([0.0, 0, 5])
    kfs = [(np.array([x, 0.0, 0.0]), target) for x in (-2.0, 0.0, 1.0, 3.0)]
    traj = from_keyframes(kfs, K, H, W, num_frames=31, times=[0, 10, 20, 30])
    c = traj.cameras.centers.double().numpy()
    np.testing.assert_allclose(c[[0, 10, 20, 30], 0], [-2, 0, 1, 3], atol=1e-12)
    # keyframe poses look at the target (the principal point images it); camera is upright
    uv, _ = project(traj.cameras, target)
    np.testing.assert_allclose(uv[[0, 10, 20, 30]], np.tile([W / 2, H / 2], (4, 1)), atol=1e-9)
    np.testing.assert_allclose(traj.cameras.c2w[10, :3, :3].numpy(), np.eye(3), atol=1e-12)
    # natural cubic spline: smooth, so the velocity is continuous at the middle keyframes
    v = np.diff(c[:, 0])
    assert abs(v[10] - v[9]) < 0.02
    # look-at helper: OpenCV axes, up = −y
    c2w = look_at_c2w([0, 0, 0], [0, 0, 1])
    np.testing.assert_allclose(c2w.numpy(), np.eye(4), atol=1e-12)


def test_from_keyframes_bad_inputs():
    K = intrinsics_from_fov(60, H, W)
    with pytest.raises(InvalidTrajectoryError, match="no keyframes"):
        from_keyframes([], K, H, W)
    with pytest.raises(InvalidTrajectoryError, match="4×4"):
        from_keyframes([np.eye(3)], K, H, W)
    bad = np.eye(4)
    bad[0, 0] = 3
    with pytest.raises(InvalidTrajectoryError, match="not rigid"):
        from_keyframes([np.eye(4), bad], K, H, W)
    with pytest.raises(InvalidTrajectoryError, match="coincides"):
        from_keyframes([(np.zeros(3), np.zeros(3))], K, H, W)
    with pytest.raises(InvalidTrajectoryError, match="parallel"):
        from_keyframes([(np.zeros(3), np.array([0, -1.0, 0]))], K, H, W)
    with pytest.raises(InvalidTrajectoryError, match="increasing"):
        from_keyframes([np.eye(4), np.eye(4)], K, H, W, times=[1, 0])
    with pytest.raises(InvalidTrajectoryError, match="position interpolation"):
        from_keyframes([np.eye(4), np.eye(4)], K, H, W, position_interp="bezier")
    with pytest.raises(InvalidTrajectoryError, match="dict keyframe"):
        from_keyframes([{"pos": [0, 0, 0]}], K, H, W)


# --- obstacle-aware shortening -----------------------------------------------------------------


def wall(z: float, half: float = 0.5, step: float = 0.01) -> np.ndarray:
    g = np.arange(-half, half + 1e-9, step)
    X, Y = np.meshgrid(g, g)
    return np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], -1)


def test_shorten_halves_a_preset_moving_through_a_wall():
    m = 2.0
    traj = make_preset("forward", first_camera(), m, distance=1.0)  # ends at z = 2
    pts = wall(1.5)
    short, n = shorten_against_cloud(traj, pts)
    assert n == 1 and len(short) == 81
    np.testing.assert_allclose(short.cameras.centers[-1].numpy(), [0, 0, 1.0], atol=1e-12)
    assert short.recipe is not None and short.recipe.as_dict()["distance"] == 0.5
    again, n2 = shorten_against_cloud(traj, pts)  # deterministic
    assert n2 == 1 and torch.equal(again.w2c, short.w2c)
    # a wall closer than the path halves twice: z = 0.7 → 2 → 1 (hits at 0.7) → 0.5
    short2, n3 = shorten_against_cloud(traj, wall(0.7))
    assert n3 == 2
    np.testing.assert_allclose(short2.cameras.centers[-1].numpy(), [0, 0, 0.5], atol=1e-12)


def test_preset_from_controls_maps_the_node_controls():
    """angle/extent 0 keep the preset defaults; > 0 override the parameters the preset has."""
    cam = first_camera(3)
    for name in PRESETS:
        got, n = preset_from_controls(name, cam, 2.0, num_frames=9)
        assert n == 0 and torch.equal(got.w2c, make_preset(name, cam, 2.0, num_frames=9).w2c)
    left, _ = preset_from_controls("left", cam, 2.0, angle=30.0, extent=0.7, num_frames=9)  # left has no extent
    assert torch.equal(left.w2c, make_preset("left", cam, 2.0, num_frames=9, angle=30.0).w2c)
    orbit, _ = preset_from_controls("orbit", cam, 2.0, angle=10.0, extent=0.5, num_frames=9)  # orbit has no angle
    assert torch.equal(orbit.w2c, make_preset("orbit", cam, 2.0, num_frames=9, radius_x=0.5, radius_y=0.5).w2c)
    fwd, _ = preset_from_controls("forward", cam, 2.0, extent=0.25, num_frames=9)
    assert fwd.recipe.as_dict()["distance"] == 0.25
    # with the cache: the same halving as shorten_against_cloud (forward 1.0·m = 2 through a wall at 1.5)
    short, n = preset_from_controls("forward", first_camera(), 2.0, extent=1.0, cache_points=wall(1.5))
    assert n == 1
    np.testing.assert_allclose(short.cameras.centers[-1].numpy(), [0, 0, 1.0], atol=1e-12)
    with pytest.raises(InvalidTrajectoryError, match="unknown preset"):
        preset_from_controls("keyframes", cam, 2.0)


def test_shorten_takes_a_prebuilt_tree_of_the_points():
    from scipy.spatial import cKDTree

    traj = make_preset("forward", first_camera(), 2.0, distance=1.0)
    pts = wall(0.7)
    by_points, n1 = shorten_against_cloud(traj, pts)
    by_tree, n2 = shorten_against_cloud(traj, cKDTree(np.asarray(pts, dtype=np.float64)))
    assert n1 == n2 == 2 and torch.equal(by_points.w2c, by_tree.w2c)
    short, n = preset_from_controls("forward", first_camera(), 2.0, extent=1.0, cache_points=cKDTree(wall(1.5)))
    assert n == 1
    with pytest.raises(InvalidTrajectoryError, match="tree"):
        shorten_against_cloud(traj, cKDTree(np.zeros((4, 2))))


def test_shorten_truncates_generic_trajectory_and_leaves_clear_paths():
    K = intrinsics_from_fov(60, H, W)
    end = np.eye(4)
    end[2, 3] = -2.0  # camera centre (0, 0, 2)
    traj = from_keyframes([np.eye(4), end], K, H, W, num_frames=81, position_interp="linear")
    short, n = shorten_against_cloud(traj, wall(1.5))
    assert n == 1 and len(short) == 81
    # first int(81 · 0.5) = 40 poses kept (pose 39 at z = 39/80 · 2), resampled to 81
    np.testing.assert_allclose(short.cameras.centers[-1].numpy(), [0, 0, 39 / 40], atol=1e-12)
    same, n0 = shorten_against_cloud(traj, wall(3.0))
    assert n0 == 0 and torch.equal(same.w2c, traj.w2c)


def test_shorten_eloop_halves_radii_and_bad_points():
    m = 2.0
    traj = make_preset("eloop", first_camera(), m)
    # put a wall right where the loop's lowest point is (y = −2·0.4·m = −1.6)
    g = np.arange(-0.3, 0.3, 0.01)
    X, Z = np.meshgrid(g, g)
    pts = np.stack([X.ravel(), np.full(X.size, -1.6), Z.ravel()], -1)
    short, n = shorten_against_cloud(traj, pts)
    assert n == 1
    np.testing.assert_allclose(short.cameras.centers[:, 1].min().item(), -0.8, atol=1e-9)
    with pytest.raises(InvalidTrajectoryError, match=r"\[N, 3\]"):
        shorten_against_cloud(traj, np.zeros((0, 3)))
    with pytest.raises(InvalidTrajectoryError, match="NaN"):
        shorten_against_cloud(traj, np.full((4, 3), np.nan))
    with pytest.raises(InvalidTrajectoryError, match="decay"):
        shorten_against_cloud(traj, pts, decay=1.5)


# --- camera.json -------------------------------------------------------------------------------


def all_fixture_camera_files(fixtures_dir: Path) -> list[Path]:
    files = sorted(fixtures_dir.rglob("camera.json")) + sorted(fixtures_dir.rglob("pano_bank/cameras.json"))
    return files


def test_every_fixture_camera_json_round_trips(fixtures_dir, tmp_path):
    files = all_fixture_camera_files(fixtures_dir)
    assert len(files) >= 20
    for f in files:
        raw = json.loads(f.read_text())
        a = load_camera_json(f)
        out = tmp_path / "rt.json"
        save_camera_json(out, a)
        b = load_camera_json(out)
        assert torch.equal(a.w2c, b.w2c) and torch.equal(a.K, b.K), f
        assert (a.cameras.height, a.cameras.width) == (b.cameras.height, b.cameras.width)
        assert a.motion_list == b.motion_list and dict(a.extra) == dict(b.extra) and a.view_ids == b.view_ids
        # the arrays are the file's own numbers, untouched
        if "extrinsic" in raw:
            np.testing.assert_array_equal(a.w2c.numpy(), np.array(raw["extrinsic"]))
            assert a.cameras.width == raw.get("width", round(2 * raw["intrinsic"][0][0][2]))
            assert a.cameras.height == raw.get("height", round(2 * raw["intrinsic"][0][1][2]))
        else:
            assert len(a) == len(raw) == 27
            np.testing.assert_array_equal(a.w2c[13].numpy(), np.array(raw["0013"]["extrinsic"]))
            assert json.loads(out.read_text()).keys() == raw.keys()  # per-view layout written back
    assert not [p for p in tmp_path.iterdir() if p.name != "rt.json"]  # no temp files left


def test_image_camera_json_size_inferred_from_principal_point(fixtures_dir):
    f = fixtures_dir / "upstream_examples/examples/images/photorealistic-outdoor-city-062/camera.json"
    t = load_camera_json(f)
    assert (t.cameras.height, t.cameras.width) == (768, 1024) and len(t) == 81
    assert t.motion_list[0].startswith("rotation_right")
    t2 = load_camera_json(f, height=384, width=512)
    assert (t2.cameras.height, t2.cameras.width) == (384, 512)
    assert torch.equal(t2.K, t.K)  # explicit size says which image K belongs to; K untouched
    half = t.resized(384, 512)
    assert torch.allclose(half.K[0], t.K[0] * torch.tensor([[0.5], [0.5], [1.0]], dtype=torch.float64))
    assert torch.equal(half.w2c, t.w2c) and half.motion_list == t.motion_list


def test_save_and_load_preset(tmp_path):
    traj = make_preset("eloop", first_camera(seed=1), 2.0)
    save_camera_json(tmp_path / "c.json", traj)
    back = load_camera_json(tmp_path / "c.json")
    assert torch.equal(back.w2c, traj.w2c.double()) and torch.equal(back.K, traj.K.double())
    assert (back.cameras.height, back.cameras.width) == (H, W)


def write(tmp_path: Path, data, name="camera.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def good_data(n=3):
    return {"extrinsic": [np.eye(4).tolist()] * n, "intrinsic": [[[100.0, 0, 50], [0, 100, 40], [0, 0, 1]]] * n}


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("extrinsic"), "missing key"),
        (lambda d: d.pop("intrinsic"), "missing key"),
        (lambda d: d.update(extrinsic=[np.eye(3).tolist()] * 3), "4×4"),
        (lambda d: d.update(intrinsic=[[1.0, 2.0]]), "3×3"),
        (lambda d: d.update(extrinsic=[[["a"] * 4] * 4]), "numeric"),
        (lambda d: d.update(intrinsic=d["intrinsic"][:2]), "3 extrinsics but 2 intrinsics"),
        (lambda d: d["extrinsic"].__setitem__(1, (np.eye(4) * 2).tolist()), "not rigid"),
        (lambda d: d.update(intrinsic=[[[0.0, 0, 50], [0, 100, 40], [0, 0, 1]]] * 3), "zero focal"),
        (lambda d: d.update(motion_list="up"), "motion_list"),
        (lambda d: d.update(width=-5), "width"),
    ],
)
def test_malformed_camera_json(tmp_path, mutate, match):
    d = good_data()
    mutate(d)
    with pytest.raises(CorruptFileError, match=match):
        load_camera_json(write(tmp_path, d))


def test_camera_json_zero_frames_bad_json_and_missing_file(tmp_path):
    with pytest.raises(EmptyCameraJsonError, match="0 poses") as e:
        load_camera_json(write(tmp_path, {"extrinsic": [], "intrinsic": []}))
    assert isinstance(e.value, InvalidTrajectoryError) and isinstance(e.value, CorruptFileError)
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_camera_json(write(tmp_path, "{extrinsic: oops"))
    with pytest.raises(CorruptFileError, match="JSON object"):
        load_camera_json(write(tmp_path, [1, 2, 3]))
    with pytest.raises(InvalidFileError, match="cannot read"):
        load_camera_json(tmp_path / "nope.json")
    with pytest.raises(InvalidTrajectoryError):
        save_camera_json(tmp_path / "x.json", "not a trajectory")  # type: ignore[arg-type]


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    traj = make_preset("up", first_camera(), 2.0, 5)
    target = tmp_path / "camera.json"
    target.write_text("previous")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_camera_json(target, traj)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["camera.json"]
