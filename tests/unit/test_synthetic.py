"""Synthetic scenes against analytic answers: plane / sphere / box depths, unprojection onto
the true surfaces, ground-truth clouds and depth corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import (
    InvalidCameraError,
    InvalidDepthError,
    InvalidInputError,
    InvalidOptionError,
    ShapeMismatchError,
)
from worldstereo_core.synthetic import (
    Box,
    Material,
    Plane,
    Sphere,
    SyntheticScene,
    corrupt_depth,
    look_at,
    make_scene,
)

MAT = Material((0.5, 0.5, 0.5), (0.2, 0.2, 0.2), checker=0.5)


def _cams(w2c: np.ndarray, K: np.ndarray, h: int, w: int) -> Cameras:
    w2c = np.asarray(w2c, np.float64).reshape(-1, 4, 4)
    return Cameras(torch.from_numpy(w2c), torch.from_numpy(np.broadcast_to(K, (len(w2c), 3, 3)).copy()), h, w)


def _pixel_rays(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] camera-frame rays (x, y, 1) through pixel centres, computed from K directly."""
    u = (np.arange(w) + 0.5 - K[0, 2]) / K[0, 0]
    v = (np.arange(h) + 0.5 - K[1, 2]) / K[1, 1]
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv, np.ones_like(uu)], -1)


def _unproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """Independent numpy unprojection of a z-depth map [H, W] → world points [H, W, 3]."""
    h, w = depth.shape
    pc = _pixel_rays(K, h, w) * depth[..., None]
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (pc - t) @ R  # Rᵀ (p_c − t) for row vectors


def test_plane_depth_matches_camera_height_formula():
    # Level camera 1.5 above the ground plane y = 1.5: a pixel row v below the horizon sees
    # the ground at z = h · fy / (v + 0.5 − cy); rows above miss (no other geometry).
    h_cam, H, W = 1.5, 31, 40
    scene = SyntheticScene("plane", (Plane((0, 1, 0), h_cam, MAT),), ((-10, -10, -10), (10, 10, 10)))
    K = intrinsics_from_fov(60, H, W).numpy()
    out = scene.render(_cams(np.eye(4), K, H, W), dtype=torch.float64)
    rows = np.arange(H) + 0.5 - K[1, 2]
    expect = np.where(rows > 0, h_cam * K[1, 1] / np.where(rows > 0, rows, 1), 0.0)
    np.testing.assert_allclose(out.depth[0].numpy(), np.broadcast_to(expect[:, None], (H, W)), rtol=1e-6)
    assert out.valid[0].numpy().tolist() == np.broadcast_to((rows > 0)[:, None], (H, W)).tolist()
    assert out.depth.dtype == torch.float32 and out.rgb.shape == (1, H, W, 3)
    assert float(out.rgb.min()) >= 0 and float(out.rgb.max()) <= 1


def test_plane_depth_from_moved_turned_camera():
    # Wall z = 6 seen from a camera at (1, -0.5, 2) turned 20° about y: solve n·(c + t Rᵀ r) = 6.
    H, W = 24, 32
    scene = SyntheticScene("wall", (Plane((0, 0, 2), 12.0, MAT),), ((-10, -10, 0), (10, 10, 6)))
    a = math.radians(20)
    R = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    c = np.array([1.0, -0.5, 2.0])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ c
    K = intrinsics_from_fov(50, H, W).numpy()
    out = scene.render(_cams(w2c, K, H, W), dtype=torch.float64)
    d_world = _pixel_rays(K, H, W) @ R  # Rᵀ r
    expect = (6.0 - c[2]) / d_world[..., 2]
    np.testing.assert_allclose(out.depth[0].numpy(), expect, rtol=1e-6)


