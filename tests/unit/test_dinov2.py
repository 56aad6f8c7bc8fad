"""DINOv2 image features (the release's reference cut): tiny random transformers weights written as
the hub ships them, read through the real loader into the package's shared ViT and compared with
transformers' own Dinov2Model; preprocessing against transformers' processor configured as
facebook/dinov2-base's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import tiny_dinov2_model, write_tiny_dinov2
from worldstereo_core.errors import CheckpointMismatchError, MissingFileError, ShapeMismatchError
from worldstereo_core.models.dinov2 import DINOV2_CROP, DINOV2_RESIZE, dinov2_preprocess, load_dinov2
from worldstereo_core.recon.vit import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dinov2_model(seed=3), write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2-tiny", seed=3)


def test_features_equal_transformers_dinov2_pooler_output(tiny):
    """Key mapping (either attention spelling, fused qkv), layer scales, final norm, and the
    position table resized from the 2×2 grid to 16×16 as transformers does."""
    model, folder = tiny
    keys = set(load_file(str(folder / "model.safetensors")))
    assert "encoder.layer.0.attention.attention.query.weight" in keys and "layernorm.weight" in keys
    ext = load_dinov2(folder)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(40, 60, 3, generator=g), torch.rand(70, 30, 3, generator=g)]
    feats = ext(images)
    assert feats.shape == (2, 32) and feats.dtype == np.float64
    with torch.no_grad():
        ref = model(pixel_values=dinov2_preprocess(images)).pooler_output.double().numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    # one image at a time, as the release: a feature does not depend on the other images of the call
    np.testing.assert_allclose(ext(images[1:]), feats[1:], rtol=1e-6, atol=1e-7)
    # the newer spelling (attention.q_proj …, as transformers ≥ 5 saves) loads to the same features
    newer = folder.parent / "newer"
    newer.mkdir()
    state = {
        k.replace(".attention.attention.query.", ".attention.q_proj.")
        .replace(".attention.output.dense.", ".attention.o_proj.")
        .replace(".attention.attention.key.", ".attention.k_proj.")
        .replace(".attention.attention.value.", ".attention.v_proj."): v
        for k, v in load_file(str(folder / "model.safetensors")).items()
    }
    save_file(state, str(newer / "model.safetensors"))
    (newer / "config.json").write_text((folder / "config.json").read_text())
    np.testing.assert_allclose(load_dinov2(newer)(images), feats, rtol=1e-6, atol=1e-7)


def test_loader_errors_name_the_fix(tiny, tmp_path):
    _, folder = tiny
    with pytest.raises(MissingFileError, match="not a folder"):
        load_dinov2(folder / "model.safetensors")
    (tmp_path / "noconfig").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "noconfig" / "model.safetensors"))
    with pytest.raises(MissingFileError, match="config.json"):
        load_dinov2(tmp_path / "noconfig")
    cfg = json.loads((folder / "config.json").read_text())

    def variant(name, config, state=None):
        d = tmp_path / name
        d.mkdir()
        if state is None:
            (d / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        else:
            save_file(state, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        return d

    with pytest.raises(CheckpointMismatchError, match="wrong shape"):  # weights of another size than the config says
        load_dinov2(variant("bigger", {**cfg, "hidden_size": 64, "num_attention_heads": 4}))
    partial = {
        k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("encoder.layer.1.")
    }
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_dinov2(variant("partial", cfg, partial))
    with pytest.raises(CheckpointMismatchError, match="another variant"):
        load_dinov2(variant("swiglu", {**cfg, "use_swiglu_ffn": True}))
    with pytest.raises(ShapeMismatchError, match=r"\[H, W, 3\]"):
        dinov2_preprocess([torch.zeros(3, 8, 8)])


def test_preprocess_matches_transformers_processor_of_dinov2_base():
    """Independent check: transformers' BitImageProcessor with facebook/dinov2-base's
    preprocessor_config.json values, on 8-bit images (what the release feeds it)."""
    from transformers import BitImageProcessor

    proc = BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": DINOV2_RESIZE},
        resample=3,
        do_center_crop=True,
        crop_size={"height": DINOV2_CROP, "width": DINOV2_CROP},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )
    g = torch.Generator().manual_seed(2)
    for h, w in ((480, 832), (300, 200), (224, 224), (97, 131)):  # odd crop margins too
        # photo-like content: smooth structure plus fine texture, 8-bit
        coarse = torch.nn.functional.interpolate(torch.rand(1, 3, 9, 13, generator=g), size=(h, w), mode="bilinear")
        img = (coarse[0].permute(1, 2, 0) * 0.9 + 0.1 * torch.rand(h, w, 3, generator=g)).clamp(0, 1)
        u8 = (img * 255).round().to(torch.uint8)
        ref = proc(images=u8.numpy(), return_tensors="pt").pixel_values
        ours = dinov2_preprocess([u8.float() / 255.0])
        assert ours.shape == ref.shape == (1, 3, 224, 224)
        # in grey levels: torchvision resizes 8-bit images with fixed-point weights (a level here and
        # there); a wrong size, crop offset or normalisation moves every pixel by many levels
        levels = ((ours - ref) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).abs() * 255
        assert levels.max() <= 1.001 and levels.mean() < 0.3
