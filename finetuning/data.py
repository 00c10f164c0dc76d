"""Training data: decoded images held in memory, two-view (contrastive) and triplet datasets, triplet sampling.

Images are decoded once with :func:`helpers.image_io.load_image` and kept in memory, downsized so their shorter
side is a small multiple of the training size: on a CPU, decoding and resizing full photographs every epoch
would cost more than the network itself. Unreadable files are skipped and reported (warning + ``skipped.txt``).
"""
import numpy as np
import torch
from PIL import Image

from helpers.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, SkipReport, load_image
from helpers.log import get_logger
from helpers.seeding import stable_seed

from .augment import seeded_view

logger = get_logger(__name__)


def _downsize(image, short_side):
    if short_side is None or min(image.size) <= short_side:
        return image
    scale = short_side / min(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.BICUBIC, reducing_gap=3.0)


class _LazyImages:
    """Images decoded on access (datasets too large for memory); an unreadable file is replaced by the next
    readable one, with a warning naming it."""

    def __init__(self, paths, short_side, max_pixels=DEFAULT_MAX_PIXELS):
        self.paths, self.short_side, self.max_pixels = list(paths), short_side, max_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                return _downsize(load_image(path, self.max_pixels), self.short_side)
            except ImageLoadError as exc:
                logger.warning("skipping unreadable training image (%s); using the next one", exc)
        raise RuntimeError("no readable training image")


class ImageBank:
    """Decoded RGB images (in memory, or decoded on access), with their paths and ground-truth identities.

    Parameters
    ----------
    paths : list of path
    short_side : int or None
        Downsize every image so its shorter side is at most this many pixels (``None`` keeps the full size).
    report : helpers.image_io.SkipReport, optional
        Collects unreadable files; a warning lists them.
    lazy : bool
        Decode on access instead of up front (for datasets that do not fit in memory; unreadable files are
        then found, reported and replaced during training).
    identities : list, optional
        The class label of each of ``paths`` (triplet training: images of one label are positives; from the
        datasets' ``labels.csv``, :func:`helpers.ground_truth.dataset_labels`); by default each image is its own
        identity.
    max_pixels : int or None
        Images of more pixels are skipped and reported (``--max-pixels``; ``None``: no limit).
    """

    def __init__(self, paths, short_side=None, report=None, lazy=False, identities=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
        self.report = report if report is not None else SkipReport()
        label_of = dict(zip(map(str, paths), identities)) if identities is not None else None
        if lazy:
            self.paths = [str(path) for path in paths]
            self.images = _LazyImages(self.paths, short_side, max_pixels)
            self.identities = [label_of[p] for p in self.paths] if label_of else list(self.paths)
            return
        self.images, self.paths = [], []
        for path in paths:
            try:
                image = load_image(path, max_pixels)
            except ImageLoadError as exc:
                self.report.add(path, str(exc))
                continue
            self.images.append(_downsize(image, short_side))
            self.paths.append(str(path))
        if self.report:
            self.report.warn(logger)
        self.identities = [label_of[p] for p in self.paths] if label_of else list(self.paths)

    def __len__(self):
        return len(self.images)


class TwoViewDataset(torch.utils.data.Dataset):
    """Two augmented views of each image (``(view1, view2, index)``), seeded by ``(seed, epoch, index)``."""

    def __init__(self, bank, transform, seed=0):
        self.bank, self.transform, self.seed, self.epoch = bank, transform, int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.bank)

    def __getitem__(self, index):
        image = self.bank.images[index]
        return (seeded_view(self.transform, image, self.seed, self.epoch, index, 0),
                seeded_view(self.transform, image, self.seed, self.epoch, index, 1),
                index)


def sample_triplets(identities, seed, epoch=0):
    """One epoch of (anchor, positive, negative) index triples, one per item, in a seeded random order.

    The positive is another item of the anchor's identity (an attacked copy, the same class) when there is one,
    otherwise the anchor itself (its second augmented view is then the positive); the negative is drawn from
    the other identities.

    Raises
    ------
    ValueError
        With fewer than two identities (no negative exists).
    """
    identities = [str(identity) for identity in identities]
    labels, codes = np.unique(identities, return_inverse=True)
    if len(labels) < 2:
        raise ValueError("triplet training needs at least two identities (images with different names)")
    rng = np.random.default_rng(stable_seed("triplets", seed, epoch))
    members = [np.flatnonzero(codes == code) for code in range(len(labels))]
    triplets = []
    for anchor in rng.permutation(len(identities)):
        same = members[codes[anchor]]
        others = same[same != anchor]
        positive = int(rng.choice(others)) if len(others) else int(anchor)
        while True:
            negative = int(rng.integers(len(identities)))
            if codes[negative] != codes[anchor]:
                break
        triplets.append((int(anchor), positive, negative))
    return np.asarray(triplets, dtype=np.int64)


class TripletDataset(torch.utils.data.Dataset):
    """Augmented (anchor, positive, negative) images of :func:`sample_triplets`, re-drawn every epoch."""

    def __init__(self, bank, transform, seed=0):
        self.bank, self.transform, self.seed = bank, transform, int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.triplets = sample_triplets(self.bank.identities, self.seed, self.epoch)

    def __len__(self):
        return len(self.triplets)

    def __getitem__(self, index):
        views = [seeded_view(self.transform, self.bank.images[item], self.seed, self.epoch, index, role)
                 for role, item in enumerate(self.triplets[index])]
        return views[0], views[1], views[2], index
