"""Point clouds from depth, cleaning and PLY I/O, checked against independent math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from worldstereo_core.errors import InvalidDepthError, InvalidImageError, InvalidPointCloudError, WorldStereoError
from worldstereo_core.export import save_pointcloud_ply
from worldstereo_core.pointcloud import (
    PointCloud,
    compress_far_depth,
    depth_edge_mask,
    depth_edges,
    load_ply,
    remove_outliers,
    unproject_depth,
    unproject_depth_release,
    unproject_depths,
    voxel_downsample,
)


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


K0 = np.array([[100.0, 0, 32.0], [0, 110.0, 24.0], [0, 0, 1]])


def test_unproject_then_project_returns_pixel_centres_and_depth():
    rng = np.random.default_rng(0)
    H, W = 48, 64
    depth = rng.uniform(1.0, 5.0, size=(H, W))
    c2w = _rigid(1)
    cloud = unproject_depth(depth, K0, c2w)
    assert len(cloud) == H * W
    w2c = np.linalg.inv(c2w)
    pts = cloud.points.numpy()
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K0.T
    uv = uv[:, :2] / uv[:, 2:]
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(cam[:, 2], depth.reshape(-1), rtol=1e-9)
    np.testing.assert_allclose(uv[:, 0], u.reshape(-1) + 0.5, atol=1e-7)
    np.testing.assert_allclose(uv[:, 1], v.reshape(-1) + 0.5, atol=1e-7)


def test_unproject_single_pixel_exact_position():
    # Pixel (2, 1) of a 3×4 image, centre (2.5, 1.5); with f = 1 and c = (0, 0) its ray is (2.5, 1.5, 1).
    depth = torch.zeros(3, 4)
    depth[1, 2] = 2.0
    K = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([10.0, 0, 0])
    cloud = unproject_depth(depth, K, c2w)
    assert len(cloud) == 1
    torch.testing.assert_close(cloud.points[0], torch.tensor([15.0, 3.0, 2.0]))


def test_unproject_colours_and_mask_keep_polarity():
    H, W = 4, 5
    depth = torch.ones(H, W)
    image = torch.rand(H, W, 3)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[2, 3] = True  # True = keep
    cloud = unproject_depth(depth, K0, torch.eye(4), image, mask)
    assert len(cloud) == 1
    torch.testing.assert_close(cloud.colors[0], image[2, 3])
    u8 = (image * 255).round().to(torch.uint8)
    cloud8 = unproject_depth(depth, K0, torch.eye(4), u8)
    torch.testing.assert_close(cloud8.colors, u8.reshape(-1, 3).float() / 255)


def test_unproject_batched_matches_per_frame_and_float64():
    rng = np.random.default_rng(3)
    depth = rng.uniform(1, 3, size=(2, 6, 7))
    c2w = np.stack([_rigid(4), _rigid(5)])
    both = unproject_depths(depth, K0, c2w)
    one = [unproject_depth(depth[i], K0, c2w[i]) for i in range(2)]
    assert both.points.dtype == torch.float64
    torch.testing.assert_close(both.points, torch.cat([c.points for c in one]))


def test_compress_far_depth_formula():
    depth = torch.tensor([[1.0, 1.0, 1.0], [1.0, 20.0, 100.0], [0.0, 1.0, 8.0]])
    out = compress_far_depth(depth)
    m = 8.0  # 8 × median of the positive values (median = 1)
    expected = depth.clone()
    for d in (20.0, 100.0):
        expected[depth == d] = 2 * m - m * m / d
    torch.testing.assert_close(out, expected)
    assert float(out.max()) < 2 * m
    assert isinstance(compress_far_depth(depth.numpy()), np.ndarray)
    # Continuity and monotonicity at the knee.
    ramp = torch.linspace(0.5, 50, 1000)
    ramp[:600] = 1.0  # median 1 → knee at 8
    c = compress_far_depth(ramp)
    assert torch.all(c[1:] >= c[:-1])


def test_depth_edge_mask_matches_scipy_sobel():
    rng = np.random.default_rng(7)
    depth = np.full((20, 30), 2.0)
    depth[:, 15:] = 6.0  # one vertical discontinuity
    depth += rng.uniform(0, 0.01, size=depth.shape)
    edges = depth_edge_mask(depth)
    disp = 1.0 / depth
    disp = (disp - disp.min()) / (disp.max() - disp.min() + 1e-6)
    mag = np.hypot(ndimage.sobel(disp, axis=1, mode="nearest"), ndimage.sobel(disp, axis=0, mode="nearest"))
    expected = np.exp(-10.0 * mag) < 0.35
    assert edges.dtype == np.bool_
    np.testing.assert_array_equal(edges, expected)
    assert edges[:, 14:16].all() and not edges[:, :13].any() and not edges[:, 17:].any()


def test_release_recipe_drops_edges_and_compresses():
    depth = torch.full((16, 16), 2.0)
    depth[:, 8:] = 100.0  # far background: compressed to < 2·8·median
    cloud = unproject_depth_release(depth, K0, torch.eye(4))
    full = unproject_depth(depth, K0, torch.eye(4))
    assert len(cloud) < len(full)  # the discontinuity's pixels are gone
    z = cloud.points[:, 2]
    assert float(z.max()) < 2 * 8 * 2.0 + 1e-4


@pytest.mark.parametrize("bad,count", [(float("nan"), 3), (float("inf"), 2), (-1.0, 4)])
def test_bad_depth_values_raise_with_count(bad, count):
    depth = torch.ones(5, 5)
    depth.view(-1)[:count] = bad
    with pytest.raises(InvalidDepthError, match=str(count)):
        unproject_depth(depth, K0, torch.eye(4))


def test_mismatched_image_and_depth_sizes_raise():
    with pytest.raises(InvalidDepthError, match="resize"):
        unproject_depth(torch.ones(4, 5), K0, torch.eye(4), torch.rand(4, 6, 3))
    with pytest.raises(InvalidImageError):
        unproject_depth(torch.ones(4, 5), K0, torch.eye(4), torch.rand(4, 5))
    with pytest.raises(InvalidDepthError):
        unproject_depth(torch.ones(4, 5), K0, torch.eye(4), mask=torch.ones(5, 4, dtype=torch.bool))


def test_empty_results_raise():
    with pytest.raises(InvalidPointCloudError, match="no pixel survived"):
        unproject_depth(torch.zeros(4, 5), K0, torch.eye(4))
    empty = PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    for fn in (lambda: voxel_downsample(empty, 0.1), lambda: remove_outliers(empty)):
        with pytest.raises(InvalidPointCloudError, match="empty"):
            fn()
    with pytest.raises(WorldStereoError, match="empty"):
        save_pointcloud_ply("x.ply", empty)
    assert issubclass(InvalidPointCloudError, WorldStereoError)


def test_voxel_downsample_means_per_voxel():
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.2, 0.4], [1.2, 0.1, 0.1], [-0.1, 0.1, 0.1]])
    col = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.2, 0.2, 0.2]])
    out = voxel_downsample(PointCloud(pts, col), 0.5)
    assert len(out) == 3
    got = {tuple(np.round(p, 6)) for p in out.points.numpy().tolist()}
    assert got == {(0.2, 0.15, 0.25), (1.2, 0.1, 0.1), (-0.1, 0.1, 0.1)}
    row = int(np.argmin(np.abs(out.points[:, 0].numpy() - 0.2)))
    torch.testing.assert_close(out.colors[row], torch.tensor([0.5, 0.5, 0.0]))


def test_voxel_downsample_cap_is_exact_and_deterministic():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5000, 3, generator=g)
    cloud = PointCloud(
        pts, torch.rand(5000, 3, generator=g), torch.nn.functional.normalize(torch.randn(5000, 3, generator=g), dim=-1)
    )
    a = voxel_downsample(cloud, 0.01, max_points=300)
    b = voxel_downsample(cloud, 0.01, max_points=300)
    assert len(a) <= 300
    torch.testing.assert_close(a.points, b.points)
    torch.testing.assert_close(a.normals.norm(dim=-1), torch.ones(len(a)))
    with pytest.raises(InvalidPointCloudError):
        voxel_downsample(cloud, 0.0)
    with pytest.raises(InvalidPointCloudError):
        voxel_downsample(cloud, 0.1, max_points=0)


def test_remove_outliers_drops_far_points():
    g = torch.Generator().manual_seed(1)
    inliers = torch.randn(500, 3, generator=g) * 0.05
    outliers = torch.tensor([[5.0, 5, 5], [-4.0, 3, 0], [0, 0, 9.0]])
    cloud = PointCloud(torch.cat([inliers, outliers]), torch.rand(503, 3, generator=g))
    out = remove_outliers(cloud, nb_neighbors=20, std_ratio=2.0)
    assert out.points.abs().max() < 1.0
    assert len(out) >= 470
    # Order is preserved: the kept points are a subsequence of the input.
    idx = torch.cdist(out.points, cloud.points).argmin(1)
    torch.testing.assert_close(cloud.points[idx], out.points)
    assert torch.all(idx[1:] > idx[:-1])


def test_ply_round_trip_with_colours_and_normals(tmp_path):
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(100, 3, generator=g)
    col = torch.rand(100, 3, generator=g)
    nrm = torch.nn.functional.normalize(torch.randn(100, 3, generator=g), dim=-1)
    path = tmp_path / "sub" / "cloud.ply"
    save_pointcloud_ply(path, PointCloud(pts, col, nrm))
    assert [p.name for p in path.parent.iterdir()] == ["cloud.ply"]  # no temp file left behind
    back = load_ply(path)
    torch.testing.assert_close(back.points, pts)
    torch.testing.assert_close(back.normals, nrm)
    torch.testing.assert_close(back.colors, (col * 255).round() / 255)
    # Overwrite in place keeps working (atomic replace).
    save_pointcloud_ply(path, PointCloud(pts[:10], col[:10]))
    assert len(load_ply(path)) == 10 and load_ply(path).normals is None


def test_load_ply_errors(tmp_path):
    with pytest.raises(InvalidPointCloudError, match="not found"):
        load_ply(tmp_path / "missing.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"this is not a ply")
    with pytest.raises(InvalidPointCloudError):
        load_ply(bad)


def test_unproject_depth_map_projects_back_to_pixel_centres():
    """The one unprojection: each point projects back (K · w2c, independent of the inverse
    used to lift it) onto its pixel centre at its z-depth, skewed K included; without c2w the
    points are in the camera frame."""
    from scipy.spatial.transform import Rotation

    from worldstereo_core.pointcloud import unproject_depth_map

    F, H, W = 3, 5, 7
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(F, H, W, generator=g, dtype=torch.float64) * 4 + 0.5
    K = torch.tensor([[[6.0, 0.3 * f, 3.1], [0, 5.0, 2.2], [0, 0, 1]] for f in range(F)], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(F, 1, 1)
    c2w[:, :3, :3] = torch.from_numpy(Rotation.random(F, random_state=1).as_matrix())
    c2w[:, :3, 3] = torch.randn(F, 3, generator=g, dtype=torch.float64)
    world = unproject_depth_map(depth, K, c2w)
    assert world.shape == (F, H, W, 3)
    w2c = torch.linalg.inv(c2w)
    cam = torch.einsum("fij,fhwj->fhwi", w2c[:, :3, :3], world) + w2c[:, None, None, :3, 3]
    torch.testing.assert_close(cam[..., 2], depth)
    uvw = torch.einsum("fij,fhwj->fhwi", K, cam)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    torch.testing.assert_close(uvw[..., 0] / uvw[..., 2], (u + 0.5).expand(F, H, W))
    torch.testing.assert_close(uvw[..., 1] / uvw[..., 2], (v + 0.5).expand(F, H, W))
    torch.testing.assert_close(unproject_depth_map(depth, K), cam)


def test_depth_edges_scales_the_release_sharpness_with_the_resolution():
    """One step of 1 → 2 m: at 480 rows the release rule as it is; at 120 rows β is a quarter,
    so a smooth ramp whose per-pixel gradient is 4× larger is not flagged, the step still is."""

    def scene(h: int, w: int) -> torch.Tensor:
        x = torch.linspace(0, 1, w)[None].expand(h, w)
        d = 1.0 + 0.5 * x  # a smooth slanted plane
        d = d.clone()
        d[:, w // 2 :] += 1.0  # a depth discontinuity in the middle
        return d

    big = scene(480, 640)
    assert torch.equal(depth_edges(big, 0.35), torch.as_tensor(depth_edge_mask(big, 0.35, 10.0)).bool())
    small = scene(120, 160)
    scaled = depth_edges(small[None].expand(2, 120, 160), 0.35)
    assert scaled.shape == (2, 120, 160)
    assert torch.equal(scaled[1], torch.as_tensor(depth_edge_mask(small, 0.35, 10.0 * 120 / 480)).bool())
    assert scaled[0, :, 80].any() or scaled[0, :, 79].any()  # the step is an edge
    ramp = scaled[0, 10:-10, 10:60]  # away from the step and the borders
    assert not ramp.any()
    assert not depth_edges(small, None).any() and not depth_edges(torch.zeros(8, 8), 0.35).any()
