"""The seed's top-k accuracy on held-out pairs."""
import numpy as np


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def partner_ranks(left, right):
    """0-based rank of each left image's partner among all right images (cosine similarity), and the reverse.

    Row ``i`` of ``left`` and of ``right`` are a pair. The rank of a partner is the number of candidates strictly
    more similar than it (ties count in the pair's favour).

    Returns
    -------
    left_to_right, right_to_left : ndarray of int64 ``[n]``
    """
    left, right = _unit(left), _unit(right)
    if left.shape != right.shape:
        raise ValueError(f"left and right must have one shape, got {left.shape} and {right.shape}")
    sims = left @ right.T
    diagonal = np.diag(sims)
    left_to_right = (sims > diagonal[:, None]).sum(axis=1)
    right_to_left = (sims > diagonal[None, :]).sum(axis=0)
    return left_to_right.astype(np.int64), right_to_left.astype(np.int64)


def pair_topk_accuracy(left, right, ks=(1, 3, 5)):
    """Share of pairs whose partner is within the top ``k``, averaged over both directions (the seed's metric).

    For each left image, its right image is ranked among all right images of the set, and for each right image
    its left one among all left images; ``top k = 0.5 * (mean[rank_lr < k] + mean[rank_rl < k])``.

    Returns
    -------
    dict
        ``{k: accuracy}`` plus ``{f"{k}_left_to_right": ..., f"{k}_right_to_left": ...}``.
    """
    lr, rl = partner_ranks(left, right)
    out = {}
    for k in ks:
        k = int(k)
        a, b = float(np.mean(lr < k)), float(np.mean(rl < k))
        out[k] = 0.5 * (a + b)
        out[f"{k}_left_to_right"] = a
        out[f"{k}_right_to_left"] = b
    return out
