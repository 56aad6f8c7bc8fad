"""Tiny random weights in the real file layouts, for tests, CI workflows and demos without downloads.

:func:`write_tiny_models` fills a ComfyUI-style ``models/`` folder exactly where users put the real
files, with the same formats the loaders read:

* ``worldstereo/worldstereo-camera``, ``-memory``, ``-memory-dmd``: ``config.json`` + ``model.safetensors``
  (the release's layout, tiny sizes; I2V condition ``first_frame_only`` for speed);
* ``text_encoders/umt5_xxl_tiny.safetensors``: transformers UMT5 keys plus an embedded SentencePiece
  model under ``spiece_model`` (ComfyUI's umt5 files carry their tokenizer the same way), trained here on
  a few sentences — nothing is downloaded;
* ``clip_vision/clip_vision_h_tiny.safetensors``: transformers ``vision_model.*`` keys (clip_vision_h's);
* ``vae/wan_2.1_vae_tiny.safetensors``: the diffusers ``AutoencoderKLWan`` layout;
* ``moge/moge-2-tiny/``: MoGe-2 ``model.safetensors`` + ``config.json`` (for Load MoGe-2);
* ``dinov2/dinov2-tiny/``: transformers DINOv2 ``config.json`` + ``model.safetensors`` (for Load DINOv2);
* ``controlnet/uni3c_controlnet_tiny.safetensors``: a Uni3C camera ControlNet in the released top-level
  layout (ComfyUI's ``Wan21_Uni3C_controlnet_fp16.safetensors`` lives in the same folder), sized to fit
  the tiny transformer.

Test support only: the runtime never imports this module (tests, ``scripts/make_tiny_weights.py`` and
``scripts/build_workflows.py`` do). Single files carry no architecture, so each tiny encoder/VAE file
stores its config the way :mod:`worldstereo_core.checkpoint` defines (metadata ``"config"`` + ``"model"``);
the loaders read it back themselves (ComfyUI's real files have none and get the released architectures).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from worldstereo_core.checkpoint import save_checkpoint
from worldstereo_core.errors import InvalidChoiceError, InvalidOptionError
from worldstereo_core.models.loading import (
    init_random_weights,
    save_worldstereo,
)
from worldstereo_core.tiny_configs import (
    TINY_MOGE_CONFIG,
    TINY_UNI3C_CONFIG,
    build_tiny_transformer,
    tiny_clip_vision_config,
    tiny_dinov2_config,
    tiny_umt5_config,
    tiny_vae_config,
    tiny_worldmirror_config,
)

RELEASE_FOLDERS: Mapping[str, str] = {
    "camera": "worldstereo-camera",
    "memory": "worldstereo-memory",
    "dmd": "worldstereo-memory-dmd",
}
"""Folder names of the released checkpoints (Hugging Face ``hanshanxue/WorldStereo`` subfolders)."""

TINY_FILES: Mapping[str, str] = {
    "text_encoders": "umt5_xxl_tiny.safetensors",
    "clip_vision": "clip_vision_h_tiny.safetensors",
    "vae": "wan_2.1_vae_tiny.safetensors",
}

_CORPUS = (
    "a camera moves slowly through a bright kitchen with wooden chairs and a table",
    "the quick brown fox jumps over the lazy dog near the old stone wall",
    "a stone bridge over a calm river at sunset, photorealistic, high detail",
    "aerial view of a green valley with small houses, trees and a winding road",
    "a cozy living room with a sofa, a lamp, books on shelves and a large window",
)


def tiny_sentencepiece(corpus: Sequence[str] = _CORPUS, vocab_size: int = 96) -> bytes:
    """A small SentencePiece unigram model (UMT5's ids: pad 0, eos 1, unk 2) trained in-process."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 8),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return buf.getvalue()


def write_tiny_text_encoder(path: Path, seed: int = 0) -> Path:
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = tiny_umt5_config()
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**cfg))
    state = dict(model.state_dict())
    proto = tiny_sentencepiece(vocab_size=min(96, int(cfg["vocab_size"])))
    state["spiece_model"] = torch.frombuffer(bytearray(proto), dtype=torch.uint8)
    return save_checkpoint(state, path, "umt5", cfg)


