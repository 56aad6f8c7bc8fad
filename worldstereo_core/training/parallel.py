"""Training on several processes (``torchrun --nproc-per-node N -m worldstereo_core train …``).

The layout, chosen per run (:class:`TrainParallel`):

* **Data parallel** (default with ``N`` > 1): ``--batch`` is the **global** batch of a step and is
  split over the ranks, ``batch / N`` rows each. Every rank seeds the same random generator and
  draws the same step (clip, cache masking, reference dropout, text dropout, all ``batch`` noise
  levels and noises), then keeps its own rows: rank ``r`` takes rows ``r·batch/N … (r+1)·batch/N − 1``.
  The gradients are averaged over the ranks, so a step is the single-process step of the same
  global batch (up to float summation order), and ``--resume`` works for any ``N``.
* **Sequence parallel** (``--sequence-parallel``): every rank runs the whole batch, each on a slice
  of the tokens (Ulysses, :mod:`worldstereo_core.distributed.sequence_parallel`; the all-to-alls are
  differentiable). For an item too long for one GPU. Gradients are averaged too (see
  :mod:`worldstereo_core.distributed.data_parallel` for why that is the single-process gradient).
* ``--shard-weights`` (either layout): FSDP2, each rank keeps ``1/N`` of the weights, gradients and
  optimizer moments (dmd: of each of its three networks, which then hold their frozen modules each);
  without it the weights are replicated and the gradients all-reduced.

Rank 0 alone writes ``metrics.jsonl``, ``config.json`` + ``model.safetensors`` (whole tensors, the
release layout: the same checkpoint as a single-process run) and the trainer state; every rank
reads them on ``--resume``. The logged loss is the mean over the ranks' rows (the global batch's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..distributed.data_parallel import average_gradients, mean_over_ranks
from ..distributed.launch import DistributedContext
from ..errors import InvalidOptionError

SINGLE = DistributedContext(0, 1, torch.device("cpu"))


@dataclass(frozen=True)
class TrainParallel:
    """How one training run spreads over the ranks of ``ctx`` (a single process: ``ctx.world_size == 1``)."""

    ctx: DistributedContext = SINGLE
    sequence_parallel: bool = False
    shard_weights: bool = False

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def writes(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.ctx.is_main

    @property
    def data_parallel(self) -> bool:
        return self.ctx.parallel and not self.sequence_parallel

    def check(self, batch: int) -> None:
        if self.data_parallel and batch % self.world_size:
            raise InvalidOptionError(
                f"--batch {batch} (the global batch) must divide by the {self.world_size} processes of data "
                f"parallel training; use a multiple of {self.world_size}, or --sequence-parallel"
            )
        if not self.ctx.parallel and (self.sequence_parallel or self.shard_weights):
            raise InvalidOptionError(
                "--sequence-parallel and --shard-weights need several processes: start with torchrun --nproc-per-node N"
            )

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch``."""
        if not self.data_parallel:
            return slice(0, batch)
        per = batch // self.world_size
        return slice(self.ctx.rank * per, (self.ctx.rank + 1) * per)

    def prepare(self, model: torch.nn.Module) -> None:
        """Switch ``model`` to sequence parallel and/or shard its weights (call after setting ``requires_grad``)."""
        if not self.ctx.parallel:
            return
        from ..distributed import enable_sequence_parallel, shard_weights

        if self.sequence_parallel:
            enable_sequence_parallel(model)
        if self.shard_weights:
            shard_weights(model)

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients over the ranks (FSDP2 has done it in its reduce-scatter)."""
        if self.ctx.parallel and not self.shard_weights:
            average_gradients(params)

    def mean(self, value: float) -> float:
        """The mean of a per-rank number over the ranks (what the logs show)."""
        return mean_over_ranks(value, self.ctx.device) if self.ctx.parallel else float(value)


def select_rows(value, rows: slice):
    """``value`` (a tensor, or a dataclass of tensors / None, nested) with only ``rows`` of its batch."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[rows]
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: select_rows(getattr(value, f.name), rows) for f in dataclasses.fields(value)}
        )
    raise TypeError(f"cannot select rows of {type(value).__name__}")


__all__ = ["TrainParallel", "select_rows"]
