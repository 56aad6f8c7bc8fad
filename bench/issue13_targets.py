"""Every figure of issue 13's target table in one run, with the device name.

Workload: the memory-DMD variant at 480×832, 21 keyframes, 8 references (45 240 tokens per step),
random weights made directly on the GPU (no checkpoint needed; random weights are what a benchmark
machine without the 60 GB of released files has — timings and memory do not depend on the values,
accuracy figures are measured on them too and say so).

1. ceilings on this GPU: bf16 matmul, fp8 ``torch._scaled_mm`` (row-wise scales), device copy;
2. attention backends at one main block's shape (37 440 queries × 45 240 keys, 40 heads of 128):
   SDPA flash / efficient / cuDNN (and flash-attn if importable), TFLOP/s against the bf16 ceiling;
3. one denoising step, ours bf16 vs stock diffusers ``WanTransformer3DModel`` at the same tokens
   (29 latent frames): ours with PyTorch's default SDPA through diffusers (``native``), our direct cuDNN
   route (``sdpa_cudnn``) and diffusers' ``_native_cudnn``; stock with ``native`` and ``_native_cudnn``;
   ``--profile-dir`` adds the GPU time per kernel group of one step (attention / matmul / the rest);
4. fp8 (per-channel and per-tensor weight scales): one step, and the cosine of the predicted velocity
   against bf16 on the full model;
5. VAE: 21-keyframe encode and decode, ours (keyframes batched) vs the release's frame-by-frame loop
   over stock diffusers ``AutoencoderKLWan``, same weights, same process;
6. whole DMD trajectory (UMT5 + CLIP + VAE encode + 4 steps + 21-keyframe decode), bf16 and fp8,
   everything resident; peak GPU memory;
7. torch.compile of the fp8 model's blocks: compile time, the step after it and the whole fp8 trajectory
   (optional, ``--compile``);
8. "24 GB card": a child process with ``torch.cuda.set_per_process_memory_fraction`` capped at 22 GiB,
   fp8 + ``--swap`` blocks swapped + encoders offloaded: trajectory time, peak GPU, peak host RSS;
9. host memory while loading a real checkpoint file as fp8 with swapped blocks (bench/load_memory.py).

    python bench/issue13_targets.py --out results.json          # H100/H200, ~8 minutes
    python bench/issue13_targets.py --tiny --device cpu          # smoke test of the code paths
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import TrajectoryRunner, bench_parser, build_encoders, step_inputs, sync  # noqa: E402
from dit_step import matmul_flops  # noqa: E402

from worldstereo_core.models import build_transformer, init_random_weights  # noqa: E402
from worldstereo_core.models.fp8 import Float8Linear, fp8_layer_names, quantize_rows  # noqa: E402
from worldstereo_core.models.transformer_worldstereo import (  # noqa: E402
    FULL_TRANSFORMER_CONFIG,
    SDPA_CUDNN,
    SDPA_FP8_CUDNN,
    sdpa_cudnn_first,
)
from worldstereo_core.tiny_configs import (  # noqa: E402
    TINY_TRANSFORMER_CONFIG,
    build_tiny_transformer,
)

GiB = 2**30
RESULTS: dict[str, dict] = {}
T0 = time.perf_counter()
OUT_PATH: Path | None = None  # --out: rewritten after every figure, so a run cut short keeps what it measured


def record(name: str, value, unit: str = "", target: str = "", met: bool | None = None, note: str = "") -> None:
    RESULTS[name] = {"value": value, "unit": unit, "target": target, "met": met, "note": note}
    if OUT_PATH is not None:
        OUT_PATH.write_text(json.dumps(RESULTS, indent=1))
    v = f"{value:.4g}" if isinstance(value, float) else str(value)
    flag = "" if met is None else ("  MET" if met else "  NOT MET")
    print(
        f"  {name}: {v} {unit}{'  (target ' + target + ')' if target else ''}{flag}{'  ' + note if note else ''}",
        flush=True,
    )


def guarded(what: str, fn) -> None:
    """Run one section; a failure is printed and recorded, and the other sections still run."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        record(what, "FAILED", note=repr(exc)[:160])


