"""Generation on N local GPUs from inside one process (ComfyUI): a pool of worker processes.

ComfyUI runs every node in one Python process, and ``torchrun`` cannot start it. So the loader
starts ``N`` worker processes (``spawn``), one per GPU. They form their own process group
(NCCL on GPUs, gloo on CPUs), each loads the model on its device and switches the transformer
to sequence parallel (:mod:`.sequence_parallel`). :meth:`GenerationWorkers.generate` sends the
same job to every rank and returns rank 0's frames; the calling process never holds the
weights.

Interrupts and errors end every rank cleanly:

* **Interrupt.** The caller's ``interrupt`` callback is polled while it waits; when it fires,
  a shared event is set. Every rank checks the event at the same sampler step through one
  all-reduce (so they agree on the step and none is left waiting in a collective), the job
  ends on all ranks with :class:`~worldstereo_core.models.sampling.SamplingInterrupted`, and
  the caller's own exception is re-raised. The pool stays usable.
* **Error on one rank.** After each job the ranks agree on success in one all-reduce
  (:func:`.launch.run_ranks`); a failing rank reports its error, the others report
  :class:`~.launch.RankFailedError`, and the caller raises the real error. The pool stays usable.
* **A rank dies** (killed, crashed): the caller notices while waiting, stops every worker and
  raises :class:`WorkerPoolError`; the pool is closed.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import WorldStereoError

logger = logging.getLogger(__name__)

POLL_S = 0.05


class WorkerPoolError(WorldStereoError):
    """A generation worker process died or the pool is closed; load the model again."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _numpy_tree(x: Any) -> Any:
    """Tensors → numpy for the trip between processes (a tensor would be shared through the
    sending process's file descriptors, which outlive neither a crash nor an exit)."""
    if isinstance(x, torch.Tensor):
        return ("__tensor__", x.detach().cpu().numpy(), str(x.dtype))
    if isinstance(x, (list, tuple)):
        return type(x)(_numpy_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _numpy_tree(v) for k, v in x.items()}
    return x


def _tensor_tree(x: Any) -> Any:
    if isinstance(x, tuple) and len(x) == 3 and x[0] == "__tensor__":
        return torch.from_numpy(np.array(x[1]))
    if isinstance(x, (list, tuple)):
        return type(x)(_tensor_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _tensor_tree(v) for k, v in x.items()}
    return x


def _run_job(ctx, models, job_id: int, kwargs: dict, results, stop_event) -> None:
    """One generation on this rank; ends with exactly one message (rank 0's carries the frames)."""
    import torch.distributed as dist

    from ..models.generate import generate_keyframes
    from ..models.sampling import SamplingInterrupted
    from .launch import RankFailedError, run_ranks

    flag = torch.zeros(1, device=ctx.device)

    def interrupt() -> bool:
        # every rank asks at the same step; the all-reduce makes them agree
        flag.fill_(1.0 if stop_event.is_set() else 0.0)
        if ctx.world_size > 1:
            dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def on_step(i: int, n: int) -> None:
        if ctx.rank == 0:
            results.put(("step", job_id, (i, n)))

    try:
        frames = run_ranks(ctx, lambda: generate_keyframes(models, interrupt=interrupt, on_step=on_step, **kwargs))
        results.put(("done", job_id, frames.numpy() if ctx.rank == 0 else None))
    except SamplingInterrupted:
        results.put(("interrupted", job_id, ctx.rank))
    except RankFailedError:
        results.put(("peer_failed", job_id, ctx.rank))
    except BaseException as exc:  # reported to the caller; the pool stays up
        logger.error("rank %d failed: %s", ctx.rank, traceback.format_exc())
        results.put(("error", job_id, (type(exc).__name__, str(exc))))


