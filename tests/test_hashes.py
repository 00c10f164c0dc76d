"""Perceptual hashes: bit-identical to imagehash 4.3.2 (the oracle), names, packed layout, files, multi-hash rule."""
import imagehash  # the test oracle (requirements-dev.txt)
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from extractor import _hash_crop, _lanczos
from extractor import hashing as H
from helpers.image_io import SkipReport, load_image
from helpers.paths import slugify
from tests.conftest import synthetic_photo

assert imagehash.__version__ == "4.3.2", "the hashes are specified as imagehash 4.3.2's"

ORACLES = {
    "ahash": imagehash.average_hash,
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
}
FOUR = (H.Ahash, H.Phash, H.Dhash, H.Whash)


def _flat(width, height, value):
    return Image.new("RGB", (width, height), value)


def _halves(width, height):
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([0, 0, width // 2 - 1, height - 1], fill=(255, 255, 255))
    return image


def _checkerboard(width, height, cell):
    yy, xx = np.mgrid[0:height, 0:width]
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(board, "L").convert("RGB")


def _odd_images():
    """Images where a resize, a median or a mode conversion could go wrong."""
    photo = synthetic_photo(90, 70, seed=3)
    rgba = synthetic_photo(64, 48, seed=4).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    i16 = Image.fromarray(np.asarray(synthetic_photo(40, 30, seed=5).convert("L")).astype(np.int32) * 200, "I")
    return {
        "1x1": _flat(1, 1, (200, 30, 90)),
        "3x2": synthetic_photo(3, 2, seed=1),
        "2x3": synthetic_photo(2, 3, seed=2),
        "wide_1000x3": synthetic_photo(1000, 3, seed=6),
        "tall_3x1000": synthetic_photo(3, 1000, seed=7),
        "wide_640x9": synthetic_photo(640, 9, seed=8),
        "tall_17x700": synthetic_photo(17, 700, seed=9),
        "photo_90x70": photo,
        "exact_8x8": synthetic_photo(8, 8, seed=10),
        "exact_256x256": synthetic_photo(256, 256, seed=11),
        "L": photo.convert("L"),
        "RGBA": rgba,
        "P": photo.quantize(colors=16),
        "LA": photo.convert("LA"),
        "CMYK": photo.convert("CMYK"),
        "1": photo.convert("1"),
        "I": i16,
        "flat_black": _flat(50, 40, (0, 0, 0)),
        "flat_grey": _flat(123, 77, (128, 128, 128)),
        "flat_white": _flat(300, 200, (255, 255, 255)),
        "halves": _halves(64, 64),
        "checker": _checkerboard(128, 96, 8),
        "stripes": Image.fromarray(np.tile(np.arange(200, dtype=np.uint8) // 25 * 36, (120, 1)), "L"),
    }


ODD = _odd_images()


@pytest.fixture(scope="module")
def large_image():
    small = synthetic_photo(200, 150, seed=12)
    noise = np.random.default_rng(0).integers(-20, 21, (1500, 2000, 3))
    big = np.asarray(small.resize((2000, 1500), Image.Resampling.BICUBIC)).astype(np.int64) + noise
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), "RGB")


def _assert_same(spec, row, reference):
    """The packed row holds imagehash's bits, in imagehash's flatten order."""
    reference = np.asarray(reference, dtype=bool)
    assert row.dtype == np.uint8 and row.shape == (spec.nbytes,)
    np.testing.assert_array_equal(spec.unpack(row), reference, err_msg=f"{spec.name}")
    np.testing.assert_array_equal(row, np.packbits(reference.flatten()), err_msg=f"{spec.name} packing")


# ------------------------------------------------------------------------------------------------------------
# Pillow's LANCZOS coefficients (the GPU input path's exact resize; the hashes call Pillow itself)
# ------------------------------------------------------------------------------------------------------------
def test_pillow_pass_order_is_recognised():
    # 'unknown' would make the GPU input path refuse its exact resize: a new Pillow needs a look at Resample.c.
    assert _lanczos.pillow_pass_order() in ("pillow>=12.3", "legacy")


def test_lanczos_coefficients_vectorised_equal_scalar_reference():
    for in_size, out_size in [(481, 8), (321, 256), (5, 300), (1000, 3), (17, 17), (2, 1)]:
        xmin, kk, xmax = _lanczos.axis_coefficients(in_size, out_size)
        scale = in_size / out_size
        support = 3.0 * max(scale, 1.0)
        for out in range(out_size):
            center = (out + 0.5) * scale
            exact = _lanczos._exact_row(out, center, support, 1.0 / max(scale, 1.0), xmin[out], xmax[out],
                                              kk.shape[1])
            np.testing.assert_array_equal(kk[out], exact)


# ------------------------------------------------------------------------------------------------------------
# The four hashes against imagehash
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hash_size", [8, 16])
@pytest.mark.parametrize("name", sorted(ODD))
def test_four_hashes_identical_to_imagehash(name, hash_size):
    image = ODD[name]
    specs = [cls(hash_size) for cls in FOUR]
    rows = H.compute_hashes(image, specs)
    for spec, row in zip(specs, rows):
        _assert_same(spec, row, ORACLES[spec.kind](image, hash_size=hash_size).hash)


@pytest.mark.parametrize("hash_size", [8, 16])
def test_four_hashes_identical_on_large_image(large_image, hash_size):
    specs = [cls(hash_size) for cls in FOUR]
    for spec, row in zip(specs, H.compute_hashes(large_image, specs)):
        _assert_same(spec, row, ORACLES[spec.kind](large_image, hash_size=hash_size).hash)


@pytest.mark.parametrize("hash_size", [2, 3, 4, 5, 32])
def test_other_hash_sizes(hash_size):
    image = synthetic_photo(150, 110, seed=hash_size)
    specs = [cls(hash_size) for cls in FOUR if cls is not H.Whash or hash_size & (hash_size - 1) == 0]
    for spec, row in zip(specs, H.compute_hashes(image, specs)):
        _assert_same(spec, row, ORACLES[spec.kind](image, hash_size=hash_size).hash)


@pytest.mark.parametrize("seed", range(12))
def test_photos_through_load_image(tmp_path, seed):
    """The production path: a file, helpers.image_io.load_image, every hash at once."""
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(20, 500)), int(rng.integers(20, 500))
    path = tmp_path / f"img{seed}.jpg"
    synthetic_photo(width, height, seed=seed).save(path, quality=85)
    image = load_image(path)
    specs = [cls(size) for size in (8, 16) for cls in FOUR] + [H.Colorhash()]
    for spec, row in zip(specs, H.compute_hashes(image, specs)):
        oracle = imagehash.colorhash if spec.kind == "colorhash" else ORACLES[spec.kind]
        reference = oracle(image) if spec.kind == "colorhash" else oracle(image, hash_size=spec.hash_size)
        _assert_same(spec, row, reference.hash)


def test_consecutive_images_of_one_size_reuse_buffers_correctly():
    # compute_hashes reuses its resize buffers from one image to the next of the same size
    specs = [cls(size) for size in (8, 16) for cls in FOUR] + [H.CropResistantHash()]
    for seed in range(3):
        image = synthetic_photo(331, 217, seed=50 + seed)
        rows = H.compute_hashes(image, specs)
        for spec, row in zip(specs[:-1], rows):
            _assert_same(spec, row, ORACLES[spec.kind](image, hash_size=spec.hash_size).hash)
        reference = imagehash.crop_resistant_hash(image, limit_segments=16)
        assert [str(imagehash.ImageHash(h)) for h in specs[-1].unpack(rows[-1])] == \
            [str(h) for h in reference.segment_hashes]


def test_whash_median_ties_use_the_wavelet_fallback():
    # Equal block sums straddle the median: only PyWavelets' rounding decides these bits.
    quarter = _flat(64, 64, (0, 0, 0))
    ImageDraw.Draw(quarter).rectangle([0, 0, 31, 31], fill=(255, 255, 255))
    for image in (ODD["flat_grey"], _flat(64, 64, (7, 7, 7)), quarter, ImageOps.invert(quarter)):
        spec = H.Whash(8)
        context = H._Context(image, spec.sizes(image.size))
        bits = spec._bits(context)
        assert context.fallbacks == 1
        np.testing.assert_array_equal(bits, imagehash.whash(image).hash)


def test_packed_layout_is_imagehash_flatten_order():
    image = synthetic_photo(120, 80, seed=21)
    spec = H.Dhash(8)
    row = spec.compute(image)
    reference = imagehash.dhash(image).hash
    assert row.shape == (8,)
    # bit k of the hash (row-major) is bit (7 - k % 8) of byte k // 8: np.packbits' big-endian order
    for k, value in enumerate(reference.flatten()):
        assert bool(row[k // 8] >> (7 - k % 8) & 1) == bool(value)
    assert str(imagehash.ImageHash(spec.unpack(row))) == str(imagehash.dhash(image))


# ------------------------------------------------------------------------------------------------------------
# Colour hash
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["photo_90x70", "RGBA", "P", "L", "flat_black", "flat_white", "1x1", "checker"])
def test_colorhash_identical_to_imagehash(name):
    image = ODD[name]
    spec = H.Colorhash()
    row = spec.compute(image)
    assert spec.bits == 42 and row.shape == (6,)
    _assert_same(spec, row, imagehash.colorhash(image).hash)
    assert not np.unpackbits(row)[42:].any()  # padding bits are zero


@pytest.mark.parametrize("binbits", [1, 2, 4])
def test_colorhash_binbits(binbits):
    image = synthetic_photo(80, 60, seed=binbits)
    spec = H.Colorhash(binbits)
    _assert_same(spec, spec.compute(image), imagehash.colorhash(image, binbits=binbits).hash)


# ------------------------------------------------------------------------------------------------------------
# Crop-resistant multi-hash
# ------------------------------------------------------------------------------------------------------------
def _blobs(seed, size=40):
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(size, size))
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(field, 2.5)


@pytest.mark.parametrize("seed", range(8))
def test_find_segments_matches_imagehash_flood_fill(seed):
    pixels = _blobs(seed)
    threshold = float(np.median(pixels)) + (seed % 3 - 1) * 0.05
    expected = imagehash._find_all_segments(pixels, threshold, 10)
    got = _hash_crop.find_segments(pixels, threshold, 10)
    assert [size for size, _ in got] == [len(segment) for segment in expected]
    for (_, box), segment in zip(got, expected):
        rows = [p[0] for p in segment]
        cols = [p[1] for p in segment]
        assert box == (min(rows), min(cols), max(rows), max(cols))


def test_find_segments_stops_where_imagehash_stops():
    # A big bright region visits almost every pixel: imagehash never looks for the dark corner region.
    pixels = np.full((40, 40), 200.0)
    pixels[30:, 30:] = 0.0
    expected = imagehash._find_all_segments(pixels, 128, 50)
    got = _hash_crop.find_segments(pixels, 128, 50)
    assert len(expected) == len(got) == 1
    assert got[0][0] == len(expected[0]) == 1500


def _crop_images():
    base = synthetic_photo(320, 240, seed=31)
    other = synthetic_photo(300, 260, seed=32)
    many = _checkerboard(300, 300, 60)
    corner = _flat(300, 300, (250, 250, 250))
    ImageDraw.Draw(corner).rectangle([270, 270, 299, 299], fill=(0, 0, 0))
    return {
        "base": base,
        "crop": base.crop((40, 30, 300, 220)),
        "crop_small": base.crop((0, 0, 170, 140)),
        "other": other,
        "flat": _flat(120, 90, (90, 90, 90)),
        "many_segments": many,
        "dark_corner": corner,
        "tiny": synthetic_photo(12, 9, seed=33),
    }


@pytest.fixture(scope="module")
def crop_hashes():
    images = _crop_images()
    spec = H.CropResistantHash()
    rows = {name: spec.compute(image) for name, image in images.items()}
    refs = {name: imagehash.crop_resistant_hash(image, limit_segments=16) for name, image in images.items()}
    return images, spec, rows, refs


def test_crop_resistant_segments_identical(crop_hashes):
    images, spec, rows, refs = crop_hashes
    assert len(refs["many_segments"].segment_hashes) == 16  # 25 segments, the 16 largest kept
    for name, row in rows.items():
        ours = spec.unpack(row)
        theirs = [h.hash for h in refs[name].segment_hashes]
        assert row[0] == len(theirs), name
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert not row[1 + 8 * len(theirs):].any()
    # without a limit imagehash keeps discovery order: same hashes as a multiset when there are <= 16
    unlimited = imagehash.crop_resistant_hash(images["base"])
    assert sorted(str(h) for h in unlimited.segment_hashes) == sorted(str(h) for h in refs["base"].segment_hashes)


def test_crop_resistant_distances_follow_imagehash(crop_hashes):
    _, spec, rows, refs = crop_hashes
    names = sorted(rows)
    matrix = np.stack([rows[name] for name in names])
    distances, matches = H.crop_resistant_distances(matrix, matrix, return_matches=True)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert distances[i, j] == refs[a] - refs[b], (a, b)
            assert matches[i, j] == refs[a].hash_diff(refs[b])[0]
            assert H.crop_resistant_matches(rows[a], rows[b]) == refs[a].matches(refs[b])
    assert H.crop_resistant_distance(rows["crop"], rows["base"]) == refs["crop"] - refs["base"]
    assert distances[names.index("crop"), names.index("base")] < distances[names.index("crop"),
                                                                           names.index("other")]
    for cutoff in (0, 4, 40):
        got = H.crop_resistant_distances(matrix, matrix, hamming_cutoff=cutoff)
        want = np.array([[refs[a].__sub__(refs[b], cutoff) for b in names] for a in names])
        np.testing.assert_array_equal(got, want)
    chunked = H.crop_resistant_distances(matrix, matrix, chunk_elements=1)
    np.testing.assert_array_equal(chunked, distances)


def test_crop_resistant_rows_are_validated():
    with pytest.raises(ValueError, match="segment count"):
        H.crop_resistant_distances(np.zeros((1, 129), np.uint8), np.zeros((1, 129), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        H.crop_resistant_distances(np.zeros((1, 130), np.uint8), np.zeros((1, 130), np.uint8))


# ------------------------------------------------------------------------------------------------------------
# Names and metadata
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("Dhash 64 bits", H.Dhash(8)), ("dhash_64_bits", H.Dhash(8)), ("DHASH", H.Dhash(8)), ("dhash-64", H.Dhash(8)),
    ("dhash64", H.Dhash(8)), ("Phash 256 bits", H.Phash(16)), ("phash_256", H.Phash(16)),
    ("average_hash", H.Ahash(8)), ("Ahash 256 bits", H.Ahash(16)), ("Whash 64 bits", H.Whash(8)),
    ("wavelet hash 1024", H.Whash(32)), ("Colorhash 42 bits", H.Colorhash(3)), ("colorhash", H.Colorhash(3)),
    ("colorhash_56_bits", H.Colorhash(4)), ("Crop resistant hash 64 bits", H.CropResistantHash(8, 16)),
    ("crop-resistant", H.CropResistantHash()), ("crop_resistant_hash_256_bits_8_segments",
                                                H.CropResistantHash(16, 8)),
])
def test_names_parse(name, expected):
    assert H.get_hash_spec(name) == expected


@pytest.mark.parametrize("name", ["ResNet50 1x", "SimCLR v2 ResNet50 2x", "Inception v3", "", "hashish", "64 bits"])
def test_non_hash_names_give_none(name):
    assert H.get_hash_spec(name) is None


@pytest.mark.parametrize("name", ["Dhash 60 bits", "Whash 36 bits", "colorhash 40 bits", "dhash 64 bits 4 segments",
                                  "phash 1 bit", "dhash banana"])
def test_bad_hash_names_raise(name):
    with pytest.raises(ValueError):
        H.get_hash_spec(name)


def test_canonical_names_round_trip_and_meta():
    assert {"Dhash 64 bits", "Phash 256 bits", "Ahash 64 bits", "Whash 64 bits"} <= set(H.HASH_NAMES)
    for name in H.HASH_NAMES:
        spec = H.get_hash_spec(name)
        assert spec.name == name
        assert spec.slug == slugify(name)
        assert H.get_hash_spec(spec.slug) == spec
        assert H.get_hash_spec(name.upper()) == spec
        meta = spec.meta()
        assert meta["name"] == name and meta["slug"] == spec.slug and meta["binary"] is True
        assert meta["dim"] == spec.bits and spec.nbytes == -(-spec.bits // 8)
        assert meta["matching"] == ("crop_resistant" if spec.kind == "crop_resistant" else "hamming")
        assert "preprocessing" in meta and "imagehash 4.3.2" in meta["reference"]
    assert H.get_hash_spec(H.Dhash(16)) == H.Dhash(16)
    with pytest.raises(ValueError, match="not a perceptual hash"):
        H.compute_hashes(synthetic_photo(), ["ResNet50 1x"])
    with pytest.raises(ValueError, match="power of 2"):
        H.Whash(12)
    with pytest.raises(ValueError, match="at least 2"):
        H.Dhash(1)


# ------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------
def test_hash_images_skips_bad_files_and_is_worker_independent(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        synthetic_photo(60 + 9 * i, 40 + 5 * i, seed=40 + i).convert("RGBA" if i == 2 else "RGB").save(path)
        paths.append(path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths[2:2] = [corrupt, tmp_path / "missing.png", empty]
    specs = ["Dhash 64 bits", "Phash 256 bits", H.Colorhash(), H.CropResistantHash()]
    report = SkipReport()
    kept, arrays = H.hash_images(paths, specs, workers=1, report=report)
    assert kept == [str(p) for p in paths if p.name.startswith("img")]
    assert sorted(p for p, _ in report.items) == sorted(str(p) for p in (corrupt, tmp_path / "missing.png", empty))
    resolved = H.resolve_hash_specs(specs)
    assert [a.shape for a in arrays] == [(5, spec.nbytes) for spec in resolved]
    for path, i in zip(kept, range(5)):
        image = load_image(path)
        np.testing.assert_array_equal(arrays[0][i], np.packbits(imagehash.dhash(image).hash.flatten()))
        np.testing.assert_array_equal(arrays[1][i], np.packbits(imagehash.phash(image, 16).hash.flatten()))
    report2 = SkipReport()
    kept2, arrays2 = H.hash_images(paths, specs, workers=2, report=report2)
    assert kept2 == kept and report2.items == report.items
    for a, b in zip(arrays, arrays2):
        np.testing.assert_array_equal(a, b)


def test_hash_images_without_report_warns(tmp_path, caplog):
    good = tmp_path / "good.png"
    synthetic_photo(30, 20).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    kept, arrays = H.hash_images([good, bad], ["dhash"])
    assert kept == [str(good)] and arrays[0].shape == (1, 8)
    assert "skipped 1 file" in caplog.text and "bad.png" in caplog.text
    kept, arrays = H.hash_images([bad], ["dhash", "colorhash"])
    assert kept == [] and [a.shape for a in arrays] == [(0, 8), (0, 6)]
