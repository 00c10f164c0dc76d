"""Losses of the fine-tuning modes: NT-Xent (SimCLR), the KoLeo entropy regulariser (SSCD) and the triplet loss.

All contrastive losses work on the *global* batch: under DDP the embeddings of every process are gathered with
:func:`finetuning.distributed.gather_with_grad`, each process takes its own samples as anchors against all
others, and the mean over processes (DDP's gradient averaging) equals the loss of one process on the whole batch.
"""
import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, rank


def full_precision(tensor):
    """Half/bfloat16 activations (mixed precision) are promoted to float32 for the softmax and distances."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def no_autocast(tensor):
    """A context where autocast is off on ``tensor``'s device (use with :func:`full_precision` inputs).

    Promoting the inputs is not enough: under ``torch.autocast`` a matrix product of float32 tensors still runs
    in bf16/fp16. The similarity matrix of a contrastive loss must not: at temperature 0.05, bf16's 8-bit
    mantissa puts errors of about 0.08 on the logits.
    """
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _global_views(z1, z2):
    """Gathered views and the global row offset of this process's samples."""
    if z1.shape != z2.shape:
        raise ValueError(f"both views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    return g1, g2, rank() * z1.shape[0]


def nt_xent_loss(z1, z2, temperature=0.1, normalize=True):
    """NT-Xent (normalised temperature-scaled cross entropy) of SimCLR over both views.

    Each of the ``2n`` local embeddings is an anchor; its positive is the other view of the same image and its
    negatives are the ``2N - 2`` other embeddings of the global batch (``N`` images over all processes).

    Parameters
    ----------
    z1, z2 : torch.Tensor
        ``[n, d]`` embeddings of the two views of the same ``n`` images (this process's share).
    temperature : float
        Softmax temperature (SimCLR: 0.1 to 0.5; copy detection: 0.05).
    normalize : bool
        L2-normalise the embeddings first (cosine similarity), as SimCLR does.

    Returns
    -------
    torch.Tensor
        Scalar: the mean over this process's ``2n`` anchors, computed in float32 (float64 for float64 inputs)
        even under autocast: bf16/fp16 inputs are promoted and autocast is off for the similarity matrix.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with no_autocast(z1):
        return _nt_xent(full_precision(z1), full_precision(z2), temperature, normalize)


def _nt_xent(z1, z2, temperature, normalize):
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2, offset = _global_views(z1, z2)
    n, total = z1.shape[0], g1.shape[0]
    keys = torch.cat([g1, g2], dim=0)                                  # [2N, d]
    anchors = torch.cat([z1, z2], dim=0)                               # [2n, d]
    logits = anchors @ keys.t() / temperature                          # [2n, 2N]
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_index] = True
    return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), positive)


def koleo_loss(z1, z2, eps=1e-8):
    """KoLeo differential-entropy regulariser (Sablayrolles et al.; SSCD): ``-mean(log(d_nn))``.

    ``d_nn`` is each anchor's Euclidean distance to its nearest neighbour among the global batch, ignoring the
    anchor itself and the other view of the same image (a match is *supposed* to be close). Minimising it
    spreads the descriptors uniformly over the sphere, which helps nearest-neighbour search separate images.
    Embeddings are L2-normalised first; computed in float32 (or float64) even under autocast.
    """
    with no_autocast(z1):
        return _koleo(full_precision(z1), full_precision(z2), eps)


def _koleo(z1, z2, eps):
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2, offset = _global_views(z1, z2)
    n, total = z1.shape[0], g1.shape[0]
    keys = torch.cat([g1, g2], dim=0)
    anchors = torch.cat([z1, z2], dim=0)
    local = torch.arange(n, device=z1.device) + offset
    rows = torch.arange(2 * n, device=z1.device)
    distances = torch.cdist(anchors, keys)
    with torch.no_grad():
        masked = distances.detach().clone()
        masked[rows, torch.cat([local, local + total])] = float("inf")
        masked[rows, torch.cat([local + total, local])] = float("inf")
        nearest = masked.argmin(dim=1)
    return -torch.log(distances[rows, nearest] + eps).mean()


def triplet_loss(anchor, positive, negative, margin=0.2, normalize=False):
    """Triplet margin loss ``mean(max(0, d(a, p) - d(a, n) + margin))`` with Euclidean distances (seed 004)."""
    if normalize:
        anchor, positive, negative = (F.normalize(t, dim=1) for t in (anchor, positive, negative))
    d_pos = (anchor - positive).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    d_neg = (anchor - negative).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    return F.relu(d_pos - d_neg + margin).mean()
