"""Keeping a model that does not fit on the GPU usable: encoder swapping and sequential block offload.

* :func:`on_device` — a context manager that moves a module to the execution device for the duration of
  a call and back to the host afterwards (the encoders' offload: UMT5-XXL alone is 11 GB in bf16).
* :func:`enable_sequential_offload` — the transformer's repeated blocks stay on the host (pinned when
  CUDA is there, so the copies are asynchronous) and each is brought to the GPU just before its forward
  and dropped right after; everything else (embeddings, heads) lives on the GPU. Peak GPU memory is one
  block plus activations. Weights are never copied back: the host copy is kept and the device copy is
  simply released, so nothing is written twice.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

OFFLOAD_MODES = ("none", "encoders", "sequential")
"""``none``: everything on the device; ``encoders``: text/image encoders live on the host and visit
the device only to encode; ``sequential``: that, plus the transformer's blocks visit one at a time."""


@contextlib.contextmanager
def on_device(module: nn.Module | None, device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the ``with`` body with ``module`` on ``device``; move it back to the host afterwards if ``enabled``."""
    if module is None or not enabled or device.type == "cpu":
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _tensors(module: nn.Module) -> Iterable[tuple[nn.Module, str, torch.Tensor, bool]]:
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            yield sub, name, p, True
        for name, b in sub.named_buffers(recurse=False):
            if b is not None:
                yield sub, name, b, False


class _BlockSwapper:
    """Hooks that give one module device weights for its forward and host weights otherwise."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.device = device
        self.slots: list[tuple[nn.Module, str, torch.Tensor, bool]] = []
        pin = device.type == "cuda" and torch.cuda.is_available()
        for sub, name, t, is_param in _tensors(module):
            host = t.detach().to("cpu")
            if pin and not host.is_pinned():
                host = host.pin_memory()
            self.slots.append((sub, name, host, is_param))
            self._assign(sub, name, host, is_param)
        self.handles = [
            module.register_forward_pre_hook(self._to_device),
            module.register_forward_hook(self._to_host),
        ]

    @staticmethod
    def _assign(sub: nn.Module, name: str, t: torch.Tensor, is_param: bool) -> None:
        if is_param:
            sub._parameters[name] = nn.Parameter(t, requires_grad=False)
        else:
            sub._buffers[name] = t

    def _to_device(self, module: nn.Module, args) -> None:
        for sub, name, host, is_param in self.slots:
            self._assign(sub, name, host.to(self.device, non_blocking=True), is_param)

    def _to_host(self, module: nn.Module, args, output) -> None:
        for sub, name, host, is_param in self.slots:
            self._assign(sub, name, host, is_param)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def enable_sequential_offload(model: nn.Module, device: torch.device | str, blocks: Iterable[nn.Module]) -> list[_BlockSwapper]:
    """Keep ``blocks`` (submodules of ``model``) on the host and swap each onto ``device`` for its forward.

    Every other parameter and buffer of ``model`` is moved to ``device``. Returns the swappers (call
    ``.remove()`` on each to detach the hooks). A no-op returning ``[]`` when ``device`` is the CPU.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return []
    blocks = list(blocks)
    block_ids = {id(m) for b in blocks for m in b.modules()}
    for sub in model.modules():
        if id(sub) in block_ids:
            continue
        for name, p in list(sub.named_parameters(recurse=False)):
            sub._parameters[name] = nn.Parameter(p.detach().to(device), requires_grad=False)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None:
                sub._buffers[name] = b.to(device)
    return [_BlockSwapper(b, device) for b in blocks]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a :class:`~.transformer_worldstereo.WorldStereoTransformer` (main + control)."""
    out = list(getattr(model, "blocks", []))
    control = getattr(model, "controlnet", None)
    if control is not None:
        out += list(getattr(control, "controlnet_blocks", []))
    return out


__all__ = ["OFFLOAD_MODES", "enable_sequential_offload", "on_device", "transformer_blocks"]
