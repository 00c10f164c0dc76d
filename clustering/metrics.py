"""Every clustering metric of the toolkit, each defined in its docstring.

Notation: ``N`` points, ground-truth classes ``C`` (the template label of each image, see
:func:`helpers.ground_truth.dataset_labels`) and predicted clusters ``K``; ``n_ck`` is the number of points of class
``c`` in cluster ``k``, ``n_c`` and ``n_k`` the class and cluster sizes. Entropies use natural logarithms.

External scores (against the ground truth): :func:`homogeneity`, :func:`completeness`, :func:`v_measure`,
:func:`adjusted_rand_index`, :func:`adjusted_mutual_info`, :func:`normalized_mutual_info`,
:func:`hungarian_accuracy`, all together with :func:`external_scores`. DBSCAN/HDBSCAN outliers (label ``-1``)
are handled by :func:`handle_outliers`.

Geometry of the clusters: :func:`cluster_centroids`, :func:`cluster_diameters` and :func:`cluster_statistics`
(per-cluster diameter, centroid, separation and dispersion; global centroid-to-centroid distance and two global
signal-to-noise ratios) and :func:`signal_to_noise_per_cluster` (the seed's two ratios, one value per cluster), for
float (euclidean, cosine) and binary (hamming) features.

Comparison of two assignments: :func:`intersection_over_union`.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix as _sk_contingency

from fast_search.index import l2_normalise_rows

from .distances import BLOCK_ELEMENTS, FeatureSpace, _as_feature_array

OUTLIER = -1
OUTLIER_MODES = ("singletons", "cluster", "ignore")


# --------------------------------------------------------------------------------------------------------------
# Label handling
# --------------------------------------------------------------------------------------------------------------

def encode_labels(labels):
    """Integer codes ``0..K-1`` for any labels (strings or numbers), in sorted order of the distinct values."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def handle_outliers(labels_true, labels_pred, outliers="singletons"):
    """Prepare predicted labels with outliers (``-1``) for the external scores.

    Parameters
    ----------
    outliers : str
        - ``'singletons'`` (default): each outlier is its own cluster of one. This is what an outlier means (it
          was grouped with nothing), so outliers cost completeness but never homogeneity;
        - ``'cluster'``: all outliers form one cluster (the seed's convention; it makes a large impure cluster);
        - ``'ignore'``: outliers are left out of the scores (only clustered points are scored).

    Returns
    -------
    labels_true, labels_pred : ndarray
        Arrays of equal length, ready for the scores.
    """
    if outliers not in OUTLIER_MODES:
        raise ValueError(f"outliers must be one of {OUTLIER_MODES}, got {outliers!r}")
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred).astype(np.int64)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(f"labels_true {labels_true.shape} and labels_pred {labels_pred.shape} must be 1-D and "
                         f"of equal length")
    mask = labels_pred == OUTLIER
    if not mask.any() or outliers == "cluster":
        return labels_true, labels_pred
    if outliers == "ignore":
        return labels_true[~mask], labels_pred[~mask]
    labels_pred = labels_pred.copy()
    start = labels_pred.max() + 1 if (~mask).any() else 0
    labels_pred[mask] = start + np.arange(mask.sum())
    return labels_true, labels_pred


def contingency(labels_true, labels_pred):
    """The contingency table ``n_ck`` (classes x clusters, in sorted label order) as a sparse CSR matrix."""
    return _sk_contingency(encode_labels(labels_true), encode_labels(labels_pred), sparse=True)


# --------------------------------------------------------------------------------------------------------------
# External scores (scikit-learn's implementations; the definitions are kept here, checked by hand in the tests)
# --------------------------------------------------------------------------------------------------------------

