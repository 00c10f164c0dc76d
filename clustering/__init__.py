"""Clustering experiments on image features: does a feature group edited copies of the same image together, and
nothing else?

Modules:

- :mod:`clustering.metrics`: every metric (homogeneity, completeness, v-measure, ARI, AMI, NMI, Hungarian
  accuracy, per-cluster statistics, intersection over union), each defined in its docstring;
- :mod:`clustering.distances`: euclidean / cosine / hamming distances block by block, the condensed distance
  cache, the epsilon and kNN (FAISS) graphs;
- :mod:`clustering.data`: features of a dataset partition and their ground truth;
- :mod:`clustering.hierarchical`, :mod:`clustering.density` (DBSCAN, HDBSCAN), :mod:`clustering.kmeans`: the
  algorithms and the experiments of ``hierarchical.py``, ``DBSCAN.py`` and ``kmeans.py``;
- :mod:`clustering.layout` (result folders), :mod:`clustering.pipeline` (the shared flow),
  :mod:`clustering.plots` and :mod:`clustering.report` (plots, montages, HTML summary).
"""
from .metrics import (adjusted_mutual_info, adjusted_rand_index, cluster_centroids, cluster_diameters,
                      cluster_statistics, completeness, external_scores, homogeneity, hungarian_accuracy,
                      intersection_over_union, normalized_mutual_info, signal_to_noise_per_cluster, v_measure)

__all__ = ["adjusted_mutual_info", "adjusted_rand_index", "cluster_centroids", "cluster_diameters",
           "cluster_statistics", "completeness", "external_scores", "homogeneity", "hungarian_accuracy",
           "intersection_over_union", "normalized_mutual_info", "signal_to_noise_per_cluster", "v_measure"]
