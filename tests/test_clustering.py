"""Clustering metrics, distances, threshold search, density graphs and k-means against independent references
(scikit-learn, scipy, numpy brute force and hand-computed values)."""
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, pdist
from sklearn import metrics as skm
from sklearn.cluster import DBSCAN, HDBSCAN
from sklearn.neighbors import NearestNeighbors

from clustering import density, hierarchical, metrics
from clustering.distances import (DistanceCache, FeatureSpace, MetricError, cached_condensed_distances,
                                  condensed_distances, condensed_index, connect_components, features_fingerprint,
                                  knn_graph, radius_graph, resolve_metric)
from clustering.kmeans import estimate_k, kmeans


def blobs(n_per=15, centers=5, dim=8, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, dim)) * 6
    x = np.concatenate([m + rng.normal(size=(n_per, dim)) * spread for m in middle]).astype(np.float32)
    return x, np.repeat(np.arange(centers), n_per)


def same_partition(a, b):
    return skm.adjusted_rand_score(a, b) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# External scores
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_external_scores_take_any_labels(seed):
    """The scores are scikit-learn's: string labels (as from labels.csv) give the same values as integers."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 3 + seed, 60)
    pred = np.where(rng.random(60) < 0.6, true, rng.integers(0, 7, 60))
    names = np.array([f"tpl{t}" for t in true])  # string ground truth, as from file names
    h, c, v = skm.homogeneity_completeness_v_measure(true, pred)
    assert metrics.homogeneity(names, pred) == pytest.approx(h, abs=1e-12)
    assert metrics.completeness(names, pred) == pytest.approx(c, abs=1e-12)
    assert metrics.v_measure(names, pred) == pytest.approx(v, abs=1e-12)
    assert metrics.v_measure(true, pred, beta=2.0) == pytest.approx(skm.v_measure_score(true, pred, beta=2.0))
    assert metrics.normalized_mutual_info(true, pred) == pytest.approx(skm.normalized_mutual_info_score(true, pred))
    assert metrics.adjusted_rand_index(names, pred) == pytest.approx(skm.adjusted_rand_score(true, pred), abs=1e-12)
    assert metrics.adjusted_mutual_info(true, pred) == pytest.approx(skm.adjusted_mutual_info_score(true, pred))


def test_scores_hand_computed():
    true, pred = [0, 0, 1, 1], [0, 0, 1, 2]
    # Pairs: sum_ck C(n_ck,2) = 1, sum_c = 2, sum_k = 1, C(4,2) = 6 -> E = 1/3, ARI = (2/3) / (3/2 - 1/3) = 4/7.
    assert metrics.adjusted_rand_index(true, pred) == pytest.approx(4 / 7)
    # Pure clusters; H(K) = 1.5 ln2, H(K|C) = 0.5 ln2 -> c = 2/3, V = 0.8.
    assert metrics.homogeneity(true, pred) == pytest.approx(1.0)
    assert metrics.completeness(true, pred) == pytest.approx(2 / 3)
    assert metrics.v_measure(true, pred) == pytest.approx(0.8)
    # Best matching: cluster 0 -> class 0 (2 points), cluster 1 or 2 -> class 1 (1 point).
    assert metrics.hungarian_accuracy(true, pred) == pytest.approx(3 / 4)
    assert metrics.hungarian_accuracy([0, 0, 1, 1], [5, 5, 3, 3]) == 1.0
    assert metrics.adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0
    # H(C) = ln 2, H(K) = 1.5 ln 2, I = H(C) - H(C|K) = ln 2 -> NMI = ln2 / (1.25 ln 2) = 0.8 (= V-measure)
    assert metrics.normalized_mutual_info(true, pred) == pytest.approx(0.8)


def test_hungarian_accuracy_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(3)
    true, pred = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    best = max(sum(np.sum((pred == k) & (true == p[k])) for k in range(4)) for p in permutations(range(4))) / 40
    assert metrics.hungarian_accuracy(true, pred) == pytest.approx(best)


def test_outlier_modes():
    true = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, -1, 1, 1, -1])
    t, p = metrics.handle_outliers(true, pred, "singletons")
    assert len(set(p)) == 4 and (p >= 0).all()
    t, p = metrics.handle_outliers(true, pred, "cluster")
    assert list(p) == list(pred)
    t, p = metrics.handle_outliers(true, pred, "ignore")
    assert list(p) == [0, 0, 1, 1] and list(t) == [0, 0, 1, 1]
    scores = metrics.external_scores(true, pred)
    assert scores["n_outliers"] == 2 and scores["n_clusters"] == 2
    assert scores["homogeneity"] == pytest.approx(1.0)  # singletons are pure
    assert scores["completeness"] < 1.0
    with pytest.raises(ValueError, match="outliers"):
        metrics.handle_outliers(true, pred, "drop")


def test_intersection_over_union_hand_computed():
    iou, ids_a, ids_b = metrics.intersection_over_union([0, 0, 1, 1, -1], [0, 1, 1, 1, 1])
    assert list(ids_a) == [0, 1] and list(ids_b) == [0, 1]
    np.testing.assert_allclose(iou, [[1 / 2, 1 / 5], [0.0, 2 / 4]])


# ---------------------------------------------------------------------------------------------------------------
# Distances and the cache
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_condensed_distances_match_scipy(metric):
    x, _ = blobs(dim=16)
    x[3] = x[7]  # an exact duplicate must be at distance 0
    got = condensed_distances(FeatureSpace(x, metric))
    ref = pdist(x.astype(np.float64), metric=metric)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    assert got[condensed_index(len(x), 3, 7)] == 0.0


def test_hamming_distances_match_scipy():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(30, 60)).astype(np.uint8)  # 60 bits: packed rows carry 4 padding bits
    packed = np.packbits(bits, axis=1)
    space = FeatureSpace(packed, "euclidean", nbits=60)
    assert space.metric == "hamming"  # binary features force hamming
    np.testing.assert_allclose(condensed_distances(space), pdist(bits, metric="hamming"), rtol=0, atol=1e-12)


def test_metric_resolution_errors():
    assert resolve_metric("cosine", binary=True) == "hamming"
    with pytest.raises(MetricError, match="binary"):
        resolve_metric("hamming", binary=False)
    with pytest.raises(MetricError, match="unknown metric"):
        resolve_metric("manhattan", binary=False)


def test_distance_cache_roundtrip(tmp_path):
    x, _ = blobs(dim=12)
    space = FeatureSpace(x, "euclidean")
    cache = DistanceCache(tmp_path / "cache")
    key, fp = "toy/full/algo/euclidean", features_fingerprint(x, [f"n{i}" for i in range(len(x))])
    first = cached_condensed_distances(space, cache, key, fp)
    np.testing.assert_allclose(first, pdist(x.astype(np.float64)), rtol=1e-9)
    path = cache.lookup(key, len(x), "euclidean", fp)
    assert path is not None and not list(path.parent.glob(".*tmp*"))
    stored = np.load(path, allow_pickle=False)
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, first.astype(np.float32))
    second = cached_condensed_distances(space, cache, key, fp)
    assert second.dtype == np.float64
    np.testing.assert_array_equal(second, first.astype(np.float32).astype(np.float64))
    # Other features (or other names) invalidate the entry; a truncated file is not used.
    assert cache.lookup(key, len(x), "euclidean", features_fingerprint(x + 1)) is None
    with open(path, "r+b") as handle:
        handle.truncate(100)
    assert cache.lookup(key, len(x), "euclidean", fp) is None


# ---------------------------------------------------------------------------------------------------------------
# Cluster statistics
# ---------------------------------------------------------------------------------------------------------------

def _reference_statistics(x, labels, metric, quantile=1.0):
    ids = np.unique(labels[labels >= 0])
    centroids, diam, min_out, mean_in = [], [], [], []
    for cid in ids:
        inside, outside = x[labels == cid], x[labels != cid]
        if metric == "cosine":
            unit = inside / np.linalg.norm(inside, axis=1, keepdims=True)
            c = unit.mean(axis=0)
            c /= np.linalg.norm(c)
        else:
            c = inside.mean(axis=0)
        centroids.append(c)
        d = pdist(inside, metric=metric)
        diam.append(np.quantile(d, quantile) if d.size else 0.0)
        min_out.append(cdist(c[None], outside, metric=metric).min())
        mean_in.append(cdist(c[None], inside, metric=metric).mean())
    centroids = np.array(centroids)
    c2c = pdist(centroids, metric=metric).mean()
    return np.array(diam), centroids, np.array(min_out), np.array(mean_in), c2c


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("quantile", [1.0, 0.5])
def test_cluster_statistics_float(metric, quantile):
    x, labels = blobs(dim=6, spread=1.0)
    labels = labels.copy()
    labels[[4, 40]] = -1  # outliers: in no cluster, but outside every cluster
    labels[labels == 4] = 9  # non-contiguous ids
    stats = metrics.cluster_statistics(x, labels, metric=metric, diameter_quantile=quantile)
    diam, cent, min_out, mean_in, c2c = _reference_statistics(x.astype(np.float64), labels, metric, quantile)
    assert list(stats["ids"]) == [0, 1, 2, 3, 9]
    assert list(stats["sizes"]) == [14, 15, 14, 15, 15]
    np.testing.assert_allclose(stats["diameter"], diam, rtol=1e-9)
    np.testing.assert_allclose(stats["centroid"], cent, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["min_distance_outside"], min_out, rtol=1e-9)
    np.testing.assert_allclose(stats["mean_distance_inside"], mean_in, rtol=1e-9)
    assert stats["mean_centroid_to_centroid"] == pytest.approx(c2c)
    assert stats["sn_ratio1"] == pytest.approx(min_out.mean() / mean_in.mean())
    assert stats["sn_ratio2"] == pytest.approx(c2c / mean_in.mean())
    assert stats["n_outliers"] == 2 and stats["metric"] == metric


def test_signal_to_noise_per_cluster_hand_computed():
    """The seed's per-cluster ratios on points of a line: A = {0, 2}, B = {10, 12, 14}, an outlier at 5."""
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0], [14.0, 0.0], [5.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 1, -1])
    ratios = metrics.signal_to_noise_per_cluster(metrics.cluster_statistics(x, labels, metric="euclidean"))
    # A: centroid 1, diameter 2, closest outside point 5 (distance 4), dispersion 1, other centroid 12 (11)
    # B: centroid 12, diameter 4, closest outside point 5 (distance 7), dispersion 4/3, other centroid 1 (11)
    np.testing.assert_allclose(ratios["diameter_over_separation"], [2 / 4, 4 / 7], rtol=1e-12)
    np.testing.assert_allclose(ratios["dispersion_over_spacing"], [1 / 11, (4 / 3) / 11], rtol=1e-12)
    single = metrics.signal_to_noise_per_cluster(metrics.cluster_statistics(x[:2], [0, 0], metric="euclidean"))
    assert np.isnan(single["diameter_over_separation"]).all()  # nothing outside: no separation
    assert np.isnan(single["dispersion_over_spacing"]).all()   # one cluster: no other centroid


