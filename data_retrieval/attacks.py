"""Attacks: the edited copies of a photo that serve as queries, each named by an attack ID.

The seed's benchmark edits every original photo with 12 families of attacks (58 variants with the default
parameters, :data:`DEFAULT_PARAMS`); an edited copy is saved as ``<stem>_<attack_id>.png`` and its ground truth
(the original and the attack) is written to ``ground_truth.csv`` by ``generate_attacks.py``. :func:`retrieve_ids` gives the IDs of a
parameter set, in a fixed order, so search results can be broken down by attack. :func:`extra_attack_ids` adds
the copy-detection families of DISC21 / AugLy / SSCD (flip, meme format, emoji overlay, background paste,
screenshot frame, padding, perspective, pixelization, grayscale, chained edits).

Any attack ID, default or extra, with any parameter value in it (``rotation_33_and_rescaling``,
``jpg_compression_25``...), is applied to one image by :func:`apply_attack`. Random attacks (noise, text, the
extras) draw from a generator seeded by the caller, so an output depends only on (image, attack ID, seed).

:func:`random_edit` draws one copy-detection edit with continuous random parameters over all these families
(or a chain of 2-3 of them); it is the training augmentation of the fine-tuning "copy-detection mode".
"""
import math
import re
import types

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from scipy import ndimage
from skimage import util as sk_util

from helpers.image_io import to_rgb

from . import edits
from .text import draw_text, get_font, random_string, text_box

BICUBIC = Image.Resampling.BICUBIC

#: The seed's attack parameters (``generate_attacks.py`` of the original project): 58 variants per image.
DEFAULT_PARAMS = types.MappingProxyType({
    "gaussian_variances": (0.01, 0.02, 0.05),
    "speckle_variances": (0.01, 0.02, 0.05),
    "salt_pepper_amounts": (0.05, 0.1, 0.15),
    "gaussian_kernels": (3, 5, 7),
    "median_kernels": (3, 5, 7),
    "compression_quality_factors": (10, 50, 90),
    "scaling_ratios": (0.4, 0.8, 1.2, 1.6),
    "cropping_percentages": (5, 10, 20, 40, 60),
    "resize_cropping": True,
    "rotation_angles": (5, 10, 20, 40, 60),
    "resize_rotation": True,
    "shearing_angles": (1, 2, 5, 10, 20),
    "contrast_factors": (0.5, 0.66, 1.5, 2),
    "color_factors": (0.5, 0.66, 1.5, 2),
    "brightness_factors": (0.5, 0.66, 1.5, 2),
    "sharpness_factors": (0.5, 0.66, 1.5, 2),
    "text_lengths": (10, 20, 30, 40, 50),
})

#: The seed's 12 families and the parameters each one uses.
SEED_FAMILIES = types.MappingProxyType({
    "noise": ("gaussian_variances", "speckle_variances", "salt_pepper_amounts"),
    "filter": ("gaussian_kernels", "median_kernels"),
    "compression": ("compression_quality_factors",),
    "scaling": ("scaling_ratios",),
    "cropping": ("cropping_percentages",),
    "rotation": ("rotation_angles",),
    "shearing": ("shearing_angles",),
    "contrast": ("contrast_factors",),
    "color": ("color_factors",),
    "brightness": ("brightness_factors",),
    "sharpness": ("sharpness_factors",),
    "text": ("text_lengths",),
})

#: The extra copy-detection families and their attack IDs (``--extra``).
EXTRA_FAMILIES = types.MappingProxyType({
    "flip": ("horizontal_flip",),
    "meme_format": ("meme_format_0.2", "meme_format_0.4"),
    "emoji_overlay": ("emoji_overlay_0.1", "emoji_overlay_0.2", "emoji_overlay_0.4"),
    "background_paste": ("background_paste_0.5", "background_paste_0.75"),
    "screenshot": ("screenshot_frame",),
    "padding": ("padding_0.1", "padding_0.25"),
    "perspective": ("perspective_0.1", "perspective_0.2", "perspective_0.3"),
    "pixelization": ("pixelization_0.4", "pixelization_0.2", "pixelization_0.1"),
    "grayscale": ("grayscale",),
    "chain": ("chain_1", "chain_2", "chain_3", "chain_4", "chain_5"),
})

