"""Run one training stage: the dispatcher over the flow-matching trainer (camera, memory) and
the DMD trainer (dmd). It sits above both, so neither trainer module imports the other."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import OutputPathError
from .dmd import DMDTrainer
from .parallel import TrainParallel
from .trainer import (
    METRICS_FILE,
    STATE_FILE,
    Conditioner,
    FlowMatchingTrainer,
    TrainSettings,
    _autocast,
    _device,
    _Progress,
    _trim_metrics,
    _write_run_config,
    load_conditioner,
    load_samples,
    prepare_samples,
)


def train(
    settings: TrainSettings, conditioner: Conditioner | None = None, parallel: TrainParallel | None = None
) -> Path:
    """Run (or resume) one stage; returns the output folder. See the module docstring.

    ``parallel``: the layout over the ranks of a ``torchrun`` group (:mod:`.parallel`); every rank calls
    ``train`` with the same settings, rank 0 alone writes the output folder.
    """
    settings = settings.resolved()
    parallel = parallel or TrainParallel()
    parallel.check(settings.batch)
    out = settings.out
    if not settings.resume and (out / STATE_FILE).exists():
        raise OutputPathError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if parallel.writes:
        out.mkdir(parents=True, exist_ok=True)
    device = parallel.ctx.device if parallel.ctx.parallel else _device(settings)
    generator = torch.Generator().manual_seed(settings.seed)  # the same draws on every rank (see .parallel)
    cond = conditioner or load_conditioner(settings, device)
    if settings.stage == "dmd":
        trainer: Any = DMDTrainer(settings, device, parallel=parallel)
    else:
        trainer = FlowMatchingTrainer(settings, device, parallel=parallel)
    cond.latent_cond_mode = trainer.latent_cond_mode
    prepared, empty_text = prepare_samples(load_samples(settings), cond, device)
    start = 0
    if settings.resume:
        start = trainer.load(out, generator)
        if parallel.writes:
            _trim_metrics(out / METRICS_FILE, start)
    if parallel.writes:
        _write_run_config(settings, parallel)
    bar = _Progress(settings.steps, start, settings.stage, settings.progress and parallel.writes)
    try:
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context(open(out / METRICS_FILE, "a", encoding="utf-8")) if parallel.writes else None
            for step in range(start + 1, settings.steps + 1):
                t0 = time.perf_counter()
                prep = prepared[int(torch.randint(len(prepared), (), generator=generator))]
                with _autocast(settings, device):
                    record = trainer.step(prep, empty_text, cond.vae, generator)
                record = {"step": step, **record, "seconds": round(time.perf_counter() - t0, 4)}
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                bar.update(record["loss"])
                if step % settings.save_every == 0 or step == settings.steps:
                    trainer.save(out, step, generator)
    finally:
        bar.close()
    return out
