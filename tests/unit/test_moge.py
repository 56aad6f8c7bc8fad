"""MoGe-2: schema of the released layouts, upstream parity (tiny), loader, focal/shift recovery."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from worldstereo_core.errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidCameraError,
    InvalidImageError,
    InvalidOptionError,
    MissingFileError,
    UnsafeFileError,
)
from worldstereo_core.recon.moge import (
    MOGE_VARIANTS,
    MoGeModel,
    MoGeRawOutput,
    focal_to_K,
    load_moge,
    moge_config,
    moge_config_from_dict,
    normalized_view_plane_uv,
    predict_depth,
    recover_focal_shift,
    save_moge,
)
from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG

DATA = Path(__file__).resolve().parents[1] / "data"
RELEASED = ("moge-2-vits-normal", "moge-2-vitb-normal", "moge-2-vitl-normal")


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((DATA / "moge2_state_dict_schema.json").read_text())


def _seeded(model: MoGeModel, seed: int = 1234, std: float = 0.1) -> MoGeModel:
    """Deterministic random weights (the recipe the upstream golden file was made with)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    new = {
        k: v if k.endswith(("image_mean", "image_std")) else torch.randn(v.shape, generator=g) * std
        for k, v in sorted(sd.items())
    }
    model.load_state_dict(new)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("moge_tiny")
    save_moge(_seeded(MoGeModel(TINY_MOGE_CONFIG)), folder)
    return folder


# ---------------------------------------------------------------------------- released layouts


@pytest.mark.parametrize("name", RELEASED)
def test_full_size_state_dict_matches_upstream(schema, name):
    with torch.device("meta"):
        model = MoGeModel(moge_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = schema[name]["state_dict"]
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == schema[name]["num_params"]


def test_published_sizes():
    # README of microsoft/MoGe: 35 M / 104 M / 331 M; moge-2-vitl (no normals) 326 M.
    sizes = {"moge-2-vits-normal": 35, "moge-2-vitb-normal": 104, "moge-2-vitl-normal": 331, "moge-2-vitl": 326}
    for name, millions in sizes.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in MoGeModel(moge_config(name)).parameters())
        assert abs(n / 1e6 - millions) < 1.0, (name, n)


@pytest.mark.parametrize("name", RELEASED)
def test_upstream_model_config_parses_to_preset(schema, name):
    assert moge_config_from_dict(schema[name]["config"]) == moge_config(name)
    assert moge_config_from_dict({"model_config": schema[name]["config"]}) == moge_config(name)
    # round trip through our own dict form
    assert moge_config_from_dict(moge_config(name).to_dict()) == moge_config(name)


def test_preset_names():
    assert moge_config("Ruicheng/moge-2-vitl-normal") is MOGE_VARIANTS["moge-2-vitl-normal"]
    with pytest.raises(InvalidOptionError, match="unknown MoGe variant"):
        moge_config("moge-vitl")


def test_bad_config_dicts():
    with pytest.raises(CheckpointMismatchError, match="no 'encoder' section"):
        moge_config_from_dict({"neck": {}})
    cfg = moge_config("moge-2-vits-normal").to_dict()
    cfg["encoder"]["backbone"] = "dinov2_vitg14"
    with pytest.raises(CheckpointMismatchError, match="not supported"):
        moge_config_from_dict(cfg)
    cfg = moge_config("moge-2-vits-normal").to_dict()
    cfg["neck"]["dim_in"][0] = 100
    with pytest.raises(CheckpointMismatchError, match="dim_out \\+ 2"):
        moge_config_from_dict(cfg)
    cfg = moge_config("moge-2-vits-normal").to_dict()
    cfg["neck"]["resamplers"] = ["warp"] * 4
    with pytest.raises(CorruptFileError, match="unknown resampler"):
        moge_config_from_dict(cfg)


# ---------------------------------------------------------------------------- tiny forward


