"""DepthEstimator adapters: MoGe-2 and WorldMirror through real (tiny) safetensors files,
and WorldMirror's depth in our units checked against a synthetic scene's exact depth."""

from __future__ import annotations

import math

import pytest
import torch

from worldstereo_core.align import Similarity
from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import InvalidCameraError, InvalidImageError
from worldstereo_core.interfaces import DepthEstimator
from worldstereo_core.recon.estimators import MoGeDepthEstimator, WorldMirrorDepthEstimator, fov_x_degrees
from worldstereo_core.recon.moge import MoGeModel, load_moge, predict_depth, save_moge
from worldstereo_core.recon.reconstruct import reconstruct_with_worldmirror
from worldstereo_core.recon.worldmirror import (
    WorldMirror,
    WorldMirrorOutput,
    load_worldmirror,
    save_worldmirror,
)
from worldstereo_core.synthetic import look_at, make_scene
from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG, tiny_worldmirror_config

H, W = 28, 42
EYES = [(0.0, 0.0, 0.0), (0.4, 0.0, 0.1), (0.7, -0.2, 0.3), (0.3, -0.4, 0.4)]


def _cams(eyes=EYES, fov=(70.0,), height=H, width=W) -> Cameras:
    w2c = torch.stack([look_at(e, (0.0, 0.45, 4.0)) for e in eyes])
    fovs = list(fov) * len(eyes) if len(fov) == 1 else list(fov)
    K = torch.stack([intrinsics_from_fov(f, height, width) for f in fovs])
    return Cameras(w2c.float(), K.float(), height, width)


@pytest.fixture(scope="module")
def scene():
    return make_scene("room")


@pytest.fixture(scope="module")
def tiny_moge(tmp_path_factory) -> MoGeModel:
    model = MoGeModel(TINY_MOGE_CONFIG)
    g = torch.Generator().manual_seed(4)  # as the integration test: a seed whose fits are sane
    state = {
        k: v if k.endswith(("image_mean", "image_std")) else torch.randn(v.shape, generator=g) * 0.1
        for k, v in model.state_dict().items()
    }
    state["mask_head.output_blocks.3.bias"] = torch.full((1,), 8.0)  # every pixel valid
    model.load_state_dict(state)
    folder = tmp_path_factory.mktemp("moge")
    save_moge(model, folder)
    return load_moge(folder / "model.safetensors")


@pytest.fixture(scope="module")
def tiny_mirror(tmp_path_factory) -> WorldMirror:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("worldmirror")
    path = save_worldmirror(WorldMirror(tiny_worldmirror_config()).eval(), folder)
    return load_worldmirror(path)  # config from the folder's config.json


def test_fov_from_K() -> None:
    cams = _cams(fov=(50.0, 70.0, 90.0, 100.0))
    assert torch.allclose(fov_x_degrees(cams), torch.tensor([50.0, 70.0, 90.0, 100.0], dtype=torch.float64), atol=1e-4)


def test_moge_estimator_uses_each_frames_fov(tiny_moge, scene) -> None:
    cams = _cams(EYES[:3], fov=(50.0, 70.0, 90.0))
    frames = scene.render(cams).rgb
    est = MoGeDepthEstimator(tiny_moge, resolution_level=0, batch_size=1)
    assert isinstance(est, DepthEstimator)
    depth, valid = est(frames, cams)
    # batches change only float rounding (MoGe's shift solve magnifies it a little)
    batched, bvalid = MoGeDepthEstimator(tiny_moge, resolution_level=0, batch_size=2)(frames, cams)
    assert torch.equal(bvalid, valid) and torch.allclose(batched, depth, rtol=1e-3)
    assert depth.shape == (3, H, W) and valid.shape == (3, H, W) and valid.dtype == torch.bool
    assert valid.any() and (depth[valid] > 0).all() and (depth[~valid] == 0).all()
    for i, fov in enumerate((50.0, 70.0, 90.0)):  # frame by frame with the FoV given by hand
        ref = predict_depth(tiny_moge, frames[i], fov_x=fov, resolution_level=0)
        assert torch.allclose(depth[i], torch.as_tensor(ref.depth).float(), rtol=1e-4, atol=1e-5)
    # the FoV matters: recovering MoGe's own focal gives another depth
    free, _ = MoGeDepthEstimator(tiny_moge, resolution_level=0, use_known_fov=False)(frames, cams)
    assert not torch.allclose(free, depth, rtol=1e-3)


