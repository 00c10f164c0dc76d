"""Collectives of fine-tuning: the all-gather whose backward sums gradients across processes, reductions for
logging, and the local spawn's rendezvous port.

Joining the process group (torchrun, or ``finetune.py --gpus N`` spawning ``N`` local processes) is
:func:`helpers.distributed.join_process_group`; NCCL on CUDA, gloo on CPU.
"""
import socket

import torch
import torch.distributed as dist

from helpers.distributed import is_initialized


def world_size():
    return dist.get_world_size() if is_initialized() else 1


def rank():
    return dist.get_rank() if is_initialized() else 0


def free_port():
    """A TCP port that was free a moment ago (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
