"""Feature extraction into the feature store: neural models and perceptual hashes, resumable, multi-GPU.

:func:`extract_features` is what ``extract_features.py`` runs. For every (algorithm, dataset) pair it writes
``Features/<dataset>/<algorithm-slug>/`` (see :mod:`helpers.feature_store`):

- images are read once per pass by :func:`helpers.image_io.load_image` inside a torch ``Dataset`` (DataLoader
  workers, pinned memory on CUDA); files that cannot be read are skipped, listed in the store's ``skipped.txt``
  and reported in one warning;
- neural models run in ``torch.inference_mode``, in ``channels_last``, with their batch norms folded into the
  convolutions (:mod:`extractor.inference`, a checked copy), with optional bf16/fp16 autocast;
  the CPU workers send ``uint8`` pixels and the normalisation runs on the device (:mod:`extractor.transforms`);
- all requested hashes share one pass: one decode per image serves every hash;
- rows are written in chunks (:class:`helpers.feature_store.ChunkedFeatureWriter`): after a kill, the same
  command continues from the last finished chunk and writes the same ``features.npy`` as an uninterrupted run;
- a finished store is not recomputed unless ``force``;
- under ``torchrun`` each rank extracts one contiguous shard; rank 0 merges them in order
  (:mod:`helpers.distributed`);
- post-processing (:mod:`extractor.postprocess`): L2 normalisation, PCA / PCA-whitening fitted on a chosen
  dataset, multi-layer features, each written as its own store next to the raw one.

:func:`embed_images` is the in-memory variant (a list of images or paths -> one array), used by the fine-tuning
evaluation.
"""
import contextlib
import functools
import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from helpers.datasets import resolve_dataset
from helpers.device import resolve_device
from helpers.feature_store import (ChunkedFeatureWriter, FeatureStoreError, display_path, feature_dir,
                                   fingerprint, fingerprint_difference, load_features)
from helpers.locking import exclusive
from helpers import distributed
from helpers.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, SkipReport, load_image
from helpers.log import get_logger
from helpers.paths import FEATURES_DIR
from helpers.results import read_json, write_json

from .models import build_model, load_checkpoint
from .postprocess import MultiLayerFeatures, postprocess_store
from .registry import CheckpointSpec, checkpoint_name, resolve_algorithm
from .gpu_decode import DEFAULT_NVJPEG_SHARE, Encoded, GpuJpegItem, pack, resolve_decode
from .transforms import ImageTransform

logger = get_logger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_CHUNK_SIZE = 2048
STATE_FILE = "extraction.json"
MERGE_ROWS = 65536


class InjectedFailure(RuntimeError):
    """Raised by ``fail_after_chunks`` (tests of the resume logic)."""


# ------------------------------------------------------------------------------------------------ data loading


class ImageDataset(torch.utils.data.Dataset):
    """Images (paths or PIL images) -> ``(index, fn(image), None)``, or ``(index, None, reason)`` when unreadable."""

    def __init__(self, items, fn, max_pixels=DEFAULT_MAX_PIXELS):
        self.items = list(items)
        self.fn = fn
        self.max_pixels = max_pixels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        if getattr(self.fn, "loads_itself", False):  # e.g. the GPU decode path's worker half
            try:
                return index, self.fn(item, self.max_pixels), None
            except ImageLoadError as exc:
                return index, None, str(exc)
            except (OSError, ValueError, MemoryError) as exc:
                return index, None, f"{item}: cannot process image ({exc})"
        try:
            image = item.convert("RGB") if isinstance(item, Image.Image) else load_image(item, self.max_pixels)
        except ImageLoadError as exc:
            return index, None, str(exc)
        try:
            return index, self.fn(image), None
        except (OSError, ValueError, MemoryError) as exc:  # e.g. a degenerate image a hash cannot use
            return index, None, f"{item}: cannot process image ({exc})"


def collate(items):
    """``(indices, batch, failures)``: stacked tensor (or one array per hash), and ``[(index, reason)]``."""
    ok = [(index, payload) for index, payload, error in items if error is None]
    failures = [(index, error) for index, _, error in items if error is not None]
    indices = [index for index, _ in ok]
    payloads = [payload for _, payload in ok]
    if not payloads:
        batch = None
    elif isinstance(payloads[0], Encoded):  # decoded on the device by the item function's prepare_batch
        batch = pack(payloads, shared=torch.utils.data.get_worker_info() is not None)
    elif isinstance(payloads[0], torch.Tensor) and any(p.shape != payloads[0].shape for p in payloads):
        batch = payloads  # inputs that keep their aspect ratio (SSCD): the Embedder runs each size on its own
    elif isinstance(payloads[0], torch.Tensor):
        out = None
        if torch.utils.data.get_worker_info() is not None:
            # Stack straight into shared memory, as default_collate does: otherwise the batch is copied there again
            # when it is sent to the main process.
            numel = sum(p.numel() for p in payloads)
            storage = payloads[0]._typed_storage()._new_shared(numel, device=payloads[0].device)
            out = payloads[0].new(storage).resize_(len(payloads), *payloads[0].shape)
        batch = torch.stack(payloads, out=out)
    else:
        batch = [np.stack([row[k] for row in payloads]) for k in range(len(payloads[0]))]
    return indices, batch, failures


