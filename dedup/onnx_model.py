"""The index's model exported to ONNX, so that ``query.py`` embeds a query with ONNX Runtime instead of importing
torch, timm and torchvision (seconds of imports on a 2-core machine, more than the whole query).

:func:`export_model` (called by ``build_index.py`` through :func:`dedup.index.build_from_features`) exports the
torch embedding network with ``torch.onnx.export`` into ``model.onnx`` next to the index, then checks it: ONNX
Runtime's embedding of a fixed random input must match torch's (cosine > ``1 - 1e-5``). A model that fails to
export or fails the check raises :class:`ExportRefused`; the index then records the reason and ``query.py`` uses
torch. :class:`OnnxNetwork` loads the file on ONNX Runtime's CPU provider and embeds PIL images with the index's
preprocessing (:class:`extractor.transforms.ImageTransform`'s resize and crop, then ``ToTensor`` + ``Normalize``'s
float32 arithmetic in numpy): the same inputs as at indexing, no torch import.
"""
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"
TOLERANCE = 1e-5  # the check's cosine must exceed 1 - TOLERANCE
INPUT, OUTPUT = "pixels", "embedding"


class ExportRefused(ValueError):
    """The model could not be exported to ONNX, or the export does not match torch (the caller keeps torch)."""


def _check_sizes(preprocessing):
    """``(height, width)`` inputs of the check: the fixed input size, or for variable-size models (SSCD's
    shorter-side resize) a square and a landscape input, so that a size traced as a constant cannot pass."""
    height, width = preprocessing.input_size
    if preprocessing.variable_size:
        return [(height, width), (height, width + width // 3 + 5)]
    return [(height, width)]


def export_model(model, preprocessing, folder):
    """Export ``model`` to ``folder/model.onnx`` and check it against torch.

    Parameters
    ----------
    model : torch.nn.Module
        The embedding network (``[B, 3, H, W]`` -> ``[B, D]``), in eval mode.
    preprocessing : extractor.transforms.Preprocessing
        Its preprocessing (gives the check's input size).
    folder : path
        Where ``model.onnx`` goes (the index folder).

    Returns
    -------
    dict
        ``file``, ``cosine`` (the lowest of the check's inputs), ``max_abs_difference``, ``opset``.

    Raises
    ------
    ExportRefused
        When the export fails or the check's cosine is not above ``1 - TOLERANCE`` (no file is left).
    """
    import warnings

    import torch

    path = Path(folder) / MODEL_FILE
    device = next(model.parameters()).device
    sizes = _check_sizes(preprocessing)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, size=(2, 3, h, w)).astype(np.float32) for h, w in sizes]
    axes = {0: "batch", 2: "height", 3: "width"} if preprocessing.variable_size else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript-based exporter (dynamo=False) is deprecated in favour of the dynamo one, which needs
            # onnxscript (not a requirement) and takes much longer; the legacy one exports every model of the zoo
            # we tried, and the check below guards the result: its warnings are noise for build_index.py's users.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (torch.from_numpy(inputs[0]).to(device),), str(path), input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: {0: "batch"}},
                              dynamo=False)
    except Exception as exc:  # any exporter failure (unsupported operator...) means: keep torch
        path.unlink(missing_ok=True)
        raise ExportRefused(f"torch.onnx.export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    try:
        session = _session(path, threads=None)
        cosine, max_abs = 1.0, 0.0
        for x in inputs:
            with torch.inference_mode():
                reference = model(torch.from_numpy(x).to(device)).double().cpu().numpy()
            ours = _run(session, x).astype(np.float64)
            if ours.shape != reference.shape:
                raise ExportRefused(f"the ONNX model gives shape {ours.shape}, torch {reference.shape}")
            cosines = np.sum(ours * reference, axis=1) / (np.linalg.norm(ours, axis=1)
                                                           * np.linalg.norm(reference, axis=1))
            cosine = min(cosine, float(cosines.min()))
            max_abs = max(max_abs, float(np.max(np.abs(ours - reference))))
        if not cosine > 1 - TOLERANCE:
            raise ExportRefused(f"the ONNX model differs from the torch model (cosine {cosine:.7f} on a fixed input)")
    except ExportRefused:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # ONNX Runtime cannot load or run what the exporter wrote
        path.unlink(missing_ok=True)
        raise ExportRefused(f"ONNX Runtime cannot run the export: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}")
    opset = next((o.version for o in _opsets(path) if o.domain in ("", "ai.onnx")), None)
    return {"file": MODEL_FILE, "cosine": cosine, "max_abs_difference": max_abs, "opset": opset}


def _opsets(path):
    import onnx

    return onnx.load(str(path), load_external_data=False).opset_import


def _session(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1  # one image, one branch-free graph: parallelism is inside the operators
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session, x):
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxNetwork:
    """A saved ``model.onnx`` on ONNX Runtime's CPU provider, embedding PIL images.

    Parameters
    ----------
    path : path
        The ``model.onnx`` file.
    preprocessing : extractor.transforms.Preprocessing
        The preprocessing used at indexing.
    threads : int, optional
        ONNX Runtime's intra-op threads (default: its own, all cores).
    """

    def __init__(self, path, preprocessing, threads=None):
        from extractor.transforms import ImageTransform

        self.session = _session(path, threads)
        self.preprocessing = preprocessing
        self._transform = ImageTransform(preprocessing)
        pre = preprocessing
        self._mean = None if pre.mean is None else np.asarray(pre.mean, dtype=np.float32)[:, None, None]
        self._std = None if pre.std is None else np.asarray(pre.std, dtype=np.float32)[:, None, None]

    def preprocess(self, image):
        """``float32 [3, H, W]`` model input of a PIL image: :class:`ImageTransform`'s resize and crop, then the
        float32 operations of its ``finish`` (divide by 255, subtract the mean, divide by the std)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        x = np.asarray(self._transform.resize_crop(image), dtype=np.uint8).transpose(2, 0, 1)
        x = x.astype(np.float32) / np.float32(255)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x

    def embed(self, images):
        """``float32 [len(images), D]`` embeddings (not normalised) of PIL images; images whose inputs have the same
        size run as one batch."""
        inputs = [self.preprocess(image) for image in images]
        out = [None] * len(inputs)
        by_shape = {}
        for number, x in enumerate(inputs):
            by_shape.setdefault(x.shape, []).append(number)
        for numbers in by_shape.values():
            for number, row in zip(numbers, _run(self.session, np.stack([inputs[i] for i in numbers]))):
                out[number] = row
        return np.stack(out).astype(np.float32)


def load_network(folder, preprocessing, threads=None):
    """The :class:`OnnxNetwork` saved in ``folder``, or ``None`` when there is none."""
    path = Path(folder) / MODEL_FILE
    return OnnxNetwork(path, preprocessing, threads) if path.is_file() else None
