"""fp8 matmul backends at the transformer's real projection shapes: which one should the fp8 weights use?

Issue 13 asks to choose the fp8 matmul among ``torch._scaled_mm``, torchao and comfy-kitchen by
measuring them. This script times one linear layer (activation quantisation included, as the model
runs it) for every distinct projection shape of one denoising step of the memory-DMD model and prints,
per backend, ms, TFLOP/s and the output's relative error against the bf16 ``F.linear``:

* ``bf16``: ``F.linear`` on the bf16 weight (the baseline);
* ``ours_rowwise`` / ``ours_tensor``: :class:`~worldstereo_core.models.fp8.Float8Linear`, the
  production path (``torch._scaled_mm``, one activation scale per token, weight scale per output
  channel / per tensor; on a device without fp8 GEMMs it dequantises, which the line says);
* ``ours_rowwise_fast_accum``: the same GEMM with ``use_fast_accum=True`` (torchao's default; less
  exact accumulation on Hopper), to tell the accumulation mode apart from the library;
* ``torchao_rowwise`` / ``torchao_tensor``: torchao's ``quantize_`` with
  ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() / PerTensor())``;
* ``comfy_kitchen_tensor``: comfy-kitchen's ``QuantizedTensor`` with ``TensorCoreFP8Layout`` (its only
  fp8 layout for sm_89/sm_90: one scale per tensor) for both the weight and the per-call quantised
  activation, through ``F.linear``.

A backend that cannot be imported or cannot run on the device prints ``not available: <why>`` and
the others still run.

Shapes come from the model, not from a list typed here: the memory-DMD transformer is built on the
``meta`` device and every layer that the fp8 format stores in float8 (:func:`fp8_layer_names`) gives
its ``in × out``; the rows each one multiplies come from the workload (issue 13: 480×832, 21
keyframes, 8 references) through :func:`projection_rows`. At the release's sizes a step has 45 240
tokens = 32 760 target + 12 480 reference tokens; the references only pass through the self-attention
key/value projections (the release does not update them), the cross-attention keys/values see the 512
text and 257 image tokens, everything else the 32 760 target tokens. The summary weights each shape
by how often a step runs it (the sum of the GEMM time of one step's fp8 projections).

    python bench/fp8_matmul_backends.py --out fp8_backends.json     # H100/H200, ~1-2 minutes
    python bench/fp8_matmul_backends.py --tiny --device cpu          # smoke test of the code paths

Inputs are random (x ~ N(0, 1), w ~ N(0, 1/in)): timings do not depend on the values; the relative
errors are those of random data, not of the released weights.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMAGE_TOKENS, TEXT_TOKENS, bench_parser, default_dtype
from dit_step import time_call

from worldstereo_core.models.fp8 import (
    Float8Linear,
    _quantize_rows_cuda,
    _scaled_mm_available,
    fp8_layer_names,
)
from worldstereo_core.models.transformer_worldstereo import MAX_REFERENCES
from worldstereo_core.models.vae import WAN21_VAE_CONFIG

KEYFRAMES = 21
"""Issue 13's workload: 21 keyframes, one latent frame each (as in bench/issue13_targets.py)."""

TINY_SIZE = dict(height=32, width=48, frames=3, refs=2)
"""``--tiny``: the smoke-test sizes of bench/issue13_targets.py."""


class BackendUnavailable(Exception):
    """A backend that cannot run here; the message says why (printed as ``not available: <why>``)."""


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Workload:
    """Token counts of one denoising step: ``target`` (keyframe latents), ``reference`` (SSM
    references), ``text`` (UMT5 prompt) and ``image`` (CLIP) tokens."""

    target: int
    reference: int
    text: int = TEXT_TOKENS
    image: int = IMAGE_TOKENS


def workload_tokens(cfg: dict, height: int, width: int, frames: int, refs: int) -> Workload:
    """Tokens of a ``frames``-keyframe, ``refs``-reference step at ``height × width`` pixels.

    The VAE halves the frame size once per ``dim_mult`` level after the first (Wan2.1: 8×), the
    transformer patchifies by ``patch_size`` (1, 2, 2)."""
    vae_down = 2 ** (len(WAN21_VAE_CONFIG["dim_mult"]) - 1)
    _, ph, pw = cfg["patch_size"]
    per_frame = (height // vae_down // ph) * (width // vae_down // pw)
    return Workload(target=frames * per_frame, reference=refs * per_frame)


# Which tokens each projection multiplies (see transformer_worldstereo.py: references contribute
# only self-attention keys/values, through separate to_k / to_v calls).
_ROW_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"^blocks\.\d+\.attn1\.to_[kv]$", ("target", "reference")),
    (r"^blocks\.\d+\.attn1\.(to_q|to_out\.0)$", ("target",)),
    (r"^blocks\.\d+\.attn2\.(to_q|to_out\.0)$", ("target",)),
    (r"^blocks\.\d+\.attn2\.to_[kv]$", ("text",)),
    (r"^blocks\.\d+\.attn2\.add_[kv]_proj$", ("image",)),
    (r"^blocks\.\d+\.ffn\.", ("target",)),
    (r"^controlnet\.controlnet_blocks\.\d+\.", ("target",)),
)


