"""Perceptual hashes bit-identical to imagehash 4.3.2, computed several at a time and stored as packed bits.

Hashes (imagehash function with default arguments in brackets):

- :class:`Ahash` (``average_hash``), :class:`Phash` (``phash``), :class:`Dhash` (``dhash``),
  :class:`Whash` (``whash``): ``hash_size ** 2`` bits;
- :class:`Colorhash` (``colorhash``): ``14 * binbits`` bits;
- :class:`CropResistantHash` (``crop_resistant_hash`` with ``limit_segments=max_segments``): up to
  ``max_segments`` dhashes of image segments, compared with imagehash's multi-hash rule
  (:func:`crop_resistant_distances`), not with the Hamming distance.

One call of :func:`compute_hashes` converts the image to ``'L'`` once and makes one Pillow LANCZOS ``resize`` per
distinct size the requested hashes need (imagehash's own call, so the pixels are imagehash's by construction),
instead of one ``convert('L')`` and one ``resize`` per hash. The wavelet hash uses exact integer block sums instead
of PyWavelets (the Haar low-pass band is a scaled block mean), falling back to the PyWavelets computation when
two block sums tie at the median, where only the floating-point rounding of imagehash decides the bit.

A hash is stored as ``np.packbits(hash.flatten())``: the bits of imagehash's boolean array in row-major order,
big-endian within each byte, padded with zero bits to a whole byte (``uint8 [nbytes]`` per image).

Names: the seed's display names (``'Dhash 64 bits'``, ``'Phash 256 bits'``, ``'Colorhash 42 bits'``,
``'Crop resistant hash 64 bits'``), their slugs (``dhash_64_bits``) and short forms (``dhash``, ``dhash-64``,
``average_hash``, ``wavelet hash 256``...), case-insensitive; the number is always a number of bits (per segment for
the crop-resistant hash).
"""
import logging
import math
import multiprocessing
import re
import sys

import numpy as np
from PIL import Image

from helpers.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, SkipReport, load_image
from helpers.paths import slugify

from . import _hash_crop
from ._hash_crop import crop_resistant_distances  # noqa: F401  (public API)

logger = logging.getLogger(__name__)

IMAGEHASH_VERSION = "4.3.2"
_PACKING = ("np.packbits(hash.flatten()): imagehash's boolean hash array in row-major order, big-endian bit order "
            "within each byte, zero-padded to a whole byte")