_ID_FORMATS = {
    "gaussian_variances": "gaussian_noise_{}",
    "speckle_variances": "speckle_noise_{}",
    "salt_pepper_amounts": "s&p_noise_{}",
    "gaussian_kernels": "gaussian_filter_{0}x{0}",
    "median_kernels": "median_filter_{0}x{0}",
    "compression_quality_factors": "jpg_compression_{}",
    "scaling_ratios": "scaling_{}",
    "cropping_percentages": "cropping_{}",
    "rotation_angles": "rotation_{}",
    "shearing_angles": "shearing_{}",
    "contrast_factors": "contrast_enhancement_{}",
    "color_factors": "color_enhancement_{}",
    "brightness_factors": "brightness_enhancement_{}",
    "sharpness_factors": "sharpness_enhancement_{}",
    "text_lengths": "text_length_{}",
}


def _check_params(params):
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f"unexpected attack parameter(s) {', '.join(map(repr, unknown))}; valid names: "
                        f"{', '.join(DEFAULT_PARAMS)}")
    merged = dict(DEFAULT_PARAMS)
    merged.update(params)
    for key, value in merged.items():
        if key.startswith("resize_"):
            continue
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"attack parameter {key!r} must be a sequence of values, got {value!r}")
    return merged


def _family_ids(key, values, params):
    suffix = ""
    if key == "cropping_percentages" and params["resize_cropping"]:
        suffix = "_and_rescaling"
    if key == "rotation_angles" and params["resize_rotation"]:
        suffix = "_and_rescaling"
    return [_ID_FORMATS[key].format(value) + suffix for value in values]


def retrieve_ids(**params):
    """The attack IDs produced by a parameter set, in a fixed order (the seed's ``retrieve_ids``).

    Parameters
    ----------
    **params
        Any of the keys of :data:`DEFAULT_PARAMS`; missing keys take the seed's default values (pass an empty
        tuple to leave a family out). ``resize_cropping`` / ``resize_rotation`` switch the
        ``_and_rescaling`` suffix (and the resizing back to the original size).

    Returns
    -------
    list of str
        58 IDs for the defaults, ordered as :data:`DEFAULT_PARAMS`.

    Raises
    ------
    TypeError
        For an unknown parameter name (like the seed) or a non-sequence value.
    """
    merged = _check_params(params)
    ids = []
    for key in _ID_FORMATS:
        ids.extend(_family_ids(key, merged[key], merged))
    return ids


def extra_attack_ids(families=None):
    """The IDs of the extra copy-detection families (all of them, or those named in ``families``)."""
    names = list(EXTRA_FAMILIES) if families is None else list(families)
    unknown = [name for name in names if name not in EXTRA_FAMILIES]
    if unknown:
        raise ValueError(f"unknown extra attack family {unknown[0]!r}; valid: {', '.join(EXTRA_FAMILIES)}")
    return [attack_id for name in EXTRA_FAMILIES if name in names for attack_id in EXTRA_FAMILIES[name]]


def all_families():
    """Names of every family, the seed's first."""
    return list(SEED_FAMILIES) + list(EXTRA_FAMILIES)


def attack_ids(families=None, extra=False, **params):
    """IDs for a selection of families: the seed's (all by default), plus every extra family when ``extra``.

    ``families`` may name seed and extra families (see :func:`all_families`); IDs keep the fixed order.
    """
    merged = _check_params(params)
    if families is None:
        selected = set(SEED_FAMILIES) | (set(EXTRA_FAMILIES) if extra else set())
    else:
        selected = set(families)
        unknown = sorted(selected - set(all_families()))
        if unknown:
            raise ValueError(f"unknown attack family {unknown[0]!r}; valid: {', '.join(all_families())}")
        if extra:
            selected |= set(EXTRA_FAMILIES)
    ids = []
    for family, keys in SEED_FAMILIES.items():
        if family in selected:
            for key in keys:
                ids.extend(_family_ids(key, merged[key], merged))
    ids.extend(extra_attack_ids([name for name in EXTRA_FAMILIES if name in selected]))
    return ids


