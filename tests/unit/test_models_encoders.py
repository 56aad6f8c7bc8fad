"""UMT5 text encoder, CLIP image encoder, their file layouts and tokenizers (tiny random weights, CPU)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from worldstereo_core.errors import (
    CheckpointMismatchError,
    InvalidInputError,
    InvalidOptionError,
    MissingFileError,
    MissingInputError,
    ShapeMismatchError,
    UnsafeFileError,
)
from worldstereo_core.models.conversion import plan_clip_vision, plan_umt5
from worldstereo_core.models.encoders import (
    CLIP_IMAGE_MEAN,
    CLIP_IMAGE_STD,
    CLIP_VIT_H_CONFIG,
    CLIPImageEncoder,
    SentencePieceTokenizer,
    UMT5TextEncoder,
    clip_num_tokens,
    clip_preprocess,
    load_image_encoder,
    load_text_encoder,
    load_tokenizer,
    prompt_clean,
)
from worldstereo_core.tiny_configs import tiny_clip_vision_config, tiny_umt5_config


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CharTokenizer:
    """Deterministic stand-in tokenizer: one id per character, EOS 1, pad 0."""

    def __call__(self, texts, max_length):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            seq = [3 + ord(c) % 100 for c in t][: max_length - 1] + [1]
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        return ids, mask


@pytest.fixture(scope="module")
def umt5() -> UMT5EncoderModel:
    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(**tiny_umt5_config())).eval()


@pytest.fixture(scope="module")
def clip() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).eval()


@pytest.fixture(scope="module")
def spm_bytes() -> bytes:
    import sentencepiece as spm

    corpus = [
        "a small kitchen with a wooden table",
        "the camera moves left around the red chair",
        "an outdoor city street at night",
        "green hills under a blue sky",
    ] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return buf.getvalue()


def _sd(model, drop=()):
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if k not in drop}


# ------------------------------------------------------------------------------------------ text


def test_text_embedding_padding_zeroed(umt5):
    enc = UMT5TextEncoder(umt5, CharTokenizer(), max_length=24)
    out = enc.encode(["hello", "a longer prompt here"])
    assert out.shape == (2, 24, 32)
    n0, n1 = len("hello") + 1, len("a longer prompt here") + 1  # EOS included
    assert (out[0, n0:] == 0).all() and (out[1, n1:] == 0).all()
    assert (out[0, :n0].abs().sum(-1) > 0).all() and (out[1, :n1].abs().sum(-1) > 0).all()
    ids, mask = CharTokenizer()(["hello"], 24)
    with torch.no_grad():
        ref = umt5(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[0, :n0], ref[0, :n0], rtol=1e-5, atol=1e-5)
    assert ref[0, n0:].abs().sum() > 0  # the raw encoder output is not zero there: the zeroing is ours


def test_prompt_clean_and_bad_prompts(umt5):
    assert prompt_clean("  a &amp;amp; b\n\t c  ") == "a & b c"
    enc = UMT5TextEncoder(umt5, CharTokenizer(), max_length=8)
    with pytest.raises(InvalidInputError):
        enc.encode([])
    with pytest.raises(InvalidInputError):
        enc.encode([3])  # type: ignore[list-item]


def test_sentencepiece_tokenizer(spm_bytes):
    import sentencepiece as spm

    tok = SentencePieceTokenizer(spm_bytes)
    ref = spm.SentencePieceProcessor(model_proto=spm_bytes).encode("the red chair")
    ids, mask = tok(["the red chair"], 16)
    n = len(ref) + 1
    assert ids[0, :n].tolist() == ref + [1] and (ids[0, n:] == 0).all()
    assert mask[0].tolist() == [1] * n + [0] * (16 - n)
    ids, mask = tok(["the camera moves left around the red chair " * 5], 8)
    assert mask.sum() == 8 and ids[0, -1] == 1  # truncated, EOS kept


def test_single_file_comfy_scaled_fp8_with_embedded_tokenizer(umt5, spm_bytes, tmp_path):
    sd = _sd(umt5, drop=("encoder.embed_tokens.weight",))
    fp8, ref_sd = {}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and k != "shared.weight" and "relative_attention" not in k:
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            fp8[k] = q
            fp8[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
            ref_sd[k] = q.to(torch.float32) * scale
        else:
            fp8[k] = v
            ref_sd[k] = v
    fp8["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    fp8["spiece_model"] = torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(fp8, str(path))
    assert plan_umt5(list(fp8)).layout == "comfy_scaled_fp8"

    enc = load_text_encoder(path, dtype=torch.float32, max_length=16)  # config from shapes, spm from the file
    assert isinstance(enc.tokenizer, SentencePieceTokenizer)
    assert enc.model.config.num_heads == 4 and enc.model.config.num_layers == 2
    ref = UMT5EncoderModel(UMT5Config(**tiny_umt5_config())).eval()
    ref.load_state_dict({**ref_sd, "encoder.embed_tokens.weight": ref_sd["shared.weight"]})
    ids, mask = enc.tokenize("the red chair")
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(enc.encode("the red chair"), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_folder_sharded_with_tokenizer_folder(umt5, spm_bytes, tmp_path):
    root = tmp_path / "Wan2.1-I2V-14B-480P-Diffusers"
    te = root / "text_encoder"
    te.mkdir(parents=True)
    sd = _sd(umt5)
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(te / name))
    (te / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}})
    )
    (te / "config.json").write_text(json.dumps({**tiny_umt5_config(), "architectures": ["UMT5EncoderModel"]}))
    tok = root / "tokenizer"
    tok.mkdir()
    (tok / "spiece.model").write_bytes(spm_bytes)
    enc = load_text_encoder(root, dtype=torch.float32, max_length=16)
    ids, mask = enc.tokenize("green hills")
    with torch.no_grad():
        expected = umt5(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(enc.encode("green hills"), expected, rtol=1e-5, atol=1e-5)
    assert enc.model.encoder.embed_tokens is enc.model.shared


def test_text_encoder_errors(umt5, tmp_path):
    path = tmp_path / "umt5.safetensors"
    save_file(_sd(umt5), str(path))
    with pytest.raises(MissingInputError, match="no tokenizer found"):
        load_text_encoder(path, dtype=torch.float32)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    wrong = tmp_path / "clip.safetensors"
    save_file({"vision_model.encoder.layers.0.layer_norm1.weight": torch.zeros(4)}, str(wrong))
    with pytest.raises(CheckpointMismatchError, match="not a UMT5"):
        load_text_encoder(wrong, tokenizer=CharTokenizer())
    sd = _sd(umt5)
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    partial = tmp_path / "partial.safetensors"
    save_file(sd, str(partial))
    with pytest.raises(
        CheckpointMismatchError, match=r"missing 1 keys under encoder\.block\.layer\.DenseReluDense\.\* \(1\)"
    ):
        load_text_encoder(partial, tokenizer=CharTokenizer(), dtype=torch.float32)
    pickle = tmp_path / "umt5.bin"
    pickle.write_bytes(b"\x80\x02junk")
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_text_encoder(pickle, tokenizer=CharTokenizer())


# ----------------------------------------------------------------------------------------- image


def test_clip_full_config_has_257_tokens():
    assert clip_num_tokens(CLIP_VIT_H_CONFIG) == 257
    assert clip_num_tokens(tiny_clip_vision_config()) == 5
    with torch.device("meta"):
        full = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H_CONFIG))
    enc = CLIPImageEncoder(full)
    assert enc.num_tokens == 257
    n = sum(p.numel() for p in full.parameters())
    assert 630e6 < n < 635e6  # ViT-H/14 vision tower ≈ 632 M parameters


def test_clip_penultimate_layer(clip):
    enc = CLIPImageEncoder(clip, pixel_scale="unit")
    img = torch.rand(2, 3, 32, 48) * 2 - 1
    out = enc.encode(img)
    with torch.no_grad():
        hf = clip(pixel_values=clip_preprocess(img, 28, "unit"), output_hidden_states=True)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, hf.hidden_states[-2])
    assert not torch.allclose(out, hf.last_hidden_state, atol=1e-3)


def test_release_scaling_is_the_default_and_differs_from_comfyuis(clip):
    """The release's 0-255 pixels are the default everywhere; ComfyUI's CLIPVisionEncode (0-1) differs."""
    import inspect

    from worldstereo_core.models.encoders import load_image_encoder
    from worldstereo_core.models.generate import load_models

    assert inspect.signature(load_image_encoder).parameters["pixel_scale"].default == "release"
    assert inspect.signature(load_models).parameters["clip_pixel_scale"].default == "release"
    assert CLIPImageEncoder(clip).pixel_scale == "release"
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    release, unit = CLIPImageEncoder(clip).encode(img), CLIPImageEncoder(clip, pixel_scale="unit").encode(img)
    with torch.no_grad():
        want = clip(pixel_values=clip_preprocess(img, 28, "release"), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(release, want)
    assert (release - unit).abs().mean() > 1e-2  # a different embedding, not a rounding difference


def test_clip_preprocess_geometry_and_scale():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 48, 96, generator=g) * 2 - 1
    unit = clip_preprocess(img, 32, "unit")
    rel = clip_preprocess(img, 32, "release")
    assert unit.shape == rel.shape == (1, 3, 32, 32)
    mean = torch.tensor(CLIP_IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(rel * std + mean, 255.0 * (unit * std + mean), rtol=1e-5, atol=1e-3)
    # a left/right split image: the centre crop keeps the middle (both halves, equally)
    split = torch.cat([-torch.ones(1, 3, 32, 48), torch.ones(1, 3, 32, 48)], dim=-1)
    px = clip_preprocess(split, 32, "unit") * std + mean
    assert px[..., :8].max() < 0.05 and px[..., -8:].min() > 0.95
    with pytest.raises(ShapeMismatchError):
        clip_preprocess(torch.zeros(3, 8, 8))
    with pytest.raises(InvalidOptionError):
        clip_preprocess(torch.zeros(1, 3, 8, 8), pixel_scale="x")  # type: ignore[arg-type]


def test_clip_preprocess_matches_transformers_processor():
    """Independent check against transformers' CLIPImageProcessor as the release configures it."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    g = np.random.default_rng(0)
    arr = (g.random((48, 80, 3)) * 255).astype(np.uint8)
    img = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    kwargs = dict(
        crop_size={"height": 32, "width": 32},
        size={"shortest_edge": 32},
        resample=3,
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    )
    for scale, rescale, tol in (("release", False, 255 * 0.05), ("unit", True, 0.05)):
        ref = CLIPImageProcessor(do_rescale=rescale, **kwargs)(images=Image.fromarray(arr), return_tensors="pt")
        ours = clip_preprocess(img, 32, scale)  # type: ignore[arg-type]
        std = torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1)
        assert ((ours - ref["pixel_values"]) * std).abs().mean() < tol / 4
        assert ((ours - ref["pixel_values"]) * std).abs().max() < tol * 4


