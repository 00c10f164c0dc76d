"""The one image loader of the toolkit, and the listing of image folders.

Every package reads images through :func:`load_image` and lists folders through :func:`list_images`, so the
same file gives the same pixels everywhere:

- EXIF orientation is applied;
- every mode (``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``I;16``, ``I``, ``F``, ``1``...) becomes RGB,
  transparency composited on white;
- **partial-decode policy: skip.** A file that does not decode completely (truncated, garbage in the compressed
  data) raises :class:`ImageLoadError` like any other unusable file: its features would describe the grey
  padding of the missing part, a wrong answer that nothing downstream could tell from a right one. Every caller
  skips such files and records them, with the reason, in a :class:`SkipReport` (``skipped.txt`` of the run):
  never a crash and never a silent drop;
- images larger than a configurable number of pixels (decompression bombs) are refused (``--max-pixels``);
- unreadable files (permissions), special files (FIFOs, devices) and symbolic links that lead nowhere are
  refused with their reason, before anything blocks on them;
- hidden files and folders are ignored; folders are read recursively in a sorted, deterministic (natural) order;
  symbolic links to folders are followed once (a loop or a second link to the same folder is listed as skipped);
  names that would corrupt the line-based lists (``names.txt``), i.e. holding a line break or bytes that are not
  UTF-8, are skipped and listed.
"""
import errno
import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".jfif"})
#: Files the toolkit itself writes next to images (ground truth, labels, skip lists, chain descriptions): a
#: listing passes over them without reporting them as skipped.
TOOLKIT_FILES = frozenset({"ground_truth.csv", "labels.csv", "skipped.txt", "chains.tsv"})
#: Default decompression-bomb limit (pixels). 200 MP is far above any photograph of the datasets used here.
DEFAULT_MAX_PIXELS = 200_000_000

# PIL's own bomb check would warn or raise with its own limit; ours is explicit and configurable instead.
Image.MAX_IMAGE_PIXELS = None


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


def check_max_pixels(value):
    """Validate a ``max_pixels`` setting: a positive int, or ``None`` / ``0`` for no limit (returned as ``None``).

    Raises
    ------
    ValueError
        For anything else (negative, not an integer).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "0"}):
        return None
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"max_pixels must be a positive integer (0 or none: no limit), got {value!r}") from None
    if number < 0:
        raise ValueError(f"max_pixels must be a positive integer (0 or none: no limit), got {value!r}")
    return number or None


def file_problem(path):
    """Why ``path`` cannot be read as a regular file, or ``None`` when it can be opened (without opening it).

    Tells dangling symbolic links, symbolic link loops, folders and special files (FIFOs, sockets, devices, on
    which ``open`` could block forever) apart from a missing file.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
        return "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.EACCES:
            return "not readable (permission denied)"
        return f"cannot access the file ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (FIFO, socket or device)"
    return None