def homogeneity(labels_true, labels_pred):
    """Homogeneity ``h = 1 - H(C|K) / H(C)`` (1 when ``H(C) = 0``): each cluster holds members of one class only.

    ``H(C) = -sum_c n_c/N log(n_c/N)``, ``H(C|K) = -sum_{c,k} n_ck/N log(n_ck/n_k)``. In [0, 1]; splitting a
    class over many clusters does not lower it (all singletons give 1). scikit-learn's ``homogeneity_score``.
    """
    return float(skm.homogeneity_score(encode_labels(labels_true), encode_labels(labels_pred)))


def completeness(labels_true, labels_pred):
    """Completeness ``c = 1 - H(K|C) / H(K)`` (1 when ``H(K) = 0``): all members of a class are in one cluster.

    The mirror of :func:`homogeneity` (classes and clusters swapped); one cluster holding everything gives 1.
    scikit-learn's ``completeness_score``.
    """
    return float(skm.completeness_score(encode_labels(labels_true), encode_labels(labels_pred)))


def v_measure(labels_true, labels_pred, beta=1.0):
    """V-measure ``(1 + beta) h c / (beta h + c)``: the (weighted) harmonic mean of homogeneity and completeness.

    With ``beta = 1`` it equals :func:`normalized_mutual_info` with the arithmetic mean. 0 when ``h + c = 0``.
    scikit-learn's ``v_measure_score``.
    """
    return float(skm.v_measure_score(encode_labels(labels_true), encode_labels(labels_pred), beta=beta))


def normalized_mutual_info(labels_true, labels_pred):
    """NMI ``= I(C;K) / ((H(C) + H(K)) / 2)`` with ``I(C;K) = H(C) - H(C|K)`` (arithmetic normalisation).

    1 for identical partitions (up to renaming); 1 as well when both are a single group. scikit-learn's
    ``normalized_mutual_info_score``.
    """
    return float(skm.normalized_mutual_info_score(encode_labels(labels_true), encode_labels(labels_pred),
                                                  average_method="arithmetic"))


def adjusted_mutual_info(labels_true, labels_pred):
    """AMI ``= (I - E[I]) / (mean(H(C), H(K)) - E[I])``: mutual information corrected for chance.

    ``E[I]`` is the expected mutual information of two random partitions with the same cluster sizes
    (hypergeometric model, Vinh et al. 2010); arithmetic mean normalisation. About 0 for random labels, 1 for
    identical partitions. scikit-learn's ``adjusted_mutual_info_score``.
    """
    return float(skm.adjusted_mutual_info_score(encode_labels(labels_true), encode_labels(labels_pred),
                                                average_method="arithmetic"))


def adjusted_rand_index(labels_true, labels_pred):
    """ARI: the Rand index (share of point pairs on which both partitions agree) corrected for chance.

    ``ARI = (sum_ck C(n_ck,2) - E) / ((sum_c C(n_c,2) + sum_k C(n_k,2)) / 2 - E)`` with
    ``E = sum_c C(n_c,2) sum_k C(n_k,2) / C(N,2)`` and ``C(n,2) = n (n-1) / 2``. 1 for identical partitions,
    about 0 for random ones, can be negative; 1 when both partitions are trivial and equal. scikit-learn's
    ``adjusted_rand_score``.
    """
    return float(skm.adjusted_rand_score(encode_labels(labels_true), encode_labels(labels_pred)))


def hungarian_accuracy(labels_true, labels_pred):
    """Accuracy after the best one-to-one matching of clusters to classes (Hungarian algorithm).

    ``max over matchings m of sum_k n_{m(k),k} / N``: each class is matched to at most one cluster and each
    cluster to at most one class; points of unmatched clusters count as errors. 1 only when the partitions are
    identical up to renaming; with ``K`` clusters of a ``C``-class problem it is at most ``min(K, C)`` classes'
    worth of points.
    """
    table = contingency(labels_true, labels_pred).toarray()
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


SCORE_NAMES = ("homogeneity", "completeness", "v_measure", "ari", "ami", "nmi", "accuracy")