def projection_rows(name: str, tokens: Workload) -> list[int]:
    """Row counts of the GEMMs one step runs through layer ``name`` (one entry per call)."""
    for pattern, kinds in _ROW_RULES:
        if re.search(pattern, name):
            return [getattr(tokens, k) for k in kinds]
    raise ValueError(f"no token rule for fp8 layer {name!r}: add it to _ROW_RULES in {Path(__file__).name}")


@dataclass(frozen=True)
class GemmShape:
    """One distinct projection GEMM: ``[m, k] @ [k, n]``, run ``count`` times per step; ``example`` is
    one layer that runs it."""

    m: int
    k: int
    n: int
    count: int
    example: str

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n


def projection_shapes(model: torch.nn.Module, tokens: Workload) -> list[GemmShape]:
    """The distinct fp8 projection GEMMs of one step of ``model`` (a ``meta`` model is enough), most
    FLOPs per step first."""
    counts: Counter[tuple[int, int, int]] = Counter()
    example: dict[tuple[int, int, int], str] = {}
    for name in fp8_layer_names(model):
        layer = model.get_submodule(name)
        for m in projection_rows(name, tokens):
            key = (m, layer.in_features, layer.out_features)
            counts[key] += 1
            example.setdefault(key, re.sub(r"\.\d+\.", ".N.", name, count=1))
    shapes = [GemmShape(m, k, n, c, example[(m, k, n)]) for (m, k, n), c in counts.items()]
    return sorted(shapes, key=lambda s: -s.flops * s.count)


def model_shapes(tiny: bool, height: int, width: int, frames: int, refs: int) -> tuple[list[GemmShape], Workload]:
    """Build the memory-DMD transformer (tiny with ``tiny``) on ``meta`` and return its step's GEMMs."""
    from worldstereo_core.models import build_transformer
    from worldstereo_core.models.transformer_worldstereo import FULL_TRANSFORMER_CONFIG
    from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, build_tiny_transformer

    cfg = dict(TINY_TRANSFORMER_CONFIG if tiny else FULL_TRANSFORMER_CONFIG)
    with torch.device("meta"):
        model = (build_tiny_transformer if tiny else build_transformer)("dmd")
    tokens = workload_tokens(cfg, height, width, frames, refs)
    return projection_shapes(model, tokens), tokens


# ----------------------------------------------------------------------------- backends

Linear = Callable[[torch.Tensor], torch.Tensor]


def _needs_fp8_gemm(device: torch.device) -> None:
    if not _scaled_mm_available(device):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise BackendUnavailable(f"needs fp8 tensor cores (CUDA sm_89 or newer); this device is {where}")


