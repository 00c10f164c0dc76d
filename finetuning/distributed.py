"""Distributed plumbing for fine-tuning: process groups from torchrun or a local spawn, the gather with gradient.

A run is distributed when ``torchrun`` (``python -m torch.distributed.run``) started it (the ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` environment variables are set; that covers
multi-GPU and multi-node runs) or when ``finetune.py --gpus N`` spawns ``N`` local processes itself. NCCL is used
on CUDA and gloo on CPU, so everything, including the tests, also runs on a CPU-only machine.
"""
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the number of processes, and its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_initialized() else 1


def rank():
    return dist.get_rank() if is_initialized() else 0


def launched_by_torchrun():
    """True when the environment of ``torchrun`` (or any launcher that sets ``WORLD_SIZE``/``RANK``) is present."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def free_port():
    """A TCP port that was free a moment ago (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def backend_for(device):
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(rank, world_size, backend="gloo", init_method=None, local_rank=None):
    """Join (or create) the default process group and return this process's :class:`DistInfo`.

    ``init_method`` defaults to ``env://`` (torchrun's variables).
    """
    if world_size > 1 and not is_initialized():
        dist.init_process_group(backend=backend, init_method=init_method or "env://", rank=rank,
                                world_size=world_size)
    return DistInfo(rank, world_size, rank if local_rank is None else local_rank)


def init_from_env(device_type="cpu"):
    """Initialise from torchrun's environment variables when present; otherwise a single-process run."""
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    global_rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", global_rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    return init_process_group(global_rank, world, backend=backend, local_rank=local_rank)


def cleanup():
    if is_initialized():
        dist.destroy_process_group()


def barrier():
    if is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over processes and returns this rank's slice.

    Every process computes its loss from the gathered tensor, so the gradient of the *sum* of all processes'
    losses with respect to this process's input is the sum over processes of their gradients for this slice.
    With DDP averaging the parameter gradients, training then equals a single process on the global batch.
    """

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor)
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads):
        stacked = torch.stack([grad.contiguous() for grad in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def gather_with_grad(tensor):
    """Concatenate ``tensor`` ``[n, ...]`` from every process in rank order (``[world * n, ...]``), keeping the
    autograd graph (see :class:`_GatherWithGrad`). Single process: ``tensor`` itself.

    Every process must pass the same ``n`` (use ``drop_last=True`` loaders).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device))
    if len({int(size.item()) for size in sizes}) != 1:
        raise RuntimeError(f"gather_with_grad needs the same batch size on every process, got "
                           f"{[int(size.item()) for size in sizes]} (use drop_last=True)")
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)


def all_reduce_mean(value, device="cpu"):
    """Mean of a Python number over processes (for logging)."""
    if not is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / dist.get_world_size()


def broadcast_string(text, src=0, device="cpu", max_bytes=1024):
    """Send a short string from process ``src`` to every process (as a byte tensor, no pickling)."""
    if not is_initialized():
        return text
    data = torch.zeros(max_bytes, dtype=torch.uint8, device=device)
    if dist.get_rank() == src:
        raw = text.encode("utf-8")
        if len(raw) > max_bytes or b"\x00" in raw:
            raise ValueError(f"broadcast_string: needs at most {max_bytes} bytes and no NUL, got {text!r}")
        data[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(data, src=src)
    payload = bytes(data.cpu().tolist()).rstrip(b"\x00")
    return payload.decode("utf-8")


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients too (every process's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor):
    """Differentiable all-reduce (sum); the identity in a single process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)
