"""The paper's Spatial-Stereo Memory (SSM) as a model option: a memory branch on stitched target–reference pairs.

arXiv 2603.02049 §3.3 describes SSM differently from the released code (see
:mod:`.transformer_worldstereo`): each target keyframe latent is stitched side by side with the
latent of *its* retrieved reference, ``[z_tar; z_ref]`` of ``F × 2HW × C``; attention is restricted
to each target–reference pair (the pairs are folded into the batch, ``[B·F, H·2W, C]``, so a pair
attends only to its own tokens); and a pointmap of the pair — the 3D cache's point positions at the
target view and at the reference view, in normalised world coordinates, colourised as RGB and
VAE-encoded into ``ẑ_pm`` — is added to the stitched tokens. The SSM is a control branch (the
**memory branch**) beside the GGM ControlNet: its block ``i``'s target half goes through a zero-init
``Linear(dim, 5120)`` and is added to the main hidden states after main block ``i``, as the GGM
branch's is.

Variants: ``paper`` (trained with flow matching, sampled with UniPC + CFG) and ``paper-dmd`` (the
same architecture with DMD-distilled backbone weights, sampled in 4 steps). Their checkpoints hold
the base transformer and ``controlnet.*`` exactly as ``worldstereo-camera`` does, plus
``memory_branch.*`` (no ``camera_embedding.*``: camera information reaches the memory branch through
the pointmaps, which are in one world frame for target and reference).

**Initialisation rule** (the release ships no weights for this variant): :func:`init_from_camera`
copies base + GGM from a ``worldstereo-camera`` (or ``-memory``) checkpoint; the memory branch's
blocks are copied from the GGM ControlNet's first ``num_layers`` blocks (same width, so the branch
starts from a network that already reads latents and geometry), its latent patch embedding from the
main patch embedding (as the release initialises the GGM patch embedding), and the pointmap embedding
and every output projection are zero. So a fresh paper model computes exactly what the camera model
computes, whatever the references and pointmaps, and training starts from the GGM model's behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn

from ..checkpoint import config_dataclass
from ..errors import CheckpointMismatchError, InvalidInputError, ShapeMismatchError
from .transformer_worldstereo import (
    BranchSizes,
    ControlNetBlock,
    ControlNetConfig,
    WorldStereoInputs,
    WorldStereoTransformer,
    rope_at,
    zero_module,
)

PAPER_VARIANTS: tuple[str, ...] = ("paper", "paper-dmd")
"""``paper``: GGM + the paper's SSM memory branch; ``paper-dmd``: same architecture, DMD-distilled backbone."""

POINTMAP_LATENT_CHANNELS = 16
"""The pointmap image is encoded by the same Wan VAE as the frames: 16 latent channels."""


@dataclass(frozen=True)
class MemoryBranchConfig(BranchSizes):
    """The paper-SSM memory branch's sizes (``memory_cfg`` in the checkpoint's ``config.json``).

    The paper gives no sizes for its memory branch. Our default mirrors the GGM branch of the release
    (:class:`BranchSizes`: 20 blocks, width 1024, 16 heads, FFN 4096) so that the initialisation rule can
    copy the GGM blocks; ``conv_out_dim`` / ``time_embed_dim`` are the main model's width.
    """

    pointmap_channels: int = POINTMAP_LATENT_CHANNELS

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "memory_cfg") -> MemoryBranchConfig:
        out = config_dataclass(cls, cfg, where, convert=lambda _, v: int(v))
        out.check_sizes(where)
        return out

    @classmethod
    def like(cls, branch: BranchSizes) -> MemoryBranchConfig:
        """A memory branch of ``branch``'s sizes (the GGM branch whose blocks the initialisation rule copies)."""
        return cls(**branch.branch_sizes())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_controlnet_config(self) -> ControlNetConfig:
        """The GGM config type its :class:`ControlNetBlock` blocks are built from (same block code)."""
        return ControlNetConfig(**self.branch_sizes())


FULL_MEMORY_CONFIG = MemoryBranchConfig()