def median_time(fn, device: torch.device, warmup: int = 1, iters: int = 3) -> float:
    """Median seconds of ``iters`` calls after ``warmup`` (synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 1. ceilings


def ceilings(device: torch.device, n: int) -> dict[str, float]:
    out = {}
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = median_time(lambda: a @ b, device, 2, 10)  # noqa: F821 (del below, after use)
    out["bf16"] = 2 * n**3 / t / 1e12
    record("ceiling bf16 matmul", out["bf16"], "TFLOP/s", note=f"{n}^3, random data")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        aq, sa = quantize_rows(a)
        bq, sb = quantize_rows(b)  # rows of b = columns of bᵀ
        t = median_time(
            lambda: torch._scaled_mm(aq, bq.t(), scale_a=sa, scale_b=sb.t().contiguous(), out_dtype=torch.bfloat16),
            device,
            2,
            10,
        )
        out["fp8"] = 2 * n**3 / t / 1e12
        record("ceiling fp8 _scaled_mm (row-wise)", out["fp8"], "TFLOP/s", note=f"{n}^3")
        x = torch.empty(2 * GiB // 2, dtype=torch.bfloat16, device=device)
        t = median_time(lambda: x.clone(), device, 1, 5)
        record("device copy bandwidth", 2 * x.numel() * 2 / t / 1e12, "TB/s", note="read + write")
        del x
    del a, b
    free(device)
    return out


# ----------------------------------------------------------------------------- 2. attention


def attention_backends(device: torch.device, tiny: bool, ceiling: float) -> str | None:
    """Time SDPA backends at a main block's joint-attention shape; returns the fastest diffusers backend name."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = (2, 16) if tiny else (40, 128)
    lq, lk = (96, 128) if tiny else (21 * 30 * 52, 29 * 30 * 52)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, heads, lq, dim, device=device, dtype=dtype)
    k = torch.randn(1, heads, lk, dim, device=device, dtype=dtype)
    v = torch.randn(1, heads, lk, dim, device=device, dtype=dtype)
    flops = 4 * heads * lq * lk * dim
    ref = None
    best, best_t = None, float("inf")
    names = {
        SDPBackend.FLASH_ATTENTION: "_native_flash",
        SDPBackend.EFFICIENT_ATTENTION: "_native_efficient",
        SDPBackend.CUDNN_ATTENTION: "_native_cudnn",
    }
    for backend, diffusers_name in names.items():
        try:
            with sdpa_kernel(backend):
                t = median_time(lambda: F.scaled_dot_product_attention(q, k, v), device, 2, 5)  # noqa: F821 (del below)
                out = F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as exc:
            record(f"attention {diffusers_name}", "unavailable", note=str(exc).splitlines()[0][:80])
            continue
        if ref is None:
            ref = out.float()
        err = float((out.float() - ref).norm() / ref.norm())
        tf = flops / t / 1e12
        record(
            f"attention {diffusers_name}",
            tf,
            "TFLOP/s",
            note=f"{t * 1e3:.1f} ms/block, {100 * tf / ceiling:.0f}% of bf16 matmul ceiling, rel.diff {err:.1e}",
        )
        if t < best_t:
            best, best_t = diffusers_name, t
    # our route (sdpa_cudnn_first): operands arrive token-major [B, L, H, D] from the projections, as in a block
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    lr = (lk - lq) if lk > lq else 0
    t = median_time(lambda: sdpa_cudnn_first(qs, [ks[:, :lr], ks[:, lr:]], [vs[:, :lr], vs[:, lr:]]), device, 2, 5)
    out = sdpa_cudnn_first(qs, [ks[:, :lr], ks[:, lr:]], [vs[:, :lr], vs[:, lr:]]).transpose(1, 2)
    err = float((out.float() - ref).norm() / ref.norm()) if ref is not None else float("nan")
    record(
        f"attention {SDPA_CUDNN} (ours, on token-major views)",
        flops / t / 1e12,
        "TFLOP/s",
        note=f"{t * 1e3:.1f} ms/block, rel.diff {err:.1e}",
    )
    fp8_attention_figures(qs, ks, vs, lr, ref, flops, ceiling, device)
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_func

        qf, kf, vf = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        t = median_time(lambda: flash_attn_func(qf, kf, vf), device, 2, 5)
        record("attention flash-attn (PyPI)", flops / t / 1e12, "TFLOP/s", note=f"{t * 1e3:.1f} ms/block")
        if t < best_t:
            best, best_t = "flash", t
    except ImportError:
        record(
            "attention flash-attn (PyPI)",
            "not installed",
            note="no flash-attn wheel for this torch build on PyPI; sdist needs nvcc + hours of build",
        )
    del q, k, v, ref
    free(device)
    return best