def test_tiny_matches_upstream_golden():
    """Outputs of upstream MoGe v2 (same tiny config, same seeded weights) recorded once."""
    gold = json.loads((DATA / "moge2_tiny_upstream_golden.json").read_text())
    model = _seeded(MoGeModel(TINY_MOGE_CONFIG), gold["weight_seed"], gold["weight_std"])
    img = torch.rand(*gold["image_shape"], generator=torch.Generator().manual_seed(gold["image_seed"]))
    with torch.no_grad():
        out = model(img, num_tokens=gold["num_tokens"])
    for (i, j), p, n, m in zip(gold["pixels"], gold["points"], gold["normal"], gold["mask"]):
        torch.testing.assert_close(out.points[0, i, j], torch.tensor(p), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.normal[0, i, j], torch.tensor(n), atol=1e-5, rtol=1e-5)
        assert out.mask[0, i, j].item() == pytest.approx(m, abs=1e-6)
    assert out.metric_scale[0].item() == pytest.approx(gold["metric_scale"], abs=1e-6)
    torch.testing.assert_close(out.points.mean((0, 1, 2)), torch.tensor(gold["points_mean"]), atol=1e-5, rtol=1e-5)


def test_tiny_roundtrip_through_safetensors(tiny_dir):
    model = load_moge(tiny_dir)  # folder: model.safetensors + config.json
    assert model.config == TINY_MOGE_CONFIG
    ref = _seeded(MoGeModel(TINY_MOGE_CONFIG))
    img = torch.rand(2, 3, 33, 41)
    with torch.no_grad():
        a, b = model(img, num_tokens=30), ref(img, num_tokens=30)
    assert isinstance(a, MoGeRawOutput)
    assert a.points.shape == (2, 33, 41, 3) and a.mask.shape == (2, 33, 41) and a.normal.shape == (2, 33, 41, 3)
    torch.testing.assert_close(a.points, b.points)
    torch.testing.assert_close(a.normal.norm(dim=-1), torch.ones(2, 33, 41))
    assert (a.points[..., 2] > 0).all()  # exp remap


