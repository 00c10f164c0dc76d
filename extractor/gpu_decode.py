"""GPU input path of the neural models: nvjpeg batch decoding and Pillow's LANCZOS resize, exact, on the device.

16 CPU cores running PIL's decoder and LANCZOS resize feed about 4-5k images/s, a third of what an H100 embeds with
ResNet-50. With ``decode='gpu'`` the data-loader workers only read the file bytes and parse the JPEG header; the
main process decodes the batch with nvjpeg (``torchvision.io.decode_jpeg(list, device='cuda')``), resizes it with
:func:`lanczos_resize_crop` (Pillow's LANCZOS, bit for bit), crops, and the usual device-side normalisation
follows (:meth:`extractor.transforms.ImageTransform.finish`).

- **The resize is Pillow's**: each pass is a float64 matrix product with Pillow's 22-bit fixed-point coefficients
  (:func:`extractor._lanczos._axis_matrix`, scaled by ``2**-22``: every product and partial sum is an exact
  float64, whatever the summation order), rounded and clipped to uint8 between the passes as Pillow does, in
  Pillow's pass order (:func:`extractor._lanczos.pillow_pass_order`). Only the kept (cropped) outputs are
  computed: an output pixel of a pass does not depend on the others.
- **The decode is nvjpeg's**: its IDCT and chroma upsampling are not libjpeg-turbo's, so decoded pixels may differ
  from Pillow's by a grey level or so; ``benchmarks/bench_extraction.py`` reports the difference of the model inputs
  and of the features against the CPU path.
- **One loader semantics**: files the GPU path cannot take exactly as :func:`helpers.image_io.load_image` would
  (not a JPEG, grayscale or CMYK, Adobe/RGB colour transform, arithmetic or lossless coding, 12-bit samples, an
  EXIF orientation other than 1, more than ``max_pixels``, a crop larger than the resized image) are decoded on the
  CPU in the worker as before; a file nvjpeg cannot decode is decoded by the CPU path in the main process; a file
  neither can read is skipped and reported as on the CPU path.
"""
import contextlib
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import torch
import numpy as np
from PIL import Image

from helpers.image_io import ImageLoadError, load_image

from ._lanczos import _INV_ONE, _RULES, _axis_matrix, pillow_pass_order

DECODE_CHOICES = ("cpu", "gpu", "auto")
# Images resized per matrix product (bounds the float64 working memory: ~4 MB per 481x321 RGB image).
_RESIZE_CHUNK = 64
# Share of the JPEGs decoded by nvjpeg in the main process (the rest by the workers), see GpuJpegItem.
DEFAULT_NVJPEG_SHARE = 1.0
_SOF_OK = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman (nvjpeg's); others go to the CPU path


class Encoded(NamedTuple):
    """One worker item of the GPU path: ``kind`` 'jpeg' (``data``: the file bytes, ``size``: (height, width)),
    'decoded' (``data``: the full-size RGB pixels ``uint8 [H, W, 3]`` of :func:`helpers.image_io.load_image`, to
    be resized on the device) or 'pixels' (``data``: the CPU path's model-input pixels ``uint8 [h, w, 3]``)."""

    kind: str
    data: torch.Tensor
    path: str = None
    size: tuple = None


class Packed(NamedTuple):
    """A batch of :class:`Encoded` items packed by the worker into one flat uint8 ``buffer`` (one shared-memory
    segment, one pinned copy, one host-to-device copy per batch instead of one per image); ``entries`` are
    ``(kind, offset, shape, path, size)``."""

    buffer: torch.Tensor
    entries: list


def pack(items, shared=False):
    """:class:`Packed` of a list of :class:`Encoded` (in shared memory when ``shared``: a worker's batch)."""
    flat = [e.data.reshape(-1) for e in items]
    numel = sum(int(f.numel()) for f in flat)
    out = None
    if shared:
        storage = torch.UntypedStorage._new_shared(max(numel, 1))
        out = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (numel,))
    buffer = torch.cat(flat, out=out) if flat else torch.empty(0, dtype=torch.uint8)
    entries, offset = [], 0
    for e, f in zip(items, flat):
        entries.append((e.kind, offset, tuple(e.data.shape), e.path, e.size))
        offset += int(f.numel())
    return Packed(buffer, entries)


def unpack(packed, device=None):
    """The :class:`Encoded` items of a :class:`Packed` batch; 'decoded' and 'pixels' data as views of one copy of
    the buffer on ``device`` (the JPEG bytes stay on the CPU, where nvjpeg reads them)."""
    on_device = None
    if device is not None and any(kind != "jpeg" for kind, *_ in packed.entries):
        on_device = packed.buffer.to(device, non_blocking=True)
    items = []
    for kind, offset, shape, path, size in packed.entries:
        source = packed.buffer if kind == "jpeg" or on_device is None else on_device
        numel = int(np.prod(shape))
        items.append(Encoded(kind, source[offset:offset + numel].view(shape), path, size))
    return items


