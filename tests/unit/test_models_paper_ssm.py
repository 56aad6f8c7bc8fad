"""The paper's SSM variant: pair-restricted attention (checked against the attention mask), pointmap
injection, its own config and state-dict layout, the initialisation rule, and the full-size layout on meta."""

from __future__ import annotations

import json

import pytest
import torch

from testsupport import randomize_zero_inits
from worldstereo_core.errors import CheckpointMismatchError, InvalidInputError, ShapeMismatchError
from worldstereo_core.models import (
    build_transformer,
    count_parameters,
    load_worldstereo,
    save_worldstereo,
)
from worldstereo_core.models.transformer_worldstereo_paper import (
    WorldStereoPaperTransformer,
    init_from_camera,
    pair_attention_mask,
)
from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, build_tiny_transformer

B, F, H, W = 1, 3, 4, 6  # latent frames and grid
TEXT_DIM, IMAGE_DIM = TINY_TRANSFORMER_CONFIG["text_dim"], TINY_TRANSFORMER_CONFIG["image_dim"]


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    kw = dict(
        encoder_hidden_states=r(B, 512, TEXT_DIM),
        encoder_hidden_states_image=r(B, 257, IMAGE_DIM),
        render_latent=r(B, 16, F, H, W),
        render_mask=(torch.rand(B, 1, F, 8 * H, 8 * W, generator=g) > 0.5).float(),
        plucker=r(B, 6, F, 8 * H, 8 * W),
        pair_latent=r(B, 36, F, H, W),
        pointmap_latent=r(B, 16, F, H, 2 * W),
    )
    return r(B, 36, F, H, W), torch.tensor([700.0]), kw


def _trained(model, seed=1):
    return randomize_zero_inits(model, seed, std=0.1)


def test_full_size_layout_is_camera_plus_memory_branch(fixtures_dir):
    schema = json.loads((fixtures_dir / "checkpoints" / "worldstereo_state_dict_schema.json").read_text())
    camera_keys = {k: v["shape"] for k, v in schema["variants"]["worldstereo-camera"].items()}
    with torch.device("meta"):
        paper = build_transformer("paper")
    got = {k: list(v.shape) for k, v in paper.state_dict().items()}
    # the release's camera keys, shapes unchanged; the rest is memory_branch.*; no camera_embedding
    assert {k: got[k] for k in camera_keys} == camera_keys
    extra = sorted(set(got) - set(camera_keys))
    assert extra and all(k.startswith("memory_branch.") for k in extra)
    assert got["memory_branch.pointmap_embedding.weight"] == [5120, 16, 1, 2, 2]
    assert got["memory_branch.memory_patch_embedding.weight"] == [5120, 36, 1, 2, 2]
    assert len({k.split(".")[2] for k in extra if k.startswith("memory_branch.memory_blocks.")}) == 20
    # the memory branch is the size of the GGM branch minus its mask/camera embedding
    assert count_parameters(paper.memory_branch) == pytest.approx(count_parameters(paper.controlnet), rel=0.15)


