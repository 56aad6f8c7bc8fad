"""Test-scale configs: every network of the library with the same code at widths a CPU runs in seconds.

The one owner of the "tiny" sizes (docs/ARCHITECTURE.md, "Test-scale sizes"). Who imports it:

* the training CLI's ``--size tiny`` (:mod:`worldstereo_core.training`), which trains from scratch on a
  synthetic set and so needs sizes from somewhere other than a checkpoint;
* the ``--tiny`` smoke runs of the ``bench/`` scripts;
* test support: ``tests/tiny_models.py`` writes tiny weight files from these configs, and tests build
  tiny networks directly.

Loaders, model construction and the nodes never import it (``tests/unit/test_module_layout.py``
checks): a checkpoint's sizes come from its own config (the release's ``config.json``, or the
metadata :mod:`worldstereo_core.checkpoint` defines), else from the released defaults. A tiny file
loads through exactly the path a released one does, because it carries its config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import InvalidOptionError
from .models.dinov2 import DINOV2_BASE_CONFIG
from .models.encoders import CLIP_VIT_H_CONFIG, UMT5_XXL_CONFIG
from .models.loading import WorldStereoConfig
from .models.transformer_worldstereo import (
    FULL_TRANSFORMER_CONFIG,
    VARIANTS,
    ControlNetConfig,
    WorldStereoTransformer,
)
from .models.transformer_worldstereo_paper import PAPER_VARIANTS, MemoryBranchConfig
from .models.uni3c import UNI3C_FULL_CONFIG
from .models.vae import WAN21_VAE_CONFIG
from .recon.moge import ConvStackConfig, MoGeConfig, MoGeEncoderConfig, moge_head_config
from .recon.worldmirror import WorldMirrorConfig

# ------------------------------------------------------------------------------ WorldStereo transformer

TINY_TRANSFORMER_CONFIG: Mapping[str, Any] = {
    **FULL_TRANSFORMER_CONFIG,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 3,
    "image_dim": 32,
    "added_kv_proj_dim": 32,
}
"""Wan2.1's transformer with a few hundred parameters per layer (width 32): a forward pass in milliseconds."""

TINY_CONTROLNET_CONFIG = ControlNetConfig(
    dim=16, ffn_dim=32, num_heads=2, num_layers=2, conv_out_dim=32, time_embed_dim=32, mid_channels=16
)
"""The GGM branch at width 16, writing into the tiny transformer's width 32."""

TINY_MEMORY_CONFIG = MemoryBranchConfig.like(TINY_CONTROLNET_CONFIG)
"""The paper-SSM memory branch at the tiny GGM branch's sizes (the initialisation rule copies its blocks)."""

TINY_LATENT_COND_MODE = "first_frame_only"
"""I2V condition mode of the tiny checkpoints and the tiny training size. The release's ``full_vae``
runs the causal VAE over 4·(F−1)+1 frames (~30 s per 81-frame clip on two CPU cores even with the tiny
VAE); ``first_frame_only`` (the other mode the release config accepts) encodes two, so CI stays fast."""


def tiny_worldstereo_config(variant: str, latent_cond_mode: str = "full_vae") -> WorldStereoConfig:
    """The config of a tiny ``variant`` (``camera``/``memory``/``dmd``/``paper``/``paper-dmd``)."""
    if variant not in (*VARIANTS, *PAPER_VARIANTS):
        raise InvalidOptionError(f"unknown WorldStereo variant {variant!r}; use one of {(*VARIANTS, *PAPER_VARIANTS)}")
    memory = TINY_MEMORY_CONFIG if variant in PAPER_VARIANTS else None
    return WorldStereoConfig(
        variant, dict(TINY_TRANSFORMER_CONFIG), TINY_CONTROLNET_CONFIG, latent_cond_mode=latent_cond_mode, memory=memory
    )


def build_tiny_transformer(variant: str) -> WorldStereoTransformer:
    """A fresh tiny ``variant`` network (eval mode, on the default device), ``ws_config`` set as a loaded one's."""
    return tiny_worldstereo_config(variant).build().eval()