def test_cluster_statistics_binary_hamming():
    rng = np.random.default_rng(1)
    protos = rng.integers(0, 2, size=(3, 32))
    bits = np.repeat(protos, 7, axis=0)
    flips = rng.random(bits.shape) < 0.1
    bits = (bits ^ flips).astype(np.uint8)
    labels = np.repeat(np.arange(3), 7)
    stats = metrics.cluster_statistics(np.packbits(bits, axis=1), labels, metric="euclidean")
    assert stats["metric"] == "hamming"
    for k in range(3):
        inside = bits[labels == k]
        majority = (inside.mean(axis=0) > 0.5).astype(np.uint8)
        np.testing.assert_array_equal(np.unpackbits(stats["centroid"][k]), majority)
        assert stats["diameter"][k] == pytest.approx(pdist(inside, "hamming").max())
        assert stats["mean_distance_inside"][k] == pytest.approx(cdist(majority[None], inside, "hamming").mean())
        assert stats["min_distance_outside"][k] == pytest.approx(
            cdist(majority[None], bits[labels != k], "hamming").min())


def test_cluster_diameters_subsample_large_cluster():
    x, labels = blobs(n_per=40, centers=2, dim=4)
    exact, _ = metrics.cluster_diameters(x, labels, quantile=0.5)
    approx, _ = metrics.cluster_diameters(x, labels, quantile=0.5, max_pairs=300)
    np.testing.assert_allclose(approx, exact, rtol=0.25)
    with pytest.raises(ValueError, match="quantile"):
        metrics.cluster_diameters(x, labels, quantile=1.5)


