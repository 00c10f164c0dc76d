"""One algorithm's features for files and in-memory images: a perceptual hash (binary, Hamming distance) or a
neural model of the zoo (float, cosine similarity).

Distances inside :mod:`dedup` are "lower = closer" for every algorithm: Hamming bits for hashes, ``1 - cosine``
for models; :func:`score_of` turns them into what the user reads (bits, or a cosine similarity).
"""
import numpy as np

from helpers.image_io import ImageLoadError, SkipReport, load_image
from helpers.log import get_logger

logger = get_logger(__name__)


class Featurizer:
    """Computes the features of one algorithm.

    Parameters
    ----------
    algo : str
        A hash name (``'Phash 64 bits'``) or a model name of the zoo (``'ResNet50 1x'``), or a checkpoint file.
    weights : str
        For models: ``'pretrained'`` (default; an offline machine needs the weights file in the torch hub
        cache, the error says which), ``'pretrained:TAG'``, ``'random'`` or a state-dict file.
    device : str
        ``auto``, ``cpu``, ``cuda``...
    batch_size : int
        Images per model batch.
    workers : int
        Hashing processes / DataLoader workers.
    """

    def __init__(self, algo, weights="pretrained", device="cpu", batch_size=32, workers=1):
        from extractor.hashing import CropResistantHash
        from extractor.registry import resolve_algorithm

        self.algo = algo
        spec = resolve_algorithm(algo)
        self.workers = int(workers)
        self.batch_size = int(batch_size)
        if getattr(spec, "binary", False):
            if isinstance(spec, CropResistantHash):
                raise ValueError("the crop-resistant hash is matched segment by segment, not by one distance; "
                                 "find_duplicates takes the other hashes (Phash, Dhash, Ahash, Whash, Colorhash)")
            self.spec = spec
            self.binary = True
            self.metric = "hamming"
            self.dim = int(spec.bits)
            self.name = spec.name
            self.meta = spec.meta() if hasattr(spec, "meta") else {"name": spec.name}
            self._model = None
            self.engine = "hash"
        else:
            from extractor.models import build_model
            from helpers.device import resolve_device

            self.device = resolve_device(str(device))
            model, transform, info = build_model(algo, weights=weights, device=self.device)
            self._model, self._transform = model.eval(), transform
            self.spec = spec
            self.binary = False
            self.metric = "cosine"
            self.dim = int(info["embedding_dim"])
            self.name = info["name"]
            self.meta = dict(info)
            self.meta["weights_arg"] = str(weights)
            self.engine = "torch"
        self.meta.update({"binary": self.binary, "metric": self.metric})

    @property
    def score_name(self):
        """``distance`` (Hamming bits, lower = closer) or ``similarity`` (cosine, higher = closer)."""
        return "distance" if self.binary else "similarity"

    def files(self, paths, report=None):
        """Features of image files.

        Returns
        -------
        kept : list of str
            The files that could be read, in input order (the others go to ``report``).
        features : ndarray
            ``uint8 [len(kept), bits/8]`` packed hashes or ``float32 [len(kept), d]`` L2-normalised embeddings.
        """
        report = SkipReport() if report is None else report
        paths = [str(path) for path in paths]
        if self.binary:
            from extractor.hashing import hash_images

            kept, (features,) = hash_images(paths, [self.spec], workers=self.workers, report=report)
            return kept, features
        kept, parts = [], []
        chunk = max(self.batch_size * 8, 256)
        for start in range(0, len(paths), chunk):
            images = []
            for path in paths[start:start + chunk]:
                try:
                    images.append(load_image(path))
                    kept.append(path)
                except ImageLoadError as exc:
                    report.add(path, str(exc))
            if images:
                parts.append(self.images(images))
        features = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        return kept, features

    def images(self, images):
        """Features of PIL images (rows in input order), as :meth:`files` returns them."""
        images = list(images)
        if self.binary:
            from extractor.hashing import compute_hashes

            if not images:
                return np.zeros((0, self.spec.nbytes), dtype=np.uint8)
            return np.stack([compute_hashes(image, [self.spec])[0] for image in images])
        from extractor.embedding import embed_images

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = embed_images(self._model, self._transform, images, batch_size=self.batch_size, device=self.device)
        return normalize(x)


class OnnxFeaturizer(Featurizer):
    """A :class:`Featurizer` whose model is the ONNX export saved with an index (:class:`dedup.onnx_model.OnnxNetwork`
    on ONNX Runtime): same features (checked at export), no torch import. CPU only (what ``query.py`` needs)."""

    def __init__(self, network, algo, meta):
        self.algo = algo
        self.spec = None
        self.workers, self.batch_size = 1, 1
        self.device = "cpu"
        self._model, self._network = None, network
        self.binary = False
        self.metric = "cosine"
        self.meta = dict(meta)
        self.dim = int(self.meta.get("embedding_dim", self.meta.get("dim")))
        self.name = self.meta.get("name", algo)
        self.engine = "onnx"

    def images(self, images):
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(self._network.embed(images))


def normalize(x):
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    from fast_search.index import l2_normalise_rows

    return l2_normalise_rows(np.asarray(x, dtype=np.float32))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def paired_distances(a, b, binary):
    """Distances between rows ``a[i]`` and ``b[i]`` (Hamming bits, or ``1 - cosine`` of normalised rows)."""
    a, b = np.asarray(a), np.asarray(b)
    if binary:
        return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int64).astype(np.float64)
    return 1.0 - np.einsum("...d,...d->...", a.astype(np.float64), b.astype(np.float64))


def score_of(distance, binary):
    """What users read: Hamming bits for hashes, cosine similarity for models."""
    distance = np.asarray(distance, dtype=np.float64)
    return distance if binary else 1.0 - distance


def distance_of(score, binary):
    """The inverse of :func:`score_of`."""
    score = np.asarray(score, dtype=np.float64)
    return score if binary else 1.0 - score
