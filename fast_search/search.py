"""The search experiment: a database (main dataset + optional distractors) and queries of one algorithm, read
from the feature store, searched with any index, timed and scored.

The seed's names are kept: :class:`Experiment` (``set_index``, ``train``, ``search``, ``recall``, ``fit``,
``get_neighbors_of_query``) and the experiment functions :func:`compare_metrics_Flat`, :func:`compare_k_Flat`,
:func:`compare_nprobe_IVF` (plus :func:`compare_efsearch_HNSW` and :func:`compare_indexes`). A run is one
(index, metric) pair; its key in ``results.json`` is the seed's ``"<factory>--<metric>"``.
"""
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers.datasets import resolve_store_dataset
from helpers.feature_store import FeatureStoreError, load_dataset_features
from helpers.ground_truth import copy_truth
from helpers.log import get_logger
from helpers.paths import FEATURES_DIR, REPO_ROOT
from helpers.results import write_json

from . import metrics as M
from .evaluate import search_resolving_ties, summarize_search
from .index import (CROP_RESISTANT, check_metric, choose_backend, crop_resistant_distance_fn, make_index,
                    prepare_vectors, to_binary_factory)

logger = get_logger(__name__)

# which prepared copy of the vectors each metric searches with
_PREPARATION = {"L2": "float32", "L1": "float32", "cosine": "l2-normalised", "JS": "l1-normalised",
                "hamming": "bits", CROP_RESISTANT: "bits"}


