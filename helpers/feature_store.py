"""The feature store: one folder per (dataset, algorithm), a file format users rely on.

Layout of ``Features/<dataset-key>/<algorithm-slug>/`` (the key of a registered dataset is its name; a folder
dataset's key is its folder name plus a digest of its resolved location, :attr:`helpers.datasets.Dataset.store_key`,
so two folders named ``images`` never share a store):

- ``features.npy``: ``float32 [N, d]`` for embeddings, or ``uint8 [N, bits/8]`` (``np.packbits`` rows, big-endian
  bit order) for binary hashes; plain ``.npy``, read memory-mapped, never pickled;
- ``names.txt``: one image path per line, in the same order as the rows (relative to the repository root when the
  image lies inside it);
- ``meta.json``: display name, slug, dim (number of values, or of bits for binary features), dtype, binary flag,
  number of rows, dataset, preprocessing, weights source and sha256, date and library versions, and the
  ``fingerprint`` of everything that determines the rows (:func:`fingerprint`): a store whose fingerprint no
  longer matches the request is recomputed, never silently reused.

A store is written atomically: everything goes into a temporary sibling folder that is renamed into place at the
end, so an interrupted run never leaves a partial store that looks complete. Long extractions write
chunks with :class:`ChunkedFeatureWriter` (kept in ``<folder>.partial/``) and resume from the last finished chunk.
"""
import datetime as _dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import hashlib
import json

from .paths import FEATURES_DIR, REPO_ROOT, slugify
from .results import read_json, write_json

FEATURES_FILE = "features.npy"
NAMES_FILE = "names.txt"
META_FILE = "meta.json"
REQUIRED_META = ("name", "slug", "dim", "dtype", "binary", "n")


class FeatureStoreError(Exception):
    """A missing, incomplete or inconsistent feature store."""


@dataclass
class FeatureSet:
    """Features of one dataset by one algorithm: rows, image names and metadata."""

    features: np.ndarray
    names: list
    meta: dict

    def __post_init__(self):
        if len(self.names) != self.features.shape[0]:
            raise FeatureStoreError(f"{len(self.names)} names for {self.features.shape[0]} feature rows")

    def __len__(self):
        return len(self.names)

    @property
    def binary(self):
        return bool(self.meta.get("binary", False))

    @property
    def dim(self):
        """Number of values per image (bits for binary features)."""
        return int(self.meta.get("dim", self.features.shape[1] * (8 if self.binary else 1)))

    @property
    def name(self):
        return self.meta.get("name", "")

    def unpacked_bits(self):
        """Binary features as a ``uint8 [N, bits]`` array of 0/1."""
        if not self.binary:
            raise FeatureStoreError("unpacked_bits() is only defined for binary features")
        return np.unpackbits(np.asarray(self.features), axis=1)[:, : self.dim]


def feature_dir(dataset, algorithm, root=FEATURES_DIR):
    """``root/<dataset store key>/<algorithm-slug>``.

    ``dataset`` is a :class:`helpers.datasets.Dataset`, or what ``--dataset`` takes (a registered name, a folder,
    or the bare name of a store written by code), resolved the same way by every script.
    """
    if not hasattr(dataset, "store_key"):
        from .datasets import resolve_store_dataset

        dataset = resolve_store_dataset(dataset)
    return Path(root) / dataset.store_key / slugify(algorithm)


def fingerprint(fields):
    """SHA-256 (hex) of a JSON-able dict: what determines a store's rows (algorithm, weights identity,
    preprocessing, precision, decode path, image list with sizes and modification times...)."""
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_difference(old_fields, new_fields):
    """A short description of what differs between two fingerprint field dicts (for log lines and errors)."""
    old_fields, new_fields = old_fields or {}, new_fields or {}
    keys = sorted(set(old_fields) | set(new_fields))
    changed = [key for key in keys if old_fields.get(key) != new_fields.get(key)]
    if not changed:
        return "unknown difference (a store made by an older version, without a fingerprint)"
    parts = []
    for key in changed:
        if key == "images":
            parts.append("the image list or the files changed "
                         f"({(old_fields.get('n_images'))} images then, {new_fields.get('n_images')} now)")
        elif key != "n_images":
            parts.append(f"{key}: {old_fields.get(key)!r} then, {new_fields.get(key)!r} now")
    return "; ".join(parts) or "the image list changed"


