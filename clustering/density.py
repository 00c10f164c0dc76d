"""Density-based clustering: DBSCAN and HDBSCAN on sparse neighbourhood graphs (outliers get the label ``-1``).

Two graphs (see :mod:`clustering.distances`):

- ``radius`` (DBSCAN's default up to 100,000 images): every pair within the largest requested epsilon, computed
  exactly block by block; DBSCAN on it gives exactly scikit-learn's DBSCAN result, and memory grows with the
  number of pairs within epsilon, not with N^2 (the seed's square matrix is 20 GB at 50,000 images);
- ``knn``: the symmetric k-nearest-neighbour graph from FAISS (exact flat index up to 50,000 images, HNSW above),
  memory ``N * k``. DBSCAN on it is an approximation: a point's neighbours within epsilon beyond its k nearest
  are not seen (``k >= min_samples`` keeps the core points right; clusters held together only by those far
  edges may split). HDBSCAN always runs on this graph (its mutual-reachability tree is built on the kNN edges,
  the usual approximation; it is exact when ``k >= N - 1``).
"""
import numpy as np
from scipy.sparse import csr_matrix
from sklearn.cluster import DBSCAN, HDBSCAN

from helpers.log import get_logger

from .distances import connect_components, knn_graph, radius_graph

logger = get_logger(__name__)

GRAPHS = ("auto", "radius", "knn")
#: The seed's epsilon grids for the scale-free metrics (cosine distance, fraction of differing bits).
DEFAULT_EPS = {"cosine": tuple(np.linspace(0.18, 0.25, 5).round(4)),
               "hamming": tuple(np.linspace(0.16, 0.2, 3).round(4))}
#: Quantiles of the k-distance (distance to the min_samples-th neighbour) used as default epsilons.
KDIST_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9)
RADIUS_GRAPH_MAX_N = 100_000


def resolve_graph(graph, n):
    """``auto`` -> ``radius`` up to :data:`RADIUS_GRAPH_MAX_N` points, ``knn`` above."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; expected one of {', '.join(GRAPHS)}")
    if graph == "auto":
        return "radius" if n <= RADIUS_GRAPH_MAX_N else "knn"
    return graph


def k_distances(space, k, sample=2000, seed=0):
    """Distance from (a sample of) the points to their ``k``-th nearest point, the point itself counted first.

    With ``k = min_samples`` this is the distance at which a point becomes a DBSCAN core point.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(space.n, size=min(sample, space.n), replace=False))
    k = int(min(max(k, 1), space.n))
    out = []
    for start, stop in space.iter_row_blocks(0, rows.size):
        block = space.block(rows[start:stop])
        block[np.arange(stop - start), rows[start:stop]] = 0.0
        out.append(np.partition(block, k - 1, axis=1)[:, k - 1])
    return np.concatenate(out)


def default_eps(space, min_samples, seed=0):
    """Epsilons to try when none are given.

    Cosine and hamming: the seed's grids (:data:`DEFAULT_EPS`; both metrics have a fixed scale). Euclidean
    distances scale with the model, so the grid is data-driven: the :data:`KDIST_QUANTILES` quantiles of the
    ``min_samples``-distance of up to 2,000 random images (the classic k-distance heuristic).
    """
    if space.metric in DEFAULT_EPS:
        return [float(e) for e in DEFAULT_EPS[space.metric]]
    return kdist_eps(space, min_samples, seed=seed)


def kdist_eps(space, min_samples, seed=0):
    """The k-distance heuristic (see :func:`default_eps`), for any metric; unique, increasing values."""
    kd = k_distances(space, min_samples, seed=seed)
    values = np.quantile(kd, KDIST_QUANTILES)
    values = np.unique(np.round(values, 6))
    return [float(v) for v in values if v > 0] or [float(max(kd.max(), 1e-6))]


def build_graph(space, graph, eps_max=None, k=30, index="auto", nprobe=32, device=None, max_edges=400_000_000):
    """The sparse distance graph (CSR) and a description dict."""
    if graph == "radius":
        result = radius_graph(space, eps_max, max_edges=max_edges)
        return result, {"graph": "radius", "eps_max": float(eps_max), "edges": int(result.nnz)}
    result, info = knn_graph(space, k, index=index, nprobe=nprobe, device=device)
    info["graph"] = "knn"
    return result, info


def restrict(graph, eps):
    """The subgraph of edges with distance <= ``eps`` (explicit zeros kept)."""
    keep = graph.data <= eps
    if keep.all():
        return graph
    coo = graph.tocoo()
    out = csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=graph.shape)
    out.sort_indices()
    return out


