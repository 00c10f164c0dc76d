"""Augmentation policies: the seed's SimCLR policy and the copy-detection policy (edits that match the attacks).

Both work on PIL images and return ``[3, size, size]`` float tensors in ``[0, 1]`` (the model's own
normalisation is applied inside the training wrapper, see :mod:`finetuning.models`).

Randomness is per sample: :func:`seeded_view` seeds every view from ``(seed, epoch, index, view)`` with
:func:`helpers.seeding.stable_seed`, so an epoch draws the same views whatever the number of workers or
processes, and a resumed run continues exactly.
"""
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from helpers.seeding import stable_seed


def blur_kernel_size(size):
    """Gaussian blur kernel of SimCLR: 10% of the image size, made odd (and at least 3)."""
    kernel = int(0.1 * size)
    kernel = kernel + 1 if kernel % 2 == 0 else kernel
    return max(3, kernel)


def simclr_transform(size=224, jitter=1.0):
    """The SimCLR augmentation policy of the seed.

    Random resized crop to ``size``, horizontal flip, colour jitter of strength ``jitter`` (brightness, contrast
    and saturation ``0.8 * s``, hue ``0.2 * s``) applied with probability 0.8, grayscale with probability 0.2,
    Gaussian blur (kernel 10% of ``size``, sigma in [0.1, 2]) with probability 0.5, then ``ToTensor``.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    s = float(jitter)
    return T.Compose([
        T.RandomResizedCrop(size),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
    ])


def eval_resize(image, size):
    """The whole image resized to ``size x size`` (PIL bilinear, antialiased): the evaluation view.

    Copy detection must see the whole picture (a centre crop would cut away the parts that a crop attack kept).
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    return image.resize((int(size), int(size)), Image.BILINEAR)


class EvalResize:
    """:func:`eval_resize` as a transform object (picklable, for data-loader workers)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, image):
        return eval_resize(image, self.size)


class CropOrWhole:
    """A random resized crop with probability ``p``, else the whole image resized (:class:`EvalResize`).

    (``torchvision``'s ``RandomChoice`` draws from Python's ``random``, which :func:`seeded_view` does not seed.)
    """

    def __init__(self, size, scale=(0.4, 1.0), p=0.5):
        self.crop, self.whole, self.p = T.RandomResizedCrop(size, scale=scale), EvalResize(size), float(p)

    def __call__(self, image):
        return self.crop(image) if float(torch.rand(1)) < self.p else self.whole(image)


def eval_transform(size=224):
    """Deterministic view for validation and search: :func:`eval_resize` then ``ToTensor``."""
    return T.Compose([EvalResize(size), T.ToTensor()])


class CopyDetectionAugment:
    """Copy-detection augmentation (SSCD-like): the edits the queries will undergo, then a SimCLR-style view.

    With probability ``p_edit`` one random edit chain of :func:`data_retrieval.attacks.random_edit` is applied
    (every attack family: crops, rotations, flips, shears, noise, strong blur, JPEG, colour, text and emoji
    overlays, padding, chains...); then, with probability ``crop_prob``, a random resized crop (``scale``), else
    the whole image squashed to ``size x size`` as at search time (:func:`eval_resize`); then a horizontal flip
    (p 0.5; none when ``flip`` is False, or by default when ``families`` is given without ``"flip"``: flips are
    then held out), a colour jitter of strength ``jitter`` (p 0.8), grayscale (p 0.2) and blur (p 0.5, as SimCLR).

    Call as ``augment(image, rng)`` with a ``numpy.random.Generator`` (the edit's randomness); the torchvision
    part uses torch's generator (seeded per sample by :func:`seeded_view`).
    """

    def __init__(self, size=224, jitter=0.5, p_edit=0.9, scale=(0.4, 1.0), families=None, crop_prob=0.5,
                 flip=None):
        from data_retrieval.attacks import RANDOM_EDITS, random_edit  # only this mode needs the attacks

        if families is not None:
            unknown = [name for name in families if name not in RANDOM_EDITS and name != "chain"]
            if unknown or not [name for name in families if name != "chain"]:
                raise ValueError(f"unknown or missing edit families {unknown}; choose from "
                                 f"{', '.join(RANDOM_EDITS)}, chain")
        self.random_edit = random_edit
        self.families = None if families is None else list(families)
        self.size = int(size)
        self.p_edit = float(p_edit)
        s = float(jitter)
        # A restricted family list without "flip" means flips are held out: the view must not flip either.
        self.flip = (families is None or "flip" in families) if flip is None else bool(flip)
        self.view = T.Compose([
            CropOrWhole(self.size, scale=tuple(scale), p=crop_prob),
            T.RandomHorizontalFlip(p=0.5 if self.flip else 0.0),
            T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(blur_kernel_size(self.size), sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
        ])

    def __call__(self, image, rng):
        if rng.random() < self.p_edit:
            edited, _ = self.random_edit(image, rng, families=self.families)
            if isinstance(edited, Image.Image):
                image = edited.convert("RGB") if edited.mode != "RGB" else edited
        return self.view(image)


def seeded_view(transform, image, seed, epoch, index, view):
    """Apply ``transform`` to ``image`` with randomness fixed by ``(seed, epoch, index, view)``.

    Torch's global generator is forked (restored afterwards), so the training loop's own randomness is not
    disturbed. Transforms that take a NumPy generator (``CopyDetectionAugment``) get one from the same seed.
    """
    sample_seed = stable_seed("view", seed, epoch, index, view)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed)
        if isinstance(transform, CopyDetectionAugment):
            return transform(image, np.random.default_rng(sample_seed))
        return transform(image)
