"""The hashes' decode modes: exact (imagehash's bits) and fast (reduced-size decoding), the worker pool, the store."""
import imagehash  # the test oracle (requirements-dev.txt)
import numpy as np
import pytest
from PIL import Image

from extractor import hashing as H
from helpers.feature_store import load_features
from helpers.image_io import ImageLoadError, SkipReport, load_image
from tests.conftest import synthetic_photo

ORACLES = {"ahash": imagehash.average_hash, "phash": imagehash.phash, "dhash": imagehash.dhash}
SIZES = [(512, 384), (384, 512), (640, 300), (300, 300), (1000, 700), (257, 140)]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i in range(12):
        width, height = SIZES[i % len(SIZES)]
        path = folder / f"photo{i:02d}.jpg"
        synthetic_photo(width, height, seed=100 + i).save(path, quality=90)
        paths.append(path)
    return paths


def _bits(spec, image):
    return spec.unpack(H.compute_hashes(image, [spec])[0]).ravel()


def _reference(spec, path):
    return ORACLES[spec.kind](Image.open(path).convert("RGB"), hash_size=spec.hash_size).hash.ravel()


@pytest.mark.parametrize("name", ["Ahash 64 bits", "Phash 64 bits", "Dhash 64 bits", "Phash 256 bits"])
def test_exact_mode_is_imagehash_and_fast_mode_is_close(jpegs, name):
    spec = H.get_hash_spec(name)
    distances = []
    for path in jpegs:
        reference = _reference(spec, path)
        np.testing.assert_array_equal(_bits(spec, H.load_for_hashing(path, [spec], decode="exact")), reference)
        distances.append(int(np.count_nonzero(_bits(spec, H.load_for_hashing(path, [spec], decode="fast"))
                                              != reference)))
    # Measured: mean 0.2 (Phash), 1.8 (Ahash), 2.4 (Dhash) bits of 64 on these images; an unrelated image is ~32.
    assert np.mean(distances) <= 0.08 * spec.bits
    assert max(distances) <= 0.2 * spec.bits