# ---------------------------------------------------------------------------------------------------------------
# Hierarchical clustering: threshold search and errors
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ward", "average", "complete", "single"])
def test_find_threshold_exact_counts(method):
    x, _ = blobs(n_per=12, centers=4, dim=5, spread=1.5)
    Z = hierarchical.linkage_matrix(pdist(x.astype(np.float64)), method)
    for n_clusters in (1, 2, 3, 4, 7, 20, 47, len(x)):
        labels, threshold = hierarchical.find_threshold(Z, n_clusters)
        assert np.unique(labels).size == n_clusters
        assert same_partition(labels, fcluster(Z, threshold, criterion="distance"))
        assert same_partition(labels, fcluster(Z, n_clusters, criterion="maxclust"))  # independent reference


def test_fastcluster_linkage_matches_scipy():
    x, _ = blobs(n_per=10, centers=3, dim=4, spread=1.0)
    d = pdist(x.astype(np.float64))
    for method in ("ward", "average", "complete", "single", "centroid"):
        ours = hierarchical.linkage_matrix(d.copy(), method)
        np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(linkage(d, method)[:, 2]), rtol=1e-9)


def test_linkage_in_place_makes_no_copy():
    x, _ = blobs(n_per=10, centers=3, dim=4, spread=1.0)
    d = pdist(x.astype(np.float64))
    kept = d.copy()
    Z = hierarchical.linkage_matrix(kept, "average", in_place=False)
    np.testing.assert_array_equal(kept, d)  # preserved on request
    Z2 = hierarchical.linkage_matrix(kept, "average", in_place=True)
    assert not np.array_equal(kept, d)  # the input itself was the working memory
    np.testing.assert_allclose(Z, Z2)


