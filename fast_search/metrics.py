"""Every retrieval metric of the toolkit, in one place; each is defined in its docstring.

Conventions shared by all functions:

- ``neighbor_ids``: ``int [nq, K]`` database row indices of each query's neighbours, nearest first; ``-1`` marks
  a missing neighbour (an approximate index may return fewer than ``K``).
- ``distances``: ``float [nq, K]`` in the same layout, **lower = closer** for every metric (the search layer
  turns cosine similarity into ``1 - similarity``); missing neighbours have ``inf``.
- Ground truth is by identity: each database row and each query carries an identity (from the ground-truth files
  of :mod:`helpers.ground_truth`: a database row's identity is its dataset and path, a query's identity is its
  reference's); a database row is a correct neighbour of a query when their identities are equal. A query whose
  identity is absent from the database has **no original in the database** (a *negative* query): it cannot count
  towards recall@k, and every pair it produces is a false positive for the pair-based metrics (µAP, recall at 90%
  precision, threshold curves).
- **Ties** are handled explicitly, never by row order (an index returns equal distances in row order, which
  favours whichever images come first). The headline is **pessimistic** (DISC21's convention: among equal
  distances the wrong neighbours come first, so a tie at the cut-off counts as a miss); the **expected** value
  under a uniformly random order of the tied neighbours is reported beside it (:func:`tie_aware_hits`,
  :func:`micro_average_precision_expected`), and the optimistic one where it helps to bound the effect.
"""
import numpy as np
from scipy.special import gammaln


def _identity_codes(db_identities, query_identities):
    """Map identities to integers; query identities absent from the database get ``-2`` (never equal to a row)."""
    codes = {}
    db_codes = np.fromiter((codes.setdefault(str(x), len(codes)) for x in db_identities), dtype=np.int64,
                           count=len(db_identities))
    query_codes = np.fromiter((codes.get(str(x), -2) for x in query_identities), dtype=np.int64,
                              count=len(query_identities))
    return db_codes, query_codes


def _neighbor_codes(neighbor_ids, db_codes):
    """Identity code of every neighbour; ``-1`` where the neighbour is missing."""
    neighbor_ids = np.asarray(neighbor_ids)
    if neighbor_ids.ndim != 2:
        raise ValueError(f"neighbor_ids must be 2-D [n_queries, k], got shape {neighbor_ids.shape}")
    valid = neighbor_ids >= 0
    out = np.full(neighbor_ids.shape, -1, dtype=np.int64)
    out[valid] = db_codes[neighbor_ids[valid]]
    return out


def has_original(db_identities, query_identities):
    """``bool [nq]``: whether each query's identity is present in the database (its original is there)."""
    _, query_codes = _identity_codes(db_identities, query_identities)
    return query_codes >= 0


def correct_matrix(neighbor_ids, db_identities, query_identities):
    """``bool [nq, K]``: whether each neighbour has the query's identity (a correct match)."""
    db_codes, query_codes = _identity_codes(db_identities, query_identities)
    return _neighbor_codes(neighbor_ids, db_codes) == query_codes[:, None]


def target_ranks(neighbor_ids, db_identities, query_identities):
    """1-based rank of the first correct neighbour of each query, ``0`` when none is among the ``K`` returned."""
    correct = correct_matrix(neighbor_ids, db_identities, query_identities)
    found = correct.any(axis=1)
    return np.where(found, correct.argmax(axis=1) + 1, 0)


def hits_at_k(neighbor_ids, db_identities, query_identities, k=None):
    """``bool [nq]``: the query's original is among its ``k`` nearest neighbours (all ``K`` when ``k`` is None)."""
    neighbor_ids = np.asarray(neighbor_ids)
    k = neighbor_ids.shape[1] if k is None else int(k)
    if k < 1 or k > neighbor_ids.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the number of neighbours searched ({neighbor_ids.shape[1]})")
    return correct_matrix(neighbor_ids[:, :k], db_identities, query_identities).any(axis=1)