def test_sphere_hit_distance_centre_and_edges():
    # Odd image size: the middle pixel's ray is the optical axis, which hits the sphere at
    # distance |c| − r. Elsewhere compare with the quadratic root in numpy.
    H = W = 33
    centre, r = np.array([0.0, 0.0, 5.0]), 1.0
    scene = SyntheticScene("ball", (Sphere(tuple(centre), r, MAT),), ((-1, -1, 4), (1, 1, 6)))
    K = intrinsics_from_fov(40, H, W).numpy()
    out = scene.render(_cams(np.eye(4), K, H, W), dtype=torch.float64)
    assert out.depth[0, 16, 16].item() == pytest.approx(4.0, abs=1e-6)
    d = _pixel_rays(K, H, W)
    a = (d * d).sum(-1)
    b = -2 * d @ centre
    cc = centre @ centre - r * r
    disc = b * b - 4 * a * cc
    hit = disc >= 0
    t = np.where(hit, (-b - np.sqrt(np.clip(disc, 0, None))) / (2 * a), 0.0)
    np.testing.assert_allclose(out.depth[0].numpy(), t, rtol=1e-6, atol=1e-6)
    assert (out.valid[0].numpy() == hit).all()
    assert 0 < hit.mean() < 1  # the ball does not fill the view: edges really are tested


def test_dome_from_inside_has_constant_ray_length():
    # A camera at the centre of a sphere sees its inner wall at ray length R: z = R / |(x, y, 1)|.
    H, W, R = 20, 28, 7.0
    scene = SyntheticScene("dome", (Sphere((0.0, 0.0, 0.0), R, MAT),), ((-R,) * 3, (R,) * 3))
    w2c = look_at((0, 0, 0), (1, -0.3, 1)).numpy()
    K = intrinsics_from_fov(90, H, W).numpy()
    out = scene.render(_cams(w2c, K, H, W), dtype=torch.float64)
    expect = R / np.linalg.norm(_pixel_rays(K, H, W), axis=-1)
    np.testing.assert_allclose(out.depth[0].numpy(), expect, rtol=1e-6)


def test_box_front_face_and_turned_box_surface():
    H, W = 25, 25
    K = intrinsics_from_fov(50, H, W).numpy()
    box = Box((0.0, 0.0, 4.0), (1.0, 1.0, 0.5), MAT)
    out = SyntheticScene("box", (box,), ((-1, -1, 3.5), (1, 1, 4.5))).render(
        _cams(np.eye(4), K, H, W), dtype=torch.float64
    )
    # Front face z = 3.5 covers every pixel whose ray at z = 3.5 is inside |x|, |y| ≤ 1.
    d = _pixel_rays(K, H, W)
    inside = (np.abs(d[..., 0] * 3.5) <= 1) & (np.abs(d[..., 1] * 3.5) <= 1)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(out.depth[0].numpy()[inside], 3.5, rtol=1e-6)
    # A yawed box: hit points lie on its surface and the face normal is a rotated axis.
    turned = SyntheticScene(
        "tbox", (Box((0.3, 0.2, 5.0), (0.8, 0.6, 0.4), MAT, yaw_deg=35.0),), ((-2, -2, 3), (2, 2, 7))
    )
    o = torch.zeros(H * W, 3, dtype=torch.float64)
    dirs = torch.from_numpy(d.reshape(-1, 3))
    t, prim, n = turned.cast_rays(o, dirs)
    hit = torch.isfinite(t)
    assert hit.any()
    pts = o[hit] + t[hit, None] * dirs[hit]
    assert turned.distance_to_surface(pts).max().item() < 1e-9
    a = math.radians(35)
    axes = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    align = (n[hit] @ axes.T).abs().amax(-1)
    torch.testing.assert_close(align, torch.ones_like(align))


def test_look_at_puts_target_on_the_optical_axis():
    eye, target = np.array([1.0, -2.0, 0.5]), np.array([-0.5, 0.3, 4.0])
    w2c = look_at(eye, target).numpy()
    p = w2c[:3, :3] @ target + w2c[:3, 3]
    np.testing.assert_allclose(p[:2], 0, atol=1e-12)
    assert p[2] == pytest.approx(np.linalg.norm(target - eye))
    # Image "down" (camera +y) points towards world +y (the ground) for an upright camera.
    assert (w2c[:3, :3].T @ np.array([0, 1, 0]))[1] > 0
    with pytest.raises(InvalidCameraError, match="parallel"):
        look_at((0, 0, 0), (0, 5, 0))