def pair_attention_mask(num_pairs: int, tokens_per_pair: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[P·T, P·T]`` bool, True where a query token may attend a key token: the paper's pair restriction.

    Tokens are laid out pair after pair (``T = h · 2w`` tokens each, target half then reference half
    in every row); a token sees exactly the tokens of its own target–reference pair. The memory branch
    realises this mask by folding pairs into the batch (no ``L²`` mask is ever built); tests compare the
    branch's measured token dependencies against this mask.
    """
    pair = torch.arange(num_pairs * tokens_per_pair, device=device) // tokens_per_pair
    return pair[:, None] == pair[None, :]


class WorldStereoMemoryBranch(nn.Module):
    """The paper's SSM branch; its parameters live under ``memory_branch.*``.

    Input per target keyframe ``f``: the target's 36-channel I2V input (noisy latent + mask +
    condition) and the reference's ``concat[ref, ones(4), ref]`` (the release's reference layout),
    each patch-embedded by ``memory_patch_embedding``, stitched along the width into an ``h × 2w``
    token grid, plus ``pointmap_embedding(ẑ_pm)`` of the stitched pointmap latent ``[16, h, 2w]``.
    RoPE: the pair's grid sits at frame ``f``, columns ``0 … 2w−1`` (the reference one latent width to
    the right of its target, as the release places its references). Blocks are the GGM branch's
    :class:`ControlNetBlock` (self-attention + FFN, AdaLN from the main time embedding); with pairs
    folded into the batch their self-attention is pair-restricted.
    """

    def __init__(
        self, cfg: MemoryBranchConfig, in_channels: int, patch_size: tuple[int, int, int], rope_max_seq_len: int
    ):
        super().__init__()
        self.cfg = cfg
        block_cfg = cfg.as_controlnet_config()
        self.memory_patch_embedding = nn.Conv3d(
            in_channels, cfg.conv_out_dim, kernel_size=patch_size, stride=patch_size
        )
        self.pointmap_embedding = zero_module(
            nn.Conv3d(cfg.pointmap_channels, cfg.conv_out_dim, kernel_size=patch_size, stride=patch_size)
        )
        self.proj_in = nn.Linear(cfg.conv_out_dim, cfg.dim) if cfg.conv_out_dim != cfg.dim else nn.Identity()
        self.memory_blocks = nn.ModuleList([ControlNetBlock(block_cfg) for _ in range(cfg.num_layers)])
        self.proj_out = nn.ModuleList(
            [zero_module(nn.Linear(cfg.dim, cfg.conv_out_dim)) for _ in range(cfg.num_layers)]
        )
        self.rope = WanRotaryPosEmbed(cfg.dim // cfg.num_heads, patch_size, rope_max_seq_len)  # buffers only

    def embed_pairs(
        self, target_input: torch.Tensor, pair_latent: torch.Tensor, pointmap_latent: torch.Tensor
    ) -> torch.Tensor:
        """Stitched pair tokens ``[B·F, h·2w, dim]``.

        ``target_input`` ``[B, 36, F, 2h, 2w]`` (the main model's input), ``pair_latent`` ``[B, 36, F, 2h, 2w]``
        (reference of each keyframe), ``pointmap_latent`` ``[B, 16, F, 2h, 4w]`` (target pointmap | reference
        pointmap, stitched along the width before the patch embedding).
        """
        dtype = self.memory_patch_embedding.weight.dtype
        tar = self.memory_patch_embedding(target_input.to(dtype))  # [B, C, F, h, w]
        ref = self.memory_patch_embedding(pair_latent.to(dtype))
        stitched = torch.cat([tar, ref], dim=-1) + self.pointmap_embedding(
            pointmap_latent.to(dtype)
        )  # [B, C, F, h, 2w]
        B, C, F_, h, w2 = stitched.shape
        tokens = stitched.permute(0, 2, 3, 4, 1).reshape(B * F_, h * w2, C)
        return self.proj_in(tokens)


@dataclass(frozen=True)
class PaperInputs(WorldStereoInputs):
    """:class:`WorldStereoInputs` plus the paper-SSM inputs.

    pair_latent ``[B, 36, F, h, w]``: for each keyframe its reference's ``concat[z_ref, ones(4), z_ref]``
    (zeros where the reference is dropped); pointmap_latent ``[B, 16, F, h, 2w]``: VAE latents of the
    stitched colourised pointmaps (target | reference). The release's reference fields stay None.
    """

    pair_latent: torch.Tensor | None = None
    pointmap_latent: torch.Tensor | None = None


@dataclass
class _MemoryState:
    tokens: torch.Tensor  # [B·F, h·2w, dim]
    temb: torch.Tensor  # [B·F, T]
    rope: tuple[torch.Tensor, torch.Tensor]  # [B·F, h·2w, 1, D]
    batch: int
    frames: int
    height: int
    width: int  # target width in tokens (w)


class WorldStereoPaperTransformer(WorldStereoTransformer):
    """WorldStereo with the paper's SSM (memory branch on stitched pairs) instead of the release's references.

    Build with :func:`worldstereo_core.models.build_transformer` (``variant="paper"``), load with
    :func:`worldstereo_core.models.load_worldstereo`, initialise from released weights with
    :func:`init_from_camera`.
    """

    _no_split_modules = ["WorldStereoBlock", "ControlNetBlock"]
    _repeated_blocks = ["WorldStereoBlock", "ControlNetBlock"]

    def __init__(
        self,
        variant: str = "paper",
        controlnet_cfg: ControlNetConfig | Mapping[str, Any] | None = None,
        memory_cfg: MemoryBranchConfig | Mapping[str, Any] | None = None,
        **transformer_config: Any,
    ) -> None:
        if variant not in PAPER_VARIANTS:
            raise CheckpointMismatchError(f"unknown paper-SSM variant {variant!r}; use one of {PAPER_VARIANTS}")
        # the base skeleton of the camera architecture: no camera_embedding, no release references
        super().__init__("camera", controlnet_cfg, **transformer_config)
        self.variant = variant
        if memory_cfg is None:
            memory_cfg = FULL_MEMORY_CONFIG
        elif not isinstance(memory_cfg, MemoryBranchConfig):
            memory_cfg = MemoryBranchConfig.from_dict(memory_cfg)
        if memory_cfg.conv_out_dim != self.inner_dim or memory_cfg.time_embed_dim != self.inner_dim:
            raise CheckpointMismatchError(
                f"memory_cfg conv_out_dim/time_embed_dim ({memory_cfg.conv_out_dim}/{memory_cfg.time_embed_dim}) "
                f"must equal the transformer width {self.inner_dim}"
            )
        self.memory_config = memory_cfg
        self.memory_branch = WorldStereoMemoryBranch(
            memory_cfg, self.config.in_channels, tuple(self.config.patch_size), self.config.rope_max_seq_len
        )
        if not self.memory_branch.memory_patch_embedding.weight.is_meta:
            with torch.no_grad():
                self.memory_branch.memory_patch_embedding.weight.copy_(self.patch_embedding.weight)
                self.memory_branch.memory_patch_embedding.bias.copy_(self.patch_embedding.bias)

    @property
    def uses_references(self) -> bool:
        """False: the release's reference path is not used (references come in as stitched pairs)."""
        return False

    @property
    def uses_pairs(self) -> bool:
        return True

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        super().rebuild_buffers(device)
        device = torch.device(device) if device is not None else self.proj_out.weight.device
        c = self.memory_config
        with torch.device(device):
            self.memory_branch.rope = WanRotaryPosEmbed(
                c.dim // c.num_heads, self.config.patch_size, self.config.rope_max_seq_len
            )

    def memory_branch_parameters(self) -> list[nn.Parameter]:
        return list(self.memory_branch.parameters())

    # ------------------------------------------------------------------ the branch hooks

    def _branch_state(self, hidden_states: torch.Tensor, temb: torch.Tensor, branch_inputs: Mapping[str, Any]) -> Any:
        pair_latent = branch_inputs.get("pair_latent")
        pointmap_latent = branch_inputs.get("pointmap_latent")
        unknown = sorted(
            k for k, v in branch_inputs.items() if v is not None and k not in ("pair_latent", "pointmap_latent")
        )
        if unknown:
            raise InvalidInputError(f"the paper-SSM transformer takes no input(s) {unknown}")
        if pair_latent is None and pointmap_latent is None:
            return None  # no memory: the GGM-only model
        B, C, F_, H, W = hidden_states.shape
        if pair_latent is None or pointmap_latent is None:
            raise InvalidInputError("the paper's SSM needs both pair_latent and pointmap_latent (or neither)")
        if tuple(pair_latent.shape) != (B, C, F_, H, W):
            raise ShapeMismatchError(
                f"pair_latent must be [B={B}, {C}, F={F_}, {H}, {W}] (one reference per keyframe, "
                f"concat[z_ref, ones(4), z_ref]), got {tuple(pair_latent.shape)}"
            )
        want = (B, self.memory_config.pointmap_channels, F_, H, 2 * W)
        if tuple(pointmap_latent.shape) != want:
            raise ShapeMismatchError(
                f"pointmap_latent must be {list(want)} (VAE latents of the target | reference pointmaps, stitched "
                f"along the width), got {tuple(pointmap_latent.shape)}"
            )
        p_t, p_h, p_w = self.config.patch_size
        h, w = H // p_h, W // p_w
        tokens = self.memory_branch.embed_pairs(hidden_states, pair_latent, pointmap_latent)
        frames = torch.arange(F_ // p_t, device=self.memory_branch.rope.freqs_cos.device)
        cos, sin = rope_at(self.memory_branch.rope, frames, h, 2 * w)  # [1, F·h·2w, 1, D]
        n = F_ // p_t
        cos = cos.reshape(n, h * 2 * w, 1, -1).repeat(B, 1, 1, 1)
        sin = sin.reshape(n, h * 2 * w, 1, -1).repeat(B, 1, 1, 1)
        return _MemoryState(tokens, temb.repeat_interleave(n, dim=0), (cos, sin), B, n, h, w)

    def _branch_step(self, i: int, hidden: torch.Tensor, state: _MemoryState) -> tuple[torch.Tensor, Any]:
        if i >= len(self.memory_branch.memory_blocks):
            return hidden, state
        block = self.memory_branch.memory_blocks[i]
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            tokens = self._gradient_checkpointing_func(block, state.tokens, state.temb, state.rope)
        else:
            tokens = block(state.tokens, state.temb, state.rope)
        state.tokens = tokens
        # the target half of each pair, back in the main token order (frame, row, column)
        residual = self.memory_branch.proj_out[i](tokens)
        residual = residual.reshape(state.batch, state.frames, state.height, 2 * state.width, -1)[
            :, :, :, : state.width
        ]
        residual = residual.reshape(state.batch, -1, residual.shape[-1])
        if self.sequence_parallel is not None:
            # sequence parallel: every rank runs the (small, per-pair) memory branch whole and adds the
            # residual of its own slice of the target tokens
            residual = self.sequence_parallel.shard(residual, "target")
        return hidden + residual.to(hidden.dtype), state


def init_from_camera(
    paper: WorldStereoPaperTransformer, camera_state: Mapping[str, torch.Tensor]
) -> WorldStereoPaperTransformer:
    """Apply the initialisation rule (module docstring) from a camera/memory checkpoint's state dict.

    Base and ``controlnet.*`` are copied (``camera_embedding.*`` of a memory checkpoint is ignored);
    memory block ``i`` = GGM block ``i``; ``memory_patch_embedding`` = main ``patch_embedding``;
    ``pointmap_embedding`` and ``proj_out`` zero. Raises :class:`CheckpointMismatchError` if sizes differ.
    """
    own = paper.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in camera_state.items():
        if key.startswith("camera_embedding."):
            continue
        if key not in own:
            raise CheckpointMismatchError(
                f"{key} of the source checkpoint has no place in the paper model; use a WorldStereo checkpoint"
            )
        state[key] = value
    missing = [k for k in own if not k.startswith("memory_branch.") and k not in state]
    if missing:
        raise CheckpointMismatchError(f"the source checkpoint lacks {len(missing)} base/GGM keys, e.g. {missing[0]}")
    ggm_blocks = paper.controlnet_config.num_layers
    mem = paper.memory_config
    if (
        mem.num_layers > ggm_blocks
        or mem.dim != paper.controlnet_config.dim
        or mem.ffn_dim != paper.controlnet_config.ffn_dim
    ):
        raise CheckpointMismatchError(
            f"the initialisation rule copies GGM blocks into the memory branch: memory_cfg (dim {mem.dim}, ffn "
            f"{mem.ffn_dim}, {mem.num_layers} layers) must match the GGM branch (dim {paper.controlnet_config.dim}, "
            f"ffn {paper.controlnet_config.ffn_dim}, {ggm_blocks} layers)"
        )
    for key in own:
        if key.startswith("memory_branch.memory_blocks."):
            src = "controlnet.controlnet_blocks." + key[len("memory_branch.memory_blocks.") :]
            state[key] = state[src]
        elif key.startswith("memory_branch.memory_patch_embedding."):
            state[key] = state["patch_embedding." + key.rsplit(".", 1)[1]]
        elif key.startswith("memory_branch."):
            # pointmap_embedding, proj_in, proj_out: zero (proj_in only exists when widths differ; it gets
            # the GGM branch's proj_in, which reads the same 5120-wide embedding)
            if key.startswith("memory_branch.proj_in.") and ("controlnet." + key[len("memory_branch.") :]) in state:
                state[key] = state["controlnet." + key[len("memory_branch.") :]]
            else:
                state[key] = torch.zeros_like(own[key], device=camera_state[next(iter(camera_state))].device)
    state = {k: v.to(own[k].dtype) if own[k].device.type != "meta" else v for k, v in state.items()}
    paper.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=own[next(iter(own))].is_meta)
    paper.rebuild_buffers(next(iter(state.values())).device)
    return paper


__all__ = [
    "FULL_MEMORY_CONFIG",
    "PAPER_VARIANTS",
    "POINTMAP_LATENT_CHANNELS",
    "MemoryBranchConfig",
    "PaperInputs",
    "WorldStereoMemoryBranch",
    "WorldStereoPaperTransformer",
    "init_from_camera",
    "pair_attention_mask",
]
