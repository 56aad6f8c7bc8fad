"""Wan2.1-I2V's conditioning encoders: UMT5-XXL for text, CLIP ViT-H/14 for the first frame.

* Text: prompts are cleaned like Wan's pipelines (ftfy when installed, HTML unescape, whitespace),
  tokenised to 512 tokens (EOS appended, padded with 0, truncated), encoded by ``UMT5EncoderModel`` with
  the attention mask, and every embedding past a prompt's own length is set to **zero** → ``[B, 512, 4096]``.
* Image: the frame is resized (shortest edge 224, bicubic, antialiased), centre-cropped to 224×224,
  normalised with CLIP's mean/std, and the **penultimate** layer's hidden states are returned
  (``hidden_states[-2]``: no post-layernorm) → ``[B, 257, 1280]`` (256 patches + class token).

The released WorldStereo pipelines build their ``CLIPImageProcessor`` with ``do_rescale=False``
(FuchengSu/WorldStereo models/worldstereo_wrapper.py, ``CLIPImageProcessor.from_pretrained(..., do_rescale=False)``)
and hand it the PIL start frame (src/data_utils.py ``Image.open``; pipelines' ``encode_image``), so CLIP
sees pixel values in 0…255 normalised with the 0…1 mean/std. That is what the released weights ran
with, so it is the default here (``pixel_scale="release"``); ``"unit"`` gives standard CLIP
preprocessing (pixels in 0…1: Wan's own pipeline, ComfyUI's ``CLIPVisionEncode``, whose
``CLIP_VISION_OUTPUT`` the Sampler accepts in place of this encoder — the help page says so).

Weights load from a diffusers Wan2.1 folder (``text_encoder/``, ``tokenizer/``, ``image_encoder/``) or
from ComfyUI's single files (``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled``, ``clip_vision_h``);
tokenizers come from local files only.
"""

from __future__ import annotations

import html
import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from ..checkpoint import (
    checkpoint_files,
    open_tensor_source,
    read_extra_bytes,
    stored_config,
)
from ..errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidFileError,
    InvalidInputError,
    InvalidOptionError,
    MissingFileError,
    MissingInputError,
    ShapeMismatchError,
)
from .conversion import ConversionPlan, load_converted, plan_clip_vision, plan_umt5

TEXT_MAX_LENGTH = 512
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PixelScale = Literal["release", "unit"]

