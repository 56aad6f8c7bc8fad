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

import sys
import time

import torch
from _common import TrajectoryRunner, bench_parser, build_encoders, default_dtype, random_module, sync

from worldstereo_core.models import build_transformer
from worldstereo_core.models.encoders import CLIPImageEncoder
from worldstereo_core.models.generate import WorldStereoModels
from worldstereo_core.models.vae import WanKeyframeVAE
from worldstereo_core.tiny_configs import build_tiny_transformer


def main() -> int:
    p = bench_parser(__doc__)
    p.add_argument("--refs", type=int, default=8)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = default_dtype(device)
    H, W = (32, 48) if args.tiny else (args.height, args.width)

    t0 = time.perf_counter()
    transformer = random_module(
        lambda: (build_tiny_transformer if args.tiny else build_transformer)("dmd"), device, dtype, 0
    )
    vae, t5, clip, t5_cfg = build_encoders(device, dtype, args.tiny)
    sync(device)
    build_s = time.perf_counter() - t0

    models = WorldStereoModels(transformer, WanKeyframeVAE(vae), None, None, CLIPImageEncoder(clip), "dmd", device)
    R = args.refs
    run = TrajectoryRunner(models, t5, t5_cfg, device, H, W, R)

    run()  # warm-up (kernel selection, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = run()
    frames = run.frames
    # random weights give arbitrary (possibly non-finite) pixels; only time and memory matter here
    finite = float(torch.isfinite(frames).float().mean())
    print(f"device={device} dtype={dtype} {H}x{W} keyframes={frames.shape[0]} references={R} (built in {build_s:.1f}s)")
    print(
        f"resident weights     {sum(p.numel() * p.element_size() for m in (transformer, vae, t5, clip) for p in m.parameters()) / 2**30:.2f} GiB"
    )
    print(f"finite output pixels {finite:.3f} (random weights)")
    print(f"full DMD trajectory  {seconds:.2f} s (UMT5 + CLIP + VAE encode + 4 steps + 21-keyframe decode)")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU allocated   {peak:.2f} GiB  -> {'fits' if peak < 80 else 'does NOT fit'} in 80 GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
