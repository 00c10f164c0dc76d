"""Resumable writing of an extraction pass: images are embedded chunk by chunk and each chunk is written as soon as
it is done (:class:`helpers.feature_store.ChunkedFeatureWriter`), so after a kill the same command continues from
the last finished chunk and writes the same ``features.npy`` as an uninterrupted run.

:class:`StoreTarget` is one output store of a pass (its chunk writer, skip records and resume point);
:func:`run_pass` runs the loader and the model over the chunks still to do and writes them into every target.
"""
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from helpers.feature_store import ChunkedFeatureWriter
from helpers.image_io import SkipReport
from helpers.log import get_logger
from helpers.results import read_json, write_json

from .embedding import _to_numpy
from .loading import make_loader

logger = get_logger(__name__)

DEFAULT_CHUNK_SIZE = 2048
STATE_FILE = "extraction.json"


class StoreTarget:
    """One output store of a pass: a resumable chunk writer with its skip records and resume point."""

    def __init__(self, folder, meta, width, dtype, fingerprint, display, chunk_size, restart):
        """``display``: the names of this pass's images (this rank's shard), chunk ``c`` being
        ``display[c * chunk_size:(c + 1) * chunk_size]``."""
        self.folder = Path(folder)
        self.meta = meta
        self.width = width
        self.dtype = np.dtype(dtype)
        self.display = display
        self.chunk_size = chunk_size
        self.writer = ChunkedFeatureWriter(self.folder)
        state_path = self.writer.partial / STATE_FILE
        previous = read_json(state_path) if state_path.is_file() else None
        if restart or (previous is not None and previous != fingerprint):
            if previous is not None and not restart:
                logger.warning("%s: the interrupted extraction used other settings; starting again", self.folder)
            self.writer.discard()
            self.writer = ChunkedFeatureWriter(self.folder)
        write_json(self.writer.partial / STATE_FILE, fingerprint)
        self.start_chunk = self._resume_point()
        self.skipped = self._earlier_skips()
        self.chunks_written = 0

    def _resume_point(self):
        done = self.writer.completed_names()
        if not done:
            return 0
        position = {name: index for index, name in enumerate(self.display)}
        last = position.get(done[-1])
        end = None if last is None else (last // self.chunk_size + 1) * self.chunk_size
        done_set = set(done)
        if end is None or len(done_set) != len(done) or \
                [name for name in self.display[:end] if name in done_set] != done:
            logger.warning("%s: the partial extraction does not match the image list; starting again", self.folder)
            self.writer.discard()
            self.writer = ChunkedFeatureWriter(self.folder)
            return 0
        logger.info("%s: resuming after %d finished image(s)", self.folder, len(done))
        return end // self.chunk_size

    def _skip_file(self, chunk):
        return self.writer.partial / f"skipped_{chunk:06d}.tsv"

    def _earlier_skips(self):
        items = []
        for chunk in range(self.start_chunk):
            path = self._skip_file(chunk)
            if path.is_file():
                with open(path, encoding="utf-8") as handle:
                    items += [tuple(line.rstrip("\n").split("\t", 1)) for line in handle if line.strip()]
        return items

    def write_chunk(self, chunk, features, names, skipped):
        if chunk < self.start_chunk:
            return
        # The skip record goes first: a chunk counts only once its .npy exists, and a re-run rewrites both.
        with open(self._skip_file(chunk), "w", encoding="utf-8") as handle:
            for path, reason in skipped:
                handle.write(f"{path}\t{reason}\n")
        self.writer.write_chunk(features, names)
        self.skipped.extend(skipped)
        self.chunks_written += 1

    def finalize(self, overwrite):
        if self.start_chunk == 0 and self.chunks_written == 0:  # an empty shard still makes a (0-row) store
            self.writer.write_chunk(np.empty((0, self.width), dtype=self.dtype), [])
        meta = dict(self.meta, skipped=len(self.skipped))
        folder = self.writer.finalize(meta, overwrite=overwrite)
        report = SkipReport()
        for path, reason in self.skipped:
            report.add(path, reason)
        report.write(folder)
        return folder


def batches_by_chunk(start, stop, chunk_size, batch_size, first_chunk):
    """Per chunk (from ``first_chunk``), its batches of indices in ``[start, stop)``; batches never straddle."""
    chunks = []
    chunk = first_chunk
    while start + chunk * chunk_size < stop:
        lo = start + chunk * chunk_size
        hi = min(stop, lo + chunk_size)
        chunks.append((chunk, [list(range(b, min(hi, b + batch_size))) for b in range(lo, hi, batch_size)]))
        chunk += 1
    return chunks


def run_pass(items, display, targets, item_fn, batch_fn, *, start, stop, chunk_size, batch_size, workers,
             device, desc, progress, max_pixels):
    """Extract ``items[start:stop]`` chunk by chunk into ``targets`` (resuming each from its own point)."""
    first = min(target.start_chunk for target in targets)
    chunks = batches_by_chunk(start, stop, chunk_size, batch_size, first)
    if not chunks:
        return 0.0
    batches = [batch for _, chunk_batches in chunks for batch in chunk_batches]
    total = sum(len(batch) for batch in batches)
    # A worker process pays off only with batches to share: one batch is decoded in this process (forking and
    # tearing down the workers cost about 0.2-0.4 s per call, more than a batch of small images takes), and never
    # more workers than batches.
    workers = 0 if len(batches) <= 1 else min(workers, len(batches))
    loader = iter(make_loader(items, item_fn, batches, workers, device, max_pixels))
    prepare = getattr(item_fn, "prepare_batch", None)  # the GPU decode path decodes on the device here
    began = time.perf_counter()
    with tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for chunk, chunk_batches in chunks:
            outputs = [[] for _ in targets]
            names, skipped = [], []
            for _ in chunk_batches:
                indices, batch, failures = next(loader)
                if prepare is not None and batch is not None:
                    indices, batch, more = prepare(indices, batch)
                    failures = failures + more
                    batch = batch if indices else None
                skipped += [(display[index], reason) for index, reason in failures]
                if batch is not None:
                    for k, result in enumerate(batch_fn(batch)):
                        outputs[k].append(result)
                    names += [display[index] for index in indices]
                bar.update(len(indices) + len(failures))
            for target, parts in zip(targets, outputs):
                target.write_chunk(chunk, _to_numpy(parts, target.width, target.dtype), names, skipped)
    return time.perf_counter() - began