class HashItem:
    """The DataLoader item function of a hash pass: loads the file itself (exact or fast decode, see
    :data:`extractor.hashing.HASH_DECODES`) and returns one packed row per hash."""

    loads_itself = True

    def __init__(self, specs, decode="exact"):
        from .hashing import check_decode, warm_up

        self.specs = list(specs)
        self.decode = check_decode(decode)
        warm_up(self.specs)  # in the main process: the forked DataLoader workers inherit what it sets up

    def __call__(self, item, max_pixels=DEFAULT_MAX_PIXELS):
        from .hashing import compute_hashes, load_for_hashing

        if isinstance(item, Image.Image):
            image = item.convert("RGB")
        else:
            image = load_for_hashing(item, self.specs, max_pixels=max_pixels, decode=self.decode)
        return [np.asarray(row, dtype=np.uint8) for row in compute_hashes(image, self.specs)]


def auto_workers(device, hashes_only=False):
    """Default DataLoader workers: decoding is the bottleneck of the hashes and of a GPU, the model a CPU's."""
    cpus = os.cpu_count() or 1
    if hashes_only:
        return min(16, cpus) if cpus > 1 else 0
    if torch.device(device).type == "cuda":
        return max(1, min(16, cpus - 1))
    return 0 if cpus <= 4 else 2


def make_loader(items, fn, batches, workers, device, max_pixels=DEFAULT_MAX_PIXELS):
    """DataLoader over ``items`` with explicit ``batches`` (lists of indices), pinned memory on CUDA.

    Each worker decodes whole batches and keeps PyTorch's default two in flight (with 16 workers and batches of
    256 uint8 images of 224x224 that is already 1.2 GB of shared memory: ``/dev/shm`` must allow it).
    """
    return torch.utils.data.DataLoader(ImageDataset(items, fn, max_pixels), batch_sampler=batches,
                                       num_workers=workers, collate_fn=collate,
                                       worker_init_fn=_one_blas_thread if workers > 0 else None,
                                       pin_memory=torch.device(device).type == "cuda")


def _one_blas_thread(worker_id):
    # The workers already use every core: one torch thread (PyTorch's default in workers, made explicit) and one
    # BLAS thread each, else they oversubscribe.
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------ the model


class Embedder:
    """A model with its device-side preprocessing, precision and memory layout.

    ``embedder(batch)`` takes the ``uint8 [B, H, W, 3]`` batches of :meth:`ImageTransform.to_uint8` (or float
    ``[B, 3, H, W]`` inputs already prepared), or a list of such images of several sizes (preprocessing that keeps
    the aspect ratio), and returns float32 embeddings on the device, one row per image in order.
    """

    def __init__(self, model, transform, device, precision="fp32", channels_last=None, optimize=False):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        # channels_last: cuDNN's and oneDNN's fast layout (on a CPU only for the optimised extraction, which owns its
        # model; embed_images leaves the caller's model as it is).
        if channels_last is None:
            channels_last = self.device.type == "cuda" or bool(optimize)
        self.channels_last = channels_last
        self.optimize = bool(optimize)
        self.model = model
        self.transform = transform
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        self.folded = 0

    def prepare_model(self):
        """Move the model to the device, eval mode, in ``channels_last`` (on CUDA; on the CPU too with
        ``optimize``); with ``optimize`` the batch norms are folded into their convolutions first (a checked copy,
        :func:`extractor.inference.fold_batch_norms`)."""
        self.model.eval().to(self.device)
        if self.optimize and not isinstance(self.model, torch.jit.ScriptModule):
            from .inference import fold_batch_norms

            size = getattr(getattr(self.transform, "preprocessing", None), "input_size", None) or (64, 64)
            example = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(self.device)
            self.model, self.folded = fold_batch_norms(self.model, example)
            if self.folded:
                logger.info("folded %d batch norms into their convolutions", self.folded)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input size per model: let cuDNN pick its fastest kernels
        return self

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def inputs(self, batch):
        """Model inputs on the device from a uint8 HWC batch (or a float NCHW one)."""
        if batch.dtype == torch.uint8 and isinstance(self.transform, ImageTransform):
            return self.transform.finish(batch, self.device, channels_last=self.channels_last, non_blocking=True)
        x = batch.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x):
        """Embeddings (float32, on the device) of prepared inputs."""
        with torch.inference_mode(), self.autocast():
            return self.model(x).float()

    def __call__(self, batch):
        if isinstance(batch, (list, tuple)):  # images of several sizes: one sub-batch per size, rows in order
            return self._by_size(batch)
        return self.forward(self.inputs(batch))

    def _by_size(self, items):
        groups = {}
        for position, item in enumerate(items):
            groups.setdefault(tuple(item.shape), []).append(position)
        out = None
        for positions in groups.values():
            rows = self.forward(self.inputs(torch.stack([items[k] for k in positions])))
            if out is None:
                out = rows.new_empty((len(items), rows.shape[1]))
            out[torch.as_tensor(positions, device=rows.device)] = rows
        return out