def test_worldmirror_estimator_through_safetensors(tiny_mirror, scene) -> None:
    cams = _cams()
    frames = scene.render(cams).rgb
    steps = []
    est = WorldMirrorDepthEstimator(tiny_mirror, target_size=W, progress=lambda s, t: steps.append(s))
    assert isinstance(est, DepthEstimator)
    depth, valid = est(frames, cams)
    assert depth.shape == (4, H, W) and valid.dtype == torch.bool and valid.any()
    assert (depth[~valid] == 0).all() and (depth[valid] > 0).all() and torch.isfinite(depth).all()
    assert steps == [1, 2, 3, 4] and est.last is not None and est.last.prediction.used_priors
    ref = reconstruct_with_worldmirror(tiny_mirror, frames, cams, target_size=W, camera_source="known")
    assert torch.equal(valid, ref.mask) and torch.allclose(depth[valid], ref.depth[valid])
    # priors off is another network input, hence another prediction
    d2, _ = WorldMirrorDepthEstimator(tiny_mirror, use_priors=False, target_size=W)(frames, cams)
    assert not torch.allclose(d2, depth)


class _ExactMirror:
    """Exact depth/cameras of the scene, expressed in a network frame ``G`` (scale 2.5)."""

    def __init__(self, scene, cams: Cameras):
        self.depth = scene.render(cams).depth.double()
        self.cams = cams
        a = torch.tensor([0.3, 1.0, -0.2], dtype=torch.float64)
        a = a / a.norm()
        Kx = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
        R = torch.eye(3, dtype=torch.float64) + math.sin(0.7) * Kx + (1 - math.cos(0.7)) * Kx @ Kx
        self.g = Similarity(2.5, R, torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64))

    def __call__(self, images, priors, frames_chunk_size=8):
        c2w = self.cams.c2w.double()
        net = c2w.clone()
        net[:, :3, :3] = self.g.R @ c2w[:, :3, :3]
        net[:, :3, 3] = self.g.s * c2w[:, :3, 3] @ self.g.R.T + self.g.t
        return WorldMirrorOutput(
            depth=(self.depth * self.g.s)[None].float(),
            depth_conf=torch.ones(1, *self.depth.shape),
            c2w=net[None].float(),
            K=self.cams.K[None].float(),
        )


def test_worldmirror_estimator_gives_depth_in_our_units(scene) -> None:
    cams = _cams()
    r = scene.render(cams)
    depth, valid = WorldMirrorDepthEstimator(
        _ExactMirror(scene, cams), target_size=W, conf_quantile=None, edge_threshold=None
    )(r.rgb, cams)
    assert torch.equal(valid, r.depth > 0)
    assert torch.allclose(depth[valid], r.depth[valid], rtol=1e-4)  # network scale 2.5 undone


def test_estimators_refuse_mismatched_cameras(tiny_moge, scene) -> None:
    cams = _cams()
    frames = scene.render(cams).rgb
    for est in (
        MoGeDepthEstimator(tiny_moge, resolution_level=0),
        WorldMirrorDepthEstimator(_ExactMirror(scene, cams)),
    ):
        with pytest.raises(InvalidCameraError, match="4 frames but 3 cameras"):
            est(frames, cams[:3])
        with pytest.raises(InvalidCameraError, match="resized"):
            est(frames, cams.resized(2 * H, 2 * W))
        with pytest.raises(InvalidImageError, match=r"\[F, H, W, 3\]"):
            est(frames[0], cams[:1])
        with pytest.raises(InvalidCameraError, match="Cameras batch"):
            est(frames, cams.w2c)
    with pytest.raises(InvalidImageError, match="batch_size"):
        MoGeDepthEstimator(tiny_moge, batch_size=0)
