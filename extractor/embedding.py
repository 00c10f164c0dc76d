"""Running a model on images: :class:`Embedder` (device-side preprocessing, precision, memory layout, batch-norm
folding) and :func:`embed_images`, the in-memory variant used by the fine-tuning evaluation and ``dedup``."""
import contextlib

import numpy as np
import torch

from helpers.device import resolve_device
from helpers.image_io import ImageLoadError
from helpers.log import get_logger

from .loading import make_loader
from .transforms import ImageTransform

logger = get_logger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