def _to_numpy(parts, width, dtype):
    if not parts:
        return np.empty((0, width), dtype=dtype)
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts).cpu().numpy().astype(dtype, copy=False)
    return np.concatenate(parts).astype(dtype, copy=False)


def embed_images(model, transform, images_or_paths, batch_size=32, device="cpu", precision="fp32", workers=0):
    """Embeddings of images in memory (fine-tuning evaluation).

    Parameters
    ----------
    model : nn.Module
        Maps preprocessed batches to ``[B, D]``; put in eval mode for the call (its mode is restored after).
    transform : ImageTransform or callable
        An :class:`ImageTransform` (fast path) or any callable PIL image -> float tensor ``[3, H, W]``.
    images_or_paths : sequence of PIL images or paths
    batch_size, workers : int
    device : str or torch.device
    precision : {'fp32', 'bf16', 'fp16'}

    Returns
    -------
    ndarray
        ``float32 [len(images_or_paths), D]``, rows in input order.

    Raises
    ------
    ImageLoadError
        If some paths cannot be read (all are listed), since every input needs its row.
    """
    items = list(images_or_paths)
    device = torch.device(resolve_device(str(device)) if str(device) == "auto" else device)
    fast = isinstance(transform, ImageTransform)
    embedder = Embedder(model, transform, device, precision, channels_last=False)
    batches = [list(range(start, min(len(items), start + batch_size))) for start in range(0, len(items), batch_size)]
    loader = make_loader(items, transform.to_uint8 if fast else transform, batches, workers, device)
    was_training = model.training
    model.eval().to(device)
    parts, failures, width = [], [], None
    try:
        for _, batch, failed in loader:
            failures.extend(failed)
            if batch is not None:
                parts.append(embedder(batch))
                width = parts[-1].shape[1]
    finally:
        model.train(was_training)
    if failures:
        listed = "; ".join(reason for _, reason in failures[:10])
        raise ImageLoadError(f"{len(failures)} image(s) could not be read: {listed}")
    return _to_numpy(parts, width or 0, np.float32)


# ----------------------------------------------------------------------------------------------- resumable IO


class _Target:
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


def _chunk_batches(start, stop, chunk_size, batch_size, first_chunk):
    """Per chunk (from ``first_chunk``), its batches of indices in ``[start, stop)``; batches never straddle."""
    chunks = []
    chunk = first_chunk
    while start + chunk * chunk_size < stop:
        lo = start + chunk * chunk_size
        hi = min(stop, lo + chunk_size)
        chunks.append((chunk, [list(range(b, min(hi, b + batch_size))) for b in range(lo, hi, batch_size)]))
        chunk += 1
    return chunks


def _run_pass(items, display, targets, item_fn, batch_fn, *, start, stop, chunk_size, batch_size, workers,
              device, desc, progress, max_pixels, fail_after_chunks=None):
    """Extract ``items[start:stop]`` chunk by chunk into ``targets`` (resuming each from its own point)."""
    first = min(target.start_chunk for target in targets)
    chunks = _chunk_batches(start, stop, chunk_size, batch_size, first)
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
    written = 0
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
            written += 1
            if fail_after_chunks is not None and written >= fail_after_chunks:
                raise InjectedFailure(f"injected failure after {written} chunk(s)")
    return time.perf_counter() - began


# ---------------------------------------------------------------------------------------------- orchestration


def _names_digest(display):
    return hashlib.sha256("\n".join(display).encode("utf-8")).hexdigest()


