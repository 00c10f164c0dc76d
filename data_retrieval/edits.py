"""Image edits of copy-detection benchmarks (DISC21, AugLy, SSCD) that the seed's attacks lack.

Every function takes an RGB ``PIL.Image`` (any size, 1x1 included) and, when it is random, a
``numpy.random.Generator``; it returns a new RGB image and never modifies its input. Sizes are relative to the
image, so an edit looks the same on a thumbnail and on a photograph.
"""
import io

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .text import draw_text, fit_caption, get_font, random_caption, random_string

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST

# Emoji-like symbols present in DejaVu Sans Bold.
EMOJI_GLYPHS = "☺☻★♥♦♣♠☀☂☃♪♫✈✔✖❤☎✿⚑⚡☕"


def _size(value):
    return max(1, int(round(value)))


def random_color(rng, low=0, high=256):
    """A random RGB tuple."""
    return tuple(int(c) for c in rng.integers(low, high, 3))


def resize(image, width, height, resample=BICUBIC):
    """``image.resize`` with sizes clamped to at least one pixel."""
    size = (_size(width), _size(height))
    return image if image.size == size else image.resize(size, resample=resample)


def jpeg(image, quality):
    """Encode as JPEG at ``quality`` (1-100) and decode again."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def horizontal_flip(image):
    """Mirror left-right."""
    return ImageOps.mirror(image)


def vertical_flip(image):
    """Mirror top-bottom."""
    return ImageOps.flip(image)


def grayscale(image):
    """ITU-R 601-2 luma (PIL's ``L``), returned as three equal channels."""
    return image.convert("L").convert("RGB")


def pad(image, rng, fraction, color=None):
    """Add borders of ``fraction`` of the width (left, right) and of the height (top, bottom).

    The border colour is random unless given.
    """
    width, height = image.size
    dx, dy = int(round(fraction * width)), int(round(fraction * height))
    color = random_color(rng) if color is None else color
    return ImageOps.expand(image, border=(dx, dy, dx, dy), fill=color)


def pixelize(image, ratio):
    """Downscale to ``ratio`` of the size (box filter) and upscale back with nearest neighbour: square blocks."""
    width, height = image.size
    small = image.resize((_size(width * ratio), _size(height * ratio)), resample=Image.Resampling.BOX)
    return small.resize((width, height), resample=NEAREST)


def _perspective_coefficients(output_points, input_points):
    """Coefficients (a..h) of PIL's PERSPECTIVE transform mapping output pixels to input pixels."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(output_points, input_points):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))


def perspective(image, rng, distortion):
    """Move each corner inwards by up to ``distortion`` of half the image size (torchvision's RandomPerspective).

    The output keeps the size of the input; uncovered areas are black.
    """
    width, height = image.size
    if width < 2 or height < 2 or distortion <= 0:
        return image.copy()
    half_w, half_h = width // 2, height // 2
    max_dx, max_dy = int(distortion * half_w) + 1, int(distortion * half_h) + 1
    dx = rng.integers(0, max_dx, 4)
    dy = rng.integers(0, max_dy, 4)
    corners = [(0, 0), (width - 1, 0), (width - 1, height - 1), (0, height - 1)]
    moved = [(int(dx[0]), int(dy[0])), (width - 1 - int(dx[1]), int(dy[1])),
             (width - 1 - int(dx[2]), height - 1 - int(dy[2])), (int(dx[3]), height - 1 - int(dy[3]))]
    try:
        coefficients = _perspective_coefficients(moved, corners)
    except np.linalg.LinAlgError:  # degenerate corners on very thin images
        return image.copy()
    return image.transform((width, height), Image.Transform.PERSPECTIVE, tuple(coefficients), resample=BICUBIC)


def caption_bar(image, rng, fraction, position="top", text=None, background=(255, 255, 255), color=(0, 0, 0)):
    """The 'meme format': a bar of ``fraction`` of the image height with a caption, above (or below) the image."""
    width, height = image.size
    bar = _size(fraction * height)
    canvas = Image.new("RGB", (width, height + bar), background)
    canvas.paste(image, (0, bar if position == "top" else 0))
    text = random_caption(rng, 3, 12) if text is None else text
    margin = max(1, int(0.04 * width))
    box_w, box_h = max(1, width - 2 * margin), max(1, bar - 2 * max(1, int(0.08 * bar)))
    wrapped, font, _, (text_w, text_h) = fit_caption(text, box_w, box_h, start_size=max(1, int(0.35 * bar)),
                                                     stroke_ratio=0)
    top = 0 if position == "top" else height
    draw_text(ImageDraw.Draw(canvas), ((width - text_w) // 2, top + (bar - text_h) // 2), wrapped, font,
              fill=color)
    return canvas


def _emoji_tile(rng, size):
    """An RGBA tile with a symbol glyph, a smiley face or a geometric shape."""
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    kind = rng.integers(0, 3)
    color = random_color(rng, 40, 256) + (255,)
    line = max(1, size // 16)
    if kind == 0:
        glyph = EMOJI_GLYPHS[int(rng.integers(0, len(EMOJI_GLYPHS)))]
        font = get_font(max(1, int(size * 0.8)))
        left, top, right, bottom = draw.textbbox((0, 0), glyph, font=font, stroke_width=line)
        draw.text(((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top), glyph, font=font,
                  fill=color, stroke_width=line, stroke_fill=(0, 0, 0, 255))
    elif kind == 1:
        s = size - 1
        draw.ellipse([0, 0, s, s], fill=(255, 204, 51, 255), outline=(120, 80, 0, 255), width=line)
        eye = max(1, size // 10)
        for cx in (0.35 * s, 0.65 * s):
            draw.ellipse([cx - eye / 2, 0.3 * s, cx + eye / 2, 0.3 * s + 1.6 * eye], fill=(40, 30, 20, 255))
        start, end = (20, 160) if rng.random() < 0.7 else (200, 340)
        top = 0.35 * s if start == 20 else 0.62 * s
        draw.arc([0.22 * s, top, 0.78 * s, top + 0.4 * s], start, end, fill=(40, 30, 20, 255), width=line * 2)
    else:
        shape = rng.integers(0, 4)
        s = size - 1
        outline = (0, 0, 0, 255) if rng.random() < 0.5 else None
        if shape == 0:
            draw.ellipse([0, 0, s, s], fill=color, outline=outline, width=line)
        elif shape == 1:
            draw.rectangle([0, 0, s, s], fill=color, outline=outline, width=line)
        elif shape == 2:
            draw.polygon([(s / 2, 0), (s, s), (0, s)], fill=color, outline=outline)
        else:
            angles = np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, s / 2, s / 5)
            points = [(s / 2 + r * np.cos(a), s / 2 - r * np.sin(a)) for r, a in zip(radii, angles)]
            draw.polygon(points, fill=color, outline=outline)
    return tile


def emoji_overlay(image, rng, size_fraction, opacity=1.0):
    """Paste an emoji-like symbol, smiley or shape of ``size_fraction`` of the shorter side at a random place."""
    width, height = image.size
    size = _size(size_fraction * min(width, height))
    tile = _emoji_tile(rng, size)
    alpha = tile.getchannel("A")
    if opacity < 1.0:
        alpha = alpha.point(lambda v: int(v * opacity))
    # The symbol may hang over the border by up to a quarter of its size, as pasted stickers do.
    x = int(rng.integers(-(size // 4), max(1, width - size + size // 4 + 1)))
    y = int(rng.integers(-(size // 4), max(1, height - size + size // 4 + 1)))
    out = image.copy()
    out.paste(tile.convert("RGB"), (x, y), alpha)
    return out


def _background(rng, width, height):
    kind = rng.integers(0, 4)
    if kind == 0:
        return Image.new("RGB", (width, height), random_color(rng))
    if kind == 1:
        start, end = np.array(random_color(rng), np.float32), np.array(random_color(rng), np.float32)
        ramp = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height, dtype=np.float32)
        colors = start + ramp[:, None] * (end - start)
        if len(ramp) == width:
            array = np.broadcast_to(colors[None, :, :], (height, width, 3))
        else:
            array = np.broadcast_to(colors[:, None, :], (height, width, 3))
        return Image.fromarray(np.ascontiguousarray(array).astype(np.uint8), "RGB")
    if kind == 2:
        base = np.array(random_color(rng), np.int16)
        noise = rng.integers(-40, 41, size=(max(1, height // 4), max(1, width // 4), 3), dtype=np.int16)
        small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
        return small.resize((width, height), resample=BILINEAR)
    canvas = Image.new("RGB", (width, height), random_color(rng))
    draw = ImageDraw.Draw(canvas)
    stripe = max(1, int(min(width, height) * rng.uniform(0.03, 0.15)))
    other = random_color(rng)
    for offset in range(0, width + height, 2 * stripe):
        draw.line([(offset, 0), (offset - height, height)], fill=other, width=stripe)
    return canvas


def paste_on_background(image, rng, scale):
    """Shrink the image to ``scale`` of a random background (solid, gradient, noise or stripes) and paste it."""
    width, height = image.size
    bg_w = _size(width * rng.uniform(0.85, 1.2))
    bg_h = _size(height * rng.uniform(0.85, 1.2))
    factor = scale * min(bg_w / width, bg_h / height)
    inner = resize(image, width * factor, height * factor)
    canvas = _background(rng, bg_w, bg_h)
    x = int(rng.integers(0, max(1, bg_w - inner.width + 1)))
    y = int(rng.integers(0, max(1, bg_h - inner.height + 1)))
    canvas.paste(inner, (x, y))
    return canvas


def screenshot_frame(image, rng):
    """The image inside a phone-screenshot-like frame: status bar, app header, caption lines and a navigation bar."""
    width, height = image.size
    dark = rng.random() < 0.5
    background = (18, 18, 18) if dark else (250, 250, 250)
    ink = (230, 230, 230) if dark else (20, 20, 20)
    unit = max(1, int(round(0.05 * max(width, height))))
    margin = int(round(rng.uniform(0.0, 0.05) * width))
    inner = resize(image, max(1, width - 2 * margin), height * max(1, width - 2 * margin) / width)
    status, header, caption, nav = unit, int(1.6 * unit), int(2.0 * unit), int(1.4 * unit)
    total_h = status + header + inner.height + caption + nav
    canvas = Image.new("RGB", (width, total_h), background)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, width, status - 1], fill=(0, 0, 0) if dark else (230, 230, 230))
    clock = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    font_small = get_font(max(1, int(0.7 * status)))
    draw_text(draw, (max(1, unit // 3), max(0, status // 6)), clock, font_small, fill=ink)
    draw.rectangle([width - 2 * unit, status // 4, width - unit // 2, status - status // 4], outline=ink)
    header_color = random_color(rng, 0, 200)
    draw.rectangle([0, status, width, status + header - 1], fill=header_color)
    title = random_caption(rng, 1, 3).title()
    font_title = get_font(max(1, int(0.55 * header)))
    draw_text(draw, (unit, status + header // 4), title, font_title, fill=(255, 255, 255))
    top = status + header
    canvas.paste(inner, (margin, top))
    font_caption = get_font(max(1, int(0.55 * unit)))
    lines = random_caption(rng, 3, 9)
    draw_text(draw, (max(1, margin), top + inner.height + unit // 3), lines, font_caption, fill=ink, align="left")
    nav_top = total_h - nav
    draw.rectangle([0, nav_top, width, total_h], fill=(0, 0, 0) if dark else (235, 235, 235))
    for k in range(3):
        cx = int(width * (k + 1) / 4)
        r = max(1, nav // 4)
        draw.ellipse([cx - r, nav_top + nav // 2 - r, cx + r, nav_top + nav // 2 + r], outline=ink)
    return canvas


def text_overlay(image, rng, length=None, size_fraction=None, color=None):
    """Random alphanumeric text or a caption, of ``size_fraction`` of the height, in a random colour, anywhere."""
    width, height = image.size
    if length is None:
        text = random_caption(rng, 1, 6) if rng.random() < 0.5 else random_string(rng, int(rng.integers(3, 25)))
    else:
        text = random_string(rng, length)
    size_fraction = rng.uniform(0.05, 0.2) if size_fraction is None else size_fraction
    wrapped, font, stroke, (text_w, text_h) = fit_caption(
        text, width, height, start_size=max(1, int(size_fraction * height)), stroke_ratio=0.06)
    x = int(rng.integers(0, max(1, width - text_w + 1)))
    y = int(rng.integers(0, max(1, height - text_h + 1)))
    fill = random_color(rng) if color is None else color
    stroke_fill = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
    out = image.copy()
    draw_text(ImageDraw.Draw(out), (x, y), wrapped, font, fill=fill, stroke_fill=stroke_fill,
              stroke_width=stroke if rng.random() < 0.7 else 0)
    return out
