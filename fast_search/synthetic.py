"""Synthetic feature databases with planted near-duplicates, for tests and benchmarks.

The database is clustered (Gaussian clusters around random centres, like real embeddings, so IVF partitions are
meaningful); each query is a noisy copy of one database row (its original), optionally with queries whose
original is not in the database (negatives). Database row ``i`` is named ``<prefix><i>.png`` and a query of row
``i`` ``<prefix><i>_<attack>.png``: stores without image folders, whose ground truth the file-name adapter of
:func:`helpers.ground_truth.ground_truth_from_names` reads unambiguously.
"""
import numpy as np

from helpers.feature_store import feature_dir, save_features

ATTACKS = ("jpg_compression_50", "gaussian_noise_0.02", "crop_0.8", "rotation_10")


def clustered_database(n, d, n_clusters=100, spread=0.35, seed=0, dtype=np.float32, chunk=65536):
    """``[n, d]`` float32 vectors: ``n_clusters`` random unit centres plus Gaussian noise of norm ~``spread``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(dtype)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        labels = rng.integers(0, n_clusters, stop - start)
        out[start:stop] = centres[labels] + rng.standard_normal((stop - start, d), dtype=dtype) * (spread / d ** 0.5)
    return out


def planted_queries(db, nq, noise=0.1, seed=1, negatives=None):
    """``nq`` noisy copies of distinct random database rows.

    Returns
    -------
    queries : float32 [nq (+ len(negatives)), d]
        Each copy is ``row + N(0, noise^2 * |row|^2 / d)``; negative queries (noisy copies of the given
        ``negatives`` rows, which are not in the database) come last.
    targets : int64 array
        The database row of each query, ``-1`` for negatives.
    """
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(len(db), size=nq, replace=False))
    rows = np.asarray(db[targets], dtype=np.float32)
    if negatives is not None and len(negatives):
        rows = np.concatenate([rows, np.asarray(negatives, dtype=np.float32)])
        targets = np.concatenate([targets, np.full(len(negatives), -1)])
    scale = noise * np.linalg.norm(rows, axis=1, keepdims=True) / rows.shape[1] ** 0.5
    queries = rows + rng.standard_normal(rows.shape).astype(np.float32) * scale
    return queries.astype(np.float32), targets.astype(np.int64)


def random_codes(n, bits, seed=0):
    """``uint8 [n, bits/8]`` random packed binary codes."""
    rng = np.random.default_rng(seed)
    return np.packbits(rng.integers(0, 2, size=(n, bits), dtype=np.uint8), axis=1)


def flip_bits(codes, n_flips, seed=1):
    """Copies of packed ``codes`` with ``n_flips`` distinct random bits flipped in each row."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(codes, axis=1)
    for row in bits:
        row[rng.choice(bits.shape[1], size=n_flips, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def database_names(n, prefix="img", start=0):
    return [f"{prefix}{i:06d}.png" for i in range(start, start + n)]


def query_names(targets, prefix="img", negative_prefix="neg", attacks=ATTACKS):
    """Query names: ``<prefix><target>_<attack>.png``, or ``<negative_prefix><j>_<attack>.png`` for ``-1``."""
    names = []
    for j, target in enumerate(targets):
        attack = attacks[j % len(attacks)]
        ident = f"{prefix}{int(target):06d}" if target >= 0 else f"{negative_prefix}{j:06d}"
        names.append(f"{ident}_{attack}.png")
    return names


def write_store(root, dataset, algorithm, features, names, **meta):
    """Write one feature store ``root/<dataset>/<slug(algorithm)>`` (binary when ``features`` is uint8)."""
    binary = np.asarray(features).dtype == np.uint8
    info = {"name": algorithm, "binary": binary, "dataset": dataset}
    info.update(meta)
    return save_features(feature_dir(dataset, algorithm, root), features, names, info, overwrite=True)
