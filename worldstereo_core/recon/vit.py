"""The DINOv2 ViT backbone shared by MoGe-2 and WorldMirror, and its transformer blocks.

Both networks embed images with a DINOv2 ViT (patch 14, class token, learned position table;
WorldMirror's adds 4 register tokens) and both checkpoints keep DINOv2's parameter names
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``),
so one module serves both layouts key for key. The blocks also build WorldMirror's alternating
aggregator, which adds QK-norm and a normalised 2D RoPE (:class:`NormalizedRope2D`).

The two releases differ in one place, how the position table is resized to another token grid:
MoGe-2 uses DINOv2's own rule (bicubic with a scale factor of ``(n + 0.1) / m``, no antialiasing),
WorldMirror resizes to the exact grid with antialiased bicubic, and transformers' ``Dinov2Model``
(the release's DINOv2-base image features for its reference cut, :mod:`worldstereo_core.models.dinov2`)
resizes to the exact grid without antialiasing — :class:`DinoViT` takes it as ``pos_resize``.

Images enter ImageNet-normalised (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The normalisation DINOv2 was trained with (both networks apply it before the backbone)."""


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch × patch`` convolution: ``[B, C, H, W]`` → tokens ``[B, (H/p)·(W/p), dim]``."""

    def __init__(self, patch: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out or dim_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x · γ``."""

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class NormalizedRope2D(nn.Module):
    """2D rotary embedding on coordinates normalised to [−1, 1] (DINOv3 style, "separate").

    A ``[rows, cols]`` grid of cells has centres ``(i + 0.5) / rows · 2 − 1`` (same for
    columns); each quarter of the head dimension rotates by ``2π · coord / period``, periods
    ``base^(2k / (head_dim/2))``. The first half of the head channels rotates with ``y`` then
    ``x`` angles, repeated for the second half (``rotate_half`` pairing).
    """

    def __init__(self, head_dim: int, base: float = 100.0) -> None:
        super().__init__()
        quarter = head_dim // 4
        periods = base ** (2 * torch.arange(quarter, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("periods", periods, persistent=True)

    def sincos(self, rows: int, cols: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sin, cos)`` of shape ``[rows·cols, head_dim]`` for the grid in row-major order."""
        ch = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows * 2 - 1
        cw = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols * 2 - 1
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).reshape(-1, 2)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.to(device, torch.float32)[None, None]
        angles = angles.flatten(1).repeat(1, 2)
        return angles.sin().to(dtype), angles.cos().to(dtype)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, N, D]`` with tables ``[N, D]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention (fused ``qkv``), optional per-head QK LayerNorm and 2D RoPE."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, rope: NormalizedRope2D | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        hd = dim // heads
        if qk_norm:
            self.q_norm = nn.LayerNorm(hd)
            self.k_norm = nn.LayerNorm(hd)
        else:
            self.q_norm = self.k_norm = None
        self.proj = nn.Linear(dim, dim)
        # Shared module: its ``periods`` buffer appears under every block, as in WorldMirror's checkpoint.
        self.rope = rope

    def forward(self, x: torch.Tensor, rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope_tables is not None:
            q = apply_rope(q, *rope_tables)
            k = apply_rope(k, *rope_tables)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (DINOv2 / VGGT layout)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        qk_norm: bool = False,
        rope: NormalizedRope2D | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qk_norm, rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, rope_tables=None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope_tables))
        return x + self.ls2(self.mlp(self.norm2(x)))


PosResize = Literal["dinov2", "antialiased", "exact"]


class DinoViT(nn.Module):
    """DINOv2 ViT: patch embedding, class token (+ ``registers`` register tokens), learned position
    table for an ``img_size`` square, ``depth`` blocks, final LayerNorm.

    ``pos_resize`` chooses how the position table follows another grid (see the module docstring):
    ``"dinov2"`` (MoGe-2), ``"antialiased"`` (WorldMirror) or ``"exact"`` (transformers' DINOv2).
    """

    dinov2_interpolate_offset = 0.1  # DINOv2's work-around offset for pos-embed interpolation

    def __init__(
        self,
        img_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        registers: int = 0,
        pos_resize: PosResize = "dinov2",
    ) -> None:
        super().__init__()
        self.patch_size = patch
        self.num_registers = registers
        self.pos_resize = pos_resize
        grid = img_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        # Unused at inference (masked-image training); kept so released weights load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, init_values=1.0, eps=1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if rows * cols == n and rows == cols:
            return pos
        m = int(math.isqrt(n))
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.pos_resize == "dinov2":
            off = self.dinov2_interpolate_offset
            grid = F.interpolate(
                grid, scale_factor=((rows + off) / m, (cols + off) / m), mode="bicubic", antialias=False
            )
        else:
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=self.pos_resize == "antialiased")
        grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)

    def tapped(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """``x [B, 3, 14r, 14c]`` (ImageNet-normalised) → final-normed tokens ``[B, 1 + registers + r·c, D]``
        after each block in ``taps`` (class token first, then registers, then patches row-major)."""
        rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)
        t = t + self._pos_embed(rows, cols).to(t.dtype)
        if self.num_registers:
            t = torch.cat([t[:, :1], self.register_tokens.expand(t.shape[0], -1, -1).to(t.dtype), t[:, 1:]], dim=1)
        out = []
        last = max(taps)
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in taps:
                out.append(self.norm(t))
            if i >= last:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens ``[B, r·c, D]`` of the last block."""
        return self.tapped(x, [len(self.blocks) - 1])[0][:, 1 + self.num_registers :]


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Attention",
    "Block",
    "DinoViT",
    "LayerScale",
    "Mlp",
    "NormalizedRope2D",
    "PatchEmbed",
    "apply_rope",
]