def _import(module: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a wheel built for another torch failing at import
        raise BackendUnavailable(f"{module} is not importable ({type(exc).__name__}: {exc})") from exc


def _as_linear(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    lin.weight = torch.nn.Parameter(weight, requires_grad=False)
    lin.bias = torch.nn.Parameter(bias, requires_grad=False)
    return lin


def bf16_linear(weight: torch.Tensor, bias: torch.Tensor) -> tuple[Linear, str]:
    return (lambda x: F.linear(x, weight, bias)), f"F.linear in {weight.dtype}"


def ours(granularity: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[Linear, str]]:
    def build(weight: torch.Tensor, bias: torch.Tensor) -> tuple[Linear, str]:
        layer = Float8Linear.from_linear(_as_linear(weight, bias), granularity, weight.dtype)
        route = (
            "torch._scaled_mm"
            if _scaled_mm_available(weight.device)
            else "dequantising fallback (no fp8 GEMM on this device: not an fp8 speed)"
        )
        return layer, f"Float8Linear, weight scale per {granularity}, {route}"

    return build


def ours_fast_accum(weight: torch.Tensor, bias: torch.Tensor) -> tuple[Linear, str]:
    _needs_fp8_gemm(weight.device)
    layer = Float8Linear.from_linear(_as_linear(weight, bias), "channel", weight.dtype)
    w_scale = layer.scale_weight.reshape(1, -1).contiguous()

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]  # padded to 16 rows as Float8Linear does (the 257 CLIP tokens)
        xq, x_scale = _quantize_rows_cuda(F.pad(x, (0, 0, 0, -rows % 16)) if rows % 16 else x)
        out = torch._scaled_mm(
            xq, layer.weight.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype, use_fast_accum=True
        )
        return out[:rows] + layer.bias

    return run, "Float8Linear's quantisation + torch._scaled_mm row-wise with use_fast_accum=True"


def torchao_linear(granularity: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[Linear, str]]:
    def build(weight: torch.Tensor, bias: torch.Tensor) -> tuple[Linear, str]:
        ao = _import("torchao")
        quant = _import("torchao.quantization")
        _needs_fp8_gemm(weight.device)
        gran = quant.PerRow() if granularity == "row" else quant.PerTensor()
        # set_inductor_config=False: leave torch.compile's settings alone (no compile here)
        config = quant.Float8DynamicActivationFloat8WeightConfig(granularity=gran, set_inductor_config=False)
        layer = _as_linear(weight, bias)
        quant.quantize_(layer, config)  # in place: the layer's weight becomes torchao's Float8Tensor
        return layer, f"torchao {ao.__version__} Float8DynamicActivationFloat8WeightConfig({type(gran).__name__})"

    return build


class _FallbackLog(logging.Handler):
    """Collects comfy-kitchen's log records: it logs a warning and dequantises when its fp8 GEMM fails,
    which must not be timed as its fp8 speed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_CK_LOG = _FallbackLog()


def comfy_kitchen_linear(weight: torch.Tensor, bias: torch.Tensor) -> tuple[Linear, str]:
    ck = _import("comfy_kitchen")
    tensor = _import("comfy_kitchen.tensor")
    _needs_fp8_gemm(weight.device)
    if _CK_LOG not in logging.getLogger("comfy_kitchen").handlers:
        logging.getLogger("comfy_kitchen").addHandler(_CK_LOG)
    layout = "TensorCoreFP8Layout"
    wq = tensor.QuantizedTensor.from_float(weight, layout)
    status = ck.list_backends()
    active = ",".join(k for k, v in status.items() if v.get("available") and not v.get("disabled"))

    def run(x: torch.Tensor) -> torch.Tensor:
        _CK_LOG.messages.clear()
        out = F.linear(tensor.QuantizedTensor.from_float(x, layout), wq, bias)
        fell_back = [m for m in _CK_LOG.messages if "falling back" in m]
        if fell_back:
            raise BackendUnavailable(f"its fp8 GEMM fell back to dequantising: {fell_back[0][:200]}")
        return out

    run(torch.randn(16, weight.shape[1], device=weight.device, dtype=weight.dtype))
    version = importlib.metadata.version("comfy-kitchen")
    return run, f"comfy-kitchen {version} {layout} (per tensor), kernel backends: {active}"


BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[Linear, str]]] = {
    "bf16": bf16_linear,
    "ours_rowwise": ours("channel"),
    "ours_tensor": ours("tensor"),
    "ours_rowwise_fast_accum": ours_fast_accum,
    "torchao_rowwise": torchao_linear("row"),
    "torchao_tensor": torchao_linear("tensor"),
    "comfy_kitchen_tensor": comfy_kitchen_linear,
}


# ----------------------------------------------------------------------------- measurement


@dataclass
class Measure:
    backend: str
    m: int
    k: int
    n: int
    ms: float
    tflops: float
    rel_err: float


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float32."""
    ref = ref.float()
    return float((out.float() - ref).norm() / ref.norm())


def available_backends(
    names: list[str], device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, str], dict[str, str]]:
    """``({backend: description}, {backend: why not})``: which backends build and run a small layer
    here; prints ``<name>: <description>`` or ``<name>: not available: <why>`` for each."""
    ok, missing = {}, {}
    w = torch.randn(64, 64, device=device, dtype=dtype)
    b = torch.zeros(64, device=device, dtype=dtype)
    for name in names:
        try:
            _, desc = BACKENDS[name](w, b)
        except BackendUnavailable as exc:
            print(f"{name}: not available: {exc}", flush=True)
            missing[name] = str(exc)
            continue
        ok[name] = desc
        print(f"{name}: {desc}", flush=True)
    return ok, missing


