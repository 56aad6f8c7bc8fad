"""WorldMirror 2.0: schema equality at full size (meta), tiny forward on CPU, priors, loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from worldstereo_core.errors import (
    CheckpointMismatchError,
    InvalidCameraError,
    InvalidDepthError,
    InvalidImageError,
    MissingFileError,
    UnsafeFileError,
)
from worldstereo_core.recon.worldmirror import (
    K_from_upstream_centres,
    K_to_upstream_centres,
    WorldMirror,
    WorldMirrorConfig,
    WorldMirrorPriors,
    camera_vector_to_matrices,
    config_to_dict,
    encode_prior_poses,
    load_worldmirror,
    normalize_prior_depth,
    normalize_prior_poses,
)
from worldstereo_core.tiny_configs import tiny_worldmirror_config


def _rot(axis, angle: float) -> torch.Tensor:
    a = torch.nn.functional.normalize(torch.as_tensor(axis, dtype=torch.float64), dim=0)
    Kx = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero random weights everywhere (zero-init layers would hide the priors' effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.05) + (1.0 if "gamma" in name else 0.0)
            )
    return model


@pytest.fixture(scope="module")
def tiny() -> WorldMirror:
    torch.manual_seed(0)
    return _randomize(WorldMirror(tiny_worldmirror_config())).eval()


def _priors(B: int, S: int, H: int, W: int) -> WorldMirrorPriors:
    c2w = torch.eye(4).repeat(B, S, 1, 1)
    for s in range(S):
        c2w[:, s, :3, :3] = _rot([0, 1, 0.2], 0.2 * s).float()
        c2w[:, s, :3, 3] = torch.tensor([0.3 * s, 0.05 * s, 0.1])
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]).repeat(B, S, 1, 1)
    depth = 1 + torch.rand(B, S, H, W, generator=torch.Generator().manual_seed(3))
    return WorldMirrorPriors(c2w=c2w, K=K, depth=depth)


# ---------------------------------------------------------------------------------------- schema


def test_full_config_matches_release_schema(fixtures_dir: Path) -> None:
    schema = json.loads((fixtures_dir / "checkpoints" / "worldmirror2_state_dict_schema.json").read_text())
    with torch.device("meta"):
        model = WorldMirror(WorldMirrorConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v["shape"] for k, v in schema["keys"].items()}
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - schema["params_total"]) / schema["params_total"] < 1e-4
    groups = {
        g: sum(p.numel() for n, p in model.named_parameters() if n.startswith(g + ".")) / 1e6
        for g in schema["groups_M"]
    }
    for g, m in schema["groups_M"].items():
        assert abs(groups[g] - m) < 0.01, g


def test_upstream_config_mapping() -> None:
    cfg = WorldMirrorConfig.from_upstream({"model_size": "large", "enable_gs": False, "enable_norm": False})
    assert cfg.embed_dim == 1024 and cfg.depth == 24 and not cfg.enable_gs and not cfg.enable_norm
    assert cfg.intermediate_layers == (4, 11, 17, 23)
    with torch.device("meta"):
        keys = WorldMirror(cfg).state_dict().keys()
    assert not any(k.startswith(("gs_head", "gs_renderer", "norm_head")) for k in keys)
    with pytest.raises(CheckpointMismatchError, match="model_size"):
        WorldMirrorConfig.from_upstream({"model_size": "huge"})
    with pytest.raises(CheckpointMismatchError, match="patch_embed"):
        WorldMirrorConfig.from_upstream({"patch_embed": "conv"})
    with pytest.raises(CheckpointMismatchError, match="intermediate_layers"):
        tiny_worldmirror_config(intermediate_layers=(0, 1, 1, 1))


# ---------------------------------------------------------------------------------------- forward


def test_tiny_forward_shapes_and_ranges(tiny: WorldMirror) -> None:
    B, S, H, W = 1, 3, 42, 56
    images = torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny(images)
    assert out.depth.shape == out.depth_conf.shape == out.depth_mask.shape == (B, S, H, W)
    assert out.points.shape == out.normals.shape == (B, S, H, W, 3)
    assert out.points_conf.shape == out.normals_conf.shape == (B, S, H, W)
    assert out.camera_params.shape == (B, S, 9)
    assert out.c2w.shape == (B, S, 4, 4) and out.K.shape == (B, S, 3, 3)
    for t in (out.depth, out.points, out.normals, out.c2w):
        assert torch.isfinite(t).all()
    # the field of view goes through a ReLU (as released): random weights may give fov = 0, K = inf
    fov_ok = (out.camera_params[..., 7:] > 0).all(-1)
    assert torch.isfinite(out.K[fov_ok]).all()
    assert (out.depth > 0).all() and (out.depth_conf >= 1).all() and (out.points_conf >= 1).all()
    assert torch.allclose(out.normals.norm(dim=-1), torch.ones(()), atol=1e-5)
    # the c2w are rigid and K has the network's centred principal point (W/2, H/2 in its integer pixel
    # centres = W/2 + 0.5, H/2 + 0.5 in ours)
    R = out.c2w[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(out.K[..., 0, 2], torch.full((B, S), W / 2 + 0.5))
    assert torch.allclose(out.K[..., 1, 2], torch.full((B, S), H / 2 + 0.5))
    sp = out.splats
    assert sp["means"].shape == (B, S, H, W, 3) and sp["sh"].shape == (B, S, H, W, 1, 3)
    assert torch.allclose(sp["quats"].norm(dim=-1), torch.ones(()), atol=1e-4)
    assert (sp["scales"] <= 0.3).all() and ((sp["opacities"] >= 0) & (sp["opacities"] <= 1)).all()


def test_dense_heads_do_not_depend_on_chunking(tiny: WorldMirror) -> None:
    images = torch.rand(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = tiny(images, frames_chunk_size=1)
        b = tiny(images, frames_chunk_size=8)
    # compare before the exp / expm1 output activations, which amplify float noise
    assert torch.allclose(a.depth.log(), b.depth.log(), atol=1e-4)

    def pre(p: torch.Tensor) -> torch.Tensor:
        return torch.sign(p) * torch.log1p(p.abs())

    assert torch.allclose(pre(a.points), pre(b.points), atol=1e-4)
    assert torch.allclose(a.normals, b.normals, atol=1e-4)


def test_frames_interact_through_global_attention(tiny: WorldMirror) -> None:
    g = torch.Generator().manual_seed(4)
    images = torch.rand(1, 2, 3, 28, 28, generator=g)
    other = images.clone()
    other[:, 1] = torch.rand(3, 28, 28, generator=g)
    with torch.no_grad():
        a, b = tiny(images), tiny(other)
    # changing view 1 changes view 0's depth: the views are reconstructed jointly
    assert not torch.allclose(a.depth[:, 0], b.depth[:, 0])


def test_each_prior_changes_the_output(tiny: WorldMirror) -> None:
    B, S, H, W = 1, 3, 28, 42
    images = torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(5))
    full = _priors(B, S, H, W)
    with torch.no_grad():
        base = tiny(images)
        empty = tiny(images, WorldMirrorPriors())
        assert torch.equal(base.depth, empty.depth)  # no prior = zero tokens = no priors object
        for kw in ({"c2w": full.c2w}, {"K": full.K}, {"depth": full.depth}):
            out = tiny(images, WorldMirrorPriors(**kw))
            assert not torch.allclose(out.depth, base.depth), kw.keys()
            assert not torch.allclose(out.camera_params, base.camera_params), kw.keys()


def test_priors_as_upstream_encodes_them() -> None:
    # pose encoding: relative to view 0, positions in [0, 1]^3, quaternion xyzw of the relative rotation
    c2w = _priors(1, 4, 14, 14).c2w.double()
    vec = encode_prior_poses(c2w)
    assert vec.shape == (1, 4, 7)
    assert torch.allclose(vec[0, 0, 3:], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64), atol=1e-12)
    rel = torch.linalg.inv(c2w[:, :1]) @ c2w
    for s in range(4):
        x, y, z, w = vec[0, s, 3:].tolist()
        R = rel[0, s, :3, :3]
        # independent quaternion → matrix formula
        Rq = torch.tensor(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ],
            dtype=torch.float64,
        )
        assert torch.allclose(Rq, R, atol=1e-10)
    pos = rel[0, :, :3, 3]
    lo, hi = pos.min(0).values, pos.max(0).values
    scale = (hi - lo).max() / 0.8
    assert torch.allclose(vec[0, :, :3], ((pos - (lo + hi) / 2) / scale + 0.5).clamp(0, 1), atol=1e-12)
    # the largest extent spans exactly [0.1, 0.9]
    k = int((hi - lo).argmax())
    assert torch.isclose(vec[0, :, k].min(), torch.tensor(0.1, dtype=torch.float64)) and torch.isclose(
        vec[0, :, k].max(), torch.tensor(0.9, dtype=torch.float64)
    )
    # > 10 cameras: robust 5 %/95 % bounds, outliers clamp to the cube
    many = torch.eye(4, dtype=torch.float64).repeat(1, 21, 1, 1)
    many[0, :, 0, 3] = torch.arange(21.0)
    many[0, 20, 0, 3] = 1000.0
    n = normalize_prior_poses(many)[0, :, 0, 3]
    assert n.max() == 1.0 and 0 <= n.min() < 0.1


def test_depth_prior_normalisation() -> None:
    d = torch.linspace(1, 100, 200 * 10).reshape(1, 1, 200, 10)
    d[0, 0, 0, :5] = 0  # invalid pixels
    n = normalize_prior_depth(d)
    vals = d[d > 0]
    lo, hi = torch.quantile(vals, 0.01), torch.quantile(vals, 0.99)
    expected = ((d - lo) / (hi - lo + (hi - lo) * 1e-6)).clamp(0, 1)
    assert torch.allclose(n, expected, atol=1e-6)
    assert (n[0, 0, 0, :5] == 0).all()
    small = torch.tensor([[[[2.0, 4.0], [6.0, 0.0]]]])
    assert torch.allclose(normalize_prior_depth(small), torch.tensor([[[[0.0, 0.5], [1.0, 0.0]]]]), atol=1e-5)


def test_camera_vector_conventions() -> None:
    R = _rot([0.3, 1, 0], 0.7).float()
    t = torch.tensor([0.5, -0.2, 1.0])
    # xyzw of R via its angle-axis
    axis = torch.nn.functional.normalize(torch.tensor([0.3, 1, 0]), dim=0)
    q = torch.cat([axis * math.sin(0.35), torch.tensor([math.cos(0.35)])])
    fov_v, fov_u = 0.9, 1.2
    vec = torch.cat([t, q, torch.tensor([fov_v, fov_u])])[None]
    c2w, K = camera_vector_to_matrices(vec, 48, 64)
    w2c = torch.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, t
    assert torch.allclose(c2w[0], torch.linalg.inv(w2c), atol=1e-5)
    assert torch.isclose(K[0, 0, 0], torch.tensor(32 / math.tan(0.6))) and torch.isclose(
        K[0, 1, 1], torch.tensor(24 / math.tan(0.45))
    )


def test_camera_vector_principal_point_in_our_pixel_centres() -> None:
    """WorldMirror's principal point (W/2, H/2) with integer centres is (W/2 + 0.5, H/2 + 0.5) in ours."""
    vec = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1, 0.9, 1.2]])
    _, K = camera_vector_to_matrices(vec, 48, 64)
    assert K[0, 0, 2].item() == 32.5 and K[0, 1, 2].item() == 24.5
    assert torch.equal(K_to_upstream_centres(K)[0, :2, 2], torch.tensor([32.0, 24.0]))
    assert torch.equal(K_from_upstream_centres(K_to_upstream_centres(K)), K)


