"""The adaptation function (seed 001): a small module learnt on top of *frozen* features so that image pairs that
people (or a dataset) call similar become nearest neighbours.

- :mod:`adaptation.pairs`: pairs from a CSV (``left,right``) or a ground-truth file (``query,reference``), matched
  to feature-store rows, and a split that never lets a test pair share an image with a training pair;
- :mod:`adaptation.losses`: the symmetric InfoNCE loss over the batch;
- :mod:`adaptation.metrics`: the seed's top-k accuracy on held-out pairs;
- :mod:`adaptation.models`: the modules (``original``, ``linear``, ``mlp``) and their checkpoints;
- :mod:`adaptation.train`: N runs (seeds and splits), TensorBoard logs, before/after/PCA results
  (``train_adaptation.py``).

A trained module is a post-processing step like PCA: ``extract_features.py ... --adapt CHECKPOINT``.
"""
