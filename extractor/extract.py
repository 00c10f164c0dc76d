"""Feature extraction into the feature store: neural models and perceptual hashes, resumable, multi-GPU.

:func:`extract_features` is what ``extract_features.py`` runs. For every (algorithm, dataset) pair it writes
``Features/<dataset>/<algorithm-slug>/`` (see :mod:`helpers.feature_store`):

- images are read once per pass by :func:`helpers.image_io.load_image` inside a torch ``Dataset`` (DataLoader
  workers, pinned memory on CUDA; :mod:`extractor.loading`); files that cannot be read are skipped, listed in the
  store's ``skipped.txt`` and reported in one warning;
- neural models run in ``torch.inference_mode``, in ``channels_last``, with their batch norms folded into the
  convolutions (:mod:`extractor.inference`, a checked copy), with optional bf16/fp16 autocast
  (:mod:`extractor.embedding`); the CPU workers send ``uint8`` pixels and the normalisation runs on the device
  (:mod:`extractor.transforms`);
- all requested hashes share one pass: one decode per image serves every hash;
- rows are written in chunks (:mod:`extractor.writer`): after a kill, the same command continues from the last
  finished chunk and writes the same ``features.npy`` as an uninterrupted run;
- a finished store is not recomputed unless ``force``; each store is written under its lock;
- under ``torchrun`` each rank extracts one contiguous shard; rank 0 merges them in order
  (:mod:`extractor.merge`, :mod:`helpers.distributed`);
- post-processing (:mod:`extractor.postprocess`): L2 normalisation, PCA / PCA-whitening fitted on a chosen
  dataset, multi-layer features, each written as its own store next to the raw one.

This module is the orchestration: which stores to compute (fingerprints, reuse), the jobs (a model, or all the
hashes), the passes over each dataset and the post-processing. :func:`extractor.embedding.embed_images` is the
in-memory variant (a list of images or paths -> one array), used by the fine-tuning evaluation.
"""
import contextlib
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from helpers.datasets import resolve_dataset
from helpers.device import resolve_device
from helpers.feature_store import (FeatureStoreError, display_path, feature_dir, fingerprint, fingerprint_difference,
                                   load_features)
from helpers.locking import exclusive
from helpers import distributed
from helpers.image_io import DEFAULT_MAX_PIXELS, SkipReport
from helpers.log import get_logger
from helpers.paths import FEATURES_DIR

from .embedding import PRECISIONS, Embedder
from .gpu_decode import DEFAULT_NVJPEG_SHARE, GpuJpegItem, resolve_decode
from .loading import auto_workers
from .merge import merge_ranks, rank_folder
from .models import build_model, load_checkpoint
from .postprocess import MultiLayerFeatures, postprocess_store
from .registry import CheckpointSpec, checkpoint_name, resolve_algorithm
from .writer import DEFAULT_CHUNK_SIZE, StoreTarget, run_pass

logger = get_logger(__name__)


def _names_digest(display):
    return hashlib.sha256("\n".join(display).encode("utf-8")).hexdigest()


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
        from PIL import Image

        from .hashing import compute_hashes, load_for_hashing

        if isinstance(item, Image.Image):
            image = item.convert("RGB")
        else:
            image = load_for_hashing(item, self.specs, max_pixels=max_pixels, decode=self.decode)
        return [np.asarray(row, dtype=np.uint8) for row in compute_hashes(image, self.specs)]


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
                     device, progress, max_pixels, wait=True):
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
                                       device=device, progress=progress, max_pixels=max_pixels)


def _extract_dataset_locked(job, dataset, paths, display, listing_skips, folders, *, out, dist, force, chunk_size,
                            batch_size, workers, device, progress, max_pixels):
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
        folder = rank_folder(folders[k], dist.rank, dist.world_size) if dist.distributed else folders[k]
        if dist.distributed and _existing(folder) is not None and not force:
            continue  # this rank finished before an interruption of the merge
        targets.append((k, StoreTarget(folder, meta, job.widths[k], job.dtypes[k], resume_state,
                                       display[start:stop], chunk_size, restart=force)))
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
        seconds = run_pass(paths, display, [t for _, t in targets], job.item_fn, batch_fn, start=start, stop=stop,
                           chunk_size=chunk_size, batch_size=batch_size, workers=workers, device=device, desc=desc,
                           progress=progress and dist.is_main, max_pixels=max_pixels)
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
            merge_ranks(folders[k], dist, meta, overwrite=True)
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