def test_clip_single_file_open_clip_layout(clip, tmp_path):
    sd = _sd(clip)
    prefix = "" if "embeddings.patch_embedding.weight" in sd else "vision_model."
    oc = {
        "visual.class_embedding": sd[prefix + "embeddings.class_embedding"],
        "visual.conv1.weight": sd[prefix + "embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd[prefix + "embeddings.position_embedding.weight"],
        "visual.proj": torch.zeros(32, 16),
    }
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            oc[f"visual.{a}.{p}"] = sd[f"{prefix}{b}.{p}"]
    for i in range(3):
        src, dst = f"{prefix}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            oc[dst + f"attn.in_proj_{p}"] = torch.cat([sd[src + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
            oc[dst + f"attn.out_proj.{p}"] = sd[src + f"self_attn.out_proj.{p}"]
            oc[dst + f"ln_1.{p}"] = sd[src + f"layer_norm1.{p}"]
            oc[dst + f"ln_2.{p}"] = sd[src + f"layer_norm2.{p}"]
            oc[dst + f"mlp.c_fc.{p}"] = sd[src + f"mlp.fc1.{p}"]
            oc[dst + f"mlp.c_proj.{p}"] = sd[src + f"mlp.fc2.{p}"]
    oc["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)  # a text tower: ignored
    assert plan_clip_vision(list(oc)).layout == "open_clip"
    path = tmp_path / "open_clip_vit_h.safetensors"
    save_file({k: v.contiguous() for k, v in oc.items()}, str(path))
    enc = load_image_encoder(path, dtype=torch.float32, config=tiny_clip_vision_config())
    img = torch.rand(1, 3, 28, 28) * 2 - 1
    torch.testing.assert_close(enc.encode(img), CLIPImageEncoder(clip).encode(img))


def test_clip_single_file_hf_layout_with_projection(clip, tmp_path):
    sd = _sd(clip)
    hf = {("vision_model." + k if not k.startswith("vision_model.") else k): v for k, v in sd.items()}
    hf["visual_projection.weight"] = torch.zeros(16, 32)  # ComfyUI's clip_vision_h carries it
    path = tmp_path / "clip_vision_h.safetensors"
    save_file(hf, str(path))
    enc = load_image_encoder(path, dtype=torch.float32, config=tiny_clip_vision_config())
    img = torch.rand(1, 3, 40, 28) * 2 - 1
    torch.testing.assert_close(enc.encode(img), CLIPImageEncoder(clip).encode(img))
    assert enc.pixel_scale == "release"
    with pytest.raises(CheckpointMismatchError, match="head count"):
        load_image_encoder(path, dtype=torch.float32)  # width 32: heads not inferable without config


def test_clip_errors(tmp_path):
    wrong = tmp_path / "vae.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.zeros(4)}, str(wrong))
    with pytest.raises(CheckpointMismatchError, match="not a CLIP vision model"):
        load_image_encoder(wrong)
    with pytest.raises(InvalidOptionError):
        CLIPImageEncoder(CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())), pixel_scale="bad")  # type: ignore[arg-type]
