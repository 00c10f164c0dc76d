"""The flow shared by ``hierarchical.py``, ``DBSCAN.py`` and ``kmeans.py``, and their common flags.

load the features of the partition -> resolve the metric -> open the experiment folder (refusing a finished one
without ``--force``, resuming an unfinished one) -> one run per parameter value (``assignment.npy`` +
``scores.json``; finished runs are skipped on resume) -> with ``--save True`` statistics, plots, montages and the
HTML summary -> ``results.json`` and the experiment record marked finished.
"""
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers.cli import add_common_arguments, add_max_pixels_argument, resolved_config, str2bool
from helpers.experiment import start_experiment
from helpers.log import get_logger, setup_logging
from helpers.paths import CLUSTERING_DIR, FEATURES_DIR
from helpers.results import write_json
from helpers.seeding import seed_everything

from . import layout, report
from .data import (CLEAN_EXCLUDED_TEMPLATES, DEFAULT_ALGORITHM, DEFAULT_DATASET, PARTITIONS,
                   load_clustering_data)
from .distances import FeatureSpace
from .metrics import OUTLIER_MODES, external_scores

logger = get_logger(__name__)


def add_clustering_arguments(parser, metric_default="euclidean"):
    """Flags every clustering script shares (data, metric, outputs), plus the toolkit's common flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--algo", nargs="+", default=DEFAULT_ALGORITHM.split(),
                      help="algorithm whose features are clustered; words are joined with spaces, e.g. "
                           "--algo Dhash 64 bits (default: %(default)s)")
    data.add_argument("--dataset", default=DEFAULT_DATASET,
                      help="dataset name in the feature store (registered name or folder; default: %(default)s, "
                           "the Kaggle memes + templates)")
    data.add_argument("--partition", default="full", choices=PARTITIONS,
                      help="full: every image; clean: without the templates of --exclude-templates "
                           "(default: %(default)s)")
    data.add_argument("--exclude-templates", nargs="*", default=list(CLEAN_EXCLUDED_TEMPLATES), metavar="TEMPLATE",
                      help="templates dropped by --partition clean (default: the seed's list: %(default)s)")
    data.add_argument("--features-root", default=str(FEATURES_DIR),
                      help="root of the feature store (default: Features/ of the repository)")
    data.add_argument("--metric", default=metric_default, choices=["euclidean", "cosine", "hamming"],
                      help="distance between features; binary hashes always use hamming, the fraction of "
                           "differing bits (default: %(default)s)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--results-dir", default=str(CLUSTERING_DIR),
                     help="root of the results tree (default: Clustering_results/ of the repository)")
    out.add_argument("--save", type=str2bool, default=False, metavar="True|False",
                     help="also save cluster statistics, the plots, montages per cluster and summary.html "
                          "(default: %(default)s)")
    out.add_argument("--montages", type=int, default=100, metavar="N",
                     help="with --save True: montages of the N largest clusters of each run; -1 = every cluster, "
                          "0 = none (default: %(default)s)")
    out.add_argument("--tsne", type=str2bool, default=False, metavar="True|False",
                     help="with --save True: t-SNE map of up to 5,000 images coloured by ground truth and by "
                          "prediction, per run (default: %(default)s)")
    out.add_argument("--diameter-quantile", type=float, default=1.0, metavar="Q",
                     help="cluster diameter = this quantile of the pairwise distances (1 = the largest; "
                          "default: %(default)s)")
    out.add_argument("--outliers", default="singletons", choices=OUTLIER_MODES,
                     help="how outliers (-1) enter the scores: each its own cluster, all in one cluster (the "
                          "seed), or left out (default: %(default)s)")
    add_max_pixels_argument(out)  # montages of --save decode the images
    add_common_arguments(parser)
    return parser


def values_or_auto(values, kind, flag):
    """Parse a flag taking numbers of type ``kind`` (all positive) or the single word ``auto``.

    Returns ``None`` when the flag was not given, ``'auto'``, or the list of values.
    """
    if values is None:
        return None
    if len(values) == 1 and str(values[0]).lower() == "auto":
        return "auto"
    try:
        parsed = [kind(v) for v in values]
    except ValueError:
        raise ValueError(f"{flag} takes {kind.__name__} values or 'auto', got {' '.join(map(str, values))}") \
            from None
    if any(v <= 0 for v in parsed):
        raise ValueError(f"{flag} values must be positive")
    return parsed


@dataclass
class Setup:
    """Everything a clustering script needs once the data is loaded and the experiment folder is open."""

    args: object
    data: object
    space: FeatureSpace
    exp_dir: Path
    experiment: object
    method: str
    started: float = field(default_factory=time.perf_counter)
    failures: list = field(default_factory=list)
    tsne: object = None

    @property
    def metric(self):
        return self.space.metric


def algorithm_name(args):
    return " ".join(args.algo) if isinstance(args.algo, (list, tuple)) else str(args.algo)


def load(args):
    """Load the data of ``args`` and build its feature space (metric resolved)."""
    data = load_clustering_data(args.dataset, algorithm_name(args), args.partition,
                                features_root=args.features_root, exclude_templates=args.exclude_templates)
    space = FeatureSpace(data.features, args.metric, nbits=data.dim if data.binary else None)
    logger.info("%s / %s (%s partition): %d images, %d templates, %s%s", data.dataset, data.algorithm,
                data.partition, len(data), data.n_classes, space.metric,
                " (binary hash)" if data.binary else "")
    return data, space


def open_experiment(args, data, space, method):
    """Resolve the experiment folder of ``method`` and open it (refused when finished, unless ``--force``)."""
    exp_dir = layout.experiment_dir(args.results_dir, data.dataset, data.partition, space.metric, method,
                                    data.algorithm_slug)
    experiment = start_experiment(exp_dir, resolved_config(args), force=args.force)
    return exp_dir, experiment


def setup(args, method, check=None):
    """Logging, seeding, data, checks and the experiment folder.

    ``method`` is the method's name in the folder name, or a function of the feature space returning it;
    ``check(space)`` may raise (e.g. ward with cosine) before anything is written.
    """
    setup_logging(args.log_level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    seed_everything(args.seed)
    data, space = load(args)
    if check is not None:
        check(space)
    method = method(space) if callable(method) else method
    exp_dir, experiment = open_experiment(args, data, space, method)
    return Setup(args=args, data=data, space=space, exp_dir=exp_dir, experiment=experiment, method=method)


def finished_run(st, pattern):
    """Scores of a finished run matching ``pattern`` (resume), or ``None``."""
    path = layout.find_run(st.exp_dir, pattern)
    if path is None:
        return None
    logger.info("run %s already finished; kept", path.name)
    return layout.load_scores(path)


def record_run(st, run_name, labels, params):
    """Save a run: assignment, scores against the ground truth and, with ``--save``, statistics and plots."""
    run_dir = st.exp_dir / run_name
    labels = np.asarray(labels, dtype=np.int64)
    layout.save_assignment(run_dir, labels)
    scores = external_scores(st.data.labels_true, labels, outliers=st.args.outliers)
    scores.update({"run": run_name, "method": st.method, "metric": st.metric})
    scores.update(params)
    if st.args.save:
        if st.args.tsne and st.tsne is None:
            st.tsne = report.tsne_coordinates(st.exp_dir, st.space, seed=st.args.seed)
        title = f"{st.data.algorithm}, {st.method}, {run_name}"
        scores.update(report.run_outputs(run_dir, st.data, st.space, labels, title,
                                         max_montages=st.args.montages, tsne=st.tsne if st.args.tsne else None,
                                         seed=st.args.seed, quantile=st.args.diameter_quantile,
                                         max_pixels=st.args.max_pixels))
    layout.save_scores(run_dir, scores)
    logger.info("%s: %d clusters, %d outliers, v-measure %.4f, ARI %.4f", run_name, scores["n_clusters"],
                scores["n_outliers"], scores["v_measure"] or 0.0, scores["ari"] or 0.0)
    return scores


def finalize(st, runs, extra=None, extra_plots=()):
    """Experiment-level outputs, ``results.json`` and the record marked finished; returns the results dict.

    Raises ``ValueError`` (nothing marked finished, so the next valid request needs no ``--force``) when every
    requested run was impossible.
    """
    if not runs and st.failures:
        shown = " ".join("; ".join(f"{request}: {error}" for request, error in st.failures[:3]).split())
        raise ValueError(f"none of the {len(st.failures)} requested run(s) could be made ({shown}); "
                         f"{st.exp_dir} is not marked finished")
    if st.args.save:
        report.experiment_outputs(st.exp_dir, st.data, st.space, quantile=st.args.diameter_quantile)
    results = {
        "method": st.method, "algorithm": st.data.algorithm, "dataset": st.data.dataset,
        "partition": st.data.partition, "excluded": st.data.excluded, "metric": st.metric,
        "n_images": len(st.data), "n_classes": st.data.n_classes, "binary": st.data.binary,
        "runs": runs, "failures": [{"request": r, "error": e} for r, e in st.failures],
        "seconds": time.perf_counter() - st.started,
    }
    results.update(extra or {})
    write_json(st.exp_dir / "results.json", results)
    if st.args.save:
        report.write_summary(st.exp_dir, st.data, st.metric, st.method, extra_plots=extra_plots)
    best = max((r for r in runs if r.get("v_measure") is not None), key=lambda r: r["v_measure"], default=None)
    st.experiment.finish(n_runs=len(runs), best_v_measure=None if best is None else best["v_measure"],
                         best_run=None if best is None else best["run"])
    print_table(st, runs)
    return results


def print_table(st, runs):
    """Print the scores of every run (one line each)."""
    print(f"\n{st.method} / {st.data.algorithm} / {st.data.dataset} ({st.data.partition}, {len(st.data)} images, "
          f"{st.data.n_classes} templates, {st.metric}) -> {st.exp_dir}")
    print(f"{'run':<44} {'clusters':>8} {'outl.':>6} {'h':>6} {'c':>6} {'V':>6} {'ARI':>6} {'AMI':>6} {'acc':>6}")
    for r in runs:
        values = " ".join("     -" if r.get(key) is None else f"{r[key]:>6.3f}"
                          for key in ("homogeneity", "completeness", "v_measure", "ari", "ami", "accuracy"))
        print(f"{r['run']:<44} {r['n_clusters']:>8} {r['n_outliers']:>6} {values}")
    for request, error in st.failures:
        print(f"not done: {request}: {error}")


# Expected failures of the clustering scripts besides helpers.cli.run_cli's usual ones: too many pairs within eps
# for memory (clustering.distances.radius_graph) ends as one error line that says which flag to change.
CLI_ERRORS = (MemoryError,)


def device_of(args):
    """The ``--device`` value resolved (only the kNN graph uses it, through FAISS on GPU when available)."""
    from helpers.device import resolve_device

    return resolve_device(args.device)
