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


# ---------------------------------------------------------------------------------------------------------------
# Realistic synthetic features: a database and planted copies fitted to real CNN features
# ---------------------------------------------------------------------------------------------------------------

def copies_at_cosine(originals, cosines, rng, directions=None):
    """Copies of L2-normalised ``originals`` at exactly the given cosine similarity to them.

    Each copy is ``c * x + sqrt(1 - c^2) * u`` where ``u`` is a unit vector orthogonal to ``x``: the part of a
    random direction orthogonal to ``x``. The direction is isotropic Gaussian by default, or the given
    ``directions`` (``[n, d]``, e.g. drawn from the covariance of real edits: how edits really move features).

    Parameters
    ----------
    originals : float array [n, d]
        Unit-norm rows.
    cosines : float array [n]
        Target cosine of each copy to its original, in ``[-1, 1]``.
    rng : numpy.random.Generator
        Used only when ``directions`` is None.

    Returns
    -------
    float32 array [n, d]
        Unit-norm copies.
    """
    originals = np.asarray(originals, dtype=np.float32)
    cos = np.clip(np.asarray(cosines, dtype=np.float32), -1.0, 1.0)[:, None]
    noise = rng.standard_normal(originals.shape, dtype=np.float32) if directions is None else \
        np.array(directions, dtype=np.float32)
    noise -= (noise * originals).sum(axis=1, keepdims=True) * originals
    noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    return (cos * originals + np.sqrt(1 - cos ** 2) * noise).astype(np.float32)


def quantile_sample(values, size, rng):
    """``size`` draws matching the empirical distribution of ``values`` by quantile matching: the interpolated
    empirical quantiles at the stratified levels ``(i + u_i) / size`` (``u_i`` uniform in [0, 1)), shuffled. Their
    quantiles equal ``values``' up to the interpolation and one stratum (``1 / size``)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        raise ValueError("quantile_sample needs at least one value to match")
    levels = (np.arange(size) + rng.random(size)) / size
    return rng.permutation(np.quantile(values, levels))


class FeatureModel:
    """A generative model of L2-normalised features fitted to real ones (:func:`fit_feature_model`).

    A database row is ``normalise(a * mean + sqrt(share) * c_j + sqrt(1 - share) * w + noise * g)``: ``mean`` the
    real features' mean, ``c_j`` the centre of the row's cluster (``cluster_size`` rows per cluster on average) and
    ``w`` a within-cluster term, both Gaussian with the real features' covariance (top principal components
    ``basis`` with standard deviations ``scales``), ``g`` isotropic. ``edits`` are real edit displacements (copy
    minus original, normalised features): planted copies move along their span (:meth:`queries`), at cosines
    drawn from the real copies' ``query_cosines``.
    """

    def __init__(self, mean, basis, scales, edits, query_cosines, mean_scale=1.0, noise=0.0, share=0.0,
                 cluster_size=64):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.basis = np.asarray(basis, dtype=np.float32)
        self.scales = np.asarray(scales, dtype=np.float32)
        self.edits = None if edits is None else np.asarray(edits, dtype=np.float32)
        self.query_cosines = np.sort(np.asarray(query_cosines, dtype=np.float64))
        self.mean_scale, self.noise, self.share = float(mean_scale), float(noise), float(share)
        self.cluster_size = int(cluster_size)

    @property
    def dim(self):
        return self.mean.shape[0]

    def params(self):
        """The fitted scalars (for the JSON)."""
        return {"mean_scale": self.mean_scale, "noise": self.noise, "cluster_share": self.share,
                "cluster_size": self.cluster_size, "components": int(len(self.scales)),
                "edit_vectors": 0 if self.edits is None else int(len(self.edits)), "dim": int(self.dim)}

    def centres(self, n, seed):
        """The cluster centres of an ``n``-row database (Gaussian, the fitted covariance)."""
        rng = np.random.default_rng([seed, 1])
        count = max(1, int(round(n / self.cluster_size)))
        return (rng.standard_normal((count, len(self.scales)), dtype=np.float32) * self.scales) @ self.basis

    def rows(self, count, rng, centres):
        """``count`` unit-norm rows drawn from the model (``centres`` from :meth:`centres`)."""
        z = rng.standard_normal((count, len(self.scales)), dtype=np.float32) * self.scales
        x = self.mean_scale * self.mean + np.sqrt(1 - self.share) * (z @ self.basis)
        if self.share > 0:
            x += np.sqrt(self.share) * centres[rng.integers(0, len(centres), count)]
        if self.noise > 0:
            x += rng.standard_normal((count, self.dim), dtype=np.float32) * (self.noise / np.sqrt(self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def database(self, n, seed=0, out=None, chunk=65536):
        """``n`` rows, generated chunk by chunk into ``out`` (an array or memory map ``[n, d]``; a new array when
        None). Deterministic in ``(n, seed)``."""
        out = np.empty((n, self.dim), dtype=np.float32) if out is None else out
        centres = self.centres(n, seed)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            out[start:stop] = self.rows(stop - start, np.random.default_rng([seed, 2, start]), centres)
        return out

    def negatives(self, count, n, seed=0):
        """``count`` rows from the same distribution as an ``n``-row database of ``seed`` (same clusters), not in
        it: the originals of negative queries."""
        return self.rows(count, np.random.default_rng([seed, 3]), self.centres(n, seed))

    def queries(self, originals, seed=0):
        """Planted copies of ``originals`` (unit rows): cosines drawn from the real ones by quantile matching
        (:func:`quantile_sample`), directions from the real edits' covariance (random Gaussian combinations of
        the edit displacements). Returns ``(copies, cosines)``."""
        rng = np.random.default_rng([seed, 4])
        cosines = quantile_sample(self.query_cosines, len(originals), rng)
        if self.edits is None:  # no real edits measured: isotropic directions
            return copies_at_cosine(originals, cosines, rng), cosines
        weights = rng.standard_normal((len(originals), len(self.edits)), dtype=np.float32)
        return copies_at_cosine(originals, cosines, rng, directions=weights @ self.edits), cosines


def pairwise_cosines(x, pairs, seed=0):
    """Cosines of ``pairs`` random distinct pairs of rows of the unit-norm ``x`` (``x`` may be a memory map)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(x), pairs)
    b = (a + rng.integers(1, len(x), pairs)) % len(x)
    return np.einsum("ij,ij->i", np.asarray(x[a], dtype=np.float32), np.asarray(x[b], dtype=np.float32))


