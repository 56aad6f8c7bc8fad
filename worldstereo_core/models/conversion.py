"""Key conversions from the weight files users have to the diffusers / transformers layouts.

Three families of files reach us:

* **Wan VAE** — diffusers ``AutoencoderKLWan`` layout (``vae/diffusion_pytorch_model.safetensors`` of a
  diffusers Wan2.1 folder) or the original Wan layout that ComfyUI's ``wan_2.1_vae.safetensors`` uses
  (``encoder.downsamples.N.residual.K``, ``decoder.upsamples.N``, ``conv1``/``conv2`` quant convs).
* **CLIP ViT-H vision tower** — transformers layout (``vision_model.encoder.layers.N…``, what ComfyUI's
  ``clip_vision_h.safetensors`` holds) or the open_clip layout (``visual.transformer.resblocks.N…``).
* **UMT5-XXL encoder** — transformers T5 layout (``encoder.block.N.layer.K…``; ComfyUI's
  ``umt5_xxl_*.safetensors`` use it too), optionally ComfyUI's *scaled fp8* variant (``float8_e4m3fn``
  weights with a per-tensor ``scale_weight``) and an embedded SentencePiece model (``spiece_model``).

A conversion is a :class:`ConversionPlan`: for every target key, a recipe that reads the source
tensor(s) lazily. Loaders stream one tensor at a time through it (no second copy of the weights);
tests run the same plans over in-memory dicts.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping

import torch
from safetensors import safe_open

from ..errors import CheckpointError

TensorSource = Callable[[str], torch.Tensor]
"""Reads one source tensor by key (``safe_open(...).get_tensor`` or ``dict.__getitem__``)."""

Recipe = Callable[[TensorSource], torch.Tensor]


@dataclass(frozen=True)
class ConversionPlan:
    """How to build each target tensor from a source file.

    ``targets`` maps target keys (canonical diffusers / transformers names) to recipes; ``ignored`` are
    source keys deliberately left out (projection heads, fp8 markers…); ``layout`` names what was
    detected; ``extras`` maps names of non-weight payloads (e.g. ``"spiece_model"``) to their source keys.
    """

    layout: str
    targets: Mapping[str, Recipe]
    ignored: tuple[str, ...] = ()
    extras: Mapping[str, str] = field(default_factory=dict)

    def source_key(self, target: str) -> str:
        """The source key a target is read from (first one, for split / scaled tensors)."""
        return getattr(self.targets[target], "source", target)

    def materialize(self, source: TensorSource | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every recipe (tests and small models; loaders stream instead)."""
        get = source.__getitem__ if isinstance(source, Mapping) else source
        return {k: r(get) for k, r in self.targets.items()}


def _tag(recipe: Recipe, source: str) -> Recipe:
    recipe.source = source  # type: ignore[attr-defined]  # lets loaders read shapes from headers
    return recipe


def _take(key: str) -> Recipe:
    return _tag(lambda get: get(key), key)


def _find_prefix(keys: Collection[str], anchors: tuple[str, ...]) -> tuple[str, str] | None:
    """``(prefix, anchor)`` such that ``prefix + anchor`` is a key; shortest prefix wins."""
    best: tuple[str, str] | None = None
    for anchor in anchors:
        for k in keys:
            if k.endswith(anchor):
                prefix = k[: len(k) - len(anchor)]
                if prefix and not prefix.endswith("."):
                    continue
                if best is None or len(prefix) < len(best[0]):
                    best = (prefix, anchor)
    return best


def _describe(keys: Collection[str], n: int = 4) -> str:
    sample = sorted(keys)[:n]
    return ", ".join(sample) + (" …" if len(keys) > n else "")


# ----------------------------------------------------------------------------------------------- VAE

_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
             "residual.6": "conv2", "shortcut": "conv_shortcut"}
_WAN_VAE_ANCHOR = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_VAE_ANCHOR = "decoder.mid_block.resnets.0.norm1.gamma"


