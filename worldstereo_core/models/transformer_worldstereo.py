"""The WorldStereo video transformer: Wan2.1-I2V-14B plus the GGM ControlNet and the SSM memory path.

Built on diffusers' :class:`WanTransformer3DModel`: the base blocks, RoPE, condition embedder and
attention processors are diffusers' own; this module adds only what WorldStereo adds.

* **GGM ControlNet** (every variant): a 20-block, 1024-wide branch whose input is
  ``patch_embed(concat[hidden[:, :20], render_latent])`` (noisy latent + I2V mask, then the render
  latent — this is the order of the release) plus :class:`MaskCamEmbed` of
  ``concat[render_mask, plucker]``. Its blocks are modulated (AdaLN) by the 5120-wide time
  embedding of the main model; block ``i``'s output goes through a zero-initialised
  ``Linear(1024, 5120)`` and is added to the hidden states after main block ``i``.
* **SSM references** (``memory`` / ``dmd``): reference latents ``concat[ref, ones(4), ref]`` go
  through the *main* patch embedding and join the self-attention of every main block as extra
  keys/values. They take the RoPE positions of frame ``ref_index + 1`` shifted right by one latent
  width (as if stitched beside that target frame). A ``camera_embedding`` MLP maps ``camera_qt``
  (quaternion + translation, 7 values) of each target/reference frame to a per-frame offset added to
  its tokens.

The release does not update the reference tokens between blocks (``update_ref = False``): every
block sees the freshly embedded references, and their own attention/FFN outputs are discarded. So
here references only contribute keys and values — the targets' output is identical and the
reference queries, cross-attention and FFN are never computed.

Keys and shapes at the full config equal the released checkpoints (see the schema fixture).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..attention_backends import (  # noqa: F401 (re-exported)
    ATTENTION_BACKENDS,
    DEFAULT_ATTENTION_BACKEND,
    SDPA_CUDNN,
    SDPA_FP8_CUDNN,
)
from ..checkpoint import config_dataclass
from ..errors import CheckpointMismatchError, InvalidInputError, InvalidOptionError, ShapeMismatchError
from .fp8_attention import fp8_attention

# cuDNN first; where it cannot run (CPU, GPUs before sm_80, a cuDNN build without fused attention, an
# unsupported shape) PyTorch takes the next usable kernel in this order instead of raising.
_SDPA_PRIORITY = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]
# ``set_priority`` came with torch 2.6; on older torch (we accept >= 2.4) the call runs under torch's own order.
_SDPA_CAN_SET_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters


def sdpa_cudnn_first(query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Softmax attention of ``query`` ``[B, Lq, H, D]`` over the concatenation (along tokens) of ``keys`` /
    ``values`` (each ``[B, L_i, H, D]``) → ``[B, Lq, H, D]``.

    SDPA runs with cuDNN's fused kernel first (:data:`_SDPA_PRIORITY`) on head-major *views* of the
    token-major tensors: cuDNN reads those strides directly, and making them contiguous first cost ~3 % of
    a step on an H100 (the layout copies; bench/issue13_targets.py, 2026-12-05).
    """
    key = keys[0] if len(keys) == 1 else torch.cat(keys, dim=1)
    value = values[0] if len(values) == 1 else torch.cat(values, dim=1)
    order = sdpa_kernel(_SDPA_PRIORITY, set_priority=True) if _SDPA_CAN_SET_PRIORITY else contextlib.nullcontext()
    with order:
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


VARIANTS: tuple[str, ...] = ("camera", "memory", "dmd")
"""``camera``: GGM only; ``memory``: GGM + SSM; ``dmd``: the memory architecture, distilled weights."""

MAX_REFERENCES = 8
"""The release retrieves at most 8 reference views; the memory weights were trained with that many."""

# Wan2.1-I2V-14B-480P transformer config (diffusers layout) — the base of every released variant.
FULL_TRANSFORMER_CONFIG: Mapping[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
}


@dataclass(frozen=True)
class BranchSizes:
    """The sizes every control branch beside the main transformer has (the GGM ControlNet, Uni3C, the
    paper's memory branch): ``num_layers`` blocks of width ``dim`` with ``num_heads`` heads and an FFN of
    ``ffn_dim``; ``conv_out_dim`` / ``time_embed_dim`` are the main model's width (5120), which its
    zero-initialised output projections write into and whose time embedding modulates its blocks.
    Defaults: the release's GGM branch (``controlnet_cfg``)."""

    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_layers: int = 20
    conv_out_dim: int = 5120
    time_embed_dim: int = 5120

    def branch_sizes(self) -> dict[str, int]:
        """Just the :class:`BranchSizes` fields (to build another branch type of the same sizes)."""
        return {f.name: getattr(self, f.name) for f in fields(BranchSizes)}

    def check_sizes(self, where: str) -> None:
        """Raise :class:`CheckpointMismatchError` unless the sizes can build a branch."""
        if min(self.dim, self.num_heads, self.num_layers, self.ffn_dim) < 1 or self.dim % self.num_heads:
            raise CheckpointMismatchError(
                f"{where}: dim must be a positive multiple of num_heads, got {self.branch_sizes()}"
            )


