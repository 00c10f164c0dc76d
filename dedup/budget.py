"""The index to build for a memory and latency budget, measured on the user's own data.

Like autofaiss, but every candidate is scored on **copy-detection recall** (the share of edited copies whose
original is the first result), not on agreement with exact nearest neighbours: an approximate index that loses
neighbours which were wrong anyway costs nothing here.

:func:`measure_candidates` builds each candidate (Flat, IVF with several ``nprobe``, IVF-PQ, HNSW with several
``efSearch``; binary forms for hashes) on the database sample, searches the copies, and measures recall@1, the
median latency of one query (one thread... as many as FAISS uses), and the bytes per vector of the serialised
index. :func:`choose` takes the best recall within the budgets (ties: fewer bytes, then faster).
"""
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from helpers.log import get_logger

logger = get_logger(__name__)


@dataclass
class Candidate:
    factory: str
    nprobe: int = None
    efsearch: int = None
    recall_at_1: float = float("nan")
    latency_ms: float = float("nan")
    bytes_per_vector: float = float("nan")
    build_s: float = float("nan")

    @property
    def label(self):
        extra = f" nprobe={self.nprobe}" if self.nprobe else (f" efSearch={self.efsearch}" if self.efsearch else "")
        return self.factory + extra

    def as_dict(self):
        return dict(asdict(self), label=self.label)


