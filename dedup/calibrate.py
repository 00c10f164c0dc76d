"""The calibrated threshold: the loosest threshold that keeps a target precision on the user's own images.

What is measured (:func:`calibrate`):

1. a sample of the collection (``sample_size`` images, seeded) is edited with the project's attack generator
   (:func:`data_retrieval.attacks.random_edit`, one draw per edit family and copy, continuous parameters);
2. each edited copy ``c`` of a sampled image ``x`` is compared with every image ``y`` of the collection: the pair
   ``(c, x)`` is a true pair, a pair ``(c, y)`` with ``y != x`` is a *non-copy*, unless ``y`` is itself within
   the threshold of ``x`` (then ``y`` is a duplicate already in the collection and ``c`` is a copy of it too:
   such pairs are left out, not counted as errors, so duplicates in the collection do not drag the threshold
   down);
3. at a threshold ``t``: ``TP(t)`` = true pairs within ``t``, ``FP(t)`` = non-copies within ``t``; the chosen
   threshold is the largest ``t`` at which the precision ``TP / (TP + FP)`` reaches the target, among the
   thresholds below the 1st percentile of the distances between the sampled images and the collection (a
   threshold that pairs an image with 1 % of the collection is not a duplicate threshold; above it nearly every
   pair would be left out as "a duplicate already there");
4. the expected recall at that threshold is printed per edit family: the share of that family's copies whose
   original lies within the threshold.

Duplicates already in the collection that are farther than ``t`` from the sampled image count as false pairs:
the estimate is then conservative (a stricter threshold, lower recall) on collections full of duplicates. The
precision is the one of "an edited copy of one of my images, matched against my collection"; pairs of two
unrelated originals of the collection that fall within the threshold are part of ``FP`` through the copies
(edited copies of ``x`` land near ``y`` when ``x`` and ``y`` are near).
"""
from dataclasses import asdict, dataclass, field

import numpy as np

from helpers.image_io import ImageLoadError, load_image
from helpers.log import get_logger
from helpers.seeding import stable_seed

from .features import paired_distances

logger = get_logger(__name__)

#: The edit families of the calibration copies: every family of :data:`data_retrieval.attacks.RANDOM_EDITS`
#: (``chain``, 2-3 edits in a row, can be added by name).
def default_families():
    from data_retrieval.attacks import RANDOM_EDITS

    return tuple(RANDOM_EDITS)


def check_families(families):
    from data_retrieval.attacks import RANDOM_EDITS

    valid = list(RANDOM_EDITS) + ["chain"]
    unknown = [name for name in families if name not in valid]
    if unknown:
        raise ValueError(f"unknown edit family {unknown[0]!r}; valid families: {', '.join(valid)}")
    return list(families)


def edited_copy(image, family, seed):
    """One edited copy of a PIL image by one family of the attack generator (``chain``: 2-3 families)."""
    from data_retrieval.attacks import random_edit

    rng = np.random.default_rng(seed)
    if family == "chain":
        return random_edit(image, rng, chain_probability=1.0)[0]
    return random_edit(image, rng, families=[family], chain_probability=0.0)[0]


def sample_rows(n, sample_size, seed=0):
    """``sample_size`` distinct row numbers out of ``n`` (all of them when ``n`` is smaller), sorted."""
    if sample_size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(stable_seed("calibration-sample", seed)).choice(n, sample_size,
                                                                                          replace=False))


def make_copies(paths, rows, families, copies_per_family=1, seed=0):
    """Edited copies of the images ``paths[rows]``.

    Returns
    -------
    sources : int64 array
        The collection row of each copy's original.
    copy_families : list of str
    images : list of PIL images
    """
    sources, copy_families, images = [], [], []
    for row in rows:
        try:
            image = load_image(paths[row])
        except ImageLoadError as exc:  # read before, unreadable now: leave it out of the sample
            logger.warning("calibration: %s", exc)
            continue
        for family in families:
            for j in range(copies_per_family):
                images.append(edited_copy(image, family, stable_seed(seed, paths[row], family, j)))
                sources.append(int(row))
                copy_families.append(family)
    return np.asarray(sources, dtype=np.int64), copy_families, images


