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
``DISC21_references``  ``Datasets/DISC21/references`` (the 1M database of DISC21)
``DISC21_dev_queries`` ``Datasets/DISC21/dev_queries``, ground truth ``DISC21/dev_ground_truth.csv``
``DISC21_final_queries`` ``Datasets/DISC21/final_queries``, ground truth ``DISC21/final_ground_truth.csv``
``DISC21_training``    ``Datasets/DISC21/train`` (training images; also a score-normalisation background)
``Copydays_original``  ``Datasets/Copydays/original``
``Copydays_queries``   ``Datasets/Copydays/{crops,jpegqual,strong}``, ground truth ``Copydays/ground_truth.csv``
                       (written by ``data_retrieval/adapters.py copydays``)
=====================  ===============================================================

The identity of an image is its dataset plus its path inside the dataset's folder
(:meth:`Dataset.relative_names`); which image is a copy of which comes from ground-truth files
(:mod:`helpers.ground_truth`), never from a bare file stem. A path dataset is stored in the feature store under
:attr:`Dataset.store_key` (its folder name plus a digest of its resolved location), so two folders that share a
basename never share a store.
"""
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .image_io import list_images
from .paths import DATASETS_DIR, REPO_ROOT

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
    "DISC21_references": ("DISC21/references",),
    "DISC21_dev_queries": ("DISC21/dev_queries",),
    "DISC21_final_queries": ("DISC21/final_queries",),
    "DISC21_training": ("DISC21/train",),
    "Copydays_original": ("Copydays/original",),
    "Copydays_queries": ("Copydays/crops", "Copydays/jpegqual", "Copydays/strong"),
}

#: ground-truth files of registered query datasets that do not keep theirs in their (single) folder
REGISTERED_GROUND_TRUTH = {
    "DISC21_dev_queries": "DISC21/dev_ground_truth.csv",
    "DISC21_final_queries": "DISC21/final_ground_truth.csv",
    "Copydays_queries": "Copydays/ground_truth.csv",
}


@dataclass
class Dataset:
    """A named collection of image folders."""

    name: str
    folders: list = field(default_factory=list)
    registered: bool = False
    key: str = ""
    ground_truth: str = ""  # the query ground-truth file when it is not <folder>/ground_truth.csv

    @property
    def store_key(self):
        """The dataset's folder name in the feature store: the registered name, or ``<basename>-<digest>`` of
        a path dataset (the digest of its resolved location)."""
        return self.key or self.name

    def relative_names(self, names):
        """Each image's identity inside the dataset: its path relative to the dataset folder (``/``
        separators), prefixed by the folder's name when the dataset has several folders.

        ``names`` are the paths of a store's ``names.txt`` (absolute, or relative to the repository root).
        A dataset without folders (a store made by code, e.g. synthetic features) keeps the names as they are.

        Raises
        ------
        ValueError
            When a name lies outside every folder of the dataset (the store was made from another location).
        """
        if not self.folders:
            return [str(name) for name in names]
        # a folder (or its images) may be reached through symbolic links: try the folder as given and as resolved
        given = [Path(os.path.abspath(folder)) for folder in self.folders]
        roots = [Path(os.path.realpath(folder)) for folder in self.folders]
        prefixes = [f"{Path(folder).name}/" if len(roots) > 1 else "" for folder in self.folders]
        out = []
        for name in names:
            path = Path(str(name))
            path = path if path.is_absolute() else REPO_ROOT / path
            key = _relative_to_any(path, roots, prefixes)
            if key is None:
                key = _relative_to_any(path, given, prefixes)
            if key is None:
                key = _relative_to_any(Path(os.path.realpath(path)), roots, prefixes)
            if key is None:
                raise ValueError(f"dataset {self.name!r}: image {name} is not inside its folder(s) "
                                 f"({', '.join(map(str, self.folders))}); the features were extracted from "
                                 "another location: re-extract them (extract_features.py --force)")
            out.append(key)
        return out

    def path_of(self, key):
        """The file of a relative name (the inverse of :meth:`relative_names`)."""
        if len(self.folders) == 1:
            return Path(self.folders[0]) / key
        head, _, rest = str(key).partition("/")
        for folder in self.folders:
            if Path(folder).name == head:
                return Path(folder) / rest
        raise ValueError(f"dataset {self.name!r} has no folder {head!r}")

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


def resolve_dataset(name_or_path, datasets_dir=None):
    """Return the :class:`Dataset` for a registered name or a folder path.

    A path dataset is named after its folder (``/data/my_photos`` -> ``my_photos``), which is also its name in
    the feature store.

    Raises
    ------
    ValueError
        If it is neither a registered name nor an existing folder.
    """
    key = str(name_or_path)
    datasets_dir = DATASETS_DIR if datasets_dir is None else datasets_dir
    if key in REGISTERED_DATASETS:
        folders = [Path(datasets_dir) / sub for sub in REGISTERED_DATASETS[key]]
        truth = REGISTERED_GROUND_TRUTH.get(key)
        return Dataset(key, folders, registered=True, ground_truth=str(Path(datasets_dir) / truth) if truth else "")
    path = Path(key).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return Dataset(resolved.name, [resolved], key=path_store_key(resolved))
    raise ValueError(f"unknown dataset {key!r}: not a registered name ({', '.join(REGISTERED_DATASETS)}) "
                     f"and not an existing folder")


def path_store_key(folder):
    """``<basename>-<first 10 hex digits of sha256(resolved path)>``: the store key of a folder dataset."""
    resolved = Path(folder).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:10]
    return f"{resolved.name}-{digest}"


def resolve_store_dataset(name_or_path, datasets_dir=None):
    """The :class:`Dataset` whose features a search or clustering reads: a registered name, a folder, or the
    bare name of a store written by code (synthetic features: a dataset without folders)."""
    try:
        return resolve_dataset(name_or_path, datasets_dir)
    except ValueError:
        text = str(name_or_path)
        if os.sep in text or "/" in text or text in (".", "..") or not text:
            raise
        return Dataset(text, [], key=text)


def _relative_to_any(path, roots, prefixes):
    for root, prefix in zip(roots, prefixes):
        try:
            return prefix + PurePosixPath(*path.relative_to(root).parts).as_posix()
        except ValueError:
            continue
    return None


def identity_of(path):
    """The seed's file-name identity of an image: its file stem up to the first underscore.

    Only for naming generated images and reading folders made by older versions: ground truth comes from
    :mod:`helpers.ground_truth` (this convention merges ``IMG_1234`` and ``IMG_5678``).

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