def default_nlist(n):
    """The seed's ``nlist = 10 * sqrt(n)`` (7071 for 500K), capped so each list gets 39 training points."""
    return int(max(1, min(10 * math.sqrt(n), n // 39)))


def threads():
    """Number of threads FAISS (OpenMP) uses."""
    import faiss

    return int(faiss.omp_get_max_threads())


def _torch_threads():
    import torch

    return int(torch.get_num_threads())


class Experiment:
    """Features of one algorithm (database and queries) with the current index.

    Parameters
    ----------
    algorithm : str
        Display name of the feature extractor (``"SimCLR v2 ResNet50 2x"``, ``"Dhash 64 bits"``).
    main_dataset, query_dataset : str
        Registered dataset names (``BSDS500_original``, ``BSDS500_attacks``...) or folders, as given to
        ``extract_features.py --dataset``.
    distractor_dataset : str, optional
        Added to the database after the main dataset (``Flickr500K``); its images are never a query's original.
    ground_truth : path, optional
        The ground-truth file (default: ``ground_truth.csv`` in the query folder; see :mod:`helpers.ground_truth`).
    score_norm_dataset : str, optional
        Background dataset of SSCD's score normalisation (µAP-SN): each query's pair distances are lowered by
        ``score_norm_beta`` times its distance to its ``score_norm_k``-th nearest background image.
    features_root : path
        Root of the feature store (default ``Features/``).
    device : str or torch.device
        ``cpu``, ``cuda``... (see :func:`fast_search.index.choose_backend` for what runs where).
    backend : str
        ``auto``, ``faiss`` or ``torch``.
    batch_size : int, optional
        Queries per search batch.
    train_size : int, optional
        Train IVF/PQ indexes on at most this many database rows.
    seed : int
        Seed of the random draw of those ``train_size`` rows.
    """

    def __init__(self, algorithm, main_dataset, query_dataset, distractor_dataset=None, features_root=FEATURES_DIR,
                 device="cpu", backend="auto", batch_size=None, train_size=None, ground_truth=None,
                 score_norm_dataset=None, score_norm_k=1, score_norm_beta=1.0, seed=0):
        import torch

        self.algorithm = algorithm
        self.main_dataset, self.query_dataset = main_dataset, query_dataset
        self.distractor_dataset = distractor_dataset or None
        self.device = torch.device(device)
        self.backend = backend
        self.batch_size = batch_size
        self.train_size = train_size
        self.seed = int(seed)
        main = resolve_store_dataset(main_dataset)
        query = resolve_store_dataset(query_dataset)
        distractor = resolve_store_dataset(self.distractor_dataset) if self.distractor_dataset else None
        parts = [load_dataset_features(main, algorithm, root=features_root)]
        if distractor is not None:
            parts.append(load_dataset_features(distractor, algorithm, root=features_root))
        self.queries = load_dataset_features(query, algorithm, root=features_root)
        for other in parts[1:] + [self.queries]:
            # the compatibility rule of helpers.feature_store.combine_features, checked without concatenating
            if other.binary != parts[0].binary or other.features.shape[1] != parts[0].features.shape[1]:
                raise FeatureStoreError(f"features of {algorithm!r} disagree between datasets: "
                                        f"{parts[0].features.shape} vs {other.features.shape} (binary "
                                        f"{parts[0].binary} vs {other.binary}); re-extract them")
        self._db_parts = [part.features for part in parts]
        self.meta = dict(parts[0].meta)
        self.binary = parts[0].binary
        self.matching = self.meta.get("matching")
        self.d = parts[0].dim
        self.db_names = [name for part in parts for name in part.names]
        self.query_names = list(self.queries.names)
        truth = copy_truth(main, query, parts[0].names, self.queries.names, distractor=distractor,
                           distractor_names=parts[1].names if distractor is not None else (),
                           ground_truth=ground_truth)
        self.ground_truth_source = truth.source
        self.identifiers_db, self.identifiers_query = truth.db_identities, truth.query_identities
        self.query_attacks = truth.query_attacks
        self.has_original = M.has_original(self.identifiers_db, self.identifiers_query)
        if not self.has_original.any():
            logger.warning("no query of %s has its original in the database (ground truth: %s): recall is "
                           "undefined; check the datasets", query_dataset, truth.source)
        self.score_norm = None
        if score_norm_dataset:
            background = load_dataset_features(resolve_store_dataset(score_norm_dataset), algorithm,
                                               root=features_root)
            if background.binary != self.binary or background.features.shape[1] != parts[0].features.shape[1]:
                raise FeatureStoreError(f"the score-normalisation features of {algorithm!r} ({score_norm_dataset}) "
                                        "do not match the database's; re-extract them")
            if not 1 <= int(score_norm_k) <= len(background):
                raise ValueError(f"--score-norm-k must be between 1 and the background size ({len(background)})")
            self.score_norm = {"dataset": score_norm_dataset, "k": int(score_norm_k), "beta": float(score_norm_beta),
                               "features": background.features}
        self._score_offsets = {}
        self._prepared = (None, None, None)
        self.index = None
        self.factory_str = self.metric = self.experiment_name = None
        self.k = 1
        self.D = self.I = None
        self.time_training = self.train_time = self.add_time = self.time_searching = None
        self.search_times = []

    # -- description ------------------------------------------------------------------------------------------
    @property
    def n(self):
        return len(self.db_names)

    @property
    def nq(self):
        return len(self.query_names)

    def default_metrics(self):
        """The metrics searched when none are given: hamming (or crop-resistant) for hashes, else L2 and cosine."""
        if self.binary:
            return [CROP_RESISTANT if self.matching == CROP_RESISTANT else "hamming"]
        return ["L2", "cosine"]

    def resolve_metrics(self, metrics):
        """``metrics`` as they apply to these features: float metrics become the hash metric for binary
        features (the seed's rule), with a log line; a binary metric on float features is an error."""
        if not metrics:
            return self.default_metrics()
        if self.binary:
            own = self.default_metrics()
            if any(metric not in own for metric in metrics):
                logger.info("%s gives binary hashes: searched with %s (not %s)", self.algorithm, own[0],
                            ", ".join(metric for metric in metrics if metric not in own))
            return own
        for metric in metrics:
            check_metric(metric, binary=False)
        return list(dict.fromkeys(metrics))

    def factory_for(self, factory):
        """The factory string as it applies to these features (``Flat`` -> ``BFlat`` for hashes)."""
        return to_binary_factory(factory) if self.binary else factory

    def describe(self):
        """What every result records about the data."""
        return {"algorithm": self.algorithm, "slug": self.meta.get("slug"), "binary": self.binary,
                "matching": self.matching, "weights": self.meta.get("weights"),
                "weights_sha256": self.meta.get("weights_sha256"),
                "preprocessing": (self.meta.get("preprocessing") or {}).get("description")
                if isinstance(self.meta.get("preprocessing"), dict) else self.meta.get("preprocessing"),
                "n": self.n, "d": self.d, "nq": self.nq,
                "n_queries_with_original": int(self.has_original.sum()),
                "n_negative_queries": int((~self.has_original).sum()),
                "ground_truth": self.ground_truth_source,
                "score_norm": None if self.score_norm is None else
                {key: value for key, value in self.score_norm.items() if key != "features"},
                "main_dataset": self.main_dataset, "query_dataset": self.query_dataset,
                "distractor_dataset": self.distractor_dataset}

    # -- vectors ----------------------------------------------------------------------------------------------
    def check_non_negative(self, chunk=65536):
        """Raise ``ValueError`` unless every feature is >= 0 (the JS metric needs it); one pass over the data."""
        for label, array in [("database", part) for part in self._db_parts] + [("queries", self.queries.features)]:
            for start in range(0, array.shape[0], chunk):
                if (np.asarray(array[start:start + chunk]) < 0).any():
                    raise ValueError(f"the JS (Jensen-Shannon) metric needs non-negative features; the {label} "
                                     f"features of {self.algorithm!r} have negative values (use L2, L1 or cosine)")

    def prepared(self, metric):
        """``(database, queries)`` prepared for ``metric``; one preparation is cached at a time (memory)."""
        kind = _PREPARATION[metric]
        if self._prepared[0] != kind:
            self._prepared = (None, None, None)  # free the previous copy first
            db = prepare_vectors(self._db_parts, metric)
            queries = prepare_vectors(self.queries.features, metric)
            self._prepared = (kind, db, queries)
        return self._prepared[1], self._prepared[2]

    def distance_fn(self, metric):
        """The crop-resistant matching rule with this store's segment size (``None`` for the other metrics)."""
        if metric != CROP_RESISTANT:
            return None
        return crop_resistant_distance_fn(self.meta.get("segment_bits", 64), self.meta.get("hamming_cutoff"))

    # -- the seed's interface ---------------------------------------------------------------------------------
    def set_index(self, factory_str, metric="cosine"):
        """Replace the current index by a new, empty one (the data stays loaded)."""
        if self.index is not None:
            self.index.close()
            self.index = None
        metric = self.resolve_metrics([metric])[0]
        factory_str = self.factory_for(factory_str)
        self.index = make_index(factory_str, metric, self.d, binary=self.binary, device=self.device,
                                backend=self.backend, batch_size=self.batch_size, train_size=self.train_size,
                                seed=self.seed, distance_fn=self.distance_fn(metric))
        self.factory_str, self.metric = self.index.factory, metric
        self.experiment_name = f"{self.factory_str}--{self.metric}"
        self.D = self.I = None

    def to_gpu(self):
        """Kept for the seed's scripts: the device is chosen when the index is built (``device=``)."""

    def train(self):
        """Train the index and add the database; times both (vector preparation is not timed, as in the seed)."""
        self._require_index()
        db, _ = self.prepared(self.metric)
        start = time.perf_counter()
        self.index.train(db)
        middle = time.perf_counter()
        self.index.add(db)
        end = time.perf_counter()
        self.train_time, self.add_time = middle - start, end - middle
        self.time_training = end - start

    def search(self, k=None, probe=None, efsearch=None, repeats=1):
        """Search all queries (in batches) for their ``k`` nearest neighbours; ``self.time_searching`` is the best
        of ``repeats`` timed searches (``self.search_times`` has them all)."""
        self._require_index()
        if self.index.ntotal == 0:
            self.train()
        if k is not None:
            self.k = int(k)
        self.index.set_search_params(nprobe=probe, efsearch=efsearch)
        _, queries = self.prepared(self.metric)
        self.search_times = []
        for _ in range(max(1, int(repeats))):
            start = time.perf_counter()
            self.D, self.I = self.index.search(queries, self.k)
            self.search_times.append(time.perf_counter() - start)
        self.time_searching = min(self.search_times)
        # untimed: enough neighbours to see the whole tie group at the k-th distance (tie-aware metrics)
        self.D, self.I = search_resolving_ties(self.index.search, queries, self.k, self.n)

    def recall(self, k=None):
        """``(recall@k, hits)`` of the last search, pessimistic about ties (see
        :func:`fast_search.metrics.tie_aware_hits`)."""
        if self.I is None:
            raise AttributeError("Please call `search` before asking for recall")
        hits = M.tie_aware_hits(self.D, self.I, self.identifiers_db, self.identifiers_query,
                                self.k if k is None else k, self.n)[0]
        recall = float(hits[self.has_original].mean()) if self.has_original.any() else float("nan")
        return recall, hits

    def score_offsets(self):
        """Each query's score-normalisation offset: ``beta`` times its distance to its ``k``-th nearest
        background image under the current metric (None without ``score_norm_dataset``)."""
        if self.score_norm is None:
            return None
        key = self.metric
        if key not in self._score_offsets:
            background = prepare_vectors(self.score_norm["features"], self.metric)
            _, queries = self.prepared(self.metric)
            index = make_index(self.factory_for("Flat"), self.metric, self.d, binary=self.binary, device=self.device,
                               backend=self.backend, batch_size=self.batch_size,
                               distance_fn=self.distance_fn(self.metric))
            index.add(background)
            distances, _ = index.search(queries, self.score_norm["k"])
            index.close()
            self._score_offsets[key] = self.score_norm["beta"] * np.asarray(distances, dtype=np.float64)[:, -1]
        return self._score_offsets[key]

    def evaluate(self, ks=None):
        """All quality numbers of the last search (see :func:`fast_search.evaluate.summarize_search`)."""
        if self.I is None:
            raise AttributeError("Please call `search` before evaluating")
        return summarize_search(self.D, self.I, self.identifiers_db, self.identifiers_query, self.query_attacks,
                                ks or [self.k], n_database=self.n, score_offsets=self.score_offsets())

    def fit(self, k, probe=None):
        """Train, search and score in one call (the seed's ``fit``): ``k`` or ``probe`` may be a list."""
        if isinstance(k, list) and isinstance(probe, list):
            raise ValueError("Cannot set both k and probe to lists.")
        self.train()
        points = [(value, probe) for value in k] if isinstance(k, list) else \
            [(k, value) for value in probe] if isinstance(probe, list) else [(k, probe)]
        recall, times = [], []
        for k_, probe_ in points:
            self.search(k=k_, probe=probe_)
            recall.append(self.recall()[0])
            times.append(self.time_searching)
        single = len(points) == 1 and not isinstance(k, list) and not isinstance(probe, list)
        result = {"recall": recall[0] if single else recall, "training_time": self.time_training,
                  "searching_time": times[0] if single else times, "k": k}
        if probe is not None:
            result["nprobe"] = probe
        return result

    def neighbor_paths(self, query_index):
        """Image paths of a query, its neighbours (last search) and its targets (database rows of its identity)."""
        if self.I is None:
            raise AttributeError("Please call `search` before asking for neighbours")
        ident = self.identifiers_query[query_index]
        targets = [self.db_names[i] for i, other in enumerate(self.identifiers_db) if other == ident]
        neighbors = [self.db_names[i] for i in self.I[query_index] if i >= 0][:self.k]
        return self.query_names[query_index], neighbors, targets

    def get_neighbors_of_query(self, query_index, target=True):
        """The seed's function: ``(query, neighbours[, target])`` as PIL images (target None when absent)."""
        from helpers.image_io import load_image

        query, neighbors, targets = self.neighbor_paths(query_index)
        images = (load_image(resolve_image_path(query)), [load_image(resolve_image_path(p)) for p in neighbors])
        if target:
            return images + ((load_image(resolve_image_path(targets[0])) if targets else None),)
        return images

    def close(self):
        if self.index is not None:
            self.index.close()
        self.index = None
        self._prepared = (None, None, None)

    def _require_index(self):
        if self.index is None:
            raise AttributeError("Please call `set_index` first")


def resolve_image_path(name):
    """An image path from ``names.txt``: absolute, or relative to the repository root."""
    path = Path(name)
    return path if path.is_absolute() else REPO_ROOT / path


# -- runs: one (index, metric) with a list of search points ------------------------------------------------------
@dataclass
class RunSpec:
    """One run of an experiment: an index and a metric searched at several points (k, nprobe or efSearch)."""

    factory: str
    metric: str
    sweep: str  # "k", "nprobe" or "efsearch": the parameter that varies
    points: list = field(default_factory=list)  # dicts with k, nprobe, efsearch

    @property
    def key(self):
        return f"{self.factory}--{self.metric}"


def _points(sweep, values, k):
    if sweep == "k":
        return [{"k": int(v), "nprobe": None, "efsearch": None} for v in values]
    return [{"k": int(k), "nprobe": int(v) if sweep == "nprobe" else None,
             "efsearch": int(v) if sweep == "efsearch" else None} for v in values]


def plan_runs(experiment, kind, metrics=None, ks=None, nprobes=None, efsearch=None, indexes=None):
    """The runs of an experiment ``kind`` for one algorithm (grouped by metric, so each vector preparation is
    made once).

    ``metrics``: Flat for each metric at each k. ``k``: the same with the seed's k sweep defaults.
    ``nprobe``: Flat and an IVF index (``indexes[0]``, default ``IVF{10*sqrt(n)},Flat``) over ``nprobes`` at
    ``ks[0]``. ``efsearch``: Flat and an HNSW index (default ``HNSW32``) over ``efsearch`` at ``ks[0]``.
    ``index``: each factory of ``indexes``; IVF ones sweep ``nprobes`` and HNSW ones ``efsearch`` when given,
    others sweep ``ks``.
    """
    defaults = {"metrics": ["L2", "L1", "cosine"], "k": ["L2", "cosine"]}
    metrics = experiment.resolve_metrics(metrics or defaults.get(kind, ["L2", "cosine"]))
    flat = experiment.factory_for("Flat")
    if kind in ("metrics", "k"):
        ks = ks or ([1] if kind == "metrics" else [1, 2, 3, 4, 5, 10, 20])
        specs = [RunSpec(flat, metric, "k", _points("k", ks, None)) for metric in metrics]
    elif kind == "nprobe":
        ks = ks or [1]
        factory = experiment.factory_for(indexes[0] if indexes else f"IVF{default_nlist(experiment.n)},Flat")
        nprobes = nprobes or [1, 5, 10, 20, 50, 100, 200]
        specs = []
        for metric in metrics:
            specs += [RunSpec(flat, metric, "k", _points("k", ks[:1], None)),
                      RunSpec(factory, metric, "nprobe", _points("nprobe", nprobes, ks[0]))]
    elif kind == "efsearch":
        ks = ks or [1]
        factory = experiment.factory_for(indexes[0] if indexes else "HNSW32")
        efsearch = efsearch or [16, 32, 64, 128, 256]
        specs = []
        for metric in metrics:
            specs += [RunSpec(flat, metric, "k", _points("k", ks[:1], None)),
                      RunSpec(factory, metric, "efsearch", _points("efsearch", efsearch, ks[0]))]
    elif kind == "index":
        if not indexes:
            raise ValueError("--experiment index needs --index FACTORY [FACTORY ...]")
        ks = ks or [1]
        specs = []
        for metric in metrics:
            for raw in indexes:
                factory = experiment.factory_for(raw)
                family = factory.lstrip("B")
                if family.startswith("IVF") and nprobes:
                    specs.append(RunSpec(factory, metric, "nprobe", _points("nprobe", nprobes, ks[0])))
                elif family.startswith("HNSW") and efsearch:
                    specs.append(RunSpec(factory, metric, "efsearch", _points("efsearch", efsearch, ks[0])))
                else:
                    specs.append(RunSpec(factory, metric, "k", _points("k", ks, None)))
    else:
        raise ValueError(f"unknown experiment {kind!r}; expected metrics, k, nprobe, efsearch or index")
    for spec in specs:  # fail before any work on a combination that cannot run
        choose_backend(experiment.backend, experiment.device, spec.factory, spec.metric, experiment.binary)
    if any(spec.metric == "JS" for spec in specs):
        experiment.check_non_negative()
    unique = {}
    for spec in specs:
        unique.setdefault(spec.key, spec)
    return list(unique.values())


def _exact_ids(experiment, metric, k, cache):
    """Flat neighbours for the ANN recall of an approximate run (searched once per metric and k, untimed)."""
    key = (metric, k)
    if key not in cache:
        bigger = [(m, kk) for (m, kk) in cache if m == metric and kk >= k]
        if bigger:
            cache[key] = cache[bigger[0]][:, :k]
        else:
            index = make_index(experiment.factory_for("Flat"), metric, experiment.d, binary=experiment.binary,
                               device=experiment.device, backend=experiment.backend,
                               batch_size=experiment.batch_size, distance_fn=experiment.distance_fn(metric))
            db, queries = experiment.prepared(metric)
            index.add(db)
            cache[key] = index.search(queries, k)[1]
            index.close()
    return cache[key]


def execute_run(experiment, spec, repeats=1, exact_cache=None):
    """Build, train and search one run; return its record (the seed's keys plus ``points`` with every number).

    The record holds ``factory``, ``metric``, ``backend``, ``device``, ``threads``, ``n``, ``d``, ``nq``,
    ``train_time``, ``add_time`` and the seed's ``training_time`` (their sum), ``sweep``, and per point: ``k``,
    ``nprobe``, ``efsearch``, ``search_time`` (best of ``repeats``), ``search_times``, ``qps``, the quality numbers
    of :func:`fast_search.evaluate.summarize_search` and, for approximate indexes, ``ann_recall`` against Flat.
    The seed's ``recall`` (recall@k), ``searching_time`` and ``k``/``nprobe`` are scalars for a single point and
    lists for a sweep.
    """
    from helpers.device import device_description

    exact_cache = {} if exact_cache is None else exact_cache
    experiment.set_index(spec.factory, spec.metric)
    index = experiment.index
    logger.info("%s: %s on %s (%s), n=%d d=%d nq=%d", experiment.algorithm, spec.key, experiment.device,
                index.backend, experiment.n, experiment.d, experiment.nq)
    experiment.train()
    record = {"factory": spec.factory, "metric": spec.metric, "backend": index.backend,
              "device": str(experiment.device), "device_name": device_description(experiment.device),
              "threads": threads(), "torch_threads": _torch_threads(), "n": experiment.n, "d": experiment.d, "nq": experiment.nq,
              "batch_size": index.batch_size, "train_size": experiment.train_size, "repeats": int(repeats),
              "train_time": experiment.train_time,
              "add_time": experiment.add_time, "training_time": experiment.time_training, "sweep": spec.sweep,
              "points": []}
    for point in spec.points:
        experiment.search(k=point["k"], probe=point["nprobe"], efsearch=point["efsearch"], repeats=repeats)
        if index.is_exact:
            exact_cache.setdefault((spec.metric, point["k"]), experiment.I)
        quality = experiment.evaluate([point["k"]])
        if getattr(experiment, "neighbors_dir", None) is not None:
            _save_neighbors(experiment, spec, point)
        entry = dict(point, search_time=experiment.time_searching, search_times=experiment.search_times,
                     qps=experiment.nq / experiment.time_searching if experiment.time_searching > 0 else None)
        entry.update(quality)
        if not index.is_exact:
            entry["ann_recall"] = M.ann_recall(experiment.I, _exact_ids(experiment, spec.metric, point["k"],
                                                                        exact_cache), point["k"])
        record["points"].append(entry)
        logger.info("  %s k=%s nprobe=%s efSearch=%s: recall@%d %.4f in %.3f s (%.0f queries/s)", spec.key,
                    point["k"], point["nprobe"], point["efsearch"], point["k"], entry[f"recall@{point['k']}"],
                    entry["search_time"], entry["qps"] or 0)
    points = record["points"]
    single = len(points) == 1
    record["recall"] = points[0][f"recall@{points[0]['k']}"] if single else [p[f"recall@{p['k']}"] for p in points]
    record["searching_time"] = points[0]["search_time"] if single else [p["search_time"] for p in points]
    record["k"] = points[0]["k"] if single or spec.sweep != "k" else [p["k"] for p in points]
    if spec.sweep in ("nprobe", "efsearch"):
        record[spec.sweep] = [p[spec.sweep] for p in points]
    experiment.index.close()
    experiment.index = None
    return record


def _save_neighbors(experiment, spec, point):
    """Write the last search's neighbours to ``<neighbors_dir>/<algorithm>--<run key>--k<k>[...].csv.gz``."""
    from helpers.paths import slugify

    from .neighbor_table import write_neighbor_table

    extra = "".join(f"-{name}{point[name]}" for name in ("nprobe", "efsearch") if point.get(name) is not None)
    stem = slugify(f"{experiment.algorithm}--{spec.factory}--{spec.metric}--k{point['k']}{extra}")
    write_neighbor_table(experiment.neighbors_dir / f"{stem}.csv.gz", experiment.query_names, experiment.db_names,
                         experiment.D, experiment.I, experiment.identifiers_db, experiment.identifiers_query,
                         k=point["k"])


def run_plan(experiment, specs, repeats=1, done=None, on_run=None):
    """Execute ``specs`` in order, skipping the keys already in ``done`` (a resumed experiment); ``on_run(key,
    record)`` is called after each run (to save progress). Returns ``{key: record}``."""
    runs = dict(done or {})
    exact_cache = {}
    for spec in specs:
        if spec.key in runs:
            logger.info("%s: %s already done (resumed)", experiment.algorithm, spec.key)
            continue
        runs[spec.key] = execute_run(experiment, spec, repeats=repeats, exact_cache=exact_cache)
        if on_run is not None:
            on_run(spec.key, runs[spec.key])
    return runs


def _run_and_save(kind, algorithm, main_dataset, query_dataset, distractor_dataset, filename, repeats=1,
                  features_root=FEATURES_DIR, device="cpu", backend="auto", **plan):
    experiment = Experiment(algorithm, main_dataset, query_dataset, distractor_dataset, features_root=features_root,
                            device=device, backend=backend)
    try:
        runs = run_plan(experiment, plan_runs(experiment, kind, **plan), repeats=repeats)
    finally:
        experiment.close()
    if filename is not None:
        write_json(filename, runs)
    return runs


def compare_metrics_Flat(metrics, algorithm, main_dataset, query_dataset, distractor_dataset, filename, k=1,
                         **options):
    """Compare metrics with a Flat (brute-force) index at one ``k`` (the seed's function).

    Writes ``{"<factory>--<metric>": run record}`` (see :func:`execute_run`) to ``filename`` when given and
    returns it. ``options``: ``features_root``, ``device``, ``backend``, ``repeats``.
    """
    return _run_and_save("metrics", algorithm, main_dataset, query_dataset, distractor_dataset, filename,
                         metrics=metrics, ks=[k], **options)


def compare_k_Flat(ks, algorithm, main_dataset, query_dataset, distractor_dataset, filename, metrics=None,
                   **options):
    """Sweep k with a Flat index, for L2 and cosine (hamming for hashes) by default (the seed's function)."""
    return _run_and_save("k", algorithm, main_dataset, query_dataset, distractor_dataset, filename,
                         metrics=metrics, ks=list(ks), **options)


def compare_nprobe_IVF(nlist, nprobes, algorithm, main_dataset, query_dataset, distractor_dataset, filename, k=1,
                       metrics=None, **options):
    """IVF with ``nlist`` lists over ``nprobes`` against Flat, for L2 and cosine by default (the seed's
    function)."""
    if max(nprobes) > nlist:
        raise ValueError(f"nprobe values must not exceed nlist={nlist}")
    return _run_and_save("nprobe", algorithm, main_dataset, query_dataset, distractor_dataset, filename,
                         metrics=metrics, ks=[k], nprobes=list(nprobes), indexes=[f"IVF{nlist},Flat"], **options)


def compare_efsearch_HNSW(efsearch, algorithm, main_dataset, query_dataset, distractor_dataset, filename, k=1,
                          links=32, metrics=None, **options):
    """HNSW (``links`` neighbours per node, FAISS's M) over ``efsearch`` values against Flat."""
    return _run_and_save("efsearch", algorithm, main_dataset, query_dataset, distractor_dataset, filename,
                         metrics=metrics, ks=[k], efsearch=list(efsearch), indexes=[f"HNSW{links}"], **options)


def compare_indexes(factories, algorithm, main_dataset, query_dataset, distractor_dataset, filename, ks=(1,),
                    metrics=None, **options):
    """Any FAISS factory strings side by side (``Flat``, ``IVF4096,Flat``, ``HNSW32``, ``IVF4096,PQ64``...)."""
    return _run_and_save("index", algorithm, main_dataset, query_dataset, distractor_dataset, filename,
                         metrics=metrics, ks=list(ks), indexes=list(factories), **options)

