"""k-means with a given k, and an estimate of k when it is unknown (seed 003's two cases).

k-means runs in the space of the metric (:class:`clustering.distances.FeatureSpace`): plain features for
euclidean, L2-normalised features for cosine (spherical k-means: the squared euclidean distance of unit vectors
is twice the cosine distance), and the 0/1 bits for binary hashes (the squared euclidean distance of bit vectors
is the number of differing bits; the centroids are fractional).

Unknown k: :func:`estimate_k` clusters for every k of a range and scores each partition with the silhouette
(mean over points of ``(b - a) / max(a, b)``, ``a`` the mean distance to the own cluster, ``b`` to the nearest
other cluster; in the metric, on a seeded sample of at most 10,000 points), the Calinski-Harabasz and the
Davies-Bouldin indices, and the inertia (elbow). The chosen k maximises the silhouette. The curves are saved and
plotted so the choice can be checked.
"""
import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from helpers.log import get_logger

from .density import relabel_by_size

logger = get_logger(__name__)

SILHOUETTE_SAMPLE = 10_000
MINIBATCH_ABOVE = 200_000


def kmeans(space, k, seed=0, n_init=3, max_iter=300):
    """k-means labels (ids by decreasing cluster size) and the inertia, in the space of the metric.

    Uses scikit-learn's ``KMeans`` (Lloyd, ``n_init`` seeded restarts), ``MiniBatchKMeans`` above 200,000 points.
    """
    k = int(k)
    if not 1 <= k <= space.n:
        raise ValueError(f"cannot make {k} clusters of {space.n} points (choose 1..{space.n})")
    data = np.asarray(space.X, dtype=np.float32)
    if space.n > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init, batch_size=4096, max_iter=max_iter)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=n_init, max_iter=max_iter)
    labels = model.fit_predict(data)
    return relabel_by_size(labels), float(model.inertia_)


def _silhouette_metric(space):
    return "euclidean" if space.metric in ("euclidean", "cosine") else "hamming"


def estimate_k(space, k_values, seed=0, n_init=1, sample=SILHOUETTE_SAMPLE):
    """Score k-means for each k of ``k_values``; returns ``(best_k, curve)``.

    ``curve`` is a dict of lists: ``k``, ``silhouette``, ``calinski_harabasz``, ``davies_bouldin``, ``inertia``.
    The silhouette is computed in the metric (cosine: on unit vectors, where euclidean and cosine order pairs
    alike) on a seeded sample of at most ``sample`` points; the best k maximises it.
    """
    k_values = sorted({int(k) for k in k_values if 2 <= int(k) < space.n})
    if not k_values:
        raise ValueError(f"no usable k in the range: k must be in 2..{space.n - 1}")
    rng = np.random.default_rng(seed)
    sample_idx = np.sort(rng.choice(space.n, size=min(sample, space.n), replace=False))
    data = np.asarray(space.X, dtype=np.float32)
    curve = {"k": [], "silhouette": [], "calinski_harabasz": [], "davies_bouldin": [], "inertia": []}
    for k in k_values:
        labels, inertia = kmeans(space, k, seed=seed, n_init=n_init)
        sub = labels[sample_idx]
        enough = np.unique(sub).size > 1
        silhouette = float(silhouette_score(data[sample_idx], sub, metric=_silhouette_metric(space))) \
            if enough else float("nan")
        curve["k"].append(k)
        curve["silhouette"].append(silhouette)
        curve["calinski_harabasz"].append(float(calinski_harabasz_score(data, labels)))
        curve["davies_bouldin"].append(float(davies_bouldin_score(data, labels)))
        curve["inertia"].append(inertia)
        logger.info("k=%d: silhouette %.4f", k, silhouette)
    sil = np.array(curve["silhouette"], dtype=np.float64)
    best = k_values[int(np.nanargmax(sil))] if np.isfinite(sil).any() else k_values[0]
    return best, curve


# --------------------------------------------------------------------------------------------------------------
# The kmeans.py experiment
# --------------------------------------------------------------------------------------------------------------

def default_k_values(n, count=12, largest=1000):
    """About ``count`` values of k, geometrically spaced from 2 to ``min(n - 1, largest)``."""
    top = max(2, min(n - 1, largest))
    return sorted({int(round(v)) for v in np.geomspace(2, top, count)})


def build_parser():
    """The command line of ``kmeans.py``."""
    import argparse

    from .pipeline import add_clustering_arguments

    parser = argparse.ArgumentParser(
        prog="kmeans.py",
        description="k-means clustering of image features with a given k, or with k estimated (largest "
                    "silhouette over a range of k, the curves saved and plotted). Results: "
                    "Clustering_results/<partition>/<metric>_kmeans_<algo>/<k>-clusters/.")
    add_clustering_arguments(parser)
    group = parser.add_argument_group("k-means")
    group.add_argument("--k", nargs="+", default=["auto"], metavar="K",
                       help="numbers of clusters, or 'auto' to estimate k (default: %(default)s)")
    group.add_argument("--k-range", type=int, nargs=3, default=None, metavar=("MIN", "MAX", "STEP"),
                       help="k values tried by --k auto (default: 12 values from 2 to min(N-1, 1000), "
                            "geometrically spaced)")
    group.add_argument("--n-init", type=int, default=3,
                       help="k-means restarts (seeded); the k search uses 1 (default: %(default)s)")
    return parser


def run(args):
    """``kmeans.py``: k-means for each k (or the estimated k); returns the results dict."""
    from helpers.results import read_json, write_json

    from . import layout, plots
    from .pipeline import finalize, finished_run, record_run, setup, values_or_auto

    requested = values_or_auto(args.k, int, "--k")
    st = setup(args, "kmeans")
    extra, extra_plots = {}, ()
    if requested == "auto":
        selection_path = st.exp_dir / "k_selection.json"
        if selection_path.is_file():
            selection = read_json(selection_path)
        else:
            if args.k_range:
                low, high, step = args.k_range
                if step < 1 or low < 2 or high < low:
                    raise ValueError("--k-range needs MIN >= 2, MAX >= MIN and STEP >= 1")
                k_values = list(range(low, high + 1, step))
            else:
                k_values = default_k_values(st.space.n)
            best, curve = estimate_k(st.space, k_values, seed=args.seed)
            selection = {"best_k": best, "criterion": "silhouette", "curve": curve}
            write_json(selection_path, selection)
        plots.k_selection(selection["curve"], selection["best_k"], st.exp_dir / "k_selection")
        ks = [int(selection["best_k"])]
        extra, extra_plots = {"k_selection": selection}, ("k_selection",)
    else:
        ks = requested
    runs = []
    for k in ks:
        previous = finished_run(st, layout.kmeans_run_name(k))
        if previous is not None:
            runs.append(previous)
            continue
        try:
            labels, inertia = kmeans(st.space, k, seed=args.seed, n_init=args.n_init)
        except ValueError as exc:
            logger.warning("%s", exc)
            st.failures.append((f"k={k}", str(exc)))
            continue
        runs.append(record_run(st, layout.kmeans_run_name(k), labels, {"k": k, "inertia": inertia}))
    return finalize(st, runs, extra=extra, extra_plots=extra_plots)
