"""Data loading of an extraction pass: a torch ``Dataset`` over image paths and the ``DataLoader`` that decodes them.

Images are read by :func:`helpers.image_io.load_image` in DataLoader workers; a file that cannot be read becomes a
``(index, None, reason)`` item, so the pass skips and lists it (``skipped.txt``) instead of stopping.
"""
import os

import numpy as np
import torch
from PIL import Image

from helpers.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

from .gpu_decode import Encoded, pack


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
