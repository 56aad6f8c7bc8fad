"""The open-source Uni3C camera ControlNet (PCDController) as an alternative control branch.

Uni3C (ewrfcas/Uni3C, Apache-2.0) is the predecessor of WorldStereo's GGM branch and has the same
architecture: a 20-block, 1024-wide ControlNet over ``patch_embed(concat[hidden[:, :20], render_latent])``
plus a mask/Plücker embedding, AdaLN-modulated by the main 5120-wide time embedding, block ``i``
added after main block ``i``. What differs:

* **Key layout.** The released safetensors (the ComfyUI-distributed ``Wan21_Uni3C_controlnet_*``
  files) keep every key at the top level: ``controlnet_patch_embedding.*``,
  ``controlnet_mask_embedding.*``, ``proj_in.*``, ``controlnet_blocks.N.*``, ``proj_out.N.*``
  (490 keys, 1.166 B parameters). The original ``controlnet.pth`` nests the last three under
  ``controlnet.``; both are accepted (see :func:`uni3c_model_key`).
* **Sizes.** FFN 8192 (GGM: 4096); the mask embedding takes render mask + Plücker (7 channels)
  through 256 mid channels.
* **Video mode.** Uni3C works on 81-frame videos (21 latent frames after Wan's 4x temporal VAE).
  Its mask/Plücker conv has a temporal kernel/stride of 4, and 3 zero frames are padded *in front*
  so the first pixel frame lands alone in latent frame 0, exactly like the causal VAE: latent frame
  0 ← frame 0, latent frame ``k`` ← frames ``4k-3 .. 4k``. So render mask and Plücker inputs have
  ``(F - 1) * 4 + 1`` frames for ``F`` latent frames (81 for 21).

The module reuses :class:`~.transformer_worldstereo.WorldStereoControlNet` — its parameter names
are exactly Uni3C's top-level names — and :func:`attach_uni3c` puts it in place of the GGM branch
of a :class:`~.transformer_worldstereo.WorldStereoTransformer` (or around a stock diffusers Wan I2V
transformer), sharing the base weights. The transformer's forward then runs it unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformer3DModel

from ..errors import CheckpointMismatchError, InvalidInputError
from .transformer_worldstereo import (
    FULL_CONTROLNET_CONFIG,
    FULL_TRANSFORMER_CONFIG,
    ControlNetConfig,
    WorldStereoControlNet,
    WorldStereoTransformer,
)

UNI3C_MASK_DOWNSAMPLE = 4
"""Temporal stride of Uni3C's mask/Plücker embedding (= Wan VAE's temporal compression)."""

UNI3C_HEAD_DIM = 64
"""Head width of the released branch (1024 / 16 heads); used when a file does not record ``num_heads``."""

UNI3C_CONFIG_METADATA_KEY = "uni3c_config"
"""safetensors metadata key under which :func:`~.loading.save_uni3c` records the branch config."""

UNI3C_FULL_CONFIG = dataclasses.replace(
    FULL_CONTROLNET_CONFIG, ffn_dim=8192, mask_downsample=UNI3C_MASK_DOWNSAMPLE, main_camera_embedding=False, nframe=81
)
"""The released Uni3C branch (ewrfcas/Uni3C ``config.json`` ``controlnet_cfg``, camera embedding on): the
GGM branch's sizes and embedding widths (dim 1024, 16 heads, 20 layers, 5120 out, add_channels 7,
mid_channels 256) with an FFN of 8192, the mask/Plücker embedding folding 4 frames into one latent frame,
no ``camera_embedding`` on the main model, and 81-frame videos."""

UNI3C_IN_CHANNELS = 36
"""``concat[hidden[:, :20], render_latent (16)]`` — the I2V hidden input's width."""

