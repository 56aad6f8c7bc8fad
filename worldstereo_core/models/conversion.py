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

A conversion is a :class:`~worldstereo_core.checkpoint.ConversionPlan`: for every target key, a recipe
that reads the source tensor(s) lazily. :mod:`worldstereo_core.checkpoint` matches it against the model
and streams one tensor at a time through it (no second copy of the weights); tests run the same plans
over in-memory dicts.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torch

from ..checkpoint import (
    ConversionPlan,
    Recipe,
    SafetensorsSource,
    TensorSource,
    match_keys,
    stream_weights,
)
from ..checkpoint import (
    tag_recipe as _tag,
)
from ..checkpoint import (
    take as _take,
)
from ..errors import CheckpointMismatchError


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

_RESIDUAL = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2": "conv1",
    "residual.3.gamma": "norm2.gamma",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
_WAN_VAE_ANCHOR = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_VAE_ANCHOR = "decoder.mid_block.resnets.0.norm1.gamma"


def _residual_rename(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
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
        raise CheckpointMismatchError(
            "not a Wan VAE: none of its keys looks like the Wan2.1 VAE decoder "
            f"({_describe(keys)}). Use wan_2.1_vae.safetensors (ComfyUI models/vae) or the vae/ folder "
            "of a diffusers Wan2.1 checkpoint"
        )
    prefix, anchor = found
    own = [k for k in keys if k.startswith(prefix)]
    ignored = tuple(k for k in keys if not k.startswith(prefix))
    if anchor == _DIFFUSERS_VAE_ANCHOR:
        return ConversionPlan("diffusers", {k[len(prefix) :]: _take(k) for k in own}, ignored)
    targets: dict[str, Recipe] = {}
    for k in own:
        try:
            targets[wan_vae_key_to_diffusers(k[len(prefix) :], num_res_blocks)] = _take(k)
        except (KeyError, ValueError):
            raise CheckpointMismatchError(f"unexpected key {k!r} in a Wan VAE file; is this the Wan2.1 VAE?") from None
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
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _chunk(key: str, i: int, n: int = 3) -> Recipe:
    recipe = _tag(lambda get: get(key).chunk(n, dim=0)[i], key)
    recipe.reshapes = True  # type: ignore[attr-defined]  # the source's shape is not the target's
    return recipe


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
            targets = {
                "vision_model." + k[len(prefix) :]: _take(k)
                for k in keys
                if k.startswith(prefix) and not k[len(prefix) :].startswith("visual_projection")
            }
            return ConversionPlan(
                "transformers", targets, tuple(k for k in keys if "vision_model." + k[len(prefix) :] not in targets)
            )
        raise CheckpointMismatchError(
            f"not a CLIP vision model: no CLIP vision keys found ({_describe(keys)}). Use clip_vision_h.safetensors "
            "(ComfyUI models/clip_vision) or the image_encoder/ folder of a diffusers Wan2.1-I2V checkpoint"
        )
    prefix, anchor = found
    targets: dict[str, Recipe] = {}
    if anchor == _CLIP_HF_ANCHOR:
        base = prefix + "vision_model."
        for k in keys:
            if k.startswith(base):
                targets["vision_model." + k[len(base) :]] = _take(k)
        return ConversionPlan("transformers", targets, tuple(k for k in keys if not k.startswith(base)))
    block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.(.+)$")
    for k in keys:
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix) :]
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
                targets[out + new + tail[len(old) :]] = _take(k)
                break
    used = set()
    for k in keys:
        rest = k[len(prefix) :] if k.startswith(prefix) else None
        if rest is not None and (rest in _OPENCLIP_TOP or block.match(k)):
            used.add(k)
    return ConversionPlan("open_clip", targets, tuple(k for k in keys if k not in used))


# ---------------------------------------------------------------------------------------------- UMT5

_T5_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"
_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _dequant(weight_key: str, scale_key: str) -> Recipe:
    def recipe(get: TensorSource) -> torch.Tensor:
        w, s = get(weight_key), get(scale_key)
        if s.numel() == 1:
            return w.to(torch.float32) * s.to(torch.float32)
        if w.ndim == 2 and s.numel() == w.shape[0]:  # one scale per output channel (our fp8 files)
            return w.to(torch.float32) * s.to(torch.float32).reshape(-1, 1)
        raise CheckpointMismatchError(
            f"{scale_key} holds a block-wise scale ({tuple(s.shape)}); only per-tensor or per-channel scaled fp8 "
            "files (ComfyUI's *_fp8_scaled / *_fp8_e4m3fn_scaled) are supported — use the bf16/fp16 file instead"
        )

    return _tag(recipe, weight_key)