# ------------------------------------------------------------------------------------------------ JPEG header


def jpeg_header(data):
    """``(height, width, components, orientation)`` of a JPEG the GPU path can take, else ``None``.

    ``None`` for: not a JPEG, a frame type other than baseline/extended/progressive Huffman, samples other than
    8 bits, not 3 components, an Adobe APP14 marker (RGB or YCCK transforms) or R/G/B component ids (libjpeg reads
    these as RGB, nvjpeg as YCbCr), a broken marker structure, an unreadable EXIF block (the CPU path decides).
    ``orientation`` is the EXIF tag 0x0112 (1 when absent).

    Why this parser rather than Pillow's (``Image.open`` + ``getexif()``): Pillow does not tell which frame type
    (SOF marker) a file uses, so arithmetic-coded and lossless JPEGs, which nvjpeg does not decode, would reach
    the GPU path and fall back to a CPU decode in the main process, the path's bottleneck; and it costs about 5x
    more per file in the loader workers. Measured with ``flock /work/bench.lock .venv/bin/python
    benchmarks/bench_library_copies.py`` on the 500 BSDS500 JPEGs (2 shared cores, load average 18, best of 3,
    one thread): 0.006 ms per file here, 0.035 ms wall (0.028 ms CPU) with Pillow, 6.1x wall / 4.8x CPU, the same
    size and orientation for every file (and ``ImageOps.exif_transpose``'s size).
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, n = 2, len(data)
    orientation, frame = 1, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segment = data[pos + 4:pos + 2 + length]
        if length < 2 or pos + 2 + length > n:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            found = _exif_orientation(segment[6:])
            if found is None:
                return None
            orientation = found
        elif marker == 0xEE and segment[:5] == b"Adobe":
            return None
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF_OK or len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            ids = tuple(segment[6 + 3 * k] for k in range(components) if 6 + 3 * k < len(segment))
            if precision != 8 or components != 3 or ids == (82, 71, 66) or height == 0 or width == 0:
                return None
            frame = (height, width, components)
        pos += 2 + length
    if frame is None:
        return None
    return frame + (orientation,)


def _exif_orientation(tiff):
    """EXIF orientation (tag 0x0112 of IFD0) of a TIFF block; 1 when absent, ``None`` when unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        offset = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
        for k in range(count):
            entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112:
                if kind != 3:
                    return None
                return struct.unpack(order + "H", entry[8:10])[0]
    except struct.error:
        return None
    return 1


# ------------------------------------------------------------------------------------------------ the resize


def _pass_matrix(in_size, out_size, lo, hi, device):
    """``float64 [in_size, hi - lo]``: Pillow's coefficients of outputs ``lo:hi``, scaled by 2**-22 (exact)."""
    return torch.from_numpy(_axis_matrix(in_size, out_size)[:, lo:hi] * _INV_ONE).to(device)


def _round(values):
    """Pillow's ``clip8((2**21 + s) >> 22)`` of the scaled sums, as uint8-valued float64, in place."""
    return values.add_(0.5).floor_().clamp_(0.0, 255.0)


def lanczos_resize_crop(images, size, box=None):
    """Pillow's ``Image.resize((w, h), LANCZOS)`` then ``crop``, on a batch of uint8 tensors (any device).

    Parameters
    ----------
    images : uint8 tensor ``[N, C, H, W]``
    size : (height, width) of the resize
    box : (top, left, crop_height, crop_width), optional
        The kept region of the resized image (default: all of it); must lie inside it.

    Returns
    -------
    uint8 tensor ``[N, C, crop_height, crop_width]`` on the same device, equal to Pillow's pixels.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
    rule = _RULES.get(pillow_pass_order())
    if rule is None:
        raise RuntimeError("the installed Pillow resizes with an unknown pass order; use the CPU decode path")
    height, width = images.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    top, left, crop_h, crop_w = box if box is not None else (0, 0, out_h, out_w)
    if top < 0 or left < 0 or top + crop_h > out_h or left + crop_w > out_w:
        raise ValueError(f"crop {box} outside the resized {out_h}x{out_w} image")
    need_h, need_v = out_w != width, out_h != height
    horizontal_first = need_h and rule(width, height, out_w, out_h)
    device = images.device
    mw = _pass_matrix(width, out_w, left, left + crop_w, device) if need_h else None
    mh = _pass_matrix(height, out_h, top, top + crop_h, device).T if need_v else None
    parts = []
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        x = images[start:start + _RESIZE_CHUNK].to(torch.float64)
        if horizontal_first:
            x = _round(torch.matmul(x, mw))
            x = _round(torch.matmul(mh, x)) if need_v else x[..., top:top + crop_h, :]
        else:
            x = _round(torch.matmul(mh, x)) if need_v else x[..., top:top + crop_h, :]
            x = _round(torch.matmul(x, mw)) if need_h else x[..., left:left + crop_w]
        parts.append(x.to(torch.uint8))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def crop_box(preprocessing, height, width):
    """``((resized_h, resized_w), (top, left, crop_h, crop_w))`` of an image, or ``None`` when the crop pads."""
    new_h, new_w = preprocessing.resized_size(width, height)
    crop_h, crop_w = preprocessing.crop if preprocessing.crop is not None else (new_h, new_w)
    if crop_h > new_h or crop_w > new_w:
        return None
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return (new_h, new_w), (top, left, crop_h, crop_w)


# ------------------------------------------------------------------------------------------------ the loader


def nvjpeg_available(device):
    """True when ``device`` is CUDA and nvjpeg decodes a probe JPEG there."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import io

        from torchvision.io import decode_jpeg

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 60)).save(buffer, "JPEG")
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decoded = decode_jpeg([data], device=device)[0]
        return tuple(decoded.shape) == (3, 16, 16)
    except Exception:  # noqa: BLE001 - any failure means: no GPU decoding here
        return False