# ---------------------------------------------------------------------------------------------------------------
# The seed's attacks, one variant each
# ---------------------------------------------------------------------------------------------------------------

def _random_noise(image, rng, mode, **kwargs):
    """``skimage.util.random_noise`` semantics (float image in [0, 1], clipped), back to 8 bits."""
    noisy = sk_util.random_noise(np.asarray(image), mode=mode, rng=rng, **kwargs)
    return Image.fromarray(sk_util.img_as_ubyte(noisy), "RGB")


def gaussian_noise(image, rng, variance):
    """Additive Gaussian noise of ``variance`` (for an image scaled to [0, 1])."""
    return _random_noise(image, rng, "gaussian", mean=0.0, var=variance)


def speckle_noise(image, rng, variance):
    """Multiplicative noise ``x + x * n`` with ``n`` Gaussian of ``variance``."""
    return _random_noise(image, rng, "speckle", mean=0.0, var=variance)


def salt_pepper_noise(image, rng, amount):
    """Replace a fraction ``amount`` of the values by 0 or 1 (half each), channel by channel."""
    return _random_noise(image, rng, "s&p", amount=amount)


def gaussian_sigma(kernel_size):
    """The seed's standard deviation for a Gaussian kernel of ``kernel_size``: 0.6*((size-1)*0.5-1)+1."""
    return 0.6 * ((kernel_size - 1) * 0.5 - 1) + 1


def gaussian_filter(image, size_x, size_y=None):
    """Gaussian blur with a ``size_x x size_y`` kernel, sigma from :func:`gaussian_sigma`, mirrored borders.

    Same definition as OpenCV's ``GaussianBlur`` (sampled, normalised kernel; BORDER_REFLECT_101) used by the seed.
    """
    size_y = size_x if size_y is None else size_y
    array = np.asarray(image, dtype=np.float32)
    blurred = ndimage.gaussian_filter(array, sigma=(gaussian_sigma(size_y), gaussian_sigma(size_x), 0),
                                      radius=(size_y // 2, size_x // 2, 0), mode="mirror")
    return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8), "RGB")


