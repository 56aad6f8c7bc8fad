"""MoGe-2: monocular geometry (affine point map, validity mask, normals, metric scale).

WorldStereo lifts its input image into the first 3D cache with MoGe-2 (microsoft/MoGe, MIT;
the release calls ``moge-2-vitl-normal``). This module is our own implementation of that
network with parameter names and shapes equal to the released checkpoints, so their weights
load unchanged once converted to safetensors.

Architecture (MoGe ``v2``):

* **encoder** — DINOv2 ViT/14 (no registers, LayerScale, pos-embed grid 37×37 interpolated
  bicubically with DINOv2's +0.1 offset). The image is resized to a token grid of about
  ``num_tokens`` patches at its own aspect ratio; the normalised outputs of a few blocks are
  each projected by a 1×1 conv and summed; the class token of the last tapped block feeds the
  scale head.
* **neck** — a 5-level :class:`ConvStack` (token grid → 16× the grid): level 0 gets the
  encoder features, every level gets the normalised view-plane UV (2 channels), upsampling by
  transposed convs (bilinear for the last step), residual conv blocks without normalisation.
* **heads** — ``points_head`` (3: x, y, log z), ``mask_head`` (1, sigmoid), ``normal_head``
  (3, unit) — each a ConvStack over the neck's 5 levels; ``scale_head`` — MLP on the class
  token, ``exp`` of it is the metric scale.

The points are *affine*: correct up to an unknown focal and z shift. :func:`recover_focal_shift`
finds both (or the shift alone when the FoV is known) by least squares on a 64×64 subsample,
as MoGe's inference does; :func:`predict_depth` turns them into z-depth, intrinsics and a
point map (OpenCV camera frame, metric when the scale head exists).

Variants (``moge_config(name)``): ``moge-2-vitl-normal`` (331 M params), ``moge-2-vitl``
(no normal head), ``moge-2-vitb-normal`` (104 M), ``moge-2-vits-normal`` (35 M); the test size is
:data:`worldstereo_core.tiny_configs.TINY_MOGE_CONFIG`. The ViT-S/B variants tap blocks 5 and 11 and
run one residual block per neck level (ViT-L: blocks 5/11/17/23, two per level); the totals match
the published sizes. A
``config.json`` written from a checkpoint's own ``model_config`` always wins over a preset.

Weights: safetensors only. Upstream ships ``model.pt`` pickles; convert them once with the
command in :data:`CONVERT_HINT` (it also writes ``config.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import ArrayLike, as_tensor, like_input
from ..checkpoint import (
    checkpoint_files,
    load_checkpoint,
    read_json,
    save_model_folder,
    stored_config,
)
from ..errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidCameraError,
    InvalidImageError,
    InvalidOptionError,
    MissingFileError,
    UnsafeFileError,
)
from ..pointcloud import unproject_depth_map
from .vit import IMAGENET_MEAN, IMAGENET_STD, DinoViT

__all__ = [
    "CONVERT_HINT",
    "ConvStackConfig",
    "MoGeEncoderConfig",
    "MoGeConfig",
    "MoGeRawOutput",
    "MoGeModel",
    "DepthPrediction",
    "moge_config",
    "moge_head_config",
    "moge_config_from_dict",
    "load_moge",
    "save_moge",
    "predict_depth",
    "normalized_view_plane_uv",
    "recover_focal_shift",
    "focal_to_K",
    "MOGE_VARIANTS",
]


CONVERT_HINT = (
    "convert the upstream MoGe checkpoint once, in a trusted Python with torch installed: "
    'python -c "import json, torch; from safetensors.torch import save_file; '
    "ck = torch.load('model.pt', map_location='cpu', weights_only=True); "
    "save_file({k: v.contiguous() for k, v in ck['model'].items()}, 'model.safetensors', "
    "metadata={'model': 'moge', 'config': json.dumps(ck['model_config'])}); "
    "json.dump(ck['model_config'], open('config.json', 'w'), indent=1)\" "
    "and point the loader at the folder holding model.safetensors + config.json"
)

# DINOv2 ViT sizes by upstream hub name: (embed_dim, depth, num_heads).
_DINOV2_SIZES: dict[str, tuple[int, int, int]] = {
    "dinov2_vits14": (384, 12, 6),
    "dinov2_vitb14": (768, 12, 12),
    "dinov2_vitl14": (1024, 24, 16),
}
_RESAMPLERS = ("pixel_shuffle", "nearest", "bilinear", "conv_transpose", "pixel_unshuffle", "avg_pool", "max_pool")
_NORMS = ("group_norm", "layer_norm", "instance_norm", "none")
_ACTIVATIONS = ("relu", "leaky_relu", "silu", "elu")
_REMAPS = ("linear", "sinh", "exp", "sinh_exp")


# =============================================================================================
# configuration


@dataclass(frozen=True)
class ConvStackConfig:
    """A multi-level conv decoder (upstream ``ConvStack``); lists have one entry per level.

    ``dim_in[i]`` / ``dim_out[i]`` of ``None`` mean "no 1×1 input / output conv at level i";
    ``resamplers`` has one entry per level transition (``len(dim_res_blocks) - 1``).
    """

    dim_in: tuple[int | None, ...]
    dim_res_blocks: tuple[int, ...]
    dim_out: tuple[int | None, ...]
    resamplers: tuple[str, ...]
    num_res_blocks: tuple[int, ...]
    dim_times_res_block_hidden: int = 1
    res_block_in_norm: str = "layer_norm"
    res_block_hidden_norm: str = "group_norm"
    activation: str = "relu"

    def __post_init__(self) -> None:
        n = len(self.dim_res_blocks)
        if n == 0:
            raise CheckpointMismatchError("ConvStack config has no levels (dim_res_blocks is empty)")
        for name in ("dim_in", "dim_out", "num_res_blocks"):
            if len(getattr(self, name)) != n:
                raise CheckpointMismatchError(
                    f"ConvStack config: {name} has {len(getattr(self, name))} entries, dim_res_blocks {n}"
                )
        if len(self.resamplers) != n - 1:
            raise CheckpointMismatchError(
                f"ConvStack config: {len(self.resamplers)} resamplers for {n} levels; need {n - 1}"
            )
        bad = [r for r in self.resamplers if r not in _RESAMPLERS]
        if bad:
            raise CheckpointMismatchError(
                f"ConvStack config: unknown resampler(s) {bad}; supported: {list(_RESAMPLERS)}"
            )
        for name in ("res_block_in_norm", "res_block_hidden_norm"):
            if getattr(self, name) not in _NORMS:
                raise CheckpointMismatchError(
                    f"ConvStack config: {name}={getattr(self, name)!r}; supported: {list(_NORMS)}"
                )
        if self.activation not in _ACTIVATIONS:
            raise CheckpointMismatchError(
                f"ConvStack config: activation={self.activation!r}; supported: {list(_ACTIVATIONS)}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvStackConfig:
        """Parse upstream's ConvStack kwargs (scalars broadcast to every level, as upstream does)."""
        try:
            dims = tuple(int(x) for x in d["dim_res_blocks"])
            n = len(dims)

            def per_level(v: Any, length: int, cast=int) -> tuple:
                if isinstance(v, (list, tuple)):
                    return tuple(None if x is None else cast(x) for x in v)
                return tuple(None if v is None else cast(v) for _ in range(length))

            return cls(
                dim_in=per_level(d.get("dim_in"), n),
                dim_res_blocks=dims,
                dim_out=per_level(d.get("dim_out"), n),
                resamplers=per_level(d["resamplers"], n - 1, str),
                num_res_blocks=per_level(d.get("num_res_blocks", 1), n),
                dim_times_res_block_hidden=int(d.get("dim_times_res_block_hidden", 1)),
                res_block_in_norm=str(d.get("res_block_in_norm", "layer_norm")),
                res_block_hidden_norm=str(d.get("res_block_hidden_norm", "group_norm")),
                activation=str(d.get("activation", "relu")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"MoGe ConvStack config is malformed ({e!r}): {dict(d)}") from e

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim_in": list(self.dim_in),
            "dim_res_blocks": list(self.dim_res_blocks),
            "dim_out": list(self.dim_out),
            "resamplers": list(self.resamplers),
            "num_res_blocks": list(self.num_res_blocks),
            "dim_times_res_block_hidden": self.dim_times_res_block_hidden,
            "res_block_in_norm": self.res_block_in_norm,
            "res_block_hidden_norm": self.res_block_hidden_norm,
            "activation": self.activation,
        }


