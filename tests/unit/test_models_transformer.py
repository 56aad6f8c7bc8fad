"""WorldStereo transformer: checkpoint schema at full size (meta), tiny forward passes, design invariants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformer3DModel

from testsupport import randomize_zero_inits, tiny_transformer_inputs
from worldstereo_core.errors import InvalidInputError, InvalidOptionError, ShapeMismatchError
from worldstereo_core.models import (
    MAX_REFERENCES,
    build_transformer,
    count_parameters,
    load_worldstereo,
    save_worldstereo,
)
from worldstereo_core.models.transformer_worldstereo import (
    ATTENTION_BACKENDS,
    SDPA_CUDNN,
    SDPA_FP8_CUDNN,
    RefJointAttnProcessor,
    rope_at,
    sdpa_cudnn_first,
)
from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, build_tiny_transformer

B, F, H, W = 1, 3, 4, 6  # latent frames and grid of the tiny tests
TEXT_DIM, IMAGE_DIM = TINY_TRANSFORMER_CONFIG["text_dim"], TINY_TRANSFORMER_CONFIG["image_dim"]


def _schema(fixtures_dir):
    return json.loads((fixtures_dir / "checkpoints" / "worldstereo_state_dict_schema.json").read_text())


@pytest.mark.parametrize(
    "variant,name", [("camera", "worldstereo-camera"), ("memory", "worldstereo-memory"), ("dmd", "worldstereo-memory")]
)
def test_full_config_matches_release_schema(fixtures_dir, variant, name):
    schema = _schema(fixtures_dir)["variants"][name]
    with torch.device("meta"):
        model = build_transformer(variant)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: v["shape"] for k, v in schema.items()}
    assert sorted(set(got) - set(want)) == []
    assert sorted(set(want) - set(got)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}


def test_full_parameter_totals_match_published(fixtures_dir):
    with torch.device("meta"):
        memory = build_transformer("memory")
        camera = build_transformer("camera")
    # README of the schema fixture: 17.432 B total; blocks 16.1535 B, controlnet 0.9975 B,
    # condition_embedder 0.2403 B, camera_embedding 0.0394 B
    assert round(count_parameters(memory) / 1e9, 3) == 17.432
    assert round(count_parameters(memory.blocks) / 1e9, 4) == 16.1535
    assert round(count_parameters(memory.controlnet) / 1e9, 4) == 0.9975
    assert round(count_parameters(memory.condition_embedder) / 1e9, 4) == 0.2403
    assert round(count_parameters(memory.camera_embedding) / 1e9, 4) == 0.0394
    assert camera.camera_embedding is None
    assert count_parameters(memory) - count_parameters(camera) == count_parameters(memory.camera_embedding)
    # the config the schema records is the one we build
    base = _schema(fixtures_dir)["base_transformer_config"]
    for k, v in base.items():
        assert (list(memory.config[k]) if isinstance(v, list) else memory.config[k]) == v, k
    cn = _schema(fixtures_dir)["controlnet_cfg"]
    for k, v in cn.items():
        assert getattr(memory.controlnet_config, k) == v, k


def _inputs(variant, n_ref=2, seed=0):
    return tiny_transformer_inputs(variant, n_ref, seed)


def _randomize_zero_inits(model, seed=1):
    return randomize_zero_inits(model, seed)


@pytest.mark.parametrize("variant", ["camera", "memory", "dmd"])
def test_tiny_forward_through_safetensors_file(tmp_path, variant):
    torch.manual_seed(0)
    model = _randomize_zero_inits(build_tiny_transformer(variant))
    x, t, kw = _inputs(variant)
    with torch.no_grad():
        out = model(x, t, **kw)
    assert out.shape == (B, 16, F, H, W) and torch.isfinite(out).all()
    assert not out._is_view()  # FSDP2 warns when a wrapped module returns a view (in-place ops skip its hooks)

    save_worldstereo(model, tmp_path / variant)
    loaded = load_worldstereo(tmp_path / variant, dtype=torch.float32)
    assert loaded.variant == variant and loaded.ws_config.variant == variant
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, **kw), out, rtol=0, atol=0)
    # bf16 load: the listed modulation tensors stay fp32, the rest follow dtype
    half = load_worldstereo(tmp_path / variant, dtype=torch.bfloat16)
    assert half.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert half.blocks[0].scale_shift_table.dtype == torch.float32
    assert half.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    with torch.no_grad():
        out_half = half(x, t, **kw)
    assert torch.isfinite(out_half).all()
    assert (out_half.float() - out).abs().max() < 0.1 * out.abs().max() + 0.1


@pytest.mark.parametrize("variant", ["camera", "memory"])
def test_zero_init_controlnet_leaves_base_wan_unchanged(variant):
    """A fresh branch (zero-init proj_out / mask_zero_proj / camera MLP) must not change Wan's output."""
    torch.manual_seed(0)
    model = build_tiny_transformer(variant)
    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    base_keys = stock.state_dict().keys()
    stock.load_state_dict({k: v for k, v in model.state_dict().items() if k in base_keys}, strict=True)
    x, t, kw = _inputs("camera")
    qt = {"camera_qt": torch.randn(B, F, 7)} if variant == "memory" else {}
    with torch.no_grad():
        want = stock(x, t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"], return_dict=False)[0]
        got = model(x, t, **kw, **qt)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # ...and once the branch is trained (non-zero outputs) it does change it
    _randomize_zero_inits(model)
    with torch.no_grad():
        assert (model(x, t, **kw) - want).abs().max() > 1e-3


def _upstream_style_ref_rope(rope, ref_index, f, h, w):
    """The release's way: RoPE of a latent twice as wide, references take the right half of frame idx+1."""
    cos, sin = rope(torch.zeros(1, 1, f, 2 * h, 4 * w))  # patch (1,2,2) → grid f × h × 2w
    pick = lambda t: t.reshape(f, h, 2 * w, -1)[ref_index + 1, :, w:].reshape(1, -1, 1, t.shape[-1])
    return pick(cos), pick(sin)


def test_reference_rope_positions_match_release_layout():
    model = build_tiny_transformer("memory")
    ref_index = torch.tensor([4, 0, 7])
    got = rope_at(model.rope, ref_index + 1, 3, 5, w_offset=5)
    want = _upstream_style_ref_rope(model.rope, ref_index, 9, 3, 5)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    # targets: offset 0 and frames 0..F-1 give diffusers' own table
    got_t = rope_at(model.rope, torch.arange(9), 3, 5)
    torch.testing.assert_close(got_t[0], model.rope(torch.zeros(1, 1, 9, 6, 10))[0], rtol=0, atol=0)


def test_joint_attention_equals_full_attention_over_concatenated_tokens():
    """Targets attending to [refs, targets] = a plain Wan self-attention over the concatenation (target rows)."""
    torch.manual_seed(0)
    model = build_tiny_transformer("memory")
    attn = model.blocks[0].attn1
    n_t, n_r, dim = F * H * W, 2 * H * W, model.inner_dim
    tokens, refs = torch.randn(1, n_t, dim), torch.randn(1, n_r, dim)
    rope_t = model.rope(torch.zeros(1, 1, F, 2 * H, 2 * W))
    rope_r = rope_at(model.rope, torch.tensor([1, 2]), H, W, w_offset=W)
    with torch.no_grad():
        got = RefJointAttnProcessor()(attn, tokens, rotary_emb=rope_t, ref_hidden_states=refs, ref_rotary_emb=rope_r)
        joint_rope = tuple(torch.cat([a, b], dim=1) for a, b in zip(rope_r, rope_t))
        full = WanAttnProcessor()(attn, torch.cat([refs, tokens], dim=1), rotary_emb=joint_rope)
    torch.testing.assert_close(got, full[:, n_r:], rtol=1e-5, atol=1e-5)


def test_references_and_camera_embedding_change_the_output():
    torch.manual_seed(0)
    model = build_tiny_transformer("memory")
    x, t, kw = _inputs("memory")
    no_refs = {k: v for k, v in kw.items() if k not in ("reference_latent", "ref_index", "camera_qt_ref")}
    with torch.no_grad():
        with_refs = model(x, t, **kw)
        without = model(x, t, **no_refs)
        moved = model(x, t, **{**kw, "ref_index": torch.tensor([1, 1])})
        other_qt = model(x, t, **{**kw, "camera_qt": kw["camera_qt"] + 1.0})
    assert (with_refs - without).abs().max() > 1e-4  # references are attended to
    assert (with_refs - moved).abs().max() > 1e-6  # and their RoPE slot matters
    torch.testing.assert_close(other_qt, with_refs)  # zero-init camera MLP: no effect yet
    with torch.no_grad():
        model.camera_embedding[4].weight.normal_(0, 0.05)
        assert (model(x, t, **{**kw, "camera_qt": kw["camera_qt"] + 1.0}) - model(x, t, **kw)).abs().max() > 1e-4


def test_inputs_are_not_mutated():
    model = build_tiny_transformer("memory")
    x, t, kw = _inputs("memory")
    before = {k: v.clone() for k, v in kw.items()}
    x0 = x.clone()
    with torch.no_grad():
        model(x, t, **kw)
    assert torch.equal(x, x0) and all(torch.equal(kw[k], before[k]) for k in kw)


def test_bad_model_inputs_raise_model_input_error():
    model = build_tiny_transformer("memory")
    camera = build_tiny_transformer("camera")
    x, t, kw = _inputs("memory")
    cases = [
        (model, x[:, :20], {}),  # wrong channel count
        (model, x[..., :5], {}),  # odd latent width (image not a multiple of 16)
        (model, x, {"render_mask": kw["render_mask"][:, :, :2]}),  # frames vs mask mismatch
        (model, x, {"render_mask": None}),
        (model, x, {"camera_qt": kw["camera_qt"][:, :2]}),  # cameras count mismatch
        (model, x, {"ref_index": torch.tensor([0])}),  # one slot for two references
        (model, x, {"ref_index": torch.tensor([0, F - 1])}),  # slot beyond the last keyframe
        (
            model,
            x,
            {
                "reference_latent": torch.randn(B, 36, MAX_REFERENCES + 1, H, W),
                "ref_index": torch.zeros(MAX_REFERENCES + 1, dtype=torch.long),
                "camera_qt_ref": torch.randn(B, MAX_REFERENCES + 1, 7),
            },
        ),  # > 8 references
        (model, x, {"reference_latent": kw["reference_latent"][..., :2]}),  # reference size ≠ target size
        (camera, x, {}),  # references given to the camera variant
    ]
    for net, xx, override in cases:
        with pytest.raises(InvalidInputError), torch.no_grad():
            net(xx, t, **{**kw, **override})
    with pytest.raises(ShapeMismatchError), torch.no_grad():
        model(x, torch.tensor([1.0, 2.0]), **kw)


def test_unknown_variant_is_rejected():
    with pytest.raises(InvalidOptionError, match="variant"):
        build_tiny_transformer("uni3c")


def test_meta_build_allocates_nothing():
    with torch.device("meta"):
        model = build_transformer("dmd")
    assert all(p.is_meta for p in model.parameters())
    assert math.isclose(count_parameters(model) / 1e9, 17.4318, rel_tol=1e-4)


@pytest.mark.parametrize("can_set_priority", [True, False])
def test_sdpa_cudnn_first_equals_softmax_attention_in_float64(monkeypatch, can_set_priority):
    """The direct SDPA route: [B, L, H, D] queries over concatenated key/value parts, any kernel PyTorch picks;
    also on a torch without ``sdpa_kernel(set_priority=...)`` (before 2.6), where torch's own order runs."""
    import worldstereo_core.models.transformer_worldstereo as tw

    monkeypatch.setattr(tw, "_SDPA_CAN_SET_PRIORITY", can_set_priority)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 3, 16, generator=g)
    ks = [torch.randn(2, n, 3, 16, generator=g) for n in (5, 9)]
    vs = [torch.randn(2, n, 3, 16, generator=g) for n in (5, 9)]
    got = sdpa_cudnn_first(q, ks, vs)
    k, v = torch.cat(ks, 1).double(), torch.cat(vs, 1).double()
    w = torch.einsum("blhd,bmhd->bhlm", q.double(), k) / math.sqrt(16)
    want = torch.einsum("bhlm,bmhd->blhd", w.softmax(-1), v)
    assert got.shape == q.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["camera", "dmd"])