class HashSpec:
    """A perceptual hash and its parameters; subclasses are the concrete hashes.

    Attributes
    ----------
    name : str
        Canonical display name (``'Dhash 64 bits'``).
    slug : str
        File-system name (``'dhash_64_bits'``), the feature-store folder name.
    kind : str
        ``'ahash'``, ``'phash'``, ``'dhash'``, ``'whash'``, ``'colorhash'`` or ``'crop_resistant'``.
    hash_size : int
        imagehash's ``hash_size`` (``binbits`` for :class:`Colorhash`; the segment dhash's for the crop-resistant
        hash).
    bits : int
        Number of stored bits (``dim`` of the feature store); ``nbytes`` bytes per image.
    binary : bool
        Always True (packed bits).
    matching : str
        ``'hamming'``, or ``'crop_resistant'`` (use :func:`crop_resistant_distances`).
    """

    kind = None
    title = None
    binary = True
    matching = "hamming"
    # Templates formatted with _fields(): {s} = hash_size, plus what a subclass adds.
    REFERENCE = None
    PREPROCESSING = None

    def __init__(self, hash_size=8):
        if isinstance(hash_size, bool) or not isinstance(hash_size, (int, np.integer)):
            raise ValueError(f"{type(self).__name__}: hash_size must be an integer, got {hash_size!r}")
        self.hash_size = int(hash_size)
        if self.hash_size < 2:
            raise ValueError(f"{type(self).__name__}: hash_size must be at least 2 (imagehash refuses smaller), "
                             f"got {self.hash_size}")

    # -- identity -----------------------------------------------------------------------------------------------
    def _key(self):
        return (type(self).__name__, self.hash_size)

    def __eq__(self, other):
        return isinstance(other, HashSpec) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"{type(self).__name__}(hash_size={self.hash_size})"

    def __str__(self):
        return self.name

    # -- description --------------------------------------------------------------------------------------------
    @property
    def bits(self):
        return self.hash_size * self.hash_size

    @property
    def shape(self):
        """Shape of imagehash's boolean ``hash`` array."""
        return (self.hash_size, self.hash_size)

    @property
    def nbytes(self):
        return -(-self.bits // 8)

    @property
    def name(self):
        return f"{self.title} {self.bits} bits"

    @property
    def slug(self):
        return slugify(self.name)

    def _fields(self):
        return {"s": self.hash_size}

    @property
    def reference(self):
        """The imagehash call this hash reproduces."""
        return self.REFERENCE.format(**self._fields())

    def preprocessing(self):
        """How the image becomes the hash (for meta.json)."""
        return self.PREPROCESSING.format(**self._fields())

    def meta(self):
        """Metadata for the feature store's ``meta.json``."""
        return {
            "name": self.name,
            "slug": self.slug,
            "binary": True,
            "dim": self.bits,
            "nbytes": self.nbytes,
            "kind": self.kind,
            "hash_size": self.hash_size,
            "preprocessing": ("helpers.image_io.load_image (RGB, EXIF orientation applied), then "
                              + self.preprocessing()),
            "matching": self.matching,
            "reference": f"imagehash {IMAGEHASH_VERSION} {self.reference}",
            "packing": _PACKING,
        }

    # -- computation --------------------------------------------------------------------------------------------
    def resize_to(self, image_size):
        """The ``(width, height)`` the ``'L'`` image is resized to for an image of ``image_size`` (None: none)."""
        return None

    def sizes(self, image_size):
        """Resized ``'L'`` images (``(width, height)``) this hash needs, for an image of ``image_size``."""
        size = self.resize_to(image_size)
        return [] if size is None else [size]

    def _pixels(self, context):
        return context.pixels(self.resize_to(context.size))

    def compute(self, image):
        """The packed hash of one PIL image (``uint8 [nbytes]``)."""
        return compute_hashes(image, [self])[0]

    def unpack(self, row):
        """imagehash's boolean hash array from a packed row."""
        row = np.asarray(row, dtype=np.uint8)
        if row.shape != (self.nbytes,):
            raise ValueError(f"{self.name}: expected a packed row of {self.nbytes} bytes, got shape {row.shape}")
        return np.unpackbits(row)[: self.bits].astype(bool).reshape(self.shape)

    def _bits(self, context):
        raise NotImplementedError

    def _row(self, context):
        return np.packbits(np.asarray(self._bits(context), dtype=bool).ravel())


class Ahash(HashSpec):
    """Average hash: ``imagehash.average_hash(image, hash_size)``."""

    kind, title = "ahash", "Ahash"
    REFERENCE = "average_hash(image, hash_size={s})"
    PREPROCESSING = "PIL convert('L'), LANCZOS resize to {s}x{s}, bit = pixel > mean of the pixels"

    def resize_to(self, image_size):
        return (self.hash_size, self.hash_size)

    def _bits(self, context):
        pixels = self._pixels(context).astype(np.uint8)
        return pixels > np.mean(pixels)


class Phash(HashSpec):
    """Perceptual (DCT) hash: ``imagehash.phash(image, hash_size)`` (``highfreq_factor=4``)."""

    kind, title = "phash", "Phash"
    highfreq_factor = 4
    REFERENCE = "phash(image, hash_size={s}, highfreq_factor=4)"
    PREPROCESSING = ("PIL convert('L'), LANCZOS resize to {n}x{n}, scipy.fftpack.dct along axis 0 then 1, "
                     "bit = low-frequency {s}x{s} coefficient > their median")

    def _fields(self):
        return {"s": self.hash_size, "n": self.hash_size * self.highfreq_factor}

    def resize_to(self, image_size):
        n = self.hash_size * self.highfreq_factor
        return (n, n)

    def _bits(self, context):
        import scipy.fftpack

        pixels = self._pixels(context).astype(np.uint8)
        dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
        low = dct[: self.hash_size, : self.hash_size]
        return low > np.median(low)


class Dhash(HashSpec):
    """Difference hash: ``imagehash.dhash(image, hash_size)`` (horizontal differences)."""

    kind, title = "dhash", "Dhash"
    REFERENCE = "dhash(image, hash_size={s})"
    PREPROCESSING = "PIL convert('L'), LANCZOS resize to {w}x{s} (w x h), bit = pixel[:, 1:] > pixel[:, :-1]"

    def _fields(self):
        return {"s": self.hash_size, "w": self.hash_size + 1}

    def resize_to(self, image_size):
        return (self.hash_size + 1, self.hash_size)

    def _bits(self, context):
        pixels = self._pixels(context)
        return pixels[:, 1:] > pixels[:, :-1]


def _whash_scale(image_size, hash_size):
    """imagehash's default ``image_scale``: the largest power of 2 not above the smaller side, at least hash_size."""
    natural = 2 ** int(np.log2(min(image_size)))
    return max(natural, hash_size)


class Whash(HashSpec):
    """Wavelet hash: ``imagehash.whash(image, hash_size)`` (Haar, ``remove_max_haar_ll=True``)."""

    kind, title = "whash", "Whash"

    def __init__(self, hash_size=8):
        super().__init__(hash_size)
        if self.hash_size & (self.hash_size - 1):
            raise ValueError(f"Whash: hash_size must be a power of 2 (imagehash's requirement), got {hash_size}")

    REFERENCE = "whash(image, hash_size={s}, mode='haar', remove_max_haar_ll=True)"
    PREPROCESSING = ("PIL convert('L'), LANCZOS resize to S x S with S = max(hash_size, largest power of 2 <= the "
                     "smaller side), /255, Haar wavedec2 at full depth with the LL band zeroed and reconstructed, "
                     "Haar LL band at {s}x{s}, bit = coefficient > median")

    def resize_to(self, image_size):
        scale = _whash_scale(image_size, self.hash_size)
        return (scale, scale)

    def _bits(self, context):
        pixels = self._pixels(context)
        scale = pixels.shape[0]
        s, block = self.hash_size, scale // self.hash_size
        # The Haar LL band at this level is (block sum / 255 - block area * mean) / block: a strictly increasing
        # function of the integer block sum, whose distinct values are far apart compared with PyWavelets'
        # rounding errors. Comparing exact block sums thus gives imagehash's bits unless the two middle sums tie.
        sums = pixels.reshape(s, block, scale).sum(axis=1).reshape(s, s, block).sum(axis=2)
        flat = np.sort(sums, axis=None)
        half = flat.size // 2
        if flat[half - 1] < flat[half]:
            return sums > flat[half - 1]
        context.fallbacks += 1
        return _whash_pywt(pixels, scale, self.hash_size)


def _whash_pywt(pixels, image_scale, hash_size):
    """imagehash's wavelet computation on the resized pixels (used when block sums tie at the median)."""
    import pywt

    ll_max_level = int(np.log2(image_scale))
    dwt_level = ll_max_level - int(np.log2(hash_size))
    pixels = np.asarray(pixels, dtype=np.uint8) / 255.0
    coeffs = list(pywt.wavedec2(pixels, "haar", level=ll_max_level))
    coeffs[0] *= 0
    pixels = pywt.waverec2(coeffs, "haar")
    low = pywt.wavedec2(pixels, "haar", level=dwt_level)[0]
    return low > np.median(low)


class Colorhash(HashSpec):
    """Colour hash: ``imagehash.colorhash(image, binbits)``; ``hash_size`` is ``binbits``, 14 * binbits bits."""

    kind, title = "colorhash", "Colorhash"

    def __init__(self, binbits=3):
        if isinstance(binbits, bool) or not isinstance(binbits, (int, np.integer)) or binbits < 1:
            raise ValueError(f"Colorhash: binbits must be a positive integer, got {binbits!r}")
        self.hash_size = int(binbits)

    @property
    def binbits(self):
        return self.hash_size

    def __repr__(self):
        return f"Colorhash(binbits={self.binbits})"

    @property
    def bits(self):
        return 14 * self.binbits

    @property
    def shape(self):
        return (14, self.binbits)

    REFERENCE = "colorhash(image, binbits={s})"
    PREPROCESSING = ("fractions of black pixels (L < 32), gray pixels (HSV saturation < 85) and of 6 hue bins of "
                     "faint and bright colours (PIL convert('L') and convert('HSV')), each coded on {s} bits")

    def _bits(self, context):
        binbits = self.binbits
        intensity = context.gray_array.ravel()
        h, s, _ = [np.asarray(channel).ravel() for channel in context.hsv().split()]
        # The arithmetic below is imagehash.colorhash's, statement for statement.
        mask_black = intensity < 256 // 8
        frac_black = mask_black.mean()
        mask_gray = s < 256 // 3
        frac_gray = np.logical_and(~mask_black, mask_gray).mean()
        mask_colors = np.logical_and(~mask_black, ~mask_gray)
        mask_faint_colors = np.logical_and(mask_colors, s < 256 * 2 // 3)
        mask_bright_colors = np.logical_and(mask_colors, s > 256 * 2 // 3)
        c = max(1, mask_colors.sum())
        hue_bins = np.linspace(0, 255, 6 + 1)
        if mask_faint_colors.any():
            h_faint_counts, _ = np.histogram(h[mask_faint_colors], bins=hue_bins)
        else:
            h_faint_counts = np.zeros(len(hue_bins) - 1)
        if mask_bright_colors.any():
            h_bright_counts, _ = np.histogram(h[mask_bright_colors], bins=hue_bins)
        else:
            h_bright_counts = np.zeros(len(hue_bins) - 1)
        maxvalue = 2 ** binbits
        values = [min(maxvalue - 1, int(frac_black * maxvalue)), min(maxvalue - 1, int(frac_gray * maxvalue))]
        for counts in list(h_faint_counts) + list(h_bright_counts):
            values.append(min(maxvalue - 1, int(counts * maxvalue * 1. / c)))
        bitarray = []
        for v in values:
            bitarray += [v // (2 ** (binbits - i - 1)) % 2 ** (binbits - i) > 0 for i in range(binbits)]
        return np.asarray(bitarray).reshape((-1, binbits))


class CropResistantHash(HashSpec):
    """Crop-resistant multi-hash: ``imagehash.crop_resistant_hash(image, limit_segments=max_segments)``.

    Each of up to ``max_segments`` bright or dark segments is hashed with ``dhash(hash_size)``; compare rows with
    :func:`crop_resistant_distances` (imagehash's ``ImageMultiHash`` rule). Row layout: byte 0 = number of
    segments, then one ``ceil(hash_size**2 / 8)``-byte slot per segment (largest segment first), unused slots zero.
    """

    kind, title = "crop_resistant", "Crop resistant hash"
    matching = "crop_resistant"
    default_segments = 16

    def __init__(self, hash_size=8, max_segments=16):
        super().__init__(hash_size)
        if isinstance(max_segments, bool) or not isinstance(max_segments, (int, np.integer)) \
                or not 1 <= max_segments <= 255:
            raise ValueError(f"CropResistantHash: max_segments must be an integer in 1..255, got {max_segments!r}")
        self.max_segments = int(max_segments)

    def _key(self):
        return (type(self).__name__, self.hash_size, self.max_segments)

    def __repr__(self):
        return f"CropResistantHash(hash_size={self.hash_size}, max_segments={self.max_segments})"

    @property
    def segment_bits(self):
        return self.hash_size * self.hash_size

    @property
    def segment_bytes(self):
        return -(-self.segment_bits // 8)

    @property
    def bits(self):
        return 8 * (1 + self.max_segments * self.segment_bytes)

    @property
    def shape(self):
        return (self.max_segments, self.hash_size, self.hash_size)

    @property
    def name(self):
        extra = "" if self.max_segments == self.default_segments else f" {self.max_segments} segments"
        return f"{self.title} {self.segment_bits} bits{extra}"

    REFERENCE = ("crop_resistant_hash(image, hash_func=lambda im: dhash(im, {s}), limit_segments={m})")
    PREPROCESSING = ("PIL convert('L'), LANCZOS resize to 300x300, GaussianBlur(2) then MedianFilter(3), bright "
                     "(> 128) and dark 4-connected segments of more than 500 pixels (imagehash's order and stopping "
                     "rule), the {m} largest kept; dhash {s} of each segment's bounding box in the original image")

    def _fields(self):
        return {"s": self.hash_size, "m": self.max_segments}

    def meta(self):
        meta = super().meta()
        meta.update({
            "segment_bits": self.segment_bits,
            "max_segments": self.max_segments,
            "hamming_cutoff": self.segment_bits * _hash_crop.DEFAULT_BIT_ERROR_RATE,
            "layout": (f"byte 0: number of segments n (1..{self.max_segments}); bytes 1 + {self.segment_bytes}*i "
                       f"to {self.segment_bytes}*(i + 1): np.packbits of segment i's dhash for i < n, zero after; "
                       "segments largest first"),
            "packing": _PACKING + " (per segment)",
        })
        return meta

    def resize_to(self, image_size):
        return (_hash_crop.SEGMENTATION_SIZE, _hash_crop.SEGMENTATION_SIZE)

    def segment_hashes(self, context):
        """imagehash's segment hashes (boolean arrays), in order."""
        boxes = _hash_crop.segment_boxes(self._pixels(context).astype(np.uint8), context.size, self.max_segments)
        hashes = []
        for box in boxes:
            crop = context.gray_image.crop(box)  # may be empty on tiny images: Pillow then resizes to black
            pixels = lanczos_pixels(crop, (self.hash_size + 1, self.hash_size))
            hashes.append(pixels[:, 1:] > pixels[:, :-1])
        return hashes

    def _row(self, context):
        return _hash_crop.pack_segments(self.segment_hashes(context), self.max_segments, self.segment_bytes)

    def unpack(self, row):
        """The list of segment hashes (boolean ``hash_size x hash_size`` arrays) of a packed row."""
        row = np.asarray(row, dtype=np.uint8)
        if row.shape != (self.nbytes,):
            raise ValueError(f"{self.name}: expected a packed row of {self.nbytes} bytes, got shape {row.shape}")
        count = int(row[0])
        out = []
        for i in range(count):
            chunk = row[1 + i * self.segment_bytes:1 + (i + 1) * self.segment_bytes]
            out.append(np.unpackbits(chunk)[: self.segment_bits].astype(bool).reshape(self.hash_size,
                                                                                      self.hash_size))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------
_KINDS = {
    "ahash": Ahash, "averagehash": Ahash,
    "phash": Phash, "perceptualhash": Phash,
    "dhash": Dhash, "differencehash": Dhash,
    "whash": Whash, "wavelethash": Whash,
    "colorhash": Colorhash, "colourhash": Colorhash,
    "cropresistanthash": CropResistantHash, "cropresistant": CropResistantHash, "crophash": CropResistantHash,
}
_NAME_RE = re.compile(
    r"^(?P<kind>" + "|".join(sorted(_KINDS, key=len, reverse=True)) + r")"
    r"(?:(?P<bits>\d+)(?:bits?|b)?)?(?:(?P<segments>\d+)(?:segments?|segs?))?$")

#: Canonical names of the standard hashes (any hash_size is accepted by :func:`get_hash_spec`).
HASH_NAMES = ("Ahash 64 bits", "Ahash 256 bits", "Phash 64 bits", "Phash 256 bits", "Dhash 64 bits",
              "Dhash 256 bits", "Whash 64 bits", "Whash 256 bits", "Colorhash 42 bits", "Crop resistant hash 64 bits")


def _square_side(bits, kind_name):
    side = math.isqrt(bits)
    if side * side != bits:
        raise ValueError(f"{kind_name} with {bits} bits: the number of bits must be a square (hash_size ** 2), "
                         f"e.g. 64 or 256")
    return side


def get_hash_spec(name):
    """The :class:`HashSpec` for a hash name, or None when ``name`` does not name a hash.

    Accepts the display names (``'Dhash 64 bits'``), slugs (``'dhash_64_bits'``) and short forms (``'dhash'``,
    ``'dhash-64'``, ``'average_hash'``), case-insensitively; a :class:`HashSpec` is returned as is.

    Raises
    ------
    ValueError
        When ``name`` names a hash with an impossible size (``'Dhash 60 bits'``).
    """
    if isinstance(name, HashSpec):
        return name
    if not isinstance(name, str):
        return None
    squashed = re.sub(r"[\s_\-.]+", "", name.strip().lower())
    match = _NAME_RE.match(squashed)
    if match is None:
        if any(squashed.startswith(kind) for kind in _KINDS) and squashed not in _KINDS:
            raise ValueError(f"cannot parse hash name {name!r}; expected e.g. {', '.join(HASH_NAMES[:3])}")
        return None
    cls = _KINDS[match.group("kind")]
    bits = match.group("bits")
    segments = match.group("segments")
    if segments is not None and cls is not CropResistantHash:
        raise ValueError(f"{name!r}: only the crop-resistant hash has segments")
    if cls is Colorhash:
        if bits is None:
            return Colorhash()
        if int(bits) % 14:
            raise ValueError(f"{name!r}: a colour hash has 14 * binbits bits (42 for the default binbits=3)")
        return Colorhash(int(bits) // 14)
    hash_size = 8 if bits is None else _square_side(int(bits), cls.title)
    if cls is CropResistantHash:
        return CropResistantHash(hash_size, int(segments) if segments else CropResistantHash.default_segments)
    return cls(hash_size)


def resolve_hash_specs(names):
    """Specs for a list of names or specs; a name that is not a hash raises ``ValueError``."""
    specs = []
    for name in names:
        spec = get_hash_spec(name)
        if spec is None:
            raise ValueError(f"{name!r} is not a perceptual hash; known hashes: {', '.join(HASH_NAMES)}")
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------------------------------------------
def lanczos_pixels(gray_image, size):
    """imagehash's resize: ``gray_image.resize(size, LANCZOS)`` as a float64 array ``[height, width]``."""
    return np.asarray(gray_image.resize(tuple(size), Image.Resampling.LANCZOS), dtype=np.float64)


class _Context:
    """What the hashes of one image share: the ``'L'`` image and its resized versions."""

    def __init__(self, image, sizes):
        self.image = image
        self.size = image.size
        self.gray_image = image.convert("L")
        self.gray_array = np.asarray(self.gray_image)
        self._resized = self._resize(sizes)
        self._hsv = None
        self.fallbacks = 0

    def _resize(self, sizes):
        """``{size: pixels}``: one Pillow resize per distinct size (``benchmarks/bench_library_copies.py`` times
        other ways here)."""
        return {size: lanczos_pixels(self.gray_image, size) for size in dict.fromkeys(sizes)}

    def pixels(self, size):
        return self._resized[size]

    def hsv(self):
        if self._hsv is None:
            self._hsv = self.image.convert("HSV")
        return self._hsv


def compute_hashes(image, specs, stats=None):
    """Every requested hash of one image, from one grayscale conversion and one batch of resizes.

    Parameters
    ----------
    image : PIL.Image.Image
        Usually the RGB image of :func:`helpers.image_io.load_image`; any mode imagehash accepts works and gives
        imagehash's bits for that same image.
    specs : sequence of HashSpec or names
    stats : dict or None
        When given, ``stats['whash_fallbacks']`` is incremented for each wavelet hash that needed the PyWavelets
        computation (block sums tied at the median).

    Returns
    -------
    list of ndarray
        One packed ``uint8 [spec.nbytes]`` row per spec.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"compute_hashes expects a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"cannot hash an empty image ({image.width}x{image.height})")
    specs = resolve_hash_specs(specs)
    sizes = [size for spec in specs for size in spec.sizes(image.size)]
    context = _Context(image, sizes)
    rows = [spec._row(context) for spec in specs]
    if stats is not None:
        stats["whash_fallbacks"] = stats.get("whash_fallbacks", 0) + context.fallbacks
    return rows


def hash_bits(image, spec):
    """imagehash's boolean hash array (a list of arrays for the crop-resistant hash) for one image."""
    spec = resolve_hash_specs([spec])[0]
    return spec.unpack(compute_hashes(image, [spec])[0])


def crop_resistant_distance(a_row, b_row, segment_bits=64, hamming_cutoff=None, bit_error_rate=None):
    """imagehash's ``multihash_a - multihash_b`` for two packed crop-resistant rows (see
    :func:`crop_resistant_distances`)."""
    return float(crop_resistant_distances(a_row, b_row, segment_bits, hamming_cutoff, bit_error_rate)[0, 0])


def crop_resistant_matches(a_row, b_row, region_cutoff=1, segment_bits=64, hamming_cutoff=None,
                           bit_error_rate=None):
    """imagehash's ``multihash_a.matches(multihash_b, region_cutoff)`` for two packed rows."""
    _, matches = crop_resistant_distances(a_row, b_row, segment_bits, hamming_cutoff, bit_error_rate,
                                          return_matches=True)
    return bool(matches[0, 0] >= region_cutoff)


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
#: Decode modes of the hashes of files: ``'exact'`` (the default) decodes the whole image (imagehash's bits);
#: ``'fast'`` decodes a reduced image (see :func:`fast_min_side`), whose bits may differ from imagehash's.
HASH_DECODES = ("exact", "fast")
#: Fast decode keeps at least this many source pixels per resized pixel along each side (measured on BSDS500: see
#: docs/hashing.md, "Fast decode").
FAST_DECODE_FACTOR = 4
_FIXED_SIZE = (Ahash, Phash, Dhash)


def check_decode(decode):
    """Validate a hash decode mode (``'exact'`` or ``'fast'``)."""
    if decode not in HASH_DECODES:
        raise ValueError(f"hash decode must be one of {list(HASH_DECODES)}, got {decode!r}")
    return decode


def fast_min_side(specs, factor=FAST_DECODE_FACTOR):
    """The smallest side (pixels) fast decode may reduce an image to for ``specs``, or None when it cannot reduce.

    Only the hashes with fixed resize targets (Ahash, Phash, Dhash) allow it: ``factor`` times their largest
    target side (32 for ``Phash 64 bits`` -> 128 px). The wavelet hash's resize depends on the image size, the
    colour hash counts pixels and the crop-resistant hash crops the original image: with any of them the image is
    decoded whole.
    """
    specs = resolve_hash_specs(specs)
    if not specs or not all(type(spec) in _FIXED_SIZE for spec in specs):
        return None
    return int(factor) * max(max(size) for spec in specs for size in spec.sizes((1, 1)))


def effective_decode(specs, decode):
    """The decode mode that actually applies to ``specs``: ``'fast'`` only when :func:`fast_min_side` allows it."""
    check_decode(decode)
    return "fast" if decode == "fast" and fast_min_side(specs) is not None else "exact"


def decode_description(specs, decode):
    """How files are decoded for ``specs`` in mode ``decode`` (the store's ``meta.json`` ``decode``)."""
    if effective_decode(specs, decode) == "exact":
        return "exact"
    side = fast_min_side(specs)
    return (f"fast: JPEG decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg scaled IDCT, luma only) and "
            f"other formats box-reduced by an integer factor, keeping both sides >= {side} px, then the hash's "
            f"LANCZOS resize; bits may differ from imagehash's")


def load_for_hashing(path, specs, max_pixels=DEFAULT_MAX_PIXELS, decode="exact"):
    """The image the hashes of ``specs`` are computed from (see :data:`HASH_DECODES`)."""
    side = fast_min_side(specs) if check_decode(decode) == "fast" else None
    if side is None:
        return load_image(path, max_pixels=max_pixels)
    return load_image(path, max_pixels=max_pixels, min_size=(side, side), mode="L")


def _hash_file(path, specs, max_pixels, decode="exact"):
    """``(rows, error)`` of one file: the packed rows, or None and why."""
    try:
        image = load_for_hashing(path, specs, max_pixels=max_pixels, decode=decode)
        return compute_hashes(image, specs), None
    except ImageLoadError as exc:
        return None, str(exc)
    except (ValueError, OSError, MemoryError) as exc:
        return None, f"{path}: cannot hash ({exc})"


def _hash_chunk(job):
    """Worker: hash a chunk of files; returns one ``uint8 [n, sum of nbytes]`` array and ``[(index, error)]``
    (one compact array per chunk instead of a list of small arrays per file)."""
    paths, specs, max_pixels, decode = job
    rows = np.zeros((len(paths), sum(spec.nbytes for spec in specs)), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        hashes, error = _hash_file(path, specs, max_pixels, decode)
        if hashes is None:
            errors.append((i, error))
        else:
            rows[i] = np.concatenate(hashes)
    return rows, errors


def warm_up(specs):
    """Compute ``specs`` once on a small image in this process, so that worker processes forked from it inherit
    the lazy imports (scipy's DCT, PyWavelets) and the resampling set-up (Pillow's pass-order probe) instead of
    each paying them on its first image."""
    yy, xx = np.mgrid[0:48, 0:64]
    image = Image.fromarray(((xx * 4 + yy * 3) % 256).astype(np.uint8), "L").convert("RGB")
    try:
        compute_hashes(image, specs)
    except (ValueError, OSError):  # a warm-up only: the real images report their own errors
        pass


def _init_worker():
    # One BLAS thread per worker process: the products are small and the processes already use every core.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def pool_context():
    """The multiprocessing context of the hashing workers: ``fork`` where the platform has it safely (Linux: a
    worker starts in milliseconds with every module already imported), else ``spawn`` (macOS, Windows: each worker
    imports NumPy, Pillow and this module, about a second)."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_chunksize(n_files, workers):
    """Files per task: about 8 tasks per worker (balance), between 1 and 64 (latency, memory)."""
    return max(1, min(64, -(-int(n_files) // (8 * max(1, int(workers))))))


def iter_hashes(paths, specs, workers=1, max_pixels=DEFAULT_MAX_PIXELS, chunksize=None, decode="exact"):
    """Hash image files in order, yielding ``(path, rows, error)`` per file.

    ``rows`` is the list of packed rows (one per spec) or None when the file could not be used, in which case
    ``error`` says why. With ``workers > 1`` the files are hashed by a pool of processes (:func:`pool_context`),
    ``chunksize`` files per task (default :func:`default_chunksize`); results stay in order and are identical for
    any number of workers. ``decode``: ``'exact'`` or ``'fast'`` (:data:`HASH_DECODES`).
    """
    specs = resolve_hash_specs(specs)
    check_decode(decode)
    paths = [str(path) for path in paths]
    if workers is None or workers <= 1 or len(paths) <= 1:
        for path in paths:
            rows, error = _hash_file(path, specs, max_pixels, decode)
            yield path, rows, error
        return
    size = default_chunksize(len(paths), workers) if chunksize is None else max(1, int(chunksize))
    jobs = [(paths[a:a + size], specs, max_pixels, decode) for a in range(0, len(paths), size)]
    bounds = np.cumsum([0] + [spec.nbytes for spec in specs])
    context = pool_context()
    if context.get_start_method() == "fork":
        warm_up(specs)
    with context.Pool(min(int(workers), len(jobs)), initializer=_init_worker) as pool:
        for (chunk, _, _, _), (rows, errors) in zip(jobs, pool.imap(_hash_chunk, jobs)):
            failed = dict(errors)
            for i, path in enumerate(chunk):
                if i in failed:
                    yield path, None, failed[i]
                else:
                    yield path, [rows[i, bounds[k]:bounds[k + 1]] for k in range(len(specs))], None


def hash_images(paths, specs, workers=1, report=None, max_pixels=DEFAULT_MAX_PIXELS, progress=False,
                decode="exact"):
    """Hash a list of image files.

    Parameters
    ----------
    paths : sequence of str or Path
    specs : sequence of HashSpec or names
    workers : int
        Processes (1 = in this process).
    report : helpers.image_io.SkipReport or None
        Unreadable files are recorded here; when None, a warning lists them.
    progress : bool
        Show a tqdm progress bar.
    decode : {'exact', 'fast'}
        ``'exact'`` (default): imagehash's bits. ``'fast'``: reduced-size decoding (:func:`fast_min_side`), bits
        close to but not always equal to imagehash's.

    Returns
    -------
    kept_paths : list of str
        The files that were hashed, in input order.
    arrays : list of ndarray
        One ``uint8 [len(kept_paths), spec.nbytes]`` array per spec, rows aligned with ``kept_paths``.
    """
    specs = resolve_hash_specs(specs)
    paths = [str(path) for path in paths]
    own_report = report is None
    report = SkipReport() if own_report else report
    kept, rows = [], [[] for _ in specs]
    results = iter_hashes(paths, specs, workers=workers, max_pixels=max_pixels, decode=decode)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(paths), unit="img", desc="hashing")
    for path, hashes, error in results:
        if hashes is None:
            report.add(path, error)
            continue
        kept.append(path)
        for bucket, row in zip(rows, hashes):
            bucket.append(row)
    if own_report:
        report.warn(logger)
    arrays = [np.stack(bucket) if bucket else np.zeros((0, spec.nbytes), dtype=np.uint8)
              for bucket, spec in zip(rows, specs)]
    return kept, arrays
