"""Retrieval quality of a search result, and an in-memory evaluation for training loops.

:func:`summarize_search` turns one search result into the numbers the experiments record;
:func:`retrieval_metrics` runs an exact search on in-memory features and summarizes it (the fine-tuning code
calls it every epoch). All definitions are in :mod:`fast_search.metrics`.
"""
import numpy as np

from helpers.datasets import identity_of

from . import metrics as M


def summarize_search(distances, ids, db_identities, query_identities, query_names, ks, curve_points=100):
    """The quality numbers of one search (``distances``/``ids`` of shape ``[nq, K]``).

    Parameters
    ----------
    ks : sequence of int
        The k of recall@k and of per-attack recall (each at most ``K``); the pair-based metrics (µAP, recall at
        90% precision, threshold curve) use all ``K`` neighbours as candidates.

    Returns
    -------
    dict
        ``recall@{k}`` for each k, ``per_attack`` (``{str(k): {attack: {"recall", "n"}}}``), ``muap``,
        ``recall@P90`` and ``threshold@P90`` (the distance threshold reaching it), ``threshold_curve``
        (precision and recall vs distance threshold), ``n_queries``, ``n_queries_with_original``, ``k``.
    """
    ks = sorted({int(k) for k in ks})
    positive = M.has_original(db_identities, query_identities)
    out = {"k": int(np.shape(ids)[1]), "n_queries": int(len(query_identities)),
           "n_queries_with_original": int(positive.sum())}
    out["per_attack"] = {}
    for k in ks:
        hits = M.hits_at_k(ids, db_identities, query_identities, k)
        out[f"recall@{k}"] = float(hits[positive].mean()) if positive.any() else float("nan")
        out["per_attack"][str(k)] = M.per_attack_recall(hits, query_names, positive)
    pair_d, pair_pos, n_pos = M.candidate_pairs(distances, ids, db_identities, query_identities)
    out["muap"] = M.micro_average_precision(pair_d, pair_pos, n_pos)
    out["recall@P90"], out["threshold@P90"] = M.recall_at_precision(pair_d, pair_pos, n_pos, 0.9)
    out["threshold_curve"] = M.threshold_curve(pair_d, pair_pos, n_pos, n_points=curve_points)
    return out


def retrieval_metrics(db_features, db_names, query_features, query_names, metric="cosine", ks=(1, 5, 10),
                      device="cpu", backend="auto"):
    """Exact (Flat) retrieval quality of in-memory features: recall@k, per-attack recall, µAP, recall@P90.

    Parameters
    ----------
    db_features, query_features : array or torch.Tensor
        ``[n, d]`` float features (or packed ``uint8`` hashes with ``metric="hamming"``).
    db_names, query_names : sequence of str
        Image names or paths; ground truth by :func:`helpers.datasets.identity_of`.
    metric : str
        ``L2``, ``L1``, ``cosine``, ``JS`` or ``hamming``.
    ks : sequence of int
        The k of recall@k; the search returns ``max(ks)`` neighbours (capped by the database size).

    Returns
    -------
    dict
        See :func:`summarize_search`, plus ``metric`` and ``n_database``.
    """
    from .index import make_index, prepare_vectors

    db = _to_numpy(db_features)
    queries = _to_numpy(query_features)
    if len(db_names) != len(db) or len(query_names) != len(queries):
        raise ValueError(f"{len(db_names)} database names for {len(db)} rows, {len(query_names)} query names "
                         f"for {len(queries)} rows")
    binary = db.dtype == np.uint8
    dim = db.shape[1] * (8 if binary else 1)
    k = min(max(ks), len(db))
    ks = [min(value, k) for value in ks]
    index = make_index("BFlat" if binary else "Flat", metric, dim, binary=binary, device=device, backend=backend)
    index.add(prepare_vectors(db, metric))
    distances, ids = index.search(prepare_vectors(queries, metric), k)
    index.close()
    out = summarize_search(distances, ids, [identity_of(n) for n in db_names],
                           [identity_of(n) for n in query_names], query_names, ks)
    out.update(metric=metric, n_database=int(len(db)))
    return out


def _to_numpy(features):
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().numpy()
    features = np.asarray(features)
    if features.dtype != np.uint8 and features.dtype != np.float32:
        features = features.astype(np.float32)
    return features
