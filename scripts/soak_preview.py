"""Soak test: the preview workflow run back to back on one server, its memory sampled.

    python scripts/soak_preview.py [--runs 50] [--out soak.json]

Starts ComfyUI (from the test environment) with this pack, converts
``workflows/preview_synthetic.json`` to an API graph and queues it ``--runs`` times, one after
the other; each run gets a new loop seed so ComfyUI's cache cannot answer it. A thread samples
the server's resident memory (RSS, from ``/proc/<pid>/status``) every ``--interval`` seconds.
Prints one line per run (wall time, RSS after the run, peak RSS during it) and writes the
series plus a summary to ``--out``: RSS after the warm-up run and after the last, and the
least-squares slope of RSS-after-run over the runs after the warm-up (MiB per run) — a leak
shows as a slope that stays positive however many runs.

Not a CI test (it takes ~30 s per run on two cores): run it by hand, e.g. with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_server import REPO_ROOT, ComfyServer
from workflow_api import ui_to_api

LOOP_NODE = "WorldStereoOracleSceneLoop"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler(threading.Thread):
    """Samples a process's RSS until stopped; ``peak_since(t)`` is the largest sample after ``t``."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.time(), rss_bytes(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()

    def peak_since(self, t: float) -> int:
        return max((r for ts, r in self.samples if ts >= t), default=0)


def slope(ys: list[float]) -> float:
    n = len(ys)
    if n < 2:
        return 0.0
    xm, ym = (n - 1) / 2, sum(ys) / n
    return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sum((i - xm) ** 2 for i in range(n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--workflow", type=Path, default=REPO_ROOT / "workflows" / "preview_synthetic.json")
    parser.add_argument("--out", type=Path, default=Path("soak_preview.json"))
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    mib = 2**20
    runs = []
    with ComfyServer() as server:
        api = ui_to_api(workflow, server.object_info())
        loop = [k for k, v in api.items() if v["class_type"] == LOOP_NODE]
        if not loop:
            print(f"{args.workflow} has no {LOOP_NODE}; nothing would change between runs", file=sys.stderr)
            return 2
        sampler = Sampler(server.proc.pid, args.interval)
        sampler.start()
        start_rss = rss_bytes(server.proc.pid)
        print(f"server pid {server.proc.pid}, RSS at start {start_rss / mib:.0f} MiB", flush=True)
        for i in range(args.runs):
            for k in loop:
                api[k]["inputs"]["seed"] = 1000 + i  # a new prompt each time: nothing is served from cache
            t0 = time.time()
            result = server.run(api, timeout=1800)
            took = time.time() - t0
            after = rss_bytes(server.proc.pid)
            run = {
                "run": i + 1,
                "status": result.status,
                "seconds": round(took, 2),
                "rss_after_mib": round(after / mib, 1),
                "rss_peak_mib": round(sampler.peak_since(t0) / mib, 1),
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
            if result.status != "success":
                print(f"run {i + 1} failed: {result.error}", file=sys.stderr)
                break
        sampler.stop()
    after_runs = [r["rss_after_mib"] for r in runs[1:]]  # run 1 warms up (imports, caches, allocator)
    summary = {
        "runs": len(runs),
        "all_succeeded": all(r["status"] == "success" for r in runs),
        "rss_start_mib": round(start_rss / mib, 1),
        "rss_after_first_mib": runs[0]["rss_after_mib"] if runs else None,
        "rss_after_last_mib": runs[-1]["rss_after_mib"] if runs else None,
        "rss_peak_mib": max((r["rss_peak_mib"] for r in runs), default=None),
        "rss_slope_mib_per_run_after_warmup": round(slope(after_runs), 3),
        "mean_seconds_per_run": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 2),
    }
    args.out.write_text(
        json.dumps(
            {"summary": summary, "runs": runs, "samples": [(round(t, 2), r) for t, r in sampler.samples]}, indent=1
        )
    )
    print(json.dumps(summary, indent=1))
    return 0 if summary["all_succeeded"] else 1


if __name__ == "__main__":
    sys.exit(main())