def test_find_threshold_unreachable_count():
    # Four points one apart on a line: single linkage merges all at distance 1, so only 4 or 1 clusters exist.
    x = np.arange(4, dtype=np.float64)[:, None]
    Z = hierarchical.linkage_matrix(pdist(x), "single")
    with pytest.raises(hierarchical.ThresholdNotFoundError, match="exactly 2 clusters") as info:
        hierarchical.find_threshold(Z, 2)
    assert info.value.above[0] == 4 and info.value.below[0] == 1
    assert "4 (threshold" in str(info.value) and "1 (threshold" in str(info.value)
    with pytest.raises(ValueError, match="cannot make 5 clusters of 4 points"):
        hierarchical.find_threshold(Z, 5)
    cuts, failures = hierarchical.cut_tree(Z, [4, 2, 1])
    assert [c[0] for c in cuts] == [4, 1] and failures[0][0] == 2


def test_duplicates_need_negative_threshold():
    x = np.array([[0.0], [0.0], [5.0]])
    Z = hierarchical.linkage_matrix(pdist(x), "average")
    labels, threshold = hierarchical.find_threshold(Z, 3)
    assert np.unique(labels).size == 3 and threshold < 0


@pytest.mark.parametrize("linkage_name", ["ward", "centroid"])
@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_euclidean_only_linkages(linkage_name, metric):
    with pytest.raises(MetricError, match="only defined for the euclidean metric"):
        hierarchical.check_linkage(linkage_name, metric)
    hierarchical.check_linkage(linkage_name, "euclidean")
    hierarchical.check_linkage("average", metric)
    with pytest.raises(MetricError, match="unknown linkage"):
        hierarchical.check_linkage("median", "euclidean")


# ---------------------------------------------------------------------------------------------------------------
# Density-based clustering and graphs
# ---------------------------------------------------------------------------------------------------------------

def _noisy_blobs(seed=0):
    x, _ = blobs(n_per=20, centers=4, dim=5, spread=0.6, seed=seed)
    rng = np.random.default_rng(seed + 10)
    return np.concatenate([x, rng.uniform(-15, 15, size=(12, 5)).astype(np.float32)])


@pytest.mark.parametrize("eps,min_samples", [(1.2, 4), (2.0, 5), (0.8, 3)])
def test_dbscan_radius_graph_equals_sklearn(eps, min_samples):
    x = _noisy_blobs()
    ours = density.dbscan(radius_graph(FeatureSpace(x, "euclidean"), 2.0), eps, min_samples)
    ref = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x.astype(np.float64))
    np.testing.assert_array_equal(ours == -1, ref == -1)
    assert same_partition(ours[ours >= 0], ref[ref >= 0])


def test_dbscan_cosine_and_full_knn_graph():
    x = _noisy_blobs(seed=1) + 20.0
    space = FeatureSpace(x, "cosine")
    ref = DBSCAN(eps=0.002, min_samples=4, metric="cosine").fit_predict(x.astype(np.float64))
    exact = density.dbscan(radius_graph(space, 0.002), 0.002, 4)
    graph, info = knn_graph(space, k=len(x) - 1, index="flat")
    assert info["index"] == "flat"
    full = density.dbscan(graph, 0.002, 4)
    for labels in (exact, full):
        np.testing.assert_array_equal(labels == -1, ref == -1)
        assert same_partition(labels[labels >= 0], ref[ref >= 0])


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_knn_graph_distances(index):
    x, _ = blobs(n_per=50, centers=4, dim=8)
    graph, info = knn_graph(FeatureSpace(x, "euclidean"), k=5, index=index, nprobe=64)
    assert info["index"] == index
    dist, ids = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    dense = graph.toarray()
    assert np.allclose(graph.diagonal(), 0) and (graph != graph.T).nnz == 0  # symmetric
    # Every point's 5 true nearest neighbours are edges with the right distance (IVF probing all lists = exact;
    # HNSW on 200 points with efSearch 64 is exact too).
    for i in range(0, len(x), 7):
        np.testing.assert_allclose(dense[i, ids[i, 1:]], dist[i, 1:], rtol=1e-4)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@pytest.mark.parametrize("metric", ["hamming", "cosine"])
