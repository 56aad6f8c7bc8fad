"""reconstruct_with_worldmirror: input sizing, priors, masks, alignment into our frame, errors.

The geometry tests replace the network by a stand-in that returns a synthetic scene's *exact*
depth and cameras expressed in a known, different frame (another scale, rotation and origin);
the reconstruction must then land on the scene's true surfaces in our frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worldstereo_core.align import Similarity
from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import (
    AlignmentFailedError,
    CheckpointMismatchError,
    InvalidCameraError,
    InvalidDepthError,
    InvalidImageError,
    InvalidOptionError,
    InvalidPointCloudError,
)
from worldstereo_core.recon.reconstruct import (
    align_prediction,
    predict_worldmirror,
    reconstruct_with_worldmirror,
    reconstruction_masks,
    resize_frames,
    worldmirror_input_size,
)
from worldstereo_core.recon.worldmirror import WorldMirror, WorldMirrorOutput, load_worldmirror
from worldstereo_core.synthetic import look_at, make_scene
from worldstereo_core.tiny_configs import tiny_worldmirror_config

H, W = 56, 84  # multiples of 14: the network runs at the frames' size with target_size=84


def _rot(axis, angle: float) -> torch.Tensor:
    a = torch.nn.functional.normalize(torch.as_tensor(axis, dtype=torch.float64), dim=0)
    Kx = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


#: network frame = G(our frame)
G = Similarity(2.5, _rot([0.3, 1.0, -0.2], 0.7), torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64))


def _cams(eyes, height=H, width=W) -> Cameras:
    w2c = torch.stack([look_at(e, (0.0, 0.45, 4.0)) for e in eyes])
    K = intrinsics_from_fov(70.0, height, width)
    return Cameras(w2c.float(), K[None].expand(len(eyes), 3, 3).float(), height, width)


ARC = [(0.0, 0.0, 0.0), (0.4, 0.0, 0.1), (0.7, -0.2, 0.3), (0.5, -0.4, 0.6), (0.1, -0.3, 0.5), (-0.3, -0.1, 0.3)]
LINE = [(0.0, 0.0, 0.0), (0.0, 0.05, 0.3), (0.0, 0.1, 0.6)]


class FakeMirror:
    """Stands in for WorldMirror: exact depth/cameras of ``scene`` at ``cams``, in frame ``G``."""

    def __init__(self, scene, cams: Cameras, g: Similarity = G, conf=None, depth_scale=None):
        self.render = scene.render(cams)
        self.cams, self.g, self.conf = cams, g, conf
        self.depth_scale = depth_scale
        self.calls: list = []

    def __call__(self, images, priors, frames_chunk_size=8):
        self.calls.append((images, priors, frames_chunk_size))
        B, S, _, h, w = images.shape
        c2w = self.cams.c2w.double()
        net = c2w.clone()
        net[:, :3, :3] = self.g.R @ c2w[:, :3, :3]
        net[:, :3, 3] = self.g.s * c2w[:, :3, 3] @ self.g.R.T + self.g.t
        depth = self.render.depth.double() * (self.g.s if self.depth_scale is None else self.depth_scale)
        conf = (
            self.conf if self.conf is not None else 1 + torch.rand(S, h, w, generator=torch.Generator().manual_seed(1))
        )
        K = self.cams.K.double().clone()
        K[:, 0] *= w / self.cams.width
        K[:, 1] *= h / self.cams.height
        return WorldMirrorOutput(
            depth=depth[None].float(), depth_conf=conf[None].float(), c2w=net[None].float(), K=K[None].float()
        )


@pytest.fixture(scope="module")
def scene():
    return make_scene("room")


# ------------------------------------------------------------------------------------- sizing


def test_input_size_follows_upstream_rule() -> None:
    # 832 long side → 826 (multiple of 14, rounded down); 480·826/832 = 476.5 → 34 patches → 476
    assert worldmirror_input_size(480, 832) == (476, 826)
    assert worldmirror_input_size(832, 480) == (826, 476)
    # never upsampled: 416 → 406; 240·406/416 = 234.2 → 16.73 patches → 17 → 238
    assert worldmirror_input_size(240, 416) == (238, 406)
    assert worldmirror_input_size(56, 84, target_size=84) == (56, 84)
    with pytest.raises(InvalidImageError, match="elongated"):
        worldmirror_input_size(10, 2000)
    with pytest.raises(InvalidOptionError, match="target_size"):
        worldmirror_input_size(480, 832, target_size=20)


def test_resize_frames_shapes_and_identity() -> None:
    x = torch.rand(2, 60, 100, 3, generator=torch.Generator().manual_seed(0))
    y = resize_frames(x, (56, 84))
    assert y.shape == (2, 3, 56, 84) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(resize_frames(x, (60, 100)), x.permute(0, 3, 1, 2))
    # a constant image stays constant
    assert torch.allclose(resize_frames(torch.full((1, 60, 100, 3), 0.3), (56, 84)), torch.tensor(0.3), atol=1e-6)
    with pytest.raises(InvalidImageError):
        resize_frames(torch.rand(60, 100, 3), (56, 84))


# --------------------------------------------------------------------------------- geometry


def _truth(scene, cams: Cameras) -> torch.Tensor:
    """Exact surface points of every valid pixel (independent unprojection, pixel centres)."""
    r = scene.render(cams)
    pts = []
    v, u = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    for f in range(len(cams)):
        K = cams.K[f].double()
        x = (u - K[0, 2]) / K[0, 0] * r.depth[f]
        y = (v - K[1, 2]) / K[1, 1] * r.depth[f]
        cam = torch.stack([x, y, r.depth[f]], -1).double()
        c2w = cams.c2w[f].double()
        world = cam @ c2w[:3, :3].T + c2w[:3, 3]
        pts.append(world[r.valid[f]])
    return torch.cat(pts)


@pytest.mark.parametrize("camera_source", ["predicted", "known"])
def test_cloud_lands_on_true_surface_umeyama(scene, camera_source) -> None:
    cams = _cams(ARC)
    fake = FakeMirror(scene, cams)
    frames = fake.render.rgb
    rec = reconstruct_with_worldmirror(
        fake, frames, cams, target_size=84, conf_quantile=None, edge_threshold=None, camera_source=camera_source
    )
    assert rec.alignment == "umeyama"
    # the similarity found is G⁻¹
    inv = G.inverse()
    assert rec.sim.s == pytest.approx(inv.s, rel=1e-5)
    assert torch.allclose(rec.sim.R, inv.R, atol=1e-5) and torch.allclose(rec.sim.t, inv.t, atol=1e-4)
    # the cloud is the exact surface, point for point (same pixel order)
    truth = _truth(scene, cams)
    assert len(rec.cloud) == truth.shape[0]
    assert torch.allclose(rec.cloud.points.double(), truth, atol=2e-4)
    assert float(scene.distance_to_surface(rec.cloud.points).max()) < 2e-4
    # depth in our units, cameras in our frame
    assert torch.allclose(rec.depth, fake.render.depth, atol=1e-4)
    assert torch.allclose(rec.cameras.c2w.double(), cams.c2w.double(), atol=1e-4)
    assert rec.depth.shape == (6, H, W) and rec.conf.shape == (6, H, W) and rec.mask.shape == (6, H, W)
    # priors were the known c2w and K (no resize at this size)
    _, priors, _ = fake.calls[0]
    assert torch.allclose(priors.c2w[0].double(), cams.c2w.double(), atol=1e-6)
    assert torch.allclose(priors.K[0], cams.K)
    assert priors.depth is None


def test_straight_path_falls_back_to_poses(scene) -> None:
    cams = _cams(LINE)
    fake = FakeMirror(scene, cams)
    rec = reconstruct_with_worldmirror(
        fake, fake.render.rgb, cams, target_size=84, conf_quantile=None, edge_threshold=None
    )
    assert rec.alignment == "poses"
    assert rec.sim.s == pytest.approx(1 / G.s, rel=1e-5)
    assert torch.allclose(rec.cloud.points.double(), _truth(scene, cams), atol=2e-4)


def test_single_camera_scale_from_depth_prior(scene) -> None:
    cams = _cams(ARC[:1])
    fake = FakeMirror(scene, cams)
    true_depth = fake.render.depth
    rec = reconstruct_with_worldmirror(
        fake, fake.render.rgb, cams, target_size=84, use_depth_prior=true_depth, conf_quantile=None, edge_threshold=None
    )
    assert rec.alignment == "poses (depth scale)"
    assert rec.sim.s == pytest.approx(1 / G.s, rel=1e-5)
    assert torch.allclose(rec.cloud.points.double(), _truth(scene, cams), atol=2e-4)
    # the depth prior reached the network
    assert torch.equal(fake.calls[0][1].depth[0], true_depth)
    # without a depth prior the network's scale is kept (and said so)
    rec2 = reconstruct_with_worldmirror(
        fake, fake.render.rgb, cams, target_size=84, conf_quantile=None, edge_threshold=None
    )
    assert rec2.alignment == "poses (network scale)" and rec2.sim.s == 1.0
    # rotation / position still exact: the first camera coincides with ours
    assert torch.allclose(rec2.cameras.c2w.double(), cams.c2w.double(), atol=1e-5)


def test_resized_frames_rescale_K_and_come_back(scene) -> None:
    cams = _cams(ARC[:3], height=60, width=100)
    fake = FakeMirror(scene, cams.resized(56, 84))  # the network sees 56×84 (rule: 100→84, 60·0.84/14=3.6→4)
    frames = torch.rand(3, 60, 100, 3, generator=torch.Generator().manual_seed(0))
    pred = predict_worldmirror(fake, frames, cams, target_size=84)
    images, priors, _ = fake.calls[0]
    assert images.shape == (1, 3, 3, 56, 84)
    K = cams.K.double()
    want = K.clone()
    want[:, 0] *= 84 / 100
    want[:, 1] *= 56 / 60
    assert torch.allclose(priors.K[0].double(), want, atol=1e-5)
    assert pred.model_size == (56, 84)
    assert pred.depth.shape == (3, 60, 100) and pred.conf.shape == (3, 60, 100)
    # predicted K goes back to frame pixels: equal to the cameras' own K
    assert torch.allclose(pred.K, K, atol=1e-4)


def test_priors_off_and_chunk_size_forwarded(scene) -> None:
    cams = _cams(ARC[:3])
    fake = FakeMirror(scene, cams)
    predict_worldmirror(fake, fake.render.rgb, cams, target_size=84, use_priors=False, chunk_size=2)
    assert fake.calls[0][1] is None and fake.calls[0][2] == 2


# ------------------------------------------------------------------------------------- masks


def test_confidence_quantile_mask_matches_numpy() -> None:
    g = torch.Generator().manual_seed(5)
    conf = 1 + torch.rand(2, 10, 12, generator=g)
    depth = torch.ones(2, 10, 12)
    keep = reconstruction_masks(depth, conf, 0.15, None)
    for f in range(2):
        thr = np.quantile(conf[f].numpy().astype(np.float64), 0.15)
        assert np.array_equal(keep[f].numpy(), conf[f].numpy() >= thr - 1e-7)
    assert reconstruction_masks(depth, conf, None, None).all()
    depth[0, 0, 0] = 0.0
    assert not reconstruction_masks(depth, conf, None, None)[0, 0, 0]


def test_edge_mask_drops_depth_step() -> None:
    depth = torch.ones(1, 16, 16)
    depth[:, :, 8:] = 10.0
    keep = reconstruction_masks(depth, torch.ones_like(depth), None, 0.35)
    assert not keep[0, :, 7:9].any()  # both sides of the step
    assert keep[0, :, :5].all() and keep[0, :, 11:].all()


# ------------------------------------------------------------------------------- tiny model


def test_tiny_worldmirror_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = WorldMirror(tiny_worldmirror_config()).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_worldmirror(path, tiny_worldmirror_config())
    cams = _cams(ARC[:3], height=28, width=42)
    frames = torch.rand(3, 28, 42, 3, generator=torch.Generator().manual_seed(2))
    steps = []
    rec = reconstruct_with_worldmirror(
        loaded, frames, cams, target_size=42, camera_source="known", progress=lambda s, t: steps.append((s, t))
    )
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert rec.depth.shape == (3, 28, 42) and rec.conf.shape == (3, 28, 42) and rec.mask.shape == (3, 28, 42)
    assert len(rec.cloud) == int(rec.mask.sum()) > 0
    assert rec.prediction.model_size == (28, 42) and rec.prediction.used_priors
    assert len(rec.cameras) == 3 and (rec.cameras.height, rec.cameras.width) == (28, 42)
    assert torch.isfinite(rec.cloud.points).all()
    # the cloud is the kept pixels of depth unprojected with the returned cameras
    f, v, u = [int(i) for i in rec.mask.nonzero()[0]]
    K, c2w = rec.cameras.K[f].double(), rec.cameras.c2w[f].double()
    d = float(rec.depth[f, v, u])
    p_cam = torch.tensor([(u + 0.5 - K[0, 2]) / K[0, 0] * d, (v + 0.5 - K[1, 2]) / K[1, 1] * d, d], dtype=torch.float64)
    assert torch.allclose(rec.cloud.points[0].double(), c2w[:3, :3] @ p_cam + c2w[:3, 3], atol=1e-4)


# ------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(scene) -> None:
    cams = _cams(ARC[:3])
    fake = FakeMirror(scene, cams)
    frames = fake.render.rgb
    with pytest.raises(InvalidCameraError, match="3 frames but 2 cameras"):
        reconstruct_with_worldmirror(fake, frames, cams[:2], target_size=84)
    with pytest.raises(InvalidCameraError, match="resized"):
        reconstruct_with_worldmirror(fake, frames, cams.resized(28, 42), target_size=84)
    with pytest.raises(InvalidCameraError, match="needs the frames' cameras"):
        reconstruct_with_worldmirror(fake, frames, None, target_size=84)
    with pytest.raises(InvalidCameraError, match="use_priors"):
        predict_worldmirror(fake, frames, None, target_size=84)
    with pytest.raises(InvalidImageError, match=r"\[F, H, W, 3\]"):
        reconstruct_with_worldmirror(fake, frames[0], cams[:1], target_size=84)
    with pytest.raises(InvalidOptionError, match="conf_quantile"):
        reconstruct_with_worldmirror(fake, frames, cams, target_size=84, conf_quantile=1.5)
    with pytest.raises(InvalidOptionError, match="camera_source"):
        reconstruct_with_worldmirror(fake, frames, cams, target_size=84, camera_source="gt")
    with pytest.raises(InvalidOptionError, match="alignment method"):
        reconstruct_with_worldmirror(fake, frames, cams, target_size=84, alignment="icp")
    with pytest.raises(InvalidDepthError, match="depth_prior"):
        reconstruct_with_worldmirror(fake, frames, cams, target_size=84, use_depth_prior=torch.ones(3, 10, 10))
    with pytest.raises(InvalidOptionError, match="chunk_size"):
        reconstruct_with_worldmirror(fake, frames, cams, target_size=84, chunk_size=0)

    class Headless(FakeMirror):
        def __call__(self, images, priors, frames_chunk_size=8):
            out = super().__call__(images, priors, frames_chunk_size)
            return WorldMirrorOutput(depth=None, c2w=out.c2w, K=out.K)

    with pytest.raises(CheckpointMismatchError, match="depth or camera head"):
        reconstruct_with_worldmirror(Headless(scene, cams), frames, cams, target_size=84)

    zero = FakeMirror(scene, cams, depth_scale=0.0)
    with pytest.raises(InvalidPointCloudError, match="masked out"):
        reconstruct_with_worldmirror(zero, frames, cams, target_size=84, conf_quantile=None, edge_threshold=None)


def test_align_prediction_errors_and_forced_umeyama() -> None:
    line = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    line[:, 2, 3] = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(AlignmentFailedError):
        align_prediction(line, line, method="umeyama")
    sim, how = align_prediction(line, line)
    assert how == "poses" and sim.s == pytest.approx(1.0)
    with pytest.raises(InvalidCameraError, match=r"\[F, 4, 4\]"):
        align_prediction(line[:2], line)


# ------------------------------------------------------------------------------------ clips


def test_clip_cameras_keyframes_poses_and_resize() -> None:
    from worldstereo_core.recon.reconstruct import clip_cameras
    from worldstereo_core.trajectory import Trajectory

    a = Trajectory(_cams(ARC * 7)[:41], name="a")  # 41 poses
    b = Trajectory(_cams(list(reversed(ARC)) * 7)[:41], name="b")
    # 2 × 21 frames: each trajectory's keyframes, in order
    clips = clip_cameras([a, b], 42, H, W)
    assert [len(c) for c in clips] == [21, 21]
    assert torch.equal(clips[0].w2c, a.keyframes(21).w2c) and torch.equal(clips[1].w2c, b.keyframes(21).w2c)
    # every pose
    clips = clip_cameras([a, b], 82, H, W)
    assert torch.equal(clips[1].w2c, b.cameras.w2c)
    # frames at twice the size: K doubles
    big = clip_cameras([a], 21, 2 * H, 2 * W)[0]
    assert (big.height, big.width) == (2 * H, 2 * W) and torch.allclose(big.K[:, :2], 2 * a.keyframes(21).K[:, :2])
    with pytest.raises(InvalidCameraError, match="got 30 frames"):
        clip_cameras([a, b], 30, H, W)
    with pytest.raises(InvalidCameraError, match="aspect"):
        clip_cameras([a], 21, H, 2 * W)
    with pytest.raises(InvalidCameraError, match="no trajectory"):
        clip_cameras([], 21, H, W)


def test_reconstruct_clips_one_call_per_clip(scene) -> None:
    from worldstereo_core.recon.reconstruct import reconstruct_clips

    c1, c2 = _cams(ARC[:3]), _cams(ARC[3:])
    f1, f2 = FakeMirror(scene, c1), FakeMirror(scene, c2)
    calls = []

    def model(images, priors, frames_chunk_size=8):
        calls.append(images.shape[1])
        return (f1 if len(calls) == 1 else f2)(images, priors, frames_chunk_size)

    frames = torch.cat([f1.render.rgb, f2.render.rgb])
    steps = []
    recs = reconstruct_clips(
        model,
        frames,
        [c1, c2],
        target_size=84,
        conf_quantile=None,
        edge_threshold=None,
        progress=lambda s, t: steps.append((s, t)),
    )
    assert calls == [3, 3] and steps == [(i, 8) for i in range(1, 9)]
    for rec, f in zip(recs, (f1, f2)):
        truth = f.render.depth
        assert torch.allclose(rec.depth[truth > 0], truth[truth > 0], rtol=1e-4)
    with pytest.raises(InvalidCameraError, match="5 frames but the clips hold 6"):
        reconstruct_clips(model, frames[:5], [c1, c2])