TINY_UNI3C_CONFIG = dataclasses.replace(
    UNI3C_FULL_CONFIG, **{**TINY_CONTROLNET_CONFIG.branch_sizes(), "ffn_dim": 48}, mid_channels=16
)
"""The Uni3C branch at the tiny GGM branch's sizes (its FFN wider, as the released Uni3C's is), writing
into the tiny transformer's width (32)."""

# ------------------------------------------------------------------------------ Wan encoders and VAE


def tiny_umt5_config() -> dict[str, Any]:
    """A 2-layer UMT5 (vocab 128, width 32, 4 heads; the release's 32 position buckets, which ComfyUI's
    T5 fixes, so core CLIPLoader reads the tiny file too)."""
    return {
        **UMT5_XXL_CONFIG,
        "vocab_size": 128,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
    }


def tiny_clip_vision_config() -> dict[str, Any]:
    """A 3-layer CLIP vision tower (28×28 input, patch 14 → 5 tokens)."""
    return {
        **CLIP_VIT_H_CONFIG,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "image_size": 28,
        "projection_dim": 16,
    }


def tiny_vae_config() -> dict[str, Any]:
    """The Wan2.1 VAE structure (same levels and blocks, so the key conversions apply) at width 8."""
    return {**WAN21_VAE_CONFIG, "base_dim": 8}


def tiny_dinov2_config() -> dict[str, Any]:
    """A transformers DINOv2 config of the same code: 2 layers, width 32, 28-px position grid."""
    return {**DINOV2_BASE_CONFIG, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28}


# ------------------------------------------------------------------------------ reconstruction models


def _tiny_moge() -> MoGeConfig:
    embed, dims = 32, (16, 8, 8)
    neck = ConvStackConfig(
        dim_in=(embed + 2, 2, 2, 2),
        dim_res_blocks=(embed, *dims),
        dim_out=(None,) * 4,
        resamplers=("conv_transpose", "conv_transpose", "bilinear"),
        num_res_blocks=(0, 1, 1, 0),
        res_block_in_norm="none",
        res_block_hidden_norm="none",
    )
    return MoGeConfig(
        encoder=MoGeEncoderConfig("custom", (0, 1), embed, embed, 2, 2, img_size=56),
        neck=neck,
        points_head=moge_head_config(embed, 3, dims=dims),
        mask_head=moge_head_config(embed, 1, dims=dims),
        normal_head=moge_head_config(embed, 3, dims=dims),
        scale_head=(embed, embed, 1),
        remap_output="exp",
        num_tokens_range=(16, 48),
    )


TINY_MOGE_CONFIG: MoGeConfig = _tiny_moge()
"""MoGe-2 at toy sizes: ViT 32-wide × 2 blocks, 4×4 position grid, 4-level decoders."""


def tiny_worldmirror_config(**overrides: Any) -> WorldMirrorConfig:
    """WorldMirror at toy sizes (width 32, 4 block pairs, 1 DINO block); ``overrides`` replace fields."""
    sizes: dict[str, Any] = dict(
        img_size=28,
        embed_dim=32,
        depth=4,
        num_heads=2,
        dino_depth=1,
        dino_heads=2,
        intermediate_layers=(0, 1, 2, 3),
        cam_trunk_depth=1,
        cam_heads=2,
        dpt_features=16,
        dpt_out_channels=(8, 16, 32, 32),
        gs_dim=16,
    )
    return WorldMirrorConfig(**{**sizes, **overrides})


__all__ = [
    "TINY_CONTROLNET_CONFIG",
    "TINY_LATENT_COND_MODE",
    "TINY_MEMORY_CONFIG",
    "TINY_MOGE_CONFIG",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_UNI3C_CONFIG",
    "build_tiny_transformer",
    "tiny_clip_vision_config",
    "tiny_dinov2_config",
    "tiny_umt5_config",
    "tiny_vae_config",
    "tiny_worldmirror_config",
    "tiny_worldstereo_config",
]
