"""Post-processing available to every algorithm: L2 normalisation, PCA / PCA-whitening, multi-layer features.

- :func:`l2_normalize`: rows scaled to unit Euclidean norm (zero rows stay zero);
- :class:`PCA`: fitted on one dataset's features (streamed, float64 covariance, so it also fits memory-mapped
  stores larger than RAM), applied to any dataset, with or without whitening; saved with
  ``np.savez`` and read with ``allow_pickle=False`` (mean, components, explained variance). Components, signs and
  whitening follow scikit-learn's ``PCA(svd_solver='full', whiten=...)``;
- :class:`MultiLayerFeatures`: forward hooks on chosen layers, each output average-pooled over space and
  L2-normalised, then concatenated (the multi-layer descriptors of the adaptation-function work, seed 001);
- :func:`postprocess_store`: apply PCA, L2 and/or adaptation (:mod:`adaptation`, ``--adapt``) steps to a
  feature store and write the derived store.

Binary features (hashes) are unpacked to 0/1 floats before any of these.
"""
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.feature_store import ChunkedFeatureWriter, load_features
from helpers.log import get_logger

logger = get_logger(__name__)
ROWS_PER_BLOCK = 32768


def l2_normalize(features, eps=1e-12):
    """Rows divided by their L2 norm (float32); rows with a norm below ``eps`` are left as they are."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.where(norms < eps, 1.0, norms)).astype(np.float32)


def as_float(features, binary=False, bits=None):
    """Features as float32; packed binary rows (hashes) become 0/1 values, ``bits`` of them."""
    features = np.asarray(features)
    if binary:
        unpacked = np.unpackbits(features, axis=1)
        return unpacked[:, :bits].astype(np.float32) if bits else unpacked.astype(np.float32)
    return features.astype(np.float32, copy=False)


def _blocks(n, rows=ROWS_PER_BLOCK):
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


class PCA:
    """Principal component analysis with scikit-learn's conventions, fitted by streaming.

    Parameters
    ----------
    n_components : int

    Attributes (after :meth:`fit`)
    ----------
    mean_ : ndarray ``[d]``
    components_ : ndarray ``[k, d]``
        Unit principal axes, largest variance first; each axis's largest-magnitude entry is positive
        (scikit-learn's ``svd_flip(u_based_decision=False)``).
    explained_variance_ : ndarray ``[k]``
        Eigenvalues of the covariance (denominator ``n - 1``).
    explained_variance_ratio_ : ndarray ``[k]``
    n_samples_ : int
    """

    def __init__(self, n_components):
        n_components = int(n_components)
        if n_components <= 0:
            raise ValueError(f"n_components must be positive, got {n_components}")
        self.n_components = n_components
        self.mean_ = self.components_ = self.explained_variance_ = self.explained_variance_ratio_ = None
        self.n_samples_ = 0
        self.info = {}

    def fit(self, features, binary=False, bits=None):
        """Fit on ``features`` (``[n, d]``, array or memmap; processed in blocks)."""
        n = features.shape[0]
        block = lambda a, b: as_float(features[a:b], binary, bits).astype(np.float64)  # noqa: E731
        d = block(0, 1).shape[1] if n else 0
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {n}")
        if self.n_components > min(n, d):
            raise ValueError(f"n_components={self.n_components} must be <= min(n_samples, n_features) = "
                             f"min({n}, {d})")
        total = np.zeros(d)
        for a, b in _blocks(n):
            total += block(a, b).sum(axis=0)
        mean = total / n
        cov = np.zeros((d, d))
        for a, b in _blocks(n):
            centred = block(a, b) - mean
            cov += centred.T @ centred
        cov /= n - 1
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        components = eigenvectors[:, order].T
        signs = np.sign(components[np.arange(d), np.argmax(np.abs(components), axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        k = self.n_components
        self.mean_ = mean
        self.components_ = components[:k]
        self.explained_variance_ = eigenvalues[:k]
        self.explained_variance_ratio_ = eigenvalues[:k] / eigenvalues.sum()
        self.n_samples_ = int(n)
        return self

    def transform(self, features, whiten=False, binary=False, bits=None):
        """Project (and optionally whiten: unit variance per component) to ``float32 [n, k]``."""
        if self.components_ is None:
            raise RuntimeError("PCA is not fitted")
        n = features.shape[0]
        out = np.empty((n, self.components_.shape[0]), dtype=np.float32)
        scale = np.sqrt(self.explained_variance_) if whiten else None
        for a, b in _blocks(n):
            projected = (as_float(features[a:b], binary, bits).astype(np.float64) - self.mean_) @ self.components_.T
            if whiten:
                projected /= np.where(scale < 1e-12, 1.0, scale)
            out[a:b] = projected
        return out

    def save(self, path):
        """Write an ``.npz`` (no pickle): mean, components, explained variance (+ ratio), n_samples, info."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, mean=self.mean_, components=self.components_, explained_variance=self.explained_variance_,
                 explained_variance_ratio=self.explained_variance_ratio_, n_samples=np.int64(self.n_samples_),
                 info=np.array(json.dumps(self.info)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as data:
            pca = cls(int(data["components"].shape[0]))
            pca.mean_ = data["mean"]
            pca.components_ = data["components"]
            pca.explained_variance_ = data["explained_variance"]
            pca.explained_variance_ratio_ = data["explained_variance_ratio"]
            pca.n_samples_ = int(data["n_samples"])
            pca.info = json.loads(str(data["info"]))
        return pca


def pca_file(fit_folder, n_components):
    """Where the PCA fitted on a store is kept: ``<fit store>/pca_<k>.npz`` (whitening reuses it)."""
    return Path(fit_folder) / f"pca_{int(n_components)}.npz"


def fit_or_load_pca(fit_folder, n_components, force=False):
    """The PCA fitted on the store ``fit_folder``: loaded when its file matches the store, fitted otherwise."""
    store = load_features(fit_folder)
    target = pca_file(fit_folder, n_components)
    if target.is_file() and not force:
        pca = PCA.load(target)
        if pca.info.get("source_created") == store.meta.get("created") and pca.n_samples_ == len(store):
            logger.info("reusing the PCA in %s", target)
            return pca, target
    logger.info("fitting PCA (%d components) on %s (%d x %d)", n_components, fit_folder, len(store), store.dim)
    pca = PCA(n_components).fit(store.features, store.binary, store.dim if store.binary else None)
    pca.info = {"source": str(fit_folder), "source_created": store.meta.get("created"),
                "dataset": store.meta.get("dataset"), "algorithm": store.meta.get("name")}
    return pca, pca.save(target)


def postprocess_store(source_folder, target_folder, name, steps, overwrite=False):
    """Apply ``steps`` to the store ``source_folder`` and write the derived store ``target_folder``.

    Parameters
    ----------
    steps : list of dict
        In order; ``{'step': 'pca', 'n_components': k, 'whiten': bool, 'fit_folder': path}``,
        ``{'step': 'l2'}``, ``{'step': 'adapt', 'checkpoint': path}`` (a module of
        ``train_adaptation.py``; its output is L2-normalised) and/or ``{'step': 'scan', 'checkpoint': path}`` (a
        head of ``scan.py``; its output is the cluster probabilities, checked by the caller against the features
        the head was trained on).
    """
    source = load_features(source_folder)
    fitted = {}
    for step in steps:
        if step["step"] == "pca":
            pca, path = fit_or_load_pca(step["fit_folder"], step["n_components"])
            fitted[id(step)] = pca
            step["pca_file"] = str(path)
        elif step["step"] == "adapt":
            from adaptation.models import load_adaptation

            fitted[id(step)], info = load_adaptation(step["checkpoint"])
            step["trained_on"] = info.get("source_name")
        elif step["step"] == "scan":
            from clustering.scan import load_heads

            fitted[id(step)], info, record = load_heads(step["checkpoint"], with_features=True)
            step["trained_on"] = (record or {}).get("store_name")
            step["num_clusters"] = fitted[id(step)].num_clusters
        elif step["step"] != "l2":
            raise ValueError(f"unknown post-processing step {step['step']!r}")
    writer = ChunkedFeatureWriter(target_folder)
    writer.discard()
    writer = ChunkedFeatureWriter(target_folder)
    bits = source.dim if source.binary else None
    width = None
    for a, b in _blocks(len(source)):
        x = as_float(source.features[a:b], source.binary, bits)
        for step in steps:
            if step["step"] == "pca":
                x = fitted[id(step)].transform(x, whiten=step["whiten"])
            elif step["step"] == "adapt":
                from adaptation.models import adapt_features

                x = adapt_features(fitted[id(step)], x)
            elif step["step"] == "scan":
                from clustering.scan import predict_proba

                x = predict_proba(fitted[id(step)], x)
            else:
                x = l2_normalize(x)
        width = x.shape[1]
        writer.write_chunk(x, source.names[a:b])
    if width is None:  # an empty store stays empty, with the right width
        width = source.dim
        for step in steps:
            width = step["n_components"] if step["step"] == "pca" else width
            width = fitted[id(step)].out_dim if step["step"] == "adapt" else width
            width = fitted[id(step)].num_clusters if step["step"] == "scan" else width
        writer.write_chunk(np.empty((0, width), dtype=np.float32), [])
    meta = {key: value for key, value in source.meta.items() if key not in ("slug", "dim", "n", "created", "binary")}
    meta.update({"name": name, "binary": False, "source": str(source_folder),
                 "source_created": source.meta.get("created"), "source_name": source.meta.get("name"),
                 "postprocessing": [{k: (str(v) if isinstance(v, Path) else v) for k, v in step.items()}
                                    for step in steps]})
    return writer.finalize(meta, overwrite=overwrite)


class _Collected(Exception):
    """Raised by the last hook: the rest of the network is not needed."""


class MultiLayerFeatures(nn.Module):
    """Concatenated, individually L2-normalised, average-pooled outputs of chosen layers of ``model``.

    Parameters
    ----------
    model : nn.Module
    layers : list of str
        Names from ``model.named_modules()`` (e.g. ``['layer2', 'layer3', 'layer4']`` for a torchvision ResNet).
        4-D outputs ``[B, C, H, W]`` are averaged over ``H, W``; 2-D outputs ``[B, C]`` are used as they are.
        The forward pass stops once every chosen layer has produced its output.
    """

    def __init__(self, model, layers):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("give at least one layer name")
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules or name == ""]
        if unknown:
            names = [name for name in modules if name and name.count(".") <= 1]
            raise ValueError(f"unknown layer(s) {unknown}; this model has for example: {', '.join(names[:40])}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers repeated: {layers}")
        self.model = model
        self.layers = layers
        self._outputs = {}
        self._active = False  # hooks act only during this wrapper's own forward pass
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name):
        def hook(module, inputs, output):
            if not self._active:
                return
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._outputs[name] = output
            if len(self._outputs) == len(self.layers):
                raise _Collected()

        return hook

    @staticmethod
    def pool(output):
        """Average-pool a layer output to ``[B, C]`` (float32)."""
        output = output.float()
        if output.ndim == 4:
            return output.mean(dim=(2, 3))
        if output.ndim == 2:
            return output
        raise ValueError(f"cannot pool a layer output of shape {tuple(output.shape)} (expected [B, C, H, W] or "
                         f"[B, C])")

    def forward(self, x):
        self._outputs = {}
        self._active = True
        try:
            self.model(x)
        except _Collected:
            pass
        finally:
            self._active = False
        missing = [name for name in self.layers if name not in self._outputs]
        if missing:
            raise RuntimeError(f"layers {missing} were not run by the model's forward pass")
        parts = [F.normalize(self.pool(self._outputs[name]), dim=1) for name in self.layers]
        self._outputs = {}
        return torch.cat(parts, dim=1)

    def remove(self):
        """Remove the hooks (the wrapped model is then unchanged)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
