"""Time and peak GPU memory of one training step of each stage at full size (issue 14's H200 gate).

Builds the released-size networks with random bf16 weights directly on the GPU (no weights can be
downloaded on the device machine): the WorldStereo camera transformer (camera stage), the paper-SSM
transformer (memory stage; dmd stage: teacher, generator and fake score), and the Wan2.1 VAE. Text
and CLIP embeddings are random tensors of the real shapes (UMT5-XXL and CLIP are frozen encoders that
training runs once per clip, not per step). The data is one synthetic clip rendered by the oracle at
the requested resolution, 21 keyframes of 81 poses, through the same sample preparation and step
code as ``python -m worldstereo_core train``. Gradient checkpointing is on; frozen weights are bf16,
trained ones fp32 (AdamW master copy), compute under bf16 autocast.

    python3 bench/train_step.py --stage camera            # H200: prints time/step, peak memory, resolution
    python3 bench/train_step.py --stage memory
    python3 bench/train_step.py --stage dmd               # generator + fake score distil the last 4 blocks
    python3 bench/train_step.py --stage camera --tiny --device cpu   # smoke test

DMD at full size: the generator and the fake score share every frozen module with the real score
(one resident ~37 GB bf16 network) and hold their own fp32 copies of what they train. Training the
whole backbone of both needs their gradients and optimizer moments sharded over several GPUs, so on
one GPU ``--dmd-blocks`` (default 4) distils the last main blocks only (two trainable copies of 4
blocks with fp32 AdamW moments: ~52 GB). The printed line says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKLWan
from dmd_trajectory import random_module

from worldstereo_core.models import build_transformer
from worldstereo_core.models.vae import WAN21_VAE_CONFIG, WanKeyframeVAE
from worldstereo_core.tiny_configs import build_tiny_transformer, tiny_vae_config
from worldstereo_core.training import trainer as T


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=T.STAGES)
    p.add_argument("--device", default="cuda")
    p.add_argument("--height", type=int, default=240, help="reduced from the release's 480 (multiple of 16)")
    p.add_argument("--width", type=int, default=416, help="reduced from the release's 832 (multiple of 16)")
    p.add_argument("--keyframes", type=int, default=21)
    p.add_argument("--steps", type=int, default=3, help="steps to run; the first is warm-up, the rest are timed")
    p.add_argument("--dmd-blocks", type=int, default=4, help="dmd: main blocks distilled (the last N)")
    p.add_argument("--tiny", action="store_true", help="tiny networks (smoke test on CPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    H, W = (32, 48) if args.tiny else (args.height, args.width)
    F = 5 if args.tiny else args.keyframes
    size = "tiny" if args.tiny else "full"
    settings = T.TrainSettings(
        stage=args.stage,
        out=Path("/tmp/ws_train_bench"),
        size=size,
        steps=args.steps,
        height=H,
        width=W,
        num_keyframes=F,
        clip_poses=4 * (F - 1) + 1,
        num_samples=1,
        batch=1,
        dtype="bf16" if dtype == torch.bfloat16 else "fp32",
        gradient_checkpointing=True,
        progress=False,
        init=Path("/nonexistent") if args.stage == "dmd" else None,
    ).resolved()

    variant = "camera" if args.stage == "camera" else "paper"
    model = random_module(
        lambda: (build_tiny_transformer if args.tiny else build_transformer)(variant), device, dtype, 0
    )
    vae_cfg = tiny_vae_config() if args.tiny else dict(WAN21_VAE_CONFIG)
    vae = WanKeyframeVAE(random_module(lambda: AutoencoderKLWan(**vae_cfg), device, dtype, 1).eval())
    text_dim, image_dim = model.config.text_dim, model.config.image_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    cond = T.Conditioner(
        vae,
        lambda prompts: torch.randn(len(prompts), 512, text_dim, generator=gen).to(device, dtype),
        lambda image: torch.randn(1, 257, image_dim, generator=gen).to(device, dtype),
        latent_cond_mode="full_vae",
    )

    if args.stage == "dmd":
        from worldstereo_core.training.dmd import DMDTrainer

        model.ws_config = dataclasses.replace(model.ws_config)
        trainer = DMDTrainer(settings, device, teacher=model, trainable_blocks=args.dmd_blocks)
    else:
        trainer = T.FlowMatchingTrainer(settings, device, model=model)
    t0 = time.perf_counter()
    prepared, empty = T.prepare_samples(T.load_samples(settings), cond, device)
    prep_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            record = trainer.step(prepared[0], empty, vae, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        print(f"step {i + 1}: {times[-1]:.2f} s, loss {record['loss']:.4f}", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    timed = times[1:] or times
    note = f", distilling the last {args.dmd_blocks} blocks" if args.stage == "dmd" else ""
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.stage}: {sum(timed) / len(timed):.2f} s/step (mean of {len(timed)} after warm-up), "
        f"peak {peak:.1f} GiB, {H}x{W}, {F} keyframes, batch 1, gradient checkpointing, {settings.dtype}{note} "
        f"[{dev_name}; sample preparation {prep_s:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
