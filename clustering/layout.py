"""Where clustering results go, and the files of one run.

Layout (the seed's, with the dataset added for datasets other than the default ``all_memes``)::

    Clustering_results/<partition>/<metric>_<method>_<algo-slug>/          one experiment (config.yml, experiment.yml,
        linkage.npy, dendrogram.png, results.json, summary.html, plots)
        <N>-clusters_thresh-<t>/                  one hierarchical cut   (assignment.npy, scores.json, ...)
        <N>-clusters_eps-<e>_samples-<m>/         one DBSCAN run
        <N>-clusters_min-size-<s>_samples-<m>/    one HDBSCAN run
        <k>-clusters/                             one k-means run
        <N>-clusters_scan-<checkpoint>/           one SCAN checkpoint applied (scan.py predict)
    Clustering_results/.cache/<dataset>/<partition>/<algo-slug>/<metric>.npy     condensed distances (float32)

``<partition>`` is ``full`` or ``clean`` for ``all_memes`` and ``<dataset>_<partition>`` for any other dataset.
``<method>`` is the linkage (``ward``, ``complete``...), ``DBSCAN``, ``DBSCAN-knn``, ``HDBSCAN``, ``kmeans`` or
``scan``.

A run folder holds ``assignment.npy`` (int64 cluster id per image, in the order of the feature store's
``names.txt`` restricted to the partition; ``-1`` = outlier), ``scores.json`` (external scores against the
ground truth, the run's parameters and, with ``--save True``, the global cluster statistics), and with
``--save True`` ``cluster_stats.npz`` (per-cluster arrays), plots and montages. ``scores.json`` is written last:
a run folder without it is unfinished and is redone on resume.
"""
import re
from pathlib import Path

import numpy as np

from helpers.paths import CLUSTERING_DIR
from helpers.results import read_json, write_json

from .data import DEFAULT_DATASET

ASSIGNMENT = "assignment.npy"
SCORES = "scores.json"
STATS = "cluster_stats.npz"
CACHE_DIR = ".cache"
_RUN_RE = re.compile(r"^(\d+)-clusters(?:_|$)")


def format_value(value):
    """A threshold or epsilon in a folder name: 3 decimals like the seed, more digits for small values."""
    value = float(value)
    return f"{value:.3f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}"


def partition_dirname(dataset, partition):
    """``full``/``clean`` for the default dataset, ``<dataset>_<partition>`` otherwise."""
    return partition if dataset == DEFAULT_DATASET else f"{dataset}_{partition}"


def experiment_dir(results_dir, dataset, partition, metric, method, algorithm_slug):
    """``<results_dir>/<partition>/<metric>_<method>_<algo-slug>``."""
    return Path(results_dir or CLUSTERING_DIR) / partition_dirname(dataset, partition) / \
        f"{metric}_{method}_{algorithm_slug}"


def cache_key(dataset, partition, algorithm_slug, metric):
    """Key of the condensed distances in :class:`clustering.distances.DistanceCache`."""
    return f"{dataset}/{partition}/{algorithm_slug}/{metric}"


def cache_root(results_dir):
    return Path(results_dir or CLUSTERING_DIR) / CACHE_DIR


def hierarchical_run_name(n_clusters, threshold):
    return f"{n_clusters}-clusters_thresh-{format_value(threshold)}"


def dbscan_run_name(n_clusters, eps, min_samples):
    return f"{n_clusters}-clusters_eps-{format_value(eps)}_samples-{min_samples}"


def hdbscan_run_name(n_clusters, min_cluster_size, min_samples):
    return f"{n_clusters}-clusters_min-size-{min_cluster_size}_samples-{min_samples}"


def kmeans_run_name(k):
    return f"{k}-clusters"


def scan_run_name(n_clusters, label):
    """A SCAN checkpoint applied by ``scan.py predict``: ``<N>-clusters_scan-<label>`` (N clusters used)."""
    return f"{n_clusters}-clusters_scan-{label}"


def run_clusters(run_dir):
    """Number of clusters encoded in a run folder's name."""
    match = _RUN_RE.match(Path(run_dir).name)
    return int(match.group(1)) if match else None


def list_runs(exp_dir, finished_only=True):
    """Run folders of an experiment, by decreasing number of clusters (then name)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    runs = [p for p in exp_dir.iterdir() if p.is_dir() and _RUN_RE.match(p.name)
            and (not finished_only or (p / SCORES).is_file())]
    return sorted(runs, key=lambda p: (-run_clusters(p), p.name))


def find_run(exp_dir, pattern):
    """The finished run folder whose name matches the glob ``pattern``, or ``None``."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return None
    for path in sorted(exp_dir.glob(pattern)):
        if path.is_dir() and (path / SCORES).is_file() and (path / ASSIGNMENT).is_file():
            return path
    return None


def save_assignment(run_dir, labels):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{ASSIGNMENT}.tmp.npy"
    np.save(tmp, np.asarray(labels, dtype=np.int64), allow_pickle=False)
    tmp.replace(run_dir / ASSIGNMENT)


def load_assignment(run_dir):
    return np.load(Path(run_dir) / ASSIGNMENT, allow_pickle=False)


def save_scores(run_dir, scores):
    write_json(Path(run_dir) / SCORES, scores)


def load_scores(run_dir):
    return read_json(Path(run_dir) / SCORES)
