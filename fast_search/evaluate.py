"""Retrieval quality of a search result, and an in-memory evaluation for training loops.

:func:`summarize_search` turns one search result into the numbers the experiments record;
:func:`retrieval_metrics` runs an exact search on in-memory features and summarizes it (the fine-tuning code
calls it every epoch). All definitions are in :mod:`fast_search.metrics`.
"""
import numpy as np

from . import metrics as M

#: how the results name the tie conventions (see :mod:`fast_search.metrics`)
TIE_CONVENTION = ("recall@k and µAP are pessimistic (DISC21: among equal distances the wrong neighbours come "
                  "first, so ties at the cut-off are misses); *_expected is the mean under random tie-breaking; "
                  "*_optimistic counts any tied original as found")


def summarize_search(distances, ids, db_identities, query_identities, query_attacks, ks, curve_points=100,
                     n_database=None, score_offsets=None):
    """The quality numbers of one search (``distances``/``ids`` of shape ``[nq, K]``).

    Parameters
    ----------
    db_identities, query_identities : sequences
        Ground-truth identities (see :mod:`fast_search.metrics`).
    query_attacks : sequence of str or None
        The edit family of each query (per-attack recall).
    ks : sequence of int
        The k of recall@k and of per-attack recall (each at most ``K``; search more than ``k`` neighbours so
        that ties at the cut-off are resolved); the pair-based metrics (µAP, recall at 90% precision, threshold
        curve) use each query's ``max(ks)`` nearest neighbours, plus those tied with the last, as candidates.
    n_database : int, optional
        Database size (a search that returned the whole database has no unresolved tie).
    score_offsets : float array [nq], optional
        Score normalisation (SSCD's µAP-SN): each query's pair distances minus its offset (its distance to its
        k-th neighbour in a background set) give ``muap_sn`` and ``recall@P90_sn`` too.

    Returns
    -------
    dict
        ``recall@{k}`` (pessimistic), ``recall@{k}_expected``, ``recall@{k}_optimistic`` for each k, ``per_attack``
        (``{str(k): {attack: {"recall", "recall_expected", "n"}}}``), ``muap`` (pessimistic) and
        ``muap_expected``, ``recall@P90`` and ``threshold@P90`` (the distance threshold reaching it),
        ``threshold_curve`` (precision and recall vs distance threshold), ``n_queries``,
        ``n_queries_with_original``, ``n_negative_queries``, ``k``, ``unresolved_ties``, ``ties``.
    """
    ks = sorted({int(k) for k in ks})
    positive = M.has_original(db_identities, query_identities)
    out = {"k": ks[-1], "neighbors_searched": int(np.shape(ids)[1]), "n_queries": int(len(query_identities)),
           "n_queries_with_original": int(positive.sum()), "n_negative_queries": int((~positive).sum()),
           "ties": TIE_CONVENTION}
    out["per_attack"] = {}
    unresolved = 0
    for k in ks:
        hits, expected, optimistic, open_ties = M.tie_aware_hits(distances, ids, db_identities, query_identities,
                                                                 k, n_database)
        unresolved = max(unresolved, int(open_ties[positive].sum()))
        if positive.any():
            out[f"recall@{k}"] = float(hits[positive].mean())
            out[f"recall@{k}_expected"] = float(expected[positive].mean())
            out[f"recall@{k}_optimistic"] = float(optimistic[positive].mean())
        else:
            out[f"recall@{k}"] = out[f"recall@{k}_expected"] = out[f"recall@{k}_optimistic"] = float("nan")
        out["per_attack"][str(k)] = M.per_attack_recall(hits, query_attacks, positive, expected=expected)
    out["unresolved_ties"] = unresolved
    # the pair metrics rank each query's max(ks) nearest (with the whole tie group at the cut-off)
    pair_d, pair_pos, n_pos = M.candidate_pairs(distances, ids, db_identities, query_identities, k=ks[-1])
    out["muap"] = M.micro_average_precision(pair_d, pair_pos, n_pos)
    out["muap_expected"] = M.micro_average_precision_expected(pair_d, pair_pos, n_pos)
    out["recall@P90"], out["threshold@P90"] = M.recall_at_precision(pair_d, pair_pos, n_pos, 0.9)
    out["threshold_curve"] = M.threshold_curve(pair_d, pair_pos, n_pos, n_points=curve_points)
    if score_offsets is not None:
        offsets = np.asarray(score_offsets, dtype=np.float64)
        shifted = np.asarray(distances, dtype=np.float64) - offsets[:, None]
        sn_d, sn_pos, sn_n = M.candidate_pairs(shifted, ids, db_identities, query_identities, k=ks[-1])
        out["muap_sn"] = M.micro_average_precision(sn_d, sn_pos, sn_n)
        out["muap_sn_expected"] = M.micro_average_precision_expected(sn_d, sn_pos, sn_n)
        out["recall@P90_sn"], _ = M.recall_at_precision(sn_d, sn_pos, sn_n, 0.9)
    return out


