"""Agglomerative (hierarchical) clustering: linkage, and the threshold that cuts the tree into N clusters.

The linkage runs on the condensed distance matrix (float64, ``N (N-1) / 2 * 8`` bytes: 10 GB for 50,000
images) with `fastcluster <https://pypi.org/project/fastcluster/>`_, in place (no second copy, unlike
``scipy.cluster.hierarchy.linkage``, which copies it), falling back to scipy when fastcluster is missing. The
distances come from the cache when valid (see :mod:`clustering.distances`).
"""
import numpy as np
from scipy.cluster.hierarchy import fcluster, maxdists

from helpers.log import get_logger

from .distances import MetricError

logger = get_logger(__name__)

LINKAGES = ("single", "complete", "average", "centroid", "ward")
#: Linkages whose merge distances only have a meaning for euclidean distances.
EUCLIDEAN_ONLY = ("centroid", "ward")


class ThresholdNotFoundError(ValueError):
    """No distance threshold cuts the tree into exactly the requested number of clusters."""

    def __init__(self, message, below=None, above=None):
        super().__init__(message)
        self.below = below
        self.above = above


def check_linkage(linkage, metric):
    """Raise :class:`MetricError` for an unknown linkage, or ward/centroid with a non-euclidean metric."""
    if linkage not in LINKAGES:
        raise MetricError(f"unknown linkage {linkage!r}; expected one of {', '.join(LINKAGES)}")
    if linkage in EUCLIDEAN_ONLY and metric != "euclidean":
        reason = " (binary hash features always use hamming)" if metric == "hamming" else ""
        raise MetricError(f"{linkage} linkage is only defined for the euclidean metric, not {metric}{reason}; "
                          f"use single, complete or average linkage, or --metric euclidean")


def linkage_matrix(condensed, method, in_place=True):
    """The linkage matrix ``Z`` (scipy's format) of a condensed float64 distance matrix.

    With ``in_place=True`` and fastcluster installed, ``condensed`` is overwritten and no second copy is made.
    (``fastcluster.linkage(..., preserve_input=False)`` still copies its input in fastcluster 1.3.0, its first
    line being ``array(X)``; its C routine ``linkage_wrap`` is called directly instead.)
    """
    condensed = np.asarray(condensed)
    if condensed.dtype != np.float64 or not condensed.flags.c_contiguous:
        condensed = np.ascontiguousarray(condensed, dtype=np.float64)
    elif not in_place:
        condensed = condensed.copy()
    n = int(np.ceil(np.sqrt(2 * condensed.size)))
    if n * (n - 1) // 2 != condensed.size:
        raise ValueError(f"{condensed.size} distances do not form a condensed matrix")
    try:
        import fastcluster
    except ImportError:  # pragma: no cover - fastcluster is a runtime requirement
        from scipy.cluster.hierarchy import linkage as scipy_linkage

        logger.warning("fastcluster is not installed: scipy's linkage needs a second copy of the distances")
        return scipy_linkage(condensed, method=method)
    if n < 2:
        return np.empty((0, 4))
    if not hasattr(fastcluster, "linkage_wrap"):  # pragma: no cover - other fastcluster versions
        return fastcluster.linkage(condensed, method=method, preserve_input=False)
    Z = np.empty((n - 1, 4))
    fastcluster.linkage_wrap(n, condensed, Z, fastcluster.mthidx[method])
    return Z


def count_clusters(Z, threshold):
    """Number of flat clusters when the tree is cut at ``threshold`` (scipy's ``fcluster`` 'distance')."""
    return int(fcluster(Z, threshold, criterion="distance").max())


def find_threshold(Z, n_clusters):
    """The distance threshold giving exactly ``n_clusters`` flat clusters, and the assignment (bisection).

    Cutting at ``t`` (``fcluster(Z, t, 'distance')``) merges every subtree whose largest merge distance is at
    most ``t``, so the number of clusters only changes at those merge distances and decreases with ``t``. The
    bisection (the seed's dichotomy) runs over the midpoints between consecutive distinct merge distances, so it
    ends in at most ``log2(N)`` steps and finds the count exactly whenever some threshold gives it. When equal
    merge distances (ties, e.g. duplicate images or integer Hamming distances) make the count jump over
    ``n_clusters``, it raises with the nearest counts that exist.

    Returns
    -------
    labels : ndarray ``[N]`` of int64 cluster ids in ``0..n_clusters-1``
    threshold : float

    Raises
    ------
    ValueError
        If ``n_clusters`` is not in ``1..N``.
    ThresholdNotFoundError
        If no threshold gives exactly ``n_clusters``; ``below``/``above`` hold the nearest
        ``(count, threshold)`` pairs.
    """
    Z = np.asarray(Z, dtype=np.float64)
    n = Z.shape[0] + 1
    n_clusters = int(n_clusters)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} points (choose 1..{n})")
    heights = np.unique(maxdists(Z))
    # Below every merge: half the smallest merge distance, or -1 when it is 0 (no threshold >= 0 keeps exact
    # duplicates apart). Above every merge: the largest plus 1.
    first = heights[0] / 2.0 if heights[0] > 0 else -1.0
    candidates = np.concatenate([[first], (heights[:-1] + heights[1:]) / 2.0, [heights[-1] + 1.0]])
    lo, hi = 0, candidates.size - 1
    counts = {}

    def count(i):
        if i not in counts:
            counts[i] = count_clusters(Z, candidates[i])
        return counts[i]

    while lo <= hi:
        mid = (lo + hi) // 2
        found = count(mid)
        if found == n_clusters:
            labels = fcluster(Z, candidates[mid], criterion="distance").astype(np.int64) - 1
            return labels, float(candidates[mid])
        if found > n_clusters:
            lo = mid + 1
        else:
            hi = mid - 1
    above = (count(hi), float(candidates[hi])) if hi >= 0 else None
    below = (count(lo), float(candidates[lo])) if lo < candidates.size else None
    nearest = " and ".join(f"{c} (threshold {t:.4g})" for c, t in (above, below) if c is not None)
    raise ThresholdNotFoundError(f"no distance threshold gives exactly {n_clusters} clusters (equal merge "
                                 f"distances); the nearest possible counts are {nearest}", below=below, above=above)


