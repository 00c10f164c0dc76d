"""Distances between image features, computed block by block so that memory never grows with N^2 by accident.

Three metrics (the seed's, plus Hamming for binary hashes), named and normalised as in the toolkit's one metric
vocabulary, :mod:`fast_search.index`:

- ``euclidean``: ``||a - b||`` (search's ``L2``);
- ``cosine``: ``1 - a.b / (||a|| ||b||)`` (a zero vector is at distance 1 from everything);
- ``hamming``: the *fraction* of differing bits (scipy's ``pdist(metric='hamming')`` convention, which the seed
  used: a 64-bit hash at distance 0.1875 differs in 12 bits), so epsilons and thresholds are fractions too.
  Bits are counted as in search and turned into the fraction by :func:`fast_search.index.hamming_fraction`.
  Binary features (packed bits in the feature store) always use it.

Every distance goes through a :class:`FeatureSpace`, which computes blocks with one matrix product (BLAS): in
float64 on centred data for euclidean and cosine (float32 products lose about 1e-2 of accuracy on near-duplicate
pairs, exactly the pairs clustering cares about), and exactly in float32 for bits (integer counts).

Also here: the condensed distance matrix and its on-disk cache (float32 ``.npy``, never pickle), the exact
epsilon-neighbourhood graph used by DBSCAN (memory grows with the number of pairs within epsilon), and the
k-nearest-neighbour graph built with FAISS (memory grows with N*k) for DBSCAN/HDBSCAN on large collections.
"""
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fast_search.index import (canonical_metric, convert_distances, faiss_to_gpu, hamming_fraction,
                                l2_normalise_rows, new_faiss_index)
from helpers.log import get_logger
from helpers.results import read_json, write_json

logger = get_logger(__name__)

METRICS = ("euclidean", "cosine", "hamming")
#: HNSW graph degree and search breadths of the kNN graph (recall@30 about 0.99 on 50,000 x 512-d test data).
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
#: Number of float64 values of one block of distances (128 MB).
BLOCK_ELEMENTS = 2 ** 24


class MetricError(ValueError):
    """A metric that does not fit the features or the algorithm."""


def resolve_metric(metric, binary):
    """The metric actually used: Hamming for binary features (forced, with a warning when another was asked).

    Raises
    ------
    MetricError
        For an unknown metric, or Hamming asked for real-valued features.
    """
    metric = str(metric).lower()
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if binary:
        if metric != "hamming":
            logger.warning("binary hash features: using the hamming distance (fraction of differing bits) "
                           "instead of %s", metric)
        return "hamming"
    if metric == "hamming":
        raise MetricError("the hamming metric needs binary (hash) features; these features are real-valued, "
                          "use euclidean or cosine")
    return metric


def _as_feature_array(features, nbits=None):
    """``(array, binary, nbits)`` from a FeatureSet or an array (uint8 arrays are packed bits)."""
    if hasattr(features, "features") and hasattr(features, "binary"):
        array, binary = features.features, features.binary
        nbits = features.dim if binary else None
    else:
        array = features
        binary = np.asarray(array).dtype == np.uint8
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D array, got shape {array.shape}")
    if binary and nbits is None:
        nbits = array.shape[1] * 8
    return array, binary, nbits


