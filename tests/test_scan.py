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
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clustering import scan
from fast_search.synthetic import write_store
from tests.conftest import REPO_ROOT, exit_code


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: one thread is faster than two fighting over a loaded 2-core machine (OpenMP spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    args = parse_args(adaptation_parser(), ["--config", str(REPO_ROOT / "configs/adaptation/adaptation_tll.yml"),
                                            "--features", "x", "--pairs", "p.csv"])
    assert args.topk == [1, 3, 5] and args.temperature == pytest.approx(1 / 15, rel=1e-5)
