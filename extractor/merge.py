"""Multi-GPU extraction (``torchrun``): each rank writes its contiguous shard into its own store next to the final one,
then rank 0 concatenates them in rank order (:func:`merge_ranks`), so the result equals a single-process run."""
import shutil
from pathlib import Path

import numpy as np

from helpers.feature_store import ChunkedFeatureWriter, load_features
from helpers.image_io import SkipReport

MERGE_ROWS = 65536


def rank_folder(folder, rank, world_size):
    """The store one rank writes before rank 0 merges: ``.<slug>.rank<r>of<W>`` next to the final one."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.rank{rank}of{world_size}")


def merge_ranks(folder, dist, meta, overwrite):
    """Rank 0: concatenate the rank stores in rank order into ``folder``; remove them."""
    rank_folders = [rank_folder(folder, rank, dist.world_size) for rank in range(dist.world_size)]
    writer = ChunkedFeatureWriter(folder)
    writer.discard()
    writer = ChunkedFeatureWriter(folder)
    report = SkipReport()
    empty = None
    for part in rank_folders:
        store = load_features(part, mmap=True)
        empty = np.empty((0, store.features.shape[1]), dtype=store.features.dtype)
        for a in range(0, len(store), MERGE_ROWS):
            writer.write_chunk(np.asarray(store.features[a:a + MERGE_ROWS]), store.names[a:a + MERGE_ROWS])
        skipped = part / "skipped.txt"
        if skipped.is_file():
            for line in skipped.read_text(encoding="utf-8").splitlines():
                path, _, reason = line.partition("\t")
                report.add(path, reason)
    writer.write_chunk(empty, [])
    merged = dict(meta, skipped=len(report), world_size=dist.world_size)
    out = writer.finalize(merged, overwrite=overwrite)
    report.write(out)
    for part in rank_folders:
        shutil.rmtree(part, ignore_errors=True)
    return out