def dbscan(graph, eps, min_samples=5):
    """DBSCAN labels on a precomputed sparse distance graph (``-1`` = outlier), ids by decreasing size.

    ``min_samples`` counts the point itself (scikit-learn's convention).
    """
    model = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed")
    labels = model.fit_predict(restrict(graph, eps))
    return relabel_by_size(labels)


def hdbscan(graph, min_cluster_size=5, min_samples=None, cluster_selection_epsilon=0.0):
    """HDBSCAN labels on a precomputed sparse distance graph (``-1`` = outlier), ids by decreasing size.

    Components of the graph are joined by very long edges first (:func:`connect_components`) since HDBSCAN
    needs one component; such edges only merge at the top of the hierarchy.
    """
    connected, components = connect_components(graph)
    if components > 1:
        logger.info("kNN graph has %d connected components; joined by long edges for HDBSCAN", components)
    # scikit-learn's sparse HDBSCAN fails (KeyError in its labelling) on zero distances between distinct points
    # (duplicate images): make them a distance far below any real one instead.
    coo = connected.tocoo()
    zero = (coo.data == 0) & (coo.row != coo.col)
    if zero.any():
        positive = coo.data[coo.data > 0]
        data = coo.data.copy()
        data[zero] = (positive.min() if positive.size else 1.0) * 1e-6
        connected = csr_matrix((data, (coo.row, coo.col)), shape=connected.shape)
    model = HDBSCAN(min_cluster_size=int(min_cluster_size),
                    min_samples=None if min_samples is None else int(min_samples),
                    cluster_selection_epsilon=float(cluster_selection_epsilon), metric="precomputed", copy=True)
    labels = model.fit_predict(connected)
    labels[labels < -1] = -1  # HDBSCAN marks infinite / missing values with -2 and -3
    return relabel_by_size(labels)