@pytest.mark.parametrize("name", ["room", "outdoor"])
def test_unprojected_depth_lands_on_the_surface(name):
    scene = make_scene(name, seed=3)
    H, W = 36, 60
    view = scene.default_view(H, W)
    K = view.cameras.K[0].double().numpy()
    eye = np.array([0.8, -0.6, 1.0])
    w2cs = [view.cameras.w2c[0].double().numpy(), look_at(eye, (0.0, 0.8, 4.5)).numpy()]
    out = scene.render(_cams(np.stack(w2cs), K, H, W))
    assert out.valid.all(), "closed scenes: every ray must hit something"
    for f in range(2):
        pts = _unproject(out.depth[f].double().numpy(), K, w2cs[f]).reshape(-1, 3)
        dist = scene.distance_to_surface(pts)
        assert isinstance(dist, np.ndarray) and dist.shape == (H * W,)
        assert dist.max() < 2e-5 * scene.extent  # float32 depth only
    # default view agrees with render() at the same camera
    torch.testing.assert_close(view.depth[0], out.depth[0])
    assert view.image.shape == (1, H, W, 3) and view.median_depth > 0


@pytest.mark.parametrize("name", ["room", "outdoor"])
def test_builtin_scenes_are_deterministic_and_textured(name):
    a, b, c = make_scene(name, 1), make_scene(name, 1), make_scene(name, 2)
    va, vb, vc = (s.default_view(24, 40) for s in (a, b, c))
    torch.testing.assert_close(va.image, vb.image, rtol=0, atol=0)
    assert not torch.equal(va.image, vc.image)
    # Informative images: lots of distinct colours, not flat.
    assert va.image.std() > 0.08
    assert len(torch.unique((va.image * 255).round().reshape(-1, 3), dim=0)) > 100


def test_extent_is_the_bounding_box_diagonal():
    room = make_scene("room")
    lo, hi = np.array(room.bounds[0]), np.array(room.bounds[1])
    assert room.extent == pytest.approx(float(np.linalg.norm(hi - lo)))
    # Every point of a rendered view lies inside the bounds.
    view = room.default_view(20, 32)
    pts = _unproject(
        view.depth[0].double().numpy(), view.cameras.K[0].double().numpy(), view.cameras.w2c[0].double().numpy()
    )
    assert (pts >= lo - 1e-4).all() and (pts <= hi + 1e-4).all()


