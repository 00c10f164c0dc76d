"""Pillow's 8-bit LANCZOS coefficients and pass order, for the exact resize of the GPU input path.

:func:`extractor.gpu_decode.lanczos_resize_crop` resizes decoded JPEGs on the device with the pixels of Pillow's
``Image.resize(size, LANCZOS)``, bit for bit. This module gives it what it needs from Pillow's
``libImaging/Resample.c``:

- the filter coefficients (``precompute_coeffs`` and ``normalize_coeffs_8bpc``): same double-precision
  expressions in the same order, converted to the same 22-bit fixed-point integers (:func:`axis_coefficients`,
  :func:`_axis_matrix`);
- the pass order. Pillow resizes in two passes, each rounded to uint8: ``clip8((2**21 + sum(pixel * k)) >> 22)``.
  Up to Pillow 12.2 the horizontal pass always ran first; since 12.3 the vertical pass runs first when the height
  shrinks by more than twice as many pixels as the width. :func:`pillow_pass_order` finds which rule the installed
  Pillow follows by resizing probe images once (an unknown rule makes the GPU path refuse, and the CPU path runs).

Every product and partial sum is an integer below 2**31 (times 2**-22 once the matrices are scaled by that power of
2, which keeps everything exact), so a float64 matrix product computes it exactly whatever the summation order.
The coefficients use ``numpy.sin``; a coefficient whose fixed-point rounding could depend on the last bit of
``sin`` is recomputed with ``math.sin`` (the C library's ``sin``, which Pillow calls).

Why a copy of Pillow's resize is kept here (and only here): Pillow has no device-side resize, and the CPU decode +
LANCZOS resize is what limits the CPU input path (15 workers x ~4-6 ms per image: 2.2-2.8k images/s on the
16-core H100 machine of ``docs/extractor.md``), while the exact resize on the GPU runs at about 42k images/s there
(``benchmarks/bench_extraction.py``). The perceptual hashes, which run on the CPU anyway, call Pillow itself
(one ``resize`` per size on the one greyscale image, bit-exact with imagehash by construction): their NumPy copy
of the resize, which computed all the sizes of one image in one go (``extractor/_hash_resample.py`` up to commit
26e1fa6), was removed after ``flock /work/bench.lock .venv/bin/python benchmarks/bench_library_copies.py``
(500 BSDS500 photos, one thread, best of 3, 2 shared cores at load average 18) measured it worth it only while
its coefficient caches stay warm: with BSDS500's two image sizes the copy computed the four 64-bit hashes 1.46x
faster than Pillow's resizes (2.85 vs 4.17 ms CPU per image; 1.13x for the ten standard hashes), but with
``--cold-caches`` (every image of a new size, as in a real collection) Pillow was 1.48x faster (3.14 vs
4.64 ms; 1.16x for the ten). The bits were identical to imagehash's either way.
"""
import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2
_ONE = float(1 << PRECISION_BITS)
_INV_ONE = 1.0 / _ONE
_LANCZOS_SUPPORT = 3.0
# A fixed-point coefficient this close to a rounding boundary is recomputed with math.sin (see module doc).
_RISKY = 1e-6


def _lanczos_exact(t):
    """Pillow's ``lanczos_filter`` for one double, with the C library's sin (``math.sin``)."""
    if not (-3.0 <= t < 3.0):
        return 0.0

    def sinc(x):
        if x == 0.0:
            return 1.0
        x = x * math.pi
        return math.sin(x) / x

    return sinc(t) * sinc(t / 3)