def _is_decode_error(exc):
    text = str(exc).lower()
    return "truncated" in text or "broken data stream" in text or "premature end" in text


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS, *, min_size=None, mode="RGB"):
    """Load an image file as an RGB ``PIL.Image`` (or, on request, a reduced and/or grayscale one).

    Parameters
    ----------
    path : str or Path
        The image file.
    max_pixels : int or None
        Refuse images with more pixels than this (decompression-bomb guard, on the full size); ``None`` disables
        the check.
    min_size : (int, int) or None
        ``None`` (the default): the full image. Otherwise a reduced-size decode that keeps at least this
        ``(width, height)`` (in the file's orientation): a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
        domain (Pillow's ``Image.draft``, libjpeg's scaled IDCT), any other format is decoded fully and then
        box-averaged by an integer factor (``Image.reduce``). The pixels differ from a full decode followed by a
        resize: only the perceptual hashes' explicit fast mode uses it.
    mode : {'RGB', 'L'}
        ``'L'`` returns the grayscale image: ``convert('L')`` of the RGB image, except with ``min_size`` on a
        YCbCr JPEG, where libjpeg's luma channel is taken directly (no colour conversion; +-1 grey level).

    Returns
    -------
    PIL.Image.Image
        An RGB (or ``mode``) image, EXIF orientation applied, fully loaded (the file is closed).

    Raises
    ------
    ImageLoadError
        The file is missing, unreadable, empty, not an image, only partly decodable (truncated or corrupt
        compressed data: the toolkit skips such files rather than keep a partial image), or larger than
        ``max_pixels``.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise ImageLoadError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                                     f"{max_pixels} (raise --max-pixels to accept it)")
            if min_size is not None and image.format == "JPEG":
                # DCT-domain downscaling: libjpeg skips the high frequencies of each 8x8 block (and, for 'L', the
                # chroma); the result is at least min_size.
                image.draft(mode if image.mode in ("RGB", "L") else None, tuple(int(v) for v in min_size))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.load()
            except OSError as exc:
                if not _is_decode_error(exc):
                    raise
                raise ImageLoadError(f"{path}: truncated or corrupt image data, skipped rather than kept half "
                                     f"decoded ({exc}); re-download or repair the file") from None
            if min_size is None and mode == "RGB":
                image = _exif_transpose(image)
                return to_rgb(image).copy()
            return _reduced(image, min_size, mode)
    except ImageLoadError:
        raise
    except PermissionError:
        raise ImageLoadError(f"{path}: not readable (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (cannot identify the format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, MemoryError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({exc})") from None


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _reduced(image, min_size, mode):
    """The loaded ``image`` in ``mode``, box-reduced by the largest integer factor that keeps ``min_size``, EXIF
    orientation applied last (on the small image)."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception as exc:  # a broken EXIF block must not lose the pixels
        logger.warning("ignoring unreadable EXIF orientation (%s)", exc)
        orientation = None
    if not (mode == "L" and image.mode == "L"):
        image = to_rgb(image)
        if mode == "L":
            image = image.convert("L")
    if min_size is not None:
        factor = min(image.width // max(1, int(min_size[0])), image.height // max(1, int(min_size[1])))
        if factor >= 2:
            image = image.reduce(factor)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    return image.copy() if isinstance(image, ImageFile.ImageFile) else image


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


def name_problem(path):
    """Why the name of ``path`` cannot go into the toolkit's line-based lists (``names.txt``), or ``None``."""
    text = str(path)
    if "\n" in text or "\r" in text:
        return "file name contains a line break (names.txt holds one name per line): rename the file"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (names.txt is UTF-8): rename the file"
    return None


def list_images(folder, recursive=True, report=None):
    """List the image files in ``folder`` in natural sorted order.

    Hidden files and folders, and the data files the toolkit writes next to images (:data:`TOOLKIT_FILES`:
    ``ground_truth.csv``, ``labels.csv``, ``skipped.txt``, ``chains.tsv``), are ignored. Everything else that is
    not returned is recorded, with its reason,
    in ``report`` when a :class:`SkipReport` is given (so nothing disappears silently): files without an image
    extension, dangling symbolic links and link loops, special files, unreadable sub-folders, names with a line
    break or invalid UTF-8. Symbolic links to folders are followed (each folder listed once).

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    report = report if report is not None else SkipReport()
    images = []
    seen = {os.path.realpath(folder): folder}
    # Real folders first, links to folders after them: the folder itself wins over a link to it.
    pending, links = [folder], []
    while pending or links:
        current = pending.pop() if pending else links.pop(0)
        if current is not folder and current.is_symlink():
            real = os.path.realpath(current)
            if real in seen:
                report.add(current, f"symbolic link to a folder already listed ({seen[real]}): not listed twice")
                continue
            seen[real] = current
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as exc:
            report.add(current, f"folder not readable ({exc.strerror or exc})")
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    if entry.is_symlink():
                        links.append(path)
                    else:
                        seen[os.path.realpath(path)] = path
                        pending.append(path)
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                if path.name in TOOLKIT_FILES and not entry.is_symlink():
                    continue  # the data files the toolkit writes next to images: not images, not skipped either
                problem = file_problem(path) if entry.is_symlink() else None
                report.add(path, problem or "not an image file (extension)")
                continue
            problem = name_problem(path) or file_problem(path)
            if problem is not None:
                report.add(path, problem)
                continue
            images.append(path)
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
        with open(target, "w", encoding="utf-8", errors="backslashreplace") as handle:
            for path, reason in self.items:
                handle.write(f"{_one_line(path)}\t{_one_line(reason)}\n")
        return target


def _one_line(text):
    """``text`` on one line without tabs (a file name may hold both): the list stays one entry per line."""
    return text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