@dataclass(frozen=True)
class MoGeEncoderConfig:
    """DINOv2 encoder: backbone size, tapped blocks and projection width.

    ``intermediate_layers`` is either a tuple of block indices or an int ``n`` (the last n
    blocks), as upstream. ``img_size`` sets the learnt position-embedding grid (518 → 37×37).
    """

    backbone: str
    intermediate_layers: tuple[int, ...] | int
    dim_out: int
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 518
    patch_size: int = 14

    @property
    def taps(self) -> tuple[int, ...]:
        if isinstance(self.intermediate_layers, int):
            return tuple(range(self.depth - self.intermediate_layers, self.depth))
        return tuple(self.intermediate_layers)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise CheckpointMismatchError(
                f"MoGe encoder: embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}"
            )
        taps = self.taps
        if not taps or any(t < 0 or t >= self.depth for t in taps):
            raise CheckpointMismatchError(
                f"MoGe encoder: intermediate_layers {self.intermediate_layers} outside 0..{self.depth - 1}"
            )
        if self.img_size % self.patch_size:
            raise CheckpointMismatchError(
                f"MoGe encoder: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MoGeEncoderConfig:
        name = str(d.get("backbone", ""))
        if name in _DINOV2_SIZES:
            embed, depth, heads = _DINOV2_SIZES[name]
        elif all(k in d for k in ("embed_dim", "depth", "num_heads")):
            embed, depth, heads = (int(d[k]) for k in ("embed_dim", "depth", "num_heads"))
        else:
            raise CheckpointMismatchError(
                f"MoGe encoder backbone {name!r} is not supported; expected one of {sorted(_DINOV2_SIZES)} "
                "(or a custom backbone with embed_dim, depth and num_heads)"
            )
        layers = d.get("intermediate_layers", 4)
        layers = int(layers) if isinstance(layers, (int, float)) else tuple(int(x) for x in layers)
        return cls(
            backbone=name,
            intermediate_layers=layers,
            dim_out=int(d["dim_out"]),
            embed_dim=int(d.get("embed_dim", embed)),
            depth=int(d.get("depth", depth)),
            num_heads=int(d.get("num_heads", heads)),
            img_size=int(d.get("img_size", 518)),
            patch_size=int(d.get("patch_size", 14)),
        )

    def to_dict(self) -> dict[str, Any]:
        layers = self.intermediate_layers
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "intermediate_layers": layers if isinstance(layers, int) else list(layers),
            "dim_out": self.dim_out,
        }
        if (
            self.backbone not in _DINOV2_SIZES
            or (self.embed_dim, self.depth, self.num_heads) != _DINOV2_SIZES[self.backbone]
        ):
            out.update(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads)
        if self.img_size != 518:
            out["img_size"] = self.img_size
        if self.patch_size != 14:
            out["patch_size"] = self.patch_size
        return out