def cut_tree(Z, cluster_counts):
    """Cut the tree at each requested count; returns ``[(n, labels, threshold)]`` and ``[(n, message)]`` failures.

    Counts are processed in the given order; impossible ones are reported, not fatal.
    """
    cuts, failures = [], []
    for n_clusters in cluster_counts:
        try:
            labels, threshold = find_threshold(Z, n_clusters)
        except ValueError as exc:
            logger.warning("%s", exc)
            failures.append((int(n_clusters), str(exc)))
            continue
        cuts.append((int(n_clusters), labels, threshold))
    return cuts, failures


# --------------------------------------------------------------------------------------------------------------
# The hierarchical.py experiment
# --------------------------------------------------------------------------------------------------------------

#: The seed's numbers of clusters (for the 250 templates of the Kaggle memes).
DEFAULT_CLUSTERS = (400, 350, 300, 250, 200, 150, 100)


def build_parser():
    """The command line of ``hierarchical.py``."""
    import argparse

    from helpers.cli import str2bool

    from .pipeline import add_clustering_arguments

    parser = argparse.ArgumentParser(
        prog="hierarchical.py",
        description="Hierarchical (agglomerative) clustering of image features; the tree is cut at the distance "
                    "threshold giving each requested number of clusters. Results: "
                    "Clustering_results/<partition>/<metric>_<linkage>_<algo>/<N>-clusters_thresh-<t>/.")
    add_clustering_arguments(parser)
    group = parser.add_argument_group("hierarchical clustering")
    group.add_argument("--linkage", default="ward", choices=LINKAGES,
                       help="merge criterion; ward and centroid need --metric euclidean (default: %(default)s)")
    group.add_argument("--clusters", type=int, nargs="+", default=list(DEFAULT_CLUSTERS), metavar="N",
                       help="numbers of clusters to cut the tree into (default: the seed's %(default)s)")
    group.add_argument("--cache", type=str2bool, default=True, metavar="True|False",
                       help="keep the pairwise distances in Clustering_results/.cache/ (float32 .npy) and reuse "
                            "them (default: %(default)s)")
    group.add_argument("--dendrogram-leaves", type=int, default=60, metavar="P",
                       help="the dendrogram shows the last P merges (default: %(default)s)")
    return parser


def compute_linkage(st):
    """The linkage matrix of the experiment (``linkage.npy`` is reused on resume) and timings."""
    import time

    from . import layout
    from .distances import DistanceCache, cached_condensed_distances, features_fingerprint

    path = st.exp_dir / "linkage.npy"
    n = st.space.n
    if path.is_file():
        Z = np.load(path, allow_pickle=False)
        if Z.shape == (n - 1, 4):
            logger.info("reusing %s", path)
            return Z, {}
    args = st.args
    cache = DistanceCache(layout.cache_root(args.results_dir)) if args.cache else None
    key = layout.cache_key(st.data.dataset, st.data.partition, st.data.algorithm_slug, st.metric)
    fingerprint = features_fingerprint(st.data.features, st.data.names, [st.metric, st.space.nbits])
    started = time.perf_counter()
    condensed = cached_condensed_distances(st.space, cache, key, fingerprint)
    seconds_distances = time.perf_counter() - started
    started = time.perf_counter()
    Z = linkage_matrix(condensed, args.linkage, in_place=True)
    del condensed
    seconds_linkage = time.perf_counter() - started
    tmp = path.with_name(".linkage.tmp.npy")
    np.save(tmp, Z, allow_pickle=False)
    tmp.replace(path)
    logger.info("distances %.1f s, %s linkage %.1f s", seconds_distances, args.linkage, seconds_linkage)
    return Z, {"seconds_distances": seconds_distances, "seconds_linkage": seconds_linkage}


def run(args):
    """``hierarchical.py``: linkage, cuts at each requested number of clusters, outputs; returns results."""
    from . import layout, plots
    from .density import relabel_by_size
    from .pipeline import finalize, finished_run, record_run, setup

    st = setup(args, args.linkage, check=lambda space: check_linkage(args.linkage, space.metric))
    Z, timings = compute_linkage(st)
    plots.dendrogram(Z, args.linkage, st.metric, st.exp_dir / "dendrogram", p=args.dendrogram_leaves)
    runs = []
    for n_clusters in args.clusters:
        previous = finished_run(st, f"{n_clusters}-clusters_thresh-*")
        if previous is not None:
            runs.append(previous)
            continue
        try:
            labels, threshold = find_threshold(Z, n_clusters)
        except ValueError as exc:
            logger.warning("%s", exc)
            st.failures.append((f"{n_clusters} clusters", str(exc)))
            continue
        runs.append(record_run(st, layout.hierarchical_run_name(n_clusters, threshold), relabel_by_size(labels),
                               {"threshold": threshold, "linkage": args.linkage}))
    return finalize(st, runs, extra={"linkage": args.linkage, **timings}, extra_plots=("dendrogram",))
