"""WorldMirror 2.0 (HY-World-2.0 ``worldrecon``): feed-forward multi-view reconstruction.

A VGGT-like network: a DINOv2 ViT-L/14 (with 4 registers) embeds every frame into patch
tokens; 24 pairs of alternating frame-wise / global attention blocks (QK-norm, normalised 2D
RoPE) mix them across views; a camera head (iterative AdaLN refinement of a camera token) and
DPT heads (depth, world points, normals, optional Gaussian-splat features) decode them.

**Priors.** Known cameras enter as tokens, which is how WorldStereo calls it (the generated
frames' cameras are known):

* pose — ``c2w`` (OpenCV), made relative to the first view, camera positions squeezed into a
  unit cube (robust bounds, 10 % padding), encoded as ``[t, q_xyzw]`` (7) → MLP → one token;
* intrinsics — ``[fx/W, fy/H, cx/W, cy/H]`` (4) → MLP → one token, with the principal point in
  WorldMirror's integer pixel centres (``cx − 0.5``; see :func:`K_to_upstream_centres`);
* depth — per-frame percentile-normalised depth (1 %–99 % of the positive values → [0, 1]),
  pixel-unshuffled per patch and MLP-embedded, *added* to the patch tokens.

Missing priors contribute zero tokens. The token layout per frame is
``[camera, 4 registers, pose, rays, patches…]``.

**Outputs** (:class:`WorldMirrorOutput`): depth, world points, normals, their confidences, and
cameras (``c2w`` OpenCV, ``K`` in pixels of the input, pixel centres at u + 0.5 like the rest of the
library: the network's own K is shifted by +0.5 on the way out). The predicted cameras live in the
network's frame (first camera ≈ identity, arbitrary scale); align them to the caller's
frame (e.g. Umeyama on camera centres) before merging.

The default :class:`WorldMirrorConfig` reproduces the upstream constructor defaults; its
state dict equals ``fixtures/checkpoints/worldmirror2_state_dict_schema.json`` key for key, so
the released ``model.safetensors`` loads with ``strict=True``. The same code at toy sizes for CPU
tests is :func:`worldstereo_core.tiny_configs.tiny_worldmirror_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import matrix_to_quaternion, quaternion_to_matrix
from ..checkpoint import (
    checkpoint_files,
    config_dataclass,
    load_checkpoint,
    read_json,
    save_model_folder,
    stored_config,
)
from ..errors import CheckpointMismatchError, InvalidCameraError, InvalidDepthError, InvalidImageError
from ..pointcloud import unproject_depth_map
from .vit import IMAGENET_MEAN, IMAGENET_STD, Block, DinoViT, Mlp, NormalizedRope2D

__all__ = [
    "WorldMirrorConfig",
    "WorldMirrorPriors",
    "WorldMirrorOutput",
    "WorldMirror",
    "load_worldmirror",
    "save_worldmirror",
    "config_from_dict",
    "normalize_prior_poses",
    "normalize_prior_depth",
    "encode_prior_poses",
    "camera_vector_to_matrices",
    "config_to_dict",
]

#: ``format`` tag of our own config JSON (any sizes); upstream's config.json has none.
CONFIG_FORMAT = "worldstereo.WorldMirrorConfig/1"
#: safetensors metadata key under which earlier versions stored that JSON (still read; files are now
#: written with the checkpoint convention of :mod:`worldstereo_core.checkpoint`).
CONFIG_METADATA_KEY = "worldmirror_config"
# Spherical-harmonics band-0 constant, RGB ↔ SH DC coefficient.
_SH_C0 = 0.28209479177387814


# =============================================================================================
# configuration


@dataclass(frozen=True)
class WorldMirrorConfig:
    """Sizes and switches of WorldMirror. Defaults = upstream constructor defaults (large)."""

    img_size: int = 518  # DINOv2 position-embedding grid (518 / 14 = 37)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # alternating frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    # DINOv2 patch embedder (ViT-L/14 with registers)
    dino_depth: int = 24
    dino_heads: int = 16
    intermediate_layers: tuple[int, ...] = (4, 11, 17, 23)
    rope_base: float = 100.0
    # heads
    cam_trunk_depth: int = 4
    cam_heads: int = 16
    dpt_features: int = 256
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    gs_dim: int = 256
    sh_degree: int = 0
    enable_cond: bool = True
    enable_cam: bool = True
    enable_pts: bool = True
    enable_depth: bool = True
    enable_depth_mask: bool = True
    enable_norm: bool = True
    enable_gs: bool = True

    def __post_init__(self) -> None:
        hd = self.embed_dim // self.num_heads
        if self.embed_dim % self.num_heads or hd % 4:
            raise CheckpointMismatchError(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must give a head size divisible by 4 (2D RoPE)"
            )
        il = tuple(self.intermediate_layers)
        if len(il) != 4 or list(il) != sorted(set(il)) or il[0] < 0 or il[-1] >= self.depth:
            raise CheckpointMismatchError(
                f"intermediate_layers must be 4 increasing block indices below depth={self.depth}, got {il}"
            )
        if len(self.dpt_out_channels) != 4:
            raise CheckpointMismatchError(f"dpt_out_channels must have 4 entries, got {self.dpt_out_channels}")

    # Upstream sizes selected by ``model_size`` (they override the explicit numbers there too).
    _MODEL_SIZES = {
        "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, gs_dim=256, num_register_tokens=4),
        "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, gs_dim=256, num_register_tokens=4),
        "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, gs_dim=128, num_register_tokens=4),
    }
    _INTERMEDIATE = {"small": (2, 5, 8, 11), "base": (2, 5, 8, 11), "large": (4, 11, 17, 23)}
    _DINO = {
        "dinov2_vitl14_reg": (24, 16),
        "dinov2_vitb14_reg": (12, 12),
        "dinov2_vits14_reg": (12, 6),
    }

    @classmethod
    def from_upstream(cls, cfg: dict) -> WorldMirrorConfig:
        """Config from an upstream ``config.json`` (WorldMirror constructor arguments)."""
        if not isinstance(cfg, dict):
            raise CheckpointMismatchError(f"WorldMirror config must be a JSON object, got {type(cfg).__name__}")
        size = cfg.get("model_size", "large")
        if size not in cls._MODEL_SIZES:
            raise CheckpointMismatchError(
                f"unknown WorldMirror model_size {size!r}; expected one of {sorted(cls._MODEL_SIZES)}"
            )
        pe = cfg.get("patch_embed", "dinov2_vitl14_reg")
        if pe not in cls._DINO:
            raise CheckpointMismatchError(f"unsupported WorldMirror patch_embed {pe!r}; supported: {sorted(cls._DINO)}")
        strategy = cfg.get("condition_strategy", ["token", "pow3r", "token"])
        if list(strategy) != ["token", "pow3r", "token"]:
            raise CheckpointMismatchError(
                f"unsupported condition_strategy {strategy!r}; only ['token', 'pow3r', 'token'] exists"
            )
        if cfg.get("normalized_rope", True) is False:
            raise CheckpointMismatchError(
                "this WorldMirror config uses the un-normalised RoPE; only normalized_rope=true is supported"
            )
        kw = dict(cls._MODEL_SIZES[size])
        kw["intermediate_layers"] = cls._INTERMEDIATE[size]
        kw["dino_depth"], kw["dino_heads"] = cls._DINO[pe]
        for key in ("img_size", "patch_size"):
            if key in cfg:
                kw[key] = int(cfg[key])
        if "rope_base" in cfg:
            kw["rope_base"] = float(cfg["rope_base"])
        for key in (
            "enable_cond",
            "enable_cam",
            "enable_pts",
            "enable_depth",
            "enable_depth_mask",
            "enable_norm",
            "enable_gs",
        ):
            if key in cfg:
                kw[key] = bool(cfg[key])
        return cls(**kw)


# =============================================================================================
# building blocks (the ViT ones live in recon/vit.py, shared with MoGe-2)


class _Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class _DepthPatchEmbed(nn.Module):
    """Depth prior → patch tokens: pixel-unshuffle each patch (p² values) → MLP (pow3r style)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.PixelUnshuffle(patch), _Permute(0, 2, 3, 1), Mlp(patch * patch, 4 * dim, dim), _Permute(0, 3, 1, 2)
        )

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.proj(depth).flatten(2).transpose(1, 2)


