"""Sequence parallel (Ulysses) and sharded weights (FSDP2) for the WorldStereo transformer.

Ulysses sequence parallelism splits every token sequence of one denoising call across the
ranks of a process group: each rank embeds, modulates, cross-attends and runs the FFN for its
own slice of the target tokens (and of the GGM ControlNet's tokens and the SSM reference
tokens). Self-attention needs every token, so around it one ``all_to_all`` turns
"my tokens, all heads" into "all tokens, my heads"; the attention runs on ``heads / N`` heads
over the whole sequence, and a second ``all_to_all`` turns the result back. Everything that
is per token (RoPE tables, the camera embedding, the shifted RoPE of the references) is
computed on the whole sequence before the split, so each token keeps its true position and
the output equals the single-process output up to float rounding.

Why Ulysses and not ring attention: the sequence of one call (32 760 target tokens + up to
12 480 reference tokens at 480×832) is attended in full by every block, heads (40 main, 16
ControlNet) divide evenly by 2, 4 and 8 ranks, and two all-to-alls of the activations per
attention cost less than passing every key/value block around a ring ``N − 1`` times. Ulysses
also keeps the attention kernel untouched (cuDNN / flash SDPA on ``heads / N`` heads).

Sequences whose length does not divide by ``N`` are padded at the end; the padded tokens are
cut off again before attention (so they are never attended to) and when gathering.

Transport is ``torch.distributed`` (NCCL on GPUs, gloo on CPUs) through its functional
collectives, which are differentiable, so training can use the same path.

``shard_weights`` applies FSDP2 (``fully_shard``) per block, so each rank keeps ``1/N`` of the
17 B parameters and gathers one block's weights at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

from ..errors import InvalidOptionError, ShapeMismatchError

logger = logging.getLogger(__name__)

# torch renamed the differentiable all-gather (2.14 warns on the old name; older builds lack the new)
_all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def _wait(t: torch.Tensor) -> torch.Tensor:
    return funcol.wait_tensor(t) if hasattr(funcol, "wait_tensor") else t


@dataclass
class SequenceParallel:
    """One process group's split of the token sequences of a forward pass.

    ``lengths`` maps a sequence kind (``"target"``, ``"reference"``) to its true, unpadded
    length in the call being run; :meth:`shard` records it and the attention processors read
    it to cut the padding away.
    """

    group: dist.ProcessGroup | None = None
    lengths: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.group is None:  # the functional collectives need the group spelled out
            self.group = dist.group.WORLD

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def _padded(self, length: int) -> int:
        n = self.world_size
        return -(-length // n) * n

    # -------------------------------------------------------------- tokens in / out

    def shard(self, x: torch.Tensor, kind: str, dim: int = 1) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim`` (padded with zeros to a multiple of N)."""
        length = x.shape[dim]
        known = self.lengths.setdefault(kind, length)
        if known != length:
            raise ShapeMismatchError(f"{kind} sequences of one call differ in length ({known} vs {length})")
        pad = self._padded(length) - length
        if pad:
            widths = [0, 0] * (x.ndim - dim - 1) + [0, pad]
            x = F.pad(x, widths)
        return x.chunk(self.world_size, dim=dim)[self.rank].contiguous()

    def shard_rope(self, rope: tuple[torch.Tensor, torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice RoPE tables ``[1, L, 1, D]`` like :meth:`shard` slices the tokens."""
        return self.shard(rope[0], kind), self.shard(rope[1], kind)

    def gather(self, x: torch.Tensor, kind: str, dim: int = 1) -> torch.Tensor:
        """Concatenate every rank's slice along ``dim`` and cut the padding: the whole sequence."""
        full = _wait(_all_gather_autograd(x.movedim(dim, 0).contiguous(), 0, self.group))
        return full[: self.lengths[kind]].movedim(0, dim)

    def reset(self) -> None:
        """Forget the lengths of the last call (each forward starts afresh)."""
        self.lengths.clear()

    # -------------------------------------------------------------- all-to-all around attention

    def seq_to_heads(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """``[B, L/N, H, D]`` (my tokens, all heads) → ``[B, L, H/N, D]`` (all tokens, my heads), padding cut."""
        n = self.world_size
        b, ls, h, d = x.shape
        if h % n:
            raise InvalidOptionError(f"{h} attention heads cannot be split over {n} ranks; use 1, 2, 4 or 8 GPUs")
        chunks = x.reshape(b, ls, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()  # [N(dst), B, Ls, H/N, D]
        out = _wait(funcol.all_to_all_single_autograd(chunks, None, None, self.group))
        out = out.reshape(n, b, ls, h // n, d).permute(1, 0, 2, 3, 4).reshape(b, n * ls, h // n, d)
        return out[:, : self.lengths[kind]]

    def heads_to_seq(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Inverse of :meth:`seq_to_heads`: ``[B, L, H/N, D]`` → ``[B, L/N, H, D]``."""
        n = self.world_size
        b, length, hn, d = x.shape
        pad = self._padded(self.lengths[kind]) - length
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        ls = x.shape[1] // n
        chunks = x.reshape(b, n, ls, hn, d).permute(1, 0, 2, 3, 4).contiguous()  # [N(dst), B, Ls, H/N, D]
        out = _wait(funcol.all_to_all_single_autograd(chunks, None, None, self.group))
        return out.reshape(n, b, ls, hn, d).permute(1, 2, 0, 3, 4).reshape(b, ls, n * hn, d)


def enable_sequence_parallel(
    model: torch.nn.Module, group: dist.ProcessGroup | None = None, sp: SequenceParallel | None = None
) -> SequenceParallel:
    """Run ``model`` (a :class:`~worldstereo_core.models.transformer_worldstereo.WorldStereoTransformer`)
    sequence-parallel over ``group`` (default: the whole world). Every rank must call the model
    with the same inputs; every rank gets the whole output. Returns the :class:`SequenceParallel`.

    ``sp``: reuse another model's split (models that share blocks, as DMD's three networks do, must
    share it, since a shared block's attention reads the lengths of the call being run)."""
    from ..models.transformer_worldstereo import UlyssesAttnProcessor

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised; start with torchrun or init_process_group first")
    sp = sp or SequenceParallel(group)
    heads = {model.config.num_attention_heads, model.controlnet_config.num_heads}
    bad = [h for h in heads if h % sp.world_size]
    if bad:
        raise InvalidOptionError(f"attention heads {sorted(heads)} cannot be split over {sp.world_size} ranks")
    for block in model.blocks:
        block.attn1.set_processor(_same_kernel(UlyssesAttnProcessor(sp), block.attn1.processor))
    for block in model.controlnet.controlnet_blocks:
        block.self_attn.set_processor(_same_kernel(UlyssesAttnProcessor(sp), block.self_attn.processor))
    model.sequence_parallel = sp
    logger.info("sequence parallel over %d ranks (Ulysses)", sp.world_size)
    return sp


def disable_sequence_parallel(model: torch.nn.Module) -> None:
    """Back to single-process attention, on the same attention kernel."""
    from ..models.transformer_worldstereo import RefJointAttnProcessor

    for block in model.blocks:
        block.attn1.set_processor(_same_kernel(RefJointAttnProcessor(), block.attn1.processor))
    for block in model.controlnet.controlnet_blocks:
        block.self_attn.set_processor(_same_kernel(RefJointAttnProcessor(), block.self_attn.processor))
    model.sequence_parallel = None


def _same_kernel(new, old):
    """``new`` (a fresh attention processor) set to the kernel ``old`` ran: the choice of
    ``WorldStereoTransformer.set_attention_backend`` (``sdpa_cudnn``, ``sdpa_fp8_cudnn``, or a diffusers backend), which
    swapping the processors must not silently undo."""
    new.sdpa_cudnn = getattr(old, "sdpa_cudnn", new.sdpa_cudnn)
    new.fp8_attention = getattr(old, "fp8_attention", False)
    new._attention_backend = getattr(old, "_attention_backend", None)
    return new


def shard_weights(model: torch.nn.Module, mesh=None, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2: shard every main, ControlNet and (paper SSM) memory block, then the rest, over ``mesh`` (default: all
    ranks on this process's device type). Each rank then holds ``1/N`` of the parameters; a
    block's weights are gathered just before it runs and freed after."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        device_type = next(model.parameters()).device.type
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for block in model.controlnet.controlnet_blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    memory_branch = getattr(model, "memory_branch", None)  # the paper's SSM branch
    for block in getattr(memory_branch, "memory_blocks", ()):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model