def write_tiny_image_encoder(path: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = tiny_clip_vision_config()
    torch.manual_seed(seed + 1)
    model = CLIPVisionModel(CLIPVisionConfig(**cfg))
    state = {(k if k.startswith("vision_model.") else "vision_model." + k): v for k, v in model.state_dict().items()}
    return save_checkpoint(state, path, "clip_vision", cfg)


def write_tiny_vae(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan

    cfg = tiny_vae_config()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan.from_config(cfg)
    return save_checkpoint(vae.state_dict(), path, "wan_vae", cfg)


TINY_LATENT_COND_MODE = "first_frame_only"
"""I2V condition mode of the tiny checkpoints. The release's ``full_vae`` runs the causal VAE over
81 frames, ~30 s per clip on two CPU cores even at 64×96 with the tiny VAE; ``first_frame_only`` (the
other mode the release config accepts) encodes two frames, so CI workflows stay within their budget."""


def write_tiny_worldstereo(
    folder: Path, variant: str, seed: int = 0, std: float = 0.05, latent_cond_mode: str = TINY_LATENT_COND_MODE
) -> Path:
    """A tiny ``variant`` checkpoint folder with random weights (control/camera branches non-zero)."""
    import dataclasses

    model = build_tiny_transformer(variant)
    init_random_weights(model, "cpu", torch.float32, std=std, seed=seed + 3)
    model.ws_config = dataclasses.replace(model.ws_config, latent_cond_mode=latent_cond_mode)
    return save_worldstereo(model, folder)


TINY_UNI3C_FILE = "uni3c_controlnet_tiny.safetensors"
"""File of the tiny Uni3C branch under ``models/controlnet/``."""


def write_tiny_uni3c(path: Path, seed: int = 0, std: float = 0.05) -> Path:
    """A tiny Uni3C ControlNet (:data:`worldstereo_core.tiny_configs.TINY_UNI3C_CONFIG`, random non-zero weights, so it steers)."""
    from worldstereo_core.models.loading import save_uni3c
    from worldstereo_core.models.uni3c import Uni3CControlNet

    model = Uni3CControlNet(TINY_UNI3C_CONFIG)
    init_random_weights(model, "cpu", torch.float32, std=std, seed=seed + 5)
    return save_uni3c(model, path)


TINY_MOGE_FOLDER = "moge-2-tiny"
"""Folder of the tiny MoGe-2 weights under ``models/moge/`` (combo value ``moge-2-tiny/model.safetensors``)."""


def write_tiny_moge(folder: Path, seed: int = 4) -> Path:
    """Tiny MoGe-2 weights (``model.safetensors`` + ``config.json``) that give usable depth.

    Random weights give random point maps; seed 4's fits a positive focal on the synthetic views
    and the mask head's last bias makes every pixel valid (sigmoid(8) ≈ 1). Depth workflows should
    still pass a field of view, since a random model's focal means nothing.
    """
    from worldstereo_core.recon.moge import MoGeModel, save_moge

    model = MoGeModel(TINY_MOGE_CONFIG)
    g = torch.Generator().manual_seed(seed)
    state = {
        k: v if k.endswith(("image_mean", "image_std")) else torch.randn(v.shape, generator=g) * 0.1
        for k, v in model.state_dict().items()
    }
    state["mask_head.output_blocks.3.bias"] = torch.full((1,), 8.0)
    model.load_state_dict(state)
    return save_moge(model, folder)


TINY_DINOV2_FOLDER = "dinov2-tiny"
"""Folder of the tiny DINOv2 under ``models/dinov2/`` (combo value ``dinov2-tiny/model.safetensors``)."""

# transformers ≥ 5 spelling → the hub files' (transformers 4) spelling of DINOv2's attention weights
_DINOV2_HUB_NAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def write_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A tiny random transformers ``Dinov2Model`` as the hub ships DINOv2 (``config.json`` +
    ``model.safetensors``, attention weights spelt ``attention.attention.query`` …), every weight
    random (layer scales and norms too). Returns the folder; the model is :func:`tiny_dinov2_model`."""
    import json

    from safetensors.torch import save_file

    from worldstereo_core import atomic

    model = tiny_dinov2_model(seed)
    state = {}
    for k, v in model.state_dict().items():
        for new, old in _DINOV2_HUB_NAMES:
            k = k.replace(new, old)
        state[k] = v.detach().contiguous()
    folder = Path(folder)
    atomic.write_file(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic.write_text(folder / "config.json", json.dumps(tiny_dinov2_config(), indent=1))
    return folder


def tiny_dinov2_model(seed: int = 0):
    """transformers' ``Dinov2Model`` at the tiny config with seeded random weights (the reference the
    tests compare the package's DINOv2 against)."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**tiny_dinov2_config())).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def write_tiny_models(
    models_dir: str | os.PathLike,
    variants: Sequence[str] = ("camera", "memory", "dmd"),
    seed: int = 0,
    moge: bool = True,
    uni3c: bool = True,
) -> dict[str, Path]:
    """Write tiny weights into a ComfyUI ``models/`` folder; returns ``{name: path}`` of what was written.

    Names: ``worldstereo-camera`` … (checkpoint folders), ``text_encoder``, ``image_encoder``, ``vae``
    and, with ``moge``, ``moge`` (``models/moge/moge-2-tiny/``, see :func:`write_tiny_moge`), with
    ``uni3c``, ``uni3c`` (``models/controlnet/``, see :func:`write_tiny_uni3c`), and ``dinov2``
    (``models/dinov2/dinov2-tiny/``, see :func:`write_tiny_dinov2`).
    """
    root = Path(models_dir)
    out: dict[str, Path] = {}
    for v in variants:
        if v not in RELEASE_FOLDERS:
            raise InvalidOptionError(f"unknown variant {v!r}; use {sorted(RELEASE_FOLDERS)}")
        out[RELEASE_FOLDERS[v]] = write_tiny_worldstereo(root / "worldstereo" / RELEASE_FOLDERS[v], v, seed)
    out["text_encoder"] = write_tiny_text_encoder(root / "text_encoders" / TINY_FILES["text_encoders"], seed)
    out["image_encoder"] = write_tiny_image_encoder(root / "clip_vision" / TINY_FILES["clip_vision"], seed)
    out["vae"] = write_tiny_vae(root / "vae" / TINY_FILES["vae"], seed)
    if moge:
        out["moge"] = write_tiny_moge(root / "moge" / TINY_MOGE_FOLDER)
    if uni3c:
        out["uni3c"] = write_tiny_uni3c(root / "controlnet" / TINY_UNI3C_FILE, seed)
    out["dinov2"] = write_tiny_dinov2(root / "dinov2" / TINY_DINOV2_FOLDER, seed)
    return out


def write_tiny_worldmirror(folder: Path, seed: int = 0) -> Path:
    """Tiny WorldMirror 2.0 weights (``model.safetensors`` + ``config.json``), the released layout."""
    from worldstereo_core.recon.worldmirror import WorldMirror, save_worldmirror

    torch.manual_seed(seed)
    return save_worldmirror(WorldMirror(tiny_worldmirror_config()).eval(), folder)


def write_tiny_wan_base(path: Path, seed: int = 0, std: float = 0.05) -> Path:
    """A tiny Wan2.1-I2V base transformer file: the backbone keys (diffusers names) of a tiny
    WorldStereo transformer, i.e. what ``base_model`` fills into a checkpoint that lacks them."""
    from safetensors.torch import save_file

    from worldstereo_core.models.loading import is_backbone_key

    model = build_tiny_transformer("camera")
    init_random_weights(model, "cpu", torch.float32, std=std, seed=seed + 3)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if is_backbone_key(k)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_file(models_dir: str | os.PathLike, folder: str, name: str, seed: int = 0) -> Path:
    """Tiny weights under ``models_dir/folder/name``, where a loader looks for the real file ``name``.

    ``folder`` is the ComfyUI model folder a loader reads: ``text_encoders``, ``clip_vision``,
    ``vae``, ``controlnet``, ``diffusion_models`` (single files, e.g.
    ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``; the Uni3C branch for ``controlnet``, the Wan base
    transformer for ``diffusion_models``), ``worldstereo`` (a checkpoint folder, named as such or by
    its ``<folder>/model.safetensors``; the variant is read from the release's folder name, else
    ``dmd``), ``moge``
    and ``worldmirror`` (``<subfolder>/model.safetensors``: the weights and ``config.json`` go in
    the subfolder). Tests run the shipped example workflows unchanged this way.
    """
    path = Path(models_dir) / folder / name
    if folder == "text_encoders":
        return write_tiny_text_encoder(path, seed)
    if folder == "clip_vision":
        return write_tiny_image_encoder(path, seed)
    if folder == "vae":
        return write_tiny_vae(path, seed)
    if folder == "worldstereo":  # the folder, or its weights file as the loader's combo lists it
        if path.suffix == ".safetensors":
            path = path.parent
        variant = next((v for v, f in RELEASE_FOLDERS.items() if f == path.name), "dmd")
        return write_tiny_worldstereo(path, variant, seed)
    if folder == "moge":
        return write_tiny_moge(path.parent)
    if folder == "worldmirror":
        return write_tiny_worldmirror(path.parent, seed)
    if folder == "controlnet":
        return write_tiny_uni3c(path, seed)
    if folder == "diffusion_models":
        return write_tiny_wan_base(path, seed)
    raise InvalidChoiceError(f"no tiny weights for the model folder {folder!r}")


__all__ = [
    "RELEASE_FOLDERS",
    "TINY_FILES",
    "TINY_LATENT_COND_MODE",
    "TINY_DINOV2_FOLDER",
    "TINY_MOGE_FOLDER",
    "TINY_UNI3C_FILE",
    "tiny_dinov2_model",
    "tiny_sentencepiece",
    "write_tiny_dinov2",
    "write_tiny_file",
    "write_tiny_image_encoder",
    "write_tiny_models",
    "write_tiny_moge",
    "write_tiny_text_encoder",
    "write_tiny_uni3c",
    "write_tiny_wan_base",
    "write_tiny_vae",
    "write_tiny_worldmirror",
    "write_tiny_worldstereo",
]