def retrieval_metrics(db_features, db_identities, query_features, query_identities, query_attacks=None,
                      metric="cosine", ks=(1, 5, 10), device="cpu", backend="auto"):
    """Exact (Flat) retrieval quality of in-memory features: recall@k, per-attack recall, µAP, recall@P90.

    Parameters
    ----------
    db_features, query_features : array or torch.Tensor
        ``[n, d]`` float features (or packed ``uint8`` hashes with ``metric="hamming"``).
    db_identities, query_identities : sequences
        Ground-truth identity of each row (a query is a copy of the database rows with its identity; see
        :mod:`fast_search.metrics`).
    query_attacks : sequence of str or None, optional
        Edit family of each query (per-attack recall); all ``None`` when not given.
    metric : str
        ``L2``, ``L1``, ``cosine``, ``JS`` or ``hamming``.
    ks : sequence of int
        The k of recall@k; the search returns enough neighbours to resolve ties at ``max(ks)``.

    Returns
    -------
    dict
        See :func:`summarize_search`, plus ``metric`` and ``n_database``.
    """
    from .index import make_index, prepare_vectors

    db = _to_numpy(db_features)
    queries = _to_numpy(query_features)
    if len(db_identities) != len(db) or len(query_identities) != len(queries):
        raise ValueError(f"{len(db_identities)} database identities for {len(db)} rows, {len(query_identities)} "
                         f"query identities for {len(queries)} rows")
    query_attacks = [None] * len(queries) if query_attacks is None else list(query_attacks)
    binary = db.dtype == np.uint8
    dim = db.shape[1] * (8 if binary else 1)
    ks = [min(int(value), len(db)) for value in ks]
    index = make_index("BFlat" if binary else "Flat", metric, dim, binary=binary, device=device, backend=backend)
    index.add(prepare_vectors(db, metric))
    distances, ids = search_resolving_ties(index.search, prepare_vectors(queries, metric), max(ks), len(db))
    index.close()
    out = summarize_search(distances, ids, db_identities, query_identities, query_attacks, ks,
                           n_database=len(db))
    out.update(metric=metric, n_database=int(len(db)))
    return out


def search_resolving_ties(search, queries, k, n_database, first_extra=16, max_neighbors=4096):
    """``search(queries, K)`` with ``K`` large enough that the tie group at each query's ``k``-th distance is
    complete (up to ``max_neighbors``; beyond, :func:`fast_search.metrics.tie_aware_hits` reports the query as
    unresolved, with an exact pessimistic value).

    The queries whose tie group reaches the last column are searched again with four times more neighbours.

    Returns
    -------
    distances, ids : arrays [nq, K]
        Padded with ``inf`` / ``-1`` where a query needed fewer neighbours than the widest one.
    """
    n_database = int(n_database)
    wanted = min(n_database, k + max(k, first_extra))
    distances, ids = search(queries, wanted)
    distances, ids = np.asarray(distances), np.asarray(ids)
    while wanted < min(n_database, max_neighbors):
        open_rows = np.flatnonzero(M.ties_unresolved(distances, ids, k))
        if not len(open_rows):
            break
        wanted = min(n_database, max_neighbors, wanted * 4)
        more_d, more_i = search(queries[open_rows], wanted)
        width = more_d.shape[1]
        grown_d = np.full((len(distances), width), np.inf, dtype=np.asarray(distances).dtype)
        grown_i = np.full((len(ids), width), -1, dtype=np.asarray(ids).dtype)
        grown_d[:, :distances.shape[1]], grown_i[:, :ids.shape[1]] = distances, ids
        grown_d[open_rows], grown_i[open_rows] = more_d, more_i
        distances, ids = grown_d, grown_i
    return distances, ids


def _to_numpy(features):
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().numpy()
    features = np.asarray(features)
    if features.dtype != np.uint8 and features.dtype != np.float32:
        features = features.astype(np.float32)
    return features
