"""Where this process stands in a multi-process run, and joining its process group.

A run is distributed when ``torchrun`` (``python -m torch.distributed.run``) started it: the ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` environment variables are set, which covers
multi-GPU and multi-node runs (``finetune.py --gpus N`` sets the same variables in the processes it spawns).
NCCL is used on CUDA and gloo on CPU, so every distributed path, the tests included, also runs on a CPU-only
machine. Extraction (``extractor.extract``) and fine-tuning (``finetuning.trainer``) both join through
:func:`join_process_group`.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Ranks wait for each other (extraction merges shards, training validates on rank 0); a slow rank on a big
# dataset must not time the others out.
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class DistContext:
    """Rank, world size and local rank of this process (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, n):
        """``(start, stop)`` of this rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def barrier(self):
        if self.distributed and is_initialized():
            dist.barrier()

    def close(self):
        """Leave the process group if this context created it."""
        if self.owns_group and is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun():
    """True when the environment of ``torchrun`` (or any launcher that sets ``WORLD_SIZE``/``RANK``) is present."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_world():
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (``(0, 1, 0)`` without)."""
    rank = int(os.environ.get("RANK", 0))
    return rank, int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", rank))


def backend_for(device):
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def join_process_group(device):
    """Join the process group when launched by torchrun (a no-op otherwise).

    Parameters
    ----------
    device : str or torch.device
        The requested device; on CUDA each rank is pinned to ``cuda:LOCAL_RANK``.

    Returns
    -------
    (DistContext, torch.device)
        This process's context and the device it must use.
    """
    rank, world_size, local_rank = env_world()
    device = torch.device(device)
    if world_size <= 1 or not launched_by_torchrun():
        return DistContext(), device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not is_initialized():
        dist.init_process_group(backend_for(device), init_method="env://", rank=rank, world_size=world_size,
                                timeout=BARRIER_TIMEOUT)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns), device