def _rank_folder(folder, rank, world_size):
    """The store one rank writes before rank 0 merges: ``.<slug>.rank<r>of<W>`` next to the final one."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.rank{rank}of{world_size}")


def _merge_ranks(folder, dist, meta, overwrite):
    """Rank 0: concatenate the rank stores in rank order into ``folder``; remove them."""
    rank_folders = [_rank_folder(folder, rank, dist.world_size) for rank in range(dist.world_size)]
    writer = ChunkedFeatureWriter(folder)
    writer.discard()
    writer = ChunkedFeatureWriter(folder)
    report = SkipReport()
    empty = None
    for rank_folder in rank_folders:
        store = load_features(rank_folder, mmap=True)
        empty = np.empty((0, store.features.shape[1]), dtype=store.features.dtype)
        for a in range(0, len(store), MERGE_ROWS):
            writer.write_chunk(np.asarray(store.features[a:a + MERGE_ROWS]), store.names[a:a + MERGE_ROWS])
        skipped = rank_folder / "skipped.txt"
        if skipped.is_file():
            for line in skipped.read_text(encoding="utf-8").splitlines():
                path, _, reason = line.partition("\t")
                report.add(path, reason)
    writer.write_chunk(empty, [])
    merged = dict(meta, skipped=len(report), world_size=dist.world_size)
    out = writer.finalize(merged, overwrite=overwrite)
    report.write(out)
    for rank_folder in rank_folders:
        shutil.rmtree(rank_folder, ignore_errors=True)
    return out


def _existing(folder):
    try:
        return load_features(folder, mmap=True)
    except FeatureStoreError:
        return None


#: meta keys that determine a store's rows (with the image list): a store is reused only when they all match
FINGERPRINT_KEYS = ("name", "algorithm", "weights", "weights_sha256", "preprocessing", "precision", "decode",
                    "nvjpeg_share", "layers", "dim")


def content_digest(paths, display):
    """SHA-256 of the image list: each image's name, size and modification time (so an edited, added or
    removed file changes it)."""
    digest = hashlib.sha256()
    for path, name in zip(paths, display):
        try:
            stat = os.stat(path)
            digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{name}\t-\t-\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def store_fingerprint_fields(meta, images_digest, n_images):
    """The fields of a store's fingerprint (see :func:`helpers.feature_store.fingerprint`)."""
    fields = {key: meta.get(key) for key in FINGERPRINT_KEYS}
    fields.update(images=images_digest, n_images=int(n_images))
    return fields


def _reusable(folder, fields, force):
    """The finished store at ``folder`` when it matches ``fields`` (None when it must be computed).

    A store whose fingerprint differs (other weights, preprocessing, precision, decode path, or images) is
    recomputed with a warning naming the difference: it is never reused silently.
    """
    existing = _existing(folder)
    if existing is None or force:
        return None
    if existing.meta.get("fingerprint") == fingerprint(fields):
        return existing
    logger.warning("%s does not match this request (%s): recomputing it", folder,
                   fingerprint_difference(existing.meta.get("fingerprint_fields"), fields))
    return None


class _Job:
    """One pass: one model (or a group of hashes) over one dataset, into one or more stores."""

    def __init__(self, names, metas, widths, dtypes, item_fn, batch_fn_factory, hashes_only=False):
        self.names, self.metas, self.widths, self.dtypes = names, metas, widths, dtypes
        self.item_fn = item_fn
        self.batch_fn_factory = batch_fn_factory
        self.hashes_only = hashes_only


def _extract_dataset(job, dataset, paths, listing_skips, *, out, dist, force, chunk_size, batch_size, workers,
                     device, progress, max_pixels, fail_after_chunks, wait=True):
    """Run ``job`` on one dataset; returns the final store folders (matching ones are kept unless ``force``).

    Each store is written under its exclusive lock (:mod:`helpers.locking`): a second extraction of the same
    store waits, then finds it finished and reuses it.
    """
    folders = [feature_dir(dataset, name, out) for name in job.names]
    display = [display_path(path) for path in paths]
    with contextlib.ExitStack() as locks:
        if not dist.distributed or dist.is_main:
            for folder in folders:
                locks.enter_context(exclusive(folder, wait=wait))
        dist.barrier()
        return _extract_dataset_locked(job, dataset, paths, display, listing_skips, folders, out=out, dist=dist,
                                       force=force, chunk_size=chunk_size, batch_size=batch_size, workers=workers,
                                       device=device, progress=progress, max_pixels=max_pixels,
                                       fail_after_chunks=fail_after_chunks)


