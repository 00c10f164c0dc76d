"""Search indexes: FAISS (CPU or GPU, float or binary), an exact chunked PyTorch backend, and a brute-force path
for custom distances (crop-resistant hashes).

This module is the toolkit's one metric vocabulary and its one FAISS index builder: search, clustering
(``clustering.distances``) and the duplicate index (``dedup.index``) take their metric names, their
normalisation (:func:`l2_normalise_rows`) and their FAISS indexes (:func:`new_faiss_index`,
:func:`faiss_to_gpu`) from here.

Every index takes vectors prepared by :func:`prepare_vectors` for its metric, searches in query batches (so
memory stays bounded whatever the number of queries), and returns ``(distances, ids)`` where **lower distance =
closer** for every metric:

===========  ================================================================================================
``L2``       Euclidean distance (FAISS's squared L2, square-rooted).
``L1``       Manhattan distance (FAISS ``METRIC_L1``).
``cosine``   ``1 - cosine similarity``: inner product on L2-normalised vectors.
``JS``       Jensen-Shannon divergence (natural log, FAISS ``METRIC_JensenShannon``) between the rows
             L1-normalised to probability distributions; features must be non-negative.
``hamming``  number of differing bits, for binary (packed ``uint8``) features.
===========  ================================================================================================

Clustering (like scipy) calls ``L2`` ``euclidean`` (:data:`METRIC_ALIASES`) and states Hamming distances as the
*fraction* of differing bits, its users' unit for epsilons and thresholds: :func:`hamming_fraction` is the one
place a bit count becomes a fraction.

Missing neighbours (an approximate index can return fewer than ``k``) have id ``-1`` and distance ``inf``.
"""
import functools
import re
import warnings

import numpy as np

from helpers.log import get_logger

logger = get_logger(__name__)

FLOAT_METRICS = ("L2", "L1", "cosine", "JS")
BINARY_METRICS = ("hamming",)
METRICS = FLOAT_METRICS + BINARY_METRICS
CROP_RESISTANT = "crop_resistant"
TORCH_METRICS = ("L2", "cosine", "L1")
BACKENDS = ("auto", "faiss", "torch")
#: Other names of the metrics above: clustering (like scipy) calls ``L2`` ``euclidean``.
METRIC_ALIASES = {"euclidean": "L2"}

# JS: FAISS computes x*log(x/m) per component, which is NaN for x = 0; a floor this small changes no distance
# visibly (each floored component adds at most ~1e-28) and keeps zeros (ReLU features) usable.
_JS_FLOOR = np.float32(1e-30)


def _faiss():
    import faiss

    return faiss


def faiss_metric(metric):
    """The FAISS metric constant of a float metric name."""
    faiss = _faiss()
    table = {"L2": faiss.METRIC_L2, "L1": faiss.METRIC_L1, "cosine": faiss.METRIC_INNER_PRODUCT,
             "JS": faiss.METRIC_JensenShannon}
    if metric not in table:
        raise ValueError(f"unknown metric {metric!r} for float features; expected one of {', '.join(table)}")
    return table[metric]


def canonical_metric(metric):
    """The name this module uses for ``metric`` (``euclidean`` -> ``L2``; other names unchanged)."""
    return METRIC_ALIASES.get(metric, metric)


