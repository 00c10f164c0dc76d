"""Multi-GPU / multi-node extraction with ``torchrun``: contiguous shards per rank, merged in order by rank 0.

``torchrun --nproc_per_node G [--nnodes N ...] extract_features.py ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`context` then joins the process group (NCCL on CUDA, gloo on CPU), pins each rank to
``cuda:LOCAL_RANK`` and gives every rank one contiguous slice of the image list. Each rank writes its own
resumable store next to the target (``.<slug>.rank<r>of<W>``); rank 0 concatenates them in rank order, which is
the original image order, into the final store. Every rank lists the dataset itself (the listing is sorted and
deterministic), so no file list is sent around.
"""
import datetime
import os
from dataclasses import dataclass

import torch

# Ranks wait for each other at the merge; a slow rank on a big dataset must not time the others out.
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class DistContext:
    """Rank, world size and device of this process (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self):
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
        if self.enabled:
            torch.distributed.barrier()

    def close(self):
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def env_world():
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (``(0, 1, 0)`` without)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def context(device):
    """Join the process group when launched by torchrun; returns the context and this rank's device."""
    rank, world_size, local_rank = env_world()
    device = torch.device(device)
    if world_size <= 1:
        return DistContext(), device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        owns = True
    ctx = DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, owns)
    return ctx, device