def default_candidates(n, dim, binary):
    """``[(factory, [search settings])]`` sized for ``n`` rows of ``dim`` values (bits for hashes)."""
    nlist = int(max(4, min(65536, 2 ** round(np.log2(max(4.0, 4 * np.sqrt(n)))))))
    nlist = min(nlist, max(1, n // 39))  # FAISS wants >= 39 training points per list
    probes = [p for p in (1, 4, 16, 64) if p <= nlist]
    if binary:
        return [("BFlat", [None]), (f"BIVF{nlist}", [("nprobe", p) for p in probes]),
                ("BHNSW32", [("efsearch", e) for e in (16, 64, 128)])]
    m = next((m for m in (dim // 8, dim // 16, 32, 16, 8) if m and dim % m == 0), None)
    candidates = [("Flat", [None]), (f"IVF{nlist},Flat", [("nprobe", p) for p in probes]),
                  ("HNSW32", [("efsearch", e) for e in (16, 64, 128)])]
    if m:
        candidates.append((f"IVF{nlist},PQ{m}", [("nprobe", p) for p in probes]))
    if dim % 4 == 0:
        candidates.append((f"IVF{nlist},SQ8", [("nprobe", p) for p in probes]))
    return candidates


def _bytes(index, binary):
    import faiss

    data = (faiss.serialize_index_binary if binary else faiss.serialize_index)(index)
    return int(data.size)


def measure_candidates(database, queries, targets, binary, candidates=None, latency_queries=50, seed=0):
    """Measure every candidate (see the module docstring).

    Parameters
    ----------
    database : array [n, ...]
        The user's vectors (packed bits or L2-normalised floats).
    queries : array [m, ...]
        Edited copies of some database rows.
    targets : int array [m]
        The database row of each copy's original.

    Returns
    -------
    list of Candidate
    """
    from .index import new_faiss_index, set_search_params

    n, m = len(database), len(queries)
    dim = database.shape[1] * 8 if binary else database.shape[1]
    candidates = candidates or default_candidates(n, dim, binary)
    database = np.ascontiguousarray(database if binary else np.asarray(database, dtype=np.float32))
    queries = np.ascontiguousarray(queries if binary else np.asarray(queries, dtype=np.float32))
    timing_rows = np.random.default_rng(seed).choice(m, min(m, latency_queries), replace=False)
    results = []
    for factory, settings in candidates:
        tick = time.perf_counter()
        try:
            index = new_faiss_index(factory, dim, binary)
            if not index.is_trained:
                index.train(database)
            index.add(database)
        except (ValueError, RuntimeError) as exc:
            logger.warning("index %s skipped: %s", factory, exc)
            continue
        build_s = time.perf_counter() - tick
        size = _bytes(index, binary) / n
        for setting in settings:
            kwargs = {setting[0]: setting[1]} if setting else {}
            set_search_params(index, **kwargs)
            _, ids = index.search(queries, 1)
            recall = float(np.mean(ids[:, 0] == targets))
            latencies = []
            for row in timing_rows:
                tick = time.perf_counter()
                index.search(queries[row:row + 1], 10)
                latencies.append(time.perf_counter() - tick)
            results.append(Candidate(factory, kwargs.get("nprobe"), kwargs.get("efsearch"), recall,
                                     float(np.median(latencies) * 1000), size, build_s))
    return results


def parse_bytes(text):
    """``'2GB'``, ``'512MiB'``, ``'100000'`` -> bytes."""
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20,
             "gib": 2**30, "tib": 2**40}
    value = str(text).strip().lower().replace(" ", "")
    number = value.rstrip("kmgtib")
    unit = value[len(number):]
    if unit not in units:
        raise ValueError(f"cannot read the size {text!r}; write e.g. 2GB, 512MiB or a number of bytes")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise ValueError(f"cannot read the size {text!r}; write e.g. 2GB, 512MiB or a number of bytes") from None


def choose(results, n_total, memory_budget=None, latency_budget_ms=None):
    """The candidate with the best recall@1 whose memory for ``n_total`` vectors and latency fit the budgets
    (ties: fewer bytes, then faster); None when none fits."""
    fitting = [c for c in results
               if (memory_budget is None or c.bytes_per_vector * n_total <= memory_budget)
               and (latency_budget_ms is None or c.latency_ms <= latency_budget_ms)]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (-round(c.recall_at_1, 6), c.bytes_per_vector, c.latency_ms))


def format_table(results, chosen, n_total):
    lines = [f"{'index':<28s} {'recall@1':>8s} {'ms/query':>9s} {'bytes/vec':>10s} {'memory for n':>13s}"]
    for c in results:
        mark = "  <- chosen" if chosen is c else ""
        lines.append(f"{c.label:<28s} {c.recall_at_1:8.3f} {c.latency_ms:9.3f} {c.bytes_per_vector:10.1f} "
                     f"{c.bytes_per_vector * n_total / 2**20:10.1f} MiB{mark}")
    return "\n".join(lines)


def choose_for_collection(featurizer, paths, features, n_total=None, memory_budget=None, latency_budget_ms=None,
                          sample_size=50, families=None, database_size=20000, seed=0):
    """Measure the candidates on the user's own data: edited copies of ``sample_size`` images (attack generator)
    searched in (a sample of) the collection; returns ``(chosen, results)``."""
    from .calibrate import make_copies, sample_rows

    families = families or ("jpeg", "scale", "crop", "enhancement", "text", "noise", "blur", "overlay")
    rows = sample_rows(len(paths), sample_size, seed)
    sources, _, images = make_copies(paths, rows, families, 1, seed)
    copies = featurizer.images(images)
    # the database: the sampled originals plus other collection rows, up to database_size
    others = np.setdiff1d(np.arange(len(paths)), rows)
    if len(others) > database_size - len(rows):
        others = np.sort(np.random.default_rng(seed).choice(others, database_size - len(rows), replace=False))
    db_rows = np.concatenate([rows, others])
    position = {row: i for i, row in enumerate(db_rows.tolist())}
    targets = np.array([position[s] for s in sources.tolist()])
    threads = os.environ.get("OMP_NUM_THREADS")
    logger.info("measuring index candidates on %d rows and %d edited copies (threads: %s)", len(db_rows),
                len(copies), threads or "all")
    results = measure_candidates(np.asarray(features)[db_rows], copies, targets, featurizer.binary, seed=seed)
    chosen = choose(results, n_total or len(paths), memory_budget, latency_budget_ms)
    return chosen, results