def relabel_by_size(labels):
    """Renumber clusters ``0..K-1`` by decreasing size (ties by first appearance); ``-1`` stays ``-1``."""
    labels = np.asarray(labels).astype(np.int64)
    valid = labels >= 0
    if not valid.any():
        return labels
    ids, first, counts = np.unique(labels[valid], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(ids.max() + 1, dtype=np.int64)
    mapping[ids[order]] = np.arange(ids.size)
    out = labels.copy()
    out[valid] = mapping[labels[valid]]
    return out


# --------------------------------------------------------------------------------------------------------------
# The DBSCAN.py experiment (DBSCAN or HDBSCAN)
# --------------------------------------------------------------------------------------------------------------

def build_parser():
    """The command line of ``DBSCAN.py``."""
    import argparse

    from .pipeline import add_clustering_arguments

    parser = argparse.ArgumentParser(
        prog="DBSCAN.py",
        description="Density-based clustering of image features: DBSCAN for each epsilon (the seed), or HDBSCAN. "
                    "Outliers get the label -1. Results: Clustering_results/<partition>/<metric>_DBSCAN_<algo>/"
                    "<N>-clusters_eps-<e>_samples-<m>/ (HDBSCAN: <metric>_HDBSCAN_<algo>/).")
    add_clustering_arguments(parser)
    group = parser.add_argument_group("density-based clustering")
    group.add_argument("--method", default="dbscan", choices=["dbscan", "hdbscan"],
                       help="dbscan (one run per epsilon) or hdbscan (no epsilon; one run per "
                            "--min-cluster-size) (default: %(default)s)")
    group.add_argument("--precisions", nargs="+", default=None, metavar="EPS",
                       help="DBSCAN epsilons (neighbourhood radius, in the metric's unit; hamming: the fraction "
                            "of differing bits, 0.1875 = 12 of 64 bits, as in the seed). Default: cosine "
                            "0.18..0.25 and hamming 0.16..0.2 (the seed's grids), euclidean: quantiles 0.5..0.9 "
                            "of the distance to the --samples-th neighbour; 'auto' uses the latter for any metric")
    group.add_argument("--samples", type=int, default=5, metavar="MIN",
                       help="neighbours (the point included) making a core point; HDBSCAN's min_samples "
                            "(default: %(default)s)")
    group.add_argument("--min-cluster-size", type=int, nargs="+", default=[5], metavar="S",
                       help="HDBSCAN: smallest cluster size, one run per value (default: %(default)s)")
    group.add_argument("--graph", default="auto", choices=GRAPHS,
                       help="DBSCAN neighbourhood graph: radius = exact (all pairs within epsilon, memory grows "
                            "with their number), knn = FAISS k-nearest-neighbour graph (memory N*k, approximate); "
                            "auto = radius up to 100,000 images. HDBSCAN always uses knn (default: %(default)s)")
    group.add_argument("--k", type=int, default=30,
                       help="neighbours per image of the kNN graph (at least --samples) (default: %(default)s)")
    group.add_argument("--knn-index", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                       help="FAISS index of the kNN graph: flat = exact (O(N^2)); hnsw and ivf = approximate, much "
                            "faster; auto = flat up to 50,000 images or on a GPU, hnsw above (default: %(default)s)")
    group.add_argument("--nprobe", type=int, default=32,
                       help="lists searched by the IVF index (default: %(default)s)")
    group.add_argument("--max-edges", type=int, default=400_000_000,
                       help="refuse a radius graph with more pairs than this (about 12 bytes each) "
                            "(default: %(default)s)")
    return parser


def run(args):
    """``DBSCAN.py``: DBSCAN for each epsilon, or HDBSCAN; returns the results dict."""
    from . import layout
    from .pipeline import device_of, finalize, finished_run, record_run, setup, values_or_auto

    if args.samples < 1:
        raise ValueError("--samples must be at least 1")
    eps_request = values_or_auto(args.precisions, float, "--precisions")
    device = device_of(args)
    if args.method == "hdbscan":
        st = setup(args, "HDBSCAN")
        return _run_hdbscan(st, args, device)

    graph_kind = {}

    def method(space):
        graph_kind["kind"] = resolve_graph(args.graph, space.n)
        if graph_kind["kind"] == "knn" and args.k < args.samples:
            raise ValueError(f"--k ({args.k}) must be at least --samples ({args.samples}) for DBSCAN on a kNN graph")
        return "DBSCAN" if graph_kind["kind"] == "radius" else "DBSCAN-knn"

    st = setup(args, method)
    if eps_request is None:
        eps_values = default_eps(st.space, args.samples, seed=args.seed)
    elif eps_request == "auto":
        eps_values = kdist_eps(st.space, args.samples, seed=args.seed)
    else:
        eps_values = eps_request
    logger.info("epsilons: %s", ", ".join(f"{e:.4g}" for e in eps_values))
    runs, todo = [], []
    for eps in eps_values:
        previous = finished_run(st, f"*-clusters_eps-{layout.format_value(eps)}_samples-{args.samples}")
        (runs.append(previous) if previous is not None else todo.append(eps))
    graph_info = {}
    if todo:
        graph, graph_info = build_graph(st.space, graph_kind["kind"], eps_max=max(todo), k=args.k,
                                        index=args.knn_index, nprobe=args.nprobe, device=device,
                                        max_edges=args.max_edges)
        logger.info("neighbourhood graph: %s", graph_info)
        for eps in todo:
            labels = dbscan(graph, eps, args.samples)
            n_clusters = int(labels.max() + 1) if labels.size else 0
            runs.append(record_run(st, layout.dbscan_run_name(n_clusters, eps, args.samples), labels,
                                   {"eps": float(eps), "min_samples": args.samples, "graph": graph_info}))
    return finalize(st, runs, extra={"eps": eps_values, "graph": graph_info})


def _run_hdbscan(st, args, device):
    from . import layout
    from .pipeline import finalize, finished_run, record_run

    runs, todo = [], []
    for size in args.min_cluster_size:
        if size < 2:
            raise ValueError("--min-cluster-size must be at least 2")
        previous = finished_run(st, f"*-clusters_min-size-{size}_samples-{args.samples}")
        (runs.append(previous) if previous is not None else todo.append(size))
    graph_info = {}
    if todo:
        graph, graph_info = build_graph(st.space, "knn", k=max(args.k, args.samples + 1), index=args.knn_index,
                                        nprobe=args.nprobe, device=device)
        logger.info("kNN graph: %s", graph_info)
        for size in todo:
            labels = hdbscan(graph, min_cluster_size=size, min_samples=args.samples)
            n_clusters = int(labels.max() + 1) if labels.size else 0
            runs.append(record_run(st, layout.hdbscan_run_name(n_clusters, size, args.samples), labels,
                                   {"min_cluster_size": size, "min_samples": args.samples, "graph": graph_info}))
    return finalize(st, runs, extra={"graph": graph_info})