class FeatureSpace:
    """Features prepared for fast, accurate distances in one metric.

    Parameters
    ----------
    features : ndarray or FeatureSet
        ``float [N, d]`` or packed bits ``uint8 [N, bits/8]``.
    metric : str
        ``euclidean``, ``cosine`` or ``hamming`` (forced for binary features, see :func:`resolve_metric`).
    nbits : int, optional
        Number of meaningful bits of binary features (default: 8 per byte).
    """

    def __init__(self, features, metric="euclidean", nbits=None):
        array, self.binary, self.nbits = _as_feature_array(features, nbits)
        self.metric = resolve_metric(metric, self.binary)
        self.n = array.shape[0]
        self.center = None
        if not self.binary and self.metric == "euclidean":
            self.center = np.asarray(array).mean(axis=0, dtype=np.float64)
        self.X, self.sq = self.transform(array)

    @property
    def dim(self):
        return self.X.shape[1]

    def transform(self, points):
        """Prepare other points (e.g. centroids, given like the features) for :meth:`cross`."""
        points = np.asarray(points)
        if self.binary:
            if points.dtype != np.uint8:
                raise ValueError("binary features: points must be packed bits (uint8)")
            bits = np.unpackbits(points, axis=1)[:, : self.nbits].astype(np.float32)
            return bits, bits.sum(axis=1)
        data = np.array(points, dtype=np.float64)  # a copy, transformed in place (one N x d float64 array)
        if data.ndim != 2 or (self.center is not None and data.shape[1] != self.center.shape[0]):
            raise ValueError(f"points of shape {data.shape} do not match the features")
        if not np.all(np.isfinite(data)):
            raise ValueError("features contain NaN or infinite values; re-extract them")
        if self.metric == "euclidean":
            data -= self.center
        else:
            l2_normalise_rows(data, out=data)
        return data, np.einsum("ij,ij->i", data, data)

    def cross(self, A, sqA, B, sqB):
        """Distances (float64) between prepared rows ``A`` and ``B``."""
        out = A @ B.T  # every operation below is in place: a block is the only large array
        if self.metric == "euclidean":
            out *= -2.0
            out += sqA[:, None]
            out += sqB[None, :]
            # |a|^2 + |b|^2 - 2ab cancels for (near-)duplicates: recompute those few pairs directly, so that
            # identical images are at distance exactly 0 and close ones keep full precision.
            if out.size:
                tiny = 1e-6 * (sqA.max(initial=0.0) + sqB.max(initial=0.0))
                rows, cols = np.nonzero(out < tiny)
                for start in range(0, rows.size, 1 << 16):
                    r, c = rows[start:start + (1 << 16)], cols[start:start + (1 << 16)]
                    diff = A[r] - B[c]
                    out[r, c] = np.einsum("ij,ij->i", diff, diff)
            np.maximum(out, 0.0, out=out)
            return np.sqrt(out, out=out)
        if self.metric == "cosine":
            np.subtract(1.0, out, out=out)
            out[out < 1e-14] = 0.0  # rounding noise of identical directions
            return np.clip(out, 0.0, 2.0, out=out)
        out *= -2.0  # bits: exact integer counts in float32
        out += sqA[:, None]
        out += sqB[None, :]
        return hamming_fraction(out, self.nbits)

    def block(self, rows, cols=None):
        """Distances between the features at ``rows`` and ``cols`` (index arrays or slices; all by default)."""
        cols = slice(None) if cols is None else cols
        return self.cross(self.X[rows], self.sq[rows], self.X[cols], self.sq[cols])

    def to_points(self, prepared_points, sq_points, rows=slice(None)):
        """Distances between prepared points and the features at ``rows``."""
        return self.cross(prepared_points, sq_points, self.X[rows], self.sq[rows])

    def iter_row_blocks(self, start=0, stop=None, width=None):
        """Yield ``(row_start, row_stop)`` blocks whose distance rows to ``width`` columns fit one block."""
        stop = self.n if stop is None else stop
        width = self.n if width is None else width
        step = max(1, BLOCK_ELEMENTS // max(1, width))
        for row in range(start, stop, step):
            yield row, min(stop, row + step)


# --------------------------------------------------------------------------------------------------------------
# Condensed distance matrix and its cache
# --------------------------------------------------------------------------------------------------------------

def condensed_size(n):
    """Number of pairs ``n (n - 1) / 2``: the length of a condensed distance matrix (scipy's ``pdist``)."""
    return n * (n - 1) // 2


def condensed_index(n, i, j):
    """Position of the pair ``(i, j)``, ``i != j``, in a condensed matrix of ``n`` points (scipy's order)."""
    i, j = (i, j) if i < j else (j, i)
    return n * i - i * (i + 1) // 2 + (j - i - 1)


def fill_condensed(space, out):
    """Write the condensed distance matrix (scipy's ``pdist`` order) into ``out``, block by block.

    Yields the ``(start, stop)`` range of ``out`` completed after each block (for streaming it elsewhere).
    """
    n = space.n
    row = 0
    while row < n - 1:
        width = n - row
        stop = min(n - 1, row + max(1, BLOCK_ELEMENTS // width))
        block = space.block(slice(row, stop), slice(row, n))
        first = condensed_index(n, row, row + 1)
        pos = first
        for k in range(stop - row):
            segment = block[k, k + 1:]
            out[pos:pos + segment.size] = segment
            pos += segment.size
        yield first, pos
        row = stop


def condensed_distances(space, dtype=np.float64):
    """The full condensed distance matrix (``N (N-1) / 2`` values of ``dtype``), computed block by block."""
    out = np.empty(condensed_size(space.n), dtype=dtype)
    for _ in fill_condensed(space, out):
        pass
    return out


def features_fingerprint(features, names=None, extra=()):
    """SHA-256 of the feature bytes, the image names and ``extra`` strings: a cache is valid only for these."""
    digest = hashlib.sha256()
    array = np.ascontiguousarray(features)
    digest.update(str((array.shape, str(array.dtype))).encode())
    step = max(1, (64 << 20) // max(1, array.itemsize * (array.shape[1] if array.ndim == 2 else 1)))
    for start in range(0, array.shape[0], step):
        digest.update(np.ascontiguousarray(array[start:start + step]).tobytes())
    for name in names or ():
        digest.update(str(name).encode("utf-8", "surrogateescape") + b"\n")
    for item in extra:
        digest.update(str(item).encode() + b"\x1f")
    return digest.hexdigest()


class DistanceCache:
    """Condensed distance matrices on disk: ``<root>/<key>.npy`` (float32, plain ``.npy``) + ``<key>.json``.

    The JSON sidecar records the number of points, the metric and the fingerprint of the features; a cache entry
    whose fingerprint differs (other features, other images, other partition) is recomputed. Entries are written
    to a temporary name and renamed, the sidecar last, so an interrupted run never leaves an entry that looks
    complete.
    """

    def __init__(self, root):
        self.root = Path(root)

    def paths(self, key):
        base = self.root / key
        return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")

    def lookup(self, key, n, metric, fingerprint):
        """The ``.npy`` path of a valid entry, or ``None``."""
        data_path, meta_path = self.paths(key)
        if not (data_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            return None
        if meta.get("n") != n or meta.get("metric") != metric or meta.get("fingerprint") != fingerprint:
            logger.info("distance cache %s is for other features; recomputing", data_path)
            return None
        if data_path.stat().st_size < condensed_size(n) * 4:
            return None
        return data_path

    def write(self, key, chunks, n, metric, fingerprint):
        """Stream float chunks (a condensed matrix, in order) to the cache as float32."""
        data_path, meta_path = self.paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = data_path.with_name(f".{data_path.name}.tmp-{os.getpid()}")
        total = condensed_size(n)
        written = 0
        try:
            with open(tmp, "wb") as handle:
                np.lib.format.write_array_header_2_0(handle, {"descr": "<f4", "fortran_order": False,
                                                              "shape": (total,)})
                for chunk in chunks:
                    handle.write(memoryview(np.ascontiguousarray(chunk, dtype="<f4")).cast("B"))
                    written += chunk.size
            if written != total:
                raise RuntimeError(f"distance cache: wrote {written} values, expected {total}")
            if meta_path.exists():
                meta_path.unlink()
            os.replace(tmp, data_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        write_json(meta_path, {"n": n, "metric": metric, "fingerprint": fingerprint, "dtype": "float32",
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return data_path

    @staticmethod
    def read(path, dtype=np.float64, chunk=1 << 24):
        """Read a cached condensed matrix into a new ``dtype`` array, in chunks (no float32 copy kept)."""
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, file_dtype = read_header(handle)
            if file_dtype != np.dtype("<f4") or len(shape) != 1 or fortran:
                raise ValueError(f"{path} is not a float32 condensed distance matrix")
            out = np.empty(shape[0], dtype=dtype)
            buffer = np.empty(chunk, dtype="<f4")
            pos = 0
            while pos < shape[0]:
                count = min(chunk, shape[0] - pos)
                view = buffer[:count]
                got = handle.readinto(memoryview(view).cast("B"))
                if got != count * 4:
                    raise ValueError(f"{path} is truncated")
                out[pos:pos + count] = view
                pos += count
        return out


def cached_condensed_distances(space, cache=None, key=None, fingerprint=None, dtype=np.float64):
    """The condensed matrix as ``dtype``, read from ``cache`` when valid, else computed (and cached).

    Peak memory is the ``dtype`` array alone (``N (N-1) / 2 * 8`` bytes for float64): the cache is streamed in
    and out in chunks.
    """
    if cache is None or key is None:
        return condensed_distances(space, dtype=dtype)
    path = cache.lookup(key, space.n, space.metric, fingerprint)
    if path is not None:
        logger.info("reading cached distances %s", path)
        return cache.read(path, dtype=dtype)
    out = np.empty(condensed_size(space.n), dtype=dtype)

    def chunks():
        for start, stop in fill_condensed(space, out):
            yield out[start:stop]

    path = cache.write(key, chunks(), space.n, space.metric, fingerprint)
    logger.info("cached distances in %s", path)
    return out


# --------------------------------------------------------------------------------------------------------------
# Sparse neighbourhood graphs (sklearn's metric='precomputed' format: CSR with the distances as data)
# --------------------------------------------------------------------------------------------------------------

def _csr_from_rows(rows, cols, dists, n):
    graph = sp.csr_matrix((np.concatenate(dists) if dists else np.zeros(0),
                           (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                            np.concatenate(cols) if cols else np.zeros(0, np.int64))), shape=(n, n))
    graph.sort_indices()
    return graph


def radius_graph(space, radius, max_edges=400_000_000):
    """Exact graph of all pairs within ``radius`` (the diagonal included), as a CSR matrix of distances.

    Time is ``O(N^2 d / 2)`` (block matrix products over the upper triangle, mirrored); memory grows with the
    number of edges, not with N^2.

    Raises
    ------
    MemoryError
        When more than ``max_edges`` pairs lie within ``radius`` (choose a smaller epsilon or the kNN graph).
    """
    n = space.n
    rows, cols, dists = [], [], []
    edges = 0
    row = 0
    while row < n:
        stop = min(n, row + max(1, BLOCK_ELEMENTS // (n - row)))
        block = space.block(slice(row, stop), slice(row, n))
        local = np.arange(stop - row)
        block[local, local] = 0.0
        r, c = np.nonzero(block <= radius)
        upper = c > r  # the square part below the diagonal is seen again from the other end
        r, c = r[upper], c[upper]
        edges += 2 * r.size
        if edges > max_edges:
            raise MemoryError(f"more than {max_edges:,} pairs lie within eps={radius:g}: choose a smaller eps, "
                              f"or the kNN graph (--graph knn) whose memory grows with N*k")
        rows.append((r + row).astype(np.int64))
        cols.append((c + row).astype(np.int64))
        dists.append(block[r, c])
        row = stop
    r, c, d = np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)
    diag = np.arange(n, dtype=np.int64)
    return _csr_from_rows([r, c, diag], [c, r, diag], [d, d, np.zeros(n)], n)


KNN_INDEXES = ("auto", "flat", "hnsw", "ivf")


def _on_gpu(device):
    return device is not None and str(device).startswith("cuda")


def _faiss_index(space, k, index_type, nprobe, device):
    """A FAISS index over the prepared features (built by :func:`fast_search.index.new_faiss_index`), the
    searched array, and the index type used."""
    import faiss

    n = space.n
    if index_type not in KNN_INDEXES:
        raise ValueError(f"unknown kNN index {index_type!r}; expected one of {', '.join(KNN_INDEXES)}")
    gpu = _on_gpu(device) and hasattr(faiss, "StandardGpuResources")
    if index_type == "auto":
        index_type = "flat" if (n <= 50_000 or gpu) else "hnsw"
    nlist = int(min(max(16, 4 * np.sqrt(n)), max(1, n // 39)))
    factory = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}", "ivf": f"IVF{nlist},Flat"}[index_type]
    if space.binary:
        data = np.packbits(space.X.astype(np.uint8), axis=1)
        index = new_faiss_index(factory, "hamming", space.nbits, binary=True)
    else:
        data = np.ascontiguousarray(space.X, dtype=np.float32)
        index = new_faiss_index(factory, canonical_metric(space.metric), data.shape[1])
        if gpu and index_type != "hnsw":
            index = faiss_to_gpu(index, int(str(device).split(":")[1]) if ":" in str(device) else 0)
    if index_type == "ivf":
        rng = np.random.default_rng(0)
        index.train(data[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))])
        index.nprobe = min(nlist, nprobe)
    if index_type == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(data)
    if index_type == "hnsw":
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * (k + 1))
    return index, data, index_type


def _faiss_distances(space, scores, ids):
    """FAISS's scores as this module's distances (float64): hamming fractions, euclidean, cosine in [0, 2]."""
    if space.binary:
        return hamming_fraction(scores, space.nbits)
    distances = convert_distances(scores, ids, canonical_metric(space.metric), dtype=np.float64)
    return np.clip(distances, 0.0, 2.0) if space.metric == "cosine" else distances


def knn_graph(space, k, index="auto", nprobe=32, device=None, batch=8192):
    """Symmetric k-nearest-neighbour graph (FAISS) as a CSR matrix of distances, the diagonal included.

    Memory grows with ``N * k``. ``index='flat'`` is exact (``O(N^2 d)`` time; the default up to 50,000 points,
    and on a GPU); ``'hnsw'`` (the default above) is FAISS's HNSW graph (M=32, efSearch >= 2(k+1)): approximate,
    tens of times faster, its graph depends slightly on thread scheduling; ``'ivf'`` is an inverted-file index
    searching ``nprobe`` of about ``4 sqrt(N)`` lists. Each point gets its ``k`` nearest neighbours, and the graph
    is made symmetric (an edge found from either end is kept).

    Returns
    -------
    graph : scipy.sparse.csr_matrix
    info : dict
        ``index`` used, ``k``, ``nprobe``, ``seconds``.
    """
    started = time.perf_counter()
    n = space.n
    k = int(min(k, n - 1))
    if k < 1:
        raise ValueError("a kNN graph needs at least 2 points")
    faiss_index, data, index_type = _faiss_index(space, k, index, nprobe, device)
    rows, cols, dists = [], [], []
    for start in range(0, n, batch):
        scores, ids = faiss_index.search(data[start:start + batch], k + 1)
        dist = _faiss_distances(space, scores, ids)
        r = np.repeat(np.arange(start, start + ids.shape[0]), ids.shape[1])
        keep = ids.ravel() >= 0
        rows.append(r[keep])
        cols.append(ids.ravel()[keep].astype(np.int64))
        dists.append(dist.ravel()[keep])
    diag = np.arange(n)
    r = np.concatenate(rows + [cols[i] for i in range(len(cols))] + [diag])
    c = np.concatenate(cols + [rows[i] for i in range(len(rows))] + [diag])
    d = np.concatenate(dists + dists + [np.zeros(n)])
    d[r == c] = 0.0
    # Keep one value per pair (the same pair found from both ends has the same distance up to rounding).
    key = r.astype(np.int64) * n + c
    key, first = np.unique(key, return_index=True)
    graph = sp.csr_matrix((d[first], (key // n, key % n)), shape=(n, n))
    graph.sort_indices()
    info = {"index": index_type, "k": k, "nprobe": nprobe if index_type == "ivf" else None,
            "ef_search": faiss_index.hnsw.efSearch if index_type == "hnsw" else None,
            "seconds": time.perf_counter() - started, "edges": int(graph.nnz)}
    return graph, info


def connect_components(graph):
    """Join the connected components of a sparse distance graph with edges longer than any in the graph.

    HDBSCAN needs one connected component; the added edges (twice the largest distance, plus one) only merge
    the components at the very top of the hierarchy, so they never join what the graph kept apart below.
    """
    from scipy.sparse.csgraph import connected_components

    count, labels = connected_components(graph, directed=False)
    if count <= 1:
        return graph, 1
    firsts = np.unique(labels, return_index=True)[1]
    far = 2.0 * (graph.data.max() if graph.nnz else 1.0) + 1.0
    a, b = firsts[:-1], firsts[1:]
    coo = graph.tocoo()
    # Built from coordinates, not by adding matrices: a sum would drop the explicit zeros (duplicate images).
    joined = sp.csr_matrix((np.concatenate([coo.data, np.full(2 * a.size, far)]),
                            (np.concatenate([coo.row, a, b]), np.concatenate([coo.col, b, a]))), shape=graph.shape)
    joined.sort_indices()
    return joined, count


def save_graph(path, graph):
    """Save a CSR graph as a plain ``.npz`` of arrays (no pickle)."""
    np.savez(path, data=graph.data, indices=graph.indices, indptr=graph.indptr, shape=np.array(graph.shape))


def load_graph(path):
    """Load a graph written by :func:`save_graph`."""
    with np.load(path, allow_pickle=False) as arrays:
        return sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))

