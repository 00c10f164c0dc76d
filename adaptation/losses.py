"""The symmetric InfoNCE loss of the adaptation function (left -> right and right -> left over the batch)."""
import torch
import torch.nn.functional as F


def symmetric_info_nce(left, right, temperature=1 / 15):
    """Mean of the two InfoNCE cross-entropies over a batch of ``n`` pairs.

    Row ``i`` of ``left`` and row ``i`` of ``right`` are a pair; every other row of the batch is a negative. With
    ``S[i, j] = cos(left_i, right_j) / temperature``, the loss is
    ``0.5 * CE(S, diag) + 0.5 * CE(S^T, diag)``, i.e. ``-0.5/n * sum_i [log softmax(S[i, :])_i +
    log softmax(S[:, i])_i]``.

    Parameters
    ----------
    left, right : torch.Tensor
        ``[n, d]`` outputs of the module for the two sides (L2-normalised here).
    temperature : float
        Softmax temperature. The seed's ``-t 15`` multiplies the cosine by 15, which is ``temperature = 1/15``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if left.shape != right.shape or left.ndim != 2:
        raise ValueError(f"left and right must be [n, d] of one shape, got {tuple(left.shape)}, {tuple(right.shape)}")
    left = F.normalize(left.float(), dim=1)
    right = F.normalize(right.float(), dim=1)
    logits = left @ right.t() / temperature
    target = torch.arange(left.shape[0], device=left.device)
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.t(), target)
