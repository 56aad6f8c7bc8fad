"""Sequence parallel (Ulysses) + sharded weights (FSDP2): the split model against one process.

CPU proof (run in CI through tests/unit/test_sequence_parallel.py):

    python bench/sequence_parallel.py --tiny --device cpu --nproc 2
    python bench/sequence_parallel.py --tiny --device cpu --nproc 4 --fsdp

builds a small WorldStereo memory transformer (same code as the released one; 8 heads so that
2, 4 and 8 ranks split them), runs one forward pass with GGM control, SSM references and the
camera embedding in one process, then the same pass split over ``--nproc`` processes (gloo on
CPU, NCCL on GPUs), and prints ``max abs diff vs single process: <x>``. The token counts are
chosen not to divide by the rank count, so the padding path is exercised too.

On GPUs (``--device cuda``, one process per GPU) it also times the pass at the release size
(``--full``: 480×832, 21 keyframes, 8 references) and prints the peak memory per rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worldstereo_core.distributed import enable_sequence_parallel, shard_weights
from worldstereo_core.models.loading import init_random_weights
from worldstereo_core.models.transformer_worldstereo import (
    FULL_CONTROLNET_CONFIG,
    FULL_TRANSFORMER_CONFIG,
    WorldStereoTransformer,
)
from worldstereo_core.tiny_configs import TINY_CONTROLNET_CONFIG, TINY_TRANSFORMER_CONFIG

# The tiny sizes widened to 8 heads, still small enough for a CPU and shaped like the release: 8 main heads and 8 ControlNet heads divide
# over 1, 2, 4 and 8 ranks; the latent grid gives 45 target and 30 reference tokens.
SMALL_TRANSFORMER = dict(TINY_TRANSFORMER_CONFIG, num_attention_heads=8, attention_head_dim=12)
SMALL_TRANSFORMER.update(ffn_dim=128, added_kv_proj_dim=96)  # widths that follow 8 heads × 12 = 96
SMALL_CONTROLNET = dataclasses.replace(
    TINY_CONTROLNET_CONFIG, dim=48, ffn_dim=96, num_heads=8, conv_out_dim=96, time_embed_dim=96
)
SMALL_SHAPE = {"frames": 3, "h": 6, "w": 10, "refs": 2, "text": 16}
# The release's memory-DMD workload: 21 keyframes at 480×832 (latent 60×104), 8 references.
FULL_SHAPE = {"frames": 21, "h": 60, "w": 104, "refs": 8, "text": 512}


def build_model(full: bool, device: torch.device, dtype: torch.dtype) -> WorldStereoTransformer:
    cfg, cn = (dict(FULL_TRANSFORMER_CONFIG), FULL_CONTROLNET_CONFIG) if full else (SMALL_TRANSFORMER, SMALL_CONTROLNET)
    with torch.device("meta"):
        model = WorldStereoTransformer("memory", cn, **cfg)
    # std 0.1 on the small model: attention is peaked, so a token in the wrong place shows
    return init_random_weights(model, device, dtype=dtype, std=0.02 if full else 0.1, seed=0).eval()


def make_inputs(model: WorldStereoTransformer, shape: dict, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1)
    f, h, w, r = shape["frames"], shape["h"], shape["w"], shape["refs"]
    cfg = model.config

    def rnd(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

    return {
        "hidden_states": rnd(1, cfg.in_channels, f, h, w),
        "timestep": torch.tensor([700.0], device=device),
        "encoder_hidden_states": rnd(1, shape["text"], cfg.text_dim),
        "encoder_hidden_states_image": rnd(1, 257, cfg.image_dim),
        "render_latent": rnd(1, 16, f, h, w),
        "render_mask": (torch.rand(1, 1, f, 8 * h, 8 * w, generator=g) > 0.5).to(device=device, dtype=dtype),
        "plucker": rnd(1, 6, f, 8 * h, 8 * w),
        "reference_latent": rnd(1, cfg.in_channels, r, h, w),
        "ref_index": torch.arange(r, device=device) % max(f - 1, 1),
        "camera_qt": rnd(1, f, 7),
        "camera_qt_ref": rnd(1, r, 7),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.nproc)
    try:
        torch.set_num_threads(1)
        dtype = torch.bfloat16 if args.full else torch.float32
        model = build_model(args.full, device, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        enable_sequence_parallel(model)
        if args.fsdp:
            shard_weights(model)
        local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
        inputs = make_inputs(model, FULL_SHAPE if args.full else SMALL_SHAPE, device, dtype)
        with torch.no_grad():
            out = model(**inputs)
            seconds = _time(model, inputs, args.repeats, cuda) if args.repeats else None
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        # numpy, not a tensor: a tensor would be shared through this process, which exits next
        queue.put((rank, out.float().cpu().numpy(), local / n_params, seconds, peak))
    finally:
        dist.destroy_process_group()


def _time(model, inputs, repeats: int, cuda: bool) -> float:
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**inputs)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def single_process(args: argparse.Namespace) -> tuple[torch.Tensor, float | None]:
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    dtype = torch.bfloat16 if args.full else torch.float32
    model = build_model(args.full, device, dtype)
    inputs = make_inputs(model, FULL_SHAPE if args.full else SMALL_SHAPE, device, dtype)
    with torch.no_grad():
        out = model(**inputs).float().cpu()
        seconds = _time(model, inputs, args.repeats, args.device == "cuda") if args.repeats else None
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="small model and latent (default)")
    size.add_argument("--full", action="store_true", help="the released size at 480x832, 8 references (GPUs)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--nproc", type=int, default=2, help="processes (ranks); one GPU each with --device cuda")
    ap.add_argument("--fsdp", action="store_true", help="also shard the weights (FSDP2)")
    ap.add_argument("--repeats", type=int, default=0, help="time this many passes (median) on one and N ranks")
    args = ap.parse_args(argv)

    reference, t1 = single_process(args)
    queue = mp.get_context("spawn").SimpleQueue()
    port = _free_port()
    mp.spawn(_worker, args=(args, port, queue), nprocs=args.nproc, join=True)
    results = sorted((queue.get() for _ in range(args.nproc)), key=lambda r: r[0])
    diff = max(float((torch.from_numpy(r[1]) - reference).abs().max()) for r in results)
    print(f"ranks: {args.nproc} ({'gloo' if args.device == 'cpu' else 'nccl'}), fsdp: {args.fsdp}")
    print(f"parameters held per rank: {', '.join(f'{r[2]:.3f}' for r in results)} of the model")
    if args.repeats:
        tn = max(r[3] for r in results)
        print(
            f"one forward: 1 process {t1 * 1000:.1f} ms, {args.nproc} ranks {tn * 1000:.1f} ms, speed-up {t1 / tn:.2f}x"
        )
    if results[0][4] is not None:
        print("peak GPU memory per rank (GiB): " + ", ".join(f"{r[4]:.2f}" for r in results))
    print(f"output scale (max abs of the single-process output): {float(reference.abs().max()):.3e}")
    print(f"max abs diff vs single process: {diff:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