def test_config_from_metadata_when_no_config_json(tiny_dir, tmp_path):
    (tmp_path / "weights.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    model = load_moge(tmp_path / "weights.safetensors")
    assert model.config == TINY_MOGE_CONFIG


def test_predict_depth_outputs(tiny_dir):
    model = load_moge(tiny_dir / "model.safetensors", config=tiny_dir / "config.json")
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    pred = predict_depth(model, img, fov_x=60.0, resolution_level=5)
    assert isinstance(pred.depth, np.ndarray) and pred.depth.shape == (30, 40)
    assert pred.mask.dtype == bool and pred.points.shape == (30, 40, 3) and pred.normals.shape == (30, 40, 3)
    f = 40 / (2 * math.tan(math.radians(30)))
    np.testing.assert_allclose(pred.K, [[f, 0, 20], [0, f, 15], [0, 0, 1]], rtol=1e-5)
    # invalid pixels are zeroed; valid points are the pixel-centre unprojection of depth
    assert (pred.depth[~pred.mask] == 0).all()
    u, v = np.meshgrid(np.arange(40) + 0.5, np.arange(30) + 0.5)
    np.testing.assert_allclose(pred.points[..., 0], (u - 20) / f * pred.depth, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pred.points[..., 1], (v - 15) / f * pred.depth, rtol=1e-4, atol=1e-6)
    # torch in, torch out; batches keep their batch dim
    batch = predict_depth(model, torch.from_numpy(np.stack([img, img])))
    assert isinstance(batch.depth, torch.Tensor) and batch.depth.shape == (2, 30, 40) and batch.K.shape == (2, 3, 3)


# ---------------------------------------------------------------------------- focal / shift


def _affine_scene(H=48, W=64, f_px=52.0, shift=0.7):
    """Camera-space points of a tilted plane with bumps, and the affine map MoGe would predict."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    z = 2.0 + 0.02 * u + 0.01 * v + 0.3 * np.sin(u / 7) * np.cos(v / 5)
    P = np.stack([(u - W / 2) / f_px * z, (v - H / 2) / f_px * z, z], -1)
    A = P.copy()
    A[..., 2] -= shift  # the network's z is off by an unknown shift
    return P, A


def test_recover_focal_shift_exact():
    H, W, f_px, shift = 48, 64, 52.0, 0.7
    _, A = _affine_scene(H, W, f_px, shift)
    focal, s = recover_focal_shift(A, downsample_size=(48, 64))
    assert float(focal) * math.hypot(W, H) / 2 == pytest.approx(f_px, rel=1e-6)
    assert float(s) == pytest.approx(shift, abs=1e-6)
    # known focal: shift only
    f_rel = f_px * 2 / math.hypot(W, H)
    focal2, s2 = recover_focal_shift(torch.from_numpy(A), focal=f_rel)
    assert float(s2) == pytest.approx(shift, abs=1e-5) and float(focal2) == pytest.approx(f_rel)


def test_recover_focal_shift_ignores_masked_garbage():
    _, A = _affine_scene(shift=-0.4)
    A = torch.from_numpy(A)[None].repeat(2, 1, 1, 1)
    mask = torch.ones(2, 48, 64, dtype=torch.bool)
    A[1, :10] = torch.tensor([50.0, -3.0, 9.0], dtype=A.dtype)
    mask[1, :10] = False
    focal, s = recover_focal_shift(A, mask)
    assert focal.shape == (2,) and s.shape == (2,)
    torch.testing.assert_close(s, torch.tensor([-0.4, -0.4], dtype=s.dtype), atol=1e-5, rtol=0)
    assert focal[0].item() == pytest.approx(focal[1].item(), rel=1e-5)


def test_view_plane_uv_and_K():
    uv = normalized_view_plane_uv(4, 2)
    a = 2.0
    # pixel-centre samples; half-diagonal normalised to 1
    assert uv[0, 0, 0].item() == pytest.approx(-a / math.sqrt(1 + a * a) * 3 / 4)
    assert uv[1, 3, 1].item() == pytest.approx(1 / math.sqrt(1 + a * a) * 1 / 2)
    K = focal_to_K(torch.tensor(1.0), 30, 40)
    assert K[0, 0].item() == pytest.approx(25.0) and K[0, 2].item() == 20 and K[1, 2].item() == 15


class _OracleMoGe(MoGeModel):
    """A MoGe whose network 'predicts' a known affine point map (tests the inference recipe)."""

    def __init__(self, affine: torch.Tensor, scale: float):
        super().__init__(TINY_MOGE_CONFIG)
        self.affine, self.scale = affine, scale

    def forward(self, image, num_tokens):
        B, H, W = image.shape[0], image.shape[2], image.shape[3]
        mask = torch.ones(B, H, W)
        mask[:, :3, :3] = 0  # a masked corner
        return MoGeRawOutput(
            points=self.affine.float().expand(B, -1, -1, -1),
            mask=mask,
            normal=None,
            metric_scale=torch.full((B,), self.scale),
        )


@pytest.mark.parametrize("known_fov", [False, True])
def test_predict_depth_recovers_metric_depth_and_K(known_fov):
    H, W, f_px, shift, scale = 48, 64, 52.0, 0.7, 2.5
    P, A = _affine_scene(H, W, f_px, shift)
    model = _OracleMoGe(torch.from_numpy(A), scale)
    fov = math.degrees(2 * math.atan(W / (2 * f_px))) if known_fov else None
    pred = predict_depth(model, torch.rand(H, W, 3), fov_x=fov)
    assert pred.K[0, 0].item() == pytest.approx(f_px, rel=1e-3)
    assert not pred.mask[:3, :3].any() and pred.mask[3:].all()
    valid = pred.mask
    torch.testing.assert_close(
        pred.depth[valid], torch.from_numpy(P[..., 2] * scale).float()[valid], rtol=1e-3, atol=1e-4
    )
    torch.testing.assert_close(pred.points[valid], torch.from_numpy(P * scale).float()[valid], rtol=2e-3, atol=2e-3)
    assert pred.normals is None and float(pred.metric_scale) == pytest.approx(scale)


def test_recover_focal_shift_skips_zero_depth_samples():
    """z = 0 (fp underflow of a degenerate prediction) would divide by zero; such samples are skipped."""
    _, A = _affine_scene(shift=0.3)
    ref_f, ref_s = recover_focal_shift(torch.from_numpy(A))
    bad = torch.from_numpy(A).clone()
    bad[:4] = 0.0  # unmasked, finite, but z = 0
    f, s = recover_focal_shift(bad)
    assert float(f) == pytest.approx(float(ref_f), rel=1e-5) and float(s) == pytest.approx(float(ref_s), abs=1e-5)


def test_predict_depth_refuses_a_degenerate_point_map():
    """A mirrored point map fits only a negative focal: a clear error instead of an invalid K."""
    _, A = _affine_scene(48, 64, 52.0, 0.7)
    mirrored = torch.from_numpy(A).clone()
    mirrored[..., :2] *= -1
    with pytest.raises(CheckpointMismatchError, match="degenerate.*fov_x"):
        predict_depth(_OracleMoGe(mirrored, 1.0), torch.rand(48, 64, 3))


# ---------------------------------------------------------------------------- bad input


def test_pickle_checkpoints_are_refused(tmp_path):
    pt = tmp_path / "model.pt"
    with zipfile.ZipFile(pt, "w") as z:  # what torch.save writes (a zip of pickles)
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeFileError, match="pickle.*save_file"):
        load_moge(pt)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(pt.read_bytes())
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_moge(disguised, config=TINY_MOGE_CONFIG)
    folder = tmp_path / "only_pt"
    folder.mkdir()
    (folder / "model.pt").write_bytes(pt.read_bytes())
    with pytest.raises(UnsafeFileError, match="no model.safetensors.*model.pt"):
        load_moge(folder)


def test_loader_errors(tiny_dir, tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_moge(tmp_path / "nope.safetensors")
    # weights without a config anywhere
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in MoGeModel(TINY_MOGE_CONFIG).state_dict().items()}
    save_file(state, str(lone))
    with pytest.raises(MissingFileError, match="no MoGe config"):
        load_moge(lone)
    # a file without the normal head, loaded as a -normal model
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("normal_head")}, str(partial))
    with pytest.raises(CheckpointMismatchError, match=r"missing \d+ keys under normal_head\.\* \(\d+\)"):
        load_moge(partial, config=TINY_MOGE_CONFIG)
    # the wrong variant: shapes differ
    with pytest.raises(CheckpointMismatchError, match="missing|wrong shape"):
        load_moge(tiny_dir / "model.safetensors", config="moge-2-vits-normal")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CorruptFileError, match="valid safetensors header"):
        load_moge(garbage, config=TINY_MOGE_CONFIG)


def test_predict_depth_bad_inputs(tiny_dir):
    model = load_moge(tiny_dir)
    with pytest.raises(InvalidImageError, match=r"\[H, W, 3\]"):
        predict_depth(model, torch.rand(3, 20, 20))
    with pytest.raises(InvalidImageError, match="divide 8-bit"):
        predict_depth(model, torch.rand(20, 20, 3) * 255)
    bad = torch.rand(20, 20, 3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidImageError, match="NaN"):
        predict_depth(model, bad)
    with pytest.raises(InvalidImageError, match="resolution_level"):
        predict_depth(model, torch.rand(20, 20, 3), resolution_level=12)
    with pytest.raises(InvalidCameraError, match="fov_x"):
        predict_depth(model, torch.rand(20, 20, 3), fov_x=180.0)
    # uint8 images are accepted and scaled
    pred = predict_depth(model, (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8))
    assert pred.depth.shape == (20, 24)
