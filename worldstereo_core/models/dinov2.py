"""DINOv2 image features for the release's reference cut (SSM retrieval).

When more than 8 memory-bank views qualify as references, the release (``src/retrieval_wm.py``,
``CameraSelector``) keeps 8 by farthest-point sampling on camera *and* image features; the image
features are DINOv2-base's ``pooler_output`` — the final-LayerNorm class token, 768 values —
of ``transformers``' ``Dinov2Model`` on the processor output of ``facebook/dinov2-base``:

* shortest edge resized to 256 (bicubic, antialiased; long edge ``int(256 · long / short)``) on
  8-bit images, centre crop 224×224, pixels / 255, ImageNet mean/std
  (``preprocessor_config.json`` of ``facebook/dinov2-base``);
* one image at a time, as the release does (results do not depend on batching).

The network is the package's one DINOv2 ViT (:class:`worldstereo_core.recon.vit.DinoViT`, shared
with MoGe-2 and WorldMirror) with transformers' position-table resizing (``pos_resize="exact"``).
Weights load from a local folder only — ComfyUI's ``models/dinov2/<name>/`` holding the hub's
``config.json`` + ``model.safetensors`` — never from the network, never from pickles. The hub file
is in transformers' layout (``embeddings.*``, ``encoder.layer.N.*``, separate query/key/value,
spelt ``attention.attention.query`` … ``attention.output.dense``, or ``attention.q_proj`` …
``o_proj`` by transformers ≥ 5); :func:`plan_dinov2` maps either onto the ViT's DINOv2 names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import ConversionPlan, checkpoint_files, load_checkpoint, read_json, tag_recipe, take
from ..errors import CheckpointMismatchError, CorruptFileError, InvalidInputError, MissingFileError, ShapeMismatchError
from ..recon.vit import IMAGENET_MEAN, IMAGENET_STD, DinoViT
from .encoders import resize_center_crop

__all__ = [
    "DINOV2_BASE_CONFIG",
    "DINOV2_RESIZE",
    "DINOV2_CROP",
    "DINOv2FeatureExtractor",
    "build_dinov2",
    "dinov2_preprocess",
    "load_dinov2",
    "plan_dinov2",
]

#: ``facebook/dinov2-base`` ``config.json`` (the release's ``AutoModel.from_pretrained("facebook/dinov2-base")``).
DINOV2_BASE_CONFIG: Mapping[str, Any] = {
    "model_type": "dinov2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "image_size": 518,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "hidden_act": "gelu",
}
# ``facebook/dinov2-base`` ``preprocessor_config.json``: size.shortest_edge, crop_size (mean/std: ImageNet's).
DINOV2_RESIZE = 256
DINOV2_CROP = 224

# Every DINOv2-base value the shared ViT hard-wires; a config.json that differs is another model.
_FIXED = {"mlp_ratio": 4, "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False, "hidden_act": "gelu"}


def build_dinov2(config: Mapping[str, Any]) -> DinoViT:
    """The shared DINOv2 ViT for a transformers ``Dinov2Config`` dict (position table resized as
    transformers does); raises :class:`CheckpointMismatchError` for a variant it does not implement."""
    odd = {k: config[k] for k, v in _FIXED.items() if k in config and config[k] != v}
    if config.get("num_register_tokens") or odd or config.get("model_type", "dinov2") != "dinov2":
        raise CheckpointMismatchError(
            f"DINOv2 config describes another variant ({odd or config.get('model_type') or 'registers'}); "
            "the release uses facebook/dinov2-base — use its config.json"
        )
    try:
        dim, depth, heads = (int(config[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads"))
        img, patch = int(config.get("image_size", 518)), int(config.get("patch_size", 14))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointMismatchError(
            f"DINOv2 config.json lacks a size ({e}); use the hub's config.json of facebook/dinov2-base"
        ) from None
    if dim % heads or img % patch:
        raise CheckpointMismatchError(
            f"DINOv2 config: hidden_size {dim} / heads {heads} or image_size {img} / patch {patch} do not divide"
        )
    return DinoViT(img, patch, dim, depth, heads, registers=0, pos_resize="exact")


def plan_dinov2(keys: Sequence[str]) -> ConversionPlan:
    """transformers' DINOv2 keys (either attention spelling, optionally under ``dinov2.``) → the ViT's."""
    ks = set(keys)
    prefix = "dinov2." if "dinov2.embeddings.cls_token" in ks else ""

    def key(name: str, *alts: str) -> str:
        for k in (name, *alts):
            if prefix + k in ks:
                return prefix + k
        return prefix + name  # absent: reported by the match as a missing weight

    targets: dict[str, Any] = {
        "cls_token": take(key("embeddings.cls_token")),
        "mask_token": take(key("embeddings.mask_token")),
        "pos_embed": take(key("embeddings.position_embeddings")),
        "patch_embed.proj.weight": take(key("embeddings.patch_embeddings.projection.weight")),
        "patch_embed.proj.bias": take(key("embeddings.patch_embeddings.projection.bias")),
        "norm.weight": take(key("layernorm.weight")),
        "norm.bias": take(key("layernorm.bias")),
    }
    layers = sorted({int(k[len(prefix) :].split(".")[2]) for k in ks if k.startswith(prefix + "encoder.layer.")})
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for w in ("weight", "bias"):
            qkv = [
                key(f"{src}attention.attention.{a}.{w}", f"{src}attention.{b}_proj.{w}")
                for a, b in (("query", "q"), ("key", "k"), ("value", "v"))
            ]
            recipe = tag_recipe(lambda get, q=qkv: torch.cat([get(k) for k in q]), qkv[0])
            recipe.reshapes = True  # fused: its shape is checked when loaded
            targets[f"{dst}attn.qkv.{w}"] = recipe
            targets[f"{dst}attn.proj.{w}"] = take(key(f"{src}attention.output.dense.{w}", f"{src}attention.o_proj.{w}"))
            for ours, theirs in (
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                targets[f"{dst}{ours}.{w}"] = take(key(f"{src}{theirs}.{w}"))
        targets[f"{dst}ls1.gamma"] = take(key(f"{src}layer_scale1.lambda1"))
        targets[f"{dst}ls2.gamma"] = take(key(f"{src}layer_scale2.lambda1"))
    return ConversionPlan("transformers-dinov2", targets)


def dinov2_preprocess(images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Images ``[H, W, 3]`` in [0, 1] (ComfyUI layout; sizes may differ) → pixel values ``[N, 3, 224, 224]``.

    Each image is quantised to 8 bits (the release reads 8-bit frames), resized and cropped, and
    the result quantised again (the processor resizes 8-bit tensors: overshoot clamped, values
    rounded), then normalised, as ``facebook/dinov2-base``'s processor does (module doc).
    """
    out = []
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[-1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ShapeMismatchError(f"DINOv2 image {i} must be [H, W, 3] in [0, 1]; got {shape}")
        x = (img.detach().float().cpu().clamp(0, 1) * 255.0).round() / 255.0
        x = resize_center_crop(x.permute(2, 0, 1)[None], DINOV2_RESIZE, DINOV2_CROP)
        out.append((x * 255.0).round().clamp(0, 255) / 255.0)
    if not out:
        raise InvalidInputError("no image given to DINOv2")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.cat(out) - mean) / std