def _residual_rename(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def wan_vae_key_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """One original-Wan VAE key → its ``AutoencoderKLWan`` name.

    The original decoder stores its levels flat (``upsamples.N``): each level has ``num_res_blocks + 1``
    residual blocks then one upsampler (none after the last level); diffusers nests them as
    ``up_blocks.L.resnets.R`` / ``up_blocks.L.upsamplers.0``. The encoder is flat in both layouts.
    Raises ``KeyError`` for keys that are not part of a Wan2.1 VAE.
    """
    simple = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    head, _, rest = key.partition(".")
    if head in simple:
        return simple[head] + "." + rest
    if head not in ("encoder", "decoder"):
        raise KeyError(key)
    part, _, rest = rest.partition(".")
    if part == "conv1":
        return f"{head}.conv_in.{rest}"
    if part == "head":
        idx, _, tail = rest.partition(".")
        return {"0": f"{head}.norm_out.{tail}", "2": f"{head}.conv_out.{tail}"}[idx]
    if part == "middle":
        idx, _, tail = rest.partition(".")
        if idx == "1":
            return f"{head}.mid_block.attentions.0.{tail}"
        return f"{head}.mid_block.resnets.{int(idx) // 2}.{_residual_rename(tail)}"
    if part == "downsamples" and head == "encoder":
        idx, _, tail = rest.partition(".")
        return f"encoder.down_blocks.{idx}.{_residual_rename(tail)}"
    if part == "upsamples" and head == "decoder":
        idx, _, tail = rest.partition(".")
        per_level = num_res_blocks + 2
        level, slot = divmod(int(idx), per_level)
        if slot <= num_res_blocks:
            return f"decoder.up_blocks.{level}.resnets.{slot}.{_residual_rename(tail)}"
        return f"decoder.up_blocks.{level}.upsamplers.0.{tail}"
    raise KeyError(key)


def plan_wan_vae(keys: Collection[str], num_res_blocks: int = 2) -> ConversionPlan:
    """Plan for a Wan2.1 VAE file in either layout (optionally under a prefix such as ``vae.``)."""
    found = _find_prefix(keys, (_DIFFUSERS_VAE_ANCHOR, _WAN_VAE_ANCHOR))
    if found is None:
        raise CheckpointError(
            "not a Wan VAE: none of its keys looks like the Wan2.1 VAE decoder "
            f"({_describe(keys)}). Use wan_2.1_vae.safetensors (ComfyUI models/vae) or the vae/ folder "
            "of a diffusers Wan2.1 checkpoint"
        )
    prefix, anchor = found
    own = [k for k in keys if k.startswith(prefix)]
    ignored = tuple(k for k in keys if not k.startswith(prefix))
    if anchor == _DIFFUSERS_VAE_ANCHOR:
        return ConversionPlan("diffusers", {k[len(prefix):]: _take(k) for k in own}, ignored)
    targets: dict[str, Recipe] = {}
    for k in own:
        try:
            targets[wan_vae_key_to_diffusers(k[len(prefix):], num_res_blocks)] = _take(k)
        except (KeyError, ValueError):
            raise CheckpointError(f"unexpected key {k!r} in a Wan VAE file; is this the Wan2.1 VAE?") from None
    return ConversionPlan("wan", targets, ignored)


# ---------------------------------------------------------------------------------------------- CLIP

_CLIP_HF_ANCHOR = "vision_model.encoder.layers.0.layer_norm1.weight"
_CLIP_HF_BARE_ANCHOR = "embeddings.patch_embedding.weight"
_CLIP_OPENCLIP_ANCHOR = "transformer.resblocks.0.attn.in_proj_weight"
_OPENCLIP_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPENCLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _chunk(key: str, i: int, n: int = 3) -> Recipe:
    return _tag(lambda get: get(key).chunk(n, dim=0)[i], key)


def plan_clip_vision(keys: Collection[str]) -> ConversionPlan:
    """Plan for a CLIP vision tower (transformers or open_clip layout) → ``vision_model.*`` keys.

    Projection heads (``visual_projection``, open_clip ``proj``) and text towers are ignored: Wan uses
    the penultimate hidden states, not the projected embedding.
    """
    found = _find_prefix(keys, (_CLIP_HF_ANCHOR, _CLIP_OPENCLIP_ANCHOR))
    if found is not None and found[1] == _CLIP_OPENCLIP_ANCHOR:
        # a full open_clip model has a text tower at the root; the vision tower sits under "visual."
        visual = _find_prefix([k for k in keys if "visual." in k], (_CLIP_OPENCLIP_ANCHOR,))
        found = visual or found
    if found is None:
        bare = _find_prefix(keys, (_CLIP_HF_BARE_ANCHOR,))
        if bare is not None and any(k.startswith(bare[0] + "encoder.layers.") for k in keys):
            prefix = bare[0]
            targets = {"vision_model." + k[len(prefix):]: _take(k) for k in keys
                       if k.startswith(prefix) and not k[len(prefix):].startswith("visual_projection")}
            return ConversionPlan("transformers", targets,
                                  tuple(k for k in keys if "vision_model." + k[len(prefix):] not in targets))
        raise CheckpointError(
            f"not a CLIP vision model: no CLIP vision keys found ({_describe(keys)}). Use clip_vision_h.safetensors "
            "(ComfyUI models/clip_vision) or the image_encoder/ folder of a diffusers Wan2.1-I2V checkpoint"
        )
    prefix, anchor = found
    targets: dict[str, Recipe] = {}
    if anchor == _CLIP_HF_ANCHOR:
        base = prefix + "vision_model."
        for k in keys:
            if k.startswith(base):
                targets["vision_model." + k[len(base):]] = _take(k)
        return ConversionPlan("transformers", targets, tuple(k for k in keys if not k.startswith(base)))
    block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.(.+)$")
    for k in keys:
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        if rest in _OPENCLIP_TOP:
            targets[_OPENCLIP_TOP[rest]] = _take(k)
            continue
        m = block.match(k)
        if m is None:
            continue
        i, tail = m.group(1), m.group(2)
        out = f"vision_model.encoder.layers.{i}."
        if tail in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = tail.rsplit("_", 1)[1]
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                targets[f"{out}self_attn.{name}.{kind}"] = _chunk(k, j)
            continue
        for old, new in _OPENCLIP_BLOCK.items():
            if tail.startswith(old + "."):
                targets[out + new + tail[len(old):]] = _take(k)
                break
    used = set()
    for k in keys:
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest is not None and (rest in _OPENCLIP_TOP or block.match(k)):
            used.add(k)
    return ConversionPlan("open_clip", targets, tuple(k for k in keys if k not in used))


# ---------------------------------------------------------------------------------------------- UMT5

_T5_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"
_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _dequant(weight_key: str, scale_key: str) -> Recipe:
    def recipe(get: TensorSource) -> torch.Tensor:
        w, s = get(weight_key), get(scale_key)
        if s.numel() != 1:
            raise CheckpointError(
                f"{scale_key} holds a block-wise scale ({tuple(s.shape)}); only per-tensor scaled fp8 files "
                "are supported — use umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors"
            )
        return w.to(torch.float32) * s.to(torch.float32)
    return _tag(recipe, weight_key)


def plan_umt5(keys: Collection[str]) -> ConversionPlan:
    """Plan for a UMT5 encoder file → transformers ``UMT5EncoderModel`` keys.

    Handles prefixes, ComfyUI's scaled fp8 (``<layer>.scale_weight`` or ``<layer>.weight_scale``
    multiplied into ``<layer>.weight``; ``scaled_fp8`` / ``scale_input`` markers dropped), the tied
    ``shared`` / ``encoder.embed_tokens`` embedding (either one suffices) and an embedded
    ``spiece_model`` tokenizer (reported in ``extras``). Decoder weights, if any, are ignored.
    """
    found = _find_prefix(keys, (_T5_ANCHOR,))
    if found is None:
        raise CheckpointError(
            f"not a UMT5/T5 encoder: no 'encoder.block.0.layer.0.SelfAttention.q.weight' key ({_describe(keys)}). "
            "Use umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors (ComfyUI models/text_encoders) "
            "or the text_encoder/ folder of a diffusers Wan2.1 checkpoint"
        )
    prefix = found[0]
    keyset = set(keys)
    targets: dict[str, Recipe] = {}
    ignored: list[str] = []
    extras: dict[str, str] = {}
    for k in keys:
        if not k.startswith(prefix):
            (extras.__setitem__("spiece_model", k) if k.endswith("spiece_model") else ignored.append(k))
            continue
        rest = k[len(prefix):]
        if rest == "spiece_model":
            extras["spiece_model"] = k
        elif rest == "scaled_fp8" or rest.endswith((".scale_input", ".scale_weight", ".weight_scale",
                                                    ".input_scale", ".comfy_quant")):
            ignored.append(k)
        elif rest.startswith("encoder.") or rest == "shared.weight":
            stem = k[: -len(".weight")] if k.endswith(".weight") else None
            scale = next((stem + s for s in (".scale_weight", ".weight_scale") if stem and stem + s in keyset), None)
            targets[rest] = _dequant(k, scale) if scale else _take(k)
        else:
            ignored.append(k)  # decoder.*, lm_head.* of a full T5
    if "shared.weight" not in targets and "encoder.embed_tokens.weight" in targets:
        targets["shared.weight"] = targets["encoder.embed_tokens.weight"]
    if "shared.weight" in targets:
        targets.setdefault("encoder.embed_tokens.weight", targets["shared.weight"])
    layout = "comfy_scaled_fp8" if any(k.endswith("scaled_fp8") for k in keys) else "transformers"
    return ConversionPlan(layout, targets, tuple(ignored), extras)


# ------------------------------------------------------------------------------ matching to a model

def match_model_keys(plan: ConversionPlan, model_keys: Collection[str], what: str) -> dict[str, Recipe]:
    """Map the plan's canonical keys onto ``model_keys`` (prefix differences between library versions).

    transformers 5 dropped the ``vision_model.`` level of ``CLIPVisionModel``; older versions keep it.
    Raises :class:`CheckpointError` naming the missing groups when the file cannot fill the model.
    """
    model_keys = list(model_keys)
    recipes: dict[str, Recipe] = {}
    for mk in model_keys:
        for cand in (mk, "vision_model." + mk, mk.removeprefix("vision_model.")):
            if cand in plan.targets:
                recipes[mk] = plan.targets[cand]
                break
    missing = [k for k in model_keys if k not in recipes]
    if missing:
        groups = sorted({".".join(p for p in k.split(".")[:3] if not p.isdigit()) for k in missing})
        raise CheckpointError(
            f"{what} file ({plan.layout} layout) is missing {len(missing)} weight(s): groups {groups[:6]} "
            f"(e.g. {missing[0]!r}). The file is incomplete or is a different model size/variant"
        )
    return recipes


__all__ = [
    "ConversionPlan",
    "TensorSource",
    "load_module_weights",
    "match_model_keys",
    "open_tensor_source",
    "plan_clip_vision",
    "plan_umt5",
    "plan_wan_vae",
    "read_extra_bytes",
    "safetensors_files",
    "wan_vae_key_to_diffusers",
]


# ------------------------------------------------------------------------------------ streaming load

def safetensors_files(path: str | os.PathLike[str], what: str) -> list[Path]:
    """The weight files of ``path``: one ``.safetensors`` file, or a folder with one file or a sharded set
    (``*.safetensors.index.json``). Pickle files are refused with advice; every file's framing is
    validated before any tensor is read."""
    from .loading import PICKLE_SUFFIXES, read_safetensors_header

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what}: {path} does not exist")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if index:
            try:
                weight_map = json.loads(index[0].read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{what}: {index[0]} is not a valid safetensors index; download it again") from None
            files = [path / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.exists()]
            if absent:
                raise CheckpointError(f"{what}: shard(s) {absent} listed in {index[0].name} are missing from {path}")
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
                if pickles:
                    read_safetensors_header(pickles[0])  # raises the pickle advice
                raise CheckpointError(f"{what}: no .safetensors file in {path}")
            if len(files) > 1:
                raise CheckpointError(
                    f"{what}: {path} holds several .safetensors files ({[f.name for f in files]}) and no index; "
                    "point to the file to load"
                )
    else:
        files = [path]
    for f in files:
        read_safetensors_header(f)
    return files


@contextmanager
def open_tensor_source(files: list[Path]) -> Iterator[tuple[list[str], TensorSource]]:
    """``(keys, source)`` over one or more safetensors files, reading tensors lazily (memory-mapped).

    ``source.shape(key)`` gives a tensor's shape from the header without reading it.
    """
    with ExitStack() as stack:
        owner: dict[str, object] = {}
        for f in files:
            handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            for k in handle.keys():
                owner[k] = handle
        def get(k: str) -> torch.Tensor:
            return owner[k].get_tensor(k)  # type: ignore[attr-defined]

        get.shape = lambda k: tuple(owner[k].get_slice(k).get_shape())  # type: ignore[attr-defined]
        yield list(owner), get


def read_extra_bytes(files: list[Path], key: str) -> bytes:
    """A uint8 payload stored as a tensor (e.g. ComfyUI's ``spiece_model``) as raw bytes."""
    with open_tensor_source(files) as (_, get):
        return get(key).to(torch.uint8).numpy().tobytes()


def load_module_weights(
    model: torch.nn.Module,
    recipes: Mapping[str, Recipe],
    source: TensorSource,
    device: torch.device | str,
    dtype: torch.dtype | None,
) -> torch.nn.Module:
    """Fill a model built on ``meta`` with tensors streamed from ``source``, each cast once to its device and
    dtype (floating tensors only), then re-create non-persistent ``position_ids`` buffers."""
    state: dict[str, torch.Tensor] = {}
    for key, recipe in recipes.items():
        t = recipe(source)
        if t.is_floating_point() and dtype is not None:
            t = t.to(device=device, dtype=dtype)
        else:
            t = t.to(device=device)
        state[key] = t
    model.load_state_dict(state, strict=True, assign=True)
    for mod_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name != "position_ids":
                    raise CheckpointError(f"internal: buffer {mod_name}.{name} was not initialised while loading")
                n = buf.shape[-1]
                module.register_buffer(name, torch.arange(n, device=device).expand(buf.shape), persistent=False)
    return model.eval()
