"""The one image loader of the toolkit, and the listing of image folders.

Every package reads images through :func:`load_image` and lists folders through :func:`list_images`, so the
same file gives the same pixels everywhere:

- EXIF orientation is applied;
- every mode (``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``I;16``, ``I``, ``F``, ``1``...) becomes RGB,
  transparency composited on white;
- a truncated file loads what can be read, with a warning;
- files that cannot be decoded raise :class:`ImageLoadError` (callers skip them and record them in a
  :class:`SkipReport`, which writes ``skipped.txt``), never a crash and never a silent drop;
- images larger than a configurable number of pixels (decompression bombs) are refused;
- hidden files and folders are ignored; folders are read recursively in a sorted, deterministic (natural) order.
"""
import logging
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".jfif"})
#: Default decompression-bomb limit (pixels). 200 MP is far above any photograph of the datasets used here.
DEFAULT_MAX_PIXELS = 200_000_000

# PIL's own bomb check would warn or raise with its own limit; ours is explicit and configurable instead.
Image.MAX_IMAGE_PIXELS = None
_TRUNCATED_LOCK = threading.Lock()


class ImageLoadError(Exception):
    """An image file that cannot be used (not an image, corrupt, empty, too large)."""


def _natural_key(path):
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts]


def natural_sorted(paths):
    """Sort paths so that ``img2`` comes before ``img10`` (the Flickr sub-folders 0..49 too)."""
    return sorted(paths, key=_natural_key)


def to_rgb(image):
    """Convert any PIL mode to RGB; transparency is composited on a white background."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:
            peak = float(array.max()) if array.size else 0.0
            scale = 1.0 if (mode == "F" and peak <= 1.0) else (255.0 if peak <= 255 else 65535.0)
        gray = np.clip(np.rint(array / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Load an image file as an RGB ``PIL.Image``.

    Parameters
    ----------
    path : str or Path
        The image file.
    max_pixels : int or None
        Refuse images with more pixels than this (decompression-bomb guard); ``None`` disables the check.

    Returns
    -------
    PIL.Image.Image
        An RGB image, EXIF orientation applied, fully loaded (the file is closed).

    Raises
    ------
    ImageLoadError
        The file is missing, empty, not an image, corrupt, or larger than ``max_pixels``.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                                     f"{max_pixels} (raise --max-pixels to accept it)")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.load()
            except OSError as exc:
                if "truncated" not in str(exc).lower() and "broken data stream" not in str(exc).lower():
                    raise
                image = _load_truncated(path)
                logger.warning("%s: truncated file, loaded the readable part (%s)", path, exc)
            image = _exif_transpose(image)
            return to_rgb(image).copy()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (cannot identify the format)")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({exc})")


def _load_truncated(path):
    with _TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _exif_transpose(image):
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block must not lose the pixels
        logger.warning("ignoring unreadable EXIF orientation (%s)", exc)
        return image


def is_hidden(path, root=None):
    """True if any component of ``path`` below ``root`` starts with a dot."""
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else path.parts[-1:]
    return any(part.startswith(".") for part in parts)


def list_images(folder, recursive=True, report=None):
    """List the image files in ``folder`` in natural sorted order.

    Hidden files and folders are ignored. Files without an image extension are not returned; when a
    :class:`SkipReport` is given they are recorded in it (so nothing disappears silently).

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = []
    for path in candidates:
        if not path.is_file() or is_hidden(path, folder):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        elif report is not None:
            report.add(path, "not an image file (extension)")
    return natural_sorted(images)


class SkipReport:
    """Collects the files that were skipped, and why; warns once and writes ``skipped.txt``."""

    def __init__(self):
        self.items = []

    def add(self, path, reason):
        self.items.append((str(path), str(reason)))

    def __len__(self):
        return len(self.items)

    def __bool__(self):
        return bool(self.items)

    def extend(self, other):
        self.items.extend(other.items)

    def warn(self, log=None, limit=10):
        """Log one warning listing (up to ``limit``) skipped files."""
        if not self.items:
            return
        log = log or logger
        shown = "; ".join(f"{path} ({reason})" for path, reason in self.items[:limit])
        more = f" and {len(self.items) - limit} more" if len(self.items) > limit else ""
        log.warning("skipped %d file(s): %s%s", len(self.items), shown, more)

    def write(self, folder, name="skipped.txt"):
        """Write ``folder/skipped.txt`` (path, tab, reason per line) when anything was skipped."""
        if not self.items:
            return None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        with open(target, "w", encoding="utf-8") as handle:
            for path, reason in self.items:
                handle.write(f"{path}\t{reason}\n")
        return target
