"""Collectives of multi-process training: gradient averaging, and full tensors of sharded ones.

Training over ``N`` ranks (:mod:`worldstereo_core.training`) keeps one rule for every layout:
after ``backward`` each trainable parameter's gradient is **averaged** over the ranks.

* Data parallel (each rank a slice of the global batch, its loss the mean over its slice): the
  average of the per-rank gradients is the gradient of the global batch's mean loss.
* Sequence parallel (:mod:`.sequence_parallel`; every rank the same batch, a slice of the tokens):
  the loss is computed on the gathered output on every rank, so the backward of the gather (a
  reduce-scatter, a *sum* over ranks) hands each rank ``N`` × the gradient of its own tokens; the
  average over ranks is then the sum of the per-token contributions, the single-process gradient.

FSDP2 (:func:`.sequence_parallel.shard_weights`) averages in its reduce-scatter by default; plain
replicated weights use :func:`average_gradients`. Checkpoints are written whole (the release
layout, the same file for any number of ranks): :func:`full_tensor` gathers a sharded DTensor,
:func:`placed_like` cuts a whole tensor back into a parameter's shard.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from ..errors import CheckpointMismatchError


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter], group: dist.ProcessGroup | None = None) -> None:
    """Average the gradients of replicated ``params`` over ``group`` (one all-reduce per dtype).

    A parameter without a gradient counts as zero on that rank (and gets the average), so every
    rank ends with the same gradients whatever its branch of the graph touched.
    """
    world = dist.get_world_size(group)
    if world == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group_params in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group_params])
        dist.all_reduce(flat, group=group)  # SUM: gloo has no AVG
        flat /= world
        offset = 0
        for p in group_params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def mean_over_ranks(value: float, device: torch.device, group: dist.ProcessGroup | None = None) -> float:
    """The mean of a per-rank number over ``group`` (the number itself without a group)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t.item()) / dist.get_world_size(group)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded DTensor (a collective: every rank must call it); plain tensors pass."""
    return t.full_tensor() if _is_dtensor(t) else t


def placed_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` on ``like``'s device and dtype, sharded as ``like`` when it is a DTensor."""
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements)
    return whole.to(like.device, like.dtype)


@torch.no_grad()
def whole_tensors(named: Iterable[tuple[str, torch.Tensor]], keep: bool = True) -> dict[str, torch.Tensor]:
    """``named`` tensors as whole, contiguous host tensors (a collective when sharded: every rank calls it;
    only ranks with ``keep`` get the tensors, one gathered at a time; the others copy nothing)."""
    out = {}
    for key, value in named:
        if _is_dtensor(value) or keep:
            whole = full_tensor(value)
            if keep:
                out[key] = whole.detach().cpu().contiguous()
    return out


def whole_state_dict(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s state dict as :func:`whole_tensors` (what rank 0 writes as the release's layout)."""
    return whole_tensors(model.state_dict().items(), keep)


@torch.no_grad()
def load_whole_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a whole (unsharded) state dict into ``model``, whose parameters may be FSDP2 shards."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointMismatchError(f"the checkpoint lacks {len(missing)} of the model's keys, e.g. {missing[0]}")
    for key, target in own.items():
        value = placed_like(state[key], target)
        if _is_dtensor(target):
            target.to_local().copy_(value.to_local())
        else:
            target.copy_(value)


__all__ = [
    "average_gradients",
    "full_tensor",
    "load_whole_state",
    "mean_over_ranks",
    "placed_like",
    "whole_state_dict",
    "whole_tensors",
]