def scaled_identity_plan(keys: Collection[str], prefix: str = "") -> ConversionPlan:
    """Keys used as they are (``prefix`` stripped), except scaled fp8: a ``<layer>.weight`` with a
    ``<layer>.scale_weight`` / ``.weight_scale`` beside it is dequantised, and the bookkeeping keys
    (``scaled_fp8`` marker, input scales, ``comfy_quant``) are left out. Our own files (an fp8 model
    saved by :func:`~.loading.save_worldstereo`) and the released ones load through this."""
    keyset = set(keys)
    targets: dict[str, Recipe] = {}
    ignored: list[str] = []
    for k in keys:
        if not k.startswith(prefix):
            ignored.append(k)
            continue
        rest = k[len(prefix) :]
        if rest == "scaled_fp8" or rest.endswith((".scale_weight", ".weight_scale", *_FP8_MARKERS)):
            ignored.append(k)
            continue
        stem = k[: -len(".weight")] if k.endswith(".weight") else None
        scale = next((stem + s for s in (".scale_weight", ".weight_scale") if stem and stem + s in keyset), None)
        targets[rest] = _dequant(k, scale) if scale else _take(k)
    scaled = any(k.endswith(("scaled_fp8", ".scale_weight", ".weight_scale")) for k in keys)
    return ConversionPlan("native_scaled_fp8" if scaled else "native", targets, tuple(ignored))


