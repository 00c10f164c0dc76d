"""Nearest-neighbour search experiments on extracted features (the seed's ``fast_search``).

Modules:

- :mod:`fast_search.metrics`: every retrieval metric (recall@k, per-attack recall, µAP, recall at 90% precision,
  precision/recall vs distance threshold, ANN recall), defined in their docstrings;
- :mod:`fast_search.index`: the toolkit's one metric vocabulary (names, normalisation, Hamming in bits and the
  one conversion to a fraction) and FAISS index builder, used by clustering and dedup too; FAISS indexes
  (CPU/GPU, float/binary), the exact chunked PyTorch backend and the brute-force path for crop-resistant hashes;
- :mod:`fast_search.search`: the seed's ``Experiment`` and experiment functions (``compare_metrics_Flat``,
  ``compare_k_Flat``, ``compare_nprobe_IVF``...);
- :mod:`fast_search.experiment`: ``run_experiment`` (``search_experiment.py``) and ``format_results_table``;
- :mod:`fast_search.evaluate`: ``retrieval_metrics`` for in-memory features (fine-tuning);
- :mod:`fast_search.plot`: the plots of ``process.py``; :mod:`fast_search.neighbors`: ``explore_neighbors.py``.
"""
