"""Benchmark of the point-cloud renderer (GGM condition renders).

Renders a synthetic cloud (points on a wavy surface in front of the cameras, random colours)
along a small orbit and prints the median time of ``render_point_cloud`` next to a baseline
measured in the same run: the projection-only cost (one batched K·[R|t] transform of every
point into every frame, the floor any splatting renderer pays). With ``--exact-frames N`` it
also times the exact all-pairs reference rasteriser on N frames and extrapolates to all frames.

On CPU it also prints the process CPU time per render and the load average: on a shared
machine the wall time of a multi-threaded run mostly measures the other tenants (an OpenMP
thread that is descheduled stalls every parallel region of its partner; ``--omp-passive``
sets ``OMP_WAIT_POLICY=PASSIVE`` so waiting threads sleep instead of spinning). A
``--threads 1`` run's CPU time is the robust figure there.

    python bench/render_bench.py --points 1000000 --frames 21 --height 480 --width 832 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--omp-passive" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # must precede OpenMP's start (importing torch)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worldstereo_core.cameras import Cameras
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.render import _project, render_point_cloud


def make_scene(n: int, frames: int, height: int, width: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # A wavy surface ~4 units away spanning the view, sampled at random: a depth-map-like cloud.
    xy = torch.rand(n, 2, generator=g) * 2 - 1
    x = xy[:, 0] * 3.5
    y = xy[:, 1] * 2.0
    z = 4.0 + 0.3 * torch.sin(2 * x) * torch.cos(3 * y)
    pts = torch.stack([x, y, z], -1)
    cols = torch.rand(n, 3, generator=g)
    f = width / (2 * math.tan(math.radians(35)))
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    w2c = torch.eye(4).repeat(frames, 1, 1)
    for i in range(frames):  # small orbit: yaw ±10°, sideways shift
        a = math.radians(10) * math.sin(2 * math.pi * i / max(frames, 1))
        w2c[i, :3, :3] = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
        w2c[i, 0, 3] = 0.3 * math.sin(2 * math.pi * i / max(frames, 1))
    cloud = PointCloud(pts, cols).to(device)
    return cloud, Cameras(w2c, K.expand(frames, 3, 3), height, width).to(device)


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn`` (seconds)."""
    times, cpu = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpu)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--exact-frames", type=int, default=0, help="also time the exact reference on this many frames")
    ap.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (shared machines)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cloud, cams = make_scene(args.points, args.frames, args.height, args.width, args.device)
    render = lambda: render_point_cloud(cloud, cams)
    res = render()  # warm-up (allocator, CUDA context, kernels)
    load_before = load_average()
    t_render, c_render = timed(render, args.repeats, args.device)

    pts_t = cloud.points.t().contiguous()
    project = lambda: _project(pts_t, cams.w2c.to(cloud.points.dtype), cams.K.to(cloud.points.dtype))
    project()
    t_proj, c_proj = timed(project, args.repeats, args.device)

    print(
        f"device={args.device} threads={torch.get_num_threads()} points={args.points} frames={args.frames} "
        f"size={args.height}x{args.width} repeats={args.repeats} omp_wait_policy={os.environ.get('OMP_WAIT_POLICY', 'default')}"
    )
    print(
        f"render_point_cloud (fast): median {t_render * 1e3:.1f} ms  ({t_render / args.frames * 1e3:.2f} ms/frame); "
        f"coverage {1 - float(res.mask.mean()):.3f}"
    )
    print(f"baseline projection-only : median {t_proj * 1e3:.1f} ms  -> render / projection = {t_render / t_proj:.2f}x")
    if not args.device.startswith("cuda"):
        print(
            f"process CPU time: render {c_render * 1e3:.0f} ms, projection {c_proj * 1e3:.0f} ms "
            f"(ratio {c_render / c_proj:.2f}x); load average {load_before} before, {load_average()} after "
            f"on {os.cpu_count()} CPUs"
        )
    if args.exact_frames > 0:
        n = min(args.exact_frames, args.frames)
        sub = cams[0:n] if n > 1 else cams[0]
        exact = lambda: render_point_cloud(cloud, sub, mode="exact")
        t_exact = timed(exact, 1, args.device)[0] * args.frames / n
        print(
            f"exact reference (extrapolated from {n} frames): {t_exact * 1e3:.0f} ms -> exact / fast = {t_exact / t_render:.1f}x"
        )


if __name__ == "__main__":
    main()