def l2_normalise_rows(rows, out=None):
    """``rows`` divided by their L2 norms (into ``out``, which may be ``rows`` itself): the inner product of
    normalised rows is the cosine similarity. All-zero rows stay zero (at cosine distance 1 from everything)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return np.divide(rows, norms, out=out)


def hamming_fraction(bit_counts, nbits):
    """Hamming distances counted in bits (this module's unit) as the fraction of the ``nbits`` bits that differ
    (``float64``; clustering's unit, scipy's ``pdist(metric='hamming')``: 12 of 64 bits is 0.1875)."""
    return np.asarray(bit_counts, dtype=np.float64) / nbits


def check_metric(metric, binary):
    """Raise ``ValueError`` when ``metric`` does not apply to float (``binary=False``) or binary features."""
    allowed = BINARY_METRICS + (CROP_RESISTANT,) if binary else FLOAT_METRICS
    if metric not in allowed:
        kind = "binary (hash)" if binary else "float"
        raise ValueError(f"metric {metric!r} does not apply to {kind} features; use one of {', '.join(allowed)}")


def prepare_vectors(x, metric, chunk=65536):
    """The array an index of ``metric`` stores or searches with.

    ``cosine`` rows are L2-normalised, ``JS`` rows L1-normalised (all-zero rows stay zero), other float metrics
    get ``float32``; binary metrics keep the packed ``uint8`` rows. ``x`` may be a list of arrays (a main and a
    distractor dataset), which are concatenated into the one output, chunk by chunk, so memory-mapped input is
    never held twice. An in-memory C-contiguous ``float32`` array is returned as is for ``L2``/``L1``.

    Raises
    ------
    ValueError
        On NaN/inf values, on negative values for ``JS``, or on a dtype that does not fit the metric.
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    if any(np.ndim(part) != 2 for part in parts) or len({part.shape[1] for part in parts}) != 1:
        raise ValueError(f"features must be 2-D arrays of one width, got shapes {[np.shape(p) for p in parts]}")
    dtypes = {np.dtype(part.dtype) for part in parts}
    if metric not in METRICS and metric != CROP_RESISTANT:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    binary_metric = metric in BINARY_METRICS or metric == CROP_RESISTANT
    if binary_metric != (dtypes == {np.dtype(np.uint8)}):
        need = "packed binary (uint8) features" if binary_metric else "float features (these are binary hashes: " \
                                                                       "use hamming)"
        raise ValueError(f"metric {metric} needs {need}, got {', '.join(map(str, dtypes))}")
    if binary_metric:
        return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=0)
    in_place = (len(parts) == 1 and metric in ("L2", "L1") and type(parts[0]) is np.ndarray
                and parts[0].dtype == np.float32 and parts[0].flags.c_contiguous)
    n = sum(part.shape[0] for part in parts)
    out = parts[0] if in_place else np.empty((n, parts[0].shape[1]), dtype=np.float32)
    offset = 0
    for part in parts:
        for start in range(0, part.shape[0], chunk):
            block = np.asarray(part[start:start + chunk], dtype=np.float32)
            row = offset + start
            finite = np.isfinite(block)
            if not finite.all():
                bad = row + int(np.flatnonzero(~finite.all(axis=1))[0])
                raise ValueError(f"features hold NaN or infinite values (first in row {bad}); re-extract them")
            if metric == "cosine":
                block = l2_normalise_rows(block)
            elif metric == "JS":
                if (block < 0).any():
                    bad = row + int(np.flatnonzero((block < 0).any(axis=1))[0])
                    raise ValueError(f"the JS (Jensen-Shannon) metric needs non-negative features; row {bad} has "
                                     "negative values (use L2, L1 or cosine for these features)")
                sums = block.sum(axis=1, keepdims=True)
                block = np.maximum(block / np.where(sums > 0, sums, 1), _JS_FLOOR)
            if not in_place:
                out[row:row + block.shape[0]] = block
        offset += part.shape[0]
    return out


def convert_distances(distances, ids, metric, dtype=np.float32):
    """FAISS's raw scores of a float metric to distances (lower = closer), computed in ``dtype`` without
    changing the input; missing neighbours get ``inf``."""
    distances = np.asarray(distances, dtype=dtype)
    if metric == "L2":
        distances = np.sqrt(np.maximum(distances, 0))
    elif metric == "cosine":
        distances = 1.0 - distances
    distances = distances.astype(dtype, copy=False)
    distances[np.asarray(ids) < 0] = np.inf
    return distances


