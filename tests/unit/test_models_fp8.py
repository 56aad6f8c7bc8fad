"""Scaled float8 weights: quantisation error bounds, the Float8Linear layer, fp8 loading (bf16 files
quantised on the fly, ComfyUI ``*_fp8_e4m3fn_scaled`` files as they are) and the whole tiny model's
velocity against full precision. All on the CPU (the dequantising path of Float8Linear)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from worldstereo_core.errors import InvalidOptionError
from worldstereo_core.models import init_random_weights, load_worldstereo, save_worldstereo
from worldstereo_core.models.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    Float8Linear,
    convert_to_fp8,
    dequantize_weight,
    fp8_layer_names,
    quantize_rows,
    quantize_weight,
)
from worldstereo_core.tiny_configs import build_tiny_transformer

FP8 = "fp8_e4m3fn_scaled"


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().double().flatten(), b.detach().double().flatten(), dim=0))


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_quantize_weight_error_is_within_e4m3_rounding(granularity):
    g = torch.Generator().manual_seed(1)
    # rows of very different magnitude: a per-tensor scale wastes range on the small rows
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 0, 64)[:, None]
    q, s = quantize_weight(w, granularity)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert s.shape == ((64,) if granularity == "channel" else ())
    assert float(q.float().abs().max()) <= FP8_MAX
    back = dequantize_weight(q, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most 2^-4 of itself
    rel = (back - w).abs() / w.abs().clamp_min(1e-30)
    big = w.abs() >= (s[:, None] if s.ndim else s) * 2.0**-6  # above e4m3's subnormal range
    assert float(rel[big].max()) <= 2.0**-4 + 1e-6
    if granularity == "channel":
        # every row keeps its own range: small rows are as accurate as large ones
        row_err = (back - w).norm(dim=1) / w.norm(dim=1)
        assert float(row_err.max()) < 0.05


def test_quantize_rows_scales_each_token():
    x = torch.randn(8, 32, dtype=torch.float64)
    x[3] *= 1000.0  # one outlier token must not flatten the others
    q, s = quantize_rows(x)
    assert s.shape == (8, 1)
    back = q.float() * s
    err = (back - x.float()).norm(dim=1) / x.float().norm(dim=1)
    assert float(err.max()) < 0.05


def test_float8_linear_matches_linear_and_keeps_shape():
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    f8 = Float8Linear.from_linear(lin, compute_dtype=torch.float32)
    assert f8.weight.dtype == FP8_DTYPE and f8.scale_weight.shape == (80,)
    x = torch.randn(2, 5, 48)
    out = f8(x)
    assert out.shape == (2, 5, 80) and out.dtype == torch.float32
    assert _cos(out, lin(x)) > 0.999
    # the layer computes exactly linear(x, dequantised weight)
    torch.testing.assert_close(out, F.linear(x, dequantize_weight(f8.weight, f8.scale_weight, torch.float32), lin.bias))


def test_layer_selection_keeps_norms_embeddings_and_zero_projections():
    with torch.device("meta"):
        model = build_tiny_transformer("dmd")
    names = fp8_layer_names(model)
    assert "blocks.0.attn1.to_q" in names and "blocks.2.ffn.net.2" in names
    assert "controlnet.controlnet_blocks.1.self_attn.to_out.0" in names
    assert "controlnet.controlnet_blocks.0.ffn.0" in names
    for kept in (
        "controlnet.proj_out.0",
        "controlnet.controlnet_blocks.0.norm1.linear",
        "proj_out",
        "camera_embedding.4",
        "condition_embedder.time_proj",
    ):
        assert kept not in names
    assert not any(n.startswith(("condition_embedder", "patch_embedding", "camera_embedding")) for n in names)
    convert_to_fp8(model)
    assert isinstance(model.get_submodule("blocks.1.attn2.add_k_proj"), Float8Linear)
    assert isinstance(model.get_submodule("controlnet.proj_out.0"), nn.Linear)


def _inputs(model, g):
    cfg = model.config
    F_, h, w, R = 3, 4, 6, 2

    def r(*s):
        return torch.randn(*s, generator=g)

    x = r(1, 36, F_, h, w)
    kw = dict(
        encoder_hidden_states=r(1, 8, cfg.text_dim),
        encoder_hidden_states_image=r(1, 4, cfg.image_dim),
        render_latent=r(1, 16, F_, h, w),
        render_mask=(torch.rand(1, 1, F_, 8 * h, 8 * w, generator=g) > 0.5).float(),
        plucker=r(1, 6, F_, 8 * h, 8 * w),
        reference_latent=r(1, 36, R, h, w),
        ref_index=torch.tensor([0, 1]),
        camera_qt=r(1, F_, 7),
        camera_qt_ref=r(1, R, 7),
    )
    return x, torch.tensor([700.0]), kw


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_whole_model_velocity_cosine_gate(granularity):
    """The issue's accuracy gate (cosine ≥ 0.995 of the predicted velocity vs full precision), tiny size."""
    with torch.device("meta"):
        model = build_tiny_transformer("dmd")
    init_random_weights(model, "cpu", torch.float32, std=0.1, seed=3)
    g = torch.Generator().manual_seed(4)
    x, t, kw = _inputs(model, g)
    with torch.no_grad():
        ref = model(x, t, **kw)
        convert_to_fp8(model, granularity, torch.float32)
        out = model(x, t, **kw)
    assert torch.isfinite(out).all()
    assert _cos(out, ref) >= 0.995
    assert not torch.equal(out, ref)  # the fp8 layers are really in the path


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_tiny_transformer("memory")
    return save_worldstereo(model, tmp_path_factory.mktemp("fp8") / "memory", dtype=torch.bfloat16)


