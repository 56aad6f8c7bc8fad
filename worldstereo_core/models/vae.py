"""The Wan2.1 VAE in keyframe mode, I2V conditioning and the ComfyUI IMAGE edge.

WorldStereo works on 21 *keyframes* of an 81-pose trajectory. Unlike Wan's causal video VAE (4 frames
per latent frame), every keyframe is encoded and decoded **independently** as a one-frame video, so
keyframe ``i`` ↔ latent frame ``i``. Keyframes are batched along the batch dimension (the Wan VAE is
per-sample, so this equals the release's frame-by-frame loop). Latents are normalised with Wan's
per-channel ``latents_mean`` / ``latents_std``: ``z_n = (z − mean) · (1 / std)``, exactly as the release.

Video tensors at the model boundary are ``[B, C, F, H, W]`` in ``[-1, 1]``; ComfyUI IMAGE batches
(``[N, H, W, 3]`` in ``[0, 1]``) are converted by :func:`images_to_video` / :func:`video_to_images`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKLWan

from ..checkpoint import (
    checkpoint_files,
    open_tensor_source,
    stored_config,
)
from ..errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    ShapeMismatchError,
)
from .conversion import load_converted, plan_wan_vae

SPATIAL_MULTIPLE = 16
"""Frame sizes must be multiples of 16: the VAE downsamples by 8 and the transformer patchifies by 2."""

I2V_MASK_CHANNELS = 4
ConditionMode = Literal["full_vae", "first_frame_only"]

WAN21_VAE_CONFIG: Mapping[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [
        -0.7571,
        -0.7089,
        -0.9113,
        0.1075,
        -0.1745,
        0.9653,
        -0.1517,
        1.5508,
        0.4134,
        -0.0715,
        0.5517,
        -0.3632,
        -0.1922,
        -0.9497,
        0.2503,
        -0.2921,
    ],
    "latents_std": [
        2.8184,
        1.4541,
        2.3275,
        2.6558,
        1.2196,
        1.7708,
        2.6052,
        2.0743,
        3.2687,
        2.1526,
        2.8652,
        1.5579,
        1.6382,
        1.1253,
        2.8251,
        1.9160,
    ],
}
"""``AutoencoderKLWan`` config of Wan2.1 (the single-file ``wan_2.1_vae.safetensors`` carries none)."""


def check_spatial_size(height: int, width: int, what: str = "frames") -> None:
    """Raise :class:`ShapeMismatchError` unless both sizes are positive multiples of 16."""
    if height <= 0 or width <= 0 or height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE:
        fix_h = max(SPATIAL_MULTIPLE, round(height / SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE)
        fix_w = max(SPATIAL_MULTIPLE, round(width / SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE)
        raise ShapeMismatchError(
            f"{what} are {height}×{width} (H×W); the video model needs multiples of {SPATIAL_MULTIPLE}. "
            f"Resize to e.g. {fix_h}×{fix_w} (the released buckets: 480×768, 512×720, 576×640, 608×608, "
            "640×576, 720×512, 768×480; panoramas 480×832)"
        )


# ------------------------------------------------------------------------------------ ComfyUI edge


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[F, H, W, 3]`` in ``[0, 1]`` → one video ``[1, 3, F, H, W]`` in ``[-1, 1]``.

    A fourth (alpha) channel is dropped, as ComfyUI's own encoders do.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidImageError(f"expected a ComfyUI IMAGE batch [N, H, W, 3]; got {shape}")
    if not images.is_floating_point():
        raise InvalidImageError(f"IMAGE must be float in [0, 1]; got dtype {images.dtype}")
    rgb = images[..., :3]
    lo, hi = float(rgb.min()), float(rgb.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3 or not (rgb.isfinite().all()):
        raise InvalidImageError(
            f"IMAGE values must lie in [0, 1] (got min {lo:.3g}, max {hi:.3g}); it looks like a [-1, 1] or 0–255 "
            "tensor — rescale it first"
        )
    return (rgb.permute(3, 0, 1, 2).unsqueeze(0) * 2.0 - 1.0).contiguous()


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """Video ``[B, 3, F, H, W]`` in ``[-1, 1]`` → ComfyUI IMAGE ``[B·F, H, W, 3]`` float32 in ``[0, 1]``."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ShapeMismatchError(f"expected a video [B, 3, F, H, W]; got {tuple(video.shape)}")
    out = (video.float().clamp(-1.0, 1.0) + 1.0) * 0.5
    return out.permute(0, 2, 3, 4, 1).reshape(-1, video.shape[3], video.shape[4], 3).contiguous()