# The original controlnet.pth nests the ControlNet proper under ``controlnet.``.
_NESTED = ("controlnet.proj_in.", "controlnet.controlnet_blocks.", "controlnet.proj_out.")
# ComfyUI renames the attention projections at load time; accept files saved that way too.
_ATTN_RENAMES = {
    ".self_attn.q.": ".self_attn.to_q.",
    ".self_attn.k.": ".self_attn.to_k.",
    ".self_attn.v.": ".self_attn.to_v.",
    ".self_attn.o.": ".self_attn.to_out.0.",
}
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


class Uni3CControlNet(WorldStereoControlNet):
    """The Uni3C branch with Uni3C's exact top-level key layout (``state_dict()`` loads a released file strict).

    Build with :data:`UNI3C_FULL_CONFIG` (under ``torch.device("meta")`` for free); load a file with :func:`worldstereo_core.models.loading.load_uni3c`.
    """

    def __init__(
        self,
        cfg: ControlNetConfig = UNI3C_FULL_CONFIG,
        in_channels: int = UNI3C_IN_CHANNELS,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        rope_max_seq_len: int = 1024,
    ) -> None:
        super().__init__(cfg, in_channels, tuple(patch_size), rope_max_seq_len)
        self.in_channels = in_channels
        self.patch_size = tuple(patch_size)
        self.rope_max_seq_len = rope_max_seq_len

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the non-persistent RoPE tables on ``device`` (needed after a ``meta`` build)."""
        device = torch.device(device) if device is not None else self.proj_out[0].weight.device
        with torch.device(device):
            self.rope = WanRotaryPosEmbed(self.cfg.dim // self.cfg.num_heads, self.patch_size, self.rope_max_seq_len)

    def forward(self, control_latent: torch.Tensor, add_inputs: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
        """All control states at once (standalone use; the transformer interleaves them block by block).

        ``control_latent`` ``[B, 36, F, h, w]`` = concat[hidden[:, :20], render_latent];
        ``add_inputs`` ``[B, add_channels, (F-1)*4+1, 8h, 8w]`` = concat[render_mask, plucker];
        ``temb`` ``[B, time_embed_dim]`` (the main model's time embedding) → ``num_layers`` tensors
        ``[B, F*(h/2)*(w/2), conv_out_dim]`` to add after main blocks ``0..num_layers-1``.
        """
        tokens = self.embed(control_latent, add_inputs)
        rope = self.rope(control_latent)
        states = []
        for block, proj in zip(self.controlnet_blocks, self.proj_out):
            tokens = block(tokens, temb, rope)
            states.append(proj(tokens))
        return states


def pad_mask_frames(add_inputs: torch.Tensor, downsample: int = UNI3C_MASK_DOWNSAMPLE) -> torch.Tensor:
    """Front-pad ``[B, C, T, H, W]`` with ``downsample - 1`` zero frames, as Uni3C does before its conv.

    ``T = (F-1)*downsample + 1`` pixel frames become ``F*downsample``, so the stride-``downsample``
    conv yields ``F`` latent frames: frame 0 alone in the first, then groups of ``downsample``.
    Returns a new tensor; the input is not modified.
    """
    return F.pad(add_inputs, (0, 0, 0, 0, downsample - 1, 0))


def uni3c_pixel_frames(latent_frames: int, downsample: int = UNI3C_MASK_DOWNSAMPLE) -> int:
    """Number of mask/Plücker frames for ``latent_frames`` latent frames (21 → 81)."""
    return (latent_frames - 1) * downsample + 1


def uni3c_model_key(file_key: str) -> str:
    """Map a key of any known Uni3C file layout to :class:`Uni3CControlNet`'s key.

    Handles the original ``controlnet.pth`` nesting (``controlnet.proj_in.*`` …), ComfyUI's
    attention names (``self_attn.q`` …) and checkpoint prefixes (``model.diffusion_model.`` …).
    """
    key = file_key
    for prefix in _PREFIXES:
        if key.startswith(prefix + "controlnet"):
            key = key[len(prefix) :]
            break
    if key.startswith(_NESTED):
        key = key[len("controlnet.") :]
    for old, new in _ATTN_RENAMES.items():
        if old in key:
            key = key.replace(old, new)
    return key


def uni3c_config_from_shapes(
    shapes: Mapping[str, list[int] | tuple[int, ...]], num_heads: int | None = None, where: str = "Uni3C file"
) -> tuple[ControlNetConfig, int, tuple[int, int, int]]:
    """Infer ``(config, in_channels, patch_size)`` from a Uni3C state dict's shapes (model key names).

    ``num_heads`` cannot be read from shapes; without it the released head width (64) is assumed.
    """

    def shape(key: str) -> list[int]:
        if key not in shapes:
            raise CheckpointMismatchError(
                f"{where} has no {key}; it is not a complete Uni3C ControlNet file (expected keys "
                "controlnet_patch_embedding.*, controlnet_mask_embedding.*, proj_in.*, controlnet_blocks.N.*, proj_out.N.*)"
            )
        return list(shapes[key])

    patch = shape("controlnet_patch_embedding.weight")
    mask = shape("controlnet_mask_embedding.mask_proj.0.weight")
    norm1 = shape("controlnet_blocks.0.norm1.linear.weight")
    ffn = shape("controlnet_blocks.0.ffn.0.weight")
    conv_out_dim, in_channels = patch[0], patch[1]
    dim = shape("proj_in.weight")[0] if "proj_in.weight" in shapes else conv_out_dim
    num_layers = sum(1 for k in shapes if k.startswith("proj_out.") and k.endswith(".weight"))
    out_dim = shape("proj_out.0.weight")[0]
    if out_dim != conv_out_dim:
        raise CheckpointMismatchError(
            f"{where}: proj_out maps to {out_dim} channels but the patch embedding to {conv_out_dim}; "
            "only branches whose output width equals the transformer width are supported"
        )
    if len(mask) != 5 or mask[2] != UNI3C_MASK_DOWNSAMPLE or len(patch) != 5:
        raise CheckpointMismatchError(
            f"{where}: controlnet_mask_embedding.mask_proj.0.weight is {mask}; Uni3C's has a temporal kernel of "
            f"{UNI3C_MASK_DOWNSAMPLE} ([mid, channels, 4, 8, 8]) — this is not a Uni3C camera ControlNet"
        )
    if num_heads is None:
        num_heads = max(dim // UNI3C_HEAD_DIM, 1)
    if dim % num_heads or mask[0] % 8:
        raise CheckpointMismatchError(
            f"{where}: width {dim} / {num_heads} heads or mid channels {mask[0]} (must be /8) do not fit"
        )
    cfg = dataclasses.replace(
        UNI3C_FULL_CONFIG,
        dim=dim,
        ffn_dim=ffn[0],
        num_heads=num_heads,
        num_layers=num_layers,
        conv_out_dim=conv_out_dim,
        time_embed_dim=norm1[1],
        add_channels=mask[1],
        mid_channels=mask[0],
    )
    return cfg, in_channels, tuple(patch[2:])


def _shallow_module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object sharing every parameter and submodule, whose registries can change freely."""
    new = copy.copy(module)
    for name, value in vars(module).items():
        # registries and hook tables: plain (Ordered)dicts; copied so changes to ``new`` stay local
        if type(value) in (dict, OrderedDict):
            new.__dict__[name] = type(value)(value)
    return new


def attach_uni3c(
    transformer: WorldStereoTransformer | WanTransformer3DModel, uni3c: Uni3CControlNet
) -> WorldStereoTransformer:
    """A transformer whose control branch is ``uni3c`` instead of the GGM ControlNet.

    ``transformer`` is a :class:`WorldStereoTransformer` (any variant; its GGM branch is replaced,
    the memory path kept) or a stock diffusers Wan2.1-I2V :class:`WanTransformer3DModel`. Neither
    input is modified and no weights are copied: the result shares the base's and ``uni3c``'s
    tensors. Its forward takes ``render_latent`` ``[B, 16, F, h, w]`` and ``render_mask`` /
    ``plucker`` with :func:`uni3c_pixel_frames` ``(F)`` frames (81 for 21 latent frames).
    """
    if not isinstance(uni3c, WorldStereoControlNet):
        raise InvalidInputError(f"attach_uni3c needs a Uni3CControlNet (from load_uni3c), got {type(uni3c).__name__}")
    cfg: ControlNetConfig = uni3c.cfg
    if isinstance(transformer, WorldStereoTransformer):
        base_cfg = transformer.config
        inner = transformer.inner_dim
    elif isinstance(transformer, WanTransformer3DModel):
        base_cfg = transformer.config
        inner = base_cfg.num_attention_heads * base_cfg.attention_head_dim
    else:
        raise InvalidInputError(
            f"attach_uni3c needs a WorldStereoTransformer or a diffusers WanTransformer3DModel, got {type(transformer).__name__}"
        )
    in_ch = uni3c.controlnet_patch_embedding.weight.shape[1]
    patch = tuple(uni3c.controlnet_patch_embedding.weight.shape[2:])
    problems = []
    if cfg.conv_out_dim != inner or cfg.time_embed_dim != inner:
        problems.append(f"its output/time width is {cfg.conv_out_dim}/{cfg.time_embed_dim}, the transformer's {inner}")
    if in_ch != base_cfg.in_channels:
        problems.append(
            f"it takes {in_ch} latent channels, the transformer {base_cfg.in_channels} (Uni3C needs the I2V model)"
        )
    if patch != tuple(base_cfg.patch_size):
        problems.append(f"its patch is {patch}, the transformer's {tuple(base_cfg.patch_size)}")
    if cfg.num_layers > base_cfg.num_layers:
        problems.append(f"it has {cfg.num_layers} blocks, more than the transformer's {base_cfg.num_layers}")
    if problems:
        raise CheckpointMismatchError(
            "this Uni3C ControlNet does not fit the transformer: "
            + "; ".join(problems)
            + " — use the Wan2.1-I2V-14B transformer with the released Uni3C file (or two files written at the same sizes)"
        )

    if isinstance(transformer, WorldStereoTransformer):
        out = _shallow_module_copy(transformer)
    else:
        # Stock Wan: build our skeleton on meta and hand it the base's tensors (shared, not copied).
        sizes: dict[str, Any] = {k: base_cfg[k] for k in FULL_TRANSFORMER_CONFIG}
        sizes["patch_size"] = tuple(sizes["patch_size"])
        if base_cfg.get("pos_embed_seq_len") is not None:
            sizes["pos_embed_seq_len"] = base_cfg["pos_embed_seq_len"]
        with torch.device("meta"):
            out = WorldStereoTransformer("camera", cfg, **sizes)
        # the base's tensors are assigned (shared, not copied); the meta GGM branch is replaced below
        missing, unexpected = out.load_state_dict(transformer.state_dict(), strict=False, assign=True)
        missing = [k for k in missing if not k.startswith("controlnet.")]
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"the Wan transformer's weights do not fit the WorldStereo skeleton (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); attach Uni3C to a stock diffusers Wan2.1-I2V transformer"
            )
        out.rebuild_buffers(transformer.proj_out.weight.device)
        out.requires_grad_(False)
        out.train(transformer.training)
    out.controlnet = uni3c
    out.controlnet_config = cfg
    ws = getattr(transformer, "ws_config", None)
    if ws is not None:
        out.ws_config = dataclasses.replace(ws, controlnet=cfg)
    out.control_branch = "uni3c"
    return out


def uni3c_parameter_count(cfg: ControlNetConfig = UNI3C_FULL_CONFIG, in_channels: int = UNI3C_IN_CHANNELS) -> int:
    """Parameter total of a Uni3C branch from its config alone (1 165 762 304 for the release)."""
    with torch.device("meta"):
        model = Uni3CControlNet(cfg, in_channels)
    return sum(math.prod(p.shape) for p in model.parameters())