def median_filter(image, size):
    """Median of each ``size x size`` window per channel, edges replicated (OpenCV's ``medianBlur``).

    Computed bit by bit (radix selection: the median's bit is 0 when at least half the window lies below the
    prefix with that bit set), 8 passes of ``size**2`` vectorised comparisons: 4-8x faster than PIL's
    ``MedianFilter`` for the seed's sizes, and identical to it.
    """
    array = np.asarray(image)
    radius = size // 2
    height, width = array.shape[:2]
    padded = np.pad(array, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    windows = [padded[dy:dy + height, dx:dx + width] for dy in range(size) for dx in range(size)]
    rank = (size * size + 1) // 2
    prefix = np.zeros(array.shape, np.uint8)
    count = np.empty(array.shape, np.uint8 if size * size < 256 else np.uint32)
    for bit in range(7, -1, -1):
        candidate = prefix | np.uint8(1 << bit)
        count.fill(0)
        for window in windows:
            count += window < candidate
        prefix = np.where(count >= rank, prefix, candidate)
    return Image.fromarray(prefix, "RGB")


def jpeg_compression(image, quality):
    """JPEG encoding at ``quality``, decoded again."""
    return edits.jpeg(image, quality)


def scaling(image, ratio):
    """Bicubic resize of both sides by ``ratio`` (at least 1 pixel)."""
    width, height = image.size
    return edits.resize(image, ratio * width, ratio * height)


def central_crop_box(width, height, percentage):
    """The central box keeping ``100 - percentage`` percent of each dimension."""
    ratio = 1 - percentage / 100
    new_w, new_h = max(1, round(ratio * width)), max(1, round(ratio * height))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return left, top, left + new_w, top + new_h


def cropping(image, percentage, rescale=True):
    """Central crop removing ``percentage`` % of the width and of the height, resized back when ``rescale``."""
    cropped = image.crop(central_crop_box(*image.size, percentage))
    return cropped.resize(image.size, resample=BICUBIC) if rescale else cropped


def rotation(image, angle, rescale=True):
    """Bicubic rotation by ``angle`` degrees counter-clockwise on an expanded canvas (black corners)."""
    rotated = image.rotate(angle, resample=BICUBIC, expand=True)
    return rotated.resize(image.size, resample=BICUBIC) if rescale and rotated.size != image.size else rotated


def shear_matrix(width, height, shear_x, shear_y):
    """PIL affine coefficients (output -> input) of a shear by the given angles (degrees) about the centre.

    The forward map is ``p' = c + A (p - c)`` with ``A = [[1, 0], [-tan(sy), 1]] @ [[1, -tan(sx)], [0, 1]]``
    and ``c`` the image centre: torchvision's ``affine(angle=0, shear=(sx, sy))`` convention.
    """
    tx, ty = math.tan(math.radians(shear_x)), math.tan(math.radians(shear_y))
    # A = [[1, -tx], [-ty, 1 + tx * ty]] has determinant 1, so its inverse is [[1 + tx * ty, tx], [ty, 1]].
    a, b, c, d = 1.0 + tx * ty, tx, ty, 1.0
    cx, cy = width * 0.5, height * 0.5
    return (a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy)


def shearing(image, angle, angle_y=None):
    """Shear by ``angle`` degrees along both axes, counter-clockwise like :func:`rotation`; same canvas size."""
    angle_y = angle if angle_y is None else angle_y
    matrix = shear_matrix(image.width, image.height, -angle, -angle_y)
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=BICUBIC)


_ENHANCERS = {
    "contrast": ImageEnhance.Contrast,
    "color": ImageEnhance.Color,
    "brightness": ImageEnhance.Brightness,
    "sharpness": ImageEnhance.Sharpness,
}


def enhancement(image, kind, factor):
    """PIL ``ImageEnhance`` (contrast, color, brightness or sharpness) by ``factor`` (1 = unchanged)."""
    return _ENHANCERS[kind](image).enhance(factor)


def seed_text_font_size(width, height):
    """The seed's font size: 40 px for a 512 px wide image, linear in the width (mean side if elongated)."""
    big = min(width, height) >= 100
    size = round(40 * width / 512) if big else round(6 * width / 100)
    if width / height <= 0.5 or width / height >= 2:
        size = (round(40 * (width + height) / 2 / 512) if big else round(6 * (width + height) / 2 / 100)) - 2
    return max(1, size)


def text_attack(image, rng, length):
    """The seed's text attack: ``length`` random alphanumeric characters, white with a black stroke.

    A line break every 20 characters (fewer on tall images), font size from :func:`seed_text_font_size`, at a
    random position where the whole text fits. On images too small for the text the font is shrunk until it
    fits; on an image too small for even a 1 px font the text is drawn at the top left and clipped.
    """
    width, height = image.size
    sentence = random_string(rng, length)
    per_line = 20 if height < 2 * width else max(1, int(np.floor(20 * width / height)))
    sentence = "\n".join(sentence[i:i + per_line] for i in range(0, len(sentence), per_line))
    size = seed_text_font_size(width, height)
    while True:
        font = get_font(size)
        stroke = max(1, round(size / 20))
        left, top, right, bottom = text_box(sentence, font, stroke)
        text_w, text_h = right - left, bottom - top
        if (text_w + 2 <= width and text_h + 2 <= height) or size == 1:
            break
        size = max(1, min(size - 1, int(size * 0.9)))
    x = int(rng.integers(1, width - text_w)) if width - text_w > 1 else 0
    y = int(rng.integers(1, height - text_h)) if height - text_h > 1 else 0
    out = image.copy()
    draw_text(ImageDraw.Draw(out), (x, y), sentence, font, fill=(255, 255, 255), stroke_fill=(0, 0, 0),
              stroke_width=stroke)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Random copy-detection edits (continuous parameters) and chains
