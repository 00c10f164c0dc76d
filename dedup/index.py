"""A saved, appendable index of a collection: what ``build_index.py`` writes and ``query.py`` searches.

Layout of an index folder (``Indexes/<name>/`` by default):

- ``index.faiss``: the FAISS index (binary FAISS index for hashes: Hamming; float: inner product on L2-normalised
  embeddings = cosine);
- ``store/part-0000/``, ``store/part-0001/``...: the feature store (:mod:`helpers.feature_store`) of the images,
  one part per build or append, rows in index order (row ``i`` of the index is row ``i`` of the parts read in
  order);
- ``index.json``: the algorithm and its metadata (model, preprocessing, weights and their SHA-256), the metric, the
  FAISS factory string and search parameters, the number of rows, the parts, and the threshold (calibrated at
  build time unless given) that marks likely copies.

Appending (:func:`append_to_index`) adds the new images' vectors to the existing FAISS index (no retraining, the
rows already there are not re-added) and writes one more store part; ``index.faiss`` and ``index.json`` are
replaced atomically, so an interrupted append leaves the previous index intact.
"""
import os
import time
from pathlib import Path

import numpy as np

from helpers.feature_store import load_features, save_features
from helpers.log import get_logger
from helpers.paths import REPO_ROOT
from helpers.results import read_json, write_json

from .features import Featurizer, score_of

logger = get_logger(__name__)

INDEXES_DIR = REPO_ROOT / "Indexes"
INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"


def _faiss():
    import faiss

    return faiss


def index_folder(name_or_path):
    """An index name (``Indexes/<name>``) or an existing folder path."""
    path = Path(name_or_path)
    if path.is_dir() or os.sep in str(name_or_path) or str(name_or_path).startswith("."):
        return path
    return INDEXES_DIR / str(name_or_path)


def new_faiss_index(factory, dim, binary):
    """An empty FAISS index: ``factory`` for float features (inner product on L2-normalised rows: cosine) or its
    binary form for hashes (:func:`fast_search.index.new_faiss_index`)."""
    from fast_search.index import new_faiss_index as build

    return build(factory, "cosine", dim, binary=binary)


def write_faiss(index, path, binary):
    faiss = _faiss()
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
    os.replace(tmp, path)


def read_faiss(path, binary, mmap=False):
    """Read a saved FAISS index; ``mmap`` maps a float index's vectors from the file instead of reading them (a
    100K x 1280 Flat index: 512 MB not read at open, the search touches the pages it needs from the page cache).
    The mapped index is for searching only (append reads it whole)."""
    faiss = _faiss()
    if binary:
        return faiss.read_index_binary(str(path))
    if mmap:
        # IO_FLAG_MMAP_IFC maps the flat codes too (IO_FLAG_MMAP alone maps only IVF lists and still copies a
        # Flat index's vectors: measured 2.1 s vs 0.09 s to open 512 MB); older FAISS or an index type that
        # cannot be mapped falls back to reading.
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
        for flags in ([flag] if flag is not None else []) + [faiss.IO_FLAG_MMAP]:
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError:
                continue
    return faiss.read_index(str(path))


def set_search_params(index, nprobe=None, efsearch=None):
    faiss = _faiss()
    if nprobe is not None:
        try:
            ivf = index if isinstance(index, faiss.IndexBinaryIVF) else faiss.extract_index_ivf(index)
            ivf.nprobe = min(int(nprobe), int(ivf.nlist))
        except (RuntimeError, AttributeError):
            pass
    if efsearch is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(efsearch)


