"""Keeping a model that does not fit on the GPU usable: encoder swapping and sequential block offload.

* :func:`on_device` — a context manager that moves a module to the execution device for the duration of
  a call and back to the host afterwards (the encoders' offload: UMT5-XXL alone is 11 GB in bf16).
* :class:`BlockSwap` / :func:`swap_last_blocks` — ``N`` transformer blocks stay on the host (pinned when
  CUDA is there, so the copies are asynchronous) and each is brought to the GPU just before its forward
  and dropped right after, the next one prefetched on a side stream while the current one computes;
  everything else lives on the GPU. Weights are never copied back: the host copy is kept and the
  device copy is simply released, so nothing is written twice.
* :func:`enable_sequential_offload` — the same for every repeated block (main and control): peak GPU
  memory is two blocks plus activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

OFFLOAD_MODES = ("none", "encoders", "sequential")
"""``none``: everything on the device; ``encoders``: text/image encoders live on the host and visit
the device only to encode; ``sequential``: that, plus the transformer's blocks visit one at a time."""


@contextlib.contextmanager
def on_device(module: nn.Module | None, device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the ``with`` body with ``module``'s weights on ``device`` if ``enabled`` (the encoders' offload).

    The host tensors stay where they are; the module gets device copies for the body and its host
    tensors back afterwards, so nothing is copied back and no second host copy is ever made.
    """
    if module is None or not enabled or device.type == "cpu":
        yield
        return
    slots = list(_tensors(module))
    if all(t.device == device for _, _, t, _ in slots):
        yield
        return
    for sub, name, t, is_param in slots:
        _assign(sub, name, t.to(device, non_blocking=True), is_param)
    try:
        yield
    finally:
        for sub, name, t, is_param in slots:
            _assign(sub, name, t, is_param)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _tensors(module: nn.Module) -> Iterable[tuple[nn.Module, str, torch.Tensor, bool]]:
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            yield sub, name, p, True
        for name, b in sub.named_buffers(recurse=False):
            if b is not None:
                yield sub, name, b, False


def _assign(sub: nn.Module, name: str, t: torch.Tensor, is_param: bool) -> None:
    if is_param:
        sub._parameters[name] = nn.Parameter(t, requires_grad=False)
    else:
        sub._buffers[name] = t


class BlockSwap:
    """Blocks whose weights live on the host and visit ``device`` only for their own forward.

    Each swapped block's parameters and buffers are replaced by host copies (pinned on CUDA, so the
    copies are asynchronous DMA). A forward pre-hook gives the block device copies, a forward hook
    drops them again — nothing is ever copied back, the host copy is the only permanent one. With
    ``prefetch`` (CUDA), the next swapped block in execution order is copied on a side stream while
    the current one computes, and the first one while the model embeds its inputs, so the copies
    overlap compute; the compute stream waits on the copy's event before it touches the weights.
    Device memory for swapped weights is therefore at most two blocks.

    Attributes:
        blocks: the swapped blocks, in execution order.
        device: where they compute.
    """

    def __init__(
        self, model: nn.Module, blocks: Iterable[nn.Module], device: torch.device | str, prefetch: bool = True
    ) -> None:
        self.device = torch.device(device)
        self.blocks = list(blocks)
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if cuda and prefetch else None
        self.slots: list[list[tuple[nn.Module, str, torch.Tensor, bool]]] = []
        for block in self.blocks:
            slots = []
            for sub, name, t, is_param in list(_tensors(block)):
                if cuda and not (t.device.type == "cpu" and t.is_pinned()):
                    # straight into page-locked memory: no pageable staging copy (host RAM peak)
                    host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
                    host.copy_(t.detach())
                else:
                    host = t.detach().to("cpu")
                _assign(sub, name, host, is_param)
                slots.append((sub, name, host, is_param))
            self.slots.append(slots)
        self._index = {id(b): i for i, b in enumerate(self.blocks)}
        self._pending: dict[int, tuple[list[torch.Tensor], torch.cuda.Event]] = {}
        self.handles = [model.register_forward_pre_hook(self._model_pre)]
        for b in self.blocks:
            self.handles.append(b.register_forward_pre_hook(self._enter))
            self.handles.append(b.register_forward_hook(self._leave))

    @property
    def host_bytes(self) -> int:
        """Bytes of the swapped weights (held once, on the host)."""
        return sum(h.numel() * h.element_size() for slots in self.slots for _, _, h, _ in slots)

    def module_ids(self) -> set[int]:
        """``id`` of every submodule of the swapped blocks (to leave them alone when moving the rest)."""
        return {id(m) for b in self.blocks for m in b.modules()}

    def _copy(self, i: int) -> list[torch.Tensor]:
        # copy=True: a fresh tensor even when device is the CPU (tests exercise the same path there)
        return [h.to(self.device, non_blocking=True, copy=True) for _, _, h, _ in self.slots[i]]

    def _prefetch(self, i: int) -> None:
        if self.stream is None or i >= len(self.blocks) or i in self._pending:
            return
        with torch.cuda.stream(self.stream):
            tensors = self._copy(i)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._pending[i] = (tensors, event)

    def _model_pre(self, module: nn.Module, args) -> None:
        self._prefetch(0)

    def _enter(self, block: nn.Module, args) -> None:
        i = self._index[id(block)]
        if i in self._pending:
            tensors, event = self._pending.pop(i)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for t in tensors:
                # allocated on the side stream, used on the compute stream: keep the allocator from
                # handing the memory out again before the compute stream is done with it
                t.record_stream(compute)
        else:
            tensors = self._copy(i)
        for (sub, name, _, is_param), t in zip(self.slots[i], tensors):
            _assign(sub, name, t, is_param)
        self._prefetch(i + 1)

    def _leave(self, block: nn.Module, args, output) -> None:
        for sub, name, host, is_param in self.slots[self._index[id(block)]]:
            _assign(sub, name, host, is_param)

    def release(self) -> None:
        """Drop every device copy: prefetched ones no forward consumed, and those of a block whose forward
        raised (its forward hook never ran). Called after an error or an interrupt, so none leaks."""
        self._pending.clear()
        for slots in self.slots:
            for sub, name, host, is_param in slots:
                _assign(sub, name, host, is_param)

    def remove(self) -> None:
        """Detach the hooks; the swapped blocks keep their host weights."""
        self.release()
        for h in self.handles:
            h.remove()
        self.handles = []


def move_except(model: nn.Module, device: torch.device | str, skip: set[int] = frozenset()) -> None:
    """Move every parameter and buffer of ``model`` to ``device``, except those of modules in ``skip`` (ids)."""
    device = torch.device(device)
    for sub in model.modules():
        if id(sub) in skip:
            continue
        for name, p in list(sub.named_parameters(recurse=False)):
            if p.device != device:
                sub._parameters[name] = nn.Parameter(p.detach().to(device), requires_grad=False)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None and b.device != device:
                sub._buffers[name] = b.to(device)


def block_swaps(model: nn.Module) -> list[BlockSwap]:
    """Every :class:`BlockSwap` installed on ``model`` or its submodules (e.g. an attached Uni3C branch)."""
    out = []
    for m in model.modules():
        swap = m.__dict__.get("block_swap")
        if isinstance(swap, BlockSwap):
            out.append(swap)
    return out


def swapped_module_ids(model: nn.Module) -> set[int]:
    """``id`` of every submodule whose weights a :class:`BlockSwap` keeps on the host."""
    return {i for swap in block_swaps(model) for i in swap.module_ids()}


def execution_order(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a WorldStereo transformer in the order a forward runs them.

    Main block ``i`` runs before control block ``i`` (the branches run in lockstep), so the list
    interleaves ``blocks`` and ``controlnet.controlnet_blocks``.
    """
    main = list(getattr(model, "blocks", []))
    control = list(getattr(getattr(model, "controlnet", None), "controlnet_blocks", []))
    out: list[nn.Module] = []
    for i, b in enumerate(main):
        out.append(b)
        if i < len(control):
            out.append(control[i])
    return out + control[len(main) :]