def test_knn_graph_edge_distances(index, metric):
    rng = np.random.default_rng(2)
    if metric == "hamming":
        bits = rng.integers(0, 2, size=(40, 64)).astype(np.uint8)
        features, ref = np.packbits(bits, axis=1), cdist(bits, bits, "hamming")
    else:
        features = rng.normal(size=(40, 16)).astype(np.float32) + 1.0
        ref = cdist(features.astype(np.float64), features.astype(np.float64), "cosine")
    graph, _ = knn_graph(FeatureSpace(features, metric), k=3, index=index)
    rows, cols = graph.nonzero()
    np.testing.assert_allclose(np.asarray(graph[rows, cols]).ravel(), ref[rows, cols], atol=1e-6)
    # each point's nearest other point is an edge
    nearest = np.argsort(ref + np.eye(40) * 9, axis=1)[:, 0]
    assert all(graph[i, nearest[i]] > 0 or ref[i, nearest[i]] == 0 for i in range(40))


def test_hdbscan_full_graph_matches_sklearn():
    x = _noisy_blobs(seed=2).astype(np.float64)
    graph, _ = knn_graph(FeatureSpace(x, "euclidean"), k=len(x) - 1, index="flat")
    ours = density.hdbscan(graph, min_cluster_size=5, min_samples=4)
    ref = HDBSCAN(min_cluster_size=5, min_samples=4, copy=True).fit_predict(x)
    np.testing.assert_array_equal(ours == -1, ref == -1)
    assert same_partition(ours[ours >= 0], ref[ref >= 0])


def test_hdbscan_with_duplicate_points():
    x, truth = blobs(n_per=20, centers=3, dim=4, spread=0.3)
    x = np.concatenate([x, x[::4]])  # exact duplicates: zero distances between distinct points
    truth = np.concatenate([truth, truth[::4]])
    graph, _ = knn_graph(FeatureSpace(x, "euclidean"), k=10, index="flat")
    assert ((graph.tocoo().data == 0) & (graph.tocoo().row != graph.tocoo().col)).any()
    labels = density.hdbscan(graph, min_cluster_size=5, min_samples=3)
    assert same_partition(labels, truth)


def test_hdbscan_disconnected_knn_graph():
    x, truth = blobs(n_per=25, centers=3, dim=4, spread=0.2)
    graph, _ = knn_graph(FeatureSpace(x, "euclidean"), k=6, index="flat")
    from scipy.sparse.csgraph import connected_components

    assert connected_components(graph, directed=False)[0] == 3  # far blobs: one component each
    joined, count = connect_components(graph)
    assert count == 3 and connected_components(joined, directed=False)[0] == 1
    labels = density.hdbscan(graph, min_cluster_size=5, min_samples=3)
    assert same_partition(labels, truth)


def test_relabel_by_size_and_default_eps():
    assert list(density.relabel_by_size([5, 5, -1, 2, 2, 2, 7])) == [1, 1, -1, 0, 0, 0, 2]
    x, _ = blobs()
    eps = density.default_eps(FeatureSpace(x, "euclidean"), 5)
    assert eps == sorted(eps) and all(e > 0 for e in eps)
    assert density.default_eps(FeatureSpace(x, "cosine"), 5)[0] == pytest.approx(0.18)
    assert density.resolve_graph("auto", 1000) == "radius" and density.resolve_graph("auto", 10 ** 6) == "knn"
    with pytest.raises(MemoryError, match="smaller eps"):
        radius_graph(FeatureSpace(x, "euclidean"), 1e9, max_edges=100)


# ---------------------------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------------------------

def test_kmeans_and_estimated_k():
    x, truth = blobs(n_per=20, centers=6, dim=6, spread=0.5)
    space = FeatureSpace(x, "euclidean")
    best, curve = estimate_k(space, range(2, 13), seed=0)
    assert best == 6 and curve["k"] == list(range(2, 13))
    assert np.nanargmax(curve["silhouette"]) == 4
    labels, inertia = kmeans(space, 6, seed=0)
    assert same_partition(labels, truth) and inertia > 0
    assert np.all(np.diff(np.bincount(labels)) <= 0)  # ids by decreasing size
    with pytest.raises(ValueError, match="cannot make"):
        kmeans(space, len(x) + 1)