def neighbour_pairs(copies, sources, collection, binary, k=512, batch_size=1024):
    """The pairs the calibration counts.

    Parameters
    ----------
    copies : array [M, ...]
        Features of the edited copies (packed bits, or L2-normalised floats).
    sources : int64 [M]
        Row of each copy's original in ``collection``.
    collection : array [N, ...]
    k : int
        Non-copies are taken among the ``k`` nearest collection images of each copy (all of them when ``N <= k``).

    Returns
    -------
    positive : float64 [M]
        ``d(copy, its original)``.
    neg_copy : float64 [P]
        ``d(copy, y)`` of each (copy, other collection image) pair among the ``k`` nearest.
    neg_source : float64 [P]
        ``d(original, y)`` of the same pairs.
    kth : float64 [M]
        Distance of each copy's ``k``-th neighbour (``inf`` when every collection image was compared).
    """
    from .pairs import knn

    n = len(collection)
    k = min(int(k), n)
    positive = paired_distances(copies, collection[sources], binary)
    neg_copy, neg_source, kth = [], [], np.full(len(copies), np.inf)
    for start in range(0, len(copies), batch_size):
        stop = min(len(copies), start + batch_size)
        distances, ids = knn(collection, copies[start:stop], k, binary)
        if k < n:
            kth[start:stop] = distances[:, -1]
        src = sources[start:stop]
        keep = (ids != src[:, None]) & (ids >= 0)
        rows, cols = np.nonzero(keep)
        y = ids[rows, cols]
        neg_copy.append(distances[rows, cols].astype(np.float64))
        neg_source.append(paired_distances(collection[src[rows]], collection[y], binary))
    return positive, np.concatenate(neg_copy), np.concatenate(neg_source), kth


