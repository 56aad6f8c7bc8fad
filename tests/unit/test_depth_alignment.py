"""The one per-frame depth alignment (merge.align_clip_depth: the loop's, depth fusion's and the merge
node's): per-frame scale/shift corruption of exact depth is undone against a cache built from the
exact geometry, the lifted points lie on the true surfaces, and fused depth is never aligned twice."""

from __future__ import annotations

import pytest
import torch

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import InvalidDepthError, InvalidOptionError, InvalidPointCloudError
from worldstereo_core.merge import align_clip_depth
from worldstereo_core.pointcloud import PointCloud, unproject_depths
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
    out = align_clip_depth(
        cache, r.rgb, corrupted.float(), valid, cams, edge_threshold=None, progress=lambda d, t: steps.append((d, t))
    )
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert out.alignment.status == ("aligned",) * 4
    # exact up to the target's own error: cache_surface_depth averages the points of a pixel cell
    # (depths ≈ 9 here, so 1e-2 is ~1e-3 relative)
    assert torch.allclose(out.alignment.scale, s, rtol=1e-3) and torch.allclose(out.alignment.shift, b, atol=1e-2)
    assert torch.allclose(out.depth[valid], r.depth[valid], rtol=1e-3, atol=1e-3)
    assert torch.equal(out.valid, valid) and (out.alignment.covered > 0.9 * valid.flatten(1).sum(1)).all()
    # the cloud is the true surface: the exact points of the same pixels
    truth = unproject_depths(r.depth, cams.K, cams.c2w, r.rgb, valid)
    assert len(out.cloud) == len(truth)
    assert torch.allclose(out.cloud.points, truth.points, atol=5e-3 * float(r.depth[valid].max()))
    assert torch.allclose(out.cloud.colors, truth.colors)


def test_frames_without_overlap_are_skipped(setup) -> None:
    _, cams, r, cache = setup
    valid = r.depth > 0
    valid[2] = False  # nothing usable in frame 2
    out = align_clip_depth(cache, r.rgb, r.depth, valid, cams, edge_threshold=None)
    assert out.alignment.status == ("aligned", "aligned", "skipped", "aligned")
    assert (
        not out.valid[2].any()
        and (out.depth[2] == 0).all()
        and out.alignment.scale[2] == 1
        and out.alignment.shift[2] == 0
    )
    # a cache far away from every view covers nothing: every frame skipped, empty cloud
    far = PointCloud(cache.points + 1000.0, cache.colors)
    none = align_clip_depth(far, r.rgb, r.depth, None, cams)
    assert none.alignment.status == ("skipped",) * 4 and len(none.cloud) == 0


def test_edges_are_dropped_from_the_cloud(setup) -> None:
    _, cams, r, cache = setup
    with_edges = align_clip_depth(cache, r.rgb, r.depth, None, cams, edge_threshold=None)
    without = align_clip_depth(cache, r.rgb, r.depth, None, cams)
    assert len(without.cloud) < len(with_edges.cloud)
    assert (without.valid <= with_edges.valid).all()


def test_bad_inputs(setup) -> None:
    _, cams, r, cache = setup
    empty = PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(InvalidPointCloudError, match="3D cache is empty"):
        align_clip_depth(empty, r.rgb, r.depth, None, cams)
    with pytest.raises(InvalidDepthError, match="one map per camera"):
        align_clip_depth(cache, r.rgb, r.depth[:3], None, cams)
    with pytest.raises(InvalidDepthError, match="one map per camera"):
        align_clip_depth(cache, r.rgb[:3], r.depth[:3], None, cams)
    # negative depth without a mask is unusable (with a mask it may be affine-invariant depth): all skipped
    assert align_clip_depth(cache, r.rgb, -r.depth, None, cams).alignment.status == ("skipped",) * 4
    with pytest.raises(InvalidOptionError, match="min_covered_fraction"):
        align_clip_depth(cache, r.rgb, r.depth, None, cams, min_covered_fraction=1.5)


def test_fused_depth_is_merged_without_a_second_alignment(setup) -> None:
    """Depth fusion (Reconstruct Frames) then merge (Align & Merge Clip): the fused depth says it is
    already in the cache's units, so the merge lifts it as it is — same points, no refit."""
    from worldstereo_core.interfaces import LoopConfig
    from worldstereo_core.memory import Cache3D
    from worldstereo_core.merge import WorldDepth, merge_clip

    _, cams, r, cache = setup
    g = torch.Generator().manual_seed(3)
    s = 0.8 + 0.4 * torch.rand(4, generator=g)
    noisy = torch.where(
        r.depth > 0, r.depth * s[:, None, None] * (1 + 0.01 * torch.randn(r.depth.shape, generator=g)), torch.zeros(())
    )
    fused = align_clip_depth(cache, r.rgb, noisy, None, cams, seed=5)
    assert isinstance(fused.depth, WorldDepth)
    # the mark survives what a node does to pass it on, and nothing else
    assert isinstance(fused.depth.float().cpu().clone(), WorldDepth)
    assert not isinstance(fused.depth * 2, WorldDepth) and not isinstance(fused.depth + 0, WorldDepth)

    cfg = LoopConfig(edge_threshold=None)
    merged = merge_clip(
        Cache3D(cache), r.rgb, fused.depth.float(), fused.depth > 0, cams, cfg, seed=5, skip_first=False
    )
    assert merged.alignment.status == ("given",) * 4
    assert (merged.alignment.scale == 1).all() and (merged.alignment.shift == 0).all()
    lifted = unproject_depths(fused.depth.as_subclass(torch.Tensor), cams.K, cams.c2w, r.rgb, fused.valid)
    assert torch.allclose(merged.cloud_added.points, lifted.points)
    # the same numbers as a plain tensor are fitted again (scale ≈ 1 but not exactly: a second fit)
    again = merge_clip(Cache3D(cache), r.rgb, fused.depth * 1.0, fused.depth > 0, cams, cfg, seed=5, skip_first=False)
    assert set(again.alignment.status) == {"aligned"}
    assert torch.allclose(again.alignment.scale, torch.ones(4, dtype=torch.float64), atol=0.02)
    # umeyama mode does not re-align a fused clip either
    um = merge_clip(Cache3D(cache), r.rgb, fused.depth, None, cams, cfg, alignment="umeyama", skip_first=False)
    assert um.alignment.status == ("given",) * 4 and um.similarity is None