UMT5_XXL_CONFIG: Mapping[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
"""google/umt5-xxl (Wan2.1's text encoder)."""

CLIP_VIT_H_CONFIG: Mapping[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "num_channels": 3,
}
"""open_clip ViT-H/14 vision tower (Wan2.1-I2V's ``image_encoder``, ComfyUI's ``clip_vision_h``)."""

# CLIP widths whose head count is standard (heads are not visible in the weight shapes).
_CLIP_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def clip_num_tokens(config: Mapping[str, Any] = CLIP_VIT_H_CONFIG) -> int:
    """Tokens of the image embedding: ``(image_size / patch_size)² + 1`` (class token); 257 for ViT-H/14."""
    return (int(config["image_size"]) // int(config["patch_size"])) ** 2 + 1


# ------------------------------------------------------------------------------------------- text


def prompt_clean(text: str) -> str:
    """Wan's prompt cleaning: ``ftfy.fix_text`` (if installed), HTML-unescape twice, collapse whitespace."""
    try:
        import ftfy  # optional: Wan's pipelines use it when available

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer(Protocol):
    """Turns prompts into ``(input_ids [B, L] long, attention_mask [B, L] long)``, padded to ``max_length``."""

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class HFTokenizer:
    """A transformers tokenizer (``tokenizer/`` folder of a Wan checkpoint), used like Wan's pipelines."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out.input_ids.long(), out.attention_mask.long()


class SentencePieceTokenizer:
    """UMT5's SentencePiece model (a ``spiece.model`` file, or the ``spiece_model`` bytes that ComfyUI's
    umt5 files embed): pieces + EOS (id 1), truncated to ``max_length`` keeping the EOS, padded with 0."""

    def __init__(self, model_proto: bytes, eos_id: int = 1, pad_id: int = 0) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.eos_id, self.pad_id = eos_id, pad_id

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for i, text in enumerate(texts):
            seq = list(self.sp.encode(text))[: max_length - 1] + [self.eos_id]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        return ids, mask


def load_tokenizer(path: str | os.PathLike[str]) -> PromptTokenizer:
    """A tokenizer from local files: a folder (``tokenizer.json`` / ``spiece.model`` + configs, or a Wan
    root with ``tokenizer/``) or a SentencePiece ``.model`` file. Never downloads."""
    path = Path(path)
    if path.is_dir() and (path / "tokenizer").is_dir():
        path = path / "tokenizer"
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path.read_bytes())
        raise InvalidFileError(f"{path} is not a tokenizer; give the tokenizer folder or a SentencePiece .model file")
    if not path.is_dir():
        raise MissingFileError(
            f"tokenizer {path} does not exist; point to the tokenizer/ folder of Wan2.1-I2V-14B-480P (diffusers) "
            "or to the umt5-xxl spiece.model"
        )
    known = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    if not any((path / n).exists() for n in known):
        raise MissingFileError(f"{path} holds no tokenizer files ({', '.join(known)}); is it the tokenizer/ folder?")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises several types for unreadable/unsupported tokenizer files
        if (path / "spiece.model").exists():
            return SentencePieceTokenizer((path / "spiece.model").read_bytes())
        raise CorruptFileError(f"cannot read the tokenizer in {path}: {exc}") from None
    return HFTokenizer(tok)


class _WrappedEncoder:
    """What the encoder wrappers share: the device and dtype of their transformers ``model``."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


class UMT5TextEncoder(_WrappedEncoder):
    """UMT5 encoder + tokenizer producing Wan's text conditioning ``[B, 512, d_model]``."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: PromptTokenizer, max_length: int = TEXT_MAX_LENGTH) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, tokenised prompts: ``(ids [B, 512], mask [B, 512])``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0 or not all(isinstance(p, str) for p in prompts):
            raise InvalidInputError("prompts must be a string or a non-empty list of strings")
        return self.tokenizer([prompt_clean(p) for p in prompts], self.max_length)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Embeddings ``[B, 512, d_model]``; rows past each prompt's token count (EOS included) are zero."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Wan keeps only each prompt's own tokens and pads with zeros (not the encoder's padding outputs).
        return torch.where(mask.unsqueeze(-1).bool(), hidden, torch.zeros_like(hidden))


# ------------------------------------------------------------------------------------------ image


def resize_center_crop(x: torch.Tensor, shortest_edge: int, crop: int) -> torch.Tensor:
    """``[N, C, H, W]`` → ``[N, C, crop, crop]`` as transformers' image processors do it: shortest edge
    to ``shortest_edge`` (long edge ``int(shortest_edge · long / short)``, bicubic, antialiased),
    then the centre crop at offset ``int((size − crop) / 2)`` (truncated, as transformers'
    ``center_crop`` in its PIL and torchvision paths alike)."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(shortest_edge * long / short)
    new_hw = (shortest_edge, new_long) if h <= w else (new_long, shortest_edge)
    if (h, w) != new_hw:
        x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
    top = (x.shape[-2] - crop) // 2
    left = (x.shape[-1] - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    pixel_scale: PixelScale = "release",
    mean: Sequence[float] = CLIP_IMAGE_MEAN,
    std: Sequence[float] = CLIP_IMAGE_STD,
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in ``[-1, 1]`` → CLIP pixel values ``[N, 3, size, size]``.

    Shortest edge to ``size`` (long edge ``int(size · long / short)``, bicubic + antialias), centre crop,
    then ``(x·k − mean) / std`` with ``k = 255`` for ``pixel_scale="release"`` (see the module notes) and
    ``k = 1`` for ``"unit"``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ShapeMismatchError(f"images for CLIP must be [N, 3, H, W] in [-1, 1]; got {shape}")
    if pixel_scale not in ("release", "unit"):
        raise InvalidOptionError(f"pixel_scale must be 'release' or 'unit'; got {pixel_scale!r}")
    x = resize_center_crop((images.float() + 1.0) * 0.5, size, size)
    if pixel_scale == "release":
        x = x * 255.0
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class CLIPImageEncoder(_WrappedEncoder):
    """CLIP vision tower returning the penultimate layer's hidden states ``[N, 257, 1280]``."""

    def __init__(self, model: CLIPVisionModel, pixel_scale: PixelScale = "release") -> None:
        if pixel_scale not in ("release", "unit"):
            raise InvalidOptionError(f"pixel_scale must be 'release' or 'unit'; got {pixel_scale!r}")
        self.model = model.eval()
        self.pixel_scale = pixel_scale
        self.image_size = int(model.config.image_size)
        core = getattr(model, "vision_model", model)  # transformers < 5 nests the tower
        self._core = core
        params = inspect.signature(type(core.encoder.layers[0]).forward).parameters
        self._legacy_layer_call = "causal_attention_mask" in params

    @property
    def num_tokens(self) -> int:
        return clip_num_tokens(self.model.config.to_dict())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` in ``[-1, 1]`` → ``hidden_states[-2]`` ``[N, 257, hidden]``.

        Runs only the layers it needs (the last layer's output is never used).
        """
        pixels = clip_preprocess(images, self.image_size, self.pixel_scale).to(self.device, self.dtype)
        core = self._core
        h = core.pre_layrnorm(core.embeddings(pixels))
        for layer in core.encoder.layers[:-1]:
            out = layer(h, None, None) if self._legacy_layer_call else layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        return h


# ---------------------------------------------------------------------------------------- loading


def _file_config(path: Path, files: list, kind: str) -> dict[str, Any] | None:
    """The architecture a checkpoint states: ``config.json`` of its folder, else the file's embedded
    config (the checkpoint convention); ``None`` for files that state none (ComfyUI's single files)."""
    return stored_config(path, files, kind, single_file_too=False)[0]


def _shape_reader(plan: ConversionPlan, get: Any) -> Any:
    """Shape of a target tensor, from the file header when possible (no tensor read)."""
    header_shape = getattr(get, "shape", None)

    def shape(target: str) -> tuple[int, ...]:
        recipe = plan.targets[target]
        if header_shape is not None and getattr(recipe, "source", None) is not None:
            return tuple(header_shape(recipe.source))
        return tuple(recipe(get).shape)

    return shape


def _umt5_config_from_shapes(plan: ConversionPlan, get: Any) -> dict[str, Any]:
    """UMT5 sizes read from the weights' shapes (single files carry no config)."""
    t = plan.targets
    shape = _shape_reader(plan, get)
    try:
        vocab, d_model = shape("shared.weight")
        inner = shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]
        buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    except KeyError as exc:
        raise CheckpointMismatchError(f"UMT5 file lacks {exc.args[0]!r}; is it a complete umt5-xxl encoder?") from None
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in t
    d_ff = shape("encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")[0]
    layers = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("encoder.block."))
    return {
        **UMT5_XXL_CONFIG,
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
    }


def _load_transformers_model(
    weights: Path,
    files: list,
    make_plan: Callable[[Any], ConversionPlan],
    kind: str,
    config: Mapping[str, Any] | None,
    config_from_shapes: Callable[[ConversionPlan, Any], dict[str, Any]],
    build: Callable[[dict[str, Any]], torch.nn.Module],
    what: str,
    device: torch.device | str,
    dtype: torch.dtype | None,
) -> tuple[torch.nn.Module, ConversionPlan]:
    """Build a transformers encoder on meta and stream ``files`` into it; returns it and its plan.

    The architecture is ``config`` if given, else what the checkpoint states (:func:`_file_config`),
    else what the weights' shapes say; transformers' bookkeeping keys (``_name_or_path``,
    ``architectures``, ``transformers_version``) are dropped before ``build(cfg)``.
    """
    with open_tensor_source(files) as (keys, get):
        plan = make_plan(keys)
        cfg = (
            dict(config)
            if config is not None
            else (_file_config(weights, files, kind) or config_from_shapes(plan, get))
        )
        cfg = {
            k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")
        }
        with torch.device("meta"):
            model = build(cfg)
        load_converted(model, plan, get, what, device, dtype)
    return model, plan


def _resolve_component(path: Path, sub: str) -> Path:
    return path / sub if path.is_dir() and (path / sub).is_dir() else path


def load_text_encoder(
    path: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | PromptTokenizer | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    config: Mapping[str, Any] | None = None,
    max_length: int = TEXT_MAX_LENGTH,
) -> UMT5TextEncoder:
    """UMT5 text encoder from a Wan root / ``text_encoder/`` folder (sharded or not) or a single file.

    ``tokenizer``: a tokenizer object, a local path, or ``None`` — then ``<wan root>/tokenizer``, a
    ``tokenizer/`` folder beside the weights, or the ``spiece_model`` embedded in ComfyUI's umt5 files.
    """
    src = Path(path)
    root = src if src.is_dir() and (src / "text_encoder").is_dir() else None
    weights = _resolve_component(src, "text_encoder")
    files = checkpoint_files(weights, "UMT5 text encoder")
    model, plan = _load_transformers_model(
        weights,
        files,
        plan_umt5,
        "umt5",
        config,
        _umt5_config_from_shapes,
        lambda cfg: UMT5EncoderModel(UMT5Config(**cfg)),
        "UMT5 text encoder",
        device,
        dtype,
    )
    # one embedding table, shared (the release does the same under transformers >= 5)
    model.encoder.embed_tokens = model.shared

    if tokenizer is None:
        candidates = [c for c in (root and root / "tokenizer", weights.parent / "tokenizer") if c and c.is_dir()]
        if candidates:
            tokenizer = load_tokenizer(candidates[0])
        elif "spiece_model" in plan.extras:
            tokenizer = SentencePieceTokenizer(read_extra_bytes(files, plan.extras["spiece_model"]))
        else:
            raise MissingInputError(
                f"no tokenizer found for {src}: pass tokenizer=<the tokenizer/ folder of Wan2.1-I2V-14B-480P "
                "(diffusers)> or a umt5-xxl spiece.model; it is never downloaded"
            )
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return UMT5TextEncoder(model, tokenizer, max_length=max_length)


def _clip_config_from_shapes(plan: ConversionPlan, get: Any) -> dict[str, Any]:
    t = plan.targets
    shape = _shape_reader(plan, get)
    try:
        hidden, _, patch, _ = shape("vision_model.embeddings.patch_embedding.weight")
        n_pos = shape("vision_model.embeddings.position_embedding.weight")[0]
        inter = shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0]
    except KeyError as exc:
        raise CheckpointMismatchError(
            f"CLIP vision file lacks {exc.args[0]!r}; is it a complete vision tower?"
        ) from None
    if hidden not in _CLIP_HEADS:
        raise CheckpointMismatchError(
            f"CLIP vision width {hidden} has no standard head count; pass config=... (a CLIPVisionConfig dict)"
        )
    grid = round((n_pos - 1) ** 0.5)
    layers = 1 + max(int(k.split(".")[3]) for k in t if k.startswith("vision_model.encoder.layers."))
    return {
        **CLIP_VIT_H_CONFIG,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_hidden_layers": layers,
        "num_attention_heads": _CLIP_HEADS[hidden],
    }


def load_image_encoder(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    config: Mapping[str, Any] | None = None,
    pixel_scale: PixelScale = "release",
) -> CLIPImageEncoder:
    """CLIP vision tower from a Wan root / ``image_encoder/`` folder or a single file (``clip_vision_h``)."""
    weights = _resolve_component(Path(path), "image_encoder")
    files = checkpoint_files(weights, "CLIP image encoder")
    model, _ = _load_transformers_model(
        weights,
        files,
        plan_clip_vision,
        "clip_vision",
        config,
        _clip_config_from_shapes,
        lambda cfg: CLIPVisionModel(CLIPVisionConfig(**cfg)),
        "CLIP image encoder",
        device,
        dtype,
    )
    return CLIPImageEncoder(model, pixel_scale=pixel_scale)


__all__ = [
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "CLIP_VIT_H_CONFIG",
    "TEXT_MAX_LENGTH",
    "UMT5_XXL_CONFIG",
    "CLIPImageEncoder",
    "HFTokenizer",
    "PromptTokenizer",
    "SentencePieceTokenizer",
    "UMT5TextEncoder",
    "clip_num_tokens",
    "clip_preprocess",
    "load_image_encoder",
    "load_text_encoder",
    "load_tokenizer",
    "prompt_clean",
    "resize_center_crop",
]