def fp8_attention_figures(qs, ks, vs, lr: int, ref, flops: float, ceiling: float, device: torch.device) -> None:
    """cuDNN's fp8 attention (``sdpa_fp8_cudnn``) at the block shape: TFLOP/s, error against the exact
    attention, and agreement with :func:`fp8_attention_reference` (what we say it computes) on 2 heads ×
    2048 queries at the full problem's scales."""
    from worldstereo_core.models.fp8_attention import (
        fp8_attention,
        fp8_attention_reference,
        fp8_attention_unavailable,
        quantize_per_tensor,
    )

    name = f"attention {SDPA_FP8_CUDNN} (cuDNN fp8, ours)"
    reason = fp8_attention_unavailable(device)
    if reason is not None:
        record(name, "unavailable", note=reason[:160])
        return
    keys, values = [ks[:, :lr], ks[:, lr:]], [vs[:, :lr], vs[:, lr:]]
    try:
        t = median_time(lambda: fp8_attention(qs, keys, values), device, 2, 5)
        out = fp8_attention(qs, keys, values)  # [B, Lq, H, D]
    except Exception as exc:  # a cuDNN build without the fp8 engine for this shape: say so, go on
        record(name, "FAILED", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return
    tf = flops / t / 1e12
    err = float((out.transpose(1, 2).float() - ref).norm() / ref.norm()) if ref is not None else float("nan")
    cos = (
        float(F.cosine_similarity(out.transpose(1, 2).float().flatten(), ref.flatten(), dim=0))
        if ref is not None
        else float("nan")
    )
    record(
        name,
        tf,
        "TFLOP/s",
        note=f"{t * 1e3:.1f} ms/block, {100 * tf / ceiling:.0f}% of the bf16 matmul ceiling; vs exact: rel.err "
        f"{err:.3f}, cosine {cos:.5f}",
    )
    quantized = [quantize_per_tensor(x) for x in ([qs], keys, values)]
    scales = tuple(d for _, d in quantized)
    op = torch.ops.worldstereo.cudnn_fp8_sdpa
    layouts = {
        "token-major": tuple(x8 for x8, _ in quantized),
        "head-major": tuple(x8.transpose(1, 2).contiguous().transpose(1, 2) for x8, _ in quantized),
    }
    for layout, (q8, k8, v8) in layouts.items():  # the kernel without the quantisation passes around it
        try:
            t = median_time(lambda: op(q8, k8, v8, *scales), device, 2, 5)  # noqa: B023 (timed now)
        except Exception as exc:
            record(f"{name}: kernel alone, {layout}", "FAILED", note=str(exc).splitlines()[0][:160])
            continue
        record(
            f"{name}: kernel alone, {layout}",
            flops / t / 1e12,
            "TFLOP/s",
            note=f"{t * 1e3:.1f} ms/block, operands already e4m3",
        )
    del layouts, quantized
    rows, heads = slice(0, 2048), slice(0, 2)
    emulated = fp8_attention_reference(
        qs[:, rows, heads], [k[:, :, heads] for k in keys], [v[:, :, heads] for v in values], scales
    )
    got = out[:, rows, heads].float()
    agree = float((got - emulated.float()).norm() / emulated.float().norm())
    record(
        f"{name}: kernel vs fp8_attention_reference",
        agree,
        "rel.diff",
        "< 0.05",
        agree < 0.05,
        note="2 heads x 2048 queries, the full problem's scales; e4m3 rounding of one element ~ 2^-4",
    )
    del out, emulated
    free(device)


# ----------------------------------------------------------------------------- 3-4. one step


def short(fmt: str) -> str:
    """``bf16`` / ``fp8``: a weight format's name in --skip names and file names."""
    return "bf16" if fmt == "bf16" else "fp8"


KERNEL_GROUPS = (  # substrings of CUDA kernel names → the part of a step they belong to (first match wins)
    # first: inductor names its fused kernels after every op they hold, attention and _scaled_mm included
    ("fused by torch.compile (triton)", ("triton",)),
    ("attention", ("fmha", "flash", "attention", "cudnn", "sdpa")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "wgmma")),
)


def profile_step(fn, device: torch.device, path: Path, backend: str) -> None:
    """Profile one call of ``fn``: GPU time per kernel group (printed) and the top kernels (written to ``path``)."""
    if device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():  # the grad mode the compiled graphs were built under (no recompilation)
        fn()
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync(device)
    events = prof.key_averages()

    def self_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))

    kernels = [e for e in events if self_us(e) > 0]
    groups: dict[str, float] = {}
    for e in kernels:
        name = e.key.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "elementwise, norms, copies")
        groups[group] = groups.get(group, 0.0) + self_us(e)
    total = sum(groups.values())
    lines = [f"{path.stem} [{backend}]: GPU kernel time {total / 1e3:.0f} ms"]
    lines += [
        f"  {g}: {v / 1e3:.0f} ms ({100 * v / total:.0f} %)" for g, v in sorted(groups.items(), key=lambda kv: -kv[1])
    ]
    print("\n".join(lines), flush=True)
    top = sorted(kernels, key=self_us, reverse=True)[:40]
    rows = [f"{self_us(e) / 1e3:9.1f} ms  {e.count:6d}x  {e.key[:150]}" for e in top]
    path.write_text("\n".join(lines + ["", "top kernels (self GPU time, calls, name):"] + rows) + "\n")
    RESULTS[f"profile {path.stem}"] = {"value": lines, "unit": "", "target": "", "met": None, "note": ""}


