"""Retrieval validation: a database of originals, queries that are attacked copies, recall@1 each epoch.

The validation set must be disjoint from the training images (checked on the files' contents, SHA-256, so a copy
of a training photo under another name or folder is caught): selecting a checkpoint on images it was trained on
would reward memorisation. A validation folder may hold attacked copies already, described by its
``ground_truth.csv`` (:mod:`helpers.ground_truth`; folders of older versions: ``<id>_<attack>.<ext>`` next to
``<id>.<ext>``); a folder of originals only gets ``copies`` random copy-detection edits per image
(:func:`data_retrieval.attacks.random_edit`), seeded per image.
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from helpers.datasets import resolve_dataset
from helpers.ground_truth import (find_ground_truth, ground_truth_from_names, match_queries,
                                  read_ground_truth)
from helpers.image_io import DEFAULT_MAX_PIXELS, SkipReport
from helpers.log import get_logger
from helpers.seeding import stable_seed

from .data import ImageBank

logger = get_logger(__name__)


@dataclass
class RetrievalSet:
    """Decoded database and query images with their names and ground truth.

    ``query_identities[i]`` is the ``db_names`` entry query ``i`` is a copy of (``None``: no original); when
    ``None``, it is read from the names by the seed's convention (``<id>_<attack>`` is a copy of ``<id>``).
    Distractors are never a query's original.
    """

    db_images: list
    db_names: list
    query_images: list
    query_names: list
    distractor_images: list = field(default_factory=list)
    distractor_names: list = field(default_factory=list)
    query_identities: list = None
    query_attacks: list = None

    def __len__(self):
        return len(self.query_names)

    def truth(self):
        """``(db_identities, query_identities, query_attacks)`` for :func:`fast_search.evaluate.retrieval_metrics`
        (database = originals then distractors)."""
        if self.query_identities is None:
            legacy = ground_truth_from_names([Path(n).name for n in self.query_names],
                                             [Path(n).name for n in self.db_names])
            by_name = {Path(n).name: n for n in self.db_names}
            references = [legacy.references[Path(n).name] for n in self.query_names]
            self.query_identities = [by_name[r] if r else None for r in references]
            self.query_attacks = [legacy.attacks[Path(n).name] for n in self.query_names]
        db = [f"db:{name}" for name in self.db_names] + [f"distractor:{name}" for name in self.distractor_names]
        queries = [f"db:{name}" if name is not None else None for name in self.query_identities]
        return db, queries, self.query_attacks or [None] * len(queries)


def generated_copies(image, identity, copies, seed, families=None):
    """``copies`` random copy-detection edits of ``image``, named ``<identity>_edit<k>``, seeded per image."""
    from data_retrieval.attacks import random_edit

    images, names = [], []
    for k in range(copies):
        rng = np.random.default_rng(stable_seed("validation-copy", seed, identity, k))
        edited, _ = random_edit(image, rng, families=families)
        images.append(edited)
        names.append(f"{identity}_edit{k}")
    return images, names


def file_digest(path):
    """SHA-256 of a file's bytes (the identity of an image's content, whatever its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_validation_set(dataset, train_paths=(), copies=10, seed=0, short_side=None, families=None,
                         report=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Load a validation dataset as a :class:`RetrievalSet`.

    Parameters
    ----------
    dataset : str or Path
        A registered dataset name or a folder.
    train_paths : iterable of path
        The training images; the validation set must not share any (compared by content).
    copies : int
        Edited copies generated per original when the folder holds no attacked copies.
    short_side : int, optional
        Downsize the decoded images (see :class:`finetuning.data.ImageBank`) to save memory and time.

    Raises
    ------
    ValueError
        When the set shares images with the training set, or has no originals with queries.
    """
    report = report if report is not None else SkipReport()
    source = resolve_dataset(dataset)
    paths = source.image_paths(report=report)
    bank = ImageBank(paths, short_side=short_side, report=report, max_pixels=max_pixels)
    train_digests = {file_digest(path) for path in train_paths}
    overlap = [path for path in bank.paths if file_digest(path) in train_digests] if train_digests else []
    if overlap:
        raise ValueError(f"the validation set shares {len(overlap)} images with the training set (e.g. "
                         f"{overlap[:3]}); checkpoint selection needs images the model was not trained on")
    keys = source.relative_names(bank.paths)
    truth_file = find_ground_truth(source.folders, None, source.ground_truth)
    if truth_file is not None:
        truth = read_ground_truth(truth_file)
        is_query = [key in truth.references for key in keys]
    else:
        truth = ground_truth_from_names(keys, keys)
        is_query = [truth.references[key] is not None for key in keys]
    db = [i for i, q in enumerate(is_query) if not q]
    queries = [i for i, q in enumerate(is_query) if q]
    db_images, db_names = [bank.images[i] for i in db], [bank.paths[i] for i in db]
    if not db_images:
        raise ValueError(f"validation set {dataset}: no originals (every image is a query of its ground truth)")
    if queries:
        references, attacks = match_queries(truth, [keys[i] for i in queries], [keys[i] for i in db])
        path_of = {keys[i]: bank.paths[i] for i in db}
        query_images, query_names = [bank.images[i] for i in queries], [bank.paths[i] for i in queries]
        query_identities = [path_of[r] if r is not None else None for r in references]
    else:
        query_images, query_names, query_identities, attacks = [], [], [], []
        for image, name, key in zip(db_images, db_names, [keys[i] for i in db]):
            edited, names = generated_copies(image, key, copies, seed, families)
            query_images.extend(edited)
            query_names.extend(names)
            query_identities.extend([name] * len(edited))
            attacks.extend(["random_edit"] * len(edited))
    orphans = [name for name, ident in zip(query_names, query_identities) if ident is None]
    if orphans:
        logger.warning("validation: %d queries have no original in the set and count as misses (e.g. %s)",
                       len(orphans), orphans[0])
    logger.info("validation set: %d originals, %d queries", len(db_names), len(query_names))
    return RetrievalSet(db_images, db_names, query_images, query_names, query_identities=query_identities,
                        query_attacks=attacks)


@torch.no_grad()
def embed_pil(forward, images, transform, batch_size=64, device="cpu"):
    """Descriptors ``float32 [N, d]`` of in-memory PIL images: ``forward`` maps a ``[B, 3, H, W]`` batch in
    [0, 1] (``transform`` of each image) to ``[B, d]``."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(image) for image in images[start:start + batch_size]]).to(device)
        chunks.append(forward(batch).float().cpu())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def evaluate_retrieval(forward, rset, transform, batch_size=64, device="cpu", metric="cosine", ks=(1, 5, 10)):
    """Recall@k (and the other metrics of :func:`fast_search.evaluate.retrieval_metrics`) of ``forward`` on
    ``rset``: every query searched in the database (plus distractors)."""
    from fast_search.evaluate import retrieval_metrics

    db = embed_pil(forward, rset.db_images + rset.distractor_images, transform, batch_size, device)
    queries = embed_pil(forward, rset.query_images, transform, batch_size, device)
    db_identities, query_identities, attacks = rset.truth()
    return retrieval_metrics(db, db_identities, queries, query_identities, attacks, metric=metric, ks=ks)
