"""What the benchmark scripts share: the command line, device timing, random-weight networks at
the release's sizes, and the inputs of one denoising step and of one DMD trajectory.

Not a benchmark itself. The scripts in this folder import it as ``_common`` (Python puts a
script's own folder first on ``sys.path``); it puts the repository root there for
``worldstereo_core``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.models import init_random_weights
from worldstereo_core.retrieval import References
from worldstereo_core.trajectory import make_preset

#: Context tokens of the cross-attention: UMT5's padded prompt length (the release's 512) and
#: CLIP ViT-H's 257 image tokens (256 patches + class token).
TEXT_TOKENS, IMAGE_TOKENS = 512, 257


# ----------------------------------------------------------------------------- command line


def bench_parser(doc: str | None, *, size: bool = True) -> argparse.ArgumentParser:
    """The options every script takes: ``--device`` (default cuda), ``--tiny`` (tiny configs and
    sizes: the CPU smoke test) and, with ``size``, the frame ``--height`` / ``--width`` (default
    the release's 480×832)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configs and sizes (CPU smoke test)")
    if size:
        p.add_argument("--height", type=int, default=480, help="frame height (the release's 480)")
        p.add_argument("--width", type=int, default=832, help="frame width (the release's 832)")
    return p


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (what the release runs), float32 on the CPU (the smoke test)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must not stop before the kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- random networks


def random_module(build: Callable[[], torch.nn.Module], device, dtype, seed: int) -> torch.nn.Module:
    """Build on meta, then give random weights on ``device`` (norms 1, biases 0), in eval mode.

    Buffers outside the state dict (transformers' ``position_ids``) are still on meta after
    that: they become real (``position_ids`` an arange, anything else zeros)."""
    with torch.device("meta"):
        module = build()
    module = init_random_weights(module, device, dtype, seed=seed).eval()
    for sub in module.modules():
        for key, b in list(sub._buffers.items()):
            if b is not None and b.is_meta:
                real = torch.arange(b.shape[-1], device=device).expand(b.shape) if "position_ids" in key else None
                sub._buffers[key] = (real if real is not None else torch.zeros(b.shape, device=device)).to(b.dtype)
    return module


def build_encoders(device, dtype, tiny: bool):
    """Random Wan2.1 VAE, UMT5-XXL and CLIP ViT-H (tiny configs with ``tiny``).

    Returns ``(vae, t5, clip, t5_config)``; the config gives the vocabulary for random prompts.
    """
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from worldstereo_core.models.encoders import CLIP_VIT_H_CONFIG, UMT5_XXL_CONFIG
    from worldstereo_core.models.vae import WAN21_VAE_CONFIG
    from worldstereo_core.tiny_configs import tiny_clip_vision_config, tiny_umt5_config, tiny_vae_config

    vae_cfg = tiny_vae_config() if tiny else dict(WAN21_VAE_CONFIG)
    t5_cfg = tiny_umt5_config() if tiny else dict(UMT5_XXL_CONFIG)
    clip_cfg = tiny_clip_vision_config() if tiny else dict(CLIP_VIT_H_CONFIG)
    vae = random_module(lambda: AutoencoderKLWan(**vae_cfg), device, dtype, 1)
    t5 = random_module(lambda: UMT5EncoderModel(UMT5Config(**t5_cfg)), device, dtype, 2)
    clip = random_module(lambda: CLIPVisionModel(CLIPVisionConfig(**clip_cfg)), device, dtype, 3)
    return vae, t5, clip, t5_cfg


# ----------------------------------------------------------------------------- inputs


def step_inputs(cfg: dict, device, dtype, f: int, h: int, w: int, r: int):
    """Random inputs of one denoising step of the memory transformer with config ``cfg``:
    ``f`` target and ``r`` reference latent frames of ``h × w`` latents.

    Returns ``(x, t, kwargs)``: the noisy latent ``[1, 36, f, h, w]``, the timestep and the
    keyword inputs (text and image context, GGM render latent, hole mask and Plücker rays at
    pixel size, SSM reference latents with their keyframe slots, camera quaternion-translations).
    """

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    kw = dict(
        encoder_hidden_states=rand(1, TEXT_TOKENS, cfg["text_dim"]),
        encoder_hidden_states_image=rand(1, IMAGE_TOKENS, cfg["image_dim"]),
        render_latent=rand(1, 16, f, h, w),
        render_mask=(torch.rand(1, 1, f, 8 * h, 8 * w, device=device) > 0.5).to(dtype),
        plucker=rand(1, 6, f, 8 * h, 8 * w),
        reference_latent=rand(1, 36, r, h, w),
        ref_index=torch.arange(r, device=device) % max(f - 1, 1),
        camera_qt=rand(1, f, 7),
        camera_qt_ref=rand(1, r, 7),
    )
    return rand(1, 36, f, h, w), torch.full((1,), 900.0, device=device), kw


def trajectory_inputs(H: int, W: int, R: int, g: torch.Generator):
    """One trajectory's inputs: 21 orbit keyframe cameras, random image / render / hole mask, R random references."""
    first = Cameras(torch.eye(4)[None], intrinsics_from_fov(70.0, H, W)[None].float(), H, W)
    kf = make_preset("orbit", first, 2.0).keyframes()
    image = torch.rand(H, W, 3, generator=g)
    render = torch.rand(len(kf), H, W, 3, generator=g)
    mask = (torch.rand(len(kf), H, W, generator=g) > 0.7).float()
    refs = References(
        images=tuple(torch.rand(H, W, 3, generator=g) for _ in range(R)),
        w2c=kf.w2c[1 : R + 1].clone(),
        K=kf.K[1 : R + 1].clone(),
        ref_index=torch.arange(R) * 2,
        bank_indices=torch.arange(R),
        sources=tuple(f"ref{i}" for i in range(R)),
    )
    return kf, image, render, mask, refs


class TrajectoryRunner:
    """A callable running one whole DMD trajectory: UMT5 on random prompt ids, then
    ``generate_keyframes`` (CLIP + VAE encode, the DMD steps, the keyframe decode) on
    :func:`trajectory_inputs`. A call returns its seconds and keeps its keyframes in ``frames``;
    ``t5_offloaded``: UMT5 lives on the host and visits ``device`` for the prompt."""

    def __init__(self, models, t5, t5_cfg: dict, device, H: int, W: int, R: int, t5_offloaded: bool = False):
        g = torch.Generator().manual_seed(0)
        self.models, self.t5, self.device, self.t5_offloaded = models, t5, device, t5_offloaded
        self.inputs = trajectory_inputs(H, W, R, g)
        self.ids = torch.randint(0, t5_cfg["vocab_size"], (1, 512), generator=g)
        self.shape = (len(self.inputs[0]), H, W, 3)
        self.frames: torch.Tensor | None = None

    def __call__(self) -> float:
        from worldstereo_core.models.generate import PrecomputedConditioning, SamplingSettings, generate_keyframes
        from worldstereo_core.models.offload import on_device

        kf, image, render, mask, refs = self.inputs
        sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            with on_device(self.t5, self.device, enabled=self.t5_offloaded):
                prompt_embeds = self.t5(self.ids.to(self.device)).last_hidden_state
            frames = generate_keyframes(
                self.models,
                image,
                "",
                keyframe_cameras=kf,
                render=render,
                render_mask=mask,
                references=refs,
                sampling=SamplingSettings(sampler="dmd", seed=0),
                conditioning=PrecomputedConditioning(prompt_embeds=prompt_embeds),
            )
        sync(self.device)
        if tuple(frames.shape) != self.shape:
            raise RuntimeError(f"unexpected output shape {tuple(frames.shape)}, want {self.shape}")
        self.frames = frames
        return time.perf_counter() - start