@dataclass(frozen=True)
class ControlNetConfig(BranchSizes):
    """The GGM branch's config (the ``controlnet_cfg`` of the release's ``config.json``).

    ``add_channels`` is render mask (1) + Plücker (6); ``mask_downsample`` > 1 folds that many
    frames into one latent frame (Uni3C on 81-frame videos); the released keyframe models use 1.
    """

    add_channels: int = 7
    mid_channels: int = 256
    mask_downsample: int = 1
    update_ref: bool = False
    ref_embedding: bool = False
    main_camera_embedding: bool = True
    camera_embedding_dim: int = 7
    nframe: int = 21

    # Keys without a safe default: a config.json lacking them cannot describe the branch.
    REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers", "conv_out_dim", "time_embed_dim")
    # The upstream MaskCamEmbed defaults (used when the key is absent) differ from ours.
    UPSTREAM_DEFAULTS = {"add_channels": 1, "mid_channels": 64, "mask_downsample": 4, "main_camera_embedding": False}

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "controlnet_cfg") -> ControlNetConfig:
        """Validate and convert a ``controlnet_cfg`` mapping; unknown keys are ignored (the release's
        config carries keys of its training code)."""
        missing = [k for k in cls.REQUIRED if isinstance(cfg, Mapping) and k not in cfg]
        if missing:
            raise CheckpointMismatchError(
                f"{where} is missing the field(s) {missing}; the released config.json has them all "
                f"(e.g. dim=1024, ffn_dim=4096, num_heads=16, num_layers=20, conv_out_dim=5120, "
                f"time_embed_dim=5120) — copy the config.json that came with the weights"
            )
        out = config_dataclass(cls, cfg, where, defaults=cls.UPSTREAM_DEFAULTS, ignore_unknown=True)
        if out.update_ref or out.ref_embedding:
            raise CheckpointMismatchError(
                f"{where} sets update_ref={out.update_ref}, ref_embedding={out.ref_embedding}; only the released "
                "setting (both false) is supported"
            )
        out.check_sizes(where)
        if out.mid_channels % 8:
            raise CheckpointMismatchError(f"{where}: mid_channels must be divisible by 8, got {out.mid_channels}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL_CONTROLNET_CONFIG = ControlNetConfig()


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a freshly built module's parameters in place (no-op on ``meta``) and return it."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.is_meta:
                p.zero_()
    return module


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE. ``x`` ``[B, L, H, D]``, freqs ``[1, L, 1, D]`` (pairs repeated)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


def rope_at(
    rope: WanRotaryPosEmbed, frames: torch.Tensor, height: int, width: int, w_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for tokens on a ``[len(frames), height, width]`` grid at arbitrary frame positions.

    ``frames`` ``[R]`` long (on the rope's device) gives each latent frame's temporal position; column
    positions start at ``w_offset``. Returns ``(cos, sin)`` ``[1, R*height*width, 1, D]`` in the token
    order of ``patch_embedding(x).flatten(2)`` (frame, row, column).
    """
    if w_offset + width > rope.max_seq_len or height > rope.max_seq_len:
        raise ShapeMismatchError(
            f"latent grid {height}x{width} (+{w_offset} columns for references) exceeds the RoPE table "
            f"of {rope.max_seq_len}; use a smaller resolution"
        )
    n = frames.shape[0]
    out = []
    for table in (rope.freqs_cos, rope.freqs_sin):
        t_tab, h_tab, w_tab = table.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
        ft = t_tab.index_select(0, frames).view(n, 1, 1, -1).expand(n, height, width, -1)
        fh = h_tab[:height].view(1, height, 1, -1).expand(n, height, width, -1)
        fw = w_tab[w_offset : w_offset + width].view(1, 1, width, -1).expand(n, height, width, -1)
        out.append(torch.cat([ft, fh, fw], dim=-1).reshape(1, n * height * width, 1, -1))
    return out[0], out[1]


class RefJointAttnProcessor(WanAttnProcessor):
    """Wan self-attention whose keys/values also include reference tokens.

    Without ``ref_hidden_states`` it computes what diffusers' :class:`WanAttnProcessor` computes (with a
    diffusers backend it *is* that processor; with :data:`SDPA_CUDNN` the same attention on our route;
    with :data:`SDPA_FP8_CUDNN` the fp8 approximation of it). With them, the targets' queries attend over
    ``concat[ref_keys, target_keys]`` — the release's joint attention, restricted to the outputs that
    survive (targets), since references are not updated.
    Subclasses change only :meth:`_attend` (e.g. sequence parallel around the kernel).
    """

    handles_plain_self_attention = False
    """False: without references and with a diffusers backend, diffusers' own processor runs
    (bit-identical to stock Wan). With :data:`SDPA_CUDNN` or :data:`SDPA_FP8_CUDNN` plain self-attention
    takes our path too."""

    def __init__(self, backend: str = DEFAULT_ATTENTION_BACKEND) -> None:
        super().__init__()
        self.sdpa_cudnn = backend == SDPA_CUDNN
        """True: :func:`sdpa_cudnn_first`. With this and :attr:`fp8_attention` both False: diffusers'
        ``dispatch_attention_fn`` with ``_attention_backend``."""
        self.fp8_attention = backend == SDPA_FP8_CUDNN
        """True: :func:`~.fp8_attention.fp8_attention` (:data:`SDPA_FP8_CUDNN`, cuDNN's fp8 kernel)."""

    def __call__(  # type: ignore[override]
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ref_hidden_states: torch.Tensor | None = None,
        ref_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if ref_hidden_states is None and not (
            self.handles_plain_self_attention or self.sdpa_cudnn or self.fp8_attention
        ):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None:
            raise InvalidInputError(
                "the joint reference attention is self-attention; it takes no encoder_hidden_states"
            )

        ref_key = ref_value = None
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            if ref_hidden_states is not None:
                _, ref_key, ref_value = attn.to_qkv(ref_hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            if ref_hidden_states is not None:
                ref_key, ref_value = attn.to_k(ref_hidden_states), attn.to_v(ref_hidden_states)

        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if ref_key is not None:
            ref_key = attn.norm_k(ref_key).unflatten(2, (attn.heads, -1))
            ref_value = ref_value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)
            if ref_key is not None:
                ref_key = apply_rotary_emb(ref_key, *ref_rotary_emb)

        out = self._attend(query, key, value, ref_key, ref_value, attention_mask)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        ref_key: torch.Tensor | None,
        ref_value: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[B, L, H, D]`` queries over ``concat[ref, target]`` keys/values → ``[B, L, H, D]``."""
        if (self.sdpa_cudnn or self.fp8_attention) and attention_mask is None:
            keys = [key] if ref_key is None else [ref_key, key]
            values = [value] if ref_value is None else [ref_value, value]
            if self.fp8_attention:
                return fp8_attention(query, keys, values)
            return sdpa_cudnn_first(query, keys, values)
        if ref_key is not None:
            key = torch.cat([ref_key, key], dim=1)
            value = torch.cat([ref_value, value], dim=1)
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=None,
        )


class UlyssesAttnProcessor(RefJointAttnProcessor):
    """:class:`RefJointAttnProcessor` under Ulysses sequence parallel: this rank holds a slice of
    the tokens with all heads; one all-to-all gives it every token of ``heads / N`` heads, the
    attention runs there, and a second all-to-all returns its slice of the output
    (:mod:`worldstereo_core.distributed.sequence_parallel`)."""

    handles_plain_self_attention = True

    def __init__(self, sequence_parallel: Any, backend: str = DEFAULT_ATTENTION_BACKEND) -> None:
        super().__init__(backend)
        self.sp = sequence_parallel

    def _attend(self, query, key, value, ref_key, ref_value, attention_mask):  # type: ignore[override]
        sp = self.sp
        query, key, value = (sp.seq_to_heads(t, "target") for t in (query, key, value))
        if ref_key is not None:
            ref_key, ref_value = sp.seq_to_heads(ref_key, "reference"), sp.seq_to_heads(ref_value, "reference")
        out = super()._attend(query, key, value, ref_key, ref_value, attention_mask)
        return sp.heads_to_seq(out, "target")


class WorldStereoBlock(WanTransformerBlock):
    """A Wan block (same parameters and keys) whose self-attention can also see reference tokens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attn1.set_processor(RefJointAttnProcessor())

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        ref_states: torch.Tensor | None = None,
        ref_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` ``[B, L, C]``; ``temb`` ``[B, 6, C]``; ``ref_states`` ``[B, R*h*w, C]`` or None."""
        if ref_states is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)

        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        # 1. joint self-attention (references modulated like the targets, as in the release)
        norm_hidden = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        norm_ref = (self.norm1(ref_states.float()) * (1 + scale_msa) + shift_msa).type_as(ref_states)
        attn_output = self.attn1(
            norm_hidden, None, None, rotary_emb, ref_hidden_states=norm_ref, ref_rotary_emb=ref_rotary_emb
        )
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. cross-attention (targets only)
        norm_hidden = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hidden, encoder_hidden_states, None, None)

        # 3. feed-forward (targets only)
        norm_hidden = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(hidden_states)
        ff_output = self.ffn(norm_hidden)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


class MaskCamEmbed(nn.Module):
    """Embeds ``concat[render_mask, plucker]`` ``[B, 7, F*ds, H, W]`` (pixels) into tokens ``[B, F*(H/16)*(W/16), C]``.

    Conv3d kernel/stride ``(ds, 8, 8)`` → GroupNorm(mid/8) → SiLU → zero-init Conv3d ``(1, 2, 2)`` to the
    main width, so it lands on the same token grid as the latent patch embedding. With ``ds > 1``
    (Uni3C layout) ``ds - 1`` zero frames are padded in front, so 81 frames give 21 latent frames.
    """

    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__()
        ds = cfg.mask_downsample
        self.mask_downsample = ds
        self.mask_proj = nn.Sequential(
            nn.Conv3d(cfg.add_channels, cfg.mid_channels, kernel_size=(ds, 8, 8), stride=(ds, 8, 8)),
            nn.GroupNorm(cfg.mid_channels // 8, cfg.mid_channels),
            nn.SiLU(),
        )
        self.mask_zero_proj = zero_module(
            nn.Conv3d(cfg.mid_channels, cfg.conv_out_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        )

    def forward(self, add_inputs: torch.Tensor) -> torch.Tensor:
        if self.mask_downsample > 1:
            add_inputs = F.pad(add_inputs, (0, 0, 0, 0, self.mask_downsample - 1, 0))
        x = self.mask_zero_proj(self.mask_proj(add_inputs))
        return x.flatten(2).transpose(1, 2)


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by ``Linear(SiLU(temb))`` → (shift, scale, gate); keys ``linear``, ``norm``."""

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, L, C]``, ``temb`` ``[B, T]`` → (modulated x ``[B, L, C]``, gate ``[B, 1, C]``)."""
        shift, scale, gate = self.linear(F.silu(temb.to(self.linear.weight.dtype))).float().chunk(3, dim=1)
        # LayerNorm in fp32 (the release runs it under autocast, which also promotes it to fp32)
        normed = F.layer_norm(
            x.float(), self.norm.normalized_shape, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps
        )
        return (normed * (1 + scale[:, None]) + shift[:, None]).to(x.dtype), gate[:, None]


class ControlNetBlock(nn.Module):
    """Self-attention (with RoPE) + FFN, both AdaLN-modulated by the main time embedding. No cross-attention."""

    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(cfg.time_embed_dim, cfg.dim)
        self.self_attn = WanAttention(
            dim=cfg.dim,
            heads=cfg.num_heads,
            dim_head=cfg.dim // cfg.num_heads,
            eps=1e-6,
            processor=RefJointAttnProcessor(),
        )
        self.norm2 = AdaLayerNormZero(cfg.time_embed_dim, cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        norm_hidden, gate = self.norm1(hidden_states, temb)
        hidden_states = (hidden_states.float() + gate * self.self_attn(norm_hidden, None, None, rotary_emb)).type_as(
            hidden_states
        )
        norm_hidden, gate = self.norm2(hidden_states, temb)
        return (hidden_states.float() + gate * self.ffn(norm_hidden)).type_as(hidden_states)


class WorldStereoControlNet(nn.Module):
    """The GGM branch; its parameters live under ``controlnet.*`` in the checkpoints."""

    def __init__(
        self, cfg: ControlNetConfig, in_channels: int, patch_size: tuple[int, int, int], rope_max_seq_len: int
    ):
        super().__init__()
        self.cfg = cfg
        self.proj_in = nn.Linear(cfg.conv_out_dim, cfg.dim) if cfg.conv_out_dim != cfg.dim else nn.Identity()
        self.controlnet_blocks = nn.ModuleList([ControlNetBlock(cfg) for _ in range(cfg.num_layers)])
        self.proj_out = nn.ModuleList(
            [zero_module(nn.Linear(cfg.dim, cfg.conv_out_dim)) for _ in range(cfg.num_layers)]
        )
        self.controlnet_patch_embedding = nn.Conv3d(
            in_channels, cfg.conv_out_dim, kernel_size=patch_size, stride=patch_size
        )
        self.controlnet_mask_embedding = MaskCamEmbed(cfg)
        # buffers only (non-persistent): no checkpoint keys
        self.rope = WanRotaryPosEmbed(cfg.dim // cfg.num_heads, patch_size, rope_max_seq_len)

    def embed(self, control_latent: torch.Tensor, add_inputs: torch.Tensor) -> torch.Tensor:
        """``control_latent`` ``[B, in_ch, F, h, w]``, ``add_inputs`` ``[B, 7, F, 8h, 8w]`` → tokens ``[B, L, dim]``."""
        tokens = self.controlnet_patch_embedding(control_latent).flatten(2).transpose(1, 2)
        tokens = tokens + self.controlnet_mask_embedding(add_inputs.to(tokens.dtype))
        return self.proj_in(tokens)


@dataclass(frozen=True)
class WorldStereoInputs:
    """Conditioning of one denoising call, apart from the noisy latent and the timestep.

    Shapes (B batch, F latent frames, h×w latent grid, R references, text L_t = 512):
      encoder_hidden_states ``[B, 512, text_dim]`` (UMT5), encoder_hidden_states_image ``[B, 257, image_dim]``
      (CLIP) or None; render_latent ``[B, 16, F, h, w]``; render_mask ``[B, 1, F, 8h, 8w]`` (1 = hole);
      plucker ``[B, 6, F, 8h, 8w]`` ordered ``[d, o×d]``; reference_latent ``[B, 36, R, h, w]``
      (``concat[ref, ones(4), ref]``); ref_index ``[R]`` long in ``[0, F-2]`` (reference r sits beside
      latent frame ``ref_index[r] + 1``); camera_qt ``[B, F, 7]``; camera_qt_ref ``[B, R, 7]``.
    """

    encoder_hidden_states: torch.Tensor
    encoder_hidden_states_image: torch.Tensor | None = None
    render_latent: torch.Tensor | None = None
    render_mask: torch.Tensor | None = None
    plucker: torch.Tensor | None = None
    reference_latent: torch.Tensor | None = None
    ref_index: torch.Tensor | None = None
    camera_qt: torch.Tensor | None = None
    camera_qt_ref: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WorldStereoTransformer(WanTransformer3DModel):
    """Wan2.1-I2V transformer + GGM ControlNet (+ SSM references and camera embedding for memory variants).

    Build with :func:`worldstereo_core.models.build_transformer` or load with
    :func:`worldstereo_core.models.load_worldstereo`.
    """

    _no_split_modules = ["WorldStereoBlock", "ControlNetBlock"]
    _repeated_blocks = ["WorldStereoBlock", "ControlNetBlock"]
    sequence_parallel: Any = None
    """Set by :func:`worldstereo_core.distributed.enable_sequence_parallel`; None runs on one process."""

    def __init__(
        self,
        variant: str = "memory",
        controlnet_cfg: ControlNetConfig | Mapping[str, Any] | None = None,
        **transformer_config: Any,
    ) -> None:
        if variant not in VARIANTS:
            raise InvalidOptionError(f"unknown WorldStereo variant {variant!r}; use one of {VARIANTS}")
        cfg = {**FULL_TRANSFORMER_CONFIG, **transformer_config}
        unknown = set(cfg) - set(FULL_TRANSFORMER_CONFIG) - {"pos_embed_seq_len"}
        if unknown:
            raise CheckpointMismatchError(f"unknown transformer config field(s) {sorted(unknown)}")
        if controlnet_cfg is None:
            controlnet_cfg = FULL_CONTROLNET_CONFIG
        elif not isinstance(controlnet_cfg, ControlNetConfig):
            controlnet_cfg = ControlNetConfig.from_dict(controlnet_cfg)
        num_layers = int(cfg.pop("num_layers"))
        cfg["patch_size"] = tuple(cfg["patch_size"])
        # Build the diffusers skeleton without blocks, then add ours (same keys, reference-aware forward).
        super().__init__(num_layers=0, **cfg)
        self.register_to_config(num_layers=num_layers)
        inner_dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        if controlnet_cfg.conv_out_dim != inner_dim or controlnet_cfg.time_embed_dim != inner_dim:
            raise CheckpointMismatchError(
                f"controlnet_cfg conv_out_dim/time_embed_dim ({controlnet_cfg.conv_out_dim}/"
                f"{controlnet_cfg.time_embed_dim}) must equal the transformer width {inner_dim}"
            )
        self.blocks = nn.ModuleList(
            [
                WorldStereoBlock(
                    inner_dim,
                    cfg["ffn_dim"],
                    cfg["num_attention_heads"],
                    cfg["qk_norm"],
                    cfg["cross_attn_norm"],
                    cfg["eps"],
                    cfg["added_kv_proj_dim"],
                )
                for _ in range(num_layers)
            ]
        )
        self.variant = variant
        self.controlnet_config = controlnet_cfg
        self.inner_dim = inner_dim
        self.controlnet = WorldStereoControlNet(
            controlnet_cfg, cfg["in_channels"], cfg["patch_size"], cfg["rope_max_seq_len"]
        )
        if not self.controlnet.controlnet_patch_embedding.weight.is_meta:
            # the release initialises the control patch embedding from the main one
            with torch.no_grad():
                self.controlnet.controlnet_patch_embedding.weight.copy_(self.patch_embedding.weight)
                self.controlnet.controlnet_patch_embedding.bias.copy_(self.patch_embedding.bias)
        self.camera_embedding: nn.Sequential | None = None
        if self.uses_references and controlnet_cfg.main_camera_embedding:
            self.camera_embedding = nn.Sequential(
                nn.Linear(controlnet_cfg.camera_embedding_dim, inner_dim // 2),
                nn.SiLU(),
                nn.Linear(inner_dim // 2, inner_dim),
                nn.SiLU(),
                zero_module(nn.Linear(inner_dim, inner_dim)),
            )

    def set_attention_backend(self, backend: str) -> None:
        """Choose the attention kernel: :data:`SDPA_CUDNN` (our self-attention through
        :func:`sdpa_cudnn_first`; cross-attention keeps PyTorch's default SDPA), :data:`SDPA_FP8_CUDNN`
        (our self-attention on cuDNN's fp8 kernel, :mod:`.fp8_attention`; cross-attention as with
        ``sdpa_cudnn``), or any diffusers backend name (``native``, ``flash``, ``_native_cudnn`` …), which
        every attention then dispatches through as in stock diffusers."""
        if backend in (SDPA_CUDNN, SDPA_FP8_CUDNN):
            self.reset_attention_backend()
        else:
            super().set_attention_backend(backend)
        for proc in self.attn_processors.values():
            if isinstance(proc, RefJointAttnProcessor):
                proc.sdpa_cudnn = backend == SDPA_CUDNN
                proc.fp8_attention = backend == SDPA_FP8_CUDNN

    @property
    def uses_references(self) -> bool:
        """True for the memory architectures (``memory``, ``dmd``)."""
        return self.variant in ("memory", "dmd")

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the (non-persistent) RoPE tables on ``device`` — needed after a ``meta`` build."""
        device = torch.device(device) if device is not None else self.proj_out.weight.device
        with torch.device(device):
            self.rope = WanRotaryPosEmbed(
                self.config.attention_head_dim, self.config.patch_size, self.config.rope_max_seq_len
            )
            c = self.controlnet_config
            self.controlnet.rope = WanRotaryPosEmbed(
                c.dim // c.num_heads, self.config.patch_size, self.config.rope_max_seq_len
            )

    # ------------------------------------------------------------------ forward

    def _camera_offsets(self, qt: torch.Tensor, n_frames: int, tokens_per_frame: int, what: str) -> torch.Tensor:
        """``qt`` ``[B, n, 7]`` → ``[B, n*tokens_per_frame, C]`` per-frame offsets."""
        if qt.ndim != 3 or qt.shape[1] != n_frames or qt.shape[2] != self.controlnet_config.camera_embedding_dim:
            raise ShapeMismatchError(
                f"{what} must be [B, {n_frames}, {self.controlnet_config.camera_embedding_dim}] (quaternion + "
                f"translation per frame), got {tuple(qt.shape)}"
            )
        emb = self.camera_embedding(qt.to(self.camera_embedding[0].weight.dtype))
        return emb[:, :, None, :].expand(-1, -1, tokens_per_frame, -1).flatten(1, 2)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        render_latent: torch.Tensor | None = None,
        render_mask: torch.Tensor | None = None,
        plucker: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
        ref_index: torch.Tensor | None = None,
        camera_qt: torch.Tensor | None = None,
        camera_qt_ref: torch.Tensor | None = None,
        return_dict: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
        **branch_inputs: torch.Tensor | None,
    ) -> torch.Tensor | Any:
        """Predict the flow (velocity) for ``hidden_states`` ``[B, 36, F, h, w]`` at ``timestep`` ``[B]`` (0..1000).

        See :class:`WorldStereoInputs` for the conditioning shapes. ``render_latent=None`` skips the
        GGM branch; ``reference_latent=None`` runs without references. Returns ``[B, 16, F, h, w]``
        (wrapped in ``Transformer2DModelOutput`` if ``return_dict``).
        """
        B, C, F_, H, W = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        if C != self.config.in_channels:
            raise ShapeMismatchError(
                f"hidden_states has {C} channels; the I2V model takes {self.config.in_channels} "
                "(noisy latent 16 + mask 4 + first-frame latent 16)"
            )
        if F_ % p_t or H % p_h or W % p_w:
            raise ShapeMismatchError(
                f"latent size {F_}x{H}x{W} is not a multiple of the patch {self.config.patch_size}; "
                "use image sizes that are multiples of 16"
            )
        ppf, pph, ppw = F_ // p_t, H // p_h, W // p_w
        tokens_per_frame = pph * ppw
        # callers may keep latents in fp32 (the sampler does); compute in the weights' dtype
        dtype = self.patch_embedding.weight.dtype
        hidden_states = hidden_states.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(self.condition_embedder.text_embedder.linear_1.weight.dtype)
        if encoder_hidden_states_image is not None and self.condition_embedder.image_embedder is not None:
            encoder_hidden_states_image = encoder_hidden_states_image.to(
                self.condition_embedder.image_embedder.ff.net[0].proj.weight.dtype
            )

        # --- GGM control tokens
        control = None
        if render_latent is not None:
            if render_latent.shape[0] != B or render_latent.shape[2:] != hidden_states.shape[2:]:
                raise ShapeMismatchError(
                    f"render_latent {tuple(render_latent.shape)} must match the latent batch/frames/size "
                    f"{(B, F_, H, W)} — encode one render keyframe per latent frame"
                )
            n_keep = C - render_latent.shape[1]
            control_latent = torch.cat([hidden_states[:, :n_keep], render_latent.to(hidden_states.dtype)], dim=1)
            add_inputs = self._control_add_inputs(render_mask, plucker, B, F_, H, W)
            control = self.controlnet.embed(control_latent, add_inputs)
            control_rope = self.controlnet.rope(control_latent)

        # --- target tokens
        rotary_emb = self.rope(hidden_states)
        hidden = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        if self.camera_embedding is not None and camera_qt is not None:
            hidden = hidden + self._camera_offsets(camera_qt, ppf, tokens_per_frame, "camera_qt").to(hidden.dtype)

        # --- reference tokens (memory variants)
        ref_states = ref_rope = None
        if reference_latent is not None:
            ref_states, ref_rope = self._embed_references(
                reference_latent, ref_index, camera_qt_ref, B, ppf, pph, ppw, H, W
            )

        # --- time / text / image conditioning
        if timestep.ndim != 1 or timestep.shape[0] != B:
            raise ShapeMismatchError(f"timestep must be [B]={B} values in 0..1000, got shape {tuple(timestep.shape)}")
        temb, timestep_proj, context, context_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if context_image is not None:
            context = torch.cat([context_image, context], dim=1)
        # --- extra control branches of subclasses (the paper's SSM memory branch); none here
        branch_state = self._branch_state(hidden_states, temb, branch_inputs)

        # --- sequence parallel: this rank keeps a slice of every token sequence (RoPE and camera
        # offsets were computed on the whole sequence above, so positions stay exact)
        sp = self.sequence_parallel
        if sp is not None:
            sp.reset()
            hidden, rotary_emb = sp.shard(hidden, "target"), sp.shard_rope(rotary_emb, "target")
            if control is not None:
                control, control_rope = sp.shard(control, "target"), sp.shard_rope(control_rope, "target")
            if ref_states is not None:
                ref_states, ref_rope = sp.shard(ref_states, "reference"), sp.shard_rope(ref_rope, "reference")

        # --- blocks; the control branch runs in lockstep so only one control state is alive at a time
        n_control = len(self.controlnet.controlnet_blocks) if control is not None else 0
        for i, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(
                    block, hidden, context, timestep_proj, rotary_emb, ref_states, ref_rope
                )
            else:
                hidden = block(hidden, context, timestep_proj, rotary_emb, ref_states, ref_rope)
            if i < n_control:
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    control = self._gradient_checkpointing_func(
                        self.controlnet.controlnet_blocks[i], control, temb, control_rope
                    )
                else:
                    control = self.controlnet.controlnet_blocks[i](control, temb, control_rope)
                hidden = hidden + self.controlnet.proj_out[i](control).to(hidden.dtype)
            if branch_state is not None:
                hidden, branch_state = self._branch_step(i, hidden, branch_state)

        # --- output norm, projection, unpatchify (as diffusers)
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (self.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = self.proj_out(hidden)
        if sp is not None:
            hidden = sp.gather(hidden, "target")
        hidden = hidden.reshape(B, ppf, pph, ppw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        # one reshape (a copy: the channels move in front) rather than flattens, which returned a view of
        # that copy; FSDP2 warns about a module returning a view (an in-place op on it skips its hooks)
        output = hidden.reshape(B, hidden.shape[1], ppf * p_t, pph * p_h, ppw * p_w)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=output)
        return output

    def _branch_state(self, hidden_states: torch.Tensor, temb: torch.Tensor, branch_inputs: Mapping[str, Any]) -> Any:
        """State of extra control branches for one forward pass (None: no extra branch).

        The release has none, so any extra input is a caller error; subclasses with another branch
        (:class:`~.transformer_worldstereo_paper.WorldStereoPaperTransformer`) override this and
        :meth:`_branch_step`.
        """
        given = sorted(k for k, v in branch_inputs.items() if v is not None)
        if given:
            raise InvalidInputError(
                f"the {self.variant!r} WorldStereo transformer takes no input(s) {given}; they belong to the paper's "
                "SSM variant (load a worldstereo-paper-memory checkpoint)"
            )
        return None

    def _branch_step(self, i: int, hidden: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Run extra branches' block ``i`` and add their residual to ``hidden`` (after main block ``i``)."""
        return hidden, state

    def _control_add_inputs(
        self, render_mask: torch.Tensor | None, plucker: torch.Tensor | None, B: int, F_: int, H: int, W: int
    ) -> torch.Tensor:
        cfg = self.controlnet_config
        if render_mask is None:
            raise InvalidInputError("render_latent was given without render_mask; pass the hole mask [B, 1, F, 8h, 8w]")
        parts = [render_mask] if plucker is None else [render_mask, plucker]
        # with a temporal downsample ds, (F-1)*ds + 1 frames are padded in front to F*ds
        frames = (F_ - 1) * cfg.mask_downsample + 1
        channels = sum(p.shape[1] if p.ndim == 5 else -1 for p in parts)
        if channels != cfg.add_channels or any(
            p.ndim != 5 or (p.shape[0], p.shape[2], p.shape[3], p.shape[4]) != (B, frames, H * 8, W * 8) for p in parts
        ):
            raise ShapeMismatchError(
                f"render_mask {tuple(render_mask.shape)} / plucker {None if plucker is None else tuple(plucker.shape)} "
                f"must be [B={B}, 1 | 6, {frames}, {H * 8}, {W * 8}] (mask + Plücker = {cfg.add_channels} channels, "
                "one frame per latent frame, at 8x the latent size)"
            )
        return torch.cat([p.to(self.patch_embedding.weight.dtype) for p in parts], dim=1)

    def _embed_references(
        self,
        reference_latent: torch.Tensor,
        ref_index: torch.Tensor | None,
        camera_qt_ref: torch.Tensor | None,
        B: int,
        ppf: int,
        pph: int,
        ppw: int,
        H: int,
        W: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if not self.uses_references:
            raise InvalidInputError(
                f"the {self.variant!r} variant takes no references; load a memory or dmd checkpoint for SSM"
            )
        if (
            reference_latent.ndim != 5
            or reference_latent.shape[0] != B
            or reference_latent.shape[1] != self.config.in_channels
        ):
            raise ShapeMismatchError(
                f"reference_latent must be [B={B}, {self.config.in_channels}, R, h, w] (concat[ref, ones(4), ref]), "
                f"got {tuple(reference_latent.shape)}"
            )
        if reference_latent.shape[3:] != (H, W):
            raise ShapeMismatchError(
                f"reference latents are {tuple(reference_latent.shape[3:])}, targets {(H, W)}: "
                "resize reference images to the target resolution before encoding"
            )
        n_ref = reference_latent.shape[2]
        if n_ref > MAX_REFERENCES:
            raise InvalidOptionError(f"{n_ref} references given; the model takes at most {MAX_REFERENCES}")
        if ref_index is None or ref_index.ndim != 1 or ref_index.shape[0] != n_ref:
            raise ShapeMismatchError(
                f"ref_index must be a 1-D tensor with one keyframe slot per reference ({n_ref}), got "
                f"{None if ref_index is None else tuple(ref_index.shape)}"
            )
        if ref_index.device.type == "cpu" and ((ref_index < 0) | (ref_index > ppf - 2)).any():
            # checked only for host tensors: a device tensor would need a sync
            raise InvalidOptionError(
                f"ref_index values must be in [0, {ppf - 2}] (keyframe slot - 1), got {ref_index.tolist()}"
            )
        # reference r takes the positions of latent frame ref_index[r] + 1, one latent width to the right
        frames = ref_index.to(device=self.rope.freqs_cos.device, dtype=torch.long) + 1
        ref_rope = rope_at(self.rope, frames, pph, ppw, w_offset=ppw)
        ref_states = self.patch_embedding(reference_latent.to(self.patch_embedding.weight.dtype))
        ref_states = ref_states.flatten(2).transpose(1, 2).contiguous()
        if self.camera_embedding is not None and camera_qt_ref is not None:
            ref_states = ref_states + self._camera_offsets(camera_qt_ref, n_ref, pph * ppw, "camera_qt_ref").to(
                ref_states.dtype
            )
        return ref_states, ref_rope


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on ``meta``)."""
    return sum(math.prod(p.shape) for p in module.parameters())