@dataclass(frozen=True)
class MoGeConfig:
    """Whole MoGe-2 model: encoder, neck, optional heads, output remap, token budget.

    Mirrors upstream's ``model_config`` (:func:`moge_config_from_dict` reads it as stored in a
    checkpoint or its ``config.json``).
    """

    encoder: MoGeEncoderConfig
    neck: ConvStackConfig
    points_head: ConvStackConfig | None
    mask_head: ConvStackConfig | None
    normal_head: ConvStackConfig | None
    scale_head: tuple[int, ...] | None
    remap_output: str = "exp"
    num_tokens_range: tuple[int, int] = (1200, 3600)

    def __post_init__(self) -> None:
        if self.remap_output not in _REMAPS:
            raise CheckpointMismatchError(f"MoGe remap_output={self.remap_output!r}; supported: {list(_REMAPS)}")
        lo, hi = self.num_tokens_range
        if not 0 < lo <= hi:
            raise CheckpointMismatchError(f"MoGe num_tokens_range {self.num_tokens_range} must be 0 < min <= max")
        if self.neck.dim_in[0] != self.encoder.dim_out + 2:
            raise CheckpointMismatchError(
                f"MoGe neck dim_in[0]={self.neck.dim_in[0]} must equal encoder dim_out + 2 = {self.encoder.dim_out + 2} "
                "(features + UV)"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoder": self.encoder.to_dict(), "neck": self.neck.to_dict()}
        for name in ("points_head", "mask_head", "normal_head"):
            head = getattr(self, name)
            if head is not None:
                out[name] = head.to_dict()
        if self.scale_head is not None:
            out["scale_head"] = {"dims": list(self.scale_head)}
        out["remap_output"] = self.remap_output
        out["num_tokens_range"] = list(self.num_tokens_range)
        return out


def moge_config_from_dict(d: Mapping[str, Any]) -> MoGeConfig:
    """Parse upstream's ``model_config`` dict (as in ``model.pt`` / our ``config.json``)."""
    if not isinstance(d, Mapping):
        raise CheckpointMismatchError(f"MoGe config must be a JSON object, got {type(d).__name__}")
    if "model_config" in d and "encoder" not in d:
        d = d["model_config"]
    for key in ("encoder", "neck"):
        if key not in d:
            raise CheckpointMismatchError(
                f"MoGe config has no {key!r} section (keys: {sorted(d)}); is this a MoGe-2 config.json? "
                "MoGe-1 checkpoints (moge-vitl) are not supported"
            )
    heads = {
        k: ConvStackConfig.from_dict(d[k]) if d.get(k) is not None else None
        for k in ("points_head", "mask_head", "normal_head")
    }
    scale = d.get("scale_head")
    return MoGeConfig(
        encoder=MoGeEncoderConfig.from_dict(d["encoder"]),
        neck=ConvStackConfig.from_dict(d["neck"]),
        scale_head=tuple(int(x) for x in scale["dims"]) if scale is not None else None,
        remap_output=str(d.get("remap_output", "linear")),
        num_tokens_range=tuple(int(x) for x in d.get("num_tokens_range", (1200, 3600))),  # type: ignore[arg-type]
        **heads,
    )


def moge_head_config(
    width: int, out: int, res_blocks: int = 1, dims: Sequence[int] = (256, 128, 64, 32)
) -> ConvStackConfig:
    """A MoGe-2 head: reads the 5 neck levels, outputs ``out`` channels at the last level."""
    levels = (width, *dims)
    return ConvStackConfig(
        dim_in=levels,
        dim_res_blocks=levels,
        dim_out=(None,) * (len(levels) - 1) + (out,),
        resamplers=("conv_transpose",) * (len(levels) - 2) + ("bilinear",),
        num_res_blocks=(0,) + (res_blocks,) * (len(levels) - 2) + (0,),
        res_block_in_norm="none",
        res_block_hidden_norm="none",
    )


def _moge2(backbone: str, taps: tuple[int, ...], neck_blocks: int, normals: bool) -> MoGeConfig:
    embed, depth, heads = _DINOV2_SIZES[backbone]
    levels = (embed, 256, 128, 64, 32)
    neck = ConvStackConfig(
        dim_in=(embed + 2, 2, 2, 2, 2),
        dim_res_blocks=levels,
        dim_out=(None,) * 5,
        resamplers=("conv_transpose",) * 3 + ("bilinear",),
        num_res_blocks=(0, neck_blocks, neck_blocks, neck_blocks, 0),
        res_block_in_norm="none",
        res_block_hidden_norm="none",
    )
    return MoGeConfig(
        encoder=MoGeEncoderConfig(backbone, taps, embed, embed, depth, heads),
        neck=neck,
        points_head=moge_head_config(embed, 3),
        mask_head=moge_head_config(embed, 1),
        normal_head=moge_head_config(embed, 3) if normals else None,
        scale_head=(embed, embed, embed, 1),
        remap_output="exp",
        num_tokens_range=(1200, 3600),
    )


MOGE_VARIANTS: dict[str, MoGeConfig] = {
    "moge-2-vitl-normal": _moge2("dinov2_vitl14", (5, 11, 17, 23), 2, True),
    "moge-2-vitl": _moge2("dinov2_vitl14", (5, 11, 17, 23), 2, False),
    "moge-2-vitb-normal": _moge2("dinov2_vitb14", (5, 11), 1, True),
    "moge-2-vits-normal": _moge2("dinov2_vits14", (5, 11), 1, True),
}


def moge_config(name: str = "moge-2-vitl-normal") -> MoGeConfig:
    """Preset config by variant name (``Ruicheng/`` prefixes are accepted)."""
    key = name.split("/")[-1].lower()
    if key not in MOGE_VARIANTS:
        raise InvalidOptionError(f"unknown MoGe variant {name!r}; expected one of {sorted(MOGE_VARIANTS)}")
    return MOGE_VARIANTS[key]


# =============================================================================================
# DINOv2 backbone (recon/vit.py, shared with WorldMirror; parameter names as facebookresearch/dinov2,
# which MoGe vendors)


class _Encoder(nn.Module):
    """DINOv2 on ImageNet-normalised input; tapped features projected (1×1) and summed."""

    def __init__(self, cfg: MoGeEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = DinoViT(
            cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, pos_resize="dinov2"
        )
        self.output_projections = nn.ModuleList(nn.Conv2d(cfg.embed_dim, cfg.dim_out, 1) for _ in cfg.taps)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``image [B, 3, H, W]`` in [0, 1] → features ``[B, dim_out, rows, cols]``, class token ``[B, D]``."""
        p = self.cfg.patch_size
        x = F.interpolate(image, (rows * p, cols * p), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)
        taps = self.backbone.tapped(x, self.cfg.taps)
        feats = sum(
            proj(t[:, 1:].transpose(1, 2).unflatten(2, (rows, cols)).contiguous())
            for proj, t in zip(self.output_projections, taps)
        )
        return feats, taps[-1][:, 0]


# =============================================================================================
# conv decoder (parameter names as MoGe's modules.py)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group_norm":
        return nn.GroupNorm(channels // 32, channels)
    if kind == "layer_norm":
        return nn.GroupNorm(1, channels)
    if kind == "instance_norm":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return {
        "relu": lambda: nn.ReLU(),
        "leaky_relu": lambda: nn.LeakyReLU(0.2),
        "silu": lambda: nn.SiLU(),
        "elu": lambda: nn.ELU(),
    }[kind]()


class _ResidualConvBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))``, 3×3 convs with replicate padding."""

    def __init__(self, channels: int, hidden: int, activation: str, in_norm: str, hidden_norm: str) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _norm(in_norm, channels),
            _activation(activation),
            nn.Conv2d(channels, hidden, 3, padding=1, padding_mode="replicate"),
            _norm(hidden_norm, hidden),
            _activation(activation),
            nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="replicate"),
        )
        self.skip_connection = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + self.skip_connection(x)