def _mlp_embed(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))


# =============================================================================================
# priors


def normalize_prior_poses(c2w: torch.Tensor, padding: float = 0.1) -> torch.Tensor:
    """Squeeze camera positions of ``c2w [B, S, 3|4, 4]`` into [0, 1]³ (rotations untouched).

    Per batch item: bounds are the 5 %/95 % quantiles of the positions when there are more than
    10 cameras, else min/max; the largest extent (≥ 1e-6) divided by ``1 − 2·padding`` maps to
    1, the bounds' midpoint to 0.5; results are clamped to [0, 1].
    """
    pos = c2w[..., :3, 3]
    S = pos.shape[1]
    if S > 10:
        lo = torch.quantile(pos, 0.05, dim=1, keepdim=True)
        hi = torch.quantile(pos, 0.95, dim=1, keepdim=True)
    else:
        lo = pos.amin(1, keepdim=True)
        hi = pos.amax(1, keepdim=True)
    eps = torch.clamp(hi.abs() * 1e-6, min=1e-6)
    extent = torch.maximum(hi - lo, eps).amax(-1, keepdim=True).clamp(1e-6, 1e6)
    scale = extent / (1 - 2 * padding)
    new_pos = ((pos - (lo + hi) / 2) / scale + 0.5).clamp(0.0, 1.0)
    out = c2w.clone()
    out[..., :3, 3] = new_pos
    return out