def test_pair_restriction_equals_the_attention_mask():
    """Measured token dependencies of one memory block == pair_attention_mask (block diagonal over pairs)."""
    torch.manual_seed(0)
    model = _trained(build_tiny_transformer("paper")).float()
    x, t, kw = _inputs()
    with torch.no_grad():
        temb = model.condition_embedder(t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"])[0]
        state = model._branch_state(
            x, temb, {"pair_latent": kw["pair_latent"], "pointmap_latent": kw["pointmap_latent"]}
        )
    block = model.memory_branch.memory_blocks[0]
    tokens_per_pair = state.tokens.shape[1]
    n = state.frames * tokens_per_pair
    flat = state.tokens.reshape(1, n, -1).detach().clone().requires_grad_(True)

    def run(inp):
        return block(inp.reshape(state.frames, tokens_per_pair, -1), state.temb, state.rope).reshape(n, -1)

    jac = torch.autograd.functional.jacobian(lambda inp: run(inp).sum(-1), flat)  # [n, 1, n, C]
    depends = jac[:, 0].abs().sum(-1) > 0  # [query, key]
    mask = pair_attention_mask(state.frames, tokens_per_pair)
    assert mask.shape == (n, n) and mask.sum() == state.frames * tokens_per_pair**2
    assert torch.equal(depends, mask)


def test_each_target_frame_sees_only_its_own_reference_and_pointmap():
    torch.manual_seed(0)
    model = _trained(build_tiny_transformer("paper"))
    x, t, kw = _inputs()
    with torch.no_grad():
        out = model(x, t, **kw)
        changed_ref = dict(kw, pair_latent=kw["pair_latent"].clone())
        changed_ref["pair_latent"][:, :, 2] += 1.0  # only frame 2's reference
        out_ref = model(x, t, **changed_ref)
        changed_pm = dict(kw, pointmap_latent=kw["pointmap_latent"].clone())
        changed_pm["pointmap_latent"][:, :, 1] += 1.0  # only frame 1's pointmap pair
        out_pm = model(x, t, **changed_pm)
    # main blocks mix frames, so compare the memory branch's own per-pair residual instead
    diff_ref = (out_ref - out).abs().amax(dim=(0, 1, 3, 4))
    diff_pm = (out_pm - out).abs().amax(dim=(0, 1, 3, 4))
    assert diff_ref.max() > 1e-4 and diff_pm.max() > 1e-4  # both inputs are used
    with torch.no_grad():
        temb = model.condition_embedder(t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"])[0]
        s0 = model._branch_state(x, temb, {"pair_latent": kw["pair_latent"], "pointmap_latent": kw["pointmap_latent"]})
        s1 = model._branch_state(
            x, temb, {"pair_latent": changed_ref["pair_latent"], "pointmap_latent": kw["pointmap_latent"]}
        )
        s2 = model._branch_state(
            x, temb, {"pair_latent": kw["pair_latent"], "pointmap_latent": changed_pm["pointmap_latent"]}
        )
        for s in (s0, s1, s2):
            model._branch_step(0, torch.zeros(B, F * H // 2 * W // 2, 32), s)
    per_pair = lambda a, b: (a.tokens - b.tokens).abs().amax(dim=(1, 2))
    assert per_pair(s0, s1).nonzero().flatten().tolist() == [2]
    assert per_pair(s0, s2).nonzero().flatten().tolist() == [1]


def test_init_rule_reproduces_the_camera_model_then_training_changes_it(tmp_path):
    torch.manual_seed(0)
    camera = _trained(build_tiny_transformer("camera"))
    paper = init_from_camera(build_tiny_transformer("paper"), camera.state_dict())
    sd = paper.state_dict()
    assert torch.equal(
        sd["memory_branch.memory_blocks.1.ffn.0.weight"], sd["controlnet.controlnet_blocks.1.ffn.0.weight"]
    )
    assert torch.equal(sd["memory_branch.memory_patch_embedding.weight"], sd["patch_embedding.weight"])
    assert sd["memory_branch.pointmap_embedding.weight"].abs().sum() == 0
    assert all(sd[f"memory_branch.proj_out.{i}.weight"].abs().sum() == 0 for i in range(2))
    x, t, kw = _inputs()
    camera_kw = {k: v for k, v in kw.items() if k not in ("pair_latent", "pointmap_latent")}
    with torch.no_grad():
        want = camera(x, t, **camera_kw)
        torch.testing.assert_close(paper(x, t, **kw), want, rtol=0, atol=0)
        torch.testing.assert_close(paper(x, t, **camera_kw), want, rtol=0, atol=0)  # no memory = GGM only
        with torch.no_grad():
            paper.memory_branch.proj_out[0].weight.normal_(0, 0.1)
        assert (paper(x, t, **kw) - want).abs().max() > 1e-3
    # a memory checkpoint works too (its camera_embedding is dropped); a mismatched one is refused
    init_from_camera(build_tiny_transformer("paper"), build_tiny_transformer("memory").state_dict())
    with pytest.raises(CheckpointMismatchError, match="lacks"):
        init_from_camera(build_tiny_transformer("paper"), {"patch_embedding.weight": sd["patch_embedding.weight"]})


def test_own_config_round_trips_and_release_loader_tells_variants_apart(tmp_path):
    torch.manual_seed(0)
    paper = _trained(build_tiny_transformer("paper"))
    save_worldstereo(paper, tmp_path / "paper")
    cfg = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert cfg["model_type"] == "worldstereo-paper-memory"
    assert cfg["memory_cfg"]["num_layers"] == 2 and cfg["memory_cfg"]["pointmap_channels"] == 16
    loaded = load_worldstereo(tmp_path / "paper", dtype=torch.float32)
    assert isinstance(loaded, WorldStereoPaperTransformer) and loaded.variant == "paper"
    x, t, kw = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, **kw), paper(x, t, **kw), rtol=0, atol=0)
    # a paper file read as the camera variant: the error names the memory branch
    with pytest.raises(CheckpointMismatchError, match="memory_branch"):
        load_worldstereo(tmp_path / "paper", variant="camera", dtype=torch.float32)
    # the release variants refuse paper inputs with a clear message
    camera = build_tiny_transformer("camera")
    with pytest.raises(InvalidInputError, match="paper"):
        camera(x, t, **kw)
    # bad shapes are named
    with pytest.raises(ShapeMismatchError, match="pointmap_latent"):
        paper(x, t, **dict(kw, pointmap_latent=kw["pointmap_latent"][..., :W]))
    with pytest.raises(InvalidInputError, match="both"):
        paper(x, t, **dict(kw, pointmap_latent=None))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = _trained(build_tiny_transformer("paper")).train()
    x, t, kw = _inputs()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(x, t, **kw).square().mean().backward()
        grads.append(model.memory_branch.proj_out[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_memory_branch_config_shares_the_ggm_branch_sizes():
    """MemoryBranchConfig is the GGM branch's sizes plus the pointmap width: built from a ControlNetConfig it
    keeps them (the init rule copies GGM blocks), and memory_cfg is parsed strictly (integers, known keys)."""
    from worldstereo_core.models.transformer_worldstereo import FULL_CONTROLNET_CONFIG, ControlNetConfig
    from worldstereo_core.models.transformer_worldstereo_paper import FULL_MEMORY_CONFIG, MemoryBranchConfig
    from worldstereo_core.tiny_configs import TINY_CONTROLNET_CONFIG

    memory = MemoryBranchConfig.like(TINY_CONTROLNET_CONFIG)
    assert memory.branch_sizes() == TINY_CONTROLNET_CONFIG.branch_sizes() and memory.pointmap_channels == 16
    assert memory.as_controlnet_config() == ControlNetConfig(**TINY_CONTROLNET_CONFIG.branch_sizes())
    assert MemoryBranchConfig.like(FULL_CONTROLNET_CONFIG) == FULL_MEMORY_CONFIG
    # the keys a paper checkpoint has always written
    assert set(FULL_MEMORY_CONFIG.to_dict()) == {
        "dim", "ffn_dim", "num_heads", "num_layers", "conv_out_dim", "time_embed_dim", "pointmap_channels"
    }  # fmt: skip
    assert MemoryBranchConfig.from_dict({**memory.to_dict(), "dim": "16"}) == memory
    with pytest.raises(CheckpointMismatchError, match=r"unknown memory_cfg keys \['wings'\]"):
        MemoryBranchConfig.from_dict({**memory.to_dict(), "wings": 2})
    with pytest.raises(CheckpointMismatchError, match="positive multiple of num_heads"):
        MemoryBranchConfig.from_dict({**memory.to_dict(), "num_heads": 3})
    with pytest.raises(CheckpointMismatchError, match="memory_cfg: invalid literal"):
        MemoryBranchConfig.from_dict({**memory.to_dict(), "dim": "wide"})
    # controlnet_cfg stays lenient: keys of the release's training code are ignored, upstream defaults apply
    cfg = ControlNetConfig.from_dict({**TINY_CONTROLNET_CONFIG.branch_sizes(), "lr_scale": 1})
    assert (cfg.add_channels, cfg.mid_channels, cfg.mask_downsample, cfg.main_camera_embedding) == (1, 64, 4, False)
    with pytest.raises(CheckpointMismatchError, match="positive multiple of num_heads"):
        ControlNetConfig.from_dict({**TINY_CONTROLNET_CONFIG.to_dict(), "num_heads": 3})