def _resampler(kind: str, c_in: int, c_out: int, s: int = 2) -> nn.Sequential:
    conv3 = lambda a, b: nn.Conv2d(a, b, 3, padding=1, padding_mode="replicate")
    if kind == "conv_transpose":
        return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, s, stride=s), conv3(c_out, c_out))
    if kind in ("nearest", "bilinear"):
        up = nn.Upsample(scale_factor=s, mode=kind, align_corners=False if kind == "bilinear" else None)
        return nn.Sequential(up, conv3(c_in, c_out))
    if kind == "pixel_shuffle":
        return nn.Sequential(conv3(c_in, c_out * s * s), nn.PixelShuffle(s), conv3(c_out, c_out))
    if kind == "pixel_unshuffle":
        return nn.Sequential(nn.PixelUnshuffle(s), conv3(c_in * s * s, c_out))
    if kind == "avg_pool":
        return nn.Sequential(conv3(c_in, c_out), nn.AvgPool2d(s, s))
    return nn.Sequential(conv3(c_in, c_out), nn.MaxPool2d(s, s))


class ConvStack(nn.Module):
    """Coarse-to-fine decoder: level i adds its (1×1-projected) input, runs residual blocks,
    emits an (optionally 1×1-projected) output, and is resampled ×2 into level i+1."""

    def __init__(self, cfg: ConvStackConfig) -> None:
        super().__init__()
        io = lambda a, b: nn.Conv2d(a, b, 1) if a is not None and b is not None else nn.Identity()
        dims = cfg.dim_res_blocks
        self.input_blocks = nn.ModuleList(io(a, d) for a, d in zip(cfg.dim_in, dims))
        self.resamplers = nn.ModuleList(_resampler(r, a, b) for a, b, r in zip(dims[:-1], dims[1:], cfg.resamplers))
        self.res_blocks = nn.ModuleList(
            nn.Sequential(
                *(
                    _ResidualConvBlock(
                        d,
                        cfg.dim_times_res_block_hidden * d,
                        cfg.activation,
                        cfg.res_block_in_norm,
                        cfg.res_block_hidden_norm,
                    )
                    for _ in range(n)
                )
            )
            for d, n in zip(dims, cfg.num_res_blocks)
        )
        self.output_blocks = nn.ModuleList(io(d, o) for d, o in zip(dims, cfg.dim_out))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        x = None
        for i, (inp, res, out) in enumerate(zip(self.input_blocks, self.res_blocks, self.output_blocks)):
            feat = inp(inputs[i])
            x = feat if x is None else x + feat
            x = res(x)
            outputs.append(out(x))
            if i < len(self.resamplers):
                x = self.resamplers[i](x)
        return outputs