class SavedIndex:
    """An index folder opened for search or append."""

    def __init__(self, folder, mmap=False):
        self.folder = Path(folder)
        if not (self.folder / INFO_FILE).is_file():
            raise FileNotFoundError(f"no index in {self.folder} (build one with build_index.py)")
        self.info = read_json(self.folder / INFO_FILE)
        self.binary = bool(self.info["binary"])
        self.db = None
        if self.info.get("vector_db"):
            from .vectordb import QdrantIndex

            spec = self.info["vector_db"]
            self.db = QdrantIndex(spec["location"], spec["collection"], self.binary, self.info["dim"])
            self.index = None
        else:
            self.index = read_faiss(self.folder / INDEX_FILE, self.binary, mmap=mmap)
            set_search_params(self.index, self.info.get("nprobe"), self.info.get("efsearch"))
        self._names = None

    def close(self):
        """Release the vector database client (an embedded Qdrant folder admits one client at a time)."""
        if self.db is not None:
            self.db.close()
            self.db = None

    @property
    def ntotal(self):
        return self.db.count if self.db is not None else int(self.index.ntotal)

    @property
    def names(self):
        if self._names is None:
            self._names = []
            for part in self.info["parts"]:
                self._names.extend(load_features(self.folder / part).names)
        return self._names

    def features(self):
        """All stored rows (memory-mapped parts concatenated)."""
        return np.concatenate([np.asarray(load_features(self.folder / part).features)
                               for part in self.info["parts"]])

    def featurizer(self, device="cpu", workers=1, engine="auto", threads=None):
        """The index's algorithm. ``engine``: ``auto`` uses the ONNX export of the model saved with the index
        (``model.onnx``, :mod:`dedup.onnx_model`, run by ONNX Runtime with ``threads`` intra-op threads) when there
        is one and ``device`` is ``cpu`` or ``auto``, torch otherwise; ``onnx`` requires the export; ``torch``
        always builds the torch model."""
        if engine not in ("auto", "onnx", "torch"):
            raise ValueError(f"engine must be auto, onnx or torch, got {engine!r}")
        if not self.binary and engine != "torch":
            from .onnx_model import load_network

            network = None
            if engine == "onnx" or str(device) in ("auto", "cpu"):
                from extractor.transforms import Preprocessing

                network = load_network(self.folder, Preprocessing.from_meta(self.info["meta"]["preprocessing"]),
                                       threads=threads)
            if network is not None:
                from .features import OnnxFeaturizer

                return OnnxFeaturizer(network, self.info["algo"], self.info["meta"])
            if engine == "onnx":
                reason = (self.info.get("onnx_model") or {}).get("refused") or "the index predates the ONNX export"
                raise ValueError(f"{self.folder} has no ONNX export of its model ({self.info['name']}: {reason}); "
                                 f"use --engine torch, or rebuild the index")
        return Featurizer(self.info["algo"], weights=self.info.get("weights", "pretrained"), device=device,
                          workers=workers)

    @property
    def threshold(self):
        """Distance threshold of likely copies (``-inf`` when none)."""
        value = self.info.get("threshold_distance")
        return -np.inf if value is None else float(value)

    def search(self, vectors, k):
        """``(distances float64 [nq, k], ids int64 [nq, k])``, lower = closer."""
        if self.db is not None:
            return self.db.search(vectors, int(k))
        queries = np.ascontiguousarray(vectors if self.binary else np.asarray(vectors, dtype=np.float32))
        distances, ids = self.index.search(queries, int(k))
        distances = np.asarray(distances, dtype=np.float64)
        if not self.binary:
            distances = 1.0 - distances
        distances[ids < 0] = np.inf
        return distances, ids


def _part_name(number):
    return f"store/part-{number:04d}"


def build_index(folder, paths, featurizer, factory="Flat", nprobe=None, efsearch=None, threshold=None,
                calibration=None, train_size=None, report=None, force=False):
    """Compute the features of ``paths``, train and fill a FAISS index, save everything (see module docstring).

    Returns
    -------
    dict
        The ``index.json`` content.
    """
    folder = Path(folder)
    if (folder / INFO_FILE).exists() and not force:
        raise ValueError(f"{folder} already holds an index; use --append to add images, or --force to rebuild")
    paths, features = featurizer.files(paths, report)
    if not paths:
        raise ValueError("no readable image to index")
    return build_from_features(folder, paths, features, featurizer, factory=factory, nprobe=nprobe,
                               efsearch=efsearch, threshold=threshold, calibration=calibration,
                               train_size=train_size)