def encode_prior_poses(c2w: torch.Tensor) -> torch.Tensor:
    """``c2w [B, S, 4, 4]`` → the 7-vector per view the pose embedding sees: ``[t, q_xyzw]``.

    The poses are first made relative to the first view (``c2w_0⁻¹ · c2w_i``, as the release's
    pipeline does) and their positions normalised with :func:`normalize_prior_poses`.
    """
    rel = torch.linalg.inv(c2w[:, :1].double()) @ c2w.double()
    rel = normalize_prior_poses(rel)
    return torch.cat([rel[..., :3, 3], matrix_to_quaternion(rel[..., :3, :3])[..., [1, 2, 3, 0]]], -1).to(c2w.dtype)


def normalize_prior_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-frame depth ``[B, S, H, W]`` → [0, 1] by the 1 %/99 % quantiles of its positive values.

    Frames with ≤ 100 usable values use min/max; zero/invalid depth maps to 0.
    """
    B, S, H, W = depth.shape
    flat = torch.nan_to_num(depth.float(), nan=0.0, posinf=1e6, neginf=0.0).reshape(B * S, H * W)
    out = torch.empty_like(flat)
    for i in range(flat.shape[0]):  # per-frame quantiles of a variable subset: a short loop
        d = flat[i]
        vals = d[d > 0] if bool((d > 0).any()) else d
        if vals.numel() > 100:
            lo, hi = torch.quantile(vals, 0.01), torch.quantile(vals, 0.99)
        else:
            lo, hi = vals.min(), vals.max()
        if bool(hi == lo):
            hi = lo + 1.0
        eps = max(1e-6, float((hi - lo).abs()) * 1e-6)
        out[i] = ((d - lo) / (hi - lo + eps)).clamp(0.0, 1.0)
    return out.reshape(B, S, H, W).to(depth.dtype)


@dataclass(frozen=True)
class WorldMirrorPriors:
    """Known geometry for the input views (any subset may be None).

    Attributes:
        c2w: ``[B, S, 4, 4]`` camera-to-world, OpenCV.
        K: ``[B, S, 3, 3]`` intrinsics in pixels of the model's input images.
        depth: ``[B, S, h, w]`` z-depth (0 = unknown); resized bilinearly to the input size.
    """

    c2w: torch.Tensor | None = None
    K: torch.Tensor | None = None
    depth: torch.Tensor | None = None


# =============================================================================================
# aggregator


class VisualGeometryTransformer(nn.Module):
    """DINOv2 patch tokens + special tokens → alternating frame / global attention."""

    def __init__(self, cfg: WorldMirrorConfig) -> None:
        super().__init__()
        C, p = cfg.embed_dim, cfg.patch_size
        self.cfg = cfg
        self.patch_embed = DinoViT(
            cfg.img_size, p, C, cfg.dino_depth, cfg.dino_heads, cfg.num_register_tokens, pos_resize="antialiased"
        )
        if cfg.enable_cond:
            self.pose_embed = _mlp_embed(7, C)
            self.depth_embed = _DepthPatchEmbed(p, C)
            self.ray_embed = _mlp_embed(4, C)
        self.rope = NormalizedRope2D(C // cfg.num_heads, cfg.rope_base)
        self.frame_blocks = nn.ModuleList(
            [Block(C, cfg.num_heads, cfg.mlp_ratio, 0.01, qk_norm=True, rope=self.rope) for _ in range(cfg.depth)]
        )
        self.global_blocks = nn.ModuleList(
            [Block(C, cfg.num_heads, cfg.mlp_ratio, 0.01, qk_norm=True, rope=self.rope) for _ in range(cfg.depth)]
        )
        # index 0: the first (reference) view; index 1: every other view
        self.cam_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.reg_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, C) * 1e-6)
        self.patch_start_idx = 1 + cfg.num_register_tokens + (2 if cfg.enable_cond else 0)
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _per_view(token: torch.Tensor, B: int, S: int) -> torch.Tensor:
        t = torch.cat([token[:, :1].expand(B, 1, -1, -1), token[:, 1:].expand(B, S - 1, -1, -1)], 1)
        return t.reshape(B * S, *token.shape[2:])

    def forward(
        self,
        images: torch.Tensor,
        pose_vec: torch.Tensor | None = None,
        rays: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """``images [B, S, 3, H, W]`` in [0, 1] → 4 intermediate outputs ``[B, S, T, 2C]``
        (frame ‖ global tokens after the blocks in ``intermediate_layers``)."""
        B, S, _, H, W = images.shape
        p = self.cfg.patch_size
        h, w = H // p, W // p
        x = (images.reshape(B * S, 3, H, W) - self._mean.to(images.dtype)) / self._std.to(images.dtype)
        patches = self.patch_embed(x)  # [B·S, h·w, C]
        C = patches.shape[-1]
        special = [self._per_view(self.cam_token, B, S), self._per_view(self.reg_token, B, S)]
        if self.cfg.enable_cond:
            zeros = patches.new_zeros(B * S, 1, C)
            pose_tok = (
                self.pose_embed(pose_vec.reshape(B * S, 7).to(patches.dtype))[:, None]
                if pose_vec is not None
                else zeros
            )
            ray_tok = self.ray_embed(rays.reshape(B * S, 4).to(patches.dtype))[:, None] if rays is not None else zeros
            if depth is not None:
                patches = patches + self.depth_embed(depth.reshape(B * S, 1, H, W).to(patches.dtype))
            special += [pose_tok, ray_tok]
        tokens = torch.cat(special + [patches], 1)
        T = tokens.shape[1]

        # RoPE positions: patches sit at (row + 1, col + 1) of a (h + 1) × (w + 1) grid, every
        # special token at cell (0, 0) — the release's layout, normalised over that grid.
        sin, cos = self.rope.sincos(h + 1, w + 1, tokens.device, tokens.dtype)
        rr, cc = torch.meshgrid(torch.arange(1, h + 1), torch.arange(1, w + 1), indexing="ij")
        idx = torch.cat([torch.zeros(self.patch_start_idx, dtype=torch.long), (rr * (w + 1) + cc).flatten()])
        idx = idx.to(tokens.device)
        frame_rope = (sin[idx], cos[idx])
        global_rope = (frame_rope[0].repeat(S, 1), frame_rope[1].repeat(S, 1))

        outputs = []
        keep = set(self.cfg.intermediate_layers)
        for i in range(self.cfg.depth):
            tokens = self.frame_blocks[i](tokens.reshape(B * S, T, C), frame_rope)
            frame_out = tokens.reshape(B, S, T, C)
            tokens = self.global_blocks[i](tokens.reshape(B, S * T, C), global_rope)
            global_out = tokens.reshape(B, S, T, C)
            if i in keep:
                outputs.append(torch.cat([frame_out, global_out], -1))
        return outputs


# =============================================================================================
# camera head


class CameraHead(nn.Module):
    """Iterative camera regression from the camera token: 9-vector ``[t, q_xyzw, fov_v, fov_u]``.

    The vector describes the world-to-camera ``[R | t]``; 4 refinement steps, each modulating
    the normed camera token (AdaLN shift/scale/gate from the current estimate) through a
    trunk of attention blocks across views.
    """

    def __init__(self, dim: int, trunk_depth: int = 4, heads: int = 16) -> None:
        super().__init__()
        self.refine_net = nn.Sequential(*[Block(dim, heads, 4.0, 0.01) for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim)
        self.out_norm = nn.LayerNorm(dim)
        self.init_token = nn.Parameter(torch.zeros(1, 1, 9))
        self.param_embed = nn.Linear(9, dim)
        self.adapt_norm_gen = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adapt_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.param_predictor = Mlp(dim, dim // 2, 9)

    def forward(self, last_tokens: torch.Tensor, steps: int = 4) -> torch.Tensor:
        """``last_tokens [B, S, T, dim]`` → ``[B, S, 9]`` after ``steps`` refinements."""
        cam = self.token_norm(last_tokens[:, :, 0])
        B, S, _ = cam.shape
        pred = None
        for _ in range(steps):
            inp = self.param_embed(self.init_token.expand(B, S, -1) if pred is None else pred.detach()).to(cam.dtype)
            shift, scale, gate = self.adapt_norm_gen(inp).chunk(3, dim=-1)
            feat = gate * (self.adapt_norm(cam) * (1 + scale) + shift) + cam
            delta = self.param_predictor(self.out_norm(self.refine_net(feat)))
            pred = delta if pred is None else pred + delta
        # activations: translation and quaternion linear, field of view ReLU
        return torch.cat([pred[..., :7], F.relu(pred[..., 7:])], -1)


# Pixel centres. HY-World-2.0 puts pixel (u, v)'s centre at (u, v): its unprojection samples
# ``arange(W)``/``arange(H)`` (hyworldmirror/models/utils/geometry.py, depth_to_camera_coords, lines
# 32-33; _compute_points_from_depth in utils/inference_utils.py line 602 and the splat means in
# models/models/rasterization.py lines 501-510 go through it), its predicted K puts the principal
# point at (W/2, H/2) (models/utils/camera_utils.py, vector_to_camera_matrices, lines 71-72) and its
# intrinsics prior token reads cx/W, cy/H of a K in that convention (models/models/worldmirror.py lines
# 676-678; HY-World-2.0 commit 05d3035). Everything else here keeps centres at (u + 0.5, v + 0.5), so K
# is converted at this edge, both ways; points, depth clouds and splat means then equal upstream's.
UPSTREAM_PIXEL_CENTRE_SHIFT = 0.5


def K_to_upstream_centres(K: torch.Tensor) -> torch.Tensor:
    """Our ``K [..., 3, 3]`` (centres at u + 0.5) → WorldMirror's (centres at u): ``cx − 0.5, cy − 0.5``."""
    out = K.clone()
    out[..., :2, 2] -= UPSTREAM_PIXEL_CENTRE_SHIFT
    return out


