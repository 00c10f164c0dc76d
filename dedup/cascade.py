"""A cascade: a perceptual hash shortlists pairs cheaply, a neural model verifies them.

A pair is a duplicate when its hash distance is at most ``R`` (the shortlist radius) **and** its cosine similarity
is at least ``s``. Only the images of shortlisted pairs are embedded by the model, so the model's cost follows the
number of candidate duplicates, not the size of the collection; the recall cannot exceed the hash's at ``R``.

Calibration (:func:`calibrate_cascade`), on the same edited copies as :mod:`dedup.calibrate`:

- ``R`` is the hash threshold reaching the (low) ``shortlist_precision``: loose, to keep most copies;
- ``s`` is the cosine threshold at which the cascade's precision reaches the target, counting the copies the
  hash misses as misses and the non-copies within ``R`` as candidates (a non-copy ``y`` is left out when the
  cascade itself pairs ``y`` with the copy's original, as in :mod:`dedup.calibrate`).
"""
import numpy as np

from helpers.log import get_logger

from .calibrate import (bulk_cap, check_families, choose_threshold, default_families, make_copies,
                        neighbour_pairs, sample_rows, summarize)
from .features import paired_distances

logger = get_logger(__name__)


class EmbeddingCache:
    """Model embeddings of collection rows, computed on first use (the cascade's only model cost)."""

    def __init__(self, model, paths):
        self.model, self.paths = model, paths
        self.rows = {}
        self.embedded = 0

    def get(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        missing = sorted(set(rows.tolist()) - set(self.rows))
        if missing:
            from helpers.image_io import load_image

            vectors = self.model.images([load_image(self.paths[row]) for row in missing])
            self.rows.update(zip(missing, vectors))
            self.embedded += len(missing)
        if rows.size == 0:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        return np.stack([self.rows[row] for row in rows.tolist()])


def calibrate_cascade(hasher, model, paths, hash_features, cache, precision=0.99, shortlist_precision=0.5,
                      sample_size=100, families=None, copies_per_family=1, seed=0, k=512):
    """Calibrate ``(R, s)`` (see the module docstring).

    Returns
    -------
    radius : float
        Hash shortlist radius ``R`` in bits.
    calibration : dedup.calibrate.Calibration
        Of the cosine distance threshold ``1 - s`` of the cascade.
    """
    families = check_families(families or default_families())
    rows = sample_rows(len(paths), int(sample_size), seed)
    sources, copy_families, images = make_copies(paths, rows, families, copies_per_family, seed)
    hash_copies = hasher.images(images)
    pos_h, negc_h, negs_h, kth = neighbour_pairs(hash_copies, sources, hash_features, True, k=k)
    hash_cap = bulk_cap(rows, hash_features, True, k=min(len(paths), max(k, int(np.ceil(0.01 * len(paths))) + 1)))
    radius, reached = choose_threshold(pos_h, negc_h, negs_h, target=shortlist_precision, cap=hash_cap)
    if not reached:
        raise ValueError(f"{hasher.name} reaches no shortlist precision of {shortlist_precision} here; lower "
                         "--shortlist-precision or use the model alone")
    # the pairs the shortlist keeps, with their copy numbers and collection rows
    from .pairs import knn

    m = len(hash_copies)
    distances, ids = knn(hash_features, hash_copies, min(k, len(paths)), True)
    copy_of_pair, y = np.nonzero((distances <= radius) & (ids != sources[:, None]) & (ids >= 0))
    y = ids[copy_of_pair, y]
    needed = np.flatnonzero(pos_h <= radius)
    copies_needed = sorted(set(needed.tolist()) | set(copy_of_pair.tolist()))
    model_copies = np.zeros((m, model.dim), dtype=np.float32)
    if copies_needed:
        model_copies[copies_needed] = model.images([images[j] for j in copies_needed])
    positive = np.full(m, np.inf)
    positive[needed] = paired_distances(model_copies[needed], cache.get(sources[needed]), False)
    neg_copy = paired_distances(model_copies[copy_of_pair], cache.get(y), False)
    x = sources[copy_of_pair]
    # "y is a duplicate of x already in the collection" is the model's judgement alone (the better judge)
    neg_source = paired_distances(cache.get(x), cache.get(y), False)
    cap = _model_cap(rows, cache, len(paths), seed)
    threshold, reached = choose_threshold(positive, neg_copy, neg_source, target=precision, cap=cap)
    result = summarize(positive, neg_copy, neg_source, copy_families, threshold, precision, reached, len(rows),
                       min(k, len(paths)), kth, cap)
    if not reached:
        logger.warning("the cascade reaches no precision of %.3f here; nothing will be called a duplicate",
                       precision)
    return float(radius), result


def _model_cap(rows, cache, n, seed, others=200, quantile=0.01):
    """The model's bulk cap (see :func:`dedup.calibrate.bulk_cap`), from the sampled images against ``others``
    random collection images (embedding the whole collection is what the cascade avoids)."""
    rng = np.random.default_rng(seed + 1)
    picked = np.sort(rng.choice(n, min(n, others), replace=False))
    a, b = cache.get(rows), cache.get(picked)
    distances = 1.0 - a.astype(np.float64) @ b.astype(np.float64).T
    distances = distances[np.asarray(rows)[:, None] != picked[None, :]]
    return float(np.quantile(distances, quantile)) if distances.size else np.inf


def cascade_pairs(hash_features, cache, radius, threshold, ref_hash=None, ref_cache=None):
    """Pairs within ``radius`` bits whose embeddings are within cosine distance ``threshold``.

    Without a reference: pairs ``(a, b)``, ``a < b``, of one collection; with one: ``(query, reference)``.
    Returns ``a, b, cosine distance`` sorted closest first.
    """
    from .pairs import _sorted, cross_pairs, self_pairs

    if ref_hash is None:
        a, b, _ = self_pairs(hash_features, radius, True)
        other = cache
    else:
        a, b, _ = cross_pairs(hash_features, ref_hash, radius, True)
        other = ref_cache
    if len(a) == 0 or not np.isfinite(threshold):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    d = paired_distances(cache.get(a), other.get(b), False)
    keep = d <= threshold
    return _sorted(a[keep], b[keep], d[keep])
