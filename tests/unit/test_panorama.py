"""Equirectangular panoramas: analytic views, round trips, the release's bank layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from worldstereo_core.errors import InvalidDepthError, InvalidImageError
from worldstereo_core.panorama import (
    directions_to_equirect,
    equirect_directions,
    equirect_to_perspective,
    panorama_bank_cameras,
    panorama_bank_views,
    panorama_point_cloud,
    perspective_to_equirect,
)


def _colour_of(d: torch.Tensor) -> torch.Tensor:
    """A smooth RGB function of the direction (continuous across the seam and the poles)."""
    return 0.5 + 0.5 * torch.stack(
        [d[..., 0], d[..., 1] * d[..., 2] * 2 - 0.2, torch.sin(2 * d[..., 2] + d[..., 0])], -1
    ).clamp(-1, 1)


def _pano(h: int = 256) -> torch.Tensor:
    return _colour_of(equirect_directions(h, 2 * h))


def _rot(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """w2c looking at azimuth yaw (world z up, 180° = −x = pano centre), elevation pitch."""
    a, e = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)
    right = torch.nn.functional.normalize(
        torch.linalg.cross(fwd, torch.tensor([0, 0, 1.0], dtype=torch.float64)), dim=0
    )
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.stack([right, torch.linalg.cross(fwd, right), fwd])
    return T


def test_convention_centre_right_and_zenith():
    d = equirect_directions(4, 8)
    # Centre of the panorama looks along −x; a quarter turn right is +y; the top row is up.
    x, y = directions_to_equirect(
        torch.tensor([[-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0]], dtype=torch.float64), 4, 8
    )
    np.testing.assert_allclose(x.numpy()[:3], [4.0, 6.0, 2.0], atol=1e-12)
    assert float(y[3]) == pytest.approx(0.0)
    assert (d[0, :, 2] > 0.9).all() and (d[-1, :, 2] < -0.9).all()
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(4, 8, dtype=torch.float64))
    # Round trip pixel centre → direction → pixel centre.
    xx, yy = directions_to_equirect(d, 4, 8)
    v, u = torch.meshgrid(torch.arange(4.0) + 0.5, torch.arange(8.0) + 0.5, indexing="ij")
    torch.testing.assert_close(xx, u.double())
    torch.testing.assert_close(yy, v.double())


@pytest.mark.parametrize("yaw,pitch", [(180.0, 0.0), (0.0, 10.0), (-100.0, -30.0), (45.0, 60.0)])
def test_perspective_view_matches_analytic_function(yaw, pitch):
    # yaw = 0 looks at the seam (+x): longitude must wrap without artefacts.
    pano = _pano(512)
    h, w = 60, 100
    K = torch.tensor([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]], dtype=torch.float64)
    T = _rot(yaw, pitch)
    view = equirect_to_perspective(pano, T, K, h, w)
    assert view.shape == (h, w, 3)
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T
    d = torch.nn.functional.normalize(rays @ T[:3, :3], dim=-1)
    expected = _colour_of(d)
    assert (view - expected).abs().max() < 0.02
    assert (view - expected).abs().mean() < 0.003


def test_numpy_in_numpy_out_and_single_channel():
    pano = _pano(64).numpy().astype(np.float32)
    K = np.array([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]])
    out = equirect_to_perspective(pano, np.eye(4), K, 24, 32)
    assert isinstance(out, np.ndarray) and out.shape == (24, 32, 3) and out.dtype == np.float32
    depth = equirect_to_perspective(pano[..., 0], np.eye(4), K, 24, 32)
    np.testing.assert_allclose(depth, out[..., 0], atol=1e-6)


def test_round_trip_through_the_bank_layout():
    pano = _pano(128)
    bank = panorama_bank_cameras().resized(120, 208)
    views = torch.stack([equirect_to_perspective(pano, bank.w2c[i], bank.K[i], 120, 208) for i in range(len(bank))])
    back, weight = perspective_to_equirect(views, bank.w2c, bank.K, 128, 256)
    covered = weight > 1e-3
    lat = (0.5 - (torch.arange(128, dtype=torch.float64) + 0.5) / 128) * 180
    # The bank sees everything within ±70° of the horizon (views at ±26.6° with ±45° FoV).
    assert covered[(lat.abs() < 70)].all()
    assert not covered[0].any()  # the zenith stays uncovered
    err = (back - pano).abs()[covered]
    assert err.mean() < 0.005 and err.max() < 0.06


def test_bank_cameras_equal_the_release_fixture(fixtures_dir):
    path = next((fixtures_dir / "upstream_examples" / "examples" / "panorama").glob("*/pano_bank/cameras.json"))
    data = json.loads(path.read_text())
    E = torch.tensor([data[k]["extrinsic"] for k in sorted(data)], dtype=torch.float64)
    K = torch.tensor([data[k]["intrinsic"] for k in sorted(data)], dtype=torch.float64)
    cams = panorama_bank_cameras()
    assert len(cams) == 27 and (cams.height, cams.width) == (480, 832)
    torch.testing.assert_close(cams.w2c, E, atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.K, K, atol=0, rtol=1e-7)  # fixture is float32


def test_fixture_bank_images_restitch_consistently(fixtures_dir):
    # Stitch the release's 27 bank images with our convention, then re-render view 0 (the
    # panorama centre): it must match the original view where other views overlap it.
    folder = next((fixtures_dir / "upstream_examples" / "examples" / "panorama").glob("*/pano_bank"))
    cams = panorama_bank_cameras().resized(120, 208)
    imgs = torch.stack(
        [
            torch.from_numpy(
                np.array(
                    Image.open(folder / "images" / f"{i:04d}.png").convert("RGB").resize((208, 120), Image.BILINEAR)
                )
            ).float()
            / 255
            for i in range(27)
        ]
    )
    pano, weight = perspective_to_equirect(imgs[1:], cams.w2c[1:], cams.K[1:], 256, 512)  # without view 0
    view0 = equirect_to_perspective(pano, cams.w2c[0], cams.K[0], 120, 208)
    seen = equirect_to_perspective(weight[..., None], cams.w2c[0], cams.K[0], 120, 208)[..., 0] > 0.05
    assert seen.float().mean() > 0.8
    err = (view0 - imgs[0]).abs().mean(-1)[seen]
    assert err.mean() < 0.05  # loose: resampling twice at low resolution


def test_panorama_point_cloud_uses_ray_distance():
    h = 32
    pano = _pano(h)
    dist = torch.full((h, 2 * h), 3.0, dtype=torch.float64)
    dist[5, 7] = 0.0  # no depth: dropped
    cloud = panorama_point_cloud(pano, dist)
    assert len(cloud) == h * 2 * h - 1
    torch.testing.assert_close(cloud.points.norm(dim=-1), torch.full((len(cloud),), 3.0, dtype=torch.float64))
    # The centre pixels look along −x; colours follow their pixels.
    i = (h // 2) * 2 * h + h  # row h/2, column W/2 (index shifted by the dropped pixel)
    assert float(cloud.points[i - 1, 0]) < -2.9
    torch.testing.assert_close(cloud.colors[i - 1], pano[h // 2, h])
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    moved = panorama_point_cloud(pano, dist, c2w=T)
    torch.testing.assert_close(moved.points, cloud.points + T[:3, 3])
    keep = torch.zeros(h, 2 * h, dtype=torch.bool)
    keep[:4] = True
    assert len(panorama_point_cloud(pano, dist, mask=keep)) == 4 * 2 * h


def test_panorama_errors():
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]])
    with pytest.raises(InvalidImageError, match="2:1"):
        equirect_to_perspective(torch.rand(64, 100, 3), torch.eye(4), K, 24, 32)
    with pytest.raises(InvalidImageError, match="2:1"):
        panorama_point_cloud(torch.rand(64, 100, 3), torch.ones(64, 100))
    with pytest.raises(InvalidImageError, match="2:1"):
        perspective_to_equirect(torch.rand(1, 24, 32, 3), torch.eye(4)[None], K, 64, 100)
    with pytest.raises(InvalidDepthError, match="resize"):
        panorama_point_cloud(torch.rand(32, 64, 3), torch.ones(32, 60))
    with pytest.raises(InvalidDepthError, match="NaN"):
        panorama_point_cloud(torch.rand(32, 64, 3), torch.full((32, 64), float("nan")))


def test_bank_at_576p_keeps_the_release_views_and_field_of_view():
    """The paper's 576p panorama inference: same 27 rotations, same 120° × 90° field of view."""
    release = panorama_bank_cameras()
    hi = panorama_bank_cameras(torch.float64, 576, 1008)
    assert (hi.height, hi.width) == (576, 1008) and (release.height, release.width) == (480, 832)
    assert torch.equal(hi.w2c, release.w2c)
    fov_x = 2 * torch.rad2deg(torch.atan(hi.K[:, 0, 2] / hi.K[:, 0, 0]))
    fov_y = 2 * torch.rad2deg(torch.atan(hi.K[:, 1, 2] / hi.K[:, 1, 1]))
    torch.testing.assert_close(fov_x, torch.full((27,), 120.0, dtype=torch.float64))
    torch.testing.assert_close(fov_y, torch.full((27,), 90.0, dtype=torch.float64))
    # the 576p view shows what the release's view shows
    pano = torch.rand(64, 128, 3, generator=torch.Generator().manual_seed(0))
    pano = torch.nn.functional.avg_pool2d(pano.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(1, 2, 0)  # smooth
    small = panorama_bank_views(pano, release[:3])
    big = panorama_bank_views(pano, hi[:3])
    down = torch.nn.functional.interpolate(big.permute(0, 3, 1, 2), size=(480, 832), mode="area").permute(0, 2, 3, 1)
    assert (down - small).abs().mean() < 0.01
    with pytest.raises(InvalidImageError, match="multiples of 16"):
        panorama_bank_cameras(torch.float64, 576, 1000)