def _upstream_lift(depth: torch.Tensor, vec: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame points ``[N, H, W, 3]`` as HY-World-2.0 lifts them: integer pixel centres (u, v) and its
    own K (fx = W/2 / tan(fov_u/2), cx = W/2), written independently of the module under test."""
    fy = height * 0.5 / torch.tan(vec[:, 7] * 0.5)
    fx = width * 0.5 / torch.tan(vec[:, 8] * 0.5)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    d = depth.double()
    x = (u - width * 0.5) / fx.double()[:, None, None] * d
    y = (v - height * 0.5) / fy.double()[:, None, None] * d
    return torch.stack([x, y, d], -1)


def test_splat_means_equal_upstream_integer_centre_lift(tiny: WorldMirror) -> None:
    """Our lift (centres u + 0.5, our K) of the splat depth gives upstream's points (centres u, its K)."""
    torch.manual_seed(1)
    B, S, H, W = 1, 2, 28, 42
    images = torch.rand(B, S, 3, H, W)
    with torch.no_grad():
        out = tiny(images)
    vec = out.camera_params.reshape(B * S, 9)
    cam = _upstream_lift(out.splats["depth"].reshape(B * S, H, W), vec, H, W)
    c2w = out.c2w.reshape(B * S, 4, 4).double()
    world = torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
    torch.testing.assert_close(out.splats["means"].reshape(B * S, H, W, 3).double(), world, rtol=1e-4, atol=1e-4)
    # and the other way: our K lifts at u + 0.5 to the same camera rays
    K = out.K.reshape(B * S, 3, 3).double()
    assert torch.allclose(K[:, 0, 2], torch.full((B * S,), W / 2 + 0.5, dtype=torch.float64))


def test_intrinsics_prior_uses_upstream_pixel_centres(tiny: WorldMirror) -> None:
    B, S, H, W = 1, 2, 14, 28
    priors = _priors(B, S, H, W)  # K in our convention: principal point (W/2, H/2)
    _, rays, _ = tiny.encode_priors(torch.rand(B, S, 3, H, W), priors)
    want = torch.tensor([40.0 / W, 40.0 / H, (W / 2 - 0.5) / W, (H / 2 - 0.5) / H]).expand(B, S, 4)
    torch.testing.assert_close(rays, want)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs(tiny: WorldMirror) -> None:
    img = torch.rand(1, 2, 3, 28, 28)
    with pytest.raises(InvalidImageError, match="multiple of the patch size"):
        tiny(torch.rand(1, 2, 3, 30, 28))
    with pytest.raises(InvalidImageError, match=r"\[B, S, 3, H, W\]"):
        tiny(torch.rand(2, 3, 28, 28))
    with pytest.raises(InvalidCameraError, match="c2w"):
        tiny(img, WorldMirrorPriors(c2w=torch.eye(4).repeat(1, 3, 1, 1)))  # 3 cameras for 2 frames
    with pytest.raises(InvalidCameraError, match="K"):
        tiny(img, WorldMirrorPriors(K=torch.zeros(1, 2, 3, 3)))
    with pytest.raises(InvalidDepthError, match="no positive"):
        tiny(img, WorldMirrorPriors(depth=torch.zeros(1, 2, 28, 28)))
    with pytest.raises(InvalidDepthError, match="shape"):
        tiny(img, WorldMirrorPriors(depth=torch.ones(1, 3, 28, 28)))


# ---------------------------------------------------------------------------------------- loading


def test_load_round_trip_through_safetensors(tmp_path: Path, tiny: WorldMirror) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    # clone: the shared RoPE buffer appears under every block, safetensors refuses shared storage
    save_file({k: v.clone().contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_worldmirror(path, tiny_worldmirror_config())
    images = torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(6))
    pri = _priors(1, 2, 28, 42)
    with torch.no_grad():
        a, b = tiny(images, pri), loaded(images, pri)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.c2w, b.c2w)
    # config.json beside the weights is picked up (plain JSON of our config is not upstream's
    # format, so write an upstream-style file that maps to a *different* model: must fail clearly)
    (tmp_path / "config.json").write_text(json.dumps({"model_size": "large"}))
    with pytest.raises(CheckpointMismatchError, match="does not match the model.*HY-WorldMirror-2.0"):
        load_worldmirror(path)
    assert config_to_dict(tiny_worldmirror_config())["embed_dim"] == 32


def test_load_rejects_wrong_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(MissingFileError, match="does not exist"):
        load_worldmirror(tmp_path / "nope.safetensors")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(UnsafeFileError, match="pickle.*safetensors"):
        load_worldmirror(tmp_path / "w.pt")
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(
        CheckpointMismatchError, match=r"missing \d+ keys under .*unexpected 1 keys under blocks\.attn1\.\* \(1\)"
    ):
        load_worldmirror(other, tiny_worldmirror_config())


def test_save_worldmirror_round_trip_needs_no_config(tmp_path: Path, tiny: WorldMirror) -> None:
    from worldstereo_core.recon.worldmirror import (
        CONFIG_FORMAT,
        config_from_dict,
        save_worldmirror,
    )

    path = save_worldmirror(tiny, tmp_path / "tiny")
    assert path.name == "model.safetensors" and (tmp_path / "tiny" / "config.json").is_file()
    loaded = load_worldmirror(path)  # config.json beside the weights (our format)
    assert loaded.config == tiny.config
    images = torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(tiny(images, None).depth, loaded(images, None).depth)
    # without config.json the file's metadata holds the config
    (tmp_path / "tiny" / "config.json").unlink()
    assert load_worldmirror(path).config == tiny.config
    # our JSON round-trips; upstream JSON (no format tag) still goes through from_upstream
    d = config_to_dict(tiny.config)
    assert d["format"] == CONFIG_FORMAT and config_from_dict(json.loads(json.dumps(d))) == tiny.config
    assert config_from_dict({"model_size": "small"}).embed_dim == 384
    with pytest.raises(CheckpointMismatchError, match="unknown WorldMirror config keys"):
        config_from_dict({**d, "wings": 2})
