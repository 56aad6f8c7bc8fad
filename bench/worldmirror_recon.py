"""Time and peak GPU memory of WorldMirror 2.0 at full size reconstructing one clip.

The default architecture (1.26 B parameters, random weights, bf16) reconstructs 32 frames that
come in at 480×832 (run at 476×826, as upstream sizes WorldStereo's call with target 832),
with camera and intrinsics priors, as WorldStereo calls it after each generated clip.

    python bench/worldmirror_recon.py                  # H100/H200
    python bench/worldmirror_recon.py --tiny --device cpu --frames 4   # smoke test
"""

from __future__ import annotations

import sys
import time

import torch
from _common import bench_parser, default_dtype, sync

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.recon.reconstruct import predict_worldmirror
from worldstereo_core.recon.worldmirror import WorldMirror, WorldMirrorConfig
from worldstereo_core.tiny_configs import tiny_worldmirror_config
from worldstereo_core.trajectory import make_preset


def main() -> int:
    p = bench_parser(__doc__)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--target-size", type=int, default=832)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = default_dtype(device)
    H, W = (56, 84) if args.tiny else (args.height, args.width)
    cfg = tiny_worldmirror_config() if args.tiny else WorldMirrorConfig()
    torch.manual_seed(0)
    with torch.device(device):
        model = WorldMirror(cfg)
    model = model.to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())

    first = Cameras(torch.eye(4)[None], intrinsics_from_fov(70.0, H, W)[None].float(), H, W)
    traj = make_preset("orbit", first, 2.0, num_frames=args.frames)
    frames = torch.rand(args.frames, H, W, 3, generator=torch.Generator().manual_seed(1))

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            pred = predict_worldmirror(model, frames, traj.cameras, target_size=args.target_size, use_priors=True)
        sync(device)
        assert pred.depth.shape[-2:] == (H, W)
        return time.perf_counter() - start

    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = sorted(run() for _ in range(args.repeats))
    print(
        f"device={device} dtype={dtype} WorldMirror params={params / 1e9:.3f} B frames={args.frames} input {H}x{W} "
        f"target {args.target_size} with camera+intrinsics priors"
    )
    print(f"reconstruction       median {times[len(times) // 2]:.3f} s  (min {times[0]:.3f}, max {times[-1]:.3f})")
    if device.type == "cuda":
        print(f"peak GPU allocated   {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
