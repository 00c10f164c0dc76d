"""Fonts and text drawing shared by the text attack, the overlays and the meme builder.

The font is DejaVu Sans Bold, which ships (freely licensed) with matplotlib, a runtime requirement; it is found
without importing matplotlib so worker processes stay light. When it is missing, PIL's bundled default font is
used with a warning.
"""
import functools
import importlib.util
import logging
import os
import string

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

ALPHANUMERIC = string.ascii_uppercase + string.ascii_lowercase + string.digits

# Words for meme-like captions; plain English so the captions look like real ones to OCR-free models.
CAPTION_WORDS = (
    "when you me my the a to is it that this be and of in on for not with your but they what all so just "
    "nobody everyone literally finally monday friday work code bug boss cat dog coffee sleep weekend exam "
    "teacher mom dad friend party pizza money phone internet wifi meeting email deadline project computer "
    "game level win lose again always never nothing everything still already tomorrow yesterday today "
    "brain genius expert normal people society life plan reality expectation trying hard easy impossible "
    "me_irl how why who wait stop look see know think want need feel like love hate forgot remember "
    "second first last time day night year morning late early fast slow big small new old good bad best "
    "worst hot cold happy sad angry tired ready done more less one two three"
).replace("_", " ").split()


def _find_font_file(name="DejaVuSans-Bold.ttf"):
    spec = importlib.util.find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(root, "mpl-data", "fonts", "ttf", name)
        if os.path.isfile(candidate):
            return candidate
    return None


FONT_FILE = _find_font_file()
# A 1x1 image to measure text on, so measuring allocates nothing.
_SCRATCH = Image.new("L", (1, 1))


@functools.lru_cache(maxsize=256)
def get_font(size):
    """DejaVu Sans Bold at ``size`` pixels (at least 1), cached."""
    size = max(1, int(size))
    if FONT_FILE is not None:
        return ImageFont.truetype(FONT_FILE, size)
    logger.warning("DejaVu Sans Bold not found (is matplotlib installed?); using PIL's default font")
    return ImageFont.load_default(size)


def random_string(rng, length, alphabet=ALPHANUMERIC):
    """``length`` characters drawn uniformly from ``alphabet`` with the NumPy generator ``rng``."""
    if length <= 0:
        return ""
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=int(length)))


def random_caption(rng, min_words=2, max_words=8):
    """A meme-like caption of random words."""
    count = int(rng.integers(min_words, max_words + 1))
    return " ".join(CAPTION_WORDS[i] for i in rng.integers(0, len(CAPTION_WORDS), size=count))


def text_box(text, font, stroke_width=0, spacing=4, align="center"):
    """``(left, top, right, bottom)`` of ``text`` drawn at (0, 0), stroke included."""
    draw = ImageDraw.Draw(_SCRATCH)
    return draw.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke_width, spacing=spacing,
                                   align=align)


def wrap_words(text, font, max_width, stroke_width=0):
    """Greedy word wrap of ``text`` into lines narrower than ``max_width`` (a word longer than that stays whole)."""
    lines = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            trial = f"{current} {word}" if current else word
            left, _, right, _ = text_box(trial, font, stroke_width)
            if current and right - left > max_width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return "\n".join(lines)


def fit_caption(text, max_width, max_height, start_size, min_size=1, stroke_ratio=0.08):
    """Largest font size <= ``start_size`` at which ``text``, word-wrapped to ``max_width``, fits the box.

    Returns
    -------
    (wrapped_text, font, stroke_width, (width, height))
        At ``min_size`` the text is returned even if it still does not fit (it will be clipped when drawn).
    """
    size = max(int(start_size), min_size)
    while True:
        font = get_font(size)
        stroke = max(1, round(size * stroke_ratio)) if stroke_ratio > 0 else 0
        wrapped = wrap_words(text, font, max_width, stroke)
        left, top, right, bottom = text_box(wrapped, font, stroke)
        if (right - left <= max_width and bottom - top <= max_height) or size <= min_size:
            return wrapped, font, stroke, (right - left, bottom - top)
        size = max(min_size, min(size - 1, int(size * 0.85)))


def draw_text(draw, xy, text, font, fill, stroke_fill=None, stroke_width=0, align="center", spacing=4):
    """Draw (multi-line) ``text`` so that its ink box starts at ``xy`` (the box offset of the font removed)."""
    left, top, _, _ = text_box(text, font, stroke_width, spacing, align)
    draw.multiline_text((xy[0] - left, xy[1] - top), text, font=font, fill=fill, stroke_width=stroke_width,
                        stroke_fill=stroke_fill, align=align, spacing=spacing)
