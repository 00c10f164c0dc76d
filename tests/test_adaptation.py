"""The adaptation function (seed 001): loss, metric, pairs, checkpoints, the script end to end and --adapt."""
import csv
import math
import contextlib
import io
import subprocess

import numpy as np
import pytest
import torch
import yaml

from adaptation.losses import symmetric_info_nce
from adaptation.metrics import pair_topk_accuracy, partner_ranks
from adaptation.models import AdaptationModule, adapt_features, load_adaptation, save_adaptation
from adaptation.pairs import PairsError, match_pairs, pair_groups, read_pairs, split_pairs
from fast_search.synthetic import write_store
from helpers.feature_store import load_features
from tests.conftest import REPO_ROOT, exit_code


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_info_nce_matches_a_hand_computed_case():
    # two pairs in 2-D, unit vectors: left = (1,0), (0,1); right = (1,0), (0.6,0.8); temperature 0.5
    left = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside: (1,0), (0,1)
    right = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cosines: S = [[1, 0.6], [0, 0.8]]; logits = S / 0.5 = [[2, 1.2], [0, 1.6]]
    row0 = -(2 - math.log(math.exp(2) + math.exp(1.2)))
    row1 = -(1.6 - math.log(math.exp(0) + math.exp(1.6)))
    col0 = -(2 - math.log(math.exp(2) + math.exp(0)))
    col1 = -(1.6 - math.log(math.exp(1.2) + math.exp(1.6)))
    expected = 0.5 * (row0 + row1) / 2 + 0.5 * (col0 + col1) / 2
    loss = symmetric_info_nce(left, right, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_symmetric_and_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert symmetric_info_nce(a, b, 0.1).item() == pytest.approx(symmetric_info_nce(b, a, 0.1).item(), rel=1e-6)
    with pytest.raises(ValueError):
        symmetric_info_nce(a, b, 0.0)
    with pytest.raises(ValueError):
        symmetric_info_nce(a, b[:4], 0.1)


def test_topk_accuracy_against_numpy_argsort():
    rng = np.random.default_rng(3)
    left = rng.normal(size=(40, 8))
    right = left + rng.normal(scale=1.2, size=(40, 8))
    ln = left / np.linalg.norm(left, axis=1, keepdims=True)
    rn = right / np.linalg.norm(right, axis=1, keepdims=True)
    sims = ln @ rn.T
    # independent reference: position of the partner in each row's / column's descending argsort
    rank_lr = np.array([list(np.argsort(-sims[i])).index(i) for i in range(40)])
    rank_rl = np.array([list(np.argsort(-sims[:, j])).index(j) for j in range(40)])
    lr, rl = partner_ranks(left, right)
    np.testing.assert_array_equal(lr, rank_lr)
    np.testing.assert_array_equal(rl, rank_rl)
    acc = pair_topk_accuracy(left, right, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert acc[k] == pytest.approx(0.5 * ((rank_lr < k).mean() + (rank_rl < k).mean()))
    assert 0 < acc[1] < acc[5] < 1  # the case is neither trivial nor hopeless


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_pairs_read_match_and_split_without_shared_images(tmp_path):
    names = [f"Datasets/x/img{i}.png" for i in range(10)]
    pairs_csv = _write_csv(tmp_path / "gt.csv", ["query", "reference", "attack"],
                           [[names[0], names[1], "a"], [names[2], "", "neg"], [names[1], names[3], "b"],
                            ["img4.png", "img5.png", "c"], [names[6], names[7], ""], [names[8], names[9], ""]])
    pairs = read_pairs(pairs_csv)
    assert len(pairs) == 5  # the negative query is skipped
    rows = match_pairs(pairs, names, roots=[REPO_ROOT / "Datasets" / "x"])
    np.testing.assert_array_equal(rows, [[0, 1], [1, 3], [4, 5], [6, 7], [8, 9]])
    groups = pair_groups(rows)
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 4
    for seed in range(5):
        train, test = split_pairs(rows, 0.4, seed=seed)
        assert sorted(train.tolist() + test.tolist()) == list(range(5))
        assert not set(rows[train].ravel()) & set(rows[test].ravel())
    with pytest.raises(PairsError, match="not in the features"):
        match_pairs([("nope.png", names[0])], names)
    bad = _write_csv(tmp_path / "bad.csv", ["a", "b"], [["x", "y"]])
    with pytest.raises(PairsError, match="header"):
        read_pairs(bad)


def test_checkpoint_round_trip_and_adapt_features(tmp_path):
    torch.manual_seed(0)
    module = AdaptationModule(6, "mlp", 5)
    path = save_adaptation(tmp_path / "a.pt", module, source_name="X")
    loaded, info = load_adaptation(path)
    assert info["source_name"] == "X" and loaded.kind == "mlp"
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    out = adapt_features(loaded, x, batch_size=3)
    expected = torch.nn.functional.normalize(module(torch.from_numpy(x)), dim=1).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="6-d"):
        adapt_features(loaded, x[:, :5])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_adaptation(tmp_path / "junk.pt")


def _pair_data(root, n=160, d=16, seed=0):
    """Pairs that raw cosine confuses but a linear map separates: the identity lives in 4 of 16 dimensions,
    the other 12 hold large nuisance noise that differs between the two images of a pair."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(n, 4))
    left = np.concatenate([identity + 0.05 * rng.normal(size=(n, 4)), 3 * rng.normal(size=(n, d - 4))], axis=1)
    right = np.concatenate([identity + 0.05 * rng.normal(size=(n, 4)), 3 * rng.normal(size=(n, d - 4))], axis=1)
    names = [f"L{i}.png" for i in range(n)] + [f"R{i}.png" for i in range(n)]
    store = write_store(root, "pairs", "Toy", np.concatenate([left, right]).astype(np.float32), names)
    pairs = _write_csv(root / "pairs.csv", ["left", "right"], [[f"L{i}.png", f"R{i}.png"] for i in range(n)])
    return store, pairs


def _run(*args):
    """The script's ``main`` in this process (a subprocess re-imports torch, seconds on a shared machine); the
    script files themselves run in tests/test_scripts_help.py."""
    from adaptation.train import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = exit_code(main, [str(a) for a in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def test_train_adaptation_end_to_end_and_adapt_store(tmp_path):
    store, pairs = _pair_data(tmp_path)
    out = tmp_path / "exp"
    args = ["--features", str(store), "--pairs", str(pairs), "--model", "linear", "--out-dim", "8", "-e", "150",
            "-r", "2", "--lr", "0.01", "-t", "0.1", "--pca-dim", "4", "-s", str(out), "--device", "cpu"]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    record = yaml.safe_load((out / "experiment.yml").read_text())
    assert record["status"] == "finished"
    assert yaml.safe_load((out / "config.yml").read_text())["model"] == "linear"
    results = __import__("json").loads((out / "results.json").read_text())
    summary = results["summary"]
    # the learnt map finds the identity dimensions; raw cosine and the variance-driven PCA do not
    assert summary["adapted"]["top1"]["mean"] > 0.8
    assert summary["adapted"]["top1"]["mean"] > summary["before"]["top1"]["mean"] + 0.3
    assert summary["adapted"]["top1"]["mean"] > summary["pca"]["top1"]["mean"] + 0.3
    for run in results["runs"]:
        assert (out / f"run_{run['run']}" / "adaptation.pt").is_file()
        assert list((out / f"run_{run['run']}").glob("events.out.tfevents.*"))
    refused = _run(*args)
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr

    # --adapt: the module as a post-processing step of extract_features
    from extractor.extract import _postprocess

    checkpoint = out / "run_0" / "adaptation.pt"
    folder = _postprocess("Toy", "pairs", store, "adapted run_0", {}, None, False, None, False, tmp_path, False,
                          adapt=checkpoint)
    adapted = load_features(folder)
    module, _ = load_adaptation(checkpoint)
    np.testing.assert_allclose(adapted.features, adapt_features(module, load_features(store).features),
                               rtol=1e-5, atol=1e-6)
    assert adapted.names == load_features(store).names
    assert adapted.meta["postprocessing"][-1]["step"] == "adapt"


def test_train_adaptation_bad_pairs_is_one_error_line(tmp_path):
    store, _ = _pair_data(tmp_path, n=10)
    bad = _write_csv(tmp_path / "bad.csv", ["left", "right"], [["L0.png", "missing.png"]])
    result = _run("--features", str(store), "--pairs", str(bad), "-s", str(tmp_path / "e"), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_adapt_refuses_features_of_another_width(tmp_path):
    from extractor.extract import _check_adaptation_input, adaptation_name

    store, _ = _pair_data(tmp_path, n=4)
    checkpoint = save_adaptation(tmp_path / "exp" / "run_0" / "adaptation.pt", AdaptationModule(8, "linear", 4),
                                 source_name="Toy PCA8 on x")
    assert adaptation_name(checkpoint) == "exp run_0"
    with pytest.raises(ValueError, match="takes 8-d features"):
        _check_adaptation_input(checkpoint, load_features(store), None, "Toy adapted exp run_0")
    _check_adaptation_input(checkpoint, load_features(store), 8, "Toy PCA8 on x adapted exp run_0")  # fits


def test_module_with_input_pca_round_trip(tmp_path):
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    module = AdaptationModule(6, "original", 5, pca_dim=3)
    mean, components = rng.normal(size=6), np.linalg.qr(rng.normal(size=(6, 3)))[0].T
    module.set_pca(mean, components)
    loaded, _ = load_adaptation(save_adaptation(tmp_path / "p.pt", module))
    x = rng.normal(size=(4, 6)).astype(np.float32)
    reduced = torch.from_numpy(((x - mean) @ components.T).astype(np.float32))
    expected = torch.nn.functional.normalize(torch.relu(module.net(reduced)), dim=1).detach().numpy()
    np.testing.assert_allclose(adapt_features(loaded, x), expected, rtol=1e-5, atol=1e-6)
