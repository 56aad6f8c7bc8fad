"""The release's files as published: config.json without sizes, backbone keys filled from the Wan2.1 base.

The release builds the transformer from ``base_model`` (Wan2.1-I2V-14B-480P) and loads the WorldStereo
file over it with ``strict=False``; its config.json holds ``base_model`` + ``controlnet_cfg`` (and the
sampler fields), never transformer sizes, and names no ``model_type`` (the folder does). These tests
write small files in each layout a user has — the WorldStereo folder, a diffusers Wan base (sharded),
ComfyUI's single Wan file in bf16 and in scaled fp8 — and check that the loaded weights are exactly
those files' tensors. Sizes are test overrides; nothing small ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worldstereo_core.errors import CheckpointMismatchError
from worldstereo_core.models.loading import init_random_weights, is_backbone_key, load_worldstereo
from worldstereo_core.models.transformer_worldstereo import FULL_CONTROLNET_CONFIG
from worldstereo_core.tiny_configs import TINY_CONTROLNET_CONFIG, TINY_TRANSFORMER_CONFIG, build_tiny_transformer

# The field set the release's loader reads from config.json (FuchengSu/WorldStereo
# models/worldstereo_wrapper.py: base_model + controlnet_cfg required, freeze_backbone; the runners read
# negative_prompt and latent_cond_mode; the DMD scheduler dmd_start_steps / dmd_end_steps / gen_shift /
# dmd_steps), at the released sizes.
PUBLISHED_CONFIG = {
    "base_model": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "controlnet_cfg": FULL_CONTROLNET_CONFIG.to_dict(),
    "freeze_backbone": True,
    "negative_prompt": "",
    "latent_cond_mode": "full_vae",
}
DMD_FIELDS = {"dmd_start_steps": 250, "dmd_end_steps": 1000, "gen_shift": 5.0, "dmd_steps": 4}
# the sizes of the small files below (a test override, as a user never needs one)
SMALL = {
    "transformer": dict(TINY_TRANSFORMER_CONFIG, patch_size=list(TINY_TRANSFORMER_CONFIG["patch_size"])),
    "controlnet_cfg": TINY_CONTROLNET_CONFIG.to_dict(),
}

# diffusers name -> original Wan / ComfyUI name, written out here independently of the loader's table
# (the original calls the cross-attention norm norm3 and the image-key projections k_img / v_img)
_BLOCK_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_TOP_TO_ORIGINAL = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}


def _to_original(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    parts = key.split(".")
    if parts[0] == "blocks":
        i, rest = parts[1], ".".join(parts[2:])
        if rest == "scale_shift_table":
            return f"blocks.{i}.modulation"
        stem, kind = rest.rsplit(".", 1)
        return f"blocks.{i}.{_BLOCK_TO_ORIGINAL[stem]}.{kind}"
    stem, kind = key.rsplit(".", 1)
    return f"{_TOP_TO_ORIGINAL[stem]}.{kind}"


@pytest.fixture(scope="module")
def models():
    """The full small models (camera and memory) the split files are cut from."""
    out = {}
    for variant in ("camera", "memory"):
        model = build_tiny_transformer(variant)
        init_random_weights(model, "cpu", torch.float32, std=0.05, seed={"camera": 1, "memory": 2}[variant])
        out[variant] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def _release_folder(root: Path, name: str, state: dict, config: dict) -> Path:
    """A release-style folder: config.json as published + model.safetensors with only the branches."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.contiguous() for k, v in state.items() if not is_backbone_key(k)}, str(folder / "model.safetensors")
    )
    return folder