class DINOv2FeatureExtractor:
    """``images → [N, D]`` DINOv2 ``pooler_output`` features (float64 numpy), one image at a time.

    A callable, so the retrieval (:func:`worldstereo_core.retrieval.select_references`) takes it
    without knowing the network.
    """

    def __init__(self, vit: DinoViT) -> None:
        self.vit = vit.eval()

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        p = next(self.vit.parameters())
        last = [len(self.vit.blocks) - 1]
        feats = [self.vit.tapped(x[None].to(p.device, p.dtype), last)[0][:, 0] for x in dinov2_preprocess(images)]
        return torch.cat(feats).double().cpu().numpy()


def load_dinov2(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype | None = torch.float32
) -> DINOv2FeatureExtractor:
    """DINOv2 from a folder with the hub's ``config.json`` + ``model.safetensors`` (e.g.
    ``models/dinov2/dinov2-base/``); raises :class:`CheckpointMismatchError` naming what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise MissingFileError(
            f"DINOv2: {folder} is not a folder; give the folder holding config.json + model.safetensors"
        )
    if not (folder / "config.json").is_file():
        raise MissingFileError(
            f"DINOv2: {folder} has no config.json; put the hub's config.json of facebook/dinov2-base beside "
            "model.safetensors (models/dinov2/<name>/)"
        )
    config = read_json(folder / "config.json", "DINOv2 config.json")
    if not isinstance(config, dict):
        raise CorruptFileError(f"DINOv2: {folder / 'config.json'} is not a JSON object; download it again")
    files = checkpoint_files(folder, "DINOv2")
    with torch.device("meta"):
        vit = build_dinov2(config)
    load_checkpoint(
        vit,
        files,
        plan_dinov2,
        "DINOv2 weights",
        device,
        dtype,
        diagnose="is it facebook/dinov2-base's model.safetensors, beside its own config.json?",
    )
    return DINOv2FeatureExtractor(vit)
