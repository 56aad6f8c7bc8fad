"""Process-group set-up for runs started by ``torchrun`` (one process per GPU, or per CPU rank).

``torchrun --nproc-per-node N -m worldstereo_core generate …`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`init_from_env` joins that group (NCCL when
CUDA is there, gloo otherwise) and pins each rank to its GPU. A single process (no
``WORLD_SIZE`` or ``WORLD_SIZE=1``) runs without a group.

If any rank fails, :func:`run_ranks` makes every rank stop: the failing rank's exception is
re-raised there and the others get :class:`RankFailedError` instead of hanging in a collective.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import WorldStereoError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RankFailedError(WorldStereoError):
    """Another rank of a multi-process run failed; this one stopped with it."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the torchrun group described by the environment (or run alone without one).

    ``device``: ``cuda`` / ``cpu`` / None (CUDA when available). On CUDA each rank takes GPU
    ``LOCAL_RANK``; the backend is NCCL there, gloo on CPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise WorldStereoError(
                f"rank {rank} wants GPU {local} but {torch.cuda.device_count()} are visible; "
                "start as many processes per node as there are GPUs"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        logger.info("rank %d of %d on %s", rank, world, dev)
    return DistributedContext(rank, world, dev)


def run_ranks(ctx: DistributedContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails on any rank, all ranks stop.

    After ``fn`` each rank reports success or failure in one all-reduce, so a rank whose
    partner died raises :class:`RankFailedError` rather than waiting forever in the next
    collective. (A rank that dies inside a collective is caught by the group's timeout.)
    """
    if not ctx.parallel:
        return fn()
    failed = torch.zeros(1, device=ctx.device)
    result: T | None = None
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as exc:
        error = exc
        failed += 1
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if failed.item() > 0:
        raise RankFailedError(f"{int(failed.item())} other rank(s) failed; rank {ctx.rank} stops with them")
    return result  # type: ignore[return-value]


def shutdown(ctx: DistributedContext) -> None:
    """Leave the group together: every rank waits at a barrier, then destroys it.

    Without the barrier the ranks destroyed their gloo group at different moments, and one of them
    sometimes aborted in C++ ("terminate called without an active exception", SIGABRT) after a run
    that had completed and written its files: 1 in 3 sequence-parallel + FSDP training runs on this
    project's CPU test, 0 in 10 with the barrier."""
    if ctx.parallel and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
