"""Every pair within a threshold (exact range search in query batches, or through any FAISS index), and groups.

Distances are "lower = closer": Hamming bits for packed hashes, ``1 - cosine`` for L2-normalised embeddings.
"""
import numpy as np

from helpers.log import get_logger

logger = get_logger(__name__)

GROUPINGS = ("star", "components")


def _faiss():
    import faiss

    return faiss


def flat_index(database, binary):
    """An exact FAISS index holding ``database`` (packed bits: Hamming; floats: inner product)."""
    faiss = _faiss()
    database = np.ascontiguousarray(database)
    if binary:
        index = faiss.IndexBinaryFlat(database.shape[1] * 8)
    else:
        index = faiss.IndexFlatIP(database.shape[1])
        database = database.astype(np.float32, copy=False)
    index.add(database)
    return index


def knn(database, queries, k, binary, index=None):
    """``(distances float64 [nq, k], ids int64 [nq, k])`` of the ``k`` nearest database rows (exact unless an
    ``index`` is given)."""
    index = flat_index(database, binary) if index is None else index
    queries = np.ascontiguousarray(queries if binary else np.asarray(queries, dtype=np.float32))
    distances, ids = index.search(queries, int(k))
    distances = np.asarray(distances, dtype=np.float64)
    if not binary:
        distances = 1.0 - distances
    distances[ids < 0] = np.inf
    return distances, ids


def range_pairs(index, queries, threshold, binary, batch_size=4096, query_offset=0):
    """Every (query, database row) pair within ``threshold`` (distance ``<= threshold``).

    Parameters
    ----------
    index : faiss index
        Holds the database (exact, or IVF / IVF-PQ / binary IVF for large collections).
    queries : array [nq, ...]
        May be memory-mapped; read ``batch_size`` rows at a time.
    threshold : float
        Hamming bits (binary) or cosine distance ``1 - similarity``.
    query_offset : int
        Added to the query numbers returned (when ``queries`` is a slice).

    Returns
    -------
    q, ids : int64 arrays
    distances : float64 array
    """
    faiss_radius = _radius(threshold, binary)
    qs, ids, ds = [], [], []
    if faiss_radius is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    for start in range(0, queries.shape[0], batch_size):
        block = np.ascontiguousarray(queries[start:start + batch_size])
        if not binary:
            block = block.astype(np.float32, copy=False)
        lims, dist, found = index.range_search(block, faiss_radius)
        counts = np.diff(lims).astype(np.int64)
        qs.append(np.repeat(np.arange(start, start + block.shape[0], dtype=np.int64) + query_offset, counts))
        ids.append(np.asarray(found, dtype=np.int64))
        ds.append(np.asarray(dist, dtype=np.float64) if binary else 1.0 - np.asarray(dist, dtype=np.float64))
    q, i, d = np.concatenate(qs), np.concatenate(ids), np.concatenate(ds)
    keep = d <= threshold  # float rounding at the boundary: the threshold is inclusive
    return q[keep], i[keep], d[keep]


def _radius(threshold, binary):
    """FAISS's radius for ``distance <= threshold``: binary ``d < radius``; inner product ``sim > radius``."""
    if not np.isfinite(threshold) and threshold < 0:
        return None
    if binary:
        return int(np.floor(threshold)) + 1
    # a hair looser than the threshold; range_pairs drops what falls outside after the conversion
    return float(1.0 - threshold - 1e-6)


def self_pairs(features, threshold, binary, batch_size=4096, index=None):
    """Pairs ``(a, b)`` with ``a < b`` of one collection within ``threshold``, sorted closest first.

    Returns
    -------
    a, b : int64 arrays
    distances : float64 array
    """
    index = flat_index(features, binary) if index is None else index
    q, i, d = range_pairs(index, features, threshold, binary, batch_size)
    keep = q < i
    return _sorted(q[keep], i[keep], d[keep])


def cross_pairs(queries, reference, threshold, binary, batch_size=4096, index=None):
    """Pairs ``(query row, reference row)`` within ``threshold``, sorted closest first."""
    index = flat_index(reference, binary) if index is None else index
    q, i, d = range_pairs(index, queries, threshold, binary, batch_size)
    return _sorted(q, i, d)


def _sorted(a, b, d):
    order = np.lexsort((b, a, d))
    return a[order], b[order], d[order]


def connected_components(n, a, b):
    """Groups of ``n`` items linked by the pairs ``(a[i], b[i])`` (transitively: chains merge), as lists of row
    numbers of at least 2 items, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    if len(a) == 0:
        return []
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = components(graph, directed=False)
    groups = {}
    for row in np.unique(np.concatenate([a, b])):
        groups.setdefault(int(labels[row]), []).append(int(row))
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def star_groups(n, a, b, order):
    """Groups without chaining: the best image (first in ``order``) not yet grouped takes every not yet grouped
    image within the threshold of it; so every member of a group is a direct match of the group's first image
    (the one kept).

    Parameters
    ----------
    n : int
    a, b : int arrays
        The pairs within the threshold.
    order : sequence of int
        All rows, best first (the keep rule).

    Returns
    -------
    list of lists of row numbers, each starting with the kept image.
    """
    neighbours = [[] for _ in range(n)]
    for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
        neighbours[x].append(y)
        neighbours[y].append(x)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(n)
    grouped = np.zeros(n, dtype=bool)
    groups = []
    for row in order:
        if grouped[row] or not neighbours[row]:
            continue
        members = sorted({m for m in neighbours[row] if not grouped[m]}, key=lambda m: rank[m])
        if not members:
            continue
        grouped[row] = True
        grouped[members] = True
        groups.append([int(row)] + [int(m) for m in members])
    return groups
