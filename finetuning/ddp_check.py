"""Check that distributed training computes the gradients of one process on the global batch.

Run under torchrun on any machine (CPU with gloo, or GPUs)::

    python -m torch.distributed.run --nproc_per_node 2 -m finetuning.ddp_check --out /tmp/ddp_check

Every process takes its share of a fixed global batch of a small network with batch normalisation, goes through
the same code as training (:func:`finetuning.trainer.prepare_model`: synchronised batch norm + DDP, and
:func:`finetuning.trainer.compute_loss`: NT-Xent + KoLeo over the gathered global batch, or the triplet loss),
and rank 0 writes the gradients and batch-norm statistics to ``<out>/ddp_grads.npz`` for comparison with
:func:`reference_gradients` (one process, plain batch norm, whole batch). Two broken variants are computed too
(``no_syncbn``: per-process batch statistics; ``no_grad_gather``: a gather that does not return gradients to
the other processes), which must *not* match: they show what the comparison detects. Each rank also writes the
indices its ``DistributedSampler`` draws (``<out>/sampler_rank<r>.npy``).
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from helpers.distributed import join_process_group

from . import distributed as D
from . import losses
from .trainer import LossSpec, compute_loss, make_sampler, prepare_model, unwrap

GLOBAL_BATCH = 8
SAMPLER_ITEMS = 11
SPECS = {"contrastive": LossSpec("copy_detection", temperature=0.2, koleo_weight=0.5),
         "triplet": LossSpec("triplet", margin=0.5)}


class TinyNet(nn.Module):
    """Convolutions with 2-D batch norm, then a projection with 1-D batch norm (as SimCLR's head)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def make_model(seed=0):
    torch.manual_seed(seed)
    return TinyNet().double()


def global_batch(kind, seed=1):
    """The fixed global batch: two views (contrastive) or anchor/positive/negative (triplet), float64."""
    gen = torch.Generator().manual_seed(seed)
    parts = 3 if kind == "triplet" else 2
    return [torch.rand(GLOBAL_BATCH, 3, 12, 12, generator=gen, dtype=torch.float64) for _ in range(parts)]


def gradients(model):
    return {name: param.grad.detach().cpu().numpy().copy() for name, param in unwrap(model).named_parameters()}


def bn_statistics(model):
    return {name: buf.detach().cpu().numpy().copy() for name, buf in unwrap(model).named_buffers()
            if "running" in name}


def reference_gradients(kind):
    """One process, plain batch norm, the whole global batch: what every distributed run must reproduce."""
    model = make_model()
    model.train()
    loss, _ = compute_loss(model, global_batch(kind), SPECS[kind])
    loss.backward()
    return float(loss.detach()), gradients(model), bn_statistics(model)


def _detached_gather(tensor):
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    out[dist.get_rank()] = tensor
    return torch.cat(out)


def distributed_gradients(info, kind, variant="full"):
    """This process's share of the global batch through the training code (``variant`` breaks one piece)."""
    device = torch.device("cpu")
    model = make_model()
    if variant == "no_syncbn":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        model = prepare_model(model, info, device)
    model.train()
    share = GLOBAL_BATCH // info.world_size
    batch = [part[info.rank * share:(info.rank + 1) * share] for part in global_batch(kind)]
    original = losses.gather_with_grad
    if variant == "no_grad_gather":
        losses.gather_with_grad = _detached_gather
    try:
        loss, _ = compute_loss(model, batch, SPECS[kind])
        loss.backward()
    finally:
        losses.gather_with_grad = original
    return D.all_reduce_mean(float(loss.detach())), gradients(model), bn_statistics(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for ddp_grads.npz and sampler_rank<r>.npy")
    args = parser.parse_args(argv)
    info, _ = join_process_group("cpu")
    if not info.distributed:
        raise SystemExit("error: run under torchrun with --nproc_per_node >= 2")
    torch.set_num_threads(1)
    out = Path(args.out)
    arrays = {}
    for kind in SPECS:
        for variant in ("full", "no_syncbn", "no_grad_gather"):
            if kind == "triplet" and variant == "no_grad_gather":
                continue  # the triplet loss does not gather
            loss, grads, stats = distributed_gradients(info, kind, variant)
            arrays[f"{kind}/{variant}/loss"] = np.array(loss)
            arrays.update({f"{kind}/{variant}/grad/{k}": v for k, v in grads.items()})
            arrays.update({f"{kind}/{variant}/bn/{k}": v for k, v in stats.items()})
    sampler = make_sampler(list(range(SAMPLER_ITEMS)), info, seed=3)
    draws = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        draws.append(list(sampler))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"sampler_rank{info.rank}.npy", np.array(draws, dtype=np.int64))
    if info.is_main:
        np.savez(out / "ddp_grads.npz", world_size=np.array(info.world_size), **arrays)
    info.barrier()
    info.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