# ---------------------------------------------------------------------------------------------------------------

def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _fast_noise(image, rng):
    array = np.asarray(image, dtype=np.float32)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        std = rng.uniform(0.02, 0.2)
        array = array + rng.standard_normal(array.shape, dtype=np.float32) * (255.0 * std)
        desc = f"gaussian_noise(std={std:.3f})"
    elif kind == 1:
        std = rng.uniform(0.05, 0.3)
        array = array * (1.0 + rng.standard_normal(array.shape, dtype=np.float32) * std)
        desc = f"speckle_noise(std={std:.3f})"
    else:
        amount = rng.uniform(0.005, 0.1)
        draws = rng.random(array.shape[:2], dtype=np.float32)
        array = array.copy()
        array[draws < amount / 2] = 0.0
        array[(draws >= amount / 2) & (draws < amount)] = 255.0
        desc = f"s&p_noise(amount={amount:.3f})"
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB"), desc


def _r_noise(image, rng):
    return _fast_noise(image, rng)


def _r_blur(image, rng):
    scale = max(1.0, min(image.size) / 224.0)
    if rng.random() < 0.8:
        radius = rng.uniform(0.4, 3.0) * scale
        return image.filter(ImageFilter.GaussianBlur(radius)), f"gaussian_blur(radius={radius:.2f})"
    size = int(rng.choice([3, 5]))
    return image.filter(ImageFilter.MedianFilter(size)), f"median_filter(size={size})"


def _r_jpeg(image, rng):
    quality = int(rng.integers(8, 96))
    return edits.jpeg(image, quality), f"jpeg(quality={quality})"


def _r_scale(image, rng):
    width, height = image.size
    factor = _log_uniform(rng, 0.3, 2.0)
    # Never blow an image up beyond 2048 px (or its own size when already larger).
    factor = min(factor, max(1.0, 2048 / max(width, height)))
    return edits.resize(image, width * factor, height * factor), f"scale(factor={factor:.3f})"


