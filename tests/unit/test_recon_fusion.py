"""Depth fusion: per-frame scale/shift corruption of exact depth is undone against a cache
built from the exact geometry, and the lifted points lie on the true surfaces."""

from __future__ import annotations

import pytest
import torch

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import InvalidDepthError, InvalidOptionError, InvalidPointCloudError
from worldstereo_core.pointcloud import PointCloud, unproject_depths
from worldstereo_core.recon.fusion import fuse_depth_to_cache
from worldstereo_core.synthetic import look_at, make_scene

H, W = 48, 64
EYES = [(0.0, 0.0, 0.0), (0.2, 0.0, 0.1), (0.35, -0.1, 0.2), (0.1, -0.2, 0.3)]


def _cams(eyes) -> Cameras:
    w2c = torch.stack([look_at(e, (0.0, 0.45, 4.0)) for e in eyes])
    K = intrinsics_from_fov(70.0, H, W)
    return Cameras(w2c.float(), K[None].expand(len(eyes), 3, 3).float(), H, W)


@pytest.fixture(scope="module")
def setup():
    scene = make_scene("room")
    cams = _cams(EYES)
    r = scene.render(cams)
    # the cache: exact geometry of all four views (every frame overlaps it fully)
    cache = unproject_depths(r.depth, cams.K, cams.c2w, r.rgb, r.depth > 0)
    return scene, cams, r, cache


def test_scale_shift_corruption_is_undone(setup) -> None:
    _, cams, r, cache = setup
    s = torch.tensor([1.3, 0.7, 1.1, 0.9], dtype=torch.float64)
    b = torch.tensor([0.2, -0.1, 0.05, 0.3], dtype=torch.float64)
    valid = r.depth > 0
    # d' with s·d' + b = d, so the fit must return exactly (s, b)
    corrupted = torch.where(valid, ((r.depth.double() - b[:, None, None]) / s[:, None, None]), torch.zeros(()))
    assert (corrupted[valid] > 0).all()
    steps = []
    out = fuse_depth_to_cache(cache, r.rgb, corrupted.float(), cams, valid, edge_threshold=None,
                              progress=lambda d, t: steps.append((d, t)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert out.status == ("aligned",) * 4
    # exact up to the target's own error: cache_surface_depth averages the points of a pixel cell
    # (depths ≈ 9 here, so 1e-2 is ~1e-3 relative)
    assert torch.allclose(out.scale, s, rtol=1e-3) and torch.allclose(out.shift, b, atol=1e-2)
    assert torch.allclose(out.depth[valid], r.depth[valid], rtol=1e-3, atol=1e-3)
    assert torch.equal(out.valid, valid) and (out.covered > 0.9 * valid.flatten(1).sum(1)).all()
    # the cloud is the true surface: the exact points of the same pixels
    truth = unproject_depths(r.depth, cams.K, cams.c2w, r.rgb, valid)
    assert len(out.cloud) == len(truth)
    assert torch.allclose(out.cloud.points, truth.points, atol=5e-3 * float(r.depth[valid].max()))
    assert torch.allclose(out.cloud.colors, truth.colors)


def test_frames_without_overlap_are_skipped(setup) -> None:
    _, cams, r, cache = setup
    valid = r.depth > 0
    valid[2] = False  # nothing usable in frame 2
    out = fuse_depth_to_cache(cache, r.rgb, r.depth, cams, valid, edge_threshold=None)
    assert out.status == ("aligned", "aligned", "skipped", "aligned")
    assert not out.valid[2].any() and (out.depth[2] == 0).all() and out.scale[2] == 1 and out.shift[2] == 0
    # a cache far away from every view covers nothing: every frame skipped, empty cloud
    far = PointCloud(cache.points + 1000.0, cache.colors)
    none = fuse_depth_to_cache(far, r.rgb, r.depth, cams)
    assert none.status == ("skipped",) * 4 and len(none.cloud) == 0


def test_edges_are_dropped_from_the_cloud(setup) -> None:
    _, cams, r, cache = setup
    with_edges = fuse_depth_to_cache(cache, r.rgb, r.depth, cams, edge_threshold=None)
    without = fuse_depth_to_cache(cache, r.rgb, r.depth, cams)
    assert len(without.cloud) < len(with_edges.cloud)
    assert (without.valid <= with_edges.valid).all()


def test_bad_inputs(setup) -> None:
    _, cams, r, cache = setup
    empty = PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(InvalidPointCloudError, match="non-empty 3D cache"):
        fuse_depth_to_cache(empty, r.rgb, r.depth, cams)
    with pytest.raises(InvalidDepthError, match="one depth map and one camera per frame"):
        fuse_depth_to_cache(cache, r.rgb, r.depth[:3], cams)
    with pytest.raises(InvalidDepthError, match="one depth map and one camera per frame"):
        fuse_depth_to_cache(cache, r.rgb[:3], r.depth[:3], cams)
    with pytest.raises(InvalidDepthError, match="finite"):
        fuse_depth_to_cache(cache, r.rgb, -r.depth, cams)
    with pytest.raises(InvalidOptionError, match="min_covered_fraction"):
        fuse_depth_to_cache(cache, r.rgb, r.depth, cams, min_covered_fraction=1.5)


def test_same_alignment_as_the_scene_loops_merge_clip(setup) -> None:
    """The node's depth fusion and the loop's merge_clip (depth mode) agree frame for frame."""
    from worldstereo_core.memory import Cache3D
    from worldstereo_core.interfaces import LoopConfig
    from worldstereo_core.merge import merge_clip

    _, cams, r, cache = setup
    g = torch.Generator().manual_seed(3)
    s = 0.8 + 0.4 * torch.rand(4, generator=g)
    noisy = torch.where(r.depth > 0, r.depth * s[:, None, None] * (1 + 0.01 * torch.randn(r.depth.shape, generator=g)),
                        torch.zeros(()))
    ours = fuse_depth_to_cache(cache, r.rgb, noisy, cams, seed=5)
    loop = merge_clip(Cache3D(cache), r.rgb, noisy, None, cams, LoopConfig(), seed=5, skip_first=False)
    assert ours.status == loop.alignment.status
    assert torch.allclose(ours.scale, loop.alignment.scale, rtol=1e-6)
    assert torch.allclose(ours.shift, loop.alignment.shift, rtol=1e-6, atol=1e-9)
    assert len(ours.cloud) == len(loop.cloud_added)
    assert torch.allclose(ours.cloud.points, loop.cloud_added.points, atol=1e-5)
