"""Feature store: round trip, memory mapping, atomic publication, resumable chunks, combination."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers.feature_store import (ChunkedFeatureWriter, FeatureStoreError, combine_features, feature_dir,
                                   load_dataset_features, load_features, save_features)
from tests.conftest import REPO_ROOT


def _float_store(tmp_path, n=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d)).astype(np.float32)
    names = [f"Datasets/x/{i}_attack.png" for i in range(n)]
    folder = save_features(feature_dir("toy", "My Model 1x", tmp_path), features, names,
                           {"name": "My Model 1x", "preprocessing": {"resize": 256}})
    return folder, features, names


def test_round_trip_float(tmp_path):
    folder, features, names = _float_store(tmp_path)
    assert folder == tmp_path / "toy" / "my_model_1x"
    loaded = load_features(folder)
    assert isinstance(loaded.features, np.memmap)
    np.testing.assert_array_equal(loaded.features, features)
    assert loaded.names == names
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dim"] == 5 and meta["n"] == 7 and meta["dtype"] == "float32" and meta["binary"] is False
    assert meta["slug"] == "my_model_1x" and meta["preprocessing"] == {"resize": 256}
    assert load_dataset_features("toy", "my model 1x", root=tmp_path).names == names


def test_round_trip_binary_bits(tmp_path):
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, size=(4, 64)).astype(bool)
    packed = np.packbits(bits, axis=1)
    folder = save_features(tmp_path / "hash", packed, list("abcd"), {"name": "Dhash 64 bits", "binary": True})
    loaded = load_features(folder, mmap=False)
    assert loaded.binary and loaded.dim == 64 and loaded.features.dtype == np.uint8
    np.testing.assert_array_equal(loaded.unpacked_bits(), bits.astype(np.uint8))


def test_no_pickle_in_store(tmp_path):
    folder, _, _ = _float_store(tmp_path)
    np.load(folder / "features.npy", allow_pickle=False)  # would raise if an object array had been written


def test_refuses_overwrite_without_flag_and_replaces_with_it(tmp_path):
    folder, _, names = _float_store(tmp_path)
    with pytest.raises(FeatureStoreError, match="already exists"):
        save_features(folder, np.zeros((2, 3), np.float32), ["a", "b"], {"name": "My Model 1x"})
    assert load_features(folder).names == names
    save_features(folder, np.zeros((2, 3), np.float32), ["a", "b"], {"name": "My Model 1x"}, overwrite=True)
    assert load_features(folder).names == ["a", "b"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["my_model_1x"]  # no leftovers


@pytest.mark.parametrize("bad", [np.zeros((3,), np.float32), np.zeros((2, 3), np.float64)])
def test_invalid_arrays_rejected(tmp_path, bad):
    with pytest.raises(FeatureStoreError):
        save_features(tmp_path / "bad", bad, ["a", "b", "c"][: len(bad)], {"name": "x"})


def test_name_count_mismatch_rejected(tmp_path):
    with pytest.raises(FeatureStoreError, match="names"):
        save_features(tmp_path / "bad", np.zeros((2, 3), np.float32), ["a"], {"name": "x"})


def test_missing_store_error_says_how_to_create(tmp_path):
    with pytest.raises(FeatureStoreError, match="extract_features.py --algo \"Dhash 64 bits\" --dataset demo"):
        load_dataset_features("demo", "Dhash 64 bits", root=tmp_path)


def test_inconsistent_store_detected(tmp_path):
    folder, _, _ = _float_store(tmp_path)
    (folder / "names.txt").write_text("only-one\n")
    with pytest.raises(FeatureStoreError, match="names.txt has 1"):
        load_features(folder)


def test_killed_writer_leaves_no_readable_store(tmp_path):
    """Kill a process in the middle of writing: the target folder must not look like a store."""
    target = tmp_path / "store"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import numpy as np
        import helpers.feature_store as fs
        real_write = fs._write_names
        def write_then_die(path, names):
            real_write(path, names)
            os.kill(os.getpid(), signal.SIGKILL)  # dies after features.npy and names.txt, before meta/rename
        fs._write_names = write_then_die
        fs.save_features({str(target)!r}, np.ones((100, 8), np.float32), [str(i) for i in range(100)], {{"name": "m"}})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode != 0
    assert not target.exists()
    with pytest.raises(FeatureStoreError):
        load_features(target)


def test_chunked_writer_resumes_and_equals_single_write(tmp_path):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(10, 4)).astype(np.float32)
    names = [f"img{i}.png" for i in range(10)]
    writer = ChunkedFeatureWriter(tmp_path / "chunked")
    writer.write_chunk(features[:4], names[:4])
    with pytest.raises(FeatureStoreError):
        load_features(tmp_path / "chunked")  # nothing published yet
    # a new writer (after a restart) sees what is done and continues
    resumed = ChunkedFeatureWriter(tmp_path / "chunked")
    assert resumed.completed_names() == names[:4]
    resumed.write_chunk(features[4:8], names[4:8])
    resumed.write_chunk(features[8:], names[8:])
    resumed.finalize({"name": "m"})
    single = save_features(tmp_path / "single", features, names, {"name": "m"})
    assert (tmp_path / "chunked" / "features.npy").read_bytes() == (single / "features.npy").read_bytes()
    assert not (tmp_path / "chunked.partial").exists()


def test_half_written_chunk_is_ignored(tmp_path):
    writer = ChunkedFeatureWriter(tmp_path / "c")
    writer.write_chunk(np.zeros((2, 3), np.float32), ["a", "b"])
    (writer.partial / "chunk_000001.txt").write_text("c\nd\n")  # names written, features never renamed in
    (writer.partial / ".chunk_000001.tmp.npy").write_bytes(b"partial")
    assert ChunkedFeatureWriter(tmp_path / "c").completed_names() == ["a", "b"]


def test_combine_main_and_distractors(tmp_path):
    main = load_features(_float_store(tmp_path / "m", n=3, d=4)[0])
    distractor = load_features(_float_store(tmp_path / "d", n=5, d=4, seed=1)[0])
    combined = combine_features(main, distractor)
    assert combined.features.shape == (8, 4) and combined.meta["n_main"] == 3
    np.testing.assert_array_equal(combined.features[3:], distractor.features)
    other = load_features(_float_store(tmp_path / "o", n=2, d=6)[0])
    with pytest.raises(FeatureStoreError, match="different algorithms"):
        combine_features(main, other)


def _damage(folder, kind):
    features = folder / "features.npy"
    if kind == "truncated features.npy":
        data = features.read_bytes()
        features.write_bytes(data[: len(data) - 12])
    elif kind == "1-D features.npy":
        np.save(features, np.zeros(7, np.float32))
    elif kind == "text as features.npy":
        features.write_text("these are not features\n")
    elif kind == "empty features.npy":
        features.write_bytes(b"")
    elif kind == "pickled features.npy":
        np.save(features, np.array([{"a": 1}] * 7, dtype=object), allow_pickle=True)
    elif kind == "float64 features.npy":
        np.save(features, np.zeros((7, 5), np.float64))
    elif kind == "garbage meta.json":
        (folder / "meta.json").write_text("{not json")
    elif kind == "empty meta.json":
        (folder / "meta.json").write_text("")
    elif kind == "list meta.json":
        (folder / "meta.json").write_text("[1, 2]")
    elif kind == "binary names.txt":
        (folder / "names.txt").write_bytes(b"\xff\xfe\n" * 7)


@pytest.mark.parametrize("kind,file,what", [
    ("truncated features.npy", "features.npy", "is truncated"),
    ("1-D features.npy", "features.npy", "must hold a 2-D array"),
    ("text as features.npy", "features.npy", "not a NumPy array file"),
    ("empty features.npy", "features.npy", "not a NumPy array file"),
    ("pickled features.npy", "features.npy", "pickled Python objects"),
    ("float64 features.npy", "features.npy", "float32"),
    ("garbage meta.json", "meta.json", "not valid JSON"),
    ("empty meta.json", "meta.json", "not valid JSON"),
    ("list meta.json", "meta.json", "must hold a JSON object"),
    ("binary names.txt", "names.txt", "not a UTF-8 text file"),
])
@pytest.mark.parametrize("mmap", [True, False])
def test_damaged_store_is_one_error_naming_the_file(tmp_path, kind, file, what, mmap):
    folder, _, _ = _float_store(tmp_path)
    _damage(folder, kind)
    with pytest.raises(FeatureStoreError) as info:
        load_features(folder, mmap=mmap)
    message = str(info.value)
    assert str(folder / file) in message and what in message and "\n" not in message
    if file != "names.txt":
        assert "--force" in message  # how to rebuild it
