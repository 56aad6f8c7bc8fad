"""Test support, installed into the test server's ``custom_nodes``: ComfyUI's own CLIPLoader (type
wan) and CLIP Vision Loader read the pack's tiny test encoders (``tests/tiny_models.py``).

ComfyUI builds these encoders at their release sizes (UMT5-XXL from ``umt5_config_xxl.json``, ViT-H
from ``clip_vision_config_h.json``) whatever a file holds, and picks the text encoder family from
layer 23's presence. The tiny files carry their sizes in the safetensors metadata (``"config"``, as
``worldstereo_core.checkpoint`` writes it). For those files only, this overrides the sizes — and the
dtype to float32, so embeddings compare with the pack's own encoders — through ComfyUI's own hook
(``model_options["umt5xxl_model_config"]``) or a config file of the same keys; ComfyUI's code still
tokenises, encodes and builds the CONDITIONING / CLIP_VISION_OUTPUT. Every other file (all real
ones) takes ComfyUI's unchanged path. Registers no nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import comfy.clip_vision
import comfy.sd
import comfy.utils
import torch

NODE_CLASS_MAPPINGS: dict = {}

UMT5_SIZES = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
CLIP_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "image_size",
    "patch_size",
)


def _tiny_config(path) -> dict | None:
    """The sizes a tiny test file records (None for any other file)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["config"]) if "config" in meta else None


@contextlib.contextmanager
def _detected_as(te_model):
    original = comfy.sd.detect_te_model
    comfy.sd.detect_te_model = lambda sd: te_model
    try:
        yield
    finally:
        comfy.sd.detect_te_model = original


_load_clip = comfy.sd.load_clip


def load_clip(ckpt_paths, embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, model_options=None):
    model_options = model_options or {}
    cfg = _tiny_config(ckpt_paths[0]) if len(ckpt_paths) == 1 else None
    if cfg is None or clip_type != comfy.sd.CLIPType.WAN:
        return _load_clip(ckpt_paths, embedding_directory, clip_type, model_options)
    options = {
        **model_options,
        "umt5xxl_model_config": {k: cfg[k] for k in UMT5_SIZES},
        "dtype": torch.float32,
    }
    with _detected_as(comfy.sd.TEModel.T5_XXL):  # the UMT5-XXL family, at the file's size
        return _load_clip(ckpt_paths, embedding_directory, clip_type, options)


_load_clip_vision = comfy.clip_vision.load


def load_clip_vision(ckpt_path):
    cfg = _tiny_config(ckpt_path)
    if cfg is None:
        return _load_clip_vision(ckpt_path)
    folder = os.path.dirname(os.path.realpath(comfy.clip_vision.__file__))
    with open(os.path.join(folder, "clip_vision_config_h.json")) as f:
        config = {**json.load(f), **{k: cfg[k] for k in CLIP_SIZES}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        model = comfy.clip_vision.ClipVisionModel(f.name)
    finally:
        os.unlink(f.name)
    model.load_sd(comfy.utils.load_torch_file(ckpt_path))
    return model


comfy.sd.load_clip = load_clip
comfy.clip_vision.load = load_clip_vision