def display_path(path):
    """A path as stored in ``names.txt``: relative to the repository root when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _complete_meta(meta, features):
    meta = dict(meta)
    missing = [key for key in ("name",) if key not in meta]
    if missing:
        raise FeatureStoreError(f"meta lacks {missing}")
    binary = bool(meta.get("binary", features.dtype == np.uint8))
    meta.setdefault("slug", slugify(meta["name"]))
    meta["binary"] = binary
    meta["dtype"] = str(features.dtype)
    meta["n"] = int(features.shape[0])
    meta.setdefault("dim", int(features.shape[1] * (8 if binary else 1)))
    meta.setdefault("created", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    if "versions" not in meta:
        meta["versions"] = {"numpy": np.__version__}
        for module in ("torch", "torchvision", "PIL"):
            try:
                meta["versions"][module] = __import__(module).__version__
            except ImportError:
                pass
    return meta


def _validate(features, names):
    if features.ndim != 2:
        raise FeatureStoreError(f"features must be a 2-D array, got shape {features.shape}")
    if features.dtype not in (np.float32, np.uint8):
        raise FeatureStoreError(f"features must be float32 or uint8 (packed bits), got {features.dtype}")
    if len(names) != features.shape[0]:
        raise FeatureStoreError(f"{len(names)} names for {features.shape[0]} feature rows")
    bad = [name for name in names if "\n" in str(name)]
    if bad:
        raise FeatureStoreError(f"image names cannot contain newlines: {bad[0]!r}")
    if len(set(names)) != len(names):
        seen, twice = set(), None
        for name in names:
            if name in seen:
                twice = name
                break
            seen.add(name)
        raise FeatureStoreError(f"an image is listed twice ({twice!r}): a store holds each image once")


def _install(tmp, folder, overwrite):
    """Move the finished temporary folder ``tmp`` to ``folder`` (replacing it when ``overwrite``)."""
    folder = Path(folder)
    if folder.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FeatureStoreError(f"{folder} already exists; pass overwrite=True (--force) to replace it")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def _new_tmp(folder):
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _write_names(path, names):
    with open(path, "w", encoding="utf-8") as handle:
        for name in names:
            handle.write(f"{name}\n")


def save_features(folder, features, names, meta, overwrite=False):
    """Write a feature store atomically.

    Parameters
    ----------
    folder : path
        Target folder, usually :func:`feature_dir`.
    features : ndarray
        ``float32 [N, d]`` or packed bits ``uint8 [N, bits/8]``.
    names : sequence of str
        Image paths, one per row.
    meta : dict
        At least ``name``; ``binary``, ``dim`` (bits for binary), ``preprocessing``, ``weights`` ... are kept.
    overwrite : bool
        Replace an existing store.
    """
    features = np.ascontiguousarray(features)
    names = [str(name) for name in names]
    _validate(features, names)
    meta = _complete_meta(meta, features)
    tmp = _new_tmp(folder)
    np.save(tmp / FEATURES_FILE, features, allow_pickle=False)
    _write_names(tmp / NAMES_FILE, names)
    write_json(tmp / META_FILE, meta)  # written last inside tmp; the rename below is what publishes the store
    return _install(tmp, folder, overwrite)


def _read_names(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]
    except UnicodeDecodeError:
        raise FeatureStoreError(f"{path} is not a UTF-8 text file (one image name per line)") from None


_REBUILD = "delete the folder or re-extract it (extract_features.py ... --force)"


def _read_meta(path):
    """``meta.json`` as a dict, or one :class:`FeatureStoreError` naming the file and what is wrong."""
    try:
        meta = read_json(path)
    except UnicodeDecodeError:
        raise FeatureStoreError(f"{path} is not a UTF-8 JSON file; {_REBUILD}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise FeatureStoreError(f"{path} is not valid JSON ({exc}); {_REBUILD}") from None
    if not isinstance(meta, dict):
        raise FeatureStoreError(f"{path} must hold a JSON object, not {type(meta).__name__}; {_REBUILD}")
    lacking = [key for key in REQUIRED_META if key not in meta]
    if lacking:
        raise FeatureStoreError(f"{path} lacks {lacking}; {_REBUILD}")
    if isinstance(meta["n"], bool) or not isinstance(meta["n"], int) or meta["n"] < 0:
        raise FeatureStoreError(f"{path}: n must be a row count, got {meta['n']!r}; {_REBUILD}")
    return meta


def _read_array(path, mmap):
    """The 2-D float32 / uint8 array of ``features.npy``, checked before NumPy maps it.

    Raises :class:`FeatureStoreError` naming the file for: not a ``.npy`` file (text, empty...), a header that
    declares Python objects (pickled data, never loaded), a wrong shape or dtype, a file shorter than its
    header says (an interrupted copy).
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != fmt.MAGIC_PREFIX:
                raise FeatureStoreError(f"{path} is not a NumPy array file (.npy); {_REBUILD}")
            handle.seek(0)
            version = fmt.read_magic(handle)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            data_start = handle.tell()
    except FeatureStoreError:
        raise
    except (ValueError, EOFError, OSError) as exc:
        raise FeatureStoreError(f"{path} has an unreadable .npy header ({exc}); {_REBUILD}") from None
    if dtype.hasobject:
        raise FeatureStoreError(f"{path} holds pickled Python objects, which are never loaded; {_REBUILD}")
    if len(shape) != 2:
        raise FeatureStoreError(f"{path} must hold a 2-D array [images, values], got shape {shape}; {_REBUILD}")
    if dtype not in (np.float32, np.uint8):
        raise FeatureStoreError(f"{path} must hold float32 (embeddings) or uint8 (packed hash bits), got {dtype}; "
                                f"{_REBUILD}")
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise FeatureStoreError(f"{path} is truncated: {size} bytes where its header announces {shape[0]}x{shape[1]} "
                                f"{dtype} ({expected} bytes), an interrupted write or copy; {_REBUILD}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_features(folder, mmap=True):
    """Read a feature store (memory-mapped by default).

    Raises
    ------
    FeatureStoreError
        When the folder is missing or incomplete, or its files are damaged (one message naming the file, what
        is wrong and how to rebuild it) or disagree.
    """
    folder = Path(folder)
    missing = [name for name in (FEATURES_FILE, NAMES_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        partial = folder.with_name(folder.name + ".partial")
        extra = f" (an interrupted extraction is in {partial}; re-run it to resume)" if partial.exists() else ""
        raise FeatureStoreError(f"no complete feature store in {folder}: missing {', '.join(missing)}{extra}")
    meta = _read_meta(folder / META_FILE)
    features = _read_array(folder / FEATURES_FILE, mmap)
    names = _read_names(folder / NAMES_FILE)
    if features.shape[0] != meta["n"] or len(names) != meta["n"]:
        raise FeatureStoreError(f"{folder}: meta says {meta['n']} rows, features.npy has {features.shape[0]}, "
                                f"names.txt has {len(names)}")
    return FeatureSet(features, names, meta)


def load_dataset_features(dataset, algorithm, root=FEATURES_DIR, mmap=True):
    """Load the store of ``dataset`` (a :class:`helpers.datasets.Dataset` or what ``--dataset`` takes) by
    ``algorithm``, with an error that gives the command creating it."""
    folder = feature_dir(dataset, algorithm, root)
    try:
        return load_features(folder, mmap=mmap)
    except FeatureStoreError as exc:
        if folder.exists() and (folder / META_FILE).is_file():
            raise  # a damaged store: the error says what is wrong with it
        given = dataset
        if hasattr(dataset, "store_key"):
            given = dataset.name if dataset.registered or not dataset.folders else dataset.folders[0]
        raise FeatureStoreError(f"{exc}. Create it with: python3 extract_features.py --algo \"{algorithm}\" "
                                f"--dataset {given}") from None


def combine_features(main, distractor):
    """Concatenate a main dataset's features with a distractor dataset's (the seed's ``combine_features``).

    The distractors come after the main rows; both must come from the same algorithm.
    """
    if main.binary != distractor.binary or main.features.shape[1] != distractor.features.shape[1]:
        raise FeatureStoreError("cannot combine features of different algorithms: "
                                f"{main.name} {main.features.shape} vs {distractor.name} {distractor.features.shape}")
    features = np.concatenate([np.asarray(main.features), np.asarray(distractor.features)], axis=0)
    meta = dict(main.meta)
    meta["n"] = int(features.shape[0])
    meta["dataset"] = f"{main.meta.get('dataset', '?')}+{distractor.meta.get('dataset', '?')}"
    meta["n_main"] = len(main)
    return FeatureSet(features, list(main.names) + list(distractor.names), meta)


class ChunkedFeatureWriter:
    """Resumable writer: chunks go to ``<folder>.partial/``; :meth:`finalize` publishes the store atomically.

    A chunk counts as written only once its ``.npy`` file is renamed into place (after its names file), so a
    kill at any moment leaves either a whole chunk or none.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        self.partial.mkdir(parents=True, exist_ok=True)

    def _chunk_files(self):
        return sorted(self.partial.glob("chunk_*.npy"))

    def completed_names(self):
        """Names already written, in order (chunks must be contiguous from 0)."""
        names = []
        for index, path in enumerate(self._chunk_files()):
            if path.name != f"chunk_{index:06d}.npy":
                raise FeatureStoreError(f"non-contiguous chunks in {self.partial}; delete it to restart")
            names.extend(_read_names(path.with_suffix(".txt")))
        return names

    def write_chunk(self, features, names):
        """Append one chunk (features rows with their names)."""
        features = np.ascontiguousarray(features)
        names = [str(name) for name in names]
        _validate(features, names)
        index = len(self._chunk_files())
        stem = self.partial / f"chunk_{index:06d}"
        _write_names(stem.with_suffix(".txt"), names)
        tmp = self.partial / f".chunk_{index:06d}.tmp.npy"
        np.save(tmp, features, allow_pickle=False)
        os.replace(tmp, stem.with_suffix(".npy"))

    def finalize(self, meta, overwrite=False):
        """Stream all chunks into ``features.npy`` (never all in memory) and publish the store."""
        chunks = self._chunk_files()
        if not chunks:
            raise FeatureStoreError(f"nothing to finalize in {self.partial}")
        arrays = [np.load(path, mmap_mode="r", allow_pickle=False) for path in chunks]
        names = self.completed_names()
        width, dtype = arrays[0].shape[1], arrays[0].dtype
        if any(a.shape[1] != width or a.dtype != dtype for a in arrays):
            raise FeatureStoreError(f"chunks in {self.partial} disagree in width or dtype")
        total = sum(a.shape[0] for a in arrays)
        tmp = _new_tmp(self.folder)
        out = np.lib.format.open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=dtype, shape=(total, width))
        start = 0
        for array in arrays:
            out[start:start + array.shape[0]] = array
            start += array.shape[0]
        out.flush()
        del out
        _write_names(tmp / NAMES_FILE, names)
        write_json(tmp / META_FILE, _complete_meta(meta, _Shape(total, width, dtype)))
        _install(tmp, self.folder, overwrite)
        shutil.rmtree(self.partial, ignore_errors=True)
        return self.folder

    def discard(self):
        """Remove the partial chunks (restart from scratch)."""
        shutil.rmtree(self.partial, ignore_errors=True)


class _Shape:
    """Stand-in with the ``shape``/``dtype`` of an array that is only on disk."""

    def __init__(self, n, width, dtype):
        self.shape = (n, width)
        self.dtype = np.dtype(dtype)


# What a fingerprint holds that is not about the model: the images (and the decode path / precision, which change
# pixels and rounding but not which network produced the features).
_NOT_MODEL_FIELDS = ("images", "n_images", "decode", "nvjpeg_share", "precision")


def model_identity(meta):
    """The identity of the model behind a store's features, without its images: ``(digest, fields)``.

    Two stores with the same identity hold comparable features (same algorithm, weights and their SHA-256,
    preprocessing, layers, post-processing), whatever images they cover, so something trained on one store (a SCAN
    head, ...) applies to the other. ``fields`` are the store's fingerprint fields without the image list, the
    decode path and the precision, plus its display name and width (the name of a post-processed store says its
    steps: ``<algorithm> PCA256 on <dataset>``, ``... adapted <run>``). A store written by code, without a
    fingerprint, is identified by its name, width and ``algorithm`` entry.
    """
    fields = {key: value for key, value in (meta.get("fingerprint_fields") or {}).items()
              if key not in _NOT_MODEL_FIELDS}
    if not fields:
        fields = {"algorithm": meta.get("algorithm")}
    fields.update(name=meta.get("name"), dim=meta.get("dim"), binary=bool(meta.get("binary", False)))
    return fingerprint(fields), fields