def to_binary_factory(factory):
    """The binary FAISS factory string for a float one: ``Flat``->``BFlat``, ``IVF{n},Flat``->``BIVF{n}``,
    ``HNSW{m}``->``BHNSW{m}``; binary strings (``B...``) are returned unchanged."""
    text = factory.strip()
    if text.startswith("B"):
        return text
    if text == "Flat":
        return "BFlat"
    match = re.fullmatch(r"IVF(\d+)(,Flat)?", text)
    if match:
        return f"BIVF{match.group(1)}"
    match = re.fullmatch(r"HNSW(\d+)(,Flat)?", text)
    if match:
        return f"BHNSW{match.group(1)}"
    raise ValueError(f"index {factory!r} has no binary equivalent; binary features support BFlat, BIVF{{n}} "
                     "and BHNSW{m}")


def is_exact_factory(factory):
    """True for brute-force factory strings (``Flat``, ``BFlat``)."""
    return factory.strip() in ("Flat", "BFlat")


def new_faiss_index(factory, metric, dim, binary=False):
    """An empty CPU FAISS index: the one place FAISS indexes are constructed.

    Parameters
    ----------
    factory : str
        FAISS factory string; for binary features a float one is translated (:func:`to_binary_factory`).
    metric : str
        A float metric of :data:`FLOAT_METRICS` (or an alias, :data:`METRIC_ALIASES`); ignored for binary
        features, which FAISS always compares by Hamming distance in bits.
    dim : int
        Values per vector; for binary features the number of bits, rounded up to whole bytes: packed rows
        carry whole bytes, and a hash of 42 bits (Colorhash) stored in 6 bytes has its last 6 bits 0 in every
        row, so searching the 48 stored bits gives exactly the 42-bit distances.

    Raises
    ------
    ValueError
        When FAISS cannot build ``factory`` (with FAISS's first line), or a binary factory for float features.
    """
    faiss = _faiss()
    try:
        if binary:
            return faiss.index_binary_factory(-(-int(dim) // 8) * 8, to_binary_factory(factory))
        if factory.strip().startswith("B"):
            raise ValueError(f"index {factory!r} is for binary features; these features are float")
        return faiss.index_factory(int(dim), factory, faiss_metric(canonical_metric(metric)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "binary features" if binary else f"metric {metric}"
        raise ValueError(f"FAISS cannot build index {factory!r} for {kind}: {first}") from None


def faiss_to_gpu(index, device):
    """``index`` copied to CUDA device ``device`` (int); the GPU resources stay alive with the returned index.

    Raises
    ------
    RuntimeError
        When FAISS cannot run this index on a GPU (no faiss-gpu, HNSW, a binary index other than BFlat).
    """
    faiss = _faiss()
    try:
        resources = faiss.StandardGpuResources()
        if isinstance(index, faiss.IndexBinary):
            if not isinstance(index, faiss.IndexBinaryFlat):
                raise RuntimeError("FAISS runs only BFlat binary indexes on GPU")
            moved = faiss.GpuIndexBinaryFlat(resources, index)
        else:
            moved = faiss.index_cpu_to_gpu(resources, int(device), index)
    except AttributeError as exc:  # a CPU-only FAISS build has no GPU classes
        raise RuntimeError(f"this FAISS has no GPU support ({exc})") from None
    moved._resources = resources  # keep the GPU resources alive with the index
    return moved


def _batches(n, size):
    for start in range(0, n, size):
        yield start, min(n, start + size)


class _BaseIndex:
    """Shared batching and bookkeeping; subclasses implement ``_search_batch``."""

    backend = "?"

    def __init__(self, factory, metric, dim, batch_size):
        self.factory, self.metric, self.dim = factory, metric, int(dim)
        self.batch_size = max(1, int(batch_size))
        self.ntotal = 0

    @property
    def is_exact(self):
        return is_exact_factory(self.factory)

    @property
    def kind(self):
        """``flat``, ``ivf``, ``hnsw`` or ``other`` (which search parameters apply)."""
        if self.is_exact:
            return "flat"
        name = self.factory.lstrip("B")
        if name.startswith("IVF"):
            return "ivf"
        if name.startswith("HNSW"):
            return "hnsw"
        return "other"

    def train(self, x):
        """Train (IVF, PQ...); a no-op for exact indexes."""

    def set_search_params(self, nprobe=None, efsearch=None):
        """Set ``nprobe`` (IVF) and/or ``efSearch`` (HNSW); an error for indexes that have no such parameter."""
        if nprobe is not None or efsearch is not None:
            raise ValueError(f"index {self.factory} has no nprobe/efSearch parameter")

    def search(self, queries, k):
        """``(distances float32 [nq, k], ids int64 [nq, k])`` of the ``k`` nearest database rows of each query."""
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self.ntotal == 0:
            raise ValueError("the index is empty: add the database vectors first")
        nq = queries.shape[0]
        distances = np.empty((nq, k), dtype=np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        for start, stop in _batches(nq, self.batch_size):
            distances[start:stop], ids[start:stop] = self._search_batch(queries[start:stop], k)
        return distances, ids

    def close(self):
        """Release the index's memory."""


class FaissIndex(_BaseIndex):
    """A FAISS index from a factory string, float or binary, on CPU or (with faiss-gpu) on a GPU.

    ``gpu`` is the CUDA device number to move the index to, or None for CPU. Indexes FAISS cannot put on a GPU
    (HNSW, most binary ones) stay on the CPU with a warning.
    """

    def __init__(self, factory, metric, dim, binary=False, gpu=None, batch_size=8192, train_size=None, seed=0):
        super().__init__(factory, metric, dim, batch_size)
        self.binary = bool(binary)
        self.train_size = int(train_size) if train_size else None
        self.seed = int(seed)
        check_metric(metric, self.binary)
        self.index = new_faiss_index(factory, metric, dim, binary=self.binary)
        if self.binary:
            self.factory, self.dim = to_binary_factory(factory), int(self.index.d)
        self.gpu = None
        self.backend = "faiss-cpu"
        if gpu is not None:
            self._to_gpu(int(gpu))

    def _to_gpu(self, device):
        try:
            self.index = faiss_to_gpu(self.index, device)
            self.gpu, self.backend = device, "faiss-gpu"
        except RuntimeError as exc:
            warnings.warn(f"FAISS cannot run {self.factory} ({self.metric}) on GPU ({str(exc).splitlines()[0]}); "
                          "it runs on CPU")

    def train(self, x):
        """Train on ``x`` (on ``train_size`` rows drawn without replacement with ``seed``, when it has more)."""
        if self.index.is_trained:
            return
        if self.train_size and x.shape[0] > self.train_size:
            rows = np.sort(np.random.default_rng(self.seed).choice(x.shape[0], self.train_size, replace=False))
            x = x[rows]
        try:
            self.index.train(x)
        except RuntimeError as exc:  # FAISS's C++ message: keep its first line, say which index and data
            text = " ".join(str(exc).split())
            detail = text.rsplit("failed: ", 1)[-1] if "failed: " in text else (text or type(exc).__name__)
            raise ValueError(f"FAISS cannot train {self.factory} on {x.shape[0]} rows ({detail}); use a smaller "
                             f"index (fewer IVF lists, fewer PQ bits) or more data") from None

    def add(self, x):
        if not self.index.is_trained:
            self.train(x)
        self.index.add(x)
        self.ntotal = int(self.index.ntotal)

    def _ivf(self):
        faiss = _faiss()
        if self.binary:
            return self.index if isinstance(self.index, faiss.IndexBinaryIVF) else None
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    def _hnsw(self):
        hnsw = getattr(self.index, "hnsw", None)
        return hnsw

    def set_search_params(self, nprobe=None, efsearch=None):
        faiss = _faiss()
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError(f"index {self.factory} has no nprobe parameter (only IVF indexes do)")
            if self.gpu is not None and not self.binary:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))
            else:
                ivf = self._ivf()
                if int(nprobe) > ivf.nlist:
                    logger.warning("nprobe %d is larger than nlist %d of %s; using %d", nprobe, ivf.nlist,
                                   self.factory, ivf.nlist)
                ivf.nprobe = min(int(nprobe), int(ivf.nlist))
        if efsearch is not None:
            hnsw = self._hnsw()
            if hnsw is None:
                raise ValueError(f"index {self.factory} has no efSearch parameter (only HNSW indexes do)")
            hnsw.efSearch = int(efsearch)

    def _search_batch(self, queries, k):
        distances, ids = self.index.search(queries, k)
        if self.binary:
            distances = np.asarray(distances, dtype=np.float32)
            distances[np.asarray(ids) < 0] = np.inf
            return distances, ids
        return convert_distances(distances, ids, self.metric), ids

    def close(self):
        try:
            self.index.reset()
        except (AttributeError, RuntimeError):
            pass
        self.index = None


class TorchFlatIndex(_BaseIndex):
    """Exact search with PyTorch: chunked matmul (or ``cdist`` for L1) and a running top-k merge.

    The database is kept on ``device`` (streamed from host memory in ``db_chunk``-row chunks when it does not fit
    on the GPU); each query batch meets each database chunk once, so peak memory is
    ``batch_size x db_chunk`` scores. Supports ``L2``, ``cosine`` and ``L1``; works on CPU tensors too.
    """

    def __init__(self, metric, dim, device="cpu", batch_size=None, db_chunk=None):
        import torch

        device = torch.device(device)
        cuda = device.type == "cuda"
        # peak score memory batch_size x db_chunk floats: 1 GiB on GPU, 64 MiB on CPU by default
        super().__init__("Flat", metric, dim, batch_size or (4096 if cuda else 1024))

        if metric not in TORCH_METRICS:
            raise ValueError(f"the torch backend supports {', '.join(TORCH_METRICS)}, not {metric}; "
                             "use --backend faiss")
        self.device = device
        self.db_chunk = max(1, int(db_chunk or (65536 if cuda else 16384)))
        self.backend = f"torch-{self.device.type}"
        self._db = None
        self._sq_norms = None

    def add(self, x):
        import torch

        if self._db is not None:
            raise ValueError("the torch backend holds one database; create a new index to add another")
        host = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        try:
            self._db = host.to(self.device)
        except torch.OutOfMemoryError:
            logger.warning("the database does not fit on %s; streaming it from host memory chunk by chunk",
                           self.device)
            self._db = host.pin_memory() if self.device.type == "cuda" else host
        if self.metric == "L2":
            self._sq_norms = torch.cat([(self._db[s:e].to(self.device) ** 2).sum(dim=1)
                                        for s, e in _batches(self._db.shape[0], self.db_chunk)])
        self.ntotal = int(self._db.shape[0])

    def _scores(self, queries, start, stop):
        """Scores of one database chunk: similarities to maximise (cosine) or distances to minimise (L2 without
        the per-query constant ``|q|^2``, L1)."""
        import torch

        chunk = self._db[start:stop].to(self.device, non_blocking=True)
        if self.metric == "L2":
            return torch.addmm(self._sq_norms[start:stop].unsqueeze(0), queries, chunk.T, beta=1.0, alpha=-2.0)
        if self.metric == "cosine":
            return torch.mm(queries, chunk.T)
        return torch.cdist(queries, chunk, p=1.0)

    def _search_batch(self, queries, k):
        import torch

        largest = self.metric == "cosine"
        with torch.no_grad():
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
            best_d = torch.empty((q.shape[0], 0), device=self.device)
            best_i = torch.empty((q.shape[0], 0), dtype=torch.int64, device=self.device)
            for start, stop in _batches(self.ntotal, self.db_chunk):
                values, index = torch.topk(self._scores(q, start, stop), min(k, stop - start), dim=1,
                                           largest=largest, sorted=False)
                best_d = torch.cat([best_d, values], dim=1)
                best_i = torch.cat([best_i, index + start], dim=1)
                if best_d.shape[1] > k:  # running top-k merge
                    best_d, keep = torch.topk(best_d, k, dim=1, largest=largest, sorted=False)
                    best_i = torch.gather(best_i, 1, keep)
            best_d, order = torch.sort(best_d, dim=1, descending=largest)
            best_i = torch.gather(best_i, 1, order)
            if self.metric == "L2":
                best_d = (best_d + (q ** 2).sum(dim=1, keepdim=True)).clamp_(min=0).sqrt_()
            elif self.metric == "cosine":
                best_d = 1.0 - best_d
            distances, ids = best_d.cpu().numpy(), best_i.cpu().numpy()
        if ids.shape[1] < k:  # fewer database rows than k
            pad = k - ids.shape[1]
            distances = np.pad(distances, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return distances, ids

    def close(self):
        self._db = self._sq_norms = None


class BruteForceIndex(_BaseIndex):
    """Exact search with a custom distance ``distance_fn(query_rows, db_rows) -> float [nq, n]`` (lower =
    closer), e.g. crop-resistant multi-hash matching; the top ``k`` per query by argpartition."""

    backend = "brute-force"

    def __init__(self, metric, dim, distance_fn, batch_size=256):
        super().__init__("Flat", metric, dim, batch_size)
        self.distance_fn = distance_fn
        self._db = None

    def add(self, x):
        self._db = x
        self.ntotal = int(x.shape[0])

    def _search_batch(self, queries, k):
        distances = np.asarray(self.distance_fn(queries, self._db), dtype=np.float64)
        if distances.shape != (queries.shape[0], self.ntotal):
            raise ValueError(f"{getattr(self.distance_fn, '__name__', 'distance function')} returned shape "
                             f"{distances.shape}, expected {(queries.shape[0], self.ntotal)}")
        kk = min(k, self.ntotal)
        part = np.argpartition(distances, kk - 1, axis=1)[:, :kk] if kk < self.ntotal else \
            np.tile(np.arange(self.ntotal), (queries.shape[0], 1))
        part_d = np.take_along_axis(distances, part, axis=1)
        order = np.lexsort((part, part_d), axis=1)
        ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
        dist = np.take_along_axis(part_d, order, axis=1).astype(np.float32)
        if kk < k:
            dist = np.pad(dist, ((0, 0), (0, k - kk)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        return dist, ids


def crop_resistant_distance_fn(segment_bits=64, hamming_cutoff=None):
    """``extractor.hashing.crop_resistant_distances`` for segments of ``segment_bits`` bits (the store's
    ``meta.json`` gives both values), or a ``ValueError`` saying it is not available."""
    try:
        from extractor.hashing import crop_resistant_distances
    except ImportError as exc:
        raise ValueError("these features use crop-resistant matching (meta.json \"matching\": "
                         "\"crop_resistant\"), which needs extractor.hashing.crop_resistant_distances; it is not "
                         f"available in this installation ({exc})") from None
    distance_fn = functools.partial(crop_resistant_distances, segment_bits=int(segment_bits),
                                    hamming_cutoff=hamming_cutoff)
    distance_fn.__name__ = "crop_resistant_distances"
    return distance_fn


def choose_backend(backend, device, factory, metric, binary=False):
    """Resolve ``--backend auto|faiss|torch`` for one index on ``device`` (a ``torch.device``).

    Returns ``"faiss-gpu"``, ``"faiss-cpu"``, ``"torch"`` or ``"brute-force"``. ``auto`` picks FAISS on CPU;
    on CUDA it picks FAISS GPU when installed (``faiss.get_num_gpus() > 0``), else the exact torch backend for a
    ``Flat`` L2/cosine/L1 index, else FAISS on CPU (with a log line saying so).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if metric == CROP_RESISTANT:
        if not is_exact_factory(factory):
            raise ValueError(f"crop-resistant hashes are matched by brute force only; use the Flat index, "
                             f"not {factory}")
        return "brute-force"
    cuda = getattr(device, "type", str(device)).startswith("cuda")
    torch_ok = is_exact_factory(factory) and metric in TORCH_METRICS and not binary
    if backend == "torch":
        if not torch_ok:
            raise ValueError(f"the torch backend runs exact (Flat) search with {', '.join(TORCH_METRICS)} on "
                             f"float features; {factory} with {metric} needs --backend faiss")
        return "torch"
    gpus = _faiss().get_num_gpus() if cuda else 0
    if backend == "faiss":
        if cuda and not gpus:
            warnings.warn("--backend faiss on CUDA needs faiss-gpu, which is not installed; FAISS runs on CPU")
        return "faiss-gpu" if gpus else "faiss-cpu"
    if cuda and gpus:
        return "faiss-gpu"
    if cuda and torch_ok:
        return "torch"
    if cuda:
        logger.info("no FAISS GPU installed: %s (%s) runs on CPU", factory, metric)
    return "faiss-cpu"


def make_index(factory, metric, dim, binary=False, device="cpu", backend="auto", batch_size=None,
               db_chunk=None, distance_fn=None, train_size=None, seed=0):
    """Build an (empty) index of any backend.

    Parameters
    ----------
    factory : str
        FAISS factory string (``Flat``, ``IVF1024,Flat``, ``HNSW32``, ``IVF1024,PQ64``...; binary: ``BFlat``,
        ``BIVF{n}``, ``BHNSW32``; float strings are translated for binary features).
    metric : str
        One of :data:`METRICS`, or ``crop_resistant`` for crop-resistant hashes.
    dim : int
        Number of values per vector (bits for binary features).
    device : torch.device or str
    backend : str
        ``auto``, ``faiss`` or ``torch`` (see :func:`choose_backend`).
    batch_size : int, optional
        Queries per search batch (default 8192 for FAISS, 4096/1024 for torch on GPU/CPU, 256 brute force).
    db_chunk : int, optional
        Database rows per chunk of the torch backend (default 65536 on GPU, 16384 on CPU).
    distance_fn : callable, optional
        Distance function of the brute-force path (defaults to crop-resistant distances).
    train_size : int, optional
        Train FAISS indexes (IVF, PQ) on at most this many database rows (random, seeded); bounds the training
        time on large databases (FAISS itself samples up to 256 points per IVF list).
    seed : int
        Seed of that random draw of ``train_size`` rows (``--seed``).
    """
    import torch

    device = torch.device(device)
    check_metric(metric, binary)
    chosen = choose_backend(backend, device, factory, metric, binary)
    if chosen == "brute-force":
        return BruteForceIndex(metric, dim, distance_fn or crop_resistant_distance_fn(),
                               batch_size=batch_size or 256)
    if chosen == "torch":
        return TorchFlatIndex(metric, dim, device=device, batch_size=batch_size, db_chunk=db_chunk)
    gpu = (device.index or 0) if chosen == "faiss-gpu" else None
    return FaissIndex(factory, metric, dim, binary=binary, gpu=gpu, batch_size=batch_size or 8192,
                      train_size=train_size, seed=seed)


def exact_rerank(vectors, queries, candidate_ids, k, metric="cosine", batch_size=64):
    """Exact re-ranking: the ``k`` nearest of each query's candidates, by exact distance to the stored vectors.

    The second stage of a compressed index (IVF-PQ): its candidates are re-scored against the original vectors,
    read from ``vectors`` (an array or a memory-mapped store, rows prepared by :func:`prepare_vectors`; only the
    candidates' rows are read). When the candidates contain a query's exact ``k`` nearest neighbours, the result
    is exactly the exact search's (equal distances ordered by row id, as FAISS's Flat does).

    Parameters
    ----------
    vectors : float array [n, d]
    queries : float array [nq, d]
        Prepared like ``vectors``.
    candidate_ids : int array [nq, c]
        Row ids; ``-1`` (missing) and repeated ids are ignored.
    k : int
    metric : {'cosine', 'L2'}

    Returns
    -------
    distances, ids : arrays [nq, k]
        As :meth:`_BaseIndex.search` (``inf`` / ``-1`` where fewer than ``k`` candidates exist).
    """
    if metric not in ("cosine", "L2"):
        raise ValueError(f"exact re-ranking supports cosine and L2, not {metric}")
    candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
    nq = len(queries)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for start, stop in _batches(nq, batch_size):
        cand = candidate_ids[start:stop]
        valid = cand >= 0
        rows = np.unique(cand[valid])  # sorted: a memory map is read in file order
        if not len(rows):
            continue
        stored = np.asarray(vectors[rows], dtype=np.float32)
        where = np.searchsorted(rows, np.where(valid, cand, rows[0]))
        q = np.asarray(queries[start:stop], dtype=np.float32)
        gathered = stored[where]  # [b, c, d]
        if metric == "cosine":
            dist = 1.0 - np.einsum("bcd,bd->bc", gathered, q)
        else:
            dist = np.sqrt(np.maximum(((gathered - q[:, None, :]) ** 2).sum(axis=2), 0))
        dist = np.where(valid, dist, np.inf).astype(np.float32)
        # a repeated candidate counts once: keep its first occurrence
        ordered = np.sort(np.where(valid, cand, -1), axis=1)
        repeated = np.zeros_like(valid)
        for row in np.flatnonzero(((np.diff(ordered, axis=1) == 0) & (ordered[:, 1:] >= 0)).any(axis=1)):
            _, first = np.unique(cand[row], return_index=True)
            repeated[row] = True
            repeated[row, first] = False
        dist[repeated] = np.inf
        ids = np.where(valid & ~repeated, cand, -1)
        order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), dist), axis=1)[:, :k]
        width = order.shape[1]
        out_d[start:stop, :width] = np.take_along_axis(dist, order, axis=1)
        out_i[start:stop, :width] = np.where(np.isfinite(out_d[start:stop, :width]),
                                             np.take_along_axis(ids, order, axis=1), -1)
    return out_d, out_i


class RerankedIndex(_BaseIndex):
    """An approximate index whose ``k_factor * k`` best candidates are re-ranked exactly against the original
    vectors (:func:`exact_rerank`), which may stay on disk (a memory-mapped store): only the compressed index
    is held in memory. ``base`` is a (trained, filled) index from :func:`make_index`, its rows aligned with
    ``vectors``' rows."""

    def __init__(self, base, vectors, k_factor=16, batch_size=1024):
        super().__init__(f"{base.factory}+rerank", base.metric, base.dim, batch_size)
        self.base, self.vectors, self.k_factor = base, vectors, int(k_factor)
        self.backend = f"{base.backend}+exact-rerank"
        self.ntotal = base.ntotal

    @property
    def kind(self):
        return self.base.kind

    def set_search_params(self, nprobe=None, efsearch=None, k_factor=None):
        if k_factor is not None:
            self.k_factor = int(k_factor)
        self.base.set_search_params(nprobe=nprobe, efsearch=efsearch)

    def _search_batch(self, queries, k):
        _, candidates = self.base.search(queries, min(self.base.ntotal, k * self.k_factor))
        return exact_rerank(self.vectors, queries, candidates, k, self.metric)

    def close(self):
        self.base.close()
        self.vectors = None
