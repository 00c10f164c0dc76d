"""The one image loader: every mode, EXIF orientation, truncated/corrupt/empty/non-image files, bombs, listing."""
import builtins
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.image_io import (ImageLoadError, SkipReport, check_max_pixels, list_images, load_image,
                             natural_sorted)


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "CMYK", "1", "I", "F"])
def test_modes_become_rgb(tmp_path, photo, mode):
    source = photo(40, 30, seed=1)
    image = source.convert(mode)
    path = tmp_path / f"img_{mode}.{'tif' if mode in ('CMYK', 'I', 'F') else 'png'}"
    _save(image, path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    if mode == "L":
        gray = np.asarray(image)
        assert np.array_equal(np.asarray(loaded)[..., 0], gray)


def test_rgba_is_composited_on_white(tmp_path):
    array = np.zeros((10, 10, 4), dtype=np.uint8)
    array[..., 0] = 255  # red
    array[:5, :, 3] = 0  # top half fully transparent -> white
    array[5:, :, 3] = 255  # bottom half opaque red
    path = _save(Image.fromarray(array, "RGBA"), tmp_path / "rgba.png")
    loaded = np.asarray(load_image(path))
    assert (loaded[:5] == 255).all()
    assert (loaded[5:, :, 0] == 255).all() and (loaded[5:, :, 1:] == 0).all()


def test_la_and_palette_transparency_composited(tmp_path):
    la = Image.fromarray(np.stack([np.full((6, 6), 0, np.uint8), np.full((6, 6), 0, np.uint8)], -1), "LA")
    assert (np.asarray(load_image(_save(la, tmp_path / "la.png"))) == 255).all()
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([0, 0, 0] * 256)
    path = tmp_path / "p.png"
    palette.save(path, transparency=0)
    assert (np.asarray(load_image(path)) == 255).all()


def test_16_bit_grayscale_is_scaled(tmp_path):
    array = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    path = tmp_path / "i16.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = np.asarray(load_image(path))[..., 0]
    assert loaded.tolist() == [[0, 255], [128, 1]]


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "exif.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top = np.asarray(loaded)[:5].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the left strip is now at the top


def _encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _partial_files(photo):
    """Files that decode only partly: truncated JPEG and PNG, a JPEG with garbage in its compressed data."""
    jpeg = _encoded(photo(200, 150, seed=2), "JPEG", quality=90)
    png = _encoded(photo(200, 150, seed=2), "PNG")
    middle = len(jpeg) // 2
    return {"truncated.jpg": jpeg[: len(jpeg) * 2 // 3], "truncated.png": png[: len(png) * 2 // 3],
            "garbage.jpg": jpeg[:middle] + bytes(range(256)) * 4 + jpeg[middle + 1024:]}


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png", "garbage.jpg"])
def test_partly_decodable_file_is_skipped_with_reason(tmp_path, photo, name):
    # The policy: a file that does not decode completely is refused (never kept half grey), with its reason.
    path = tmp_path / name
    path.write_bytes(_partial_files(photo)[name])
    with pytest.raises(ImageLoadError, match="truncated or corrupt image data"):
        load_image(path)
    # The intact prefix of the same data still loads: the refusal is about the missing part, not the format.
    complete = tmp_path / ("complete" + path.suffix)
    complete.write_bytes(_encoded(photo(200, 150, seed=2), "PNG" if name.endswith("png") else "JPEG"))
    assert load_image(complete).size == (200, 150)


def _png_with_broken_header():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[29:33] = b"\x00\x00\x00\x00"  # the IHDR chunk's CRC
    return bytes(data)


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"this is not an image", "not an image"),
                                            (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
                                            (_png_with_broken_header(), "not an image")])
def test_bad_files_raise_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_limit(tmp_path):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_listing_recursive_sorted_hidden_ignored_non_images_reported(tmp_path):
    for rel in ["b/img10.png", "b/img2.png", "a/x.jpg", ".hidden/y.png", "a/.z.png", "notes.txt", "c1.JPG"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    report = SkipReport()
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, report=report)]
    assert found == ["a/x.jpg", "b/img2.png", "b/img10.png", "c1.JPG"]
    assert [p for p, _ in report.items] == [str(tmp_path / "notes.txt")]
    written = report.write(tmp_path / "out")
    assert written.read_text().startswith(str(tmp_path / "notes.txt") + "\t")