def _extract_dataset_locked(job, dataset, paths, display, listing_skips, folders, *, out, dist, force, chunk_size,
                            batch_size, workers, device, progress, max_pixels, fail_after_chunks):
    images_digest = content_digest(paths, display)
    fields = [store_fingerprint_fields(job.metas[k], images_digest, len(paths)) for k in range(len(folders))]
    todo = [k for k, folder in enumerate(folders) if _reusable(folder, fields[k], force) is None]
    for k, folder in enumerate(folders):
        if k not in todo and dist.is_main:
            print(f"already extracted: {folder} ({job.names[k]} on {dataset.name}); pass --force to recompute it")
    if not todo:
        return folders
    start, stop = dist.shard(len(paths))
    common = {"dataset": dataset.name, "dataset_key": dataset.store_key,
              "dataset_folders": [display_path(f) for f in dataset.folders],
              "n_images_listed": len(paths), "chunk_size": chunk_size}
    targets = []
    for k in todo:
        meta = dict(job.metas[k], **common)
        meta.update(fingerprint=fingerprint(fields[k]), fingerprint_fields=fields[k])
        # an interrupted extraction resumes only with the same store fingerprint and the same chunk layout
        resume_state = dict(fields[k], chunk_size=chunk_size, names=_names_digest(display), shard=[start, stop],
                            device_type=torch.device(device).type)
        folder = _rank_folder(folders[k], dist.rank, dist.world_size) if dist.distributed else folders[k]
        if dist.distributed and _existing(folder) is not None and not force:
            continue  # this rank finished before an interruption of the merge
        targets.append((k, _Target(folder, meta, job.widths[k], job.dtypes[k], resume_state, display[start:stop],
                                   chunk_size, restart=force)))
    if targets:
        workers = auto_workers(device, job.hashes_only) if workers is None else workers
        if job.hashes_only and workers > 0:
            from .hashing import default_chunksize

            # hashes: batches of about 1/8 of a worker's share, so that the workers finish together (3 batches of
            # 64 on 2 workers would leave one idle for a third of the time); a batch's size changes no row
            batch_size = min(batch_size, default_chunksize(stop - start, workers))
        batch_fn = job.batch_fn_factory([k for k, _ in targets])
        desc = f"{' + '.join(job.names[k] for k, _ in targets)} | {dataset.name}"
        if dist.distributed:
            desc = f"[rank {dist.rank}] {desc}"
        seconds = _run_pass(paths, display, [t for _, t in targets], job.item_fn, batch_fn, start=start, stop=stop,
                            chunk_size=chunk_size, batch_size=batch_size, workers=workers, device=device, desc=desc,
                            progress=progress and dist.is_main, max_pixels=max_pixels,
                            fail_after_chunks=fail_after_chunks)
        if not dist.distributed and not any(t.writer.completed_names() for _, t in targets):
            _refuse_empty_store(dataset, [t for _, t in targets], listing_skips)
        for k, target in targets:
            target.meta["extraction_seconds"] = round(seconds, 3)
            target.skipped = listing_skips + target.skipped if dist.is_main else target.skipped
            folder = target.finalize(overwrite=True)  # under the lock: missing, mismatched or forced
            if not dist.distributed:
                _warn_skips(target.skipped, folder)
    dist.barrier()
    if dist.distributed and dist.is_main:
        for k in todo:
            meta = dict(job.metas[k], **common, fingerprint=fingerprint(fields[k]), fingerprint_fields=fields[k])
            _merge_ranks(folders[k], dist, meta, overwrite=True)
            _warn_skips(load_skips(folders[k]), folders[k])
    dist.barrier()
    return folders


def _refuse_empty_store(dataset, targets, listing_skips):
    """No image of ``dataset`` could be read: no 0-row store (searching it would give recall ``nan``), one error."""
    skipped = list(listing_skips) + list(targets[0].skipped)
    for target in targets:
        target.writer.discard()
    first = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
    raise ValueError(f"no readable image in dataset {dataset.name!r} ({len(skipped)} file(s) skipped{first}); "
                     f"no feature store written")