def external_scores(labels_true, labels_pred, outliers="singletons"):
    """All external scores of a predicted assignment against the ground truth, as a dict.

    Keys: ``homogeneity``, ``completeness``, ``v_measure``, ``ari`` (:func:`adjusted_rand_index`), ``ami``,
    ``nmi``, ``accuracy`` (:func:`hungarian_accuracy`), plus ``n_points``, ``n_classes``, ``n_clusters``
    (outliers excluded), ``n_outliers`` and ``outliers`` (the mode, see :func:`handle_outliers`).
    """
    labels_pred = np.asarray(labels_pred).astype(np.int64)
    n_outliers = int((labels_pred == OUTLIER).sum())
    n_clusters = int(np.unique(labels_pred[labels_pred != OUTLIER]).size)
    true, pred = handle_outliers(labels_true, labels_pred, outliers)
    scores = {"n_points": int(labels_pred.size), "n_classes": int(np.unique(np.asarray(labels_true)).size),
              "n_clusters": n_clusters, "n_outliers": n_outliers, "outliers": outliers}
    if true.size == 0:
        scores.update({name: None for name in SCORE_NAMES})
        return scores
    scores.update({
        "homogeneity": homogeneity(true, pred),
        "completeness": completeness(true, pred),
        "v_measure": v_measure(true, pred),
        "ari": adjusted_rand_index(true, pred),
        "ami": adjusted_mutual_info(true, pred),
        "nmi": normalized_mutual_info(true, pred),
        "accuracy": hungarian_accuracy(true, pred),
    })
    return scores


# --------------------------------------------------------------------------------------------------------------
# Geometry of the clusters
# --------------------------------------------------------------------------------------------------------------

def _cluster_ids(labels):
    labels = np.asarray(labels).astype(np.int64)
    ids = np.unique(labels)
    return labels, ids[ids != OUTLIER]


def cluster_centroids(features, labels, metric="euclidean", nbits=None):
    """Centroid of each cluster (sorted by cluster id; outliers ``-1`` are no cluster), in the feature format.

    - euclidean: the mean of the members (it minimises the sum of squared distances);
    - cosine: the mean of the L2-normalised members, normalised (the mean direction);
    - hamming (binary features): the bitwise majority of the members (it minimises the sum of Hamming
      distances; ties give 0), returned as packed bits like the features.

    Returns
    -------
    centroids : ndarray ``[K, d]`` (float64) or ``[K, bytes]`` (uint8 packed bits)
    ids : ndarray ``[K]`` of cluster ids
    """
    array, binary, nbits = _as_feature_array(features, nbits)
    space_metric = "hamming" if binary else metric
    labels, ids = _cluster_ids(labels)
    if labels.shape[0] != array.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {array.shape[0]} features")
    index = np.searchsorted(ids, labels)
    valid = labels != OUTLIER
    counts = np.bincount(index[valid], minlength=ids.size).astype(np.float64)
    if binary:
        bits = np.unpackbits(np.asarray(array), axis=1)[:, :nbits].astype(np.float64)
        sums = np.zeros((ids.size, nbits))
        np.add.at(sums, index[valid], bits[valid])
        majority = (sums / counts[:, None] > 0.5).astype(np.uint8)
        return np.packbits(majority, axis=1), ids
    data = np.asarray(array, dtype=np.float64)
    if space_metric == "cosine":
        data = l2_normalise_rows(data)
    sums = np.zeros((ids.size, data.shape[1]))
    np.add.at(sums, index[valid], data[valid])
    centroids = sums / counts[:, None]
    if space_metric == "cosine":
        centroids = l2_normalise_rows(centroids)
    return centroids, ids


def _members(labels, ids):
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, ids, side="left")
    stops = np.searchsorted(sorted_labels, ids, side="right")
    return [order[a:b] for a, b in zip(starts, stops)]