def test_load_bf16_checkpoint_as_fp8(bf16_checkpoint):
    plain = load_worldstereo(bf16_checkpoint, dtype=torch.bfloat16)
    f8 = load_worldstereo(bf16_checkpoint, dtype=torch.bfloat16, weight_format=FP8)
    names = fp8_layer_names(plain)
    assert names and all(isinstance(f8.get_submodule(n), Float8Linear) for n in names)
    for n in names:
        q, s = quantize_weight(plain.get_submodule(n).weight, "channel")
        layer = f8.get_submodule(n)
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)), n
        torch.testing.assert_close(layer.scale_weight, s)
        assert layer.bias.dtype == torch.bfloat16
    # everything else is the bf16 model's, bit for bit
    sd = f8.state_dict()
    for k, v in plain.state_dict().items():
        if k.rsplit(".", 1)[0] not in names:
            assert torch.equal(sd[k], v), k
    # one byte per projection weight instead of two, plus a float32 scale per output channel
    n8 = sum(f8.get_submodule(n).weight.numel() for n in names)
    n_scales = sum(f8.get_submodule(n).scale_weight.numel() for n in names)
    assert sum(t.numel() * t.element_size() for t in f8.state_dict().values()) == (
        sum(t.numel() * t.element_size() for t in plain.state_dict().values()) - n8 + 4 * n_scales
    )


def test_fp8_model_saves_and_loads_back(bf16_checkpoint, tmp_path):
    f8 = load_worldstereo(bf16_checkpoint, weight_format=FP8, fp8_granularity="tensor")
    folder = save_worldstereo(f8, tmp_path / "f8")
    again = load_worldstereo(folder, weight_format=FP8, fp8_granularity="tensor")
    for k, v in f8.state_dict().items():
        got = again.state_dict()[k]
        assert got.dtype == v.dtype and torch.equal(
            got.view(torch.uint8) if got.dtype == FP8_DTYPE else got, v.view(torch.uint8) if v.dtype == FP8_DTYPE else v
        ), k


def _comfy_scaled_file(checkpoint, folder, prefix="model.diffusion_model."):
    """A ComfyUI-style scaled fp8 file: fp8 weights, per-tensor ``scale_weight``, ``scaled_fp8`` marker."""
    state = load_file(str(checkpoint / "model.safetensors"))
    with torch.device("meta"):
        names = set(fp8_layer_names(build_tiny_transformer("memory")))
    out, expect = {}, {}
    for k, v in state.items():
        layer = k.rsplit(".", 1)[0]
        if layer in names and k.endswith(".weight"):
            q, s = quantize_weight(v, "tensor")
            out[prefix + k], out[prefix + layer + ".scale_weight"] = q, s
            expect[k] = (q, s)
        else:
            out[prefix + k] = v
    out[prefix + "scaled_fp8"] = torch.empty(0, dtype=FP8_DTYPE)
    folder.mkdir()
    save_file(out, str(folder / "model.safetensors"))
    (folder / "config.json").write_text((checkpoint / "config.json").read_text())
    return folder, expect


def test_comfyui_scaled_fp8_file_loads_in_both_formats(bf16_checkpoint, tmp_path):
    """A file in ComfyUI's scaled-fp8 layout (prefix, per-tensor scale_weight, scaled_fp8 marker): read through
    its scales; as fp8 with the file's granularity the float8 values come back bit for bit."""
    folder, expect = _comfy_scaled_file(bf16_checkpoint, tmp_path / "comfy")
    as_tensor = load_worldstereo(folder, weight_format=FP8, fp8_granularity="tensor")
    as_channel = load_worldstereo(folder, weight_format=FP8)
    as_bf16 = load_worldstereo(folder, dtype=torch.bfloat16)
    for k, (q, s) in expect.items():
        layer = k.rsplit(".", 1)[0]
        assert torch.equal(as_tensor.get_submodule(layer).weight.view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(as_tensor.get_submodule(layer).scale_weight, s)
        # per channel: each row re-quantised to its own scale, within e4m3 rounding of the file's values
        ch = as_channel.get_submodule(layer)
        want = dequantize_weight(q, s, torch.float32)
        assert ch.scale_weight.shape == (q.shape[0],)
        assert float((ch.dequantized_weight(torch.float32) - want).norm() / want.norm()) < 0.05
        torch.testing.assert_close(as_bf16.get_submodule(layer).weight, dequantize_weight(q, s, torch.bfloat16))


def test_unknown_weight_format_is_refused(bf16_checkpoint):
    with pytest.raises(InvalidOptionError, match="weight_format"):
        load_worldstereo(bf16_checkpoint, weight_format="int4")
