"""Where one whole DMD trajectory's time goes, phase by phase, and what the VAE gains from its variants.

The trajectory of issue 13 (``_common.TrajectoryRunner``: UMT5 on a 512-token prompt, then
``generate_keyframes`` with 21 keyframes and 8 references at 480×832, random weights, everything resident)
runs once to warm up, then once with a timer around each phase — the device is synchronised before and
after every timed call, so the phases add up to the run:

* UMT5 prompt · CLIP image · VAE I2V condition (``full_vae``: one causal encode of 81 frames) ·
  VAE keyframe encodes (the 21 GGM renders, then the 8 SSM references) · the transformer calls (4 DMD
  steps) · VAE keyframe decode (21) · the rest (input checks, Plücker rays, masks, noise, copies to
  the host: the time not inside a timed call).

``--vae-variants`` also times the three VAE phases alone, as shipped (one-frame causal convolutions as
2-D convolutions, ``vae._FirstFrameConvs``; 3-D weights channels-last) and with three variants, each
checked against the shipped output: diffusers' path (3-D convolutions throughout, contiguous weights),
contiguous weights only, and ``cudnn.benchmark`` (cuDNN's autotuner).

    python bench/trajectory_phases.py --out phases.json            # H100/H200, ~3 minutes
    python bench/trajectory_phases.py --tiny --device cpu          # smoke test
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from _common import TrajectoryRunner, bench_parser, build_encoders, default_dtype, random_module, sync

from worldstereo_core.models import build_transformer
from worldstereo_core.models import vae as vae_module
from worldstereo_core.models.encoders import CLIPImageEncoder
from worldstereo_core.models.generate import WorldStereoModels, compile_blocks
from worldstereo_core.models.vae import WanKeyframeVAE, conv_weights_memory_format
from worldstereo_core.tiny_configs import build_tiny_transformer


class PhaseTimer:
    """Wall time per phase, the device synchronised around each timed call; nested timed calls count
    for the outermost only (``encode_condition`` may call ``encode_keyframes``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def wrap(self, label: Callable[..., str] | str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            name = label(*args, **kwargs) if callable(label) else label
            sync(self.device)
            start = time.perf_counter()
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                sync(self.device)
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


@contextlib.contextmanager
def timed_phases(run: TrajectoryRunner, timer: PhaseTimer) -> Iterator[None]:
    """Patch the instances (never the classes) a trajectory calls with ``timer``'s wrappers."""
    models, vae = run.models, run.models.vae
    patches = [
        (run.t5, "forward", "UMT5 prompt"),
        (models.image_encoder, "encode", "CLIP image"),
        (vae, "encode_condition", "VAE I2V condition"),
        (vae, "encode_keyframes", lambda video, *a, **k: f"VAE encode keyframes ({video.shape[2]})"),
        (vae, "decode_keyframes", lambda latents, *a, **k: f"VAE decode keyframes ({latents.shape[2]})"),
        (models.transformer, "forward", "transformer (DMD steps)"),
    ]
    for obj, attr, label in patches:
        setattr(obj, attr, timer.wrap(label, getattr(obj, attr)))
    try:
        yield
    finally:
        for obj, attr, _ in patches:
            obj.__dict__.pop(attr, None)


def vae_variants(vae, device: torch.device, H: int, W: int, F: int, R: int) -> dict[str, dict[str, float]]:
    """The three VAE phases alone (ms), shipped and per variant, with each variant's largest difference."""
    g = torch.Generator(device=device).manual_seed(7)
    dtype = next(vae.parameters()).dtype
    first = torch.rand(1, 3, H, W, device=device, dtype=dtype, generator=g) * 2 - 1
    frames = torch.rand(1, 3, F + R, H, W, device=device, dtype=dtype, generator=g) * 2 - 1
    latents = torch.randn(1, 16, F, H // 8, W // 8, device=device, dtype=dtype, generator=g)
    ours = WanKeyframeVAE(vae)

    def phases() -> dict[str, tuple[float, torch.Tensor]]:
        out = {}
        for name, fn in (
            ("I2V condition (81-frame causal encode)", lambda: ours.encode_condition(first, F, mode="full_vae")),
            (f"encode {F + R} keyframes", lambda: ours.encode_keyframes(frames)),
            (f"decode {F} keyframes", lambda: ours.decode_keyframes(latents)),
        ):
            fn()
            sync(device)
            start = time.perf_counter()
            result = fn()
            sync(device)
            out[name] = (time.perf_counter() - start, result)
        return out

    results: dict[str, dict[str, float]] = {}
    stock_convs = mock.patch.object(vae_module._FirstFrameConvs, "__enter__", lambda self: self)
    with torch.no_grad():
        base = phases()  # as shipped: first-frame 2-D convolutions, channels-last 3-D weights
        results["shipped"] = {k: t * 1e3 for k, (t, _) in base.items()}
        for variant in (
            "diffusers' path (3-D convolutions, contiguous weights)",
            "contiguous weights",
            "cudnn.benchmark",
        ):
            before = torch.backends.cudnn.benchmark
            try:
                with contextlib.ExitStack() as stack:
                    if variant.startswith("diffusers"):
                        stack.enter_context(stock_convs)
                    if variant.startswith(("diffusers", "contiguous")):
                        conv_weights_memory_format(vae, torch.contiguous_format)
                    if variant == "cudnn.benchmark":
                        torch.backends.cudnn.benchmark = True
                    got = phases()
            except Exception as exc:  # a variant that cannot run here is reported, not fatal
                results[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                continue
            finally:
                torch.backends.cudnn.benchmark = before
                conv_weights_memory_format(vae, torch.channels_last_3d)
            row = {k: t * 1e3 for k, (t, _) in got.items()}
            row["max |diff| vs shipped"] = max(
                float((got[k][1].float() - base[k][1].float()).abs().max()) for k in base
            )
            results[variant] = row
    return results


def main() -> int:
    p = bench_parser(__doc__)
    p.add_argument("--refs", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer's blocks first")
    p.add_argument("--vae-variants", action="store_true", help="also time the VAE phases alone per variant")
    p.add_argument("--vae-only", action="store_true", help="with --vae-variants: stop after the VAE figures")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = default_dtype(device)
    H, W = (32, 48) if args.tiny else (args.height, args.width)
    R = args.refs
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "workload": f"{H}x{W}, 21 keyframes, {R} references, random weights, resident",
    }
    vae, t5, clip, t5_cfg = build_encoders(device, dtype, args.tiny)
    if args.vae_variants:
        report["vae_variants_ms"] = vae_variants(vae, device, H, W, 21, R)
        print(json.dumps(report["vae_variants_ms"], indent=1), flush=True)
    if args.vae_only:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
        return 0
    transformer = random_module(
        lambda: (build_tiny_transformer if args.tiny else build_transformer)("dmd"), device, dtype, 0
    )
    if args.compile:
        compile_blocks(transformer)
    models = WorldStereoModels(transformer, WanKeyframeVAE(vae), None, None, CLIPImageEncoder(clip), "dmd", device)
    run = TrajectoryRunner(models, t5, t5_cfg, device, H, W, R)
    run()  # warm-up: kernel choice, allocator, compilation
    untimed = run()
    timer = PhaseTimer(device)
    with timed_phases(run, timer):
        total = run()
    phases = {k: round(v, 4) for k, v in timer.seconds.items()}
    phases["rest (outside the timed calls)"] = round(total - sum(timer.seconds.values()), 4)
    report.update(
        trajectory_s=round(total, 4),
        trajectory_untimed_s=round(untimed, 4),
        compiled=args.compile,
        phases_s=phases,
        calls=dict(timer.calls),
    )
    print(
        f"device {report['device']}; trajectory {total:.2f} s timed, {untimed:.2f} s untimed; compiled={args.compile}"
    )
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {seconds:8.3f} s  {100 * seconds / total:5.1f} %  ({timer.calls.get(name, '-')} calls)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
