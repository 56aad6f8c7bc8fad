"""Panorama depth: split geometry, the release's panorama frame, gradient-domain merge (oracle)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidDepthError, InvalidImageError
from worldstereo_core.recon.moge import MoGeModel
from worldstereo_core.recon.panorama_depth import (
    directions_to_equirect_pixels,
    equirect_directions,
    icosahedron_directions,
    merge_panorama_distance,
    moge_view_predictor,
    panorama_split_cameras,
    predict_panorama_depth,
    split_panorama,
)
from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG

# A room: box [OFF − HALF, OFF + HALF] around the panorama centre (not centred, not a cube).
HALF = torch.tensor([2.0, 3.0, 1.5], dtype=torch.float64)
OFF = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)


def box_distance(dirs: torch.Tensor) -> torch.Tensor:
    """Exact distance from the origin to the box walls along each direction ``[..., 3]``."""
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    hi, lo = OFF + HALF, OFF - HALF
    big = torch.full_like(d, 1e9)
    t = torch.where(d > 1e-12, hi / d.clamp_min(1e-12), torch.where(d < -1e-12, lo / d.clamp_max(-1e-12), big))
    return t.min(dim=-1).values


def view_rays_world(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent pixel-centre rays (camera frame, z = 1) and their world directions."""
    u = torch.arange(cams.width, dtype=torch.float64) + 0.5
    v = torch.arange(cams.height, dtype=torch.float64) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    K = cams.K.double()
    x = (uu[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (vv[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    rays = torch.stack([x, y, torch.ones_like(x)], -1)
    R = cams.w2c[:, :3, :3].double()
    return rays, torch.einsum("vji,vhwj->vhwi", R, rays)  # c2w rotation = Rᵀ


def make_oracle(scales: torch.Tensor, invalid=None):
    """Per-view z-depth of the room times a per-view scale (what a monocular model gets wrong)."""

    def predict(images, cams):
        assert images.shape == (12, cams.height, cams.width, 3)
        rays, world = view_rays_world(cams)
        z = box_distance(world) / rays.norm(dim=-1)
        mask = torch.ones_like(z, dtype=torch.bool) if invalid is None else ~invalid(world)
        return z * scales[:, None, None], mask

    return predict


def test_icosahedron_views_cover_the_sphere():
    v = icosahedron_directions()
    assert v.shape == (12, 3)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(12, dtype=torch.float64))
    cos = (v @ v.T - 2 * torch.eye(12, dtype=torch.float64)).max()
    assert math.degrees(math.acos(cos)) == pytest.approx(63.4349, abs=1e-3)  # icosahedron edge angle
    cams = panorama_split_cameras(64)
    R = cams.w2c[:, :3, :3]
    torch.testing.assert_close(R[:, 2], v)  # camera +z looks at the vertex
    torch.testing.assert_close(cams.w2c[:, :3, 3], torch.zeros(12, 3, dtype=R.dtype))
    assert cams.K[0, 0, 0].item() == pytest.approx(32.0)  # 90° over 64 px
    # up = +z: no camera's x axis leans out of the horizontal plane
    assert R[:, 0, 2].abs().max() < 1e-12
    # every equirect direction falls inside some 90° view (strictly, with margin)
    d = equirect_directions(32, 64).reshape(-1, 3)
    cam = torch.einsum("vij,nj->vni", R, d)
    inside = (cam[..., 2] > 0) & (cam[..., 0].abs() < cam[..., 2]) & (cam[..., 1].abs() < cam[..., 2])
    assert inside.any(0).all()


def test_panorama_frame_matches_the_release(fixtures_dir):
    """The release's first pano-bank view looks at the panorama centre column, z up."""
    root = fixtures_dir / "upstream_examples/examples/panorama/9c2dd62c7bb946a49e8e51278277eb6a/pano_bank/cameras.json"
    cams = json.loads(root.read_text())
    R = torch.tensor(cams["0000"]["extrinsic"], dtype=torch.float64)[:3, :3]
    dirs = equirect_directions(480, 960)
    centre = (dirs[239, 479] + dirs[240, 480]) / 2
    torch.testing.assert_close(F_normalize(centre), R[2], atol=1e-2, rtol=0)  # forward = −x
    torch.testing.assert_close(R[1], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))  # camera down = −z
    # the release's camera right is the direction of increasing u
    right = dirs[240, 500] - dirs[240, 460]
    assert (right @ R[0]) > 0


def F_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def test_equirect_pixel_round_trip():
    d = equirect_directions(16, 32)
    pix = directions_to_equirect_pixels(d, 16, 32)
    u = torch.arange(32, dtype=torch.float64) + 0.5
    v = torch.arange(16, dtype=torch.float64) + 0.5
    torch.testing.assert_close(pix[..., 0], u[None].expand(16, 32))
    torch.testing.assert_close(pix[..., 1], v[:, None].expand(16, 32))


def test_split_samples_the_right_directions():
    """A panorama that paints each pixel with its own direction: views must show their rays."""
    H, W = 128, 256
    pano = (equirect_directions(H, W) + 1) / 2
    cams = panorama_split_cameras(24)
    views = split_panorama(pano.numpy(), cams)
    assert isinstance(views, np.ndarray) and views.shape == (12, 24, 24, 3)
    _, world = view_rays_world(cams)
    expected = (world / world.norm(dim=-1, keepdim=True) + 1) / 2
    np.testing.assert_allclose(views, expected.numpy(), atol=0.02)


@pytest.mark.parametrize("size", [(32, 64)])
def test_merge_recovers_room_up_to_one_scale(size):
    H, W = size
    scales = torch.exp(torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5)
    result = predict_panorama_depth(torch.rand(H, W, 3), make_oracle(scales), split_resolution=48)
    assert result.distance.shape == (H, W) and result.mask.all()
    truth = box_distance(equirect_directions(H, W))
    log_ratio = result.distance.double().log() - truth.log()
    assert log_ratio.std() < 5e-3  # one global scale…
    assert (log_ratio - log_ratio.median()).abs().max() < 3e-2
    # …which is the views' typical scale (metric MoGe views keep their metres)
    assert log_ratio.median().item() == pytest.approx(scales.log().mean().item(), abs=0.25)
    assert scales.log().std() > 0.2  # the views really disagree (up to ×2.7 apart)
    # points lie on the room's walls (after removing the global scale)
    pts = result.points().double() / log_ratio.median().exp()
    lo, hi = OFF - HALF, OFF + HALF
    wall_gap = torch.minimum((pts - lo).abs(), (pts - hi).abs()).min(dim=-1).values
    assert wall_gap.max() < 0.1 and wall_gap.median() < 5e-3


def test_merge_without_scale_errors_is_exact_scale():
    scales = torch.ones(12, dtype=torch.float64)
    result = predict_panorama_depth(torch.rand(32, 64, 3), make_oracle(scales), split_resolution=48)
    truth = box_distance(equirect_directions(32, 64))
    rel = (result.distance.double() / truth - 1).abs()
    assert rel.median() < 2e-3 and rel.max() < 3e-2


def test_merge_mask_follows_view_masks():
    ceiling = lambda world: (world / world.norm(dim=-1, keepdim=True))[..., 2] > 0.8
    result = predict_panorama_depth(
        torch.rand(32, 64, 3), make_oracle(torch.ones(12, dtype=torch.float64), ceiling), split_resolution=48
    )
    dirs = equirect_directions(32, 64)
    assert not result.mask[dirs[..., 2] > 0.85].any()
    assert result.mask[dirs[..., 2] < 0.75].all()
    truth = box_distance(dirs)
    rel = (result.distance.double() / truth - 1).abs()[result.mask]
    assert rel.median() < 5e-3


def test_merge_resizes_to_panorama_and_warm_start():
    scales = torch.ones(12, dtype=torch.float64)
    result = predict_panorama_depth(
        torch.rand(40, 80, 3), make_oracle(scales), merge_size=(20, 40), split_resolution=32
    )
    assert result.distance.shape == (40, 80) and result.mask.shape == (40, 80)
    # the direct solve, plain lsmr and lsmr warm-started from a coarse solve agree
    cams = panorama_split_cameras(32)
    z, m = make_oracle(scales)(torch.zeros(12, 32, 32, 3), cams)
    rays, _ = view_rays_world(cams)
    dist = z * rays.norm(dim=-1)
    a, _ = merge_panorama_distance(dist, m, cams, 24, 48)
    b, _ = merge_panorama_distance(dist, m, cams, 24, 48, direct_limit=0)
    c, _ = merge_panorama_distance(dist, m, cams, 24, 48, coarse_limit=16, direct_limit=0)
    torch.testing.assert_close(a, b, rtol=5e-3, atol=0)
    torch.testing.assert_close(a, c, rtol=5e-3, atol=0)


def test_moge_predictor_runs_end_to_end():
    torch.manual_seed(0)
    model = MoGeModel(TINY_MOGE_CONFIG).eval()
    result = predict_panorama_depth(
        np.random.default_rng(0).random((16, 32, 3)).astype(np.float32), moge_view_predictor(model), split_resolution=28
    )
    assert isinstance(result.distance, np.ndarray) and result.distance.shape == (16, 32)
    assert result.view_depths.shape == (12, 28, 28)
    assert np.isfinite(result.distance).all() and (result.distance > 0).all()


def test_bad_inputs():
    oracle = make_oracle(torch.ones(12, dtype=torch.float64))
    with pytest.raises(InvalidImageError, match="2:1"):
        predict_panorama_depth(torch.rand(32, 32, 3), oracle)
    with pytest.raises(InvalidImageError, match=r"\[H, W, 3\]"):
        predict_panorama_depth(torch.rand(32, 64), oracle)
    with pytest.raises(InvalidImageError, match="divide 8-bit"):
        predict_panorama_depth(torch.rand(32, 64, 3) * 255, oracle)
    wrong = lambda images, cams: (torch.ones(12, 8, 8), torch.ones(12, 8, 8, dtype=torch.bool))
    with pytest.raises(InvalidDepthError, match="view predictor must return"):
        predict_panorama_depth(torch.rand(32, 64, 3), wrong, split_resolution=16)
    cams = panorama_split_cameras(16)
    with pytest.raises(InvalidDepthError, match="no view has a valid"):
        merge_panorama_distance(torch.ones(12, 16, 16), torch.zeros(12, 16, 16, dtype=torch.bool), cams, 16, 32)
    with pytest.raises(InvalidDepthError, match=r"\[V, h, w\]"):
        merge_panorama_distance(torch.ones(11, 16, 16), torch.ones(11, 16, 16, dtype=torch.bool), cams, 16, 32)
    with pytest.raises(InvalidImageError, match="split resolution"):
        panorama_split_cameras(1)