def measure_shape(
    shape: GemmShape, backends: list[str], device: torch.device, dtype: torch.dtype, warmup: int, iters: int
) -> list[Measure]:
    """Time every backend on ``shape`` (same random input and weight) and compare its output with bf16's."""
    g = torch.Generator(device=device).manual_seed(shape.m * 31 + shape.k * 7 + shape.n)
    x = torch.randn(shape.m, shape.k, device=device, dtype=dtype, generator=g)
    w = (torch.randn(shape.n, shape.k, device=device, dtype=torch.float32, generator=g) / shape.k**0.5).to(dtype)
    b = (0.1 * torch.randn(shape.n, device=device, dtype=torch.float32, generator=g)).to(dtype)
    with torch.inference_mode():
        ref = F.linear(x, w, b)
    out = []
    for name in backends:
        try:
            fn, _ = BACKENDS[name](w, b)
            with torch.inference_mode():
                err = relative_error(fn(x), ref)
                t = time_call(lambda: fn(x), device, warmup, iters)  # noqa: B023 (called at once)
        except Exception as exc:  # e.g. a size the library refuses: the other backends still run
            print(f"  {name:26s} not available at this shape: {type(exc).__name__}: {exc}", flush=True)
            continue
        out.append(Measure(name, shape.m, shape.k, shape.n, t * 1e3, shape.flops / t / 1e12, err))
        print(
            f"  {name:26s} {t * 1e3:9.3f} ms  {shape.flops / t / 1e12:7.1f} TFLOP/s  rel. error {err:.2e}", flush=True
        )
    return out


def step_summary(shapes: list[GemmShape], results: list[Measure]) -> dict[str, dict[str, float]]:
    """Per backend measured on every shape: one step's projection GEMM ms (each shape × its count),
    the ratio to bf16 and the FLOP-weighted relative error."""
    by = {(r.backend, r.m, r.k, r.n): r for r in results}
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.backend for r in results):
        rows = [(s, by.get((name, s.m, s.k, s.n))) for s in shapes]
        if any(r is None for _, r in rows):
            continue
        total = sum(s.count * r.ms for s, r in rows)
        flops = sum(s.count * s.flops for s, _ in rows)
        err = sum(s.count * s.flops * r.rel_err for s, r in rows) / flops
        out[name] = {"step_ms": total, "tflops": flops / (total / 1e3) / 1e12, "rel_err": err}
    base = out.get("bf16", {}).get("step_ms")
    for v in out.values():
        v["vs_bf16"] = v["step_ms"] / base if base else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--frames", type=int, default=None, help=f"keyframes (default {KEYFRAMES}, issue 13's workload)")
    p.add_argument("--refs", type=int, default=None, help=f"references (default {MAX_REFERENCES}, the release's most)")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of: {', '.join(BACKENDS)}",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    p.add_argument(
        "--site",
        default=None,
        help="a folder of separately installed packages (torchao, comfy-kitchen) put on sys.path only now, after "
        "diffusers was imported: diffusers 0.36.0 fails to import while torchao 0.18 is importable",
    )
    args = p.parse_args(argv)
    if args.site:
        sys.path.insert(0, args.site)
    names = [n for n in args.backends.split(",") if n]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    if args.tiny and (args.height, args.width) == (480, 832):  # the parser's release defaults
        args.height, args.width = TINY_SIZE["height"], TINY_SIZE["width"]
    frames = args.frames or (TINY_SIZE["frames"] if args.tiny else KEYFRAMES)
    refs = args.refs if args.refs is not None else (TINY_SIZE["refs"] if args.tiny else MAX_REFERENCES)

    device = torch.device(args.device)
    dtype = default_dtype(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {dtype}", flush=True)
    shapes, tokens = model_shapes(args.tiny, args.height, args.width, frames, refs)
    print(
        f"workload: {args.height}x{args.width}, {frames} keyframes, {refs} references -> "
        f"{tokens.target} target + {tokens.reference} reference tokens; {len(shapes)} distinct GEMMs",
        flush=True,
    )
    described, missing = available_backends(names, device, dtype)
    results: list[Measure] = []
    for s in shapes:
        print(f"[{s.example}] M={s.m} K={s.k} N={s.n}, {s.count}x per step", flush=True)
        results += measure_shape(s, list(described), device, dtype, args.warmup, args.iters)
    summary = step_summary(shapes, results)
    print("one step's fp8-format projections (each shape x its count per step):", flush=True)
    for b, v in summary.items():
        print(
            f"  {b:26s} {v['step_ms']:9.1f} ms  {v['tflops']:7.1f} TFLOP/s  x{v['vs_bf16']:.3f} of bf16  "
            f"rel. error {v['rel_err']:.2e}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "device": name,
                    "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"),
                    "workload": {"height": args.height, "width": args.width, "frames": frames, "refs": refs},
                    "tokens": asdict(tokens),
                    "backends": described,
                    "not_available": missing,
                    "shapes": [asdict(s) for s in shapes],
                    "results": [asdict(r) for r in results],
                    "step": summary,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
