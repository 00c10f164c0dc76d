"""SCAN (seed 002, steps 2-3): the loss by hand, neighbours by brute force, a short run on separable data, the
script end to end."""
import json
import math
import contextlib
import io
import subprocess

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clustering import scan
from fast_search.synthetic import write_store
from tests.conftest import REPO_ROOT, exit_code


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scan_loss_matches_a_hand_computed_case():
    anchors = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax: (1/4, 3/4), (1/2, 1/2)
    neighbours = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # (3/4, 1/4), (1/2, 1/2)
    consistency = -(math.log(0.25 * 0.75 + 0.75 * 0.25) + math.log(0.5)) / 2
    mean = (0.375, 0.625)
    entropy = -sum(p * math.log(p) for p in mean)
    total, c, h = scan.scan_loss(anchors, neighbours, entropy_weight=2.0)
    assert c.item() == pytest.approx(consistency, rel=1e-6)
    assert h.item() == pytest.approx(entropy, rel=1e-6)
    assert total.item() == pytest.approx(consistency - 2.0 * entropy, rel=1e-6)


def test_self_label_loss_by_hand():
    weak = torch.tensor([[10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, 0.1]])  # last one not confident
    strong = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    loss, count = scan.self_label_loss(weak, strong, confidence=0.99)
    assert count == 3
    ce = lambda logits, t: -torch.log_softmax(torch.tensor(logits), 0)[t].item()  # noqa: E731
    # class 0 has 2 samples (weight 1/2 each), class 1 one (weight 1), normalised to mean weight 1: 2/3 and 4/3
    w0, w1 = 2 / 3, 4 / 3
    expected = (w0 * ce([1.0, 0.0], 0) + w0 * ce([0.0, 0.0], 0) + w1 * ce([0.0, 2.0], 1)) / (2 * w0 + w1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mined_neighbors_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    np.testing.assert_array_equal(scan.mine_neighbors(x, 5), expected)
    with pytest.raises(ValueError):
        scan.mine_neighbors(x, 50)


def _blobs(n_per_class=40, classes=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


def test_short_scan_run_separates_synthetic_clusters():
    x, y = _blobs()
    neighbors = scan.mine_neighbors(x, 10)
    model, info = scan.train_scan(x, neighbors, 5, num_heads=3, epochs=30, batch_size=64, lr=1e-2, seed=0)
    predicted, _ = scan.predict(model, x)
    scores = scan.scores(y, predicted)
    assert scores["acc"] >= 0.95
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y, predicted), abs=1e-9)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y, predicted), abs=1e-9)
    assert info["head"] == int(np.argmin(info["losses"]))
    refined, _ = scan.train_selflabel(model, x, epochs=5, batch_size=64, lr=1e-3, confidence=0.9, seed=0)
    assert scan.scores(y, scan.predict(refined, x)[0])["acc"] >= 0.95


def test_heads_checkpoint_round_trip(tmp_path):
    model = scan.ClusteringHeads(6, 3, 1, hidden=4)
    path = scan.save_heads(tmp_path / "h.pt", model, step="scan")
    loaded, info = scan.load_heads(path)
    x = np.random.default_rng(0).normal(size=(9, 6)).astype(np.float32)
    np.testing.assert_array_equal(scan.predict(model, x)[0], scan.predict(loaded, x)[0])
    assert info["step"] == "scan"


