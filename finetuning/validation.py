"""Retrieval validation: a database of originals, queries that are attacked copies, recall@1 each epoch.

The validation set must be disjoint from the training images (checked on ground-truth identities, see
:func:`helpers.datasets.identity_of`): selecting a checkpoint on images it was trained on would reward
memorisation. A validation folder may hold attacked copies already (``<id>_<attack>.<ext>`` next to
``<id>.<ext>``, as written by ``data_retrieval/generate_attacks.py``); a folder of originals only gets
``copies`` random copy-detection edits per image (:func:`data_retrieval.attacks.random_edit`), seeded per image.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from helpers.datasets import attack_of, identity_of, resolve_dataset
from helpers.image_io import DEFAULT_MAX_PIXELS, SkipReport
from helpers.log import get_logger
from helpers.seeding import stable_seed

from .data import ImageBank

logger = get_logger(__name__)


@dataclass
class RetrievalSet:
    """Decoded database and query images with their names (ground truth through the names)."""

    db_images: list
    db_names: list
    query_images: list
    query_names: list
    distractor_images: list = field(default_factory=list)
    distractor_names: list = field(default_factory=list)

    def __len__(self):
        return len(self.query_names)

    def identities(self):
        return {identity_of(name) for name in self.db_names}


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


def build_validation_set(dataset, train_identities=(), copies=10, seed=0, short_side=None, families=None,
                         report=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Load a validation dataset as a :class:`RetrievalSet`.

    Parameters
    ----------
    dataset : str or Path
        A registered dataset name or a folder.
    train_identities : iterable of str
        Identities of the training images; the validation set must not share any.
    copies : int
        Edited copies generated per original when the folder holds no attacked copies.
    short_side : int, optional
        Downsize the decoded images (see :class:`finetuning.data.ImageBank`) to save memory and time.

    Raises
    ------
    ValueError
        When the set shares identities with the training set, or has no originals with queries.
    """
    report = report if report is not None else SkipReport()
    paths = resolve_dataset(dataset).image_paths(report=report)
    bank = ImageBank(paths, short_side=short_side, report=report, max_pixels=max_pixels)
    overlap = sorted(set(bank.identities) & set(map(str, train_identities)))
    if overlap:
        raise ValueError(f"the validation set shares {len(overlap)} identities with the training set (e.g. "
                         f"{overlap[:3]}); checkpoint selection needs images the model was not trained on")
    db_images, db_names, query_images, query_names = [], [], [], []
    for image, path in zip(bank.images, bank.paths):
        (query_images if attack_of(path) else db_images).append(image)
        (query_names if attack_of(path) else db_names).append(path)
    if not db_images:
        raise ValueError(f"validation set {dataset}: no originals (files named <id>.<ext>)")
    if not query_images:
        for image, name in zip(db_images, db_names):
            edited, names = generated_copies(image, identity_of(name), copies, seed, families)
            query_images.extend(edited)
            query_names.extend(names)
    known = {identity_of(name) for name in db_names}
    orphans = [name for name in query_names if identity_of(name) not in known]
    if orphans:
        logger.warning("validation: %d queries have no original in the set and count as misses (e.g. %s)",
                       len(orphans), orphans[0])
    logger.info("validation set: %d originals, %d queries", len(db_names), len(query_names))
    return RetrievalSet(db_images, db_names, query_images, query_names)


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
    return retrieval_metrics(db, list(rset.db_names) + list(rset.distractor_names), queries,
                             list(rset.query_names), metric=metric, ks=ks)
