"""Several processes, one generation: Ulysses sequence parallel and FSDP2 sharded weights
(torch.distributed; NCCL on GPUs, gloo on CPUs)."""

from .sequence_parallel import (
    SequenceParallel,
    disable_sequence_parallel,
    enable_sequence_parallel,
    shard_weights,
)

__all__ = ["SequenceParallel", "disable_sequence_parallel", "enable_sequence_parallel", "shard_weights"]
