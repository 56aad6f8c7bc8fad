"""Uni3C camera ControlNet: released key layout (meta), front-padded mask downsampling, loading, attaching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from worldstereo_core.errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidInputError,
    MissingFileError,
    ShapeMismatchError,
    UnsafeFileError,
)
from worldstereo_core.models import load_worldstereo, save_worldstereo
from worldstereo_core.models.loading import load_uni3c, save_uni3c
from worldstereo_core.models.uni3c import (
    UNI3C_FULL_CONFIG,
    Uni3CControlNet,
    attach_uni3c,
    pad_mask_frames,
    uni3c_config_from_shapes,
    uni3c_model_key,
    uni3c_parameter_count,
    uni3c_pixel_frames,
)
from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, TINY_UNI3C_CONFIG, build_tiny_transformer

B, F, H, W = 1, 3, 4, 6  # latent frames and grid of the tiny tests
T = uni3c_pixel_frames(F)  # 9 mask/Plücker frames for 3 latent frames
TEXT_DIM, IMAGE_DIM = TINY_TRANSFORMER_CONFIG["text_dim"], TINY_TRANSFORMER_CONFIG["image_dim"]


def _release_layout() -> dict[str, tuple[int, ...]]:
    """Keys/shapes of the released Uni3C file, written out from Uni3C's own module definitions.

    ``controlnet_patch_embedding = Conv3d(in_channels=36, conv_out_dim=5120, (1,2,2))``;
    ``MaskCamEmbed``: ``mask_proj = [Conv3d(7, 256, (4,8,8)), GroupNorm(32, 256), SiLU]``,
    ``mask_zero_proj = Conv3d(256, 5120, (1,2,2))``; ``WanXControlNet``: ``proj_in = Linear(5120, 1024)``,
    20 × ``SingleAttentionBlock(1024, ffn 8192, 16 heads, time_embed_dim 5120)`` (two
    ``SimpleCogVideoXLayerNormZero`` = Linear(5120, 3·1024) + LayerNorm(1024), diffusers ``Attention`` with
    biased to_q/k/v/out and ``rms_norm_across_heads`` q/k norms, FFN Linear-GELU-Linear) and
    ``proj_out = 20 × Linear(1024, 5120)``.
    """
    d, ffn, t, c = 1024, 8192, 5120, 5120
    out: dict[str, tuple[int, ...]] = {
        "controlnet_patch_embedding.weight": (c, 36, 1, 2, 2),
        "controlnet_patch_embedding.bias": (c,),
        "controlnet_mask_embedding.mask_proj.0.weight": (256, 7, 4, 8, 8),
        "controlnet_mask_embedding.mask_proj.0.bias": (256,),
        "controlnet_mask_embedding.mask_proj.1.weight": (256,),
        "controlnet_mask_embedding.mask_proj.1.bias": (256,),
        "controlnet_mask_embedding.mask_zero_proj.weight": (c, 256, 1, 2, 2),
        "controlnet_mask_embedding.mask_zero_proj.bias": (c,),
        "proj_in.weight": (d, c),
        "proj_in.bias": (d,),
    }
    for i in range(20):
        p = f"controlnet_blocks.{i}."
        for n in ("norm1", "norm2"):
            out.update(
                {
                    p + f"{n}.linear.weight": (3 * d, t),
                    p + f"{n}.linear.bias": (3 * d,),
                    p + f"{n}.norm.weight": (d,),
                    p + f"{n}.norm.bias": (d,),
                }
            )
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            out.update({p + f"self_attn.{n}.weight": (d, d), p + f"self_attn.{n}.bias": (d,)})
        out.update({p + "self_attn.norm_q.weight": (d,), p + "self_attn.norm_k.weight": (d,)})
        out.update(
            {
                p + "ffn.0.weight": (ffn, d),
                p + "ffn.0.bias": (ffn,),
                p + "ffn.2.weight": (d, ffn),
                p + "ffn.2.bias": (d,),
            }
        )
        out.update({f"proj_out.{i}.weight": (c, d), f"proj_out.{i}.bias": (c,)})
    return out


def test_full_layout_matches_released_uni3c():
    with torch.device("meta"):
        model = Uni3CControlNet(UNI3C_FULL_CONFIG)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = _release_layout()
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    assert len(got) == 490
    total = sum(math.prod(s) for s in want.values())
    assert total == 1_165_741_824 == uni3c_parameter_count()  # ≈ 2.33 GB in fp16, as the released file
    assert all(p.is_meta for p in model.parameters())


def test_config_is_read_off_the_released_shapes():
    cfg, in_channels, patch = uni3c_config_from_shapes(_release_layout())
    assert cfg == UNI3C_FULL_CONFIG and in_channels == 36 and patch == (1, 2, 2)
    assert cfg.mask_downsample == 4 and cfg.ffn_dim == 8192 and cfg.add_channels == 7


def test_key_layouts_map_to_the_released_names():
    assert uni3c_model_key("controlnet.proj_in.weight") == "proj_in.weight"  # original controlnet.pth nesting
    assert uni3c_model_key("controlnet.controlnet_blocks.3.ffn.0.bias") == "controlnet_blocks.3.ffn.0.bias"
    assert uni3c_model_key("controlnet.proj_out.19.weight") == "proj_out.19.weight"
    assert uni3c_model_key("controlnet_patch_embedding.weight") == "controlnet_patch_embedding.weight"
    assert uni3c_model_key("controlnet_blocks.0.self_attn.o.weight") == "controlnet_blocks.0.self_attn.to_out.0.weight"
    assert (
        uni3c_model_key("model.diffusion_model.controlnet_blocks.0.self_attn.q.bias")
        == "controlnet_blocks.0.self_attn.to_q.bias"
    )


def test_front_padded_mask_downsampling_hand_example():
    assert [uni3c_pixel_frames(n) for n in (1, 2, 21)] == [1, 5, 81]
    # 81 frames whose value is the frame number; padding puts 3 zero frames in front → 84 = 21 × 4
    x = torch.arange(81, dtype=torch.float32).view(1, 1, 81, 1, 1).expand(1, 1, 81, 16, 16)
    x0 = x.clone()
    padded = pad_mask_frames(x)
    assert padded.shape[2] == 84 and torch.equal(x, x0)
    assert torch.equal(padded[0, 0, :3], torch.zeros(3, 16, 16)) and torch.equal(padded[0, 0, 3:], x[0, 0])

    # The module's temporal conv, set to a per-group mean: latent frame 0 ← frame 0 alone (with 3 pads),
    # latent frame k ← frames 4k-3 .. 4k.
    cfg = dataclasses.replace(TINY_UNI3C_CONFIG, add_channels=1, mid_channels=8)
    embed = Uni3CControlNet(cfg).controlnet_mask_embedding
    conv = embed.mask_proj[0]
    with torch.no_grad():
        conv.weight.fill_(1.0 / (4 * 8 * 8))
        conv.bias.zero_()
    seen = {}
    conv.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    tokens = embed(x)
    got = seen["out"][0, 0, :, 0, 0]  # [21] per latent frame
    want = torch.tensor([0.0 / 4] + [sum(range(4 * k - 3, 4 * k + 1)) / 4 for k in range(1, 21)])
    assert got.shape == (21,)
    torch.testing.assert_close(got, want)
    assert tokens.shape == (1, 21 * 1 * 1, cfg.conv_out_dim)  # 16×16 px → one 16-px token per frame


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 and p.abs().sum() == p.numel() else 0)
            )
    return module


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    kw = dict(
        encoder_hidden_states=r(B, 512, TEXT_DIM),
        encoder_hidden_states_image=r(B, 257, IMAGE_DIM),
        render_latent=r(B, 16, F, H, W),
        render_mask=(torch.rand(B, 1, T, 8 * H, 8 * W, generator=g) > 0.5).float(),
        plucker=r(B, 6, T, 8 * H, 8 * W),
    )
    return r(B, 36, F, H, W), torch.tensor([700.0]), kw


def _stock():
    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()


def _reference_output(stock, uni3c, x, t, kw):
    """Uni3C's forward on the stock model: all control states first, state i added after block i (hooks)."""
    temb = stock.condition_embedder(t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"])[0]
    control_latent = torch.cat([x[:, :20], kw["render_latent"]], dim=1)
    add_inputs = torch.cat([kw["render_mask"], kw["plucker"]], dim=1)
    states = uni3c(control_latent, add_inputs, temb)
    handles = [stock.blocks[i].register_forward_hook(lambda m, a, out, s=s: out + s) for i, s in enumerate(states)]
    try:
        return stock(x, t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"], return_dict=False)[0]
    finally:
        for h in handles:
            h.remove()


def test_tiny_forward_through_safetensors_file_matches_uni3c_injection(tmp_path):
    stock = _stock()
    uni3c = _randomize(Uni3CControlNet(TINY_UNI3C_CONFIG)).eval()
    path = save_uni3c(uni3c, tmp_path / "uni3c_tiny.safetensors")
    assert set(load_file(str(path))) == set(uni3c.state_dict())  # top-level released layout on disk
    loaded = load_uni3c(path, dtype=torch.float32)
    assert loaded.cfg == TINY_UNI3C_CONFIG
    for k, v in uni3c.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    model = attach_uni3c(stock, loaded)
    x, t, kw = _inputs()
    with torch.no_grad():
        got = model(x, t, **kw)
        want = _reference_output(stock, uni3c, x, t, kw)
        base = stock(x, t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"], return_dict=False)[0]
    assert got.shape == (B, 16, F, H, W) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the trained branch does steer the output

    # bf16 load: weights follow dtype, the AdaLN LayerNorm affines stay fp32
    half = load_uni3c(path, dtype=torch.bfloat16)
    assert half.controlnet_blocks[0].self_attn.to_q.weight.dtype == torch.bfloat16
    assert half.controlnet_blocks[0].norm1.norm.weight.dtype == torch.float32


def test_original_nested_layout_without_metadata_loads(tmp_path):
    """controlnet.pth nesting + ComfyUI attention names, no embedded config: sizes come from the shapes."""
    cfg = dataclasses.replace(TINY_UNI3C_CONFIG, dim=64, num_heads=1, ffn_dim=96)  # head width 64, as released
    uni3c = _randomize(Uni3CControlNet(cfg)).eval()
    state = {}
    for k, v in uni3c.state_dict().items():
        k = k.replace(".self_attn.to_q.", ".self_attn.q.").replace(".self_attn.to_out.0.", ".self_attn.o.")
        state[("controlnet." + k) if k.startswith(("proj_in.", "proj_out.", "controlnet_blocks.")) else k] = (
            v.contiguous()
        )
    save_file(state, str(tmp_path / "controlnet.safetensors"))
    loaded = load_uni3c(tmp_path, dtype=None)  # a folder holding one safetensors file
    assert loaded.cfg == cfg
    x, t, kw = _inputs()
    temb = torch.randn(B, cfg.time_embed_dim)
    cl = torch.cat([x[:, :20], kw["render_latent"]], dim=1)
    ai = torch.cat([kw["render_mask"], kw["plucker"]], dim=1)
    with torch.no_grad():
        for a, b in zip(loaded(cl, ai, temb), uni3c(cl, ai, temb)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_init_uni3c_leaves_base_wan_unchanged():
    stock = _stock()
    model = attach_uni3c(stock, Uni3CControlNet(TINY_UNI3C_CONFIG).eval())
    x, t, kw = _inputs()
    with torch.no_grad():
        want = stock(x, t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"], return_dict=False)[0]
        got = model(x, t, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the base tensors are shared, not copied
    assert model.blocks[0].attn1.to_q.weight.data_ptr() == stock.blocks[0].attn1.to_q.weight.data_ptr()


def test_attach_replaces_ggm_branch_without_touching_inputs():
    torch.manual_seed(0)
    ws = build_tiny_transformer("memory")
    ggm = ws.controlnet
    uni3c = _randomize(Uni3CControlNet(TINY_UNI3C_CONFIG)).eval()
    before = {k: v.clone() for k, v in uni3c.state_dict().items()}
    model = attach_uni3c(ws, uni3c)
    assert model is not ws and ws.controlnet is ggm and model.controlnet is uni3c
    assert ws.controlnet_config.mask_downsample == 1 and model.controlnet_config.mask_downsample == 4
    assert model.ws_config.controlnet == TINY_UNI3C_CONFIG and ws.ws_config.controlnet.mask_downsample == 1
    assert model.blocks is ws.blocks and model.camera_embedding is ws.camera_embedding
    assert all(torch.equal(v, before[k]) for k, v in uni3c.state_dict().items())

    x, t, kw = _inputs()
    refs = dict(
        reference_latent=torch.randn(B, 36, 1, H, W),
        ref_index=torch.tensor([0]),
        camera_qt=torch.randn(B, F, 7),
        camera_qt_ref=torch.randn(B, 1, 7),
    )
    with torch.no_grad():
        out = model(x, t, **kw, **refs)  # memory path kept, Uni3C-sized (9-frame) mask/Plücker
        assert out.shape == (B, 16, F, H, W) and torch.isfinite(out).all()
        # the original still takes one mask frame per latent frame
        ggm_kw = {**kw, "render_mask": kw["render_mask"][:, :, :F], "plucker": kw["plucker"][:, :, :F]}
        assert torch.isfinite(ws(x, t, **ggm_kw)).all()
        with pytest.raises(ShapeMismatchError, match="9"):
            model(x, t, **ggm_kw)  # GGM-sized inputs to the Uni3C branch


def test_attached_worldstereo_saves_and_reloads(tmp_path):
    model = attach_uni3c(build_tiny_transformer("camera"), _randomize(Uni3CControlNet(TINY_UNI3C_CONFIG)).eval())
    save_worldstereo(model, tmp_path / "combo")
    loaded = load_worldstereo(tmp_path / "combo", dtype=torch.float32)
    x, t, kw = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, **kw), model(x, t, **kw), rtol=0, atol=0)


def test_load_uni3c_errors(tmp_path):
    uni3c = Uni3CControlNet(TINY_UNI3C_CONFIG)
    good = save_uni3c(uni3c, tmp_path / "good.safetensors")
    state = load_file(str(good))

    (tmp_path / "controlnet.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_uni3c(tmp_path / "controlnet.pth")

    with pytest.raises(MissingFileError, match="does not exist"):
        load_uni3c(tmp_path / "nope.safetensors")

    ws = save_worldstereo(build_tiny_transformer("camera"), tmp_path / "ws")
    with pytest.raises(CheckpointMismatchError, match="WorldStereo checkpoint.*load_worldstereo"):
        load_uni3c(ws)

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="not a Uni3C"):
        load_uni3c(tmp_path / "other.safetensors")

    trimmed = {k: v for k, v in state.items() if not k.startswith("controlnet_blocks.1.ffn.")}
    save_file(trimmed, str(tmp_path / "trimmed.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"missing 4 keys under controlnet_blocks\.\*"):
        load_uni3c(tmp_path / "trimmed.safetensors")

    wrong = dict(state, **{"proj_in.weight": torch.zeros(16, 8)})
    # written under the key earlier versions used: still read
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata={"uni3c_config": load_meta(good)})
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_uni3c(tmp_path / "wrong.safetensors")

    save_file(state, str(tmp_path / "badmeta.safetensors"), metadata={"uni3c_config": "{not json"})
    with pytest.raises(CorruptFileError, match="metadata"):
        load_uni3c(tmp_path / "badmeta.safetensors")

    both = dict(state, **{"controlnet.proj_in.weight": state["proj_in.weight"].clone()})
    save_file(both, str(tmp_path / "both.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="both"):
        load_uni3c(tmp_path / "both.safetensors")

    # a Uni3C file handed to the WorldStereo loader points to load_uni3c
    with pytest.raises(CheckpointMismatchError, match="Uni3C.*load_uni3c"):
        load_worldstereo(good, variant="camera")


def load_meta(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["config"]  # the checkpoint convention (worldstereo_core.checkpoint)


def test_attach_errors():
    with torch.device("meta"):
        full = Uni3CControlNet(UNI3C_FULL_CONFIG)
    with pytest.raises(CheckpointMismatchError, match="does not fit.*5120"):
        attach_uni3c(build_tiny_transformer("camera"), full)
    with pytest.raises(InvalidInputError, match="WanTransformer3DModel"):
        attach_uni3c(torch.nn.Linear(2, 2), Uni3CControlNet(TINY_UNI3C_CONFIG))
    with pytest.raises(InvalidInputError, match="Uni3CControlNet"):
        attach_uni3c(build_tiny_transformer("camera"), torch.nn.Linear(2, 2))
    t2v = WanTransformer3DModel(
        **{**TINY_TRANSFORMER_CONFIG, "in_channels": 16, "image_dim": None, "added_kv_proj_dim": None}
    )
    with pytest.raises(CheckpointMismatchError, match="36.*I2V"):
        attach_uni3c(t2v, Uni3CControlNet(TINY_UNI3C_CONFIG))


def test_shape_inference_errors(tmp_path):
    layout = _release_layout()
    with pytest.raises(CheckpointMismatchError, match="proj_out maps to 4096"):
        uni3c_config_from_shapes({**layout, "proj_out.0.weight": (4096, 1024)})
    with pytest.raises(CheckpointMismatchError, match="temporal kernel"):
        uni3c_config_from_shapes({**layout, "controlnet_mask_embedding.mask_proj.0.weight": (256, 7, 1, 8, 8)})
    with pytest.raises(CheckpointMismatchError, match="no controlnet_blocks.0.ffn.0.weight"):
        uni3c_config_from_shapes({k: v for k, v in layout.items() if not k.startswith("controlnet_blocks.0.ffn")})
    # a plain Wan transformer file is named as such
    stock = _stock()
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(tmp_path / "wan.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="a Wan transformer"):
        load_uni3c(tmp_path / "wan.safetensors")