def _r_crop(image, rng):
    width, height = image.size
    area = rng.uniform(0.3, 0.95)
    aspect = _log_uniform(rng, 3 / 4, 4 / 3)
    crop_w = max(1, min(width, round(width * np.sqrt(area * aspect))))
    crop_h = max(1, min(height, round(height * np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    out = image.crop((left, top, left + crop_w, top + crop_h))
    rescale = rng.random() < 0.5
    if rescale:
        out = out.resize(image.size, resample=BICUBIC)
    return out, f"crop(area={area:.2f}, aspect={aspect:.2f}, rescale={rescale})"


def _r_rotation(image, rng):
    angle = rng.uniform(-60, 60) if rng.random() < 0.85 else float(rng.choice([90, 180, 270]))
    expand = rng.random() < 0.6
    fill = (0, 0, 0) if rng.random() < 0.6 else edits.random_color(rng)
    out = image.rotate(angle, resample=BICUBIC, expand=expand, fillcolor=fill)
    return out, f"rotation(angle={angle:.1f}, expand={expand})"


def _r_shear(image, rng):
    sx, sy = rng.uniform(-25, 25), rng.uniform(-25, 25)
    matrix = shear_matrix(image.width, image.height, sx, sy)
    out = image.transform(image.size, Image.Transform.AFFINE, matrix, resample=BICUBIC)
    return out, f"shear(x={sx:.1f}, y={sy:.1f})"


def _r_enhance(image, rng):
    kind = str(rng.choice(list(_ENHANCERS)))
    factor = _log_uniform(rng, 0.35, 2.5)
    return enhancement(image, kind, factor), f"{kind}_enhancement(factor={factor:.2f})"


def _r_text(image, rng):
    return edits.text_overlay(image, rng), "text_overlay"


def _r_overlay(image, rng):
    size = rng.uniform(0.1, 0.5)
    opacity = rng.uniform(0.4, 1.0)
    return edits.emoji_overlay(image, rng, size, opacity), f"emoji_overlay(size={size:.2f}, opacity={opacity:.2f})"


def _r_flip(image, rng):
    if rng.random() < 0.85:
        return edits.horizontal_flip(image), "horizontal_flip"
    return edits.vertical_flip(image), "vertical_flip"


def _r_padding(image, rng):
    fraction = rng.uniform(0.02, 0.3)
    return edits.pad(image, rng, fraction), f"padding(fraction={fraction:.2f})"


def _r_paste(image, rng):
    if rng.random() < 0.3:
        return edits.screenshot_frame(image, rng), "screenshot_frame"
    scale = rng.uniform(0.3, 0.9)
    return edits.paste_on_background(image, rng, scale), f"background_paste(scale={scale:.2f})"


def _r_perspective(image, rng):
    distortion = rng.uniform(0.05, 0.4)
    return edits.perspective(image, rng, distortion), f"perspective(distortion={distortion:.2f})"


def _r_pixelize(image, rng):
    ratio = _log_uniform(rng, 0.05, 0.5)
    return edits.pixelize(image, ratio), f"pixelization(ratio={ratio:.3f})"


def _r_grayscale(image, rng):
    return edits.grayscale(image), "grayscale"


def _r_meme(image, rng):
    fraction = rng.uniform(0.1, 0.4)
    position = "top" if rng.random() < 0.8 else "bottom"
    return edits.caption_bar(image, rng, fraction, position), f"meme_format(fraction={fraction:.2f}, {position})"


#: The families of :func:`random_edit`, each a function ``(image, rng) -> (image, description)``.
RANDOM_EDITS = types.MappingProxyType({
    "noise": _r_noise,
    "blur": _r_blur,
    "jpeg": _r_jpeg,
    "scale": _r_scale,
    "crop": _r_crop,
    "rotation": _r_rotation,
    "shear": _r_shear,
    "enhancement": _r_enhance,
    "text": _r_text,
    "overlay": _r_overlay,
    "flip": _r_flip,
    "padding": _r_padding,
    "paste": _r_paste,
    "perspective": _r_perspective,
    "pixelization": _r_pixelize,
    "grayscale": _r_grayscale,
    "meme": _r_meme,
})


def _chain(image, rng, families, length=None):
    length = int(rng.integers(2, 4)) if length is None else length
    names = [str(name) for name in rng.choice(families, size=min(length, len(families)), replace=False)]
    steps = []
    for name in names:
        image, desc = RANDOM_EDITS[name](image, rng)
        steps.append(desc)
    return image, "chain[" + " > ".join(steps) + "]"


def random_edit(image, rng, families=None, chain_probability=None):
    """One random copy-detection edit with parameters drawn from continuous ranges.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode and size (converted to RGB; transparency on white).
    rng : numpy.random.Generator
        The source of randomness; the same generator state gives the same edit.
    families : sequence of str, optional
        Restrict the draw to these families of :data:`RANDOM_EDITS` (and ``"chain"``); default: all.
    chain_probability : float, optional
        Probability of a chain of 2-3 edits instead of one; default: one chance in ``len(families) + 1``, the
        chain being one more family.

    Returns
    -------
    (PIL.Image.Image, str)
        The edited RGB image (its size may differ from the input's) and a description of the edit.
    """
    image = ensure_rgb(image)
    names = list(RANDOM_EDITS) if families is None else [name for name in families if name != "chain"]
    unknown = [name for name in names if name not in RANDOM_EDITS]
    if unknown:
        raise ValueError(f"unknown edit family {unknown[0]!r}; valid: {', '.join(RANDOM_EDITS)}, chain")
    allow_chain = families is None or "chain" in families
    if chain_probability is None:
        chain_probability = 1.0 / (len(names) + 1) if allow_chain else 0.0
    if not names:
        raise ValueError("random_edit needs at least one family other than 'chain'")
    if allow_chain and len(names) >= 2 and rng.random() < chain_probability:
        return _chain(image, rng, names)
    return RANDOM_EDITS[str(rng.choice(names))](image, rng)


# ---------------------------------------------------------------------------------------------------------------
# Attack IDs -> functions
# ---------------------------------------------------------------------------------------------------------------

_NUM = r"(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)"


def _number(text, kind=float):
    value = float(text)
    if kind is int:
        if value != int(value):
            raise ValueError(f"{text} is not an integer")
        return int(value)
    return value


def _in_range(attack_id, value, low, high, what):
    if not low <= value <= high:
        raise ValueError(f"attack {attack_id!r}: {what} must be in [{low}, {high}], got {value}")
    return value


def _noise(kind):
    functions = {"gaussian": gaussian_noise, "speckle": speckle_noise, "s&p": salt_pepper_noise}

    def run(image, rng, attack_id, value):
        limit = 1.0 if kind == "s&p" else 10.0
        return functions[kind](image, rng, _in_range(attack_id, _number(value), 0, limit, "the parameter"))
    return run


def _filter(kind):
    def run(image, rng, attack_id, size_x, size_y):
        kx, ky = _number(size_x, int), _number(size_y, int)
        if kx < 1 or ky < 1 or kx % 2 == 0 or ky % 2 == 0:
            raise ValueError(f"attack {attack_id!r}: kernel sizes must be odd and positive")
        if kind == "median":
            if kx != ky:
                raise ValueError(f"attack {attack_id!r}: the median filter needs a square kernel")
            return median_filter(image, kx)
        return gaussian_filter(image, kx, ky)
    return run


def _enhance(kind):
    def run(image, rng, attack_id, value):
        return enhancement(image, kind, _in_range(attack_id, _number(value), 0, 100, "the factor"))
    return run


def _run_chain(image, rng, attack_id, index):
    # chain_1 ... chain_n must differ under one seed: mix the index into the generator.
    rng = np.random.default_rng([int(rng.integers(2**32)), int(index)])
    return _chain(image, rng, list(RANDOM_EDITS))


_PARSERS = [
    (rf"gaussian_noise_{_NUM}", _noise("gaussian")),
    (rf"speckle_noise_{_NUM}", _noise("speckle")),
    (rf"s&p_noise_{_NUM}", _noise("s&p")),
    (r"gaussian_filter_(\d+)x(\d+)", _filter("gaussian")),
    (r"median_filter_(\d+)x(\d+)", _filter("median")),
    (rf"jpg_compression_{_NUM}",
     lambda im, rng, aid, q: jpeg_compression(im, _in_range(aid, _number(q, int), 1, 100, "the quality"))),
    (rf"scaling_{_NUM}",
     lambda im, rng, aid, r: scaling(im, _in_range(aid, _number(r), 1e-6, 16, "the ratio"))),
    (rf"cropping_{_NUM}(_and_rescaling)?",
     lambda im, rng, aid, p, rs: cropping(im, _in_range(aid, _number(p), 0, 99.999, "the percentage"), bool(rs))),
    (rf"rotation_{_NUM}(_and_rescaling)?", lambda im, rng, aid, a, rs: rotation(im, _number(a), bool(rs))),
    (rf"shearing_{_NUM}",
     lambda im, rng, aid, a: shearing(im, _in_range(aid, _number(a), -89, 89, "the angle"))),
    (rf"contrast_enhancement_{_NUM}", _enhance("contrast")),
    (rf"color_enhancement_{_NUM}", _enhance("color")),
    (rf"brightness_enhancement_{_NUM}", _enhance("brightness")),
    (rf"sharpness_enhancement_{_NUM}", _enhance("sharpness")),
    (r"text_length_(\d+)", lambda im, rng, aid, n: text_attack(im, rng, _in_range(aid, int(n), 0, 10000, "length"))),
    (r"horizontal_flip", lambda im, rng, aid: edits.horizontal_flip(im)),
    (r"vertical_flip", lambda im, rng, aid: edits.vertical_flip(im)),
    (r"grayscale", lambda im, rng, aid: edits.grayscale(im)),
    (rf"meme_format_{_NUM}",
     lambda im, rng, aid, f: edits.caption_bar(im, rng, _in_range(aid, _number(f), 0.01, 4, "the bar height"))),
    (rf"emoji_overlay_{_NUM}",
     lambda im, rng, aid, f: edits.emoji_overlay(im, rng, _in_range(aid, _number(f), 0.001, 2, "the size"))),
    (rf"background_paste_{_NUM}",
     lambda im, rng, aid, s: edits.paste_on_background(im, rng, _in_range(aid, _number(s), 0.01, 1, "the scale"))),
    (r"screenshot_frame", lambda im, rng, aid: edits.screenshot_frame(im, rng)),
    (rf"padding_{_NUM}", lambda im, rng, aid, f: edits.pad(im, rng, _in_range(aid, _number(f), 0, 4, "the padding"))),
    (rf"perspective_{_NUM}",
     lambda im, rng, aid, d: edits.perspective(im, rng, _in_range(aid, _number(d), 0, 1, "the distortion"))),
    (rf"pixelization_{_NUM}",
     lambda im, rng, aid, r: edits.pixelize(im, _in_range(aid, _number(r), 1e-6, 1, "the ratio"))),
    (r"chain_(\d+)", _run_chain),
]
_PARSERS = [(re.compile(pattern + r"\Z"), function) for pattern, function in _PARSERS]


def ensure_rgb(image):
    """Validate a PIL image and convert it to RGB (transparency composited on white), as the loader does."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"cannot attack an empty image ({image.width}x{image.height})")
    return image if image.mode == "RGB" else to_rgb(image)


def _lookup(attack_id):
    for pattern, function in _PARSERS:
        match = pattern.match(attack_id)
        if match:
            return function, match.groups()
    raise ValueError(f"unknown attack ID {attack_id!r}; see retrieve_ids() and extra_attack_ids() for the "
                     f"valid forms (family names: {', '.join(all_families())})")


def validate_attack_id(attack_id):
    """Raise ``ValueError`` if ``attack_id`` names no attack (its parameter values are checked when applied)."""
    _lookup(attack_id)


def apply_attack_described(image, attack_id, seed):
    """Like :func:`apply_attack`, also returning a description (the chain of edits for ``chain_<n>``)."""
    function, groups = _lookup(attack_id)
    image = ensure_rgb(image)
    rng = np.random.default_rng(seed)
    try:
        result = function(image, rng, attack_id, *groups)
    except ValueError as exc:
        if str(exc).startswith("attack "):
            raise
        raise ValueError(f"attack {attack_id!r}: {exc}") from exc
    if isinstance(result, tuple):
        return ensure_rgb(result[0]), result[1]
    return ensure_rgb(result), attack_id


def apply_attack(image, attack_id, seed):
    """Apply one attack, named by its ID, to ``image``.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode (converted to RGB, transparency on white) and any size of at least 1x1.
    attack_id : str
        A default or extra ID (``gaussian_noise_0.01``, ``rotation_40_and_rescaling``, ``padding_0.1``...); the
        parameter in the ID may take any valid value (``jpg_compression_25``).
    seed : int
        Seeds the random attacks (noise, text, extras); the output depends only on (image, ID, seed).

    Returns
    -------
    PIL.Image.Image
        An RGB image.

    Raises
    ------
    ValueError
        Unknown ID, a parameter out of range, or an empty image.
    TypeError
        ``image`` is not a PIL image.
    """
    return apply_attack_described(image, attack_id, seed)[0]