def precision_curve(positive, neg_copy, neg_source, thresholds):
    """``TP``, ``FP`` and precision at each threshold (pairs within = distance ``<= t``).

    A non-copy ``(c, y)`` counts at ``t`` when ``d(c, y) <= t < d(x, y)``: within the threshold of the copy but
    not of its original (else ``y`` is a duplicate of the original and the pair is right).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = np.searchsorted(np.sort(positive), thresholds, side="right")
    valid = neg_copy < neg_source
    a, b = np.sort(neg_copy[valid]), np.sort(neg_source[valid])
    fp = np.searchsorted(a, thresholds, side="right") - np.searchsorted(b, thresholds, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return tp, fp, precision


def choose_threshold(positive, neg_copy, neg_source, target=0.99, cap=np.inf):
    """The calibrated threshold (see the module docstring): the largest candidate ``t <= cap`` whose precision
    reaches ``target``.

    ``cap`` keeps the choice out of the bulk of the non-copy distances, where nearly every image is within ``t``
    of every other one, so nearly every pair is left out as "a duplicate already in the collection" and the
    precision climbs back for the wrong reason.

    Returns
    -------
    threshold : float
        ``-inf`` when no threshold reaches the target (then nothing is a duplicate).
    reached : bool
    """
    if not 0 < target < 1:
        raise ValueError(f"the target precision must be in (0, 1), got {target}")
    candidates = np.unique(np.concatenate([positive, neg_copy]))
    candidates = candidates[np.isfinite(candidates) & (candidates <= cap)]
    if candidates.size == 0:
        return -np.inf, False
    _, _, precision = precision_curve(positive, neg_copy, neg_source, candidates)
    ok = np.flatnonzero(precision >= target)
    if ok.size == 0:
        return -np.inf, False
    return float(candidates[ok[-1]]), True


def bulk_cap(source_rows, collection, binary, quantile=0.01, k=None):
    """The ``quantile`` of the distances between sampled images and the rest of the collection: a threshold that
    pairs an image with more than this share of the collection is not a duplicate threshold."""
    from .pairs import knn

    n = len(collection)
    k = n if k is None else min(int(k), n)
    distances, ids = knn(collection, collection[source_rows], k, binary)
    values = distances[ids != np.asarray(source_rows)[:, None]]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.inf
    # the k nearest are the lowest k of n - 1: the quantile of all pairs is this order statistic among them
    position = quantile * (n - 1) * len(source_rows)
    values = np.sort(values)
    return float(values[min(len(values) - 1, int(position))])


@dataclass
class Calibration:
    """A calibrated threshold and what it is expected to achieve."""

    threshold: float
    target_precision: float
    reached: bool
    precision: float
    recall: float
    recall_per_family: dict
    n_sample: int
    n_copies: int
    n_non_copy_pairs: int
    n_duplicate_pairs_left_out: int
    n_copies_truncated: int
    k: int
    cap: float = float('inf')
    families: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)


def summarize(positive, neg_copy, neg_source, copy_families, threshold, target, reached, n_sample, k, kth,
              cap=np.inf):
    """A :class:`Calibration` of a chosen threshold."""
    tp, fp, precision = precision_curve(positive, neg_copy, neg_source, [threshold])
    families = list(dict.fromkeys(copy_families))
    per_family = {}
    copy_families = np.asarray(copy_families)
    for family in families:
        mask = copy_families == family
        per_family[family] = {"recall": float(np.mean(positive[mask] <= threshold)), "n": int(mask.sum())}
    left_out = int(np.sum((neg_copy <= threshold) & (neg_source <= threshold)))
    return Calibration(threshold=float(threshold), target_precision=float(target), reached=bool(reached),
                       precision=float(precision[0]), recall=float(np.mean(positive <= threshold)),
                       recall_per_family=per_family, n_sample=int(n_sample), n_copies=int(len(positive)),
                       n_non_copy_pairs=int(len(neg_copy)), n_duplicate_pairs_left_out=left_out,
                       n_copies_truncated=int(np.sum(kth <= threshold)), k=int(k), families=families,
                       cap=float(cap))


def calibrate(featurizer, paths, features, precision=0.99, sample_size=100, families=None, copies_per_family=1,
              seed=0, k=512):
    """Calibrate a threshold on a collection (see the module docstring).

    Parameters
    ----------
    featurizer : dedup.features.Featurizer
    paths : list of str
        The collection's images, rows of ``features``.
    features : array
        Their features.
    precision : float
        Target precision.
    sample_size : int
        Images of the collection that get edited copies.
    families : sequence of str, optional
        Edit families (default: :func:`default_families`).
    copies_per_family : int
    seed : int
    k : int
        Non-copies come from each copy's ``k`` nearest collection images.

    Returns
    -------
    Calibration
    """
    if len(paths) < 2:
        raise ValueError("calibration needs a collection of at least 2 images")
    families = check_families(families or default_families())
    rows = sample_rows(len(paths), int(sample_size), seed)
    sources, copy_families, images = make_copies(paths, rows, families, copies_per_family, seed)
    if not images:
        raise ValueError("no image of the calibration sample could be read")
    copies = featurizer.images(images)
    positive, neg_copy, neg_source, kth = neighbour_pairs(copies, sources, features, featurizer.binary, k=k)
    cap = bulk_cap(rows, features, featurizer.binary, k=min(len(paths), max(k, int(np.ceil(0.01 * len(paths))) + 1)))
    threshold, reached = choose_threshold(positive, neg_copy, neg_source, target=precision, cap=cap)
    result = summarize(positive, neg_copy, neg_source, copy_families, threshold, precision, reached, len(rows),
                       min(k, len(paths)), kth, cap)
    if not reached:
        logger.warning("no threshold reaches precision %.3f with %s on this collection: nothing will be called a "
                       "duplicate; try a neural model, a lower --precision or an explicit threshold",
                       precision, featurizer.name)
    if result.n_copies_truncated:
        logger.warning("%d calibration copies have more than k=%d collection images within the threshold; the "
                       "false pairs beyond them were not counted (raise --calibration-k)", result.n_copies_truncated,
                       k)
    return result