def best_other_cosine(queries, database, exclude):
    """Each query's largest cosine to a database row other than its ``exclude`` row (``-1``: none excluded)."""
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(database, dtype=np.float32).T
    rows = np.flatnonzero(np.asarray(exclude) >= 0)
    scores[rows, np.asarray(exclude)[rows]] = -np.inf
    return scores.max(axis=1)


def distribution_stats(values, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)):
    """``{"q05": ..., "q50": ..., "mean": ...}`` of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    out = {f"q{int(round(100 * q)):02d}": float(np.quantile(values, q)) for q in quantiles}
    out["mean"] = float(values.mean())
    return out


def fit_feature_model(database, copies, copy_sources, components=None, cluster_size=64, seed=0,
                      shares=(0.0, 0.25, 0.5, 0.75), noises=None, sample=500, verbose=None, query_cosines=None):
    """Fit a :class:`FeatureModel` to real features.

    Parameters
    ----------
    database : float array [m, d]
        Real features of distinct images (any scale; L2-normalised here).
    copies : float array [q, d] or None
        Real features of edited copies; ``copy_sources[i]`` is the database row of copy ``i``. When None,
        ``query_cosines`` gives the copies' cosines to their originals and the copies move isotropically.
    components : int, optional
        Principal components kept for the covariance (default: all, at most ``m - 1``).
    shares, noises : sequences
        Grids of the cluster share and isotropic noise level; the fit keeps the pair whose ``sample``-row
        synthetic database is closest to the real one on the pairwise cosine quartiles and the median of each
        row's largest cosine to another row (the nearest non-matching image). The mean's scale is then solved by
        bisection on the pairwise median.

    Returns
    -------
    model : FeatureModel
    report : dict
        The measured and fitted statistics.
    """
    db = np.asarray(database, dtype=np.float64)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    if copies is None:  # no real copies: only their cosines are known (query_cosines)
        cp, edits, query_cos = None, None, np.asarray(query_cosines, dtype=np.float64)
    else:
        cp = np.asarray(copies, dtype=np.float64)
        cp /= np.linalg.norm(cp, axis=1, keepdims=True)
        sources = np.asarray(copy_sources)
        query_cos = np.einsum("ij,ij->i", cp, db[sources])
        edits = cp - db[sources]
    mean = db.mean(axis=0)
    _, sing, vt = np.linalg.svd(db - mean, full_matrices=False)
    keep = min(len(sing), components or len(sing), len(db) - 1)
    scales = sing[:keep] / np.sqrt(len(db) - 1)
    real_pairs = (db @ db.T)[np.triu_indices(len(db), 1)]
    real_nn = best_other_cosine(db, db, np.arange(len(db)))
    count = min(sample, len(db))
    real_nn_sample = best_other_cosine(db[:count], db[:count], np.arange(count))
    target = np.quantile(real_pairs, [0.25, 0.5, 0.75])
    noises = noises if noises is not None else (0.0, 0.1, 0.2)

    def candidate(share, noise, mean_scale):
        return FeatureModel(mean, vt[:keep], scales, edits, query_cos, mean_scale, noise, share, cluster_size)

    def stats(model):
        x = model.database(count, seed=seed)
        pairs = (x @ x.T)[np.triu_indices(count, 1)]
        return np.quantile(pairs, [0.25, 0.5, 0.75]), float(np.median(best_other_cosine(x, x, np.arange(count))))

    def solve_mean(share, noise):
        low, high = 0.0, 4.0
        for _ in range(18):  # the pairwise median grows with the mean's weight
            middle = (low + high) / 2
            if stats(candidate(share, noise, middle))[0][1] < target[1]:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    best = None
    for share in shares:
        for noise in noises:
            scale = solve_mean(share, noise)
            quartiles, nn = stats(candidate(share, noise, scale))
            loss = float(np.sum((quartiles - target) ** 2) + (nn - np.median(real_nn_sample)) ** 2)
            if verbose:
                verbose(f"fit: cluster share {share:.2f} noise {noise:.2f} mean scale {scale:.3f}: pairwise "
                        f"quartiles {np.round(quartiles, 3).tolist()} (real {np.round(target, 3).tolist()}), nearest "
                        f"other median {nn:.3f} (real {np.median(real_nn_sample):.3f}), loss {loss:.5f}")
            if best is None or loss < best[0]:
                best = (loss, share, noise, scale)
    _, share, noise, scale = best
    model = candidate(share, noise, scale)
    x = model.database(count, seed=seed)
    report = {
        "real": {"n_database": int(len(db)), "n_copies": 0 if cp is None else int(len(cp)),
                 "query_to_original": distribution_stats(query_cos),
                 "database_pairwise": distribution_stats(real_pairs),
                 "database_nearest_other": distribution_stats(real_nn),
                 "copy_best_non_matching": None if cp is None else
                 distribution_stats(best_other_cosine(cp, db, sources))},
        "synthetic_at_real_size": {
            "n_database": int(count),
            "database_pairwise": distribution_stats((x @ x.T)[np.triu_indices(count, 1)]),
            "database_nearest_other": distribution_stats(best_other_cosine(x, x, np.arange(count))),
            "copy_best_non_matching": distribution_stats(best_other_cosine(model.queries(x, seed)[0], x,
                                                                           np.arange(count)))},
        "params": model.params()}
    return model, report


def lognormal_cosines(median, p5, size=100_000, seed=0):
    """Cosines whose gap ``1 - cos`` is log-normal with the given median cosine and 5th percentile cosine (the
    shape of real edited copies' gaps; :mod:`benchmarks.bench_dedup_scale` uses the same law)."""
    rng = np.random.default_rng(seed)
    sigma = (np.log(1 - p5) - np.log(1 - median)) / 1.6449
    return np.clip(1 - np.exp(rng.normal(np.log(1 - median), sigma, size)), -1.0, 1.0)