def test_listing_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "missing")


def test_natural_sort_flickr_like():
    names = [f"{d}/{i}.jpg" for d in (10, 2, 0) for i in (11, 1)]
    assert natural_sorted(names) == ["0/1.jpg", "0/11.jpg", "2/1.jpg", "2/11.jpg", "10/1.jpg", "10/11.jpg"]


def test_skip_report_warns_once(caplog):
    report = SkipReport()
    for i in range(12):
        report.add(f"f{i}.png", "corrupt")
    with caplog.at_level(logging.WARNING):
        report.warn(limit=3)
    assert len(caplog.records) == 1 and "skipped 12 file(s)" in caplog.records[0].message
    assert "and 9 more" in caplog.records[0].message


def test_listing_reports_links_special_files_and_bad_names(tmp_path, photo):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    photo(32, 24, seed=1).save(root / "good.png")
    photo(32, 24, seed=2).save(root / "sub" / "inner.png")
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    (root / "linked").symlink_to(root / "sub")  # the same folder twice: listed once
    (root / "up").symlink_to(root)  # a loop through a folder link
    (root / "to-good.png").symlink_to(root / "good.png")  # a working link to a file is an image like any other
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    photo(32, 24, seed=3).save(root / "line\nbreak.png")
    photo(32, 24, seed=4).save(os.fsencode(root) + b"/latin\xe9.png")
    report = SkipReport()
    found = [p.relative_to(root).as_posix() for p in list_images(root, report=report)]
    assert found == ["good.png", "sub/inner.png", "to-good.png"]
    reasons = {Path(path).name: reason for path, reason in report.items}
    assert "dangling symbolic link" in reasons["dangling.png"]
    assert reasons["loop-a.jpg"] == reasons["loop-b.jpg"] == "symbolic link loop"
    assert "already listed" in reasons["up"]
    assert "already listed" in reasons["linked"] and "sub" not in reasons
    assert "not a regular file" in reasons["fifo.jpg"]
    assert "line break" in reasons["line\nbreak.png"]
    assert "not valid UTF-8" in reasons[os.fsdecode(b"latin\xe9.png")]
    # skipped.txt keeps one entry per line whatever the names hold
    lines = report.write(tmp_path / "out").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(report) and all(line.count("\t") == 1 for line in lines)
    assert any(line.startswith(str(root / "line\\nbreak.png") + "\t") for line in lines)


def test_unreadable_file_is_refused_with_reason(tmp_path, photo, monkeypatch):
    path = tmp_path / "locked.png"
    photo(32, 24, seed=1).save(path)
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):  # what a chmod 000 file gives a non-root user
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    with pytest.raises(ImageLoadError, match="not readable \\(permission denied\\)"):
        load_image(path)


@pytest.mark.parametrize("value,expected", [(None, None), (0, None), ("none", None), (5000, 5000), ("5000", 5000)])
def test_check_max_pixels(value, expected):
    assert check_max_pixels(value) == expected


@pytest.mark.parametrize("value", [-1, 1.5, "many", True])
def test_check_max_pixels_refuses(value):
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        check_max_pixels(value)


def test_listing_passes_over_the_toolkits_own_files(tmp_path):
    """ground_truth.csv / labels.csv / skipped.txt / chains.tsv next to images are data, not skipped images;
    any other non-image file is still reported."""
    from helpers.image_io import SkipReport, list_images
    from tests.conftest import synthetic_photo

    synthetic_photo(20, 20).save(tmp_path / "a.png")
    for name in ("ground_truth.csv", "labels.csv", "skipped.txt", "chains.tsv", "notes.csv"):
        (tmp_path / name).write_text("x\n")
    report = SkipReport()
    assert [p.name for p in list_images(tmp_path, report=report)] == ["a.png"]
    assert [Path(path).name for path, _ in report.items] == ["notes.csv"]