def test_fast_decode_reduces_jpegs_in_the_dct_domain_and_pngs_by_box_filter(tmp_path):
    photo = synthetic_photo(1000, 700, seed=1)
    photo.save(tmp_path / "a.jpg", quality=92)
    photo.save(tmp_path / "a.png")
    spec = H.Phash(8)
    side = H.fast_min_side([spec])
    assert side == H.FAST_DECODE_FACTOR * 32
    small = H.load_for_hashing(tmp_path / "a.jpg", [spec], decode="fast")
    # 700 // 128 = 5 -> libjpeg's scale 1/4: 250 x 175, luma only
    assert small.mode == "L" and small.size == (250, 175)
    reduced = H.load_for_hashing(tmp_path / "a.png", [spec], decode="fast")
    assert reduced.mode == "L" and reduced.size == (1000 // 5, 700 // 5)
    expected = np.asarray(photo.convert("L").reduce(5), dtype=np.int16)
    np.testing.assert_array_equal(np.asarray(reduced, dtype=np.int16), expected)
    assert min(small.size) >= side and min(reduced.size) >= side


def test_fast_decode_only_for_fixed_size_hashes():
    assert H.fast_min_side(["Dhash 64 bits"]) == H.FAST_DECODE_FACTOR * 9
    assert H.fast_min_side(["Dhash 64 bits", "Phash 256 bits"]) == H.FAST_DECODE_FACTOR * 64
    for other in ("Whash 64 bits", "Colorhash 42 bits", "Crop resistant hash 64 bits"):
        assert H.fast_min_side(["Phash 64 bits", other]) is None
        assert H.effective_decode(["Phash 64 bits", other], "fast") == "exact"
    assert H.effective_decode(["Phash 64 bits"], "fast") == "fast"
    with pytest.raises(ValueError, match="exact"):
        H.check_decode("quick")


def test_reduced_load_applies_exif_orientation_and_refuses_truncated_files(tmp_path):
    photo = synthetic_photo(640, 400, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rotated = tmp_path / "rotated.jpg"
    photo.save(rotated, quality=95, exif=exif)
    full = load_image(rotated)
    small = load_image(rotated, min_size=(64, 64), mode="L")
    assert full.size == (400, 640)
    assert small.size == (100, 160)  # 400 // 64 = 6: scale 1/4 of the stored 640x400, rotated like the full image
    expected = np.asarray(full.convert("L").resize(small.size, Image.BOX), dtype=np.float64)
    assert np.abs(np.asarray(small, dtype=np.float64) - expected).mean() < 6
    data = (tmp_path / "whole.jpg")
    photo.save(data, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(truncated, min_size=(64, 64), mode="L")
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(data, max_pixels=1000, min_size=(8, 8), mode="L")
    with pytest.raises(ValueError, match="mode"):
        load_image(data, mode="CMYK")


def test_pool_results_identical_for_1_and_2_workers_in_both_modes(jpegs, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    png = tmp_path / "copy.png"
    Image.open(jpegs[0]).save(png)
    paths = list(jpegs[:5]) + [bad, png] + list(jpegs[5:])
    specs = ["Phash 64 bits", "Dhash 256 bits"]
    for decode in ("exact", "fast"):
        outcomes = []
        for workers, chunksize in ((1, None), (2, None), (2, 1), (2, 5)):
            report = SkipReport()
            results = list(H.iter_hashes(paths, specs, workers=workers, chunksize=chunksize, decode=decode))
            kept, arrays = H.hash_images(paths, specs, workers=workers, report=report, decode=decode)
            assert [p for p, rows, _ in results if rows is not None] == kept
            assert [p for p, _ in report.items] == [str(bad)]
            outcomes.append((kept, arrays))
        for kept, arrays in outcomes[1:]:
            assert kept == outcomes[0][0]
            for a, b in zip(arrays, outcomes[0][1]):
                np.testing.assert_array_equal(a, b)
        if decode == "exact":
            spec = H.get_hash_spec("Phash 64 bits")
            for path, row in zip(outcomes[0][0], outcomes[0][1][0]):
                np.testing.assert_array_equal(spec.unpack(row).ravel(), _reference(spec, path))


def test_pool_chunks():
    assert H.default_chunksize(500, 2) == 32
    assert H.default_chunksize(5, 2) == 1
    assert H.default_chunksize(10 ** 6, 2) == 64


def test_extract_features_modes_have_their_own_fingerprint(jpegs, tmp_path):
    from extractor.extract import extract_features

    folder = jpegs[0].parent
    out = tmp_path / "Features"
    (exact,) = extract_features(["Phash 64 bits"], [str(folder)], out=out, progress=False, workers=0)
    first = load_features(exact, mmap=False)
    assert first.meta["decode"] == "exact"
    spec = H.Phash(8)
    for name, row in zip(first.names, first.features):
        np.testing.assert_array_equal(spec.unpack(row).ravel(), _reference(spec, name))
    (fast,) = extract_features(["Phash 64 bits"], [str(folder)], out=out, progress=False, workers=2,
                               hash_decode="fast")
    assert fast == exact  # same store folder: the fast request recomputed it (fingerprints differ)
    second = load_features(fast, mmap=False)
    assert second.meta["decode"].startswith("fast")
    assert second.meta["fingerprint"] != first.meta["fingerprint"]
    assert second.meta["created"] >= first.meta["created"] and second.names == first.names
    for path, row in zip(second.names, second.features):
        np.testing.assert_array_equal(row, H.compute_hashes(H.load_for_hashing(path, [spec], decode="fast"),
                                                            [spec])[0])
    # with 0 workers (in process) the fast store is the same; asking for exact again recomputes exact rows
    (again,) = extract_features(["Phash 64 bits"], [str(folder)], out=out, progress=False, workers=0,
                                hash_decode="fast", force=True)
    np.testing.assert_array_equal(load_features(again, mmap=False).features, second.features)
    (back,) = extract_features(["Phash 64 bits"], [str(folder)], out=out, progress=False, workers=2)
    third = load_features(back, mmap=False)
    assert third.meta["fingerprint"] == first.meta["fingerprint"]
    np.testing.assert_array_equal(third.features, first.features)


def test_extract_features_rejects_unknown_hash_decode(jpegs, tmp_path):
    from extractor.extract import extract_features

    with pytest.raises(ValueError, match="hash_decode"):
        extract_features(["Phash 64 bits"], [str(jpegs[0].parent)], out=tmp_path, hash_decode="quick")
