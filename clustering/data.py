"""What is clustered: the features of a dataset (from the feature store), a partition of it, and its ground truth.

The seed clusters ``all_memes`` (the Kaggle memes plus their templates, 250 templates); the ground truth of an
image is its class label, read from the ``labels.csv`` of each dataset folder (:func:`helpers.ground_truth.
dataset_labels`; written by an adapter from the folders or file names when absent: a meme ``<template>_<n>.jpg``
and the template image ``<template>.jpg`` share the label ``<template>``). Images are identified by their path,
so two files with the same name in two sub-folders are two images.

Partitions: ``full`` (every image) and ``clean``, which drops the templates whose memes are not perceptually
identical copies of the template (:data:`CLEAN_EXCLUDED_TEMPLATES`, the seed's list; configurable with
``--exclude-templates``).
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers.datasets import REGISTERED_DATASETS, resolve_dataset, resolve_store_dataset
from helpers.feature_store import FeatureStoreError, load_dataset_features
from helpers.ground_truth import dataset_labels
from helpers.log import get_logger
from helpers.paths import FEATURES_DIR, REPO_ROOT, slugify

from .metrics import encode_labels

logger = get_logger(__name__)

DEFAULT_DATASET = "all_memes"
DEFAULT_ALGORITHM = "SimCLR v2 ResNet50 2x"
PARTITIONS = ("full", "clean")
#: Templates of the Kaggle memes whose memes are not perceptually identical to the template (the seed's list).
CLEAN_EXCLUDED_TEMPLATES = ("zuckerberg", "harold", "netflix-adaptation", "shrek", "so-glad", "who-would-win",
                            "you-vs-the-guy", "skyrim-100")


@dataclass
class ClusteringData:
    """Features to cluster with their image names and ground truth."""

    features: np.ndarray
    names: list
    identities: np.ndarray
    binary: bool
    dim: int
    algorithm: str
    dataset: str
    partition: str
    meta: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.names)

    @property
    def labels_true(self):
        """Ground-truth cluster of each image (integer codes of the identities, in sorted order)."""
        return encode_labels(self.identities)

    @property
    def n_classes(self):
        return int(np.unique(self.identities).size)

    @property
    def algorithm_slug(self):
        """The algorithm's folder name in the feature store (and in the results)."""
        return self.meta.get("slug") or slugify(self.algorithm)

    def image_path(self, index):
        """Absolute path of an image (names are stored relative to the repository root when inside it)."""
        path = Path(self.names[index])
        return path if path.is_absolute() else REPO_ROOT / path


def dataset_store_name(dataset):
    """Name of a dataset in the feature store (:attr:`helpers.datasets.Dataset.store_key`): registered names as
    they are, folders by their folder name plus a digest of their location."""
    dataset = str(dataset)
    if dataset in REGISTERED_DATASETS or ("/" not in dataset and not Path(dataset).is_dir()):
        return dataset
    try:
        return resolve_dataset(dataset).store_key
    except ValueError:
        return Path(dataset).name


def load_clustering_data(dataset=DEFAULT_DATASET, algorithm=DEFAULT_ALGORITHM, partition="full",
                         features_root=FEATURES_DIR, exclude_templates=CLEAN_EXCLUDED_TEMPLATES):
    """Load the features of ``dataset`` by ``algorithm`` and keep the rows of ``partition``.

    Raises
    ------
    helpers.feature_store.FeatureStoreError
        When the features are missing (the message gives the extraction command).
    ValueError
        For an unknown partition, or a partition left empty.
    """
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; expected one of {', '.join(PARTITIONS)}")
    source = resolve_store_dataset(dataset)
    name = source.store_key
    store = load_dataset_features(source, algorithm, root=features_root)
    identities = np.asarray(dataset_labels(source, store.names))
    keep = np.ones(len(store), dtype=bool)
    excluded = {}
    if partition == "clean":
        excluded_set = set(exclude_templates or ())
        keep = ~np.isin(identities, list(excluded_set))
        present = sorted(excluded_set & set(identities.tolist()))
        excluded = {"templates": present, "images": int((~keep).sum()),
                    "absent_templates": sorted(excluded_set - set(present))}
        logger.info("clean partition: removed %d images of %d templates (%s)", excluded["images"], len(present),
                    ", ".join(present) or "none present")
    if not keep.any():
        raise ValueError(f"partition {partition!r} of {name} is empty")
    features = np.ascontiguousarray(store.features[keep] if not keep.all() else np.asarray(store.features))
    names = [n for n, k in zip(store.names, keep) if k]
    if len(names) < 2:
        raise FeatureStoreError(f"{name} / {algorithm}: {len(names)} image(s); clustering needs at least 2")
    return ClusteringData(features=features, names=names, identities=identities[keep], binary=store.binary,
                          dim=store.dim, algorithm=store.name or algorithm, dataset=name, partition=partition,
                          meta=dict(store.meta), excluded=excluded)