def test_attention_backend_choice_keeps_the_output(variant):
    """Default (sdpa_cudnn) = diffusers' native dispatch = back again, for joint, plain and ControlNet attention."""
    torch.manual_seed(0)
    model = _randomize_zero_inits(build_tiny_transformer(variant))
    ours = [p for p in model.attn_processors.values() if isinstance(p, RefJointAttnProcessor)]
    assert len(ours) == len(model.blocks) + len(model.controlnet.controlnet_blocks)
    assert all(p.sdpa_cudnn for p in ours)  # DEFAULT_ATTENTION_BACKEND
    x, t, kw = _inputs(variant)
    with torch.no_grad():
        default = model(x, t, **kw)
        model.set_attention_backend("native")
        assert not any(p.sdpa_cudnn for p in ours) and all(p._attention_backend == "native" for p in ours)
        native = model(x, t, **kw)
        model.set_attention_backend(SDPA_CUDNN)
        assert all(p.sdpa_cudnn and p._attention_backend is None for p in ours)
        again = model(x, t, **kw)
    torch.testing.assert_close(default, native, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, default, rtol=0, atol=0)


def test_sequence_parallel_keeps_the_chosen_attention_kernel(tmp_path):
    """enable/disable_sequence_parallel swap every self-attention processor: the kernel chosen with
    set_attention_backend (here diffusers' ``native``) must survive both swaps, not fall back to the default."""
    import torch.distributed as dist

    from worldstereo_core.distributed import disable_sequence_parallel, enable_sequence_parallel
    from worldstereo_core.models.transformer_worldstereo import UlyssesAttnProcessor

    model = build_tiny_transformer("memory")
    model.set_attention_backend("native")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        enable_sequence_parallel(model)
        procs = [b.attn1.processor for b in model.blocks] + [
            b.self_attn.processor for b in model.controlnet.controlnet_blocks
        ]
        assert all(isinstance(p, UlyssesAttnProcessor) for p in procs)
        assert all(not p.sdpa_cudnn and p._attention_backend == "native" for p in procs)
        disable_sequence_parallel(model)
        procs = [b.attn1.processor for b in model.blocks] + [
            b.self_attn.processor for b in model.controlnet.controlnet_blocks
        ]
        assert not any(isinstance(p, UlyssesAttnProcessor) for p in procs)
        assert all(not p.sdpa_cudnn and p._attention_backend == "native" for p in procs)
    finally:
        dist.destroy_process_group()


def test_offered_attention_backends_are_ours_or_diffusers_names():
    """Every backend the loader offers besides ours is one diffusers' set_attention_backend knows."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert ATTENTION_BACKENDS[0] == SDPA_CUDNN
    assert len(set(ATTENTION_BACKENDS)) == len(ATTENTION_BACKENDS)
    assert ATTENTION_BACKENDS[1] == SDPA_FP8_CUDNN
    assert set(ATTENTION_BACKENDS[2:]) <= {name.value for name in AttentionBackendName}