def _postprocess_suffix(pca, whiten, fit_dataset, l2, adapt=None, scan=None):
    parts = []
    if pca:
        parts.append(f"PCA{int(pca)}" + (" whitened" if whiten else "") + f" on {fit_dataset}")
    if l2:
        parts.append("L2")
    if adapt:
        parts.append(f"adapted {adaptation_name(adapt)}")
    if scan:
        parts.append(f"SCAN {scan_name(scan)}")
    return " ".join(parts)


def adaptation_name(path):
    """Store-name part of an adaptation checkpoint: ``<experiment> <run>`` for ``<experiment>/run_<i>/adaptation.pt``
    (``train_adaptation.py``'s layout), followed by the file stem when it is not ``adaptation``."""
    path = Path(str(path))
    parts = [path.parent.parent.name, path.parent.name] + ([path.stem] if path.stem != "adaptation" else [])
    return " ".join(part for part in parts if part)


def scan_name(path):
    """Store-name part of a SCAN checkpoint: ``<experiment> <run> <step>`` for ``<experiment>/run_<i>/<step>.pt``
    (``scan.py``'s layout)."""
    path = Path(str(path))
    return " ".join(part for part in (path.parent.parent.name, path.parent.name, path.stem) if part)


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
                     decode="cpu", nvjpeg_share=None, wait=True, adapt=None,
                     hash_decode="exact", scan=None):
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
    scan : path, optional
        A SCAN checkpoint (``scan.py``'s ``run_<i>/scan.pt`` or ``selflabel.pt``): also write
        ``<name> [PCA...] [L2] [adapted ...] SCAN <run>``, the head's cluster probabilities (``float32 [n,
        clusters]``, the argmax of a row is its cluster), after the other steps. The checkpoint refuses features
        of another model or post-processing than the ones it was trained on.

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
    if scan is not None and not Path(str(scan)).is_file():
        raise FileNotFoundError(f"SCAN checkpoint not found: {scan} (scan.py writes <save-to>/run_<i>/scan.pt and "
                                "selflabel.pt)")

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
                            max_pixels=max_pixels, pca=pca, whiten=whiten, fit=fit, l2_normalize=l2_normalize,
                            decode=decode, nvjpeg_share=nvjpeg_share, wait=wait, adapt=adapt, hash_decode=hash_decode,
                            scan=scan)
    finally:
        dist.close()


def _extract_all(hashes, neural, resolved, to_extract, listings, dist, device, *, workers, weights, seed, precision,
                 layers, name, out, force, chunk_size, batch_size, progress, max_pixels, pca, whiten, fit,
                 l2_normalize, decode="cpu", nvjpeg_share=None, wait=True, adapt=None,
                 hash_decode="exact", scan=None):
    workers = None if workers is None else int(workers)
    common = dict(out=Path(out), dist=dist, force=force, chunk_size=int(chunk_size), batch_size=int(batch_size),
                  workers=workers, device=device, progress=progress, max_pixels=max_pixels, wait=wait)
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
    suffix = _postprocess_suffix(pca, whiten, fit.name if fit else None, l2_normalize, adapt, scan)
    requested = {d.store_key: d for d in resolved}
    for (algo_name, ds_key), folder in raw.items():
        if ds_key in requested:
            written.append(folder)
            if suffix:
                written.append(_postprocess(algo_name, requested[ds_key], folder, suffix, raw, pca, whiten, fit,
                                            l2_normalize, Path(out), force, adapt=adapt, scan=scan))
    return written


def _checkpoint_spec(path):
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return CheckpointSpec(path.resolve(), checkpoint_name(path))


def _postprocess(algo_name, dataset, folder, suffix, raw, pca, whiten, fit, l2, out, force, adapt=None, scan=None):
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
    if scan:
        _check_scan_input(scan, source, pca, adapt, algo_name, _postprocess_suffix(
            pca, whiten, fit.name if fit else None, l2, adapt))
        steps.append({"step": "scan", "checkpoint": str(Path(str(scan)).resolve())})
    return postprocess_store(folder, target, target_name, steps, overwrite=True)


def _check_scan_input(checkpoint, source, pca, adapt, algo_name, suffix):
    """The SCAN head must receive features of the model and post-processing it was trained on: the metadata of
    the store the other steps would write (name, width) is checked against the checkpoint's record."""
    from adaptation.models import load_adaptation
    from clustering.scan import load_for_features

    width = int(pca) if pca else source.dim
    if adapt:
        width = load_adaptation(adapt)[0].out_dim
    meta = dict(source.meta, name=f"{algo_name} {suffix}".strip(), dim=width, binary=source.binary and not suffix)
    load_for_features(checkpoint, meta)


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