# ---------------------------------------------------------------------------------- I2V condition


def i2v_mask(
    batch: int,
    num_latent_frames: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The I2V mask ``[B, 4, F, h, w]``: 1 on every channel of latent frame 0 (the given image), 0 elsewhere.

    Wan packs the 4 video frames of a latent frame into 4 channels; in keyframe mode the release sets all
    four of the first latent frame and none of the others.
    """
    mask = torch.zeros(batch, I2V_MASK_CHANNELS, num_latent_frames, height, width, device=device, dtype=dtype)
    mask[:, :, 0] = 1.0
    return mask


def i2v_condition(
    first_frame_latent: torch.Tensor,
    num_latent_frames: int,
    fill_latent: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 20-channel I2V condition ``concat[mask (4), condition latent (16)]`` → ``[B, 20, F, h, w]``.

    ``first_frame_latent`` is either ``[B, 16, 1, h, w]`` (the normalised latent of the first keyframe,
    release mode ``first_frame_only``; the other frames then take ``fill_latent`` ``[B|1, 16, 1, h, w]``,
    which the release sets to the normalised latent of an all-zero ``[-1, 1]`` frame, i.e. mid-grey — not
    zeros; ``None`` uses latent zeros) or already ``[B, 16, F, h, w]`` (release mode ``full_vae``: the
    causal encoding of ``[image, 0, 0, …]``). The transformer's 36-channel input is
    ``concat[noisy latent (16), this (20)]``.
    """
    if first_frame_latent.ndim != 5:
        raise ShapeMismatchError(f"first_frame_latent must be [B, C, F, h, w]; got {tuple(first_frame_latent.shape)}")
    b, c, f, h, w = first_frame_latent.shape
    if num_latent_frames < 1:
        raise InvalidOptionError(f"num_latent_frames must be ≥ 1; got {num_latent_frames}")
    if f == num_latent_frames:
        latent = first_frame_latent
    elif f == 1:
        if fill_latent is None:
            fill = first_frame_latent.new_zeros(b, c, num_latent_frames - 1, h, w)
        else:
            if fill_latent.ndim != 5 or fill_latent.shape[1:] != (c, 1, h, w) or fill_latent.shape[0] not in (1, b):
                raise ShapeMismatchError(
                    f"fill_latent must be [B or 1, {c}, 1, {h}, {w}]; got {tuple(fill_latent.shape)}"
                )
            fill = fill_latent.to(first_frame_latent).expand(b, c, num_latent_frames - 1, h, w)
        latent = torch.cat([first_frame_latent, fill], dim=2)
    else:
        raise ShapeMismatchError(
            f"first_frame_latent has {f} latent frames; give 1 (the first keyframe) or all {num_latent_frames}"
        )
    mask = i2v_mask(b, num_latent_frames, h, w, device=latent.device, dtype=latent.dtype)
    return torch.cat([mask, latent], dim=1)


# ------------------------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class LatentStats:
    """Wan's per-channel latent statistics ``mean [C]`` and ``std [C]`` (from the VAE config)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, 1/std)`` shaped ``[1, C, 1, 1, 1]`` on ``like``'s device and dtype (the release's order:
        the reciprocal is taken in float32, then cast)."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        inv_std = (1.0 / torch.tensor(self.std)).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std


def conv_weights_memory_format(
    module: torch.nn.Module, memory_format: torch.memory_format = torch.channels_last_3d
) -> None:
    """Lay every 5-D (3-D convolution) weight of ``module`` out in ``memory_format`` (default channels-last),
    in place; values and shapes stay. ``Module.to(memory_format=…)`` refuses a module that also holds
    lower-rank parameters, hence one parameter at a time."""
    for param in module.parameters():
        if param.ndim == 5 and not param.is_contiguous(memory_format=memory_format):
            param.data = param.data.contiguous(memory_format=memory_format)


def _first_frame_conv(conv: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A causal 3-D convolution of a one-frame input with nothing cached, as the 2-D convolution it is.

    Wan's causal convolutions pad ``k_t − 1`` zero frames in front; for a single frame only the kernel's
    last temporal tap meets data, so the result is that 2-D slice of the weight applied to the frame —
    the same sum without the ``k_t − 1`` taps of zeros (a third of the work for ``k_t = 3``).
    ``x`` ``[B, C, 1, H, W]`` → ``[B, C', 1, H', W']``."""
    pad_w, _, pad_h, _, _, _ = conv._padding
    frame = torch.nn.functional.pad(x[:, :, 0], (pad_w, pad_w, pad_h, pad_h))
    out = torch.nn.functional.conv2d(
        frame, conv.weight[:, :, -1], conv.bias, stride=conv.stride[1:], dilation=conv.dilation[1:], groups=conv.groups
    )
    return out.unsqueeze(2)


class _FirstFrameConvs:
    """While active, every causal convolution of ``vae`` that gets one frame with nothing cached — each
    keyframe of the keyframe mode, the first chunk of a causal video — runs :func:`_first_frame_conv`;
    every other call (cached frames, several frames) runs diffusers' own forward. Patches the instances
    only (never diffusers' class), and only for the duration of a call of ours."""

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.convs = [
            m
            for m in vae.modules()
            if type(m).__name__ == "WanCausalConv3d"
            and hasattr(m, "_padding")
            and m._padding[4] == m.kernel_size[0] - 1  # causal: all k_t − 1 temporal pads in front
            and m.dilation[0] == 1
        ]

    def __enter__(self) -> _FirstFrameConvs:
        # a forward already set on an instance (someone's hook or compiled forward) is kept and restored
        self.saved = [conv.__dict__.get("forward") for conv in self.convs]
        for conv, own in zip(self.convs, self.saved):
            conv.forward = self._forward_of(conv, own)
        return self

    def __exit__(self, *exc: object) -> None:
        for conv, own in zip(self.convs, self.saved):
            if own is None:
                conv.__dict__.pop("forward", None)
            else:
                conv.forward = own

    @staticmethod
    def _forward_of(conv: torch.nn.Conv3d, own):
        def stock(x: torch.Tensor, cache_x: torch.Tensor | None) -> torch.Tensor:
            return own(x, cache_x) if own is not None else type(conv).forward(conv, x, cache_x)

        def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
            if x.shape[2] == 1 and cache_x is None:
                return _first_frame_conv(conv, x)
            return stock(x, cache_x)

        return forward


class WanKeyframeVAE:
    """Keyframe-mode wrapper over diffusers' ``AutoencoderKLWan``. It never changes a weight's value; it
    does lay the 3-D convolution weights out channels-last when made (:func:`conv_weights_memory_format`).

    ``keyframes_per_batch`` bounds how many one-frame videos go through the VAE at once (memory).

    Speed, same sums (bench/trajectory_phases.py ``--vae-variants``, H100, 2026-12-05, 480×832, bf16):
    a one-frame causal convolution runs as the 2-D convolution it is (:class:`_FirstFrameConvs`) and the
    3-D convolution weights are laid out channels-last (cuDNN then skips its layout transposes). Against
    diffusers' path on the same weights: 29 keyframes encoded in 239 instead of 466 ms, 21 decoded in
    287 instead of 525 ms, the 81-frame I2V condition in 1 024 instead of 1 170 ms. Results differ
    from diffusers' path only by the summation order: ≤ 3e-16 in float64; in bf16 the largest
    absolute difference over those outputs was 0.035.
    """

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, vae: AutoencoderKLWan, keyframes_per_batch: int = 8) -> None:
        if keyframes_per_batch < 1:
            raise InvalidOptionError(f"keyframes_per_batch must be ≥ 1; got {keyframes_per_batch}")
        self.vae = vae
        conv_weights_memory_format(vae, torch.channels_last_3d)
        self.keyframes_per_batch = int(keyframes_per_batch)
        cfg = vae.config
        self.stats = LatentStats(tuple(float(x) for x in cfg.latents_mean), tuple(float(x) for x in cfg.latents_std))
        self.z_dim = int(cfg.z_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    # -- normalisation
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent → model latent: ``(z − mean) · (1 / std)``."""
        mean, inv_std = self.stats.tensors(z)
        return (z - mean) * inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Model latent → raw VAE latent: ``z / (1 / std) + mean``."""
        mean, inv_std = self.stats.tensors(z)
        return z / inv_std + mean

    # -- checks
    def _check_video(self, video: torch.Tensor, what: str) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ShapeMismatchError(f"{what} must be a video [B, 3, F, H, W] in [-1, 1]; got {shape}")
        if video.shape[2] < 1:
            raise InvalidInputError(f"{what} has no frames")
        check_spatial_size(int(video.shape[3]), int(video.shape[4]), what)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != self.z_dim:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ShapeMismatchError(f"latents must be [B, {self.z_dim}, F, h, w]; got {shape}")

    # -- keyframe mode
    @torch.no_grad()
    def encode_keyframes(self, video: torch.Tensor) -> torch.Tensor:
        """Keyframes ``[B, 3, F, H, W]`` in ``[-1, 1]`` → normalised latents ``[B, 16, F, H/8, W/8]``.

        Each frame is encoded alone (a one-frame video) with the posterior mode (the release's
        ``argmax``); frames never see each other.
        """
        self._check_video(video, "keyframes")
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, 1, h, w).to(self.device, self.dtype)
        with _FirstFrameConvs(self.vae):
            parts = [self.vae.encode(chunk).latent_dist.mode() for chunk in frames.split(self.keyframes_per_batch)]
        z = torch.cat(parts, dim=0)  # [B·F, 16, 1, h, w]
        z = z.reshape(b, f, *z.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
        return self.normalize(z)

    @torch.no_grad()
    def decode_keyframes(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, 16, F, h, w]`` → keyframes ``[B, 3, F, 8h, 8w]`` clipped to ``[-1, 1]``,
        each latent frame decoded alone."""
        self._check_latents(latents)
        b, c, f, h, w = latents.shape
        z = self.denormalize(latents.to(self.device, self.dtype))
        z = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, 1, h, w)
        with _FirstFrameConvs(self.vae):
            parts = [self.vae.decode(chunk, return_dict=False)[0] for chunk in z.split(self.keyframes_per_batch)]
        x = torch.cat(parts, dim=0)  # [B·F, 3, 1, H, W]
        x = x.reshape(b, f, *x.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
        return x.clamp(-1.0, 1.0)

    # -- causal video mode (the release's "full_vae" I2V condition)
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """A causal video ``[B, 3, 1 + 4k, H, W]`` → normalised latents ``[B, 16, 1 + k, H/8, W/8]``."""
        self._check_video(video, "video")
        t = video.shape[2]
        if (t - 1) % self.temporal_factor:
            raise ShapeMismatchError(f"a causal Wan video needs 1 + 4k frames; got {t}")
        with _FirstFrameConvs(self.vae):  # the first frame goes alone through the causal encoder
            z = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()
        return self.normalize(z)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, 16, 1 + k, h, w]`` → a causal video ``[B, 3, 1 + 4k, 8h, 8w]`` in ``[-1, 1]``.

        One causal pass over all latent frames (Wan's video decode, what Uni3C's pipeline does), so
        latent frame 0 gives frame 0 and every later latent frame gives four frames.
        """
        self._check_latents(latents)
        z = self.denormalize(latents.to(self.device, self.dtype))
        with _FirstFrameConvs(self.vae):
            return self.vae.decode(z, return_dict=False)[0].clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_condition(
        self,
        image: torch.Tensor,
        num_latent_frames: int = 21,
        mode: ConditionMode = "full_vae",
    ) -> torch.Tensor:
        """The I2V condition ``[B, 20, F, h, w]`` for a first frame ``[B, 3, H, W]`` in ``[-1, 1]``.

        ``full_vae`` (the release pipelines' default): the causal VAE encodes the video
        ``[image, 0 × 4(F−1)]`` (81 frames for F = 21) in one pass. ``first_frame_only``: the image and one
        all-zero frame are encoded alone and the zero frame's latent fills frames 1…F−1.
        """
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ShapeMismatchError(f"first frame must be [B, 3, H, W] in [-1, 1]; got {shape}")
        frame = image.unsqueeze(2)
        if mode == "full_vae":
            zeros = frame.new_zeros(frame.shape[0], 3, (num_latent_frames - 1) * self.temporal_factor, *frame.shape[3:])
            latent = self.encode_video(torch.cat([frame, zeros], dim=2))
            return i2v_condition(latent, num_latent_frames)
        if mode == "first_frame_only":
            first = self.encode_keyframes(frame)
            fill = self.encode_keyframes(torch.zeros_like(frame[:1]))
            return i2v_condition(first, num_latent_frames, fill_latent=fill)
        raise InvalidOptionError(f"unknown I2V condition mode {mode!r}; use 'full_vae' or 'first_frame_only'")


# ------------------------------------------------------------------------------------------ loading


def _vae_config_for(path: Path, files: list[Path]) -> dict[str, Any]:
    """``config.json`` of a diffusers ``vae/`` folder, else the file's embedded config, else Wan2.1's."""
    cfg, where = stored_config(path, files, "wan_vae", single_file_too=False)
    if cfg is None:
        return dict(WAN21_VAE_CONFIG)
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"{where} must hold a JSON object (the AutoencoderKLWan config)")
    if cfg.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise CheckpointMismatchError(f"{where} describes a {cfg['_class_name']}, not the Wan VAE (AutoencoderKLWan)")
    return cfg


