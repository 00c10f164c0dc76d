"""Plumbing shared by the attack generator and the meme builder: processes, atomic writes, encoding, skip lists.

Their command lines run through :func:`helpers.cli.run_cli`.
"""
import io
import multiprocessing
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from helpers.image_io import DEFAULT_MAX_PIXELS

PART_SUFFIX = ".part"


def new_result(**counters):
    """The result dict of one worker task: ``failures`` (path, reason), ``loaded`` and the given counters."""
    return {"failures": [], "loaded": False, **counters}


def load_for_task(path, result, max_pixels=DEFAULT_MAX_PIXELS):
    """Load an image for a worker task; on failure record it in ``result['failures']`` and return ``None``.

    ``max_pixels``: the decompression-bomb limit (``--max-pixels``; ``None`` = no limit).
    """
    from helpers.image_io import ImageLoadError, load_image

    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageLoadError as exc:
        result["failures"].append((str(path), str(exc)))
        return None
    result["loaded"] = True
    return image


def _die_with_parent(parent_pid):
    """Pool initializer: end this worker when the main process dies, even by ``kill -9`` (no cleanup runs then).

    On Linux the kernel sends SIGKILL to the worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere
    a daemon thread polls the parent's pid. Either way a worker never keeps writing for a dead run (its outputs
    are atomic, so a re-run still finds complete files only).
    """
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the signal was armed
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_parallel(function, tasks, workers=1, desc="", unit="item", progress=True):
    """Yield ``function(task)`` for every task, in task order with one worker, in completion order otherwise.

    ``function`` must be a module-level function (it is sent to worker processes). A progress bar counts tasks.
    """
    from tqdm import tqdm

    pool = None
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress)
    try:
        if int(workers) <= 1 or len(tasks) <= 1:
            results = map(function, tasks)
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(min(int(workers), len(tasks)),
                                                            initializer=_die_with_parent, initargs=(os.getpid(),))
            results = pool.imap_unordered(function, tasks)
        for result in results:
            bar.update(1)
            yield result
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def write_atomic(path, data):
    """Write bytes to ``path`` through a hidden temporary file and a rename, so no partial file is ever visible."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def clean_partial_files(folder):
    """Remove the temporary files an interrupted run of :func:`write_atomic` left in ``folder``."""
    for leftover in Path(folder).glob(f".*{PART_SUFFIX}"):
        try:
            leftover.unlink()
        except OSError:
            pass


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(image, level=1):
    """A standard 8-bit RGB PNG of ``image``, about twice as fast to produce as PIL's encoder.

    PIL tries the five PNG row filters on every row and keeps the best; here every row uses the 'Sub' filter
    (each byte minus the same channel of the pixel to its left, computed for the whole image at once), which
    compresses photographs and noise about as well. Lossless and deterministic; any PNG reader decodes it.
    """
    array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = array.shape[:2]
    rows = array.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 1  # filter type 1, 'Sub'
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), int(level))) + _png_chunk(b"IEND", b""))


def encode(image, fmt, png_level=1, jpeg_quality=95):
    """The bytes of ``image`` as 'png' (:func:`png_bytes`, zlib ``png_level``) or 'jpg' (``jpeg_quality``).

    Deterministic: the same image and settings give the same bytes.
    """
    if fmt == "png":
        return png_bytes(image, png_level)
    buffer = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.save(buffer, format="JPEG", quality=int(jpeg_quality))
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png or jpg")
    return buffer.getvalue()


def finish_report(report, folder, logger):
    """Warn about and list the skipped files in ``folder/skipped.txt``; remove a stale list when none."""
    stale = Path(folder) / "skipped.txt"
    if report:
        report.warn(logger)
        report.write(folder)
    elif stale.exists():
        stale.unlink()  # a previous run's list no longer applies
    return [list(item) for item in report.items]