def resolve_decode(decode, device, transform):
    """``'cpu'`` or ``'gpu'`` for ``decode`` in :data:`DECODE_CHOICES` (``'auto'``: gpu on CUDA when nvjpeg works
    and the preprocessing is a LANCZOS resize). ``'gpu'`` where it cannot run raises ``ValueError``."""
    if decode not in DECODE_CHOICES:
        raise ValueError(f"--decode must be one of {list(DECODE_CHOICES)}, got {decode!r}")
    if decode == "cpu":
        return "cpu"
    device = torch.device(device)
    pre = getattr(transform, "preprocessing", None)
    problem = None
    if device.type != "cuda":
        problem = f"GPU decoding needs a CUDA device, got --device {device}"
    elif pre is None or pre.interpolation != "lanczos":
        problem = "GPU decoding reproduces Pillow's LANCZOS resize only; this model's preprocessing is different"
    elif pre.variable_size:
        problem = "GPU decoding makes inputs of one size; this model keeps each image's aspect ratio"
    elif _RULES.get(pillow_pass_order()) is None:
        problem = "the installed Pillow resizes with an unknown pass order"
    elif not nvjpeg_available(device):
        problem = f"nvjpeg (torchvision.io.decode_jpeg on {device}) is not available"
    if problem is None:
        return "gpu"
    if decode == "gpu":
        raise ValueError(f"--decode gpu: {problem}; use --decode cpu or auto")
    return "cpu"


def _nvjpeg_pick(path, share):
    """Deterministic choice of the files sent to nvjpeg: a hash of the path, so an image always gets the same
    decoder wherever it is in a list (and a resumed extraction the same pixels)."""
    if share >= 1.0:
        return True
    return share > 0.0 and zlib.crc32(str(path).encode("utf-8")) % 10000 < share * 10000