def load_skips(folder):
    """The ``(path, reason)`` records of a store's ``skipped.txt`` (empty when nothing was skipped)."""
    path = Path(folder) / "skipped.txt"
    if not path.is_file():
        return []
    return [tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _warn_skips(items, folder):
    if items:
        report = SkipReport()
        for path, reason in items:
            report.add(path, reason)
        report.warn(logger)
        logger.warning("the skipped files are listed in %s", Path(folder) / "skipped.txt")


def _display_name(spec, name, layers):
    base = name or spec.name
    return f"{base} layers {'+'.join(layers)}" if layers else base


def _model_job(spec_or_checkpoint, *, weights, seed, device, precision, layers, name, decode="cpu",
               nvjpeg_share=None):
    """Build the model once; returns the :class:`_Job` that embeds images with it."""
    if isinstance(spec_or_checkpoint, CheckpointSpec):
        model, transform, info = load_checkpoint(spec_or_checkpoint.path, device="cpu")
    else:
        model, transform, info = build_model(spec_or_checkpoint, weights=weights, device="cpu", seed=seed)
    width = info["embedding_dim"]
    display_name = _display_name(spec_or_checkpoint, name, layers)
    if layers:
        model = MultiLayerFeatures(model, layers)
    # optimize: batch norms folded into the convolutions and channels_last on the CPU too (the model is ours, built
    # for this pass); not with --layers, whose hooks read the modules as they are.
    embedder = Embedder(model, transform, device, precision, optimize=not layers).prepare_model()
    if layers:
        h, w = transform.preprocessing.input_size
        width = int(embedder.forward(torch.zeros(1, 3, h, w, device=device)).shape[1])
    decode = resolve_decode(decode, device, transform)
    share = DEFAULT_NVJPEG_SHARE if nvjpeg_share is None else nvjpeg_share
    item_fn = GpuJpegItem(transform, device, share) if decode == "gpu" else transform.to_uint8
    meta = {"name": display_name, "binary": False, "dim": width, "algorithm": info["architecture"],
            "base_algorithm": spec_or_checkpoint.name, "preprocessing": info["preprocessing"],
            "weights": info["weights"], "weights_file": info.get("weights_file"),
            "weights_sha256": info.get("weights_sha256"),
            "precision": precision, "device": str(device), "decode": decode,
            "nvjpeg_share": share if decode == "gpu" else None, "layers": list(layers) if layers else None,
            "postprocessing": []}
    if "config" in info:
        meta["checkpoint_config"] = info["config"]
    return _Job([display_name], [meta], [width], [np.float32], item_fn, lambda _: lambda b: [embedder(b)])


def _hash_job(specs, decode="exact"):
    from .hashing import decode_description, effective_decode

    mode = effective_decode(specs, decode)
    if decode == "fast" and mode == "exact":
        logger.warning("--hash-decode fast applies to Ahash, Phash and Dhash only (the others need the whole "
                       "image); with %s every hash of this pass is decoded exactly", ", ".join(s.name for s in specs))
    metas = []
    for spec in specs:
        meta = dict(spec.meta())
        meta.update(name=spec.name, binary=True, dim=int(spec.bits), algorithm=spec.meta(), postprocessing=[],
                    decode=decode_description(specs, mode))
        if mode == "fast":
            meta["preprocessing"] = meta["preprocessing"].replace(
                "helpers.image_io.load_image (RGB, EXIF orientation applied)",
                "helpers.image_io.load_image reduced-size decode (grayscale, EXIF orientation applied)")
        metas.append(meta)

    def batch_fn_factory(selected):
        return lambda batch: [batch[k] for k in selected]

    return _Job([spec.name for spec in specs], metas, [int(spec.nbytes) for spec in specs],
                [np.uint8] * len(specs), HashItem(specs, mode), batch_fn_factory,
                hashes_only=True)


def _postprocess_suffix(pca, whiten, fit_dataset, l2, adapt=None):
    parts = []
    if pca:
        parts.append(f"PCA{int(pca)}" + (" whitened" if whiten else "") + f" on {fit_dataset}")
    if l2:
        parts.append("L2")
    if adapt:
        parts.append(f"adapted {adaptation_name(adapt)}")
    return " ".join(parts)


def adaptation_name(path):
    """Store-name part of an adaptation checkpoint: ``<experiment> <run>`` for ``<experiment>/run_<i>/adaptation.pt``
    (``train_adaptation.py``'s layout), followed by the file stem when it is not ``adaptation``."""
    path = Path(str(path))
    parts = [path.parent.parent.name, path.parent.name] + ([path.stem] if path.stem != "adaptation" else [])
    return " ".join(part for part in parts if part)


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def extract_features(algo=None, dataset=None, *, batch_size=64, workers=None, device="auto", weights="pretrained",
                     precision="fp32", out=FEATURES_DIR, checkpoint=None, name=None, force=False,
                     l2_normalize=False, pca=None, pca_fit_dataset=None, whiten=False, layers=None, seed=0,
                     chunk_size=DEFAULT_CHUNK_SIZE, progress=True, max_pixels=DEFAULT_MAX_PIXELS,
                     fail_after_chunks=None, decode="cpu", nvjpeg_share=None, wait=True, adapt=None,
                     hash_decode="exact"):
    """Extract features of every algorithm on every dataset into the feature store.

    Parameters
    ----------
    algo : str or list of str
        Registry models (``'ResNet50 1x'``), hashes (``'Dhash 64 bits'``), or checkpoint files.
    dataset : str or list of str
        Registered dataset names or image folders.
    batch_size : int
    workers : int, optional
        DataLoader worker processes decoding the images (default: :func:`auto_workers`, per pass).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each rank uses ``cuda:LOCAL_RANK``).
    weights : str
        ``'pretrained'`` (the default: torchvision's ImageNet weights, the converted SimCLR checkpoints),
        ``'pretrained:TAG'``, ``'random'`` (seeded by ``seed``) or a state-dict file, for the registry models.
    precision : {'fp32', 'bf16', 'fp16'}
        Autocast precision of the models (features are stored as float32).
    out : path
        Feature store root (``Features/``).
    checkpoint : str or list of str, optional
        Fine-tuning checkpoints (``simsearch-checkpoint-v1``), named ``Checkpoint <folder>/<stem>``.
    name : str, optional
        Store name for a single algorithm or checkpoint instead of its default.
    force : bool
        Recompute stores that already exist.
    l2_normalize : bool
        Also write the L2-normalised features (``<name> L2``).
    pca : int, optional
        Also write PCA-reduced features (``<name> PCA<k> on <fit dataset>``), fitted on ``pca_fit_dataset``.
    pca_fit_dataset : str, optional
        Dataset whose features fit the PCA (extracted when missing).
    whiten : bool
        Whiten the PCA components.
    layers : list of str, optional
        Multi-layer features: these layers' pooled, L2-normalised outputs, concatenated
        (``<name> layers a+b``).
    seed : int
        Seed of random weights.
    chunk_size : int
        Images per resumable chunk.
    progress : bool
        Show progress bars.
    fail_after_chunks : int, optional
        Raise :class:`InjectedFailure` after this many chunks of a pass (tests of the resume logic).
    decode : {'auto', 'cpu', 'gpu'}
        Where the neural models' JPEGs are decoded and resized (:mod:`extractor.gpu_decode`): 'cpu' (PIL in the
        workers), 'gpu' (nvjpeg + exact LANCZOS on the CUDA device; other files still on the CPU), 'auto' (gpu on
        a CUDA device where nvjpeg works, else cpu). nvjpeg's pixels may differ from libjpeg's (see the README).
    nvjpeg_share : float, optional
        With decode 'gpu': share of the JPEGs decoded by nvjpeg, the rest by the workers (default
        :data:`extractor.gpu_decode.DEFAULT_NVJPEG_SHARE`; 0 makes the features equal to the CPU path's).
    wait : bool
        When another process is writing one of the stores: wait for it (then reuse its store when it matches),
        or raise :class:`helpers.locking.LockBusyError` at once (False, ``--no-wait``).
    adapt : path, optional
        An adaptation checkpoint (``train_adaptation.py``): also write ``<name> [PCA...] [L2] adapted <run>``,
        the module applied after the PCA / L2 steps (it must have been trained on those same features).
    hash_decode : {'exact', 'fast'}
        How the perceptual hashes' files are decoded: 'exact' (the default: the whole image, imagehash's bits) or
        'fast' (Ahash / Phash / Dhash only: JPEGs decoded at reduced scale in the DCT domain, other formats
        box-reduced, :func:`extractor.hashing.fast_min_side`; faster, bits close to but not always imagehash's).
        Recorded in the store's ``decode`` (part of its fingerprint: a store is never reused across modes).

    Returns
    -------
    list of Path
        The store folders, per algorithm and dataset: the raw store, then the post-processed one when asked.
        Under torchrun only rank 0 returns them (other ranks return an empty list).
    """
    algos = _as_list(algo)
    checkpoints = _as_list(checkpoint)
    datasets = list(dict.fromkeys(str(d) for d in _as_list(dataset)))
    layers = list(layers) if layers else None
    if not algos and not checkpoints:
        raise ValueError("give at least one algorithm (--algo) or checkpoint (--checkpoint)")
    if not datasets:
        raise ValueError("give at least one dataset (--dataset)")
    if batch_size <= 0 or chunk_size <= 0:
        raise ValueError("batch size and chunk size must be positive")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode must be one of ['auto', 'cpu', 'gpu'], got {decode!r}")
    if hash_decode not in ("exact", "fast"):
        raise ValueError(f"hash_decode must be one of ['exact', 'fast'], got {hash_decode!r}")
    if whiten and not pca:
        raise ValueError("--whiten needs --pca N (whitening divides each PCA component by its standard deviation)")
    if pca is not None and int(pca) <= 0:
        raise ValueError(f"--pca must be a positive number of components, got {pca}")
    if pca and not pca_fit_dataset:
        raise ValueError("--pca needs --pca-fit-dataset D: the dataset whose features fit the PCA")
    if name and len(algos) + len(checkpoints) != 1:
        raise ValueError("--name applies to a single algorithm or checkpoint")
    if adapt is not None and not Path(str(adapt)).is_file():
        raise FileNotFoundError(f"adaptation checkpoint not found: {adapt} (train_adaptation.py writes "
                                "<save-to>/run_<i>/adaptation.pt)")

    specs = list({spec.slug: spec for spec in [resolve_algorithm(a) for a in algos]
                  + [_checkpoint_spec(c) for c in checkpoints]}.values())  # 'Dhash 64 bits' == 'dhash_64_bits'
    hashes = [s for s in specs if getattr(s, "binary", False)]
    neural = [s for s in specs if not getattr(s, "binary", False)]
    if layers and hashes:
        raise ValueError("--layers applies to neural models, not to hashes")
    if name and hashes:  # a hash store's name is what identifies the hash (its bits, the crop-resistant segments)
        raise ValueError(f"--name renames neural models and checkpoints only; the {hashes[0].name} store keeps its "
                         f"name (drop --name)")
    resolved = [resolve_dataset(d) for d in datasets]
    fit = resolve_dataset(pca_fit_dataset) if pca else None
    to_extract = list(resolved) + ([fit] if fit is not None and fit.store_key not in {d.store_key for d in resolved}
                                   else [])

    listings = {}
    for ds in to_extract:
        report = SkipReport()
        paths = ds.image_paths(report=report)
        if not paths:
            raise ValueError(f"dataset {ds.name!r} has no images ({', '.join(map(str, ds.folders))})")
        listings[ds.store_key] = (paths, list(report.items))
    dist, device = distributed.join_process_group(resolve_device(device))
    if decode == "gpu" and neural and device.type != "cuda":
        dist.close()
        raise ValueError(f"--decode gpu needs a CUDA device, got --device {device}; use --decode cpu or auto")
    try:
        return _extract_all(hashes, neural, resolved, to_extract, listings, dist, device, workers=workers,
                            weights=weights, seed=seed, precision=precision, layers=layers, name=name, out=out,
                            force=force, chunk_size=chunk_size, batch_size=batch_size, progress=progress,
                            max_pixels=max_pixels, fail_after_chunks=fail_after_chunks, pca=pca, whiten=whiten,
                            fit=fit, l2_normalize=l2_normalize, decode=decode, nvjpeg_share=nvjpeg_share,
                            wait=wait, adapt=adapt, hash_decode=hash_decode)
    finally:
        dist.close()


def _extract_all(hashes, neural, resolved, to_extract, listings, dist, device, *, workers, weights, seed, precision,
                 layers, name, out, force, chunk_size, batch_size, progress, max_pixels, fail_after_chunks, pca,
                 whiten, fit, l2_normalize, decode="cpu", nvjpeg_share=None, wait=True, adapt=None,
                 hash_decode="exact"):
    workers = None if workers is None else int(workers)
    common = dict(out=Path(out), dist=dist, force=force, chunk_size=int(chunk_size), batch_size=int(batch_size),
                  workers=workers, device=device, progress=progress, max_pixels=max_pixels,
                  fail_after_chunks=fail_after_chunks, wait=wait)
    factories = []  # (store names, job factory)
    if hashes:
        factories.append(([h.name for h in hashes], functools.partial(_hash_job, hashes, hash_decode)))
    for spec in neural:
        factories.append(([_display_name(spec, name, layers)],
                          functools.partial(_model_job, spec, weights=weights, seed=seed, device=device,
                                            precision=precision, layers=layers, name=name, decode=decode,
                                            nvjpeg_share=nvjpeg_share)))
    raw = {}  # (store name, dataset store key) -> raw store folder
    for _, factory in factories:
        # built even when its stores exist: their fingerprints need the weights' identity and preprocessing
        job = factory()
        for ds in to_extract:
            paths, skips = listings[ds.store_key]
            for store_name, folder in zip(job.names, _extract_dataset(job, ds, paths, skips, **common)):
                raw[(store_name, ds.store_key)] = folder
        del job
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not dist.is_main:
        return []
    written = []
    suffix = _postprocess_suffix(pca, whiten, fit.name if fit else None, l2_normalize, adapt)
    requested = {d.store_key: d for d in resolved}
    for (algo_name, ds_key), folder in raw.items():
        if ds_key in requested:
            written.append(folder)
            if suffix:
                written.append(_postprocess(algo_name, requested[ds_key], folder, suffix, raw, pca, whiten, fit,
                                            l2_normalize, Path(out), force, adapt=adapt))
    return written


def _checkpoint_spec(path):
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return CheckpointSpec(path.resolve(), checkpoint_name(path))


def _postprocess(algo_name, dataset, folder, suffix, raw, pca, whiten, fit, l2, out, force, adapt=None):
    target_name = f"{algo_name} {suffix}"
    target = feature_dir(dataset, target_name, out)
    source = load_features(folder, mmap=True)
    existing = _existing(target)
    if existing is not None and not force and existing.meta.get("source_created") == source.meta.get("created"):
        print(f"already post-processed: {target}; pass --force to recompute it")
        return target
    steps = []
    if pca:
        steps.append({"step": "pca", "n_components": int(pca), "whiten": bool(whiten), "fit_dataset": fit.name,
                      "fit_folder": str(raw[(algo_name, fit.store_key)])})
    if l2:
        steps.append({"step": "l2"})
    if adapt:
        _check_adaptation_input(adapt, source, pca, target_name)
        steps.append({"step": "adapt", "checkpoint": str(Path(str(adapt)).resolve())})
    return postprocess_store(folder, target, target_name, steps, overwrite=True)


def _check_adaptation_input(checkpoint, source, pca, target_name):
    """The module must receive the features it was trained on: same width (a wrong one is an error)."""
    from adaptation.models import load_adaptation

    module, info = load_adaptation(checkpoint)
    width = int(pca) if pca else (source.dim if not source.binary else None)
    trained_on = info.get("source_name", "?")
    if width != module.in_dim:
        raise ValueError(f"adaptation checkpoint {checkpoint} takes {module.in_dim}-d features (it was trained on "
                         f"'{trained_on}'), but '{target_name}' would give it {width}-d ones; use the same "
                         "algorithm and --pca as for its training features")