def recall_at_k(neighbor_ids, db_identities, query_identities, k=None):
    """Task recall@k, the seed's definition.

    recall@k = (number of queries whose original is among their ``k`` nearest neighbours) / (number of queries
    that have an original in the database). The seed counted the correct neighbours of each query; with one
    database image per identity (the seed's datasets) that is the same number. Queries without an original in the
    database are left out of both counts. Returns ``nan`` when no query has an original in the database.
    """
    hits = hits_at_k(neighbor_ids, db_identities, query_identities, k)
    positive = has_original(db_identities, query_identities)
    if not positive.any():
        return float("nan")
    return float(hits[positive].sum() / positive.sum())


def tie_aware_hits(distances, neighbor_ids, db_identities, query_identities, k, n_database=None):
    """Whether each query's original is among its ``k`` nearest neighbours, with ties at the cut-off explicit.

    For query ``q`` let ``d_k`` be the distance of its ``k``-th neighbour, ``a`` the number of neighbours strictly
    closer, ``t`` the number at exactly ``d_k`` (the tie group around the cut-off, which must be fully returned:
    search more than ``k`` neighbours), ``m`` the correct ones among them and ``s = k - a`` the places left for
    the tie group. A correct neighbour strictly closer than ``d_k`` is a hit in every convention; otherwise:

    - pessimistic (DISC21: wrong neighbours first among equal distances): hit when ``t - m < s``;
    - optimistic: hit when ``m >= 1``;
    - expected under a random order of the tie group: ``1 - C(t - m, s) / C(t, s)``.

    Parameters
    ----------
    distances, neighbor_ids : arrays [nq, K]
        ``K >= k`` neighbours, nearest first (``-1`` / ``inf`` for missing ones).
    k : int
    n_database : int, optional
        Database size: a tie group that reaches the last returned column is complete only when ``K`` is the
        whole database.

    Returns
    -------
    pessimistic : bool array [nq]
    expected : float array [nq]
    optimistic : bool array [nq]
    unresolved : bool array [nq]
        The tie group at the cut-off may continue past the ``K`` returned neighbours: the pessimistic value is
        still exact (the group overflows the cut-off), the expected and optimistic ones are upper/lower bounds.
    """
    distances = np.asarray(distances, dtype=np.float64)
    neighbor_ids = np.asarray(neighbor_ids)
    k = int(k)
    if distances.shape != neighbor_ids.shape:
        raise ValueError(f"distances {distances.shape} and neighbor_ids {neighbor_ids.shape} differ in shape")
    if k < 1 or k > neighbor_ids.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the number of neighbours searched ({neighbor_ids.shape[1]})")
    correct = correct_matrix(neighbor_ids, db_identities, query_identities)
    valid = neighbor_ids >= 0
    cut = np.where(valid[:, k - 1], distances[:, k - 1], np.inf)[:, None]
    before = valid & (distances < cut)
    tied = valid & (distances == cut)
    hit_before = (correct & before).any(axis=1)
    a = before.sum(axis=1)
    t = tied.sum(axis=1)
    m = (correct & tied).sum(axis=1)
    slots = k - a
    pessimistic = hit_before | ((m > 0) & (t - m < slots))
    optimistic = hit_before | (m > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # C(t - m, s) / C(t, s): the chance that the s places all go to wrong neighbours
        log_all_wrong = (gammaln(t - m + 1) - gammaln(np.maximum(t - m - slots, 0) + 1)
                         - gammaln(t + 1) + gammaln(np.maximum(t - slots, 0) + 1))
    all_wrong = np.where(t - m >= slots, np.exp(log_all_wrong), 0.0)
    expected = np.where(hit_before, 1.0, np.where(m > 0, 1.0 - all_wrong, 0.0))
    whole = n_database is not None and neighbor_ids.shape[1] >= int(n_database)
    unresolved = tied[:, -1] & np.isfinite(cut[:, 0]) & (not whole) & ~hit_before
    return pessimistic, expected, optimistic, unresolved


def ties_unresolved(distances, neighbor_ids, k):
    """``bool [nq]``: the tie group at the ``k``-th distance reaches the last returned column, so it may go on
    past it (search more neighbours for these queries)."""
    distances, neighbor_ids = np.asarray(distances), np.asarray(neighbor_ids)
    valid = neighbor_ids >= 0
    cut = np.where(valid[:, k - 1], distances[:, k - 1], np.inf)
    return valid[:, -1] & (distances[:, -1] == cut) & np.isfinite(cut)


def per_attack_recall(hits, attacks, positive=None, expected=None):
    """Recall@k broken down by attack (edit family) ID.

    Parameters
    ----------
    hits : bool array [nq]
        From :func:`hits_at_k` or :func:`tie_aware_hits` (pessimistic).
    attacks : sequence of str or None
        The attack of each query (the ground truth's ``attack`` column); ``None`` is grouped under ``"(none)"``.
    positive : bool array [nq], optional
        Queries with an original in the database (:func:`has_original`); the others are left out.
    expected : float array [nq], optional
        The expected hit of each query under random tie-breaking (:func:`tie_aware_hits`): adds
        ``"recall_expected"``.

    Returns
    -------
    dict
        ``{attack: {"recall": float, "n": int[, "recall_expected": float]}}`` sorted by attack name, where ``n``
        counts the queries of that attack that have an original in the database.
    """
    hits = np.asarray(hits, dtype=bool)
    positive = np.ones(len(hits), dtype=bool) if positive is None else np.asarray(positive, dtype=bool)
    if len(attacks) != len(hits):
        raise ValueError(f"{len(attacks)} attacks for {len(hits)} queries")
    groups = {}
    for index, attack in enumerate(attacks):
        if positive[index]:
            groups.setdefault(attack or "(none)", []).append(index)
    out = {}
    for attack, rows in sorted(groups.items()):
        out[attack] = {"recall": float(hits[rows].mean()), "n": len(rows)}
        if expected is not None:
            out[attack]["recall_expected"] = float(np.asarray(expected)[rows].mean())
    return out


def candidate_pairs(distances, neighbor_ids, db_identities, query_identities, k=None):
    """The (query, database identity) candidate pairs that the pair-based metrics rank.

    Each query contributes its ``k`` nearest neighbours and every neighbour tied with the ``k``-th (so which of
    several equidistant images make the cut never depends on row order; all returned when ``k`` is None).
    Neighbours of the same identity are merged into one pair that keeps the smallest distance, so a query's
    original counts once even when several database images share its identity (DISC21 has one reference per
    query).

    Returns
    -------
    pair_distances : float array [n_pairs]
    pair_positive : bool array [n_pairs]
        True when the pair's identity is the query's identity (a true match).
    n_positives : int
        Number of queries that have an original in the database (the denominator of recall).
    """
    distances = np.asarray(distances, dtype=np.float64)
    neighbor_ids = np.asarray(neighbor_ids)
    if distances.shape != neighbor_ids.shape:
        raise ValueError(f"distances {distances.shape} and neighbor_ids {neighbor_ids.shape} differ in shape")
    if k is not None and k < neighbor_ids.shape[1]:
        cut = np.where(neighbor_ids[:, k - 1] >= 0, distances[:, k - 1], np.inf)
        neighbor_ids = np.where(distances <= cut[:, None], neighbor_ids, -1)
    db_codes, query_codes = _identity_codes(db_identities, query_identities)
    codes = _neighbor_codes(neighbor_ids, db_codes)
    nq, kk = codes.shape
    query_of = np.repeat(np.arange(nq), kk)
    codes, dist = codes.ravel(), distances.ravel()
    keep = codes >= 0
    query_of, codes, dist = query_of[keep], codes[keep], dist[keep]
    # keep the first (nearest, hence smallest distance) occurrence of each (query, identity)
    order = np.lexsort((dist, codes, query_of))
    query_of, codes, dist = query_of[order], codes[order], dist[order]
    first = np.ones(len(codes), dtype=bool)
    first[1:] = (query_of[1:] != query_of[:-1]) | (codes[1:] != codes[:-1])
    query_of, codes, dist = query_of[first], codes[first], dist[first]
    return dist, codes == query_codes[query_of], int((query_codes >= 0).sum())


def precision_recall_curve(pair_distances, pair_positive, n_positives):
    """Precision and recall of the global ranking of all candidate pairs (DISC21).

    All pairs of all queries are ranked together by distance (closest first). Among equal distances the false
    pairs come first (DISC21's pessimistic tie rule, so equal scores cannot inflate the result). At rank ``r``:
    precision = true pairs in the first ``r`` / ``r``; recall = true pairs in the first ``r`` / ``n_positives``.

    Returns
    -------
    precision, recall, distance : float arrays [n_pairs]
        The curve, with the distance of the pair at each rank (the threshold at which it is reached).
    """
    pair_distances = np.asarray(pair_distances, dtype=np.float64)
    pair_positive = np.asarray(pair_positive, dtype=bool)
    order = np.lexsort((pair_positive, pair_distances))  # by distance, then False before True
    positive = pair_positive[order]
    true_so_far = np.cumsum(positive)
    precision = true_so_far / np.arange(1, len(positive) + 1)
    recall = true_so_far / n_positives if n_positives else np.full(len(positive), np.nan)
    return precision, recall, pair_distances[order]


def micro_average_precision(pair_distances, pair_positive, n_positives):
    """Micro-average precision (µAP), as defined for DISC21.

    µAP = (1 / n_positives) * sum over the true pairs of the precision at their rank in the global ranking of
    :func:`precision_recall_curve`; ``n_positives`` is the number of queries that have an original in the
    database, so originals that were never retrieved lower it, and pairs of queries without an original are
    false positives. It is the area under the (non-interpolated) precision-recall curve. ``nan`` when
    ``n_positives`` is 0.
    """
    if not n_positives:
        return float("nan")
    precision, recall, _ = precision_recall_curve(pair_distances, pair_positive, n_positives)
    # recall grows by 1/n_positives exactly at the true pairs: sum of precision * recall increments
    return float(np.sum(precision * np.diff(recall, prepend=0.0)))


def micro_average_precision_expected(pair_distances, pair_positive, n_positives):
    """µAP's expected value when pairs at equal distance are ranked in a uniformly random order.

    Within a group of ``n`` tied pairs holding ``m`` true ones, after ``c`` pairs of which ``r`` are true, a true
    pair at position ``i`` of the group has precision ``(r + 1 + (i - 1)(m - 1)/(n - 1)) / (c + i)`` in
    expectation, and each position holds a true pair with probability ``m / n`` (McSherry and Najork, ECIR 2008);
    the sum over the groups, divided by ``n_positives``, is the expected µAP. Equals
    :func:`micro_average_precision` when no distances tie.
    """
    if not n_positives:
        return float("nan")
    pair_distances = np.asarray(pair_distances, dtype=np.float64)
    pair_positive = np.asarray(pair_positive, dtype=bool)
    order = np.argsort(pair_distances, kind="stable")
    dist, positive = pair_distances[order], pair_positive[order]
    starts = np.flatnonzero(np.r_[True, dist[1:] != dist[:-1]])
    sizes = np.diff(np.r_[starts, len(dist)])
    trues = np.add.reduceat(positive.astype(np.int64), starts) if len(dist) else np.zeros(0, dtype=np.int64)
    before_true = np.cumsum(trues) - trues
    total = 0.0
    singles = sizes == 1
    # untied pairs: plain precision at their rank
    single_true = singles & (trues == 1)
    total += float(np.sum((before_true[single_true] + 1) / (starts[single_true] + 1)))
    for g in np.flatnonzero(~singles & (trues > 0)):
        n, m, c, r = int(sizes[g]), int(trues[g]), int(starts[g]), int(before_true[g])
        i = np.arange(1, n + 1)
        total += float(np.sum((m / n) * (r + 1 + (i - 1) * (m - 1) / (n - 1)) / (c + i)))
    return total / n_positives


def recall_at_precision(pair_distances, pair_positive, n_positives, precision=0.9):
    """Recall at a given precision (DISC21's recall at 90% precision with the default).

    The largest recall reached at any rank of :func:`precision_recall_curve` whose precision is at least
    ``precision``, with the distance threshold that reaches it (``(0.0, None)`` when no rank qualifies). Ties
    cannot inflate it: with the wrong pairs first inside each group of equal distances, the best rank of a group
    is its end, i.e. a threshold that takes the whole group (so the pessimistic and expected values coincide).
    """
    prec, rec, dist = precision_recall_curve(pair_distances, pair_positive, n_positives)
    ok = prec >= precision
    if not n_positives or not ok.any():
        return (float("nan") if not n_positives else 0.0), None
    best = int(np.flatnonzero(ok)[np.argmax(rec[ok])])
    return float(rec[best]), float(dist[best])


def threshold_curve(pair_distances, pair_positive, n_positives, thresholds=None, n_points=100):
    """Precision and recall when "duplicate" means "distance <= threshold".

    For each threshold ``t``: precision = true pairs with distance <= t / all pairs with distance <= t
    (``nan`` when there are none), recall = true pairs with distance <= t / ``n_positives``. Only the candidate
    pairs (each query's ``k`` nearest) are considered, so the curve is exact for thresholds up to the smallest
    ``k``-th neighbour distance over the queries, and an optimistic precision beyond.

    Parameters
    ----------
    thresholds : array, optional
        Defaults to ``n_points`` quantiles of the pair distances (all distinct pair distances when fewer).

    Returns
    -------
    dict
        ``{"threshold": [...], "precision": [...], "recall": [...]}`` (lists, ready for JSON).
    """
    dist = np.sort(np.asarray(pair_distances, dtype=np.float64))
    positive_dist = np.sort(np.asarray(pair_distances, dtype=np.float64)[np.asarray(pair_positive, dtype=bool)])
    if thresholds is None:
        finite = dist[np.isfinite(dist)]
        unique = np.unique(finite)
        thresholds = unique if len(unique) <= n_points else np.unique(np.quantile(finite, np.linspace(0, 1,
                                                                                                       n_points)))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    selected = np.searchsorted(dist, thresholds, side="right")
    true = np.searchsorted(positive_dist, thresholds, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(selected > 0, true / np.maximum(selected, 1), np.nan)
    recall = true / n_positives if n_positives else np.full(len(thresholds), np.nan)
    return {"threshold": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist()}


def ann_recall(approx_ids, exact_ids, k=None):
    """Recall of an approximate index against exact (Flat) search: the mean fraction of the exact ``k`` nearest
    neighbours that the approximate search also returns in its first ``k`` (the usual "k-recall@k"; with
    ``k = 1``, the fraction of queries whose exact nearest neighbour is found first). Missing (``-1``)
    neighbours never count.
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    k = exact_ids.shape[1] if k is None else int(k)
    if approx_ids.shape[1] < k or exact_ids.shape[1] < k:
        raise ValueError(f"k={k} exceeds the neighbours searched ({approx_ids.shape[1]}, {exact_ids.shape[1]})")
    approx, exact = approx_ids[:, :k], exact_ids[:, :k]
    found = np.zeros(exact.shape, dtype=bool)
    for column in range(k):
        found |= exact == approx[:, column:column + 1]
    found &= exact >= 0
    return float(found.sum() / exact.size) if exact.size else float("nan")
