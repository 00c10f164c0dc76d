"""Datasets: registered names, folder paths, and the ground-truth identity convention.

A dataset is either a registered name (below) or a path to a folder of images. Registered names map to folders
under ``Datasets/`` (see ``Datasets/README.md`` for how to obtain each one):

=====================  ===============================================================
``BSDS500_original``   ``Datasets/BSDS500/Original``
``BSDS500_attacks``    ``Datasets/BSDS500/Attacks`` (``data_retrieval/generate_attacks.py``)
``Kaggle_templates``   ``Datasets/Kaggle_memes/Templates``
``Kaggle_memes``       ``Datasets/Kaggle_memes/Memes``
``all_memes``          memes + templates
``Flickr500K``         ``Datasets/Flickr500K`` (sub-folders 0..49, images sorted by number)
``demo``               ``Datasets/demo/Original`` (built by ``demo.py`` from scikit-image's photos)
``demo_attacks``       ``Datasets/demo/Attacks``
``demo_memes``         ``Datasets/demo/Memes`` (meme builder on the demo photos)
``demo_templates``     ``Datasets/demo/Templates``
=====================  ===============================================================

Ground truth, the seed's convention (:func:`identity_of`): the identity of an image is its file stem up to the
first underscore. A query ``<id>_<attack>.<ext>`` matches the database image ``<id>.<ext>``; a meme
``<template>_<rest>`` belongs to template ``<template>``. Identities therefore must not contain underscores.
"""
from dataclasses import dataclass, field
from pathlib import Path

from .image_io import list_images
from .paths import DATASETS_DIR

REGISTERED_DATASETS = {
    "BSDS500_original": ("BSDS500/Original",),
    "BSDS500_attacks": ("BSDS500/Attacks",),
    "Kaggle_templates": ("Kaggle_memes/Templates",),
    "Kaggle_memes": ("Kaggle_memes/Memes",),
    "all_memes": ("Kaggle_memes/Memes", "Kaggle_memes/Templates"),
    "Flickr500K": ("Flickr500K",),
    "demo": ("demo/Original",),
    "demo_attacks": ("demo/Attacks",),
    "demo_memes": ("demo/Memes",),
    "demo_templates": ("demo/Templates",),
    "demo_all_memes": ("demo/Memes", "demo/Templates"),
}


@dataclass
class Dataset:
    """A named collection of image folders."""

    name: str
    folders: list = field(default_factory=list)
    registered: bool = False

    def image_paths(self, report=None):
        """All image files of the dataset, folder by folder, each in natural sorted order.

        Raises
        ------
        FileNotFoundError
            When a folder is missing, with a hint on how to obtain a registered dataset.
        """
        paths = []
        for folder in self.folders:
            if not Path(folder).is_dir():
                hint = " (see Datasets/README.md for how to obtain it)" if self.registered else ""
                raise FileNotFoundError(f"dataset {self.name!r}: folder not found: {folder}{hint}")
            paths.extend(list_images(folder, report=report))
        return paths


def resolve_dataset(name_or_path, datasets_dir=DATASETS_DIR):
    """Return the :class:`Dataset` for a registered name or a folder path.

    A path dataset is named after its folder (``/data/my_photos`` -> ``my_photos``), which is also its name in
    the feature store.

    Raises
    ------
    ValueError
        If it is neither a registered name nor an existing folder.
    """
    key = str(name_or_path)
    if key in REGISTERED_DATASETS:
        folders = [Path(datasets_dir) / sub for sub in REGISTERED_DATASETS[key]]
        return Dataset(key, folders, registered=True)
    path = Path(key).expanduser()
    if path.is_dir():
        return Dataset(path.resolve().name, [path.resolve()])
    raise ValueError(f"unknown dataset {key!r}: not a registered name ({', '.join(REGISTERED_DATASETS)}) "
                     f"and not an existing folder")


def identity_of(path):
    """Ground-truth identity of an image: its file stem up to the first underscore.

    >>> identity_of("Attacks/100007_gaussian_noise_0.01.png")
    '100007'
    >>> identity_of("Memes/who-would-win_123.jpg")
    'who-would-win'
    """
    return Path(str(path)).stem.split("_", 1)[0]


def attack_of(path):
    """The attack (edit) ID of a query name, or ``None`` for an original.

    >>> attack_of("100007_jpg_compression_50.png")
    'jpg_compression_50'
    """
    parts = Path(str(path)).stem.split("_", 1)
    return parts[1] if len(parts) == 2 else None