def K_from_upstream_centres(K: torch.Tensor) -> torch.Tensor:
    """WorldMirror's ``K [..., 3, 3]`` (centres at u) → ours (centres at u + 0.5): ``cx + 0.5, cy + 0.5``."""
    out = K.clone()
    out[..., :2, 2] += UPSTREAM_PIXEL_CENTRE_SHIFT
    return out


def camera_vector_to_matrices(vec: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 9]`` camera vectors → (``c2w [..., 4, 4]``, ``K [..., 3, 3]``) in our conventions.

    The network's principal point is the image centre in its integer-centre pixels, (W/2, H/2);
    in ours (centres at u + 0.5) that is (W/2 + 0.5, H/2 + 0.5).
    """
    R = quaternion_to_matrix(vec[..., [6, 3, 4, 5]])  # the network writes (x, y, z, w)
    t = vec[..., :3]
    c2w = torch.zeros(vec.shape[:-1] + (4, 4), dtype=vec.dtype, device=vec.device)
    Rt = R.transpose(-1, -2)
    c2w[..., :3, :3] = Rt
    c2w[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    c2w[..., 3, 3] = 1
    K = torch.zeros(vec.shape[:-1] + (3, 3), dtype=vec.dtype, device=vec.device)
    K[..., 0, 0] = width * 0.5 / torch.tan(vec[..., 8] * 0.5)
    K[..., 1, 1] = height * 0.5 / torch.tan(vec[..., 7] * 0.5)
    K[..., 0, 2] = width * 0.5
    K[..., 1, 2] = height * 0.5
    K[..., 2, 2] = 1
    return c2w, K_from_upstream_centres(K)


# =============================================================================================
# DPT heads


def _uv_embed(h: int, w: int, aspect: float, channels: int, device, dtype) -> torch.Tensor:
    """Sinusoidal embedding ``[channels, h, w]`` of a centred UV grid spanning the image
    diagonal-normalised extent (x ∈ ±aspect/diag, y ∈ ±1/diag, cell centres)."""
    diag = math.sqrt(aspect**2 + 1)
    sx, sy = aspect / diag, 1 / diag
    xs = torch.linspace(-sx * (w - 1) / w, sx * (w - 1) / w, w, dtype=torch.float64, device=device)
    ys = torch.linspace(-sy * (h - 1) / h, sy * (h - 1) / h, h, dtype=torch.float64, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    omega = 1.0 / 100.0 ** (torch.arange(channels // 4, dtype=torch.float64, device=device) / (channels / 4.0))
    ox = gx.reshape(-1, 1) * omega
    oy = gy.reshape(-1, 1) * omega
    emb = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1).float()
    return emb.reshape(h, w, channels).permute(2, 0, 1).to(dtype)


class _ResidualConvUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The release applies an in-place ReLU to x before the convolutions, so its skip adds
        # ReLU(x), not x. Reproduced explicitly (the weights were trained that way).
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class _FusionBlock(nn.Module):
    def __init__(self, c: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        if has_residual:
            self.resConfUnit1 = _ResidualConvUnit(c)
        self.resConfUnit2 = _ResidualConvUnit(c)
        self.has_residual = has_residual

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], features: int, out_dim: int) -> None:
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.refinenet1 = _FusionBlock(features)
        self.refinenet2 = _FusionBlock(features)
        self.refinenet3 = _FusionBlock(features)
        self.refinenet4 = _FusionBlock(features, has_residual=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, out_dim, 1)
        )


class DPTHead(nn.Module):
    """Dense head: 4 token levels → multi-scale fusion → per-pixel ``out_dim`` channels.

    ``forward`` returns the pre-activation output ``[N, out_dim, H, W]`` and the 128-channel
    (``features // 2``) fused feature map the Gaussian head uses.
    """

    def __init__(
        self, dim_in: int, patch: int, out_dim: int, features: int, out_channels: tuple[int, ...], gs: bool = False
    ) -> None:
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in out_channels])
        c = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], 4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = _Scratch(tuple(out_channels), features, out_dim)
        if gs:
            self.input_merger = nn.Sequential(nn.Conv2d(3, features // 2, 7, padding=3), nn.ReLU())
        self.gs = gs

    def forward(
        self, levels: list[torch.Tensor], images: torch.Tensor, patch_start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``levels``: 4 × ``[N, T, dim_in]`` tokens of ``N`` frames; ``images [N, 3, H, W]`` in [0, 1]."""
        N, _, H, W = images.shape
        h, w = H // self.patch, W // self.patch
        feats = []
        for proj, resize, tok in zip(self.projects, self.resize_layers, levels):
            t = self.norm(tok[:, patch_start:])
            f = proj(t.transpose(1, 2).reshape(N, -1, h, w))
            f = f + 0.1 * _uv_embed(h, w, W / H, f.shape[1], f.device, f.dtype)
            feats.append(resize(f))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = s.refinenet4(l4, size=l3.shape[-2:])
        out = s.refinenet3(out, l3, size=l2.shape[-2:])
        out = s.refinenet2(out, l2, size=l1.shape[-2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = F.interpolate(out, size=(h * self.patch, w * self.patch), mode="bilinear", align_corners=True)
        fused = out + 0.1 * _uv_embed(out.shape[-2], out.shape[-1], W / H, out.shape[1], out.device, out.dtype)
        raw = s.output_conv2(fused)
        if self.gs:
            fused = fused + self.input_merger(images.to(fused.dtype))
        return raw, fused


class GaussianParamHead(nn.Module):
    """Gaussian-splat parameters per pixel from the GS head's features (module ``gs_renderer``).

    Only the parameter prediction is implemented; rasterising splats needs gsplat/CUDA and is
    not part of reconstruction.
    """

    def __init__(self, feature_dim: int, sh_degree: int = 0) -> None:
        super().__init__()
        self.n_sh = (sh_degree + 1) ** 2
        raw = 4 + 3 + 1 + 3 * self.n_sh + 1
        self.gs_head = nn.Sequential(
            nn.Conv2d(feature_dim // 2, feature_dim, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(feature_dim, raw, 1),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.gs_head(feats)


# =============================================================================================
# model


@dataclass(frozen=True)
class WorldMirrorOutput:
    """Predictions for ``B`` batches of ``S`` views of ``H × W`` (heads switched off → None).

    Attributes:
        depth, depth_conf: ``[B, S, H, W]`` z-depth and confidence (≥ 1).
        depth_mask: ``[B, S, H, W]`` probability that the depth is valid (sigmoid).
        points, points_conf: ``[B, S, H, W, 3]`` world points and ``[B, S, H, W]`` confidence.
        normals, normals_conf: ``[B, S, H, W, 3]`` unit normals and confidence.
        camera_params: ``[B, S, 9]`` raw ``[t, q_xyzw, fov_v, fov_u]`` (world-to-camera).
        c2w, K: ``[B, S, 4, 4]`` camera-to-world (OpenCV), ``[B, S, 3, 3]`` intrinsics in pixels.
        splats: Gaussian parameters ``{means [B,S,H,W,3], quats [..,4], scales [..,3],
            opacities, sh [.., n_sh, 3], weights, depth, depth_conf}`` when the GS head ran.
    """

    depth: torch.Tensor | None = None
    depth_conf: torch.Tensor | None = None
    depth_mask: torch.Tensor | None = None
    points: torch.Tensor | None = None
    points_conf: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    normals_conf: torch.Tensor | None = None
    camera_params: torch.Tensor | None = None
    c2w: torch.Tensor | None = None
    K: torch.Tensor | None = None
    splats: dict | None = field(default=None)


class WorldMirror(nn.Module):
    """WorldMirror 2.0 reconstruction network (see the module docstring)."""

    def __init__(self, config: WorldMirrorConfig | None = None) -> None:
        super().__init__()
        cfg = config or WorldMirrorConfig()
        self.config = cfg
        C2, p = 2 * cfg.embed_dim, cfg.patch_size
        self.visual_geometry_transformer = VisualGeometryTransformer(cfg)
        if cfg.enable_cam:
            self.cam_head = CameraHead(C2, cfg.cam_trunk_depth, cfg.cam_heads)
        dm = 1 if cfg.enable_depth_mask else 0
        oc = cfg.dpt_out_channels
        if cfg.enable_pts:
            self.pts_head = DPTHead(C2, p, 4, cfg.dpt_features, oc)
        if cfg.enable_depth:
            self.depth_head = DPTHead(C2, p, 2 + dm, cfg.dpt_features, oc)
        if cfg.enable_norm:
            self.norm_head = DPTHead(C2, p, 4, cfg.dpt_features, oc)
        if cfg.enable_gs:
            self.gs_head = DPTHead(C2, p, 2 + dm, cfg.gs_dim, oc, gs=True)
            self.gs_renderer = GaussianParamHead(cfg.gs_dim, cfg.sh_degree)

    def rebuild_buffers(self, device: torch.device | str) -> None:
        """Recreate the non-persistent ImageNet normalisation buffers on ``device`` (after a ``meta`` build)."""
        vgt = self.visual_geometry_transformer
        vgt._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        vgt._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, images: torch.Tensor, priors: WorldMirrorPriors | None) -> None:
        p = self.config.patch_size
        if not isinstance(images, torch.Tensor) or images.ndim != 5 or images.shape[2] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InvalidImageError(f"WorldMirror images must be a tensor [B, S, 3, H, W] in [0, 1], got {shape}")
        B, S, _, H, W = images.shape
        if S == 0 or H == 0 or W == 0:
            raise InvalidImageError(f"WorldMirror needs at least one non-empty view, got shape {tuple(images.shape)}")
        if H % p or W % p:
            raise InvalidImageError(
                f"WorldMirror image size {H}×{W} must be a multiple of the patch size {p}; resize to e.g. "
                f"{round(H / p) * p}×{round(W / p) * p}"
            )
        if priors is None:
            return
        if priors.c2w is not None and tuple(priors.c2w.shape) != (B, S, 4, 4):
            raise InvalidCameraError(
                f"prior c2w must have shape [B, S, 4, 4] = {(B, S, 4, 4)}, got {tuple(priors.c2w.shape)}"
            )
        if priors.c2w is not None and not torch.isfinite(priors.c2w).all():
            raise InvalidCameraError("prior c2w contains NaN or inf values")
        if priors.K is not None:
            if tuple(priors.K.shape) != (B, S, 3, 3):
                raise InvalidCameraError(
                    f"prior K must have shape [B, S, 3, 3] = {(B, S, 3, 3)}, got {tuple(priors.K.shape)}"
                )
            if (
                not torch.isfinite(priors.K).all()
                or (priors.K[..., 0, 0] <= 0).any()
                or (priors.K[..., 1, 1] <= 0).any()
            ):
                raise InvalidCameraError(
                    "prior K must be finite with positive focal lengths (pixels of the input images)"
                )
        if priors.depth is not None:
            d = priors.depth
            if d.ndim != 4 or tuple(d.shape[:2]) != (B, S):
                raise InvalidDepthError(
                    f"prior depth must have shape [B, S, h, w] with B, S = {B}, {S}, got {tuple(d.shape)}"
                )
            if not (d > 0).any():
                raise InvalidDepthError(
                    "prior depth has no positive value; pass depth=None instead of an all-invalid map"
                )

    def encode_priors(self, images: torch.Tensor, priors: WorldMirrorPriors | None):
        """``(pose_vec [B,S,7] | None, rays [B,S,4] | None, depth [B,S,H,W] | None)`` for the aggregator."""
        if priors is None or not self.config.enable_cond:
            return None, None, None
        H, W = images.shape[-2:]
        pose = encode_prior_poses(priors.c2w.to(images.device).float()) if priors.c2w is not None else None
        rays = None
        if priors.K is not None:
            K = K_to_upstream_centres(priors.K.to(images.device).float())
            rays = torch.stack([K[..., 0, 0] / W, K[..., 1, 1] / H, K[..., 0, 2] / W, K[..., 1, 2] / H], -1)
        depth = None
        if priors.depth is not None:
            d = priors.depth.to(images.device).float()
            if d.shape[-2:] != (H, W):
                d = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)
            depth = normalize_prior_depth(d)
        return pose, rays, depth

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor, priors: WorldMirrorPriors | None = None, *, frames_chunk_size: int = 8
    ) -> WorldMirrorOutput:
        """Reconstruct ``images [B, S, 3, H, W]`` in [0, 1] (H, W multiples of 14).

        ``frames_chunk_size`` runs the dense heads on that many frames at a time (memory only;
        results do not depend on it).
        """
        self._check_inputs(images, priors)
        cfg = self.config
        B, S, _, H, W = images.shape
        pose, rays, depth_prior = self.encode_priors(images, priors)
        levels = self.visual_geometry_transformer(images, pose, rays, depth_prior)
        start = self.visual_geometry_transformer.patch_start_idx
        out: dict = {}

        if cfg.enable_cam:
            vec = self.cam_head(levels[-1]).float()
            out["camera_params"] = vec
            out["c2w"], out["K"] = camera_vector_to_matrices(vec, H, W)

        flat_levels = [lv.reshape(B * S, lv.shape[2], lv.shape[3]) for lv in levels]
        flat_images = images.reshape(B * S, 3, H, W)

        def run(head: DPTHead) -> tuple[torch.Tensor, torch.Tensor]:
            raws, feats = [], []
            step = max(1, int(frames_chunk_size))
            for a in range(0, B * S, step):
                r, f = head([lv[a : a + step] for lv in flat_levels], flat_images[a : a + step], start)
                raws.append(r.float())
                feats.append(f)
            raw = torch.cat(raws).permute(0, 2, 3, 1).reshape(B, S, H, W, -1)
            return raw, torch.cat(feats)

        def conf(x: torch.Tensor) -> torch.Tensor:
            return 1 + x.exp()

        if cfg.enable_depth:
            raw, _ = run(self.depth_head)
            out["depth"] = raw[..., 0].exp()
            out["depth_conf"] = conf(raw[..., 1])
            if cfg.enable_depth_mask:
                out["depth_mask"] = raw[..., 2].sigmoid()
        if cfg.enable_pts:
            raw, _ = run(self.pts_head)
            x = raw[..., :3]
            out["points"] = torch.sign(x) * torch.expm1(x.abs())
            out["points_conf"] = conf(raw[..., 3])
        if cfg.enable_norm:
            raw, _ = run(self.norm_head)
            out["normals"] = raw[..., :3] / raw[..., :3].norm(dim=-1, keepdim=True)
            out["normals_conf"] = conf(raw[..., 3])
        if cfg.enable_gs:
            raw, feats = run(self.gs_head)
            params = self.gs_renderer(feats).float().permute(0, 2, 3, 1).reshape(B, S, H, W, -1)
            n_sh = self.gs_renderer.n_sh
            quats, scales, opac, sh_res, weights = torch.split(params, [4, 3, 1, 3 * n_sh, 1], dim=-1)
            sh = sh_res.reshape(B, S, H, W, n_sh, 3).clone()
            sh[..., 0, :] = sh[..., 0, :] + (images.permute(0, 1, 3, 4, 2).float() - 0.5) / _SH_C0
            gs_depth = raw[..., 0].exp()
            splats = {
                "quats": quats / (quats.norm(dim=-1, keepdim=True) + 1e-8),
                "scales": scales.exp().clamp_max(0.3),
                "opacities": opac[..., 0].sigmoid(),
                "sh": sh,
                "weights": weights[..., 0].sigmoid(),
                "depth": gs_depth,
                "depth_conf": conf(raw[..., 1]),
            }
            if "c2w" in out:
                means = unproject_depth_map(
                    gs_depth.reshape(B * S, H, W), out["K"].reshape(B * S, 3, 3), out["c2w"].reshape(B * S, 4, 4)
                )
                splats["means"] = means.reshape(B, S, H, W, 3)
            out["splats"] = splats
        return WorldMirrorOutput(**out)


# =============================================================================================
# loading


def load_worldmirror(
    weights: str | Path,
    config: WorldMirrorConfig | dict | str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WorldMirror:
    """Build WorldMirror and stream a ``.safetensors`` checkpoint into it, keys checked strictly
    (:mod:`worldstereo_core.checkpoint`; never the whole state dict in host memory).

    ``weights``: ``model.safetensors`` or the folder holding it. ``config`` may be a
    :class:`WorldMirrorConfig`, an upstream config dict, a path to the upstream ``config.json`` (or
    ours, :func:`config_to_dict`), or None (``config.json`` beside the weights, else the file's
    embedded config — ``worldmirror_config`` in files of earlier versions —, else the default layout).
    Mismatching files raise :class:`CheckpointMismatchError` naming the key groups.
    """
    path = Path(weights)
    files = checkpoint_files(path, "WorldMirror", preferred="model.safetensors")
    if config is None:
        config, _ = stored_config(path, files, "worldmirror", legacy=(CONFIG_METADATA_KEY,))
    if isinstance(config, (str, Path)):
        config = read_json(config, "WorldMirror config")
    if isinstance(config, dict):
        config = config_from_dict(config)
    cfg = config or WorldMirrorConfig()
    with torch.device("meta"):
        model = WorldMirror(cfg)
    hint = (
        "Is this an HY-WorldMirror-2.0 model.safetensors, with its config.json beside it (heads switched off "
        "or another model_size)?"
    )
    return load_checkpoint(model, files, None, files[0].name, device, dtype, hint, depth=2)


def config_to_dict(cfg: WorldMirrorConfig) -> dict:
    """Plain-JSON form of a config (tuples as lists), tagged with :data:`CONFIG_FORMAT` so
    :func:`config_from_dict` tells it from an upstream ``config.json``."""
    d = {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in fields(cfg)}
    d["format"] = CONFIG_FORMAT
    return d


def config_from_dict(d: dict) -> WorldMirrorConfig:
    """A config from JSON: ours (:func:`config_to_dict`, any sizes, e.g. the tiny test model)
    or upstream's ``config.json`` (:meth:`WorldMirrorConfig.from_upstream`)."""
    if not isinstance(d, dict):
        raise CheckpointMismatchError(f"WorldMirror config must be a JSON object, got {type(d).__name__}")
    if d.get("format") != CONFIG_FORMAT:
        return WorldMirrorConfig.from_upstream(d)
    ours = {k: v for k, v in d.items() if k != "format"}
    return config_dataclass(
        WorldMirrorConfig, ours, "WorldMirror config", convert=lambda _, v: tuple(v) if isinstance(v, list) else v
    )


def save_worldmirror(model: WorldMirror, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors`` (config in its metadata) and ``folder/config.json``
    (:func:`config_to_dict`), which :func:`load_worldmirror` reads back with no other argument.
    Returns the weights' path."""
    return save_model_folder(model.state_dict(), folder, "worldmirror", config_to_dict(model.config))