def _run(*args):
    """The script's ``main`` in this process (a subprocess re-imports torch, seconds on a shared machine); the
    script files themselves run in tests/test_scripts_help.py."""
    from clustering.scan_pipeline import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = exit_code(main, [str(a) for a in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def test_scan_script_end_to_end(tmp_path):
    x, y = _blobs(n_per_class=24, classes=4)
    names = [f"c{label}_{i}.png" for i, label in enumerate(y)]
    store = write_store(tmp_path / "F", "blobs", "Toy", x, names)
    from helpers.ground_truth import write_labels

    labels = write_labels(tmp_path / "labels.csv", {name: f"class{label}" for name, label in zip(names, y)})
    out = tmp_path / "scan"
    args = ["--features", str(store), "--labels", str(labels), "--runs", "2", "--epochs", "20", "--num-neighbors", "5", "--num-heads", "2",
            "--batch-size", "32", "--lr", "0.01", "--selflabel-epochs", "3", "--confidence", "0.9", "-s", str(out),
            "--device", "cpu"]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["n_test"] == 24 and results["num_clusters"] == 4
    assert not set(json.loads((out / "split.json").read_text())["test"]) & set(
        json.loads((out / "split.json").read_text())["train"])
    for method in ("kmeans", "scan", "selflabel"):
        assert len(results["summary"][method]["acc"]["values"]) == 2
    assert results["summary"]["scan"]["acc"]["mean"] >= 0.9
    assert (out / "run_1" / "selflabel.pt").is_file()
    assert yaml.safe_load((out / "experiment.yml").read_text())["status"] == "finished"
    refused = _run(*args)
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    bad = _run("--features", str(store), "--labels", "nope.csv", "-s", str(tmp_path / "b"))
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _run("--features", str(store), "-s", str(tmp_path / "c"))  # labels.csv: a store made by code has none
    assert unknown.returncode == 2 and "dataset folders" in unknown.stderr


def test_shipped_configs_parse():
    from adaptation.train import build_parser as adaptation_parser
    from clustering.scan_pipeline import build_parser as scan_parser
    from helpers.cli import parse_args

    args = parse_args(scan_parser(), ["--config", str(REPO_ROOT / "configs/scan/scan_memes.yml"), "--features", "x"])
    assert args.entropy_weight == 5.0 and args.num_neighbors == 20
    assert args.labels in ("files", "folder")  # a value scan.py accepts (not the old file-stem convention)
    args = parse_args(adaptation_parser(), ["--config", str(REPO_ROOT / "configs/adaptation/adaptation_tll.yml"),
                                            "--features", "x", "--pairs", "p.csv"])
    assert args.topk == [1, 3, 5] and args.temperature == pytest.approx(1 / 15, rel=1e-5)


@pytest.fixture(scope="module")
def meme_stores(tmp_path_factory):
    """4 templates x 12 memes (images on disk, so the clustering scripts find the templates), two stores of the
    same rows: 'Toy Net' and 'Other Net' (another model)."""
    from conftest import synthetic_photo
    from helpers.feature_store import feature_dir, save_features
    from helpers.ground_truth import write_labels

    root = tmp_path_factory.mktemp("scan_memes")
    images = root / "images" / "Memes"
    images.mkdir(parents=True)
    x, y = _blobs(n_per_class=12, classes=4, seed=3)
    names = []
    for i, label in enumerate(y):
        path = images / f"tmpl{label}_{i}.png"
        synthetic_photo(16, 12, seed=i).save(path)
        names.append(str(path))
    stores = {}
    for name in ("Toy Net", "Other Net"):
        stores[name] = save_features(feature_dir("memes", name, root / "Features"), x, names, {"name": name})
    labels = write_labels(root / "labels.csv", {n: f"tmpl{label}" for n, label in zip(names, y)})
    return root, stores, labels, x, y


def test_scan_checkpoints_in_the_clustering_layout_and_refused_for_another_model(meme_stores, tmp_path):
    root, stores, labels, x, y = meme_stores
    out = tmp_path / "exp"
    train = ["--features", stores["Toy Net"], "--labels", labels, "--runs", "2", "--epochs", "30",
             "--num-neighbors", "5", "--num-heads", "2", "--batch-size", "32", "--selflabel-epochs", "2",
             "--confidence", "0.9", "-s", out, "--device", "cpu"]
    assert _run(*train).returncode == 0
    _, _, record = scan.load_heads(out / "run_0" / "scan.pt", with_features=True)
    from helpers.feature_store import load_features, model_identity

    assert record["identity"] == model_identity(load_features(stores["Toy Net"]).meta)[0]
    assert record["store_fingerprint"] is None and record["store_name"] == "Toy Net"  # a store made by code
    checkpoints = [out / "run_0" / "scan.pt", out / "run_1" / "selflabel.pt"]
    results_dir = tmp_path / "results"
    predict = ["predict", "--checkpoint", *checkpoints, "--dataset", "memes", "--features-root", root / "Features",
               "--results-dir", results_dir]
    result = _run(*predict, "--algo", "Toy", "Net")
    assert result.returncode == 0, result.stderr
    exp = results_dir / "memes_full" / "cosine_scan_toy_net"
    results = json.loads((exp / "results.json").read_text())
    assert len(results["runs"]) == 2 and yaml.safe_load((exp / "experiment.yml").read_text())["status"] == "finished"
    for path, run in zip(checkpoints, results["runs"]):
        model, _ = scan.load_heads(path)
        expected = scan.predict_proba(model, x).argmax(axis=1)
        np.testing.assert_array_equal(expected, scan.predict(model, x)[0])
        assignment = np.load(exp / run["run"] / "assignment.npy", allow_pickle=False)
        np.testing.assert_array_equal(assignment, expected)  # the store's order (names.txt) is the blobs' order
        assert run["run"] == f"{np.unique(expected).size}-clusters_scan-exp_{path.parent.name}_{path.stem}"
        assert run["ari"] == pytest.approx(adjusted_rand_score(y, expected), abs=1e-9)
        assert run["nmi"] == pytest.approx(normalized_mutual_info_score(y, expected), abs=1e-9)
        contingency = np.zeros((4, model.num_clusters))
        np.add.at(contingency, (y, expected), 1)
        rows, cols = linear_sum_assignment(-contingency)
        assert run["accuracy"] == pytest.approx(contingency[rows, cols].sum() / len(y), abs=1e-9)
    assert results["summary"]["accuracy"]["values"] == [r["accuracy"] for r in results["runs"]]
    again = _run(*predict, "--algo", "Toy", "Net")
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    other = _run(*predict, "--algo", "Other", "Net")
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: SCAN checkpoint")
    assert "'Toy Net'" in lines[0] and "'Other Net'" in lines[0]
    assert _run("predict", "--checkpoint", tmp_path / "missing.pt", "--dataset", "memes").returncode == 2


def test_scan_step_of_the_extractor_writes_probabilities_and_refuses_another_model(meme_stores, tmp_path):
    """extract_features.py --scan: the post-processing step (the same code path as --adapt)."""
    from extractor.extract import _postprocess, scan_name
    from helpers.feature_store import load_features

    root, stores, labels, x, y = meme_stores
    model = scan.ClusteringHeads(x.shape[1], 4, 1)
    record = scan.features_record(load_features(stores["Toy Net"]).meta)
    checkpoint = scan.save_heads(tmp_path / "exp" / "run_0" / "selflabel.pt", model, record, step="selflabel")
    assert scan_name(checkpoint) == "exp run_0 selflabel"
    folder = _postprocess("Toy Net", "memes", stores["Toy Net"], "SCAN exp run_0 selflabel", {}, None, False, None,
                          False, tmp_path / "F", False, scan=checkpoint)
    probabilities = load_features(folder)
    assert probabilities.features.shape == (len(x), 4) and probabilities.name == "Toy Net SCAN exp run_0 selflabel"
    np.testing.assert_allclose(probabilities.features.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(probabilities.features).argmax(axis=1), scan.predict(model, x)[0])
    assert probabilities.meta["postprocessing"][-1]["step"] == "scan"
    with pytest.raises(ValueError, match="trained on 'Toy Net'.*'Other Net'"):
        _postprocess("Other Net", "memes", stores["Other Net"], "SCAN exp run_0 selflabel", {}, None, False, None,
                     False, tmp_path / "F", False, scan=checkpoint)
    with pytest.raises(ValueError, match="does not record which features"):  # an older checkpoint
        scan.check_features("old.pt", None, {"name": "Toy Net"})


def test_model_identity_ignores_the_images_not_the_model():
    from helpers.feature_store import model_identity

    base = {"name": "M", "dim": 8, "fingerprint_fields": {"name": "M", "weights": "w1", "weights_sha256": "a",
                                                          "preprocessing": {"resize": 224}, "dim": 8,
                                                          "images": "d1", "n_images": 3, "decode": "cpu"}}
    other_images = dict(base, fingerprint_fields=dict(base["fingerprint_fields"], images="d2", n_images=9,
                                                      decode="gpu"))
    other_weights = dict(base, fingerprint_fields=dict(base["fingerprint_fields"], weights_sha256="b"))
    pca = dict(base, name="M PCA4 on D", dim=4)
    assert model_identity(base)[0] == model_identity(other_images)[0]
    assert model_identity(base)[0] != model_identity(other_weights)[0]
    assert model_identity(base)[0] != model_identity(pca)[0]
    assert "images" not in model_identity(base)[1]


def test_validation_split_is_carved_from_the_training_split(tmp_path):
    x, y = _blobs(n_per_class=16, classes=4)
    names = [f"c{label}_{i}.png" for i, label in enumerate(y)]
    store = write_store(tmp_path / "F", "blobs", "Toy", x, names)
    from helpers.ground_truth import write_labels

    labels = write_labels(tmp_path / "labels.csv", {name: f"class{label}" for name, label in zip(names, y)})
    common = ["--features", store, "--labels", labels, "--runs", "1", "--epochs", "10", "--num-neighbors", "3",
              "--num-heads", "1", "--selflabel-epochs", "0", "--device", "cpu"]
    assert _run(*common, "-s", tmp_path / "test").returncode == 0
    assert _run(*common, "--val-split", "0.25", "-s", tmp_path / "val").returncode == 0
    test_split = json.loads((tmp_path / "test" / "split.json").read_text())
    val_split = json.loads((tmp_path / "val" / "split.json").read_text())
    assert set(val_split) == {"train", "validation"}
    # validation + its training rows are exactly the test run's training rows: the test split is untouched
    assert set(val_split["train"]) | set(val_split["validation"]) == set(test_split["train"])
    assert not set(val_split["validation"]) & set(val_split["train"])
    assert not set(val_split["validation"]) & set(test_split["test"])
    assert len(val_split["validation"]) == 4 * 3  # 25 % of each class's 12 training images
    results = json.loads((tmp_path / "val" / "results.json").read_text())
    assert results["evaluated_on"] == "validation" and results["n_test"] is None and results["n_val"] == 12
    assert (tmp_path / "val" / "run_0" / "assignment_validation_scan.npy").is_file()
    bad = _run(*common, "--val-split", "1.5", "-s", tmp_path / "bad")
    assert bad.returncode == 2 and "--val-split" in bad.stderr