def load_wan_vae(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    config: Mapping[str, Any] | None = None,
    keyframes_per_batch: int = 8,
) -> WanKeyframeVAE:
    """Load the Wan2.1 VAE from a diffusers folder (``<wan>/vae`` or the Wan root), or from a single
    safetensors file in either the diffusers or the original Wan layout (ComfyUI's ``wan_2.1_vae``).

    The network is built on ``meta`` and each tensor streamed to ``device``/``dtype``. ``config``
    overrides the architecture (default: the folder's ``config.json``, else the file's embedded config —
    see :mod:`worldstereo_core.checkpoint` —, else the Wan2.1 config).
    """
    path = Path(path)
    if path.is_dir() and (path / "vae").is_dir():
        path = path / "vae"
    files = checkpoint_files(path, "Wan VAE")
    cfg = dict(config) if config is not None else _vae_config_for(path, files)
    with open_tensor_source(files) as (keys, get):
        plan = plan_wan_vae(keys, num_res_blocks=int(cfg.get("num_res_blocks", 2)))
        if "decoder.conv_in.weight" in plan.targets:
            z_in = get.shape(plan.source_key("decoder.conv_in.weight"))[1]  # type: ignore[attr-defined]
            if z_in != cfg.get("z_dim", 16):
                raise CheckpointMismatchError(
                    f"this VAE has {z_in} latent channels; WorldStereo runs on the Wan2.1 VAE (16 channels). "
                    "Wan2.2's 48-channel VAE does not fit — use wan_2.1_vae.safetensors"
                )
        with torch.device("meta"):
            vae = AutoencoderKLWan.from_config(cfg)
        load_converted(vae, plan, get, "Wan VAE", device, dtype)
    return WanKeyframeVAE(vae, keyframes_per_batch=keyframes_per_batch)


__all__ = [
    "I2V_MASK_CHANNELS",
    "SPATIAL_MULTIPLE",
    "WAN21_VAE_CONFIG",
    "LatentStats",
    "WanKeyframeVAE",
    "check_spatial_size",
    "i2v_condition",
    "i2v_mask",
    "images_to_video",
    "load_wan_vae",
    "video_to_images",
]