class _MLP(nn.Sequential):
    def __init__(self, dims: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        super().__init__(*layers)


# =============================================================================================
# model


def normalized_view_plane_uv(
    width: int, height: int, aspect_ratio: float | None = None, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    """MoGe's view-plane UV at pixel centres ``[H, W, 2]``: the half-diagonal has length 1.

    u spans ±(a/√(1+a²))·(W−1)/W and v ±(1/√(1+a²))·(H−1)/H for aspect ratio a = W/H.
    """
    a = width / height if aspect_ratio is None else aspect_ratio
    sx, sy = a / math.sqrt(1 + a * a), 1 / math.sqrt(1 + a * a)
    u = torch.linspace(-sx * (width - 1) / width, sx * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(-sy * (height - 1) / height, sy * (height - 1) / height, height, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


@dataclass(frozen=True)
class MoGeRawOutput:
    """Network outputs at input resolution (batch first).

    Attributes:
        points: ``[B, H, W, 3]`` affine point map (unknown focal and z shift).
        mask: ``[B, H, W]`` validity probability in [0, 1] (``None`` without a mask head).
        normal: ``[B, H, W, 3]`` unit normals, camera frame (``None`` without a normal head).
        metric_scale: ``[B]`` metres per unit (``None`` without a scale head).
    """

    points: torch.Tensor | None
    mask: torch.Tensor | None
    normal: torch.Tensor | None
    metric_scale: torch.Tensor | None


class MoGeModel(nn.Module):
    """MoGe-2 network; ``state_dict()`` keys equal the released checkpoints'."""

    def __init__(self, config: MoGeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or moge_config()
        self.encoder = _Encoder(config.encoder)
        self.neck = ConvStack(config.neck)
        for name in ("points_head", "mask_head", "normal_head"):
            head = getattr(config, name)
            if head is not None:
                setattr(self, name, ConvStack(head))
        if config.scale_head is not None:
            self.scale_head = _MLP(config.scale_head)

    def token_grid(self, height: int, width: int, num_tokens: int) -> tuple[int, int]:
        """Rows × cols of ViT tokens for an image of this aspect: ≈ ``num_tokens`` in all."""
        a = width / height
        return max(1, round(math.sqrt(num_tokens / a))), max(1, round(math.sqrt(num_tokens * a)))

    def forward(self, image: torch.Tensor, num_tokens: int) -> MoGeRawOutput:
        """``image [B, 3, H, W]`` in [0, 1] → :class:`MoGeRawOutput` at ``H × W``."""
        B, _, H, W = image.shape
        rows, cols = self.token_grid(H, W, num_tokens)
        feats, cls = self.encoder(image, rows, cols)
        levels = len(self.config.neck.dim_res_blocks)
        inputs = []
        for level in range(levels):
            uv = normalized_view_plane_uv(cols * 2**level, rows * 2**level, W / H, feats.dtype, feats.device)
            uv = uv.permute(2, 0, 1).unsqueeze(0).expand(B, -1, -1, -1)
            inputs.append(torch.cat([feats, uv], dim=1) if level == 0 else uv)
        neck = self.neck(inputs)

        def head(name: str) -> torch.Tensor | None:
            if not hasattr(self, name):
                return None
            out = getattr(self, name)(neck)[-1]
            return F.interpolate(out, (H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)

        points, normal, mask = head("points_head"), head("normal_head"), head("mask_head")
        if points is not None:
            points = self._remap(points)
        if normal is not None:
            normal = F.normalize(normal, dim=-1)
        if mask is not None:
            mask = mask[..., 0].sigmoid()
        scale = self.scale_head(cls)[:, 0].exp() if hasattr(self, "scale_head") else None
        return MoGeRawOutput(points=points, mask=mask, normal=normal, metric_scale=scale)

    def _remap(self, p: torch.Tensor) -> torch.Tensor:
        kind = self.config.remap_output
        if kind == "sinh":
            return torch.sinh(p)
        if kind == "exp":  # z = exp(log z); x, y are predicted relative to z
            z = p[..., 2:].exp()
            return torch.cat([p[..., :2] * z, z], dim=-1)
        if kind == "sinh_exp":
            return torch.cat([torch.sinh(p[..., :2]), p[..., 2:].exp()], dim=-1)
        return p


# =============================================================================================
# loading


def _read_config(
    config: MoGeConfig | Mapping[str, Any] | str | Path | None,
    weights: Path,
    files: list[Path],
    path: Path,
) -> MoGeConfig:
    if isinstance(config, MoGeConfig):
        return config
    if isinstance(config, Mapping):
        return moge_config_from_dict(config)
    if isinstance(config, (str, Path)) and Path(config).suffix == ".json":
        return moge_config_from_dict(read_json(config, "MoGe config"))
    if isinstance(config, str):
        return moge_config(config)
    stored, _ = stored_config(path, files, "moge", legacy=("model_config",))
    if stored is not None:
        return moge_config_from_dict(stored)
    stem = weights.parent.name.lower() if weights.stem == "model" else weights.stem.lower()
    for name in sorted(MOGE_VARIANTS, key=len, reverse=True):
        if name in stem:
            return MOGE_VARIANTS[name]
    raise MissingFileError(
        f"no MoGe config for {weights}: put the checkpoint's config.json beside it, or pass config= "
        f"one of {sorted(MOGE_VARIANTS)} (or a config dict); " + CONVERT_HINT
    )


def _group(key: str) -> str:
    parts = key.split(".")
    return (".".join(parts[:2]) if parts[0] == "encoder" else parts[0]) + ".*"


def load_moge(
    path: str | Path,
    config: MoGeConfig | Mapping[str, Any] | str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MoGeModel:
    """Build MoGe-2 and load a safetensors checkpoint strictly (:mod:`worldstereo_core.checkpoint`).

    Args:
        path: ``model.safetensors`` or a folder holding it (+ ``config.json``).
        config: a :class:`MoGeConfig`, upstream ``model_config`` dict, path to a JSON config,
            or a variant name; by default ``config.json`` beside the weights, else the file's
            embedded config (``config``; ``model_config`` in files of earlier versions), else a
            variant name found in the file/folder name.

    Raises:
        MissingFileError / UnsafeFileError / CheckpointMismatchError: missing file or config, pickle
            checkpoint, or keys/shapes that do
            not match (names the key groups, e.g. a file without ``normal_head``).
    """
    path = Path(path)
    try:
        files = checkpoint_files(path, "MoGe-2", preferred="model.safetensors")
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{e} ({CONVERT_HINT})") from None
    weights = files[0]
    cfg = _read_config(config, weights, files, path)
    with torch.device("meta"):
        model = MoGeModel(cfg)
    hint = (
        f"is config.json the one written from this checkpoint's model_config (e.g. a -normal variant vs one "
        f"without normals)? (config {cfg.encoder.backbone})"
    )
    load_checkpoint(model, files, None, weights.name, device, dtype, hint, _group)
    return model


def save_moge(model: MoGeModel, folder: str | Path) -> Path:
    """Write ``model.safetensors`` (config in its metadata) and ``config.json``; returns the weights' path."""
    return save_model_folder(model.state_dict(), folder, "moge", model.config.to_dict())


# =============================================================================================
# inference


def _solve_shift(uv: np.ndarray, xyz: np.ndarray, focal: float | None) -> tuple[float, float]:
    """Least squares ``min Σ |f·xy/(z+s) − uv|²`` over ``s`` (and ``f`` when not given).

    For a fixed shift the optimal focal is closed-form, so the 1-D problem in ``s`` is solved
    with Levenberg–Marquardt from ``s = 0`` (as upstream), tighter tolerances than upstream's.
    """
    from scipy.optimize import least_squares

    xy, z = xyz[:, :2].astype(np.float64), xyz[:, 2].astype(np.float64)
    uv = uv.astype(np.float64)

    def best_focal(proj: np.ndarray) -> float:
        return float((proj * uv).sum() / max(np.square(proj).sum(), 1e-30))

    def residual(s: np.ndarray) -> np.ndarray:
        proj = xy / (z + s[0])[:, None]
        f = best_focal(proj) if focal is None else focal
        return (f * proj - uv).ravel()

    sol = least_squares(residual, x0=np.zeros(1), method="lm", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    shift = float(sol.x[0])
    f = best_focal(xy / (z + shift)[:, None]) if focal is None else float(focal)
    return f, shift


def recover_focal_shift(
    points: ArrayLike,
    mask: ArrayLike | None = None,
    focal: ArrayLike | float | None = None,
    downsample_size: tuple[int, int] = (64, 64),
) -> tuple[ArrayLike, ArrayLike]:
    """Focal and z shift that turn an affine point map into camera space.

    Solves ``min Σ |focal · xy / (z + shift) − uv|²`` over valid pixels of a nearest-neighbour
    ``downsample_size`` subsample, ``uv`` from :func:`normalized_view_plane_uv` (principal point
    at the centre, square pixels). Focal is relative to half the image diagonal: in pixels it is
    ``focal · √(W² + H²) / 2``.

    Args:
        points: ``[..., H, W, 3]`` affine point map.
        mask: ``[..., H, W]`` valid pixels (all when ``None``).
        focal: ``[...]`` known focal (then only the shift is solved).

    Returns:
        ``(focal [...], shift [...])``; entries with fewer than 2 valid samples get (1, 0) as
        upstream.
    """
    pts = as_tensor(points)
    if pts.ndim < 3 or pts.shape[-1] != 3:
        raise InvalidImageError(f"points must have shape [..., H, W, 3], got {tuple(pts.shape)}")
    H, W = pts.shape[-3:-1]
    batch = pts.shape[:-3]
    flat = pts.reshape(-1, H, W, 3).float()
    uv = normalized_view_plane_uv(W, H, dtype=flat.dtype, device=flat.device)
    pts_lr = F.interpolate(flat.permute(0, 3, 1, 2), downsample_size, mode="nearest").permute(0, 2, 3, 1)
    uv_lr = F.interpolate(uv.permute(2, 0, 1)[None], downsample_size, mode="nearest")[0].permute(1, 2, 0)
    if mask is not None:
        m = as_tensor(mask).reshape(-1, H, W).to(flat.device)
        m_lr = F.interpolate(m.float()[:, None], downsample_size, mode="nearest")[:, 0] > 0
    else:
        m_lr = torch.ones(pts_lr.shape[:3], dtype=torch.bool, device=flat.device)
    if focal is not None:
        f_in = as_tensor(focal).float().reshape(-1).expand(flat.shape[0]).cpu().numpy()
    pts_np, uv_np, m_np = pts_lr.detach().cpu().numpy(), uv_lr.cpu().numpy(), m_lr.cpu().numpy()
    focals, shifts = [], []
    for i in range(flat.shape[0]):
        # z = 0 (fp underflow of a degenerate prediction) would divide by zero at the start shift 0
        sel = m_np[i] & np.isfinite(pts_np[i]).all(-1) & (pts_np[i][..., 2] != 0)
        if sel.sum() < 2:
            focals.append(1.0 if focal is None else float(f_in[i]))
            shifts.append(0.0)
            continue
        f, s = _solve_shift(uv_np[sel], pts_np[i][sel], None if focal is None else float(f_in[i]))
        focals.append(f)
        shifts.append(s)
    f_t = torch.tensor(focals, dtype=pts.dtype if pts.is_floating_point() else torch.float32).reshape(batch)
    s_t = torch.tensor(shifts, dtype=f_t.dtype).reshape(batch)
    return like_input(f_t, points), like_input(s_t, points)


def focal_to_K(focal: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MoGe's relative focal ``[...]`` → pixel intrinsics ``[..., 3, 3]`` (centre principal point)."""
    f = focal * math.sqrt(width**2 + height**2) / 2
    K = torch.zeros(*f.shape, 3, 3, dtype=f.dtype, device=f.device)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = width / 2
    K[..., 1, 2] = height / 2
    K[..., 2, 2] = 1
    return K


@dataclass(frozen=True)
class DepthPrediction:
    """Monocular geometry of one image (or ``[N, ...]`` of a batch).

    Attributes:
        depth: ``[H, W]`` z-depth (metric when the model has a scale head); 0 where invalid
            (unless ``apply_mask=False``).
        mask: ``[H, W]`` bool, True where the geometry is valid (not sky / not undefined).
        normals: ``[H, W, 3]`` unit normals, OpenCV camera frame; ``None`` without a normal
            head. Zero where invalid.
        K: ``[3, 3]`` intrinsics in pixels of the input image.
        points: ``[H, W, 3]`` camera-frame points (OpenCV); 0 where invalid.
        metric_scale: ``[]`` the scale applied (1 without a scale head).
    """

    depth: ArrayLike
    mask: ArrayLike
    normals: ArrayLike | None
    K: ArrayLike
    points: ArrayLike
    metric_scale: ArrayLike = field(default=None)  # type: ignore[assignment]


def _as_image_batch(image: ArrayLike) -> tuple[torch.Tensor, bool]:
    img = as_tensor(image)
    single = img.ndim == 3
    if single:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] != 3:
        raise InvalidImageError(
            f"image must be [H, W, 3] or [N, H, W, 3] RGB (ComfyUI IMAGE layout), got {tuple(as_tensor(image).shape)}"
        )
    if img.shape[0] == 0 or img.shape[1] < 2 or img.shape[2] < 2:
        raise InvalidImageError(f"image is empty or smaller than 2×2 pixels: {tuple(img.shape)}")
    if img.dtype == torch.uint8:
        img = img.float() / 255
    elif not img.is_floating_point():
        raise InvalidImageError(f"image must be float in [0, 1] or uint8, got {img.dtype}")
    if not torch.isfinite(img).all():
        raise InvalidImageError("image contains NaN or inf values")
    lo, hi = float(img.min()), float(img.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(f"image values must lie in [0, 1] (got {lo:.3g}..{hi:.3g}); divide 8-bit images by 255")
    return img, single


@torch.inference_mode()
def predict_depth(
    model: MoGeModel,
    image: ArrayLike,
    fov_x: float | ArrayLike | None = None,
    resolution_level: int = 9,
    num_tokens: int | None = None,
    force_projection: bool = True,
    apply_mask: bool = True,
    use_fp16: bool = True,
) -> DepthPrediction:
    """MoGe-2 inference (upstream ``infer`` recipe) → depth, mask, normals, K, points.

    Args:
        model: a loaded :class:`MoGeModel`.
        image: ``[H, W, 3]`` (or ``[N, H, W, 3]``) RGB in [0, 1] (uint8 accepted).
        fov_x: known horizontal field of view in degrees (scalar or ``[N]``); ``None`` recovers
            focal and shift from the point map, otherwise only the shift.
        resolution_level: 0..9, picks ``num_tokens`` linearly in the model's token range
            (9 = most tokens, upstream default).
        num_tokens: explicit ViT token budget (overrides ``resolution_level``).
        force_projection: recompute points from depth and K (exact pinhole consistency).
        apply_mask: zero depth, points and normals outside the mask (the mask is returned
            either way; panorama merging keeps the unmasked values, as upstream).
        use_fp16: autocast to fp16 on CUDA (ignored on CPU).

    Returns:
        :class:`DepthPrediction`, same kind (tensor/array) as ``image``; batch dim kept only
        when the input had one.
    """
    img, single = _as_image_batch(image)
    if num_tokens is None:
        if not 0 <= int(resolution_level) <= 9:
            raise InvalidImageError(f"resolution_level must be an integer in 0..9, got {resolution_level}")
        lo, hi = model.config.num_tokens_range
        num_tokens = int(lo + (int(resolution_level) / 9) * (hi - lo))
    elif int(num_tokens) < 1:
        raise InvalidImageError(f"num_tokens must be positive, got {num_tokens}")
    if model.config.points_head is None:
        raise CheckpointMismatchError("this MoGe model has no points_head; it cannot predict depth")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B, H, W, _ = img.shape
    x = img.to(device=device, dtype=dtype).permute(0, 3, 1, 2)
    amp = use_fp16 and device.type == "cuda" and dtype != torch.float16
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        raw = model(x, num_tokens=int(num_tokens))
    points = raw.points.float()
    valid = (
        raw.mask.float() > 0.5
        if raw.mask is not None
        else torch.ones(points.shape[:3], dtype=torch.bool, device=device)
    )
    if fov_x is None:
        focal, shift = recover_focal_shift(points, valid)
    else:
        fov = as_tensor(fov_x).to(torch.float32).reshape(-1).expand(B).to(device)
        if not torch.isfinite(fov).all() or (fov <= 0).any() or (fov >= 180).any():
            raise InvalidCameraError(f"fov_x must be in (0, 180) degrees, got {fov.tolist()}")
        a = W / H
        focal = a / math.sqrt(1 + a * a) / torch.tan(torch.deg2rad(fov) / 2)
        _, shift = recover_focal_shift(points, valid, focal=focal)
    focal, shift = focal.to(device), shift.to(device)
    if not (torch.isfinite(focal) & (focal > 0)).all():
        raise CheckpointMismatchError(
            f"MoGe's point map is degenerate (recovered focal {focal.tolist()} is not positive); the weights "
            "do not fit the config (check the variant / config.json), or give the image's fov_x"
        )
    K = focal_to_K(focal, H, W)
    depth = points[..., 2] + shift[:, None, None]
    valid = valid & (depth > 0) & torch.isfinite(depth)
    if force_projection:
        points = unproject_depth_map(depth, K.to(device))  # camera frame
    else:
        points = torch.cat([points[..., :2], depth[..., None]], dim=-1)
    scale = raw.metric_scale.float() if raw.metric_scale is not None else torch.ones(B, device=device)
    points = points * scale[:, None, None, None]
    depth = depth * scale[:, None, None]
    normal = raw.normal.float() if raw.normal is not None else None
    if apply_mask:
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        points = torch.where(valid[..., None], points, torch.zeros_like(points))
        if normal is not None:
            normal = torch.where(valid[..., None], normal, torch.zeros_like(normal))

    def out(t: torch.Tensor | None) -> ArrayLike | None:
        if t is None:
            return None
        t = t[0] if single else t
        return like_input(t.to(img.device), image)

    return DepthPrediction(
        depth=out(depth), mask=out(valid), normals=out(normal), K=out(K), points=out(points), metric_scale=out(scale)
    )
