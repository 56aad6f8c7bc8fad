"""Several processes, one generation: Ulysses sequence parallel and FSDP2 sharded weights
(torch.distributed; NCCL on GPUs, gloo on CPUs)."""

from .launch import DistributedContext, RankFailedError, init_from_env, run_ranks, shutdown
from .sequence_parallel import (
    SequenceParallel,
    disable_sequence_parallel,
    enable_sequence_parallel,
    shard_weights,
)

__all__ = [
    "DistributedContext",
    "RankFailedError",
    "SequenceParallel",
    "disable_sequence_parallel",
    "enable_sequence_parallel",
    "init_from_env",
    "run_ranks",
    "shard_weights",
    "shutdown",
]
