"""A folder to test duplicate finders on: originals, edited copies of each, and unrelated photos, with its ground
truth; and pair precision / recall of a finder's pairs against it.

The ground truth is written as ``ground_truth.csv`` (``query,reference,attack``: an edited copy, its original,
the edit family; paths relative to the folder), the project's ground-truth file format, written and read by
:mod:`helpers.ground_truth`.
"""
import itertools
from pathlib import Path

import numpy as np

from helpers.ground_truth import GROUND_TRUTH_FILE, write_ground_truth
from helpers.ground_truth import read_ground_truth as shared_read_ground_truth
from helpers.image_io import load_image
from helpers.seeding import stable_seed

from .calibrate import edited_copy

#: Everyday duplicate edits: re-encoded, resized, cropped, colour-adjusted, with text added.
EVERYDAY_FAMILIES = ("jpeg", "scale", "crop", "enhancement", "text")
GROUND_TRUTH = GROUND_TRUTH_FILE


def _image(item):
    return load_image(item) if isinstance(item, (str, Path)) else item.convert("RGB")


def build_folder(folder, originals, unrelated, families=EVERYDAY_FAMILIES, seed=0, max_side=None):
    """Write ``originals`` (each with one edited copy per family) and ``unrelated`` images into ``folder``.

    Parameters
    ----------
    folder : path
        Created; images go to ``folder/originals``, ``folder/copies``, ``folder/unrelated`` (JPEG quality 95 for
        photos, so the folder looks like a photo collection).
    originals, unrelated : sequences of PIL images or paths
    families : sequence of str
        Edit families of :func:`data_retrieval.attacks.random_edit` (one copy per family).
    max_side : int, optional
        Downscale every image so its longer side is at most this (keeps the tests fast).

    Returns
    -------
    Path of ``ground_truth.csv``.
    """
    folder = Path(folder)
    for sub in ("originals", "copies", "unrelated"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []

    def fit(image):
        if max_side and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side))
        return image

    for number, item in enumerate(originals):
        image = fit(_image(item))
        name = f"originals/photo{number:04d}.jpg"
        image.save(folder / name, quality=95)
        for family in families:
            copy = edited_copy(image, family, stable_seed("testset", seed, number, family))
            copy_name = f"copies/photo{number:04d}_{family}.jpg"
            copy.save(folder / copy_name, quality=95)
            rows.append((copy_name, name, family))
    for number, item in enumerate(unrelated):
        fit(_image(item)).save(folder / f"unrelated/other{number:04d}.jpg", quality=95)
    # one folder holds originals and copies, so both columns are relative to it (helpers.ground_truth's format)
    return write_ground_truth(folder / GROUND_TRUTH, rows)


def read_ground_truth(folder):
    """``[(copy, original, family)]`` as absolute resolved paths, from ``folder/ground_truth.csv``
    (:func:`helpers.ground_truth.read_ground_truth`)."""
    folder = Path(folder)
    return [(str((folder / query).resolve()), str((folder / reference).resolve()), attack)
            for query, reference, attack in shared_read_ground_truth(folder / GROUND_TRUTH).rows()]


def true_pairs(ground_truth):
    """Every unordered pair of images showing the same original (original-copy and copy-copy), and the family
    of each original-copy pair."""
    groups, families = {}, {}
    for copy, original, family in ground_truth:
        groups.setdefault(original, {original}).add(copy)
        families[frozenset((copy, original))] = family
    pairs = set()
    for members in groups.values():
        pairs.update(frozenset(pair) for pair in itertools.combinations(sorted(members), 2))
    return pairs, families


def pair_scores(found, ground_truth):
    """Pair precision, pair recall, and the recall of original-copy pairs per edit family.

    Parameters
    ----------
    found : iterable of (path, path)
        The pairs a finder reported (any order, paths resolved or not).
    ground_truth : list of (copy, original, family)
    """
    truth, families = true_pairs(ground_truth)
    found = {frozenset((str(Path(a).resolve()), str(Path(b).resolve()))) for a, b in found if a != b}
    hits = found & truth
    per_family = {}
    for pair, family in families.items():
        entry = per_family.setdefault(family, [0, 0])
        entry[0] += pair in found
        entry[1] += 1
    return {
        "found_pairs": len(found), "true_pairs": len(truth), "correct_pairs": len(hits),
        "pair_precision": len(hits) / len(found) if found else 1.0,
        "pair_recall": len(hits) / len(truth) if truth else 1.0,
        "recall_per_family": {family: hit / total for family, (hit, total) in per_family.items()},
    }


def synthetic_images(count, seed=0, width=160, height=120):
    """Generated photo-like images (for tests), each different."""
    from PIL import Image, ImageDraw

    images = []
    for index in range(count):
        rng = np.random.default_rng(stable_seed("synthetic", seed, index))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([128 + 100 * np.sin(xx / (4 + 20 * rng.random()) + rng.random() * 6),
                         128 + 100 * np.cos(yy / (4 + 20 * rng.random()) + rng.random() * 6),
                         128 + 100 * np.sin((xx * rng.uniform(-1, 1) + yy) / (5 + 20 * rng.random()))], axis=-1)
        image = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
        images.append(image)
    return images
