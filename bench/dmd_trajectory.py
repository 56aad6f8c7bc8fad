"""Peak GPU memory and time of one full DMD trajectory at the release's size.

Builds every network at full size with random bf16 weights directly on the GPU — the
WorldStereo DMD transformer (17.4 B), the Wan2.1 VAE, UMT5-XXL and CLIP ViT-H, all resident
(no offload) — and runs ``generate_keyframes``: CLIP + VAE encoding of the conditions, 4 DMD
steps with 8 references (45 240 tokens), and the keyframe decode of 21 frames at 480×832.
The prompt is embedded by running UMT5-XXL on random token ids (no tokenizer files here).

    python bench/dmd_trajectory.py                 # H100/H200
    python bench/dmd_trajectory.py --tiny --device cpu   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKLWan
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.models import build_transformer, init_random_weights
from worldstereo_core.models.encoders import CLIP_VIT_H_CONFIG, UMT5_XXL_CONFIG, CLIPImageEncoder
from worldstereo_core.models.generate import WorldStereoModels, generate_keyframes
from worldstereo_core.models.vae import WAN21_VAE_CONFIG, WanKeyframeVAE
from worldstereo_core.retrieval import References
from worldstereo_core.tiny_configs import (
    build_tiny_transformer,
    tiny_clip_vision_config,
    tiny_umt5_config,
    tiny_vae_config,
)
from worldstereo_core.trajectory import make_preset


def random_module(build, device, dtype, seed):
    """Build on meta, then give random weights on ``device`` (norms 1, biases 0)."""
    with torch.device("meta"):
        module = build()
    return init_random_weights(module, device, dtype, seed=seed).eval()


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--refs", type=int, default=8)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    H, W = (32, 48) if args.tiny else (args.height, args.width)

    t0 = time.perf_counter()
    transformer = random_module(
        lambda: (build_tiny_transformer if args.tiny else build_transformer)("dmd"), device, dtype, 0
    )
    vae_cfg = tiny_vae_config() if args.tiny else dict(WAN21_VAE_CONFIG)
    vae = random_module(lambda: AutoencoderKLWan(**vae_cfg), device, dtype, 1)
    t5_cfg = tiny_umt5_config() if args.tiny else dict(UMT5_XXL_CONFIG)
    t5 = random_module(lambda: UMT5EncoderModel(UMT5Config(**t5_cfg)), device, dtype, 2)
    clip_cfg = tiny_clip_vision_config() if args.tiny else dict(CLIP_VIT_H_CONFIG)
    clip = random_module(lambda: CLIPVisionModel(CLIPVisionConfig(**clip_cfg)), device, dtype, 3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0

    models = WorldStereoModels(transformer, WanKeyframeVAE(vae), None, None, CLIPImageEncoder(clip), "dmd", device)
    g = torch.Generator().manual_seed(0)
    R = args.refs
    kf, image, render, mask, refs = trajectory_inputs(H, W, R, g)

    finite: list[float] = []

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            ids = torch.randint(0, t5_cfg["vocab_size"], (1, 512), generator=g).to(device)
            prompt_embeds = t5(ids).last_hidden_state
            frames = generate_keyframes(
                models,
                image,
                "",
                keyframe_cameras=kf,
                render=render,
                render_mask=mask,
                references=refs,
                sampler="dmd",
                seed=0,
                prompt_embeds=prompt_embeds,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        if tuple(frames.shape) != (len(kf), H, W, 3):
            raise RuntimeError(f"unexpected output shape {tuple(frames.shape)}")
        # random weights give arbitrary (possibly non-finite) pixels; only time and memory matter here
        finite.append(float(torch.isfinite(frames).float().mean()))
        return time.perf_counter() - start

    run()  # warm-up (kernel selection, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = run()
    print(f"device={device} dtype={dtype} {H}x{W} keyframes={len(kf)} references={R} (built in {build_s:.1f}s)")
    print(
        f"resident weights     {sum(p.numel() * p.element_size() for m in (transformer, vae, t5, clip) for p in m.parameters()) / 2**30:.2f} GiB"
    )
    print(f"finite output pixels {finite[-1]:.3f} (random weights)")
    print(f"full DMD trajectory  {seconds:.2f} s (UMT5 + CLIP + VAE encode + 4 steps + 21-keyframe decode)")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU allocated   {peak:.2f} GiB  -> {'fits' if peak < 80 else 'does NOT fit'} in 80 GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