def _worker(rank: int, world: int, port: int, device_type: str, load_kwargs: dict, jobs, results, stop_event) -> None:
    import torch.distributed as dist

    from ..models.generate import load_models
    from .launch import DistributedContext
    from .sequence_parallel import enable_sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device_type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    ctx = DistributedContext(rank, world, device)
    try:
        try:
            models = load_models(**load_kwargs, device=device)
            if world > 1:
                enable_sequence_parallel(models.transformer)
            results.put(("ready", rank, None))
        except BaseException as exc:
            results.put(("load_error", rank, f"{type(exc).__name__}: {exc}"))
            return
        while True:
            job = jobs.get()
            if job is None:
                return
            job_id, kwargs = job
            _run_job(ctx, models, job_id, _tensor_tree(kwargs), results, stop_event)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class GenerationWorkers:
    """``N`` processes that hold the WorldStereo model on ``N`` devices and generate together.

    ``load_kwargs`` are :func:`~worldstereo_core.models.generate.load_models`'s arguments
    (without ``device``). ``device_type``: ``cuda`` (one GPU per rank) or ``cpu`` (gloo; tests).
    """

    def __init__(
        self,
        num_workers: int,
        load_kwargs: Mapping[str, Any],
        device_type: str = "cuda",
        start_timeout_s: float = 3600.0,
    ) -> None:
        if num_workers < 2:
            raise WorldStereoError(f"a worker pool needs at least 2 processes, got {num_workers}; use 1 GPU in-process")
        if device_type == "cuda" and torch.cuda.device_count() < num_workers:
            raise WorldStereoError(
                f"{num_workers} GPUs asked for, {torch.cuda.device_count()} visible; lower 'gpus' on the loader"
            )
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.num_workers = num_workers
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(num_workers)]
        self._stop = ctx.Event()
        self._next_job = 0
        port = _free_port()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(r, num_workers, port, device_type, dict(load_kwargs), self._jobs[r], self._results, self._stop),
                daemon=True,
            )
            for r in range(num_workers)
        ]
        for p in self._procs:
            p.start()
        ready, deadline = set(), time.monotonic() + start_timeout_s
        while len(ready) < num_workers:
            kind, rank, payload = self._get(deadline)
            if kind == "load_error":
                self.close()
                raise WorldStereoError(f"worker {rank} could not load the model: {payload}")
            if kind == "ready":
                ready.add(rank)
        logger.info("%d generation workers ready (%s)", num_workers, device_type)

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def _check_alive(self) -> None:
        """Raise (and stop the rest) if any worker is gone: its ranks' collectives would hang."""
        if not self._procs:
            raise WorkerPoolError("the generation workers are closed; load the model again")
        dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
        if dead:
            self.close()
            raise WorkerPoolError(f"generation worker(s) {dead} stopped; load the model again")

    def _get(self, deadline: float | None = None):
        while True:
            try:
                return self._results.get(timeout=POLL_S)
            except queue_mod.Empty:
                pass
            self._check_alive()
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise WorkerPoolError("the generation workers did not start in time")

    def generate(
        self,
        *,
        interrupt: Callable[[], Any] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """:func:`~worldstereo_core.models.generate.generate_keyframes` on every rank (without
        ``models``); returns rank 0's frames ``[F, H, W, 3]``. ``interrupt`` may return True or
        raise (ComfyUI raises its own exception); either stops every rank."""
        self._check_alive()
        job_id = self._next_job
        self._next_job += 1
        self._stop.clear()
        payload = (job_id, _numpy_tree(kwargs))
        for q in self._jobs:
            q.put(payload)
        frames, error, caller_exc = None, None, None
        finished = 0  # ranks that ended the job (each sends one final message)
        while True:
            if caller_exc is None and interrupt is not None and not self._stop.is_set():
                try:
                    if interrupt():
                        self._stop.set()
                except BaseException as exc:
                    caller_exc = exc
                    self._stop.set()
            try:
                kind, jid, value = self._results.get(timeout=POLL_S)
            except queue_mod.Empty:
                self._check_alive()
                continue
            if jid != job_id:
                continue  # a late message of an earlier job
            if kind == "step":
                if on_step is not None:
                    on_step(*value)
                continue
            if kind == "done" and value is not None:
                frames = torch.from_numpy(value)
            elif kind == "error":
                error = error or value
            finished += 1
            if finished >= self.num_workers:
                break
        if caller_exc is not None:
            raise caller_exc
        if error is not None:
            name, message = error
            raise WorldStereoError(f"{name}: {message}")
        if frames is None:
            from ..models.sampling import SamplingInterrupted

            raise SamplingInterrupted("generation interrupted")
        return frames

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop every worker (their GPU memory goes with them)."""
        procs, self._procs = self._procs, []
        for q in self._jobs:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)

    def __del__(self) -> None:  # a pool dropped by ComfyUI's cache must not leave processes behind
        try:
            self.close(timeout_s=5.0)
        except Exception:
            pass