def enable_block_swap(
    model: nn.Module, device: torch.device | str, blocks: Iterable[nn.Module], prefetch: bool = True
) -> BlockSwap:
    """Keep ``blocks`` (submodules of ``model``, in execution order) on the host and swap each in for its forward.

    Every other parameter and buffer of ``model`` is moved to ``device``. The handle is also stored as
    ``model.block_swap`` so code that moves the model (ComfyUI's memory manager) leaves those blocks on
    the host. Replaces a previous swap of the same model.
    """
    old = getattr(model, "block_swap", None)
    if old is not None:
        old.remove()
    swap = BlockSwap(model, blocks, device, prefetch=prefetch)
    move_except(model, device, swap.module_ids())
    model.block_swap = swap
    return swap


def swap_last_blocks(
    model: nn.Module, device: torch.device | str, blocks_to_swap: int, prefetch: bool = True
) -> BlockSwap | None:
    """Swap the last ``blocks_to_swap`` main transformer blocks (``0``: none, everything resident).

    The main blocks are ~95 % of the weights (each ~0.8 GB in bf16, ~0.4 GB in fp8); the small GGM
    control blocks stay resident. Returns the :class:`BlockSwap`, or None for ``0``.
    """
    main = list(getattr(model, "blocks", []))
    n = int(blocks_to_swap)
    if n < 0 or n > len(main):
        from ..errors import InvalidOptionError

        raise InvalidOptionError(f"blocks_to_swap must be between 0 and {len(main)} (the main blocks), got {n}")
    if n == 0:
        return None
    return enable_block_swap(model, device, main[len(main) - n :], prefetch=prefetch)


def enable_sequential_offload(
    model: nn.Module, device: torch.device | str, blocks: Iterable[nn.Module]
) -> BlockSwap | None:
    """Every repeated block on the host, swapped in one at a time (prefetched); None (no-op) on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    return enable_block_swap(model, device, blocks)


__all__ = [
    "OFFLOAD_MODES",
    "BlockSwap",
    "block_swaps",
    "enable_block_swap",
    "enable_sequential_offload",
    "execution_order",
    "move_except",
    "on_device",
    "swap_last_blocks",
    "swapped_module_ids",
]