def plan_umt5(keys: Collection[str]) -> ConversionPlan:
    """Plan for a UMT5 encoder file → transformers ``UMT5EncoderModel`` keys.

    Handles prefixes, ComfyUI's scaled fp8 (``<layer>.scale_weight`` or ``<layer>.weight_scale``
    multiplied into ``<layer>.weight``; ``scaled_fp8`` / ``scale_input`` markers dropped), the tied
    ``shared`` / ``encoder.embed_tokens`` embedding (either one suffices) and an embedded
    ``spiece_model`` tokenizer (reported in ``extras``). Decoder weights, if any, are ignored.
    """
    found = _find_prefix(keys, (_T5_ANCHOR,))
    if found is None:
        raise CheckpointMismatchError(
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
        rest = k[len(prefix) :]
        if rest == "spiece_model":
            extras["spiece_model"] = k
        elif rest == "scaled_fp8" or rest.endswith(
            (".scale_input", ".scale_weight", ".weight_scale", ".input_scale", ".comfy_quant")
        ):
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


def load_converted(
    model: torch.nn.Module,
    plan: ConversionPlan,
    source: SafetensorsSource,
    what: str,
    device: torch.device | str,
    dtype: torch.dtype | None,
) -> torch.nn.Module:
    """Match a conversion plan to a ``meta``-built model and stream the weights in (checkpoint steps 4–5).

    Only the ``vision_model.`` level may differ between plan and model (transformers 5 dropped it from
    ``CLIPVisionModel``; older versions keep it). Targets the model has no use for are left out, as
    the plan's ``ignored`` keys are; missing ones raise a :class:`CheckpointMismatchError` naming their groups.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    targets: dict[str, Recipe] = {}
    for mk in expected:
        for cand in (mk, "vision_model." + mk, mk.removeprefix("vision_model.")):
            if cand in plan.targets:
                targets[mk] = plan.targets[cand]
                break
    aligned = ConversionPlan(plan.layout, targets, plan.ignored, plan.extras)

    def diagnose(missing: set[str], unexpected: set[str]) -> str:
        return (
            f"the {what} file ({plan.layout} layout) is incomplete or is a different model size/variant — "
            "use the complete file, or pass the matching config"
        )

    recipes = match_keys(aligned, expected, source.shape, f"{what} file", diagnose, depth=4)
    return stream_weights(model, recipes, source, device, dtype)


__all__ = [
    "ConversionPlan",
    "TensorSource",
    "load_converted",
    "plan_clip_vision",
    "plan_umt5",
    "plan_wan_transformer",
    "plan_wan_vae",
    "wan_transformer_key_to_diffusers",
    "wan_vae_key_to_diffusers",
]


# --------------------------------------------------------------------------------- Wan transformer

# Original Wan2.1 key names (what ComfyUI's wan2.1_i2v_480p_14B_*.safetensors files use) → diffusers'
# WanTransformer3DModel names. Facts from diffusers v0.36.0 scripts/convert_wan_to_diffusers.py
# (TRANSFORMER_KEYS_RENAME_DICT, lines 31-70): the original calls the cross-attention norm ``norm3``
# (diffusers ``norm2``; the original norm1/norm2 carry no weights), the image-key projections ``k_img``/
# ``v_img``/``norm_k_img``, and the output head ``head.head`` / ``head.modulation``.
_WAN_TOP = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "head.head": "proj_out",
    "patch_embedding": "patch_embedding",
}
_WAN_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_WAN_DIFFUSERS_ANCHOR = "blocks.0.attn1.to_q.weight"
_WAN_ORIGINAL_ANCHOR = "blocks.0.self_attn.q.weight"
_FP8_MARKERS = (".scale_input", ".input_scale", ".comfy_quant")


def wan_transformer_key_to_diffusers(key: str) -> str:
    """One original-Wan (ComfyUI) transformer key → its ``WanTransformer3DModel`` name; ``KeyError`` if unknown."""
    if key == "head.modulation":
        return "scale_shift_table"
    m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", key) or re.match(r"blocks\.(\d+)\.(modulation)()$", key)
    if m:
        i, stem, kind = m.groups()
        if stem == "modulation":
            return f"blocks.{i}.scale_shift_table"
        if stem in _WAN_BLOCK:
            return f"blocks.{i}.{_WAN_BLOCK[stem]}.{kind}"
        raise KeyError(key)
    stem, _, kind = key.rpartition(".")
    if stem in _WAN_TOP:
        return f"{_WAN_TOP[stem]}.{kind}"
    raise KeyError(key)


def plan_wan_transformer(keys: Collection[str]) -> ConversionPlan:
    """Plan for a Wan2.1 transformer file → ``WanTransformer3DModel`` keys.

    Accepts the diffusers layout (``transformer/diffusion_pytorch_model*.safetensors``) and the original
    layout of ComfyUI's ``models/diffusion_models/wan2.1_i2v_480p_14B_{bf16,fp16,fp8_e4m3fn,fp8_scaled}``
    files (optionally under ``model.diffusion_model.``). ComfyUI's *scaled* fp8 stores
    ``<layer>.weight`` in float8 with a per-tensor ``<layer>.scale_weight``: the recipe dequantises
    (``weight · scale`` in float32; the loader then casts to the target dtype). Input-scale markers
    are ignored.
    """
    found = _find_prefix(keys, (_WAN_DIFFUSERS_ANCHOR, _WAN_ORIGINAL_ANCHOR))
    if found is None:
        raise CheckpointMismatchError(
            f"not a Wan2.1 transformer: no 'blocks.0.attn1.to_q.weight' / 'blocks.0.self_attn.q.weight' key "
            f"({_describe(keys)}). Use the transformer/ folder of Wan2.1-I2V-14B-480P-Diffusers or ComfyUI's "
            "models/diffusion_models/wan2.1_i2v_480p_14B_*.safetensors"
        )
    prefix, anchor = found
    keyset = set(keys)
    targets: dict[str, Recipe] = {}
    ignored: list[str] = []
    for k in keys:
        rest = k[len(prefix) :] if k.startswith(prefix) else None
        if rest is None or rest == "scaled_fp8" or rest.endswith((".scale_weight", ".weight_scale", *_FP8_MARKERS)):
            ignored.append(k)
            continue
        if anchor == _WAN_DIFFUSERS_ANCHOR:
            name = rest
        else:
            try:
                name = wan_transformer_key_to_diffusers(rest)
            except KeyError:
                ignored.append(k)  # parts of other Wan models (e.g. FLF2V's emb_pos) are not ours to load
                continue
        stem = k[: -len(".weight")] if k.endswith(".weight") else None
        scale = next((stem + s for s in (".scale_weight", ".weight_scale") if stem and stem + s in keyset), None)
        targets[name] = _dequant(k, scale) if scale else _take(k)
    scaled = any(k.endswith("scaled_fp8") or k.endswith((".scale_weight", ".weight_scale")) for k in keys)
    layout = ("diffusers" if anchor == _WAN_DIFFUSERS_ANCHOR else "comfyui") + ("_scaled_fp8" if scaled else "")
    return ConversionPlan(layout, targets, tuple(ignored))