def build_from_features(folder, names, features, featurizer, factory="Flat", nprobe=None, efsearch=None,
                        threshold=None, calibration=None, train_size=None, seed=0, qdrant=None):
    """:func:`build_index` from features already computed (rows named ``names``); with ``qdrant`` (a folder for
    the embedded mode, or a server / cluster URL) the vectors go to a Qdrant collection named after the index
    folder instead of a FAISS file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (folder / "store").glob("part-*") if (folder / "store").exists() else []:
        import shutil

        shutil.rmtree(stale)
    dim = featurizer.dim
    started = time.perf_counter()
    if qdrant:
        from .vectordb import QdrantIndex

        db = QdrantIndex(qdrant, folder.name, featurizer.binary, dim)
        db.create(overwrite=True)
        db.add(features, names)
        db.close()
        factory, index = "qdrant", None
    else:
        index = new_faiss_index(factory, dim, featurizer.binary)
    if index is not None and not index.is_trained:
        sample = features
        if train_size and len(features) > train_size:
            rows = np.sort(np.random.default_rng(seed).choice(len(features), int(train_size), replace=False))
            sample = features[rows]
        index.train(np.ascontiguousarray(sample))
    if index is not None:
        index.add(np.ascontiguousarray(features))
        set_search_params(index, nprobe, efsearch)
    save_features(folder / _part_name(0), features, names, dict(featurizer.meta, name=featurizer.name),
                  overwrite=True)
    if index is not None:
        write_faiss(index, folder / INDEX_FILE, featurizer.binary)
    onnx_export = _save_onnx_export(folder, featurizer)
    info = {
        "algo": featurizer.algo, "name": featurizer.name, "binary": featurizer.binary,
        "metric": featurizer.metric, "dim": dim, "factory": factory, "nprobe": nprobe, "efsearch": efsearch,
        "n": int(len(features)), "parts": [_part_name(0)], "meta": featurizer.meta,
        "vector_db": {"kind": "qdrant", "location": str(qdrant), "collection": folder.name} if qdrant else None,
        "weights": featurizer.meta.get("weights_arg", "pretrained"),
        "threshold_distance": None if threshold is None or not np.isfinite(threshold) else float(threshold),
        "threshold_score": None if threshold is None or not np.isfinite(threshold)
        else float(score_of(threshold, featurizer.binary)),
        "score": featurizer.score_name, "calibration": calibration, "build_seconds": time.perf_counter() - started,
        "onnx_model": onnx_export,
    }
    write_json(folder / INFO_FILE, info)
    return info


def _save_onnx_export(folder, featurizer):
    """Save the ONNX export of the model (:mod:`dedup.onnx_model`) that lets ``query.py`` skip torch's import.

    Returns ``None`` for hashes, ``{"file": "model.onnx", "cosine": ..., ...}`` for an export that matches torch,
    ``{"file": None, "refused": reason}`` when the export failed or did not match (``query.py`` then uses torch).
    """
    from .onnx_model import MODEL_FILE, ExportRefused, export_model

    (folder / MODEL_FILE).unlink(missing_ok=True)  # a rebuild with another algorithm must not keep the old export
    if getattr(featurizer, "engine", None) != "torch":
        return None
    from extractor.transforms import Preprocessing

    try:
        return export_model(featurizer._model, Preprocessing.from_meta(featurizer.meta["preprocessing"]), folder)
    except ExportRefused as exc:
        logger.warning("no ONNX export of %s (query.py will import torch): %s", featurizer.name, exc)
        return {"file": None, "refused": str(exc)}


def append_to_index(folder, paths, featurizer=None, report=None, features=None, names=None):
    """Add images (or precomputed ``features`` named ``names``) to a saved index without rebuilding it.

    Images already in the index (same path) are skipped. Returns the number of rows added.
    """
    saved = SavedIndex(folder)
    try:
        return _append(saved, paths, featurizer, report, features, names)
    finally:
        saved.close()


def _append(saved, paths, featurizer, report, features, names):
    if features is None:
        featurizer = featurizer or saved.featurizer(engine="torch")
        known = set(saved.names)
        paths = [str(path) for path in paths if str(path) not in known]
        if not paths:
            return 0
        names, features = featurizer.files(paths, report)
    if len(names) == 0:
        return 0
    features = np.ascontiguousarray(features)
    dim = int(saved.info["dim"])
    expected = dim // 8 if saved.binary else dim
    if features.shape[1] != expected:
        raise ValueError(f"the new features have {features.shape[1]} columns, the index {expected}")
    before = saved.ntotal
    if saved.db is not None:
        saved.db.add(features, names)
    else:
        saved.index.add(features)
    part = _part_name(len(saved.info["parts"]))
    meta = read_json(Path(saved.folder) / saved.info["parts"][0] / "meta.json")
    save_features(saved.folder / part, features, names, meta, overwrite=True)
    if saved.db is None:
        write_faiss(saved.index, saved.folder / INDEX_FILE, saved.binary)
    after = saved.ntotal
    info = dict(saved.info)
    info["parts"] = list(info["parts"]) + [part]
    info["n"] = int(after)
    write_json(saved.folder / INFO_FILE, info)
    return int(after - before)


def query_index(saved, vectors, query_names, k=10):
    """Ranked neighbours of each query: a list of dicts (query, rank, neighbour, score, likely_copy)."""
    distances, ids = saved.search(vectors, min(int(k), saved.ntotal))
    names = saved.names
    rows = []
    for q, name in enumerate(query_names):
        for rank, (distance, row) in enumerate(zip(distances[q], ids[q]), 1):
            if row < 0:
                continue
            rows.append({"query": str(name), "rank": rank, "neighbour": names[row],
                         saved.info["score"]: float(score_of(distance, saved.binary)),
                         "likely_copy": bool(distance <= saved.threshold)})
    return rows