def test_surface_points_are_on_surfaces_seen_and_thinned():
    scene = make_scene("room")
    H, W = 30, 48
    base = scene.default_cameras(H, W)
    w2c2 = look_at((1.0, -0.5, 0.5), (0.0, 0.5, 5.0)).float()
    cams = Cameras(torch.cat([base.w2c, w2c2[None]]), base.K.expand(2, 3, 3), H, W)
    voxel = 0.1
    gt = scene.surface_points(cams, voxel_size=voxel)
    assert len(gt) > 500
    assert scene.distance_to_surface(gt.points).max().item() < 1e-4
    keys = torch.floor(gt.points.double() / voxel).long()
    # points are from float64 hits, so re-flooring the float32 copies is exact except at borders
    assert len(torch.unique(keys, dim=0)) >= 0.99 * len(gt)
    # Each point is visible in at least one camera: it projects in-bounds at the rendered depth.
    out = scene.render(cams)
    seen = torch.zeros(len(gt), dtype=torch.bool)
    for f in range(2):
        pc = gt.points.double() @ cams.w2c[f, :3, :3].double().T + cams.w2c[f, :3, 3].double()
        uv = pc @ cams.K[f].double().T
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        inb = (pc[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        ui, vi = u.clamp(0, W - 1).long(), v.clamp(0, H - 1).long()
        dz = (out.depth[f, vi, ui].double() - pc[:, 2]).abs()
        seen |= inb & (dz < 0.05 * pc[:, 2] + 0.05)
    assert seen.float().mean() > 0.97
    torch.testing.assert_close(gt.normals.norm(dim=-1), torch.ones(len(gt)))
    # deterministic
    assert torch.equal(scene.surface_points(cams, voxel_size=voxel).points, gt.points)


def test_corrupt_depth_is_an_exact_affine_map_without_noise():
    depth = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(1)) * 4 + 1
    out = corrupt_depth(depth, scale_range=0.2, noise=0.0, generator=torch.Generator().manual_seed(5))
    assert ((out.scale >= 0.8) & (out.scale <= 1.2)).all()
    for f in range(3):
        # Recover the map by least squares: it must be exactly the reported one.
        A = torch.stack([depth[f].flatten().double(), torch.ones(320, dtype=torch.float64)], -1)
        sol = torch.linalg.lstsq(A, out.depth[f].flatten().double()[:, None]).solution.flatten()
        assert sol[0].item() == pytest.approx(out.scale[f].item(), abs=1e-5)
        assert sol[1].item() == pytest.approx(out.shift[f].item(), abs=1e-4)
        assert abs(out.shift[f].item()) <= 0.2 * depth[f].median().item() + 1e-6
    assert out.valid.all()
    # per-frame maps differ, and the same generator seed gives the same result
    assert len(set(np.round(out.scale.numpy(), 6))) == 3
    again = corrupt_depth(depth, noise=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.depth, out.depth)


def test_corrupt_depth_noise_level_and_holes_and_numpy():
    depth = np.full((2, 64, 64), 5.0, np.float32)
    out = corrupt_depth(
        depth, scale_range=0.0, noise=0.01, hole_fraction=0.3, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(out.depth, np.ndarray) and out.depth.shape == depth.shape and out.valid.dtype == bool
    rel = out.depth[out.valid] / 5.0 - 1
    assert 0.008 < rel.std() < 0.012 and abs(rel.mean()) < 0.002
    hole = 1 - out.valid.mean()
    assert 0.15 < hole < 0.45
    assert (out.depth[~out.valid] == 0).all()
    # holes come in 8×8 blocks
    blocks = out.valid.reshape(2, 8, 8, 8, 8).transpose(0, 1, 3, 2, 4).reshape(2, 8, 8, 64)
    assert (blocks.all(-1) | (~blocks).all(-1)).all()
    single = corrupt_depth(depth[0], noise=0.0)
    assert single.depth.shape == (64, 64) and single.scale.shape == (1,)
    # invalid input pixels stay invalid
    d2 = depth.copy()
    d2[0, :4] = 0
    assert not corrupt_depth(d2).valid[0, :4].any()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[[1.0, np.nan]]]), "NaN"),
        (np.array([[[1.0, np.inf]]]), "NaN or inf"),
        (np.array([[[1.0, -2.0]]]), "negative"),
        (np.ones((2, 2, 2, 2)), "shape"),
    ],
)
def test_corrupt_depth_rejects_bad_depth(bad, match):
    with pytest.raises(InvalidDepthError, match=match):
        corrupt_depth(bad)


@pytest.mark.parametrize("kw", [{"scale_range": 1.5}, {"noise": -0.1}, {"hole_fraction": 2.0}, {"shift_range": 1.0}])
def test_corrupt_depth_rejects_bad_parameters(kw):
    with pytest.raises(InvalidOptionError):
        corrupt_depth(np.ones((1, 4, 4)), **kw)


def test_bad_scene_requests_raise_clear_errors():
    with pytest.raises(InvalidOptionError, match="unknown synthetic scene 'kitchen'"):
        make_scene("kitchen")
    scene = make_scene("room")
    with pytest.raises(InvalidInputError, match="Cameras"):
        scene.render(np.eye(4))
    with pytest.raises(ShapeMismatchError, match=r"\[N, 3\]"):
        scene.distance_to_surface(np.zeros((4, 2)))
    with pytest.raises(InvalidOptionError, match="voxel_size"):
        scene.surface_points(scene.default_cameras(8, 8), voxel_size=0.0)
    with pytest.raises(InvalidInputError, match="at least one primitive"):
        SyntheticScene("empty", (), ((0, 0, 0), (1, 1, 1)))