def _diffusers_base(root: Path, state: dict) -> Path:
    """A diffusers Wan root whose transformer/ is sharded in two with its index (as Wan-AI ships the 14B)."""
    folder = root / "Wan2.1-I2V-14B-480P-Diffusers" / "transformer"
    folder.mkdir(parents=True)
    backbone = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items() if is_backbone_key(k)}
    keys = sorted(backbone)
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, ks in shards.items():
        save_file({k: backbone[k] for k in ks}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    return folder.parent


def _comfy_file(path: Path, state: dict, fp8: bool) -> dict[str, torch.Tensor]:
    """ComfyUI's single Wan file: original names under model.diffusion_model.; with ``fp8`` the 2-D weights
    are float8_e4m3fn with a per-tensor scale_weight (ComfyUI's *_fp8_scaled). Returns what the loader
    must produce for each diffusers key."""
    out, expect = {}, {}
    for k, v in state.items():
        if not is_backbone_key(k):
            continue
        name = "model.diffusion_model." + _to_original(k)
        if fp8 and k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max().float() / 448.0
            q = (v.float() / scale).to(torch.float8_e4m3fn)
            out[name] = q
            out[name[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
            expect[k] = q.float() * scale
        else:
            out[name] = v.to(torch.bfloat16)
            expect[k] = out[name].float()
    if fp8:
        out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file({k: t.contiguous() for k, t in out.items()}, str(path))
    return expect


@pytest.mark.parametrize("variant,folder", [("camera", "worldstereo-camera"), ("memory", "worldstereo-memory")])
def test_published_config_and_diffusers_base(tmp_path, models, variant, folder):
    state = models[variant]
    ckpt = _release_folder(tmp_path, folder, state, PUBLISHED_CONFIG)
    base = _diffusers_base(tmp_path, state)
    model = load_worldstereo(ckpt, dtype=torch.float32, base_model=base, overrides=SMALL)
    assert model.variant == variant  # from the folder name: the published config has no model_type
    got = model.state_dict()
    for k, v in state.items():
        want = v.to(torch.bfloat16).float() if is_backbone_key(k) else v
        assert torch.equal(got[k], want), k
    report = model.load_report
    assert "blocks.*" in report.from_base and "controlnet.controlnet_blocks.*" not in report.from_base
    sources = {Path(f).name: groups for f, groups in report.sources.items()}
    assert "controlnet.controlnet_blocks.* (" in sources["model.safetensors"]
    shard_groups = " ".join(g for f, g in sources.items() if f.startswith("diffusion_pytorch_model-"))
    assert "blocks.* (" in shard_groups and "controlnet" not in shard_groups
    # the released sizes are what the published config means: without the override it does not fit
    with pytest.raises(CheckpointMismatchError, match="fewer controlnet blocks than the config describes"):
        load_worldstereo(ckpt, base_model=base)


@pytest.mark.parametrize("fp8", [False, True])
def test_comfyui_single_file_base(tmp_path, models, fp8):
    state = models["memory"]
    ckpt = _release_folder(tmp_path, "worldstereo-memory-dmd", state, {**PUBLISHED_CONFIG, **DMD_FIELDS})
    base = tmp_path / ("wan2.1_i2v_480p_14B_fp8_scaled.safetensors" if fp8 else "wan2.1_i2v_480p_14B_bf16.safetensors")
    expect = _comfy_file(base, state, fp8)
    model = load_worldstereo(ckpt, dtype=torch.float32, base_model=base, overrides=SMALL)
    assert model.variant == "dmd" and model.ws_config.dmd.start == 250 and model.ws_config.dmd.shift == 5.0
    got = model.state_dict()
    for k, want in expect.items():
        assert torch.equal(got[k], want), k
    for k, v in state.items():
        if not is_backbone_key(k):
            assert torch.equal(got[k], v), k
    if fp8:  # dequantised, not the raw fp8 codes: close to the original weights
        w = "blocks.0.attn1.to_q.weight"
        torch.testing.assert_close(got[w], state[w], rtol=0.07, atol=1e-3)
        bf16 = load_worldstereo(ckpt, dtype=torch.bfloat16, base_model=base, overrides=SMALL)
        assert bf16.state_dict()[w].dtype == torch.bfloat16
        assert torch.equal(bf16.state_dict()[w], expect[w].to(torch.bfloat16))
    assert Path(next(iter(f for f in model.load_report.sources if f.endswith(base.name)))).name == base.name


def test_missing_backbone_without_base_names_the_fix(tmp_path, models):
    ckpt = _release_folder(tmp_path, "worldstereo-camera", models["camera"], PUBLISHED_CONFIG)
    with pytest.raises(CheckpointMismatchError, match=r"missing \d+ keys under blocks\.\* \(\d+\).*base_model="):
        load_worldstereo(ckpt, overrides=SMALL)


def test_what_the_base_cannot_fill_stays_an_error(tmp_path, models):
    state = models["memory"]
    trimmed = {k: v for k, v in state.items() if not k.startswith("camera_embedding.")}
    ckpt = _release_folder(tmp_path, "worldstereo-memory", trimmed, PUBLISHED_CONFIG)
    base = _diffusers_base(tmp_path, state)
    with pytest.raises(CheckpointMismatchError, match=r"missing \d+ keys under .*camera_embedding\.\* \(6\)"):
        load_worldstereo(ckpt, base_model=base, overrides=SMALL)
    # a base that lacks some backbone groups (here the image embedder: a T2V model) is named
    comfy = tmp_path / "t2v.safetensors"
    _comfy_file(comfy, {k: v for k, v in state.items() if "image_embedder" not in k and "add_" not in k}, fp8=False)
    ckpt2 = _release_folder(tmp_path, "worldstereo-memory-2", state, {**PUBLISHED_CONFIG})
    with pytest.raises(
        CheckpointMismatchError,
        match=r"does not have 20 of them: blocks\.\* \(12\), condition_embedder\.\* \(8\).*I2V 14B",
    ):
        load_worldstereo(ckpt2, variant="memory", base_model=comfy, overrides=SMALL)


def test_base_is_not_read_when_the_checkpoint_is_complete(tmp_path, models):
    from worldstereo_core.models import save_worldstereo

    model = build_tiny_transformer("camera")
    model.load_state_dict(models["camera"])
    folder = save_worldstereo(model, tmp_path / "full")
    loaded = load_worldstereo(folder, dtype=torch.float32, base_model=tmp_path / "no_such_base")
    assert loaded.load_report.from_base == () and len(loaded.load_report.sources) == 1


def test_comfyui_key_names_cover_the_released_backbone(fixtures_dir):
    """At full size: every backbone key of the released schema comes out of ComfyUI's original key names
    (as the I2V 14B file has them) and of the diffusers names, and nothing else does."""
    from worldstereo_core.models.conversion import plan_wan_transformer

    schema = json.loads((fixtures_dir / "checkpoints" / "worldstereo_state_dict_schema.json").read_text())
    backbone = {k for k in schema["variants"]["worldstereo-memory"] if is_backbone_key(k)}
    assert len(backbone) > 1000 and any("add_k_proj" in k for k in backbone)  # the I2V image path is there
    comfy = ["model.diffusion_model." + _to_original(k) for k in backbone]
    comfy_fp8 = (
        comfy + [k[: -len(".weight")] + ".scale_weight" for k in comfy if k.endswith(".weight")] + ["scaled_fp8"]
    )
    for keys, layout in ((comfy, "comfyui"), (comfy_fp8, "comfyui_scaled_fp8"), (sorted(backbone), "diffusers")):
        plan = plan_wan_transformer(keys)
        assert plan.layout == layout and set(plan.targets) == backbone