def _within_distances_max(space, members):
    """Largest pairwise distance inside one cluster, block by block."""
    best = 0.0
    step = max(1, BLOCK_ELEMENTS // max(1, members.size))
    for start in range(0, members.size, step):
        block = space.block(members[start:start + step], members)
        best = max(best, float(block.max()))
    return best


def _within_distances(space, members):
    """All pairwise distances inside one cluster (condensed, float64)."""
    n = members.size
    out = []
    step = max(1, BLOCK_ELEMENTS // max(1, n))
    for start in range(0, n, step):
        block = space.block(members[start:start + step], members)
        for k in range(block.shape[0]):
            out.append(block[k, start + k + 1:])
    return np.concatenate(out) if out else np.zeros(0)


def cluster_diameters(features, labels, metric="euclidean", quantile=1.0, nbits=None, max_pairs=50_000_000,
                      seed=0, space=None):
    """Diameter of each cluster: the ``quantile`` of the pairwise distances between its members.

    ``quantile=1`` (default) is the largest pairwise distance, computed exactly block by block whatever the
    cluster size. For ``quantile < 1`` the distances of a cluster are held in memory; a cluster with more than
    ``max_pairs`` pairs uses the pairs of a random subset of its members instead (seeded). A cluster of one
    point has diameter 0. Outliers (``-1``) are not a cluster.

    Returns
    -------
    diameters : ndarray ``[K]`` (sorted by cluster id)
    ids : ndarray ``[K]``
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    space = space or FeatureSpace(features, metric, nbits=nbits)
    labels, ids = _cluster_ids(labels)
    rng = np.random.default_rng(seed)
    diameters = np.zeros(ids.size)
    for index, members in enumerate(_members(labels, ids)):
        if members.size < 2:
            continue
        if quantile == 1.0:
            diameters[index] = _within_distances_max(space, members)
            continue
        if members.size * (members.size - 1) // 2 > max_pairs:
            keep = int((1 + np.sqrt(1 + 8 * max_pairs)) // 2)
            members = np.sort(rng.choice(members, size=keep, replace=False))
        diameters[index] = float(np.quantile(_within_distances(space, members), quantile))
    return diameters, ids


def intersection_over_union(labels_a, labels_b):
    """Intersection over union of every cluster of ``labels_a`` with every cluster of ``labels_b``.

    ``IoU[i, j] = |A_i & B_j| / |A_i | B_j|`` where ``A_i`` and ``B_j`` are the sets of points of cluster ``i``
    of the first assignment and ``j`` of the second. Outliers (``-1``) are no cluster and are left out.

    Returns
    -------
    iou : ndarray ``[K_a, K_b]`` (float64)
    ids_a, ids_b : ndarray
        Cluster ids of the rows and of the columns.
    """
    labels_a = np.asarray(labels_a).astype(np.int64)
    labels_b = np.asarray(labels_b).astype(np.int64)
    if labels_a.shape != labels_b.shape:
        raise ValueError("both assignments must label the same points")
    ids_a = np.unique(labels_a[labels_a != OUTLIER])
    ids_b = np.unique(labels_b[labels_b != OUTLIER])
    size_a = np.bincount(np.searchsorted(ids_a, labels_a[labels_a != OUTLIER]), minlength=ids_a.size)
    size_b = np.bincount(np.searchsorted(ids_b, labels_b[labels_b != OUTLIER]), minlength=ids_b.size)
    both = (labels_a != OUTLIER) & (labels_b != OUTLIER)
    inter = np.zeros((ids_a.size, ids_b.size))
    np.add.at(inter, (np.searchsorted(ids_a, labels_a[both]), np.searchsorted(ids_b, labels_b[both])), 1.0)
    union = size_a[:, None] + size_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), ids_a, ids_b


def cluster_statistics(features, labels, metric="euclidean", diameter_quantile=1.0, nbits=None, space=None):
    """Per-cluster geometry and the seed's global separation values, for float and binary features.

    Distances use ``metric`` (forced to ``hamming``, the fraction of differing bits, for binary features:
    packed ``uint8`` arrays or a binary FeatureSet). Centroids are those of :func:`cluster_centroids`. Points
    labelled ``-1`` (outliers) belong to no cluster but count as points outside every cluster.

    Parameters
    ----------
    features : ndarray ``[N, d]`` (float) or ``[N, bytes]`` (uint8 packed bits), or a FeatureSet
    labels : ndarray ``[N]`` of int cluster ids (``-1`` = outlier)
    metric : str
        ``euclidean`` or ``cosine`` for float features.
    diameter_quantile : float
        See :func:`cluster_diameters` (1 = largest pairwise distance).
    nbits : int, optional
        Meaningful bits of binary features (default: 8 per byte).
    space : FeatureSpace, optional
        The features already prepared for ``metric`` (saves preparing them again).

    Returns
    -------
    dict
        Per-cluster arrays, in increasing order of cluster id:

        - ``ids``: the cluster ids; ``sizes``: the number of members;
        - ``diameter``: the ``diameter_quantile`` of the pairwise distances between members;
        - ``centroid``: ``[K, d]`` (packed bits for binary features);
        - ``min_distance_outside``: the smallest distance from the centroid to a point outside the cluster
          (separation; NaN when every point is in the cluster);
        - ``mean_distance_inside``: the mean distance from the centroid to the members (dispersion);
        - ``centroid_to_centroid``: the mean distance from the centroid to the other centroids (NaN if K = 1).

        Global values:

        - ``mean_centroid_to_centroid``: mean of the distances between all pairs of distinct centroids;
        - ``sn_ratio1``: ``mean(min_distance_outside) / mean(mean_distance_inside)``, separation over
          dispersion (the seed's first signal-to-noise ratio; larger = clusters better apart than they are wide);
        - ``sn_ratio2``: ``mean_centroid_to_centroid / mean(mean_distance_inside)``, spacing of the clusters
          over their dispersion (the seed's second ratio);
        - ``metric``, ``diameter_quantile``, ``n_clusters``, ``n_outliers``.
    """
    array, binary, nbits = _as_feature_array(features, nbits)
    if space is None or space.n != array.shape[0] or space.binary != binary:
        space = FeatureSpace(array, metric, nbits=nbits)
    labels, ids = _cluster_ids(labels)
    if labels.shape[0] != space.n:
        raise ValueError(f"{labels.shape[0]} labels for {space.n} features")
    centroids, _ = cluster_centroids(array, labels, metric=space.metric, nbits=nbits)
    prepared, sq = space.transform(centroids)
    members = _members(labels, ids)
    sizes = np.array([m.size for m in members], dtype=np.int64)
    index = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels != OUTLIER
    index[valid] = np.searchsorted(ids, labels[valid])

    min_outside = np.full(ids.size, np.inf)
    inside_sum = np.zeros(ids.size)
    step_c = max(1, min(ids.size, 4096))
    for c0 in range(0, ids.size, step_c):
        c1 = min(ids.size, c0 + step_c)
        for r0, r1 in space.iter_row_blocks(width=c1 - c0):
            dist = space.to_points(prepared[c0:c1], sq[c0:c1], slice(r0, r1))  # [clusters, points]
            own = index[r0:r1]
            mine = (own[None, :] == np.arange(c0, c1)[:, None])
            inside_sum[c0:c1] += np.where(mine, dist, 0.0).sum(axis=1)
            dist[mine] = np.inf
            np.minimum(min_outside[c0:c1], dist.min(axis=1), out=min_outside[c0:c1])
    min_outside[np.isinf(min_outside)] = np.nan
    mean_inside = np.divide(inside_sum, sizes, out=np.zeros(ids.size), where=sizes > 0)

    c2c_sum = np.zeros(ids.size)
    step = max(1, BLOCK_ELEMENTS // max(1, ids.size))
    for c0 in range(0, ids.size, step):
        dist = space.cross(prepared[c0:c0 + step], sq[c0:c0 + step], prepared, sq)
        dist[np.arange(dist.shape[0]), np.arange(c0, c0 + dist.shape[0])] = 0.0
        c2c_sum[c0:c0 + step] = dist.sum(axis=1)
    if ids.size > 1:
        centroid_to_centroid = c2c_sum / (ids.size - 1)
        mean_c2c = float(c2c_sum.sum() / (ids.size * (ids.size - 1)))
    else:
        centroid_to_centroid = np.full(ids.size, np.nan)
        mean_c2c = float("nan")
    diameters, _ = cluster_diameters(array, labels, quantile=diameter_quantile, space=space)
    dispersion = float(mean_inside.mean()) if ids.size else float("nan")
    separation = float(np.nanmean(min_outside)) if np.isfinite(min_outside).any() else float("nan")
    ratio = lambda a, b: float(a / b) if b and np.isfinite(a) and np.isfinite(b) else float("nan")  # noqa
    return {
        "ids": ids,
        "sizes": sizes,
        "diameter": diameters,
        "centroid": centroids,
        "min_distance_outside": min_outside,
        "mean_distance_inside": mean_inside,
        "centroid_to_centroid": centroid_to_centroid,
        "mean_centroid_to_centroid": mean_c2c,
        "sn_ratio1": ratio(separation, dispersion),
        "sn_ratio2": ratio(mean_c2c, dispersion),
        "metric": space.metric,
        "diameter_quantile": float(diameter_quantile),
        "n_clusters": int(ids.size),
        "n_outliers": int((~valid).sum()),
    }


def _safe_ratio(numerator, denominator):
    """``numerator / denominator`` element-wise, NaN where either is undefined or the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    ok = np.isfinite(numerator) & np.isfinite(denominator) & (denominator != 0)
    return np.divide(numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
                     where=ok)


def signal_to_noise_per_cluster(stats):
    """The seed's two signal-to-noise ratios, one value per cluster, from :func:`cluster_statistics`.

    As in the seed's fine-tuning evaluation (``clustering/metrics.py`` of Cyrilvallez/Unsupervised-improvement-
    of-image-similarity), noise over signal, so lower is better (tighter clusters, further apart):

    - ``diameter_over_separation``: the cluster's ``diameter`` over its separation ``min_distance_outside``
      (the distance from its centroid to the closest point outside it);
    - ``dispersion_over_spacing``: its dispersion ``mean_distance_inside`` (mean distance from its centroid to
      its members) over ``centroid_to_centroid`` (mean distance from its centroid to the other centroids).

    A ratio is NaN where its denominator is 0 or undefined (a single cluster, no point outside).
    The single global ratios of :func:`cluster_statistics` (``sn_ratio1``, ``sn_ratio2``: means first, signal
    over noise) summarise the same quantities the other way up.

    Returns
    -------
    dict
        ``{'diameter_over_separation': float [K], 'dispersion_over_spacing': float [K]}``, in the order of
        ``stats['ids']``.
    """
    return {"diameter_over_separation": _safe_ratio(stats["diameter"], stats["min_distance_outside"]),
            "dispersion_over_spacing": _safe_ratio(stats["mean_distance_inside"], stats["centroid_to_centroid"])}


#: Per-cluster arrays of :func:`cluster_statistics` (saved in ``cluster_stats.npz``).
PER_CLUSTER_KEYS = ("ids", "sizes", "diameter", "centroid", "min_distance_outside", "mean_distance_inside",
                    "centroid_to_centroid")
#: Global values of :func:`cluster_statistics` (saved in ``scores.json``).
GLOBAL_KEYS = ("mean_centroid_to_centroid", "sn_ratio1", "sn_ratio2", "metric", "diameter_quantile",
               "n_clusters", "n_outliers")
