"""The one image-montage function, used by neighbour galleries and cluster summaries."""
from PIL import Image, ImageDraw, ImageFont

from .image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

_BORDER_COLORS = {"green": (0, 158, 115), "red": (213, 94, 0), "blue": (0, 114, 178), "gray": (150, 150, 150)}


def _font(size):
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # fall back to PIL's bitmap font; captions only
        return ImageFont.load_default()


def make_montage(items, tile=224, columns=None, caption_height=34, border=4, background=(255, 255, 255),
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Lay images out on a grid with a caption under each.

    Parameters
    ----------
    items : list of dict
        Each with ``path`` (an image file) or ``image`` (a PIL image), an optional ``caption`` (str, may contain
        one newline) and an optional ``border`` colour name (``green``, ``red``, ``blue``, ``gray``).
        Unreadable files are drawn as a gray tile captioned "unreadable".
    tile : int
        Each image is fitted (aspect kept) into a ``tile x tile`` square.
    columns : int, optional
        Grid width; defaults to all items on one row.
    max_pixels : int or None
        Files of more pixels are drawn as "unreadable" tiles (``--max-pixels``; ``None``: no limit).

    Returns
    -------
    PIL.Image.Image
    """
    if not items:
        raise ValueError("make_montage needs at least one item")
    columns = columns or len(items)
    rows = (len(items) + columns - 1) // columns
    cell_w, cell_h = tile + 2 * border, tile + 2 * border + caption_height
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, caption_height // 3))
    for index, item in enumerate(items):
        x0, y0 = (index % columns) * cell_w, (index // columns) * cell_h
        caption = item.get("caption", "")
        try:
            image = item["image"] if "image" in item else load_image(item["path"], max_pixels)
        except ImageLoadError:
            image, caption = Image.new("RGB", (tile, tile), (200, 200, 200)), (caption + "\nunreadable").strip()
        image = image.copy()
        image.thumbnail((tile, tile))
        color = item.get("border")
        if color:
            draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + tile + 2 * border - 1], fill=_BORDER_COLORS.get(color, color))
        canvas.paste(image, (x0 + border + (tile - image.width) // 2, y0 + border + (tile - image.height) // 2))
        if caption:
            draw.multiline_text((x0 + border, y0 + tile + 2 * border + 1), caption, fill=(0, 0, 0), font=font,
                                spacing=1)
    return canvas