def _lanczos_vector(t):
    """Vectorised ``lanczos_filter`` (NumPy's sin; see :func:`_lanczos_exact` for the reference)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        u = t * math.pi
        first = np.where(t == 0.0, 1.0, np.sin(u) / u)
        t3 = t / 3
        u3 = t3 * math.pi
        second = np.where(t3 == 0.0, 1.0, np.sin(u3) / u3)
    return np.where((t >= -3.0) & (t < 3.0), first * second, 0.0)


def _fixed_point(k):
    """``normalize_coeffs_8bpc``: ``(int)(+-0.5 + k * 2**22)`` (C truncation toward zero)."""
    scaled = k * _ONE
    return np.trunc(np.where(k < 0, -0.5 + scaled, 0.5 + scaled))


@lru_cache(maxsize=512)
def axis_coefficients(in_size, out_size):
    """Pillow's LANCZOS coefficients for resizing one axis from ``in_size`` to ``out_size`` pixels.

    Returns
    -------
    xmin : ndarray of int64, shape (out_size,)
        First input pixel read by each output pixel.
    kk : ndarray of int64, shape (out_size, ksize)
        Fixed-point (22-bit) coefficients; entries at and beyond ``xmax[i]`` are zero.
    xmax : ndarray of int64, shape (out_size,)
        Number of input pixels read by each output pixel.
    """
    in0, in1 = 0.0, float(in_size)  # Pillow passes the box as C floats; integers below 2**24 are exact
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    xx = np.arange(out_size, dtype=np.float64)
    center = in0 + (xx + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    t = ((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * ss
    w = np.where(valid, _lanczos_vector(t), 0.0)
    ww = np.add.accumulate(w, axis=1)[:, -1]  # sequential sum, as the C loop adds them
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where((ww != 0.0)[:, None], w / ww[:, None], w)
    scaled = np.abs(k) * _ONE + 0.5
    risky = np.abs(scaled - np.rint(scaled)) < _RISKY
    kk = _fixed_point(k)
    for row in np.flatnonzero(risky.any(axis=1)):
        kk[row] = _exact_row(row, center[row], support, ss, xmin[row], xmax[row], ksize)
    kk[~valid] = 0
    return xmin, kk.astype(np.int64), xmax


def _exact_row(row, center, support, ss, xmin, xmax, ksize):
    """One output pixel's coefficients computed scalar by scalar, exactly as the C code (math.sin)."""
    weights = [_lanczos_exact((x + int(xmin) - center + 0.5) * ss) for x in range(int(xmax))]
    ww = 0.0
    for value in weights:
        ww += value
    out = np.zeros(ksize)
    for x, value in enumerate(weights):
        k = value / ww if ww != 0.0 else value
        out[x] = math.trunc(-0.5 + k * _ONE) if k < 0 else math.trunc(0.5 + k * _ONE)
    return out


@lru_cache(maxsize=512)
def _axis_matrix(in_size, out_size):
    """Dense ``(in_size, out_size)`` float64 matrix of the fixed-point coefficients (column = output pixel)."""
    xmin, kk, xmax = axis_coefficients(in_size, out_size)
    taps = np.arange(kk.shape[1])
    valid = taps[None, :] < xmax[:, None]
    rows = (xmin[:, None] + taps[None, :])[valid]
    cols = np.broadcast_to(np.arange(out_size)[:, None], kk.shape)[valid]
    matrix = np.zeros((in_size, out_size))
    matrix[rows, cols] = kk[valid]
    return matrix


def _horizontal_first_13(width, height, out_w, out_h):
    """Pillow >= 12.3: the vertical pass runs first when the height shrinks by more than twice the width."""
    return not ((height - out_h) > 0 and (height - out_h) > (width - out_w) * 2)


def _horizontal_first_legacy(width, height, out_w, out_h):
    """Pillow < 12.3: always the horizontal pass first."""
    return True


def _round_pixels(values):
    """Pillow's ``clip8``: ``(2**21 + s) >> 22`` clipped to 0..255, in place, on sums scaled by ``2**-22``."""
    np.add(values, 0.5, out=values)
    np.floor(values, out=values)
    np.clip(values, 0.0, 255.0, out=values)
    return values


def _reference_resize(gray, size, horizontal_first):
    """Pillow's LANCZOS resize of ``gray`` (uint8 [H, W]) to ``size`` (w, h) with the pass-order rule
    ``horizontal_first``, as two float64 matrix products (exact); the probe of :func:`pillow_pass_order`."""
    height, width = gray.shape
    out_w, out_h = size
    pixels = gray.astype(np.float64)
    passes = [(1, out_w), (0, out_h)]
    if not horizontal_first(width, height, out_w, out_h):
        passes.reverse()
    for axis, length in passes:
        if pixels.shape[axis] == length:  # Pillow skips a pass that keeps the length
            continue
        matrix = _axis_matrix(pixels.shape[axis], length) * _INV_ONE
        pixels = _round_pixels(pixels @ matrix if axis == 1 else (pixels.T @ matrix).T)
    return pixels


@lru_cache(maxsize=1)
def pillow_pass_order():
    """Which pass-order rule the installed Pillow follows: ``'pillow>=12.3'``, ``'legacy'`` or ``'unknown'``.

    Determined once by resizing probe images with Pillow (cheap) and comparing with both rules.
    """
    from PIL import Image

    rng = np.random.default_rng(12345)
    probes = [((29, 207), (255, 189)), ((207, 29), (189, 255)), ((90, 60), (9, 8)), ((60, 90), (32, 32))]
    for name, rule in (("pillow>=12.3", _horizontal_first_13), ("legacy", _horizontal_first_legacy)):
        ok = True
        for (w0, h0), size in probes:
            gray = rng.integers(0, 256, (h0, w0), dtype=np.uint8)
            expected = np.asarray(Image.fromarray(gray, "L").resize(size, Image.Resampling.LANCZOS))
            if not np.array_equal(_reference_resize(gray, size, rule), expected):
                ok = False
                break
        if ok:
            return name
    return "unknown"


_RULES = {"pillow>=12.3": _horizontal_first_13, "legacy": _horizontal_first_legacy}
