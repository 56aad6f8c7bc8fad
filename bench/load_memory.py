"""Host memory of ``load_worldstereo``: peak RSS above baseline while a full checkpoint loads.

1. A random checkpoint in the release's layout (``config.json`` + ``model.safetensors``, bf16) is
   written by streaming: the header first, then each tensor's bytes, cut from one reusable random
   pool — the writer never holds more than that pool (32 MiB), whatever the model size.
2. A fresh child process imports torch, initialises the target device, records its baseline RSS,
   then runs ``load_worldstereo(folder, device=...)`` while a thread samples ``VmRSS`` every
   few ms (``VmHWM`` is reset via ``/proc/self/clear_refs`` where the kernel allows, as a
   cross-check). The child reports JSON; the parent prints a table last.

The figure of merit is the *transient* host memory: peak − baseline − (bytes of weights that stay
on the host, i.e. 0 for ``--device cuda``), as a percentage of the checkpoint size. Target < 10 %.

    python bench/load_memory.py                          # full memory variant (34.9 GB file), cuda
    python bench/load_memory.py --variant camera --dir /scratch/ws
    python bench/load_memory.py --tiny --device cpu      # seconds, smoke test
    python bench/load_memory.py --layers 2 --device cpu  # full widths, 2 blocks (~2.4 GB file)

The full checkpoint needs ~35 GB of free disk in ``--dir`` (default: a temporary folder, deleted
afterwards unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POOL_BYTES = 32 * 1024 * 1024
_ST_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident set size (or ``VmHWM``) of this process from ``/proc/self/status``; psutil elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def write_random_checkpoint(
    folder: Path, variant: str, tiny: bool, dtype_name: str = "bfloat16", seed: int = 0, layers: int | None = None
) -> int:
    """Stream a random ``config.json`` + ``model.safetensors`` of ``variant`` into ``folder``; returns the file size.

    Keys, shapes and order follow the model's ``state_dict`` (built on ``meta``, no memory). Values
    are N(0, 0.02) samples from one fixed pool, so the file is valid and finite but cheap to write.
    ``layers`` cuts the main and control branches to that many blocks (full widths kept).
    """
    import dataclasses

    import torch

    from worldstereo_core.models.loading import released_config
    from worldstereo_core.tiny_configs import tiny_worldstereo_config

    cfg = (tiny_worldstereo_config if tiny else released_config)(variant)
    if layers is not None:
        controlnet = dataclasses.replace(cfg.controlnet, num_layers=min(layers, cfg.controlnet.num_layers))
        cfg = dataclasses.replace(cfg, transformer={**cfg.transformer, "num_layers": layers}, controlnet=controlnet)
    with torch.device("meta"):
        model = cfg.build()
    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict = {}
    offset = 0
    for key, p in model.state_dict().items():
        n = math.prod(p.shape) * itemsize
        header[key] = {"dtype": _ST_NAMES[dtype_name], "shape": list(p.shape), "data_offsets": [offset, offset + n]}
        offset += n
    cfg_json = model.ws_config.to_json_dict()
    header["__metadata__"] = {"format": "pt", "worldstereo_config": json.dumps(cfg_json)}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes

    gen = torch.Generator().manual_seed(seed)
    pool_bytes = max(itemsize, min(POOL_BYTES, offset))
    pool = (torch.randn(pool_bytes // itemsize, generator=gen) * 0.02).to(dtype).view(torch.uint8).numpy().tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg_json, indent=2), encoding="utf-8")
    tmp = folder / "model.safetensors.partial"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        pos = 0  # where in the pool the next tensor starts, so tensors differ
        for key, info in header.items():
            if key == "__metadata__":
                continue
            left = info["data_offsets"][1] - info["data_offsets"][0]
            while left:
                # itemsize-aligned slices keep every element a whole, finite value
                take = min(left, len(pool) - pos)
                f.write(pool[pos : pos + take])
                left -= take
                pos = (pos + take) % len(pool)
            pos = (pos + 7919 * itemsize) % len(pool)
    os.replace(tmp, folder / "model.safetensors")
    del model
    return (folder / "model.safetensors").stat().st_size


def _measure(
    folder: str, device: str, dtype_name: str, interval: float, weight_format: str = "bf16", blocks_on_host: int = 0
) -> dict:
    """Child process: baseline, sampled peak and HWM during ``load_worldstereo``."""
    import torch

    from worldstereo_core.models import load_worldstereo

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.zeros(1, device=dev)  # CUDA context is part of the baseline, not of loading
        torch.cuda.synchronize(dev)
    # warm the code paths (imports inside diffusers/safetensors) on a throwaway meta build
    from worldstereo_core.tiny_configs import build_tiny_transformer

    with torch.device("meta"):
        build_tiny_transformer("camera")
    baseline = rss_bytes()
    hwm_reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        pass

    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    model = load_worldstereo(
        folder, device=dev, dtype=getattr(torch, dtype_name), weight_format=weight_format, blocks_on_host=blocks_on_host
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    after = rss_bytes()
    peak = max(peak, after)
    hwm = rss_bytes("VmHWM") if hwm_reset else None
    host_weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.device.type == "cpu")
    gpu_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    return {
        "baseline": baseline,
        "peak": peak,
        "hwm": hwm,
        "after": after,
        "host_weights": host_weights,
        "seconds": seconds,
        "gpu_peak": gpu_peak,
        "params": sum(t.numel() for t in model.state_dict().values()),
    }


def _gib(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:.3f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.2f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="memory", choices=["camera", "memory", "dmd"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(_ST_NAMES), help="file and load dtype")
    p.add_argument("--tiny", action="store_true", help="tiny config: runs on CPU in seconds")
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="keep only this many main/control blocks (full widths): a smaller but realistic file",
    )
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    p.add_argument("--reuse", action="store_true", help="reuse an existing checkpoint in --dir")
    p.add_argument("--interval", type=float, default=0.002, help="RSS sampling period, seconds")
    p.add_argument("--target", type=float, default=10.0, help="pass threshold, %% of the checkpoint size")
    p.add_argument(
        "--weight-format",
        default="bf16",
        choices=["bf16", "fp8_e4m3fn_scaled"],
        help="load the bf16 file as is or quantise its block projections to fp8 while streaming",
    )
    p.add_argument(
        "--blocks-on-host",
        type=int,
        default=0,
        help="keep the last N main blocks on the host (the block-swap layout); they count as kept weights",
    )
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._child is not None:
        print(
            "RESULT "
            + json.dumps(
                _measure(args._child, args.device, args.dtype, args.interval, args.weight_format, args.blocks_on_host)
            )
        )
        return

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ws_load_memory_"))
    suffix = ("-tiny" if args.tiny else "") + (f"-{args.layers}layers" if args.layers is not None else "")
    folder = root / f"worldstereo-{args.variant}{suffix}"
    try:
        t0 = time.perf_counter()
        if args.reuse and (folder / "model.safetensors").exists():
            size = (folder / "model.safetensors").stat().st_size
            write_s = 0.0
        else:
            size = write_random_checkpoint(folder, args.variant, args.tiny, args.dtype, layers=args.layers)
            write_s = time.perf_counter() - t0
        print(f"checkpoint {folder} ({size / 2**30:.3f} GiB) written in {write_s:.1f} s; measuring…", flush=True)
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            str(folder),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--interval",
            str(args.interval),
            "--weight-format",
            args.weight_format,
            "--blocks-on-host",
            str(args.blocks_on_host),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"measurement child failed (exit {proc.returncode})")
        r = json.loads(line[len("RESULT ") :])
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    above = r["peak"] - r["baseline"]
    transient = above - r["host_weights"]
    pct = 100.0 * transient / size
    hwm_transient = None if r["hwm"] is None else r["hwm"] - r["baseline"] - r["host_weights"]
    rows = [
        (
            "variant / device / dtype",
            f"{args.variant}{suffix} / {args.device} / {args.dtype} -> {args.weight_format}"
            f"{f', {args.blocks_on_host} blocks on host' if args.blocks_on_host else ''}",
        ),
        ("parameters", f"{r['params'] / 1e9:.4f} B"),
        ("checkpoint size", _gib(size)),
        ("load time", f"{r['seconds']:.2f} s ({size / 2**30 / max(r['seconds'], 1e-9):.2f} GiB/s)"),
        ("baseline RSS", _gib(r["baseline"])),
        ("peak RSS (sampled)", _gib(r["peak"])),
        ("RSS after load", _gib(r["after"])),
        ("weights kept on host", _gib(r["host_weights"])),
        ("transient peak (sampled)", f"{_gib(transient)} = {pct:.2f} % of checkpoint"),
        (
            "transient peak (VmHWM)",
            "—" if hwm_transient is None else f"{_gib(hwm_transient)} = {100 * hwm_transient / size:.2f} %",
        ),
        ("GPU peak allocated", _gib(r["gpu_peak"]) if r["gpu_peak"] else "—"),
        (
            "verdict",
            "n/a for --tiny (fixed overheads dominate a tiny file)"
            if args.tiny
            else f"{'PASS' if pct < args.target else 'FAIL'} (target < {args.target:g} %)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