def swap_in_fp8(model, granularity: str) -> dict[str, torch.nn.Module]:
    """Replace the block projections by fp8 layers; returns the replaced bf16 layers (to restore)."""
    saved = {}
    for name in fp8_layer_names(model):
        lin = model.get_submodule(name)
        saved[name] = lin
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Float8Linear.from_linear(lin, granularity))
    return saved


def restore(model, saved: dict[str, torch.nn.Module]) -> None:
    for name, lin in saved.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, lin)


# ----------------------------------------------------------------------------- 5-6. VAE and trajectory


def vae_figures(vae, device, dtype, n, H, W) -> None:
    from worldstereo_core.models.vae import WanKeyframeVAE

    g = torch.Generator(device=device).manual_seed(5)
    video = torch.rand(1, 3, n, H, W, device=device, dtype=dtype, generator=g) * 2 - 1
    z = torch.randn(1, 16, n, H // 8, W // 8, device=device, dtype=dtype, generator=g)

    @torch.no_grad()
    def stock_encode():  # the release's loop: one one-frame video at a time through stock diffusers
        return torch.cat([vae.encode(video[:, :, i : i + 1]).latent_dist.mode() for i in range(n)], dim=2)

    @torch.no_grad()
    def stock_decode():
        return torch.cat([vae.decode(z[:, :, i : i + 1], return_dict=False)[0] for i in range(n)], dim=2)

    t_enc_stock = median_time(stock_encode, device, 1, 3)
    t_dec_stock = median_time(stock_decode, device, 1, 3)
    record("VAE encode 21 kf, stock diffusers frame by frame", t_enc_stock * 1e3, "ms")
    record("VAE decode 21 kf, stock diffusers frame by frame", t_dec_stock * 1e3, "ms")
    for per_batch in (8, n):
        ours = WanKeyframeVAE(vae, keyframes_per_batch=per_batch)
        try:
            median_time(lambda: ours.decode_keyframes(ours.normalize(z)), device, 0, 1)  # noqa: B023 (timed now)
        except torch.OutOfMemoryError:  # beside a resident transformer all 21 at once may not fit
            free(device)
            record(f"VAE 21 kf, ours (batch {per_batch})", "out of memory", note="beside what else is resident")
            continue
        t_enc = median_time(lambda: ours.encode_keyframes(video), device, 1, 3)  # noqa: B023 (timed now)
        t_dec = median_time(lambda: ours.decode_keyframes(ours.normalize(z)), device, 1, 3)  # noqa: B023 (timed now)
        record(
            f"VAE encode 21 kf, ours (batch {per_batch})",
            t_enc * 1e3,
            "ms",
            "<= stock",
            t_enc <= t_enc_stock * 1.02,
            note=f"ratio {t_enc / t_enc_stock:.3f}",
        )
        record(
            f"VAE decode 21 kf, ours (batch {per_batch})",
            t_dec * 1e3,
            "ms",
            "<= stock",
            t_dec <= t_dec_stock * 1.02,
            note=f"ratio {t_dec / t_dec_stock:.3f}",
        )
    if device.type == "cuda":  # does cuDNN's autotuner find faster 3D convolutions than its heuristics?
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            ours = WanKeyframeVAE(vae, keyframes_per_batch=8)
            t_enc = median_time(lambda: ours.encode_keyframes(video), device, 2, 3)
            t_dec = median_time(lambda: ours.decode_keyframes(ours.normalize(z)), device, 2, 3)
            record(
                "VAE encode 21 kf, ours (batch 8), cudnn.benchmark",
                t_enc * 1e3,
                "ms",
                note=f"ratio to stock {t_enc / t_enc_stock:.3f}",
            )
            record(
                "VAE decode 21 kf, ours (batch 8), cudnn.benchmark",
                t_dec * 1e3,
                "ms",
                note=f"ratio to stock {t_dec / t_dec_stock:.3f}",
            )
        finally:
            torch.backends.cudnn.benchmark = before
    free(device)


# ----------------------------------------------------------------------------- 8. 24 GB child


def rss_peak_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def small_card_child(args) -> dict:
    """fp8 + block swap + encoders offloaded under a 22 GiB cap; reports time, GPU and host peaks."""
    from worldstereo_core.models.encoders import CLIPImageEncoder as CLIPEnc
    from worldstereo_core.models.fp8 import convert_to_fp8
    from worldstereo_core.models.generate import WorldStereoModels
    from worldstereo_core.models.offload import swap_last_blocks
    from worldstereo_core.models.vae import WanKeyframeVAE as KVAE

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    H, W = (32, 48) if args.tiny else (480, 832)
    with torch.device("meta"):
        transformer = (build_tiny_transformer if args.tiny else build_transformer)("dmd")
    # built bf16 on the GPU, quantised in place, then the swapped blocks leave for pinned host memory —
    # all before the cap, which then bounds the run (a real load streams: loading.blocks_on_host)
    init_random_weights(transformer, device, dtype)
    convert_to_fp8(transformer, args.granularity)
    free(device)
    swap_last_blocks(transformer, device, args.swap)
    vae, t5, clip, t5_cfg = build_encoders(device, dtype, args.tiny)
    t5.to("cpu")  # the encoders live on the host and visit the GPU to encode (offload="encoders")
    clip.to("cpu")
    free(device)
    models = WorldStereoModels(
        transformer, KVAE(vae), None, None, CLIPEnc(clip), "dmd", device, "encoders", "fp8_e4m3fn_scaled", args.swap
    )
    cap = 22 * GiB
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        # the fraction applies per device index (a bare 'cuda' device is refused)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), torch.cuda.current_device())
    run = TrajectoryRunner(models, t5, t5_cfg, device, H, W, args.refs, t5_offloaded=True)
    run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = run()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0
    return {
        "seconds": seconds,
        "peak": peak,
        "reserved": reserved,
        "rss_peak": rss_peak_bytes(),
        "swapped_host_bytes": transformer.block_swap.host_bytes,
        "resident_bytes": models.device_weight_bytes(),
    }


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = bench_parser(__doc__, size=False)
    p.add_argument("--refs", type=int, default=8)
    p.add_argument("--swap", type=int, default=30, help="blocks swapped in the 24 GB mode")
    p.add_argument(
        "--granularity", default="channel", choices=["channel", "tensor"], help="fp8 scale for the 24 GB mode"
    )
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile of the fp8 model's blocks (step, trajectory)"
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: attention, steps (and everything needing the model), ours_cudnn, "
        "stock, stock_cudnn, fp8, fp8_tensor, vae, trajectory, trajectory_bf16, trajectory_fp8, compile_bf16, "
        "compile_fp8, small, load",
    )
    p.add_argument("--load-layers", type=int, default=None, help="blocks in the load-memory checkpoint (default: full)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--compile-budget",
        type=float,
        default=400.0,
        help="run the compile section only if fewer seconds than this have passed",
    )
    p.add_argument(
        "--attention",
        default=None,
        help="attention backend for everything after the step timings (default: the fastest exact one); "
        f"{SDPA_FP8_CUDNN}: the bf16 reference stays exact, the fp8 figures, compile and trajectories use it",
    )
    p.add_argument(
        "--resident-fp8-s",
        type=float,
        default=None,
        help="resident fp8 trajectory seconds measured by an earlier run on this machine (the 24 GB ratio's base "
        "when this run skips the trajectories)",
    )
    p.add_argument("--profile-dir", default=None, help="profile one step (bf16, fp8, compiled) and write tables here")
    p.add_argument("--_small_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    global T0, OUT_PATH
    T0 = time.perf_counter()
    OUT_PATH = Path(args.out) if args.out and not args._small_child else None
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    if args._small_child:
        print("RESULT " + json.dumps(small_card_child(args)))
        return 0

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; ", end="")
    import diffusers

    print(f"diffusers {diffusers.__version__}", flush=True)
    RESULTS["_device"] = {
        "value": name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    cfg = dict(TINY_TRANSFORMER_CONFIG if args.tiny else FULL_TRANSFORMER_CONFIG)
    H, W = (32, 48) if args.tiny else (480, 832)
    f, R = (3, 2) if args.tiny else (21, args.refs)
    h, w = H // 8, W // 8

    print("[1] ceilings", flush=True)
    ceil = ceilings(device, 256 if args.tiny else 8192)
    best_backend = None
    if "attention" not in skip:
        print("[2] attention backends", flush=True)
        best_backend = attention_backends(device, args.tiny, ceil["bf16"])

    def transformer_sections() -> tuple[str, dict[str, float]]:
        """[3]-[7]: steps, fp8, VAE, trajectories, compile; returns the fp8 granularity used and the trajectory times."""
        print("[3] one step, bf16", flush=True)
        with torch.device("meta"):
            model = (build_tiny_transformer if args.tiny else build_transformer)("dmd")
        init_random_weights(model, device, dtype)
        x, t, kw = step_inputs(cfg, device, dtype, f, h, w, R)
        tokens = (f + R) * (h // 2) * (w // 2)
        cn = model.controlnet_config
        flops = matmul_flops(
            cfg, f * (h // 2) * (w // 2), R * (h // 2) * (w // 2), (cn.num_layers, cn.dim, cn.ffn_dim, model.inner_dim)
        )
        steps: dict[str, float] = {}
        # PyTorch's default SDPA through diffusers, our direct cuDNN route, and diffusers' cuDNN backend
        cudnn = ["_native_cudnn"] if device.type == "cuda" else []  # diffusers' cuDNN backend has no CPU fallback
        ours_backends = ["native", SDPA_CUDNN, *([] if "ours_cudnn" in skip else cudnn)]
        ours_backends = list(dict.fromkeys(ours_backends + ([best_backend] if best_backend else [])))
        if args.attention == SDPA_FP8_CUDNN:  # timed beside the exact ones; never the bf16 reference
            ours_backends.append(SDPA_FP8_CUDNN)
        with torch.inference_mode():
            for backend in ours_backends:
                model.set_attention_backend(backend)
                steps[backend] = median_time(lambda: model(x, t, **kw), device, 1, 3)
                record(
                    f"step bf16 ours [{backend}]",
                    steps[backend] * 1e3,
                    "ms",
                    note=f"{tokens} tokens, {flops / steps[backend] / 1e12:.0f} TFLOP/s (matmul+attention FLOPs)",
                )
            exact = {b: v for b, v in steps.items() if b != SDPA_FP8_CUDNN}
            best = args.attention if args.attention in exact else min(exact, key=exact.get)
            model.set_attention_backend(best)
            v_ref = model(x, t, **kw).float()
            if args.profile_dir:
                profile_step(lambda: model(x, t, **kw), device, Path(args.profile_dir) / "profile_step_bf16.txt", best)
        stock_t = {}
        if "stock" not in skip:
            from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformer3DModel

            model.to("cpu") if device.type == "cuda" and torch.cuda.get_device_properties(
                device
            ).total_memory < 100 * GiB else None
            with torch.device("meta"):
                stock = WanTransformer3DModel(**cfg).eval()
            init_random_weights(stock, device, dtype)
            with torch.device(device):
                stock.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], cfg["rope_max_seq_len"])
            xs = torch.randn(1, 36, f + R, h, w, device=device, dtype=dtype)
            with torch.inference_mode():
                for backend in ("native", *([] if "stock_cudnn" in skip else cudnn)):
                    stock.set_attention_backend(backend)
                    stock_t[backend] = median_time(
                        lambda: stock(
                            xs, t, kw["encoder_hidden_states"], kw["encoder_hidden_states_image"], return_dict=False
                        ),
                        device,
                        1,
                        3,
                    )
                    record(
                        f"step stock diffusers Wan [{backend}]", stock_t[backend] * 1e3, "ms", note=f"{tokens} tokens"
                    )
            del stock, xs
            free(device)
            model.to(device)
            base = stock_t["native"]  # stock as users run it: PyTorch's default SDPA
            r = steps[best] / base
            same = (
                stock_t.get("_native_cudnn", base) if best in (SDPA_CUDNN, "_native_cudnn") else stock_t.get(best, base)
            )
            record(
                "step bf16 / stock",
                r,
                "",
                "<= 0.75",
                r <= 0.75,
                note=f"ours [{best}] vs stock [native]; vs stock with the same (cuDNN) kernel: {steps[best] / same:.3f}",
            )

        if args.attention == SDPA_FP8_CUDNN:  # everything from here on runs with the fp8 attention
            model.set_attention_backend(SDPA_FP8_CUDNN)
            with torch.inference_mode():
                v = model(x, t, **kw).float()
            cos = float(F.cosine_similarity(v.flatten().double(), v_ref.flatten().double(), dim=0))
            record(
                "fp8 attention, bf16 weights: velocity cosine vs bf16",
                cos,
                "",
                ">= 0.995",
                cos >= 0.995,
                note=f"{steps[SDPA_FP8_CUDNN] * 1e3:.0f} ms/step (random weights)",
            )
            if stock_t:
                r = steps[SDPA_FP8_CUDNN] / stock_t["native"]
                record("step bf16 weights + fp8 attention / stock", r, "", note=f"[{SDPA_FP8_CUDNN}]")
            best = SDPA_FP8_CUDNN
            del v

        fp8 = {}
        print("[4] fp8 step and accuracy", flush=True)
        lin = torch.nn.Linear(cfg["ffn_dim"], model.inner_dim, device=device, dtype=dtype)
        for rows in (257, f * (h // 2) * (w // 2)):  # CLIP tokens (padded to 16) and the target tokens
            xin = torch.randn(rows, cfg["ffn_dim"], device=device, dtype=dtype)
            for gran_ in ("channel", "tensor"):
                with torch.inference_mode():
                    ref = torch.nn.functional.linear(xin.double(), lin.weight.double(), lin.bias.double())
                    got = Float8Linear.from_linear(lin, gran_)(xin).double()
                rel = float((got - ref).norm() / ref.norm())
                record(
                    f"fp8 linear rel. error, {rows} rows, {gran_}",
                    rel,
                    "",
                    "< 0.1",
                    rel < 0.1,
                    note="vs float64 of the bf16 layer (e4m3: ~2^-4 per element)",
                )
        del lin, xin
        with torch.inference_mode():
            for gran in () if "fp8" in skip else ("channel",) if "fp8_tensor" in skip else ("channel", "tensor"):
                saved = swap_in_fp8(model, gran)
                fp8[gran] = median_time(lambda: model(x, t, **kw), device, 1, 3)
                v = model(x, t, **kw).float()
                if args.profile_dir and gran == "channel":
                    profile_step(
                        lambda: model(x, t, **kw), device, Path(args.profile_dir) / "profile_step_fp8.txt", best
                    )
                cos = float(F.cosine_similarity(v.flatten().double(), v_ref.flatten().double(), dim=0))
                note = f"{fp8[gran] * 1e3:.0f} ms/step"
                if stock_t:
                    note += f", / stock {fp8[gran] / stock_t['native']:.3f}"
                record(
                    f"fp8 ({gran}) velocity cosine vs bf16",
                    cos,
                    "",
                    ">= 0.995",
                    cos >= 0.995,
                    note=note + " (random weights)",
                )
                restore(model, saved)
                del saved, v
                free(device)
        # the faster; both pass or fail the gate together on these weights
        gran = max(fp8, key=lambda g: -fp8[g]) if fp8 else args.granularity
        if stock_t and fp8:
            r = fp8[gran] / stock_t["native"]
            record("step fp8 / stock", r, "", "<= 0.5", r <= 0.5, note=f"{gran} scales, [{best}]")

        traj = {}
        if "trajectory" not in skip or "vae" not in skip or args.compile:
            from worldstereo_core.models.encoders import CLIPImageEncoder
            from worldstereo_core.models.generate import WorldStereoModels
            from worldstereo_core.models.vae import WanKeyframeVAE

            vae, t5, clip, t5_cfg = build_encoders(device, dtype, args.tiny)

            def trajectory_figures(fmt: str, compiled: bool = False) -> None:
                is_fp8 = isinstance(model.blocks[0].ffn.net[2], Float8Linear)
                saved = swap_in_fp8(model, gran) if fmt != "bf16" and not is_fp8 else None
                if saved is not None:
                    del saved  # the bf16 layers go: the fp8 model alone is resident
                    free(device)
                models = WorldStereoModels(
                    model, WanKeyframeVAE(vae), None, None, CLIPImageEncoder(clip), "dmd", device, "none", fmt
                )
                run = TrajectoryRunner(models, t5, t5_cfg, device, H, W, R)
                run()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                label = f"{fmt}, compiled" if compiled else fmt
                traj[label] = seconds = run()
                peak = torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else float("nan")
                target = "<= 17 s" if fmt == "bf16" else "<= 12 s"
                record(
                    f"trajectory {label} resident",
                    seconds,
                    "s",
                    target,
                    seconds <= (17 if fmt == "bf16" else 12),
                    note=f"peak GPU {peak:.1f} GiB, weights {models.device_weight_bytes() / GiB:.1f} GiB, [{best}]",
                )
                record(f"peak GPU {label} resident", peak, "GiB", "< 74.5 (80 GB)", peak < 80e9 / GiB)

            def compile_figures(fmt: str) -> None:
                """torch.compile of the blocks (bf16 or fp8 model): compile time, the step after it, the trajectory;
                the blocks are un-compiled again afterwards, so what follows runs eager."""
                from worldstereo_core.models.generate import compile_blocks
                from worldstereo_core.models.offload import execution_order

                if fmt != "bf16" and not isinstance(model.blocks[0].ffn.net[2], Float8Linear):
                    swap_in_fp8(model, gran)
                    free(device)
                with torch.no_grad():  # the trajectory runs under no_grad too: one set of compiled graphs
                    eager = median_time(lambda: model(x, t, **kw), device, 1, 3)
                    compile_blocks(model)
                    sync(device)
                    t0 = time.perf_counter()
                    model(x, t, **kw)
                    sync(device)
                    first = time.perf_counter() - t0
                    after = median_time(lambda: model(x, t, **kw), device, 1, 3)
                record(f"compile {fmt}: first call (compile time)", first, "s", note=f"[{best}], regional")
                record(
                    f"compile {fmt}: step after compile",
                    after * 1e3,
                    "ms",
                    note=f"eager {eager * 1e3:.0f} ms now, ratio {after / eager:.3f}",
                )
                if stock_t:
                    r, goal = after / stock_t["native"], (0.75 if fmt == "bf16" else 0.5)
                    record(f"step {fmt} compiled / stock", r, "", f"<= {goal}", r <= goal, note=f"[{best}]")
                if args.profile_dir:
                    profile_step(
                        lambda: model(x, t, **kw),
                        device,
                        Path(args.profile_dir) / f"profile_step_{short(fmt)}_compiled.txt",
                        best,
                    )
                if "trajectory" not in skip:
                    trajectory_figures(fmt, compiled=True)
                for block in execution_order(model):  # back to eager (nn.Module.compile / a compiled forward)
                    block._compiled_call_impl = None
                    block.__dict__.pop("forward", None)

            if "vae" not in skip:
                print("[5] VAE", flush=True)
                guarded("VAE", lambda: vae_figures(vae, device, dtype, f, H, W))
            # [6] eager trajectories and [7] compiled step + trajectory, bf16 first (fp8 replaces its layers)
            for fmt in ("bf16", "fp8_e4m3fn_scaled"):
                if "trajectory" not in skip and f"trajectory_{short(fmt)}" not in skip:
                    print(f"[6] whole trajectory, {fmt}", flush=True)
                    guarded(f"trajectory {fmt}", lambda fmt=fmt: trajectory_figures(fmt))
                if args.compile and f"compile_{short(fmt)}" in skip:
                    pass
                elif args.compile and time.perf_counter() - T0 < args.compile_budget:
                    print(f"[7] torch.compile, {fmt}", flush=True)
                    guarded(f"compile {fmt}", lambda fmt=fmt: compile_figures(fmt))
                elif args.compile:
                    record(f"compile {fmt}", "skipped", note=f"time budget ({args.compile_budget} s) spent")

            del vae, t5, clip
            free(device)

        return gran, traj  # the model and its inputs go with this frame

    if "steps" in skip:  # e.g. a second call for the 24 GB child and the load measurement only
        gran, traj = args.granularity, {}
    else:
        gran, traj = transformer_sections()
        free(device)

    if "small" not in skip and device.type == "cuda":
        print("[8] 24 GB mode (child process, 22 GiB cap)", flush=True)
        cmd = [
            sys.executable,
            __file__,
            "--_small_child",
            "--device",
            args.device,
            "--swap",
            str(args.swap),
            "--granularity",
            gran,
            "--refs",
            str(args.refs),
        ] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            record("24 GB mode", "FAILED", note=f"exit {proc.returncode}")
        else:
            s = json.loads(line[len("RESULT ") :])
            record(
                "24 GB mode: peak GPU allocated",
                s["peak"] / GiB,
                "GiB",
                "<= 22",
                s["peak"] <= 22 * GiB,
                note=f"reserved {s['reserved'] / GiB:.1f} GiB; fp8, {args.swap} blocks swapped, encoders offloaded",
            )
            ref_t = traj.get("fp8_e4m3fn_scaled", args.resident_fp8_s)
            record(
                "24 GB mode: trajectory",
                s["seconds"],
                "s",
                "<= 2x resident fp8",
                None if ref_t is None else s["seconds"] <= 2 * ref_t,
                note="" if ref_t is None else f"ratio {s['seconds'] / ref_t:.2f}",
            )
            record(
                "24 GB mode: host RSS peak",
                s["rss_peak"] / GiB,
                "GiB",
                note=f"swapped blocks {s['swapped_host_bytes'] / GiB:.1f} GiB + encoders on host (UMT5 ~10.6 GiB bf16)",
            )

    if "load" not in skip and device.type == "cuda":
        print("[9] host memory while loading a checkpoint as fp8 with swapped blocks", flush=True)
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "load_memory.py"),
            "--variant",
            "dmd",
            "--device",
            args.device,
            "--weight-format",
            "fp8_e4m3fn_scaled",
            "--blocks-on-host",
            str(min(args.swap, args.load_layers or 40)),
        ]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--layers", str(args.load_layers)] if args.load_layers else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout[-2500:], proc.stderr[-1500:] if proc.returncode else "")
        RESULTS["load_memory"] = {"value": proc.stdout[-2500:], "unit": "", "target": "", "met": None, "note": ""}

    print("\nsummary on", name)
    for k, v in RESULTS.items():
        if k.startswith("_") or k == "load_memory":
            continue
        val = f"{v['value']:.4g}" if isinstance(v["value"], float) else str(v["value"])
        met = "" if v["met"] is None else ("MET" if v["met"] else "NOT MET")
        print(f"| {k} | {val} {v['unit']} | {v['target']} | {met} |")
    if args.out:
        Path(args.out).write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