class GpuJpegItem:
    """The worker half of the GPU path; the main-process half is :meth:`prepare_batch`.

    nvjpeg's batched decoding runs its Huffman stage on one CPU thread of the main process (a few thousand images/s
    of 481x321); the workers' cores are the rest of the decoding capacity. So a share ``nvjpeg_share`` of the
    JPEGs (chosen by a hash of the path) is sent as bytes to nvjpeg, and the workers decode the other files with
    :func:`helpers.image_io.load_image` (libjpeg, EXIF orientation; any format) and send full-size pixels. Every
    image is resized on the device (exact LANCZOS), the expensive step of the CPU path. Only a centre crop larger
    than the resized image is done on the CPU (``'pixels'``).

    Takes paths (or PIL images) itself (``loads_itself``): :class:`extractor.loading.ImageDataset` calls it with the
    item and ``max_pixels``.
    """

    loads_itself = True

    def __init__(self, transform, device, nvjpeg_share=DEFAULT_NVJPEG_SHARE):
        self.transform = transform
        self.device = torch.device(device)
        self.nvjpeg_share = float(nvjpeg_share)
        self._stream = None

    def __getstate__(self):
        return {"transform": self.transform, "device": str(self.device), "nvjpeg_share": self.nvjpeg_share}

    def __setstate__(self, state):
        self.__init__(state["transform"], state["device"], state["nvjpeg_share"])

    def _cpu(self, item, max_pixels):
        image = item.convert("RGB") if isinstance(item, Image.Image) else load_image(item, max_pixels)
        path = None if isinstance(item, Image.Image) else str(item)
        if crop_box(self.transform.preprocessing, image.height, image.width) is None:
            return Encoded("pixels", self.transform.to_uint8(image), path)
        return Encoded("decoded", torch.from_numpy(np.array(image)), path, (image.height, image.width))

    def __call__(self, item, max_pixels=None):
        if isinstance(item, Image.Image) or not _nvjpeg_pick(item, self.nvjpeg_share):
            return self._cpu(item, max_pixels)
        try:
            data = Path(item).read_bytes()
        except OSError:
            data = b""
        header = jpeg_header(data)
        # A JPEG without its end marker is truncated: the CPU path refuses it (the toolkit's partial-decode policy)
        # where nvjpeg might return the readable part.
        if header is not None and data.endswith(b"\xff\xd9"):
            height, width, _, orientation = header
            fits = max_pixels is None or height * width <= max_pixels
            if orientation == 1 and fits and crop_box(self.transform.preprocessing, height, width) is not None:
                return Encoded("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), str(item),
                               (height, width))
        return self._cpu(item, max_pixels)  # raises ImageLoadError for unreadable files, as the CPU path

    def _decode(self, jpegs):
        """Decoded ``[3, H, W]`` tensors (``None`` where nvjpeg failed or disagrees with the header)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type == "cuda":
            # torchvision's CUDA decoder allocates its outputs on the current stream but writes them from another
            # stream without waiting (pytorch/vision#9606): on our compute stream it may overwrite blocks that
            # queued kernels still read (NaN features). On a stream of its own, its allocations only recycle its
            # own outputs, which record_stream keeps until the compute stream is done with them.
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            compute = torch.cuda.current_stream(self.device)
            context = torch.cuda.stream(self._stream)
        else:
            compute, context = None, contextlib.nullcontext()
        with context:
            try:
                decoded = decode_jpeg([e.data for e in jpegs], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                decoded = []
                for e in jpegs:
                    try:
                        decoded.append(decode_jpeg(e.data, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        decoded.append(None)
        if compute is not None:
            compute.wait_stream(self._stream)
            for d in decoded:
                if d is not None:
                    d.record_stream(compute)
        return [d if d is not None and tuple(d.shape) == (3,) + tuple(e.size) else None
                for d, e in zip(decoded, jpegs)]

    def prepare_batch(self, indices, batch):
        """``(indices, uint8 [B, h, w, 3] on the device, failures)`` from a batch of :class:`Encoded` items (a list
        or :class:`Packed`)."""
        if isinstance(batch, Packed):
            batch = unpack(batch, self.device)
        pre = self.transform.preprocessing
        crop_h, crop_w = pre.input_size
        slots, failures, kept = [], [], []
        jpeg_pos = [k for k, e in enumerate(batch) if e.kind == "jpeg"]
        decoded = dict(zip(jpeg_pos, self._decode([batch[k] for k in jpeg_pos]))) if jpeg_pos else {}
        groups = {}
        for k, (index, e) in enumerate(zip(indices, batch)):
            if e.kind == "jpeg" and decoded[k] is None:  # nvjpeg failed: the CPU path decides
                try:
                    e = self._cpu(e.path, None)
                except ImageLoadError as exc:
                    failures.append((index, str(exc)))
                    continue
            kept.append(index)
            slot = len(slots)
            slots.append(e.data if e.kind == "pixels" else None)
            if e.kind == "jpeg":
                groups.setdefault(e.size, []).append((slot, decoded[k]))
            elif e.kind == "decoded":
                pixels = e.data.to(self.device, non_blocking=True).permute(2, 0, 1)
                groups.setdefault(e.size, []).append((slot, pixels))
        out = torch.empty((len(kept), crop_h, crop_w, 3), dtype=torch.uint8, device=self.device)
        for slot, pixels in enumerate(slots):
            if pixels is not None:
                out[slot] = pixels.to(self.device, non_blocking=True)
        for (height, width), members in groups.items():
            size, box = crop_box(pre, height, width)
            resized = lanczos_resize_crop(torch.stack([d for _, d in members]), size, box)
            where = torch.tensor([slot for slot, _ in members], device=self.device)
            out.index_copy_(0, where, resized.permute(0, 2, 3, 1))
        return kept, out, failures


def decoded_pixels(paths, transform, device, decode, nvjpeg_share=1.0):
    """uint8 ``[N, h, w, 3]`` model-input pixels of ``paths`` by one decode path (benchmark comparisons)."""
    if decode == "cpu":
        return torch.stack([transform.to_uint8(load_image(p)) for p in paths])
    item = GpuJpegItem(transform, device, nvjpeg_share)
    _, pixels, failures = item.prepare_batch(list(range(len(paths))), [item(p) for p in paths])
    if failures:
        raise ImageLoadError("; ".join(reason for _, reason in failures))
    return pixels.cpu()
