"""The bad and odd inputs of the audit, generated (no file of the corpus is stored in the repository).

Each ``write_*`` function writes into a folder given by the caller and returns what the entry points must make
of it, so a case reads: build the input, run the entry point, compare with the expectation.
"""
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import synthetic_photo

#: File created by every payload of the corpus if it ever ran (pickle, torch checkpoint, YAML tag, shell).
MARKER_NAME = "PAYLOAD_RAN"


def marker(folder):
    """The file a payload would create in ``folder``."""
    return Path(folder) / MARKER_NAME


class Payload:
    """Pickled, it becomes a call of ``open(marker, 'w')`` on load: proof that untrusted code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width=100_000, height=100_000):
    """A 100-byte PNG whose header announces ``width x height`` pixels (10 gigapixels by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def write_photos(folder, n=3, prefix="img", size=(64, 48), seed=0):
    """``n`` good photos ``<prefix><i>.png``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i}.png"
        synthetic_photo(*size, seed=seed + i).save(path)
        paths.append(path)
    return paths


#: Bad files: name -> reason expected in the run's skipped.txt. Each is written by :func:`write_bad_file`.
BAD_FILES = {
    "truncated.jpg": "truncated or corrupt image data",
    "truncated.png": "truncated or corrupt image data",
    "garbage.jpg": "truncated or corrupt image data",
    "bomb.png": "exceeds the limit",
    "empty.jpg": "empty file",
    "text.png": "not an image file",
    "dangling.png": "dangling symbolic link",
    "loop.jpg": "symbolic link loop",
    "line\nbreak.png": "line break",
    "fifo.jpg": "not a regular file",
    "latin\udce9.png": "not valid UTF-8",
}


def write_bad_file(folder, name):
    """Write the bad file ``name`` of :data:`BAD_FILES` into ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    photo = synthetic_photo(160, 120, seed=7)
    jpeg, png = _encoded(photo, "JPEG", quality=90), _encoded(photo, "PNG")
    if name == "truncated.jpg":
        path.write_bytes(jpeg[: len(jpeg) * 2 // 3])
    elif name == "truncated.png":
        path.write_bytes(png[: len(png) * 2 // 3])
    elif name == "garbage.jpg":
        middle = len(jpeg) // 2
        path.write_bytes(jpeg[:middle] + bytes(range(256)) * 4 + jpeg[middle + 1024:])
    elif name == "bomb.png":
        path.write_bytes(bomb_png())
    elif name == "empty.jpg":
        path.write_bytes(b"")
    elif name == "text.png":
        path.write_text("this is not an image\n")
    elif name == "dangling.png":
        path.symlink_to(folder / "gone.png")
    elif name == "loop.jpg":
        other = folder / "loop-other.jpg"
        path.symlink_to(other)
        other.symlink_to(path)
    elif name == "line\nbreak.png":
        photo.save(path)
    elif name == "fifo.jpg":
        os.mkfifo(path)
    elif name == "latin\udce9.png":
        with open(os.fsencode(folder) + b"/latin\xe9.png", "wb") as handle:
            handle.write(png)
    else:
        raise KeyError(name)
    return path


#: Odd but valid images: every entry point converts them (RGB) and keeps them.
def write_odd_images(folder):
    """CMYK JPEG, 16-bit grey PNG, palette with transparency, LA, 1-bit, 1x1, 1x2000, EXIF-rotated; and a name
    full of shell metacharacters. Returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = synthetic_photo(48, 36, seed=11)
    files = {
        "cmyk.jpg": lambda p: base.convert("CMYK").save(p, quality=90),
        "gray16.png": lambda p: Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)).save(p),
        "palette.png": lambda p: base.convert("P", palette=Image.ADAPTIVE).save(p, transparency=0),
        "la.png": lambda p: base.convert("LA").save(p),
        "bilevel.png": lambda p: base.convert("1").save(p),
        "dot.png": lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p),
        "line.png": lambda p: synthetic_photo(2000, 1, seed=12).save(p),
        "rotated.jpg": lambda p: base.save(p, exif=_orientation(6), quality=90),
        "$(touch PAYLOAD_RAN); `touch PAYLOAD_RAN` & name.png": lambda p: base.save(p),
    }
    for name, write in files.items():
        write(folder / name)
    return sorted(files)


def _orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def pickled_npy(path, target):
    """A ``.npy`` holding a pickled object array whose loading would create ``target``."""
    np.save(path, np.array([Payload(target)] * 3, dtype=object), allow_pickle=True)


def malicious_checkpoint(path, target):
    """A torch checkpoint whose unpickling (without ``weights_only``) would create ``target``."""
    import torch

    torch.save({"format": "simsearch-checkpoint-v1", "state_dict": {}, "config": {}, "payload": Payload(target)},
               path)


def truncated_checkpoint(path):
    """The first half of a real (small) torch checkpoint."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "epoch": 1}, buffer)
    data = buffer.getvalue()
    Path(path).write_bytes(data[: len(data) // 2])


def unsafe_yaml(path, target):
    """A YAML config whose tag would call ``open(target, 'w')`` under ``yaml.load`` (not ``safe_load``)."""
    Path(path).write_text(f"name: !!python/object/apply:builtins.open [{str(target)!r}, w]\n")


def assert_payload_never_ran(*folders):
    for folder in folders:
        assert not marker(folder).exists(), f"a payload ran: {marker(folder)} exists"


__all__ = ["BAD_FILES", "MARKER_NAME", "Payload", "assert_payload_never_ran", "bomb_png", "malicious_checkpoint",
           "marker", "pickled_npy", "truncated_checkpoint", "unsafe_yaml", "write_bad_file", "write_odd_images",
           "write_photos"]
