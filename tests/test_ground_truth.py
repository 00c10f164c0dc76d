"""Ground truth as data (issue: ground truth you can trust): ground-truth files and adapters, identity = dataset +
path, stores keyed by location with fingerprints and locks, tie-aware metrics checked by hand and by enumeration,
and end-to-end runs (attacks -> extract -> search) on generated photos."""
import itertools
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_retrieval.adapters import copydays_ground_truth
from data_retrieval.generate_attacks import generate_attacks
from extractor.extract import extract_features
from fast_search import metrics as M
from fast_search.evaluate import search_resolving_ties, summarize_search
from fast_search.experiment import run_experiment
from fast_search.neighbor_table import read_neighbor_table
from helpers import datasets as D
from helpers.feature_store import feature_dir, load_features
from helpers.ground_truth import (GroundTruthError, ground_truth_from_names, match_queries, read_ground_truth,
                                  write_ground_truth)
from helpers.locking import exclusive
from tests.conftest import REPO_ROOT, synthetic_photo

FAMILIES = ["flip", "cropping"]
DHASH = "Dhash 64 bits"


# -------------------------------------------------------------------------------------------------- the files

def test_ground_truth_file_round_trip_and_formats(tmp_path):
    path = write_ground_truth(tmp_path / "ground_truth.csv", [("a b_flip.png", "a b.jpg", "flip"),
                                                               ("sub/é_1.png", "sub/é.png", None),
                                                               ("neg.png", None, "crop")])
    truth = read_ground_truth(path)
    assert truth.rows() == [("a b_flip.png", "a b.jpg", "flip"), ("sub/é_1.png", "sub/é.png", None),
                            ("neg.png", None, "crop")]
    disc = tmp_path / "dev_ground_truth.csv"
    disc.write_text("query_id,reference_id\nQ00000,R000002\nQ00001,\n")
    truth = read_ground_truth(disc)
    assert truth.by_stem and truth.references == {"Q00000": "R000002", "Q00001": None}
    refs, _ = match_queries(truth, ["Q00001.jpg", "Q00000.jpg"], ["R000001.jpg", "R000002.jpg"])
    assert refs == [None, "R000002.jpg"]
    (tmp_path / "bad.csv").write_text("image,original\nx,y\n")
    with pytest.raises(GroundTruthError, match="header"):
        read_ground_truth(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("query,reference\nq.png,a.png\nq.png,b.png\n")
    with pytest.raises(GroundTruthError, match="twice"):
        read_ground_truth(tmp_path / "twice.csv")
    with pytest.raises(GroundTruthError, match="not in the ground truth"):
        match_queries(read_ground_truth(path), ["a b_flip.png", "unlisted.png"], ["a b.jpg"])


def test_file_name_adapter_longest_prefix_and_refusals():
    truth = ground_truth_from_names(["IMG_1234_flip.png", "IMG_5678_jpg_50.png", "my_photo_crop_0.5.png", "x.png"],
                                    ["IMG_1234.JPG", "IMG_5678.JPG", "my_photo.jpg"])
    assert truth.references == {"IMG_1234_flip.png": "IMG_1234.JPG", "IMG_5678_jpg_50.png": "IMG_5678.JPG",
                                "my_photo_crop_0.5.png": "my_photo.jpg", "x.png": None}
    assert truth.attacks["IMG_5678_jpg_50.png"] == "jpg_50"
    with pytest.raises(GroundTruthError, match="cannot tell"):  # two images, one id: would merge them
        ground_truth_from_names(["x_flip.png"], ["a/x.jpg", "b/x.png"])
    with pytest.raises(GroundTruthError, match="several database images"):
        ground_truth_from_names(["a_b_c.png"], ["a.png", "a_b.png"])


# ------------------------------------------------------------------------------------------------------ ties

def test_tie_aware_recall_hand_computed():
    inf = np.inf
    distances = np.array([[1, 1, 1, 2], [0.5, 1, 1, 3], [1, 2, 2, 2]], dtype=float)
    ids = np.array([[5, 0, 6, 7], [1, 8, 9, 10], [11, 2, 12, 13]])
    db = [f"r{i}" for i in range(14)]
    queries = ["r0", "r1", "r2"]
    # query 0: its original is one of 3 images at distance 1; query 1: found strictly first; query 2: its original
    # is one of 3 images at distance 2 behind one strictly closer image
    for k, pessimistic, expected, optimistic in [
            (1, [0, 1, 0], [1 / 3, 1, 0], [1, 1, 0]),
            (2, [0, 1, 0], [2 / 3, 1, 1 / 3], [1, 1, 1]),
            (3, [1, 1, 0], [1, 1, 2 / 3], [1, 1, 1])]:
        pes, exp, opt, unresolved = M.tie_aware_hits(distances, ids, db, queries, k, n_database=14)
        assert pes.tolist() == [bool(v) for v in pessimistic], k
        np.testing.assert_allclose(exp, expected)
        assert opt.tolist() == [bool(v) for v in optimistic], k
        # query 2's tie group at k=2, 3 reaches the last column: it may continue past it
        assert unresolved.tolist() == [False, False, k > 1]
    summary = summarize_search(distances, ids, db, queries, ["a", "a", "b"], [1, 2], n_database=14)
    assert summary["recall@1"] == pytest.approx(1 / 3) and summary["recall@1_expected"] == pytest.approx(4 / 9)
    assert summary["recall@1_optimistic"] == pytest.approx(2 / 3)
    assert summary["per_attack"]["2"]["a"] == {"recall": 0.5, "n": 2, "recall_expected": pytest.approx(5 / 6)}
    # the former row-order rule counted query 0 as found at k=1 (its original has the lower row id)
    assert not M.tie_aware_hits(distances, ids, db, queries, 1)[0][0]
    del inf


def test_search_fetches_the_whole_tie_group():
    """40 database codes at distance 0 from the query: k=1 needs all 40 to know the chance of the right one."""
    calls = []

    def search(queries, k):
        calls.append(k)
        d = np.zeros((len(queries), k))
        d[:, 40:] = 5.0
        return d, np.tile(np.arange(k), (len(queries), 1))

    distances, ids = search_resolving_ties(search, np.zeros((2, 1)), 1, n_database=1000)
    assert calls[0] == 17 and distances.shape[1] > 40 and not M.ties_unresolved(distances, ids, 1).any()
    pes, exp, opt, unresolved = M.tie_aware_hits(distances, ids, [f"r{i}" for i in range(1000)], ["r7", "r999"], 1,
                                                 1000)
    assert pes.tolist() == [False, False] and opt.tolist() == [True, False] and not unresolved.any()
    np.testing.assert_allclose(exp, [1 / 40, 0])


def _average_precision(order_positive, n_positives):
    tp, total = 0, 0.0
    for rank, positive in enumerate(order_positive, start=1):
        if positive:
            tp += 1
            total += tp / rank
    return total / n_positives


@pytest.mark.parametrize("seed", range(4))
def test_expected_muap_equals_the_mean_over_every_tie_order(seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 4, size=8).astype(float)
    positive = rng.random(8) < 0.5
    positive[0] = True
    n_positives = int(positive.sum()) + 1  # one original never retrieved
    groups = [np.flatnonzero(distances == d) for d in np.unique(distances)]
    values = []
    for orders in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        values.append(_average_precision([positive[i] for order in orders for i in order], n_positives))
    assert M.micro_average_precision_expected(distances, positive, n_positives) == pytest.approx(np.mean(values))
    assert M.micro_average_precision(distances, positive, n_positives) == pytest.approx(min(values))


# ------------------------------------------------------------------------------------------------- end to end

def _photos(folder, names, seeds):
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in zip(names, seeds):
        synthetic_photo(72, 54, seed=seed).save(folder / name, quality=95)
    return folder


def _search(tmp_path, root, main, queries, name, distractor=None, **options):
    return run_experiment(name, DHASH, str(main), str(queries), distractor_dataset=str(distractor) if distractor
                          else None, experiment="k", ks=[1, 3], repeats=1, device="cpu",
                          results_root=tmp_path / "Results", features_root=root, **options)


def _point(results, k=1):
    section = results["algorithms"][DHASH]
    return section["runs"]["BFlat--hamming"]["points"][[1, 3].index(k)]


def test_any_file_names_give_the_same_numbers(tmp_path):
    """Phone-style names with underscores give exactly the recall of plain names (no identity merging)."""
    root = tmp_path / "Features"
    runs = {}
    for label, names in (("phone", [f"IMG_{i:04d}.JPG" for i in range(1, 9)]),
                         ("plain", [f"{i:04d}.jpg" for i in range(1, 9)])):
        originals = _photos(tmp_path / label / "originals", names, range(8))
        attacks = tmp_path / label / "attacks"
        generate_attacks(originals, attacks, families=FAMILIES, progress=False)
        extract_features(DHASH, [str(originals), str(attacks)], out=root, progress=False, workers=0)
        runs[label] = _point(_search(tmp_path, root, originals, attacks, label), 1)
    for key in ("recall@1", "recall@1_expected", "muap", "muap_expected", "n_queries_with_original"):
        assert runs["phone"][key] == runs["plain"][key], key
    assert runs["phone"]["per_attack"] == runs["plain"]["per_attack"]
    assert runs["phone"]["n_queries_with_original"] == runs["phone"]["n_queries"] > 8
    assert runs["phone"]["recall@1"] < 1.0  # crops of these small photos are hard: not every query is trivially found


def test_two_folders_with_one_basename_are_two_datasets(tmp_path, capsys):
    root = tmp_path / "Features"
    first = _photos(tmp_path / "a" / "images", [f"{i}.png" for i in range(5)], range(5))
    second = _photos(tmp_path / "b" / "images", [f"{i}.png" for i in range(5)], range(10, 15))
    extract_features(DHASH, [str(first)], out=root, progress=False, workers=0)
    extract_features(DHASH, [str(second)], out=root, progress=False, workers=0)
    assert "already extracted" not in capsys.readouterr().out
    a, b = load_features(feature_dir(str(first), DHASH, root)), load_features(feature_dir(str(second), DHASH, root))
    assert a.meta["dataset_key"] != b.meta["dataset_key"]
    assert not np.array_equal(np.asarray(a.features), np.asarray(b.features))
    # every script resolves the folder to the same store: search finds it (no "run extract_features" error)
    attacks = tmp_path / "b" / "attacks"
    generate_attacks(second, attacks, families=["compression"], progress=False)
    extract_features(DHASH, [str(attacks)], out=root, progress=False, workers=0)
    point = _point(_search(tmp_path, root, second, attacks, "b"), 1)
    assert point["n_queries_with_original"] == point["n_queries"] > 5 and point["recall@1"] > 0.8


def test_a_distractor_named_like_an_original_is_never_a_hit(tmp_path):
    """The distractor is an identical copy of the original under the same name: a tie, and never the answer."""
    root = tmp_path / "Features"
    main = _photos(tmp_path / "main", ["100007.jpg", "100039.jpg"], [1, 2])
    distractors = tmp_path / "distractors"
    distractors.mkdir()
    shutil.copy(main / "100007.jpg", distractors / "100007.jpg")
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(main / "100007.jpg", queries / "100007_copy.jpg")
    shutil.copy(main / "100039.jpg", queries / "100039_copy.jpg")
    write_ground_truth(queries / "ground_truth.csv", [("100007_copy.jpg", "100007.jpg", "copy"),
                                                       ("100039_copy.jpg", "100039.jpg", "copy")])
    extract_features(DHASH, [str(main), str(distractors), str(queries)], out=root, progress=False, workers=0)
    point = _point(_search(tmp_path, root, main, queries, "distract", distractor=distractors), 1)
    # query 100039: found; query 100007: its original ties with the distractor at distance 0
    assert point["recall@1"] == 0.5 and point["recall@1_expected"] == 0.75 and point["recall@1_optimistic"] == 1.0


def test_changing_the_weights_invalidates_the_store(tmp_path, caplog):
    root = tmp_path / "Features"
    folder = _photos(tmp_path / "photos", [f"p{i}.png" for i in range(3)], range(3))
    options = dict(out=root, progress=False, workers=0, weights="random", device="cpu", batch_size=4)
    store = feature_dir(str(folder), "ResNet18 1x", root)
    extract_features("ResNet18 1x", [str(folder)], seed=0, **options)
    first = load_features(store, mmap=False)
    extract_features("ResNet18 1x", [str(folder)], seed=0, **options)
    assert load_features(store).meta["created"] == first.meta["created"]  # same request: reused
    extract_features("ResNet18 1x", [str(folder)], seed=1, **options)
    second = load_features(store, mmap=False)
    assert second.meta["weights"] == "random (seed 1)" != first.meta["weights"]
    assert not np.allclose(second.features, first.features)
    assert "does not match this request (weights" in caplog.text
    # an edited image changes the image list's fingerprint too
    synthetic_photo(72, 54, seed=99).save(folder / "p1.png")
    extract_features("ResNet18 1x", [str(folder)], seed=1, **options)
    assert "the image list or the files changed" in caplog.text


def test_two_writers_never_publish_a_mixed_store(tmp_path):
    root = tmp_path / "Features"
    folder = _photos(tmp_path / "photos", [f"p{i:02d}.png" for i in range(30)], range(30))
    command = [sys.executable, str(REPO_ROOT / "extract_features.py"), "--algo", DHASH, "--dataset", str(folder),
               "--out", str(root), "--no-progress", "--chunk-size", "4", "--workers", "0"]
    runs = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    store = load_features(feature_dir(str(folder), DHASH, root))
    assert len(store) == 30 and len(set(store.names)) == 30
    # with the lock held elsewhere, --no-wait stops at once with one error line
    with exclusive(feature_dir(str(folder), DHASH, root)):
        busy = subprocess.run(command + ["--no-wait", "--force"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300)
    assert busy.returncode == 2 and "being written by pid" in busy.stderr


def test_disc21_shaped_miniature_with_negatives_and_score_normalisation(tmp_path):
    root = tmp_path / "Features"
    disc = tmp_path / "DISC21"
    references = _photos(disc / "references", [f"R{i:06d}.jpg" for i in range(6)], range(6))
    training = _photos(disc / "train", [f"T{i:06d}.jpg" for i in range(4)], range(50, 54))
    queries = disc / "dev_queries"
    queries.mkdir()
    for q, r in enumerate([0, 2, 4]):
        synthetic_photo(72, 54, seed=r).transpose(0).save(queries / f"Q{q:05d}.jpg", quality=80)
    synthetic_photo(72, 54, seed=77).save(queries / "Q00003.jpg")  # a negative query
    truth = disc / "dev_ground_truth.csv"
    truth.write_text("query_id,reference_id\nQ00000,R000000\nQ00001,R000002\nQ00002,R000004\nQ00003,\n")
    extract_features(DHASH, [str(references), str(queries), str(training)], out=root, progress=False, workers=0)
    results = _search(tmp_path, root, references, queries, "disc", ground_truth=str(truth),
                      score_norm_dataset=str(training))
    point = _point(results, 1)
    assert point["n_queries"] == 4 and point["n_queries_with_original"] == 3 and point["n_negative_queries"] == 1
    assert 0 <= point["muap"] <= point["muap_expected"] <= 1 and "muap_sn" in point
    assert results["algorithms"][DHASH]["ground_truth"] == str(truth)


def test_copydays_shaped_miniature_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DATASETS_DIR", tmp_path / "Datasets")
    days = tmp_path / "Datasets" / "Copydays"
    _photos(days / "original", ["200000.jpg", "200100.jpg", "200200.jpg"], [1, 2, 3])
    (days / "jpegqual" / "50").mkdir(parents=True)
    synthetic_photo(72, 54, seed=1).save(days / "jpegqual" / "50" / "200000.jpg", quality=50)
    (days / "crops" / "30").mkdir(parents=True)
    synthetic_photo(72, 54, seed=2).crop((8, 6, 64, 48)).save(days / "crops" / "30" / "200100.jpg")
    (days / "strong").mkdir()
    synthetic_photo(72, 54, seed=3).rotate(20).save(days / "strong" / "200201.jpg")
    truth = read_ground_truth(copydays_ground_truth(days))
    assert sorted(truth.rows()) == [("crops/30/200100.jpg", "200100.jpg", "crops_30"),
                                    ("jpegqual/50/200000.jpg", "200000.jpg", "jpegqual_50"),
                                    ("strong/200201.jpg", "200200.jpg", "strong")]
    root = tmp_path / "Features"
    extract_features(DHASH, ["Copydays_original", "Copydays_queries"], out=root, progress=False, workers=0)
    results = _search(tmp_path, root, "Copydays_original", "Copydays_queries", "copydays", save_neighbors=True)
    point = _point(results, 3)
    assert point["n_queries_with_original"] == 3 and set(point["per_attack"]["3"]) == {"crops_30", "jpegqual_50",
                                                                                       "strong"}
    assert point["per_attack"]["3"]["jpegqual_50"]["recall"] == 1.0
    table = read_neighbor_table(next((tmp_path / "Results" / "copydays" / "neighbors").glob("*k1.csv.gz")))
    query = next(name for name in table if name.endswith("jpegqual/50/200000.jpg"))
    assert table[query]["reference"].endswith("original/200000.jpg") and table[query]["neighbors"][0]["correct"]


def test_colorhash_is_searchable(tmp_path):
    root = tmp_path / "Features"
    originals = _photos(tmp_path / "originals", [f"{i}.png" for i in range(6)], range(6))
    attacks = tmp_path / "attacks"
    generate_attacks(originals, attacks, families=["flip"], progress=False)
    extract_features("Colorhash 42 bits", [str(originals), str(attacks)], out=root, progress=False, workers=0)
    results = run_experiment("color", "Colorhash 42 bits", str(originals), str(attacks), experiment="k", ks=[1],
                             repeats=1, device="cpu", results_root=tmp_path / "Results", features_root=root)
    point = results["algorithms"]["Colorhash 42 bits"]["runs"]["BFlat--hamming"]["points"][0]
    db = load_features(feature_dir(str(originals), "Colorhash 42 bits", root))
    queries = load_features(feature_dir(str(attacks), "Colorhash 42 bits", root))
    bits = lambda store: np.unpackbits(np.asarray(store.features), axis=1)[:, :42].astype(int)  # noqa: E731
    distance = (bits(queries)[:, None, :] != bits(db)[None, :, :]).sum(axis=2)
    truth = read_ground_truth(attacks / "ground_truth.csv")
    db_keys = D.resolve_dataset(str(originals)).relative_names(db.names)
    q_keys = D.resolve_dataset(str(attacks)).relative_names(queries.names)
    hits = []
    for q, key in enumerate(q_keys):
        own = distance[q, db_keys.index(truth.references[key])]
        hits.append(int(np.sum(distance[q] <= own)) == 1)  # pessimistic: strictly nearest
    assert point["recall@1"] == pytest.approx(np.mean(hits))


def test_an_experiment_has_one_writer(tmp_path):
    from helpers.experiment import ExperimentExistsError, start_experiment

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from helpers.locking import FolderLock; FolderLock(sys.argv[2]).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(REPO_ROOT), str(tmp_path / "exp")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExperimentExistsError, match=f"being written by pid {holder.pid}"):
            start_experiment(tmp_path / "exp", {"a": 1})
    finally:
        holder.kill()
        holder.wait()
    record = start_experiment(tmp_path / "exp", {"a": 1})  # the holder's death released it
    record.finish()
    with pytest.raises(ExperimentExistsError, match="finished experiment"):
        start_experiment(tmp_path / "exp", {"a": 1})
    start_experiment(tmp_path / "exp", {"a": 2}, force=True).finish()


def test_clustering_labels_come_from_files_and_paths(tmp_path):
    """Same file name in two sub-folders: two images with their own labels (folder-per-class), written as
    labels.csv; an explicit labels.csv wins over any naming."""
    from clustering.data import load_clustering_data
    from helpers.ground_truth import read_labels, write_labels

    root = tmp_path / "Features"
    folder = tmp_path / "classes"
    _photos(folder / "cats", ["x.png", "y.png"], [1, 2])
    _photos(folder / "dogs", ["x.png", "z.png"], [3, 4])
    extract_features(DHASH, [str(folder)], out=root, progress=False, workers=0)
    data = load_clustering_data(str(folder), DHASH, features_root=root)
    assert len(data) == 4 and len(set(data.names)) == 4
    assert sorted(zip([n.split("classes/")[1] for n in data.names], data.identities)) == [
        ("cats/x.png", "cats"), ("cats/y.png", "cats"), ("dogs/x.png", "dogs"), ("dogs/z.png", "dogs")]
    assert read_labels(folder / "labels.csv")["dogs/x.png"] == "dogs"
    write_labels(folder / "labels.csv", {"cats/x.png": "A", "cats/y.png": "B", "dogs/x.png": "A", "dogs/z.png": "B"})
    data = load_clustering_data(str(folder), DHASH, features_root=root)
    assert sorted(data.identities.tolist()) == ["A", "A", "B", "B"]
    write_labels(folder / "labels.csv", {"cats/x.png": "A"})
    with pytest.raises(GroundTruthError, match="3 images"):
        load_clustering_data(str(folder), DHASH, features_root=root)


def test_identity_survives_symbolic_links(tmp_path):
    """Photos linked into the dataset folder one by one, or a linked folder (as Datasets/README.md suggests)."""
    elsewhere = _photos(tmp_path / "shared" / "test", ["100007.jpg", "100039.jpg"], [1, 2])
    linked_files = tmp_path / "Datasets" / "Original"
    linked_files.mkdir(parents=True)
    for photo in elsewhere.iterdir():
        (linked_files / photo.name).symlink_to(photo)
    linked_folder = tmp_path / "Datasets" / "Linked"
    linked_folder.symlink_to(elsewhere, target_is_directory=True)
    root = tmp_path / "Features"
    for folder in (linked_files, linked_folder):
        extract_features(DHASH, [str(folder)], out=root, progress=False, workers=0)
        store = load_features(feature_dir(str(folder), DHASH, root))
        assert D.resolve_dataset(str(folder)).relative_names(store.names) == ["100007.jpg", "100039.jpg"]


def test_csv_and_file_name_adapters_write_ground_truth(tmp_path):
    """A folder of originals + a folder of copies + any CSV; and a folder of an older version named <id>_<attack>."""
    from data_retrieval.adapters import main as adapters_main

    originals = _photos(tmp_path / "originals", ["a.jpg", "b.jpg"], [1, 2])
    copies = _photos(tmp_path / "copies", ["copy of a.jpg", "b_small.jpg", "unrelated.jpg"], [1, 2, 9])
    source = tmp_path / "pairs.csv"
    source.write_text("copy,original,edit\ncopy of a.jpg,a.jpg,jpeg\nb_small.jpg,b.jpg,scale\nunrelated.jpg,,\n")
    assert adapters_main(["csv", str(source), str(copies), "--query-column", "copy", "--reference-column",
                          "original", "--attack-column", "edit"]) == 0
    assert read_ground_truth(copies / "ground_truth.csv").rows() == [
        ("copy of a.jpg", "a.jpg", "jpeg"), ("b_small.jpg", "b.jpg", "scale"), ("unrelated.jpg", None, None)]
    source.write_text("copy,original\nmissing.jpg,a.jpg\n")
    with pytest.raises(SystemExit) as refused:  # a copy that is not in the folder: one error line, exit 2
        adapters_main(["csv", str(source), str(copies), "--query-column", "copy", "--reference-column", "original"])
    assert refused.value.code == 2
    (copies / "ground_truth.csv").unlink()
    assert adapters_main(["names", str(copies), str(originals)]) == 0
    truth = read_ground_truth(copies / "ground_truth.csv")
    assert truth.references == {"copy of a.jpg": None, "b_small.jpg": "b.jpg", "unrelated.jpg": None}
