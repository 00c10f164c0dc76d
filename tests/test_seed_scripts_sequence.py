"""The seed 001/002 scripts one after the other on a tiny generated meme dataset, as docs/adaptation.md and
docs/scan_nn_maker.md tell a user to run them: extract_features.py -> train_adaptation.py -> --adapt ->
nn_maker.py -> scan.py (SCAN + self-labelling) -> scan.py predict -> --scan. Each script writes its config and
record and refuses to overwrite a finished run without --force. (Random ResNet18 weights: the numbers are not the
point here; docs/*.md hold the measured ones.)"""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_photo

from helpers.feature_store import feature_dir, load_features

ALGO = "ResNet18 1x"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _call(main, *args):
    """A script's ``main`` in this process: ``(exit code, stdout, stderr)``; argparse's exits become codes."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return code or 0, stdout.getvalue(), stderr.getvalue()


def _finished(folder):
    assert (folder / "config.yml").is_file()
    assert yaml.safe_load((folder / "experiment.yml").read_text())["status"] == "finished"


def _refused(main, *args):
    code, _, err = _call(main, *args)
    assert code == 2 and "--force" in err and "Traceback" not in err, err


def test_seed_scripts_run_in_sequence(tmp_path):
    from adaptation.train import main as train_adaptation
    from clustering.scan_pipeline import main as scan_main
    from data_retrieval.memes import build_memes
    from data_retrieval.nn_maker import main as nn_maker
    from extract_features import main as extract

    for main in (train_adaptation, nn_maker, scan_main, extract):
        code, out, _ = _call(main, "-h")
        assert code == 0 and "usage:" in out
    code, out, _ = _call(scan_main, "predict", "-h")
    assert code == 0 and "usage: scan.py predict" in out and "--checkpoint" in out

    photos = tmp_path / "photos"
    photos.mkdir()
    for t in range(4):
        synthetic_photo(64, 48, seed=t).save(photos / f"photo{t}.png")
    build_memes(photos, tmp_path / "demo", per_template=3, seed=0, workers=1, progress=False)
    memes, templates = tmp_path / "demo" / "Memes", tmp_path / "demo" / "Templates"
    features = tmp_path / "Features"
    run = ["--weights", "random", "--device", "cpu", "--workers", "0", "--batch-size", "8", "--no-progress",
           "--out", features]
    assert _call(extract, "--algo", ALGO, "--dataset", memes, templates, *run)[0] == 0
    meme_store, template_store = feature_dir(str(memes), ALGO, features), feature_dir(str(templates), ALGO, features)

    # seed 001: the adaptation function on meme -> template pairs (the builder's ground_truth.csv)
    adaptation = tmp_path / "adaptation"
    args = ["--features", meme_store, template_store, "--pairs", memes / "ground_truth.csv", "--epochs", "3",
            "--runs", "1", "--input-pca", "--pca-dim", "4", "--out-dim", "8", "-s", adaptation, "--device", "cpu"]
    assert _call(train_adaptation, *args)[0] == 0
    _finished(adaptation)
    _refused(train_adaptation, *args)
    code, out, err = _call(extract, "--algo", ALGO, "--dataset", memes, "--adapt",
                           adaptation / "run_0" / "adaptation.pt", *run)
    assert code == 0, err
    assert load_features(out.split()[-1]).features.shape == (12, 8)

    # seed 002 step 1-2: nn_maker, templates as targets, memes as the pool
    selection = tmp_path / "nn_maker"
    args = ["--target", template_store, "--near", meme_store, "--save-dir", selection, "--nn-factor", "2",
            "--dist-thr", "1.0", "--device", "cpu"]
    assert _call(nn_maker, *args)[0] == 0
    _finished(selection)
    assert (selection / "selected.csv").is_file() and (selection / "closeness.json").is_file()
    _refused(nn_maker, *args)

    # seed 002 steps 2-3: SCAN + self-labelling, then the checkpoint in the clustering layout and the extractor
    clustering = tmp_path / "scan"
    args = ["--features", meme_store, template_store, "--labels", "files", "--runs", "1", "--epochs", "5",
            "--num-neighbors", "2", "--num-heads", "2", "--selflabel-epochs", "2", "--confidence", "0.5",
            "-s", clustering, "--device", "cpu"]
    code, _, err = _call(scan_main, *args)
    assert code == 0, err
    _finished(clustering)
    checkpoint = clustering / "run_0" / "selflabel.pt"
    assert checkpoint.is_file() and (clustering / "run_0" / "scan.pt").is_file()
    _refused(scan_main, *args)
    results = tmp_path / "Clustering_results"
    args = ["predict", "--checkpoint", checkpoint, "--algo", ALGO, "--dataset", memes, "--features-root", features,
            "--results-dir", results]
    code, _, err = _call(scan_main, *args)
    assert code == 0, err
    (experiment,) = results.glob("*/cosine_scan_resnet18_1x")
    _finished(experiment)
    (run_folder,) = experiment.glob("*-clusters_scan-scan_run_0_selflabel")
    assignment = np.load(run_folder / "assignment.npy", allow_pickle=False)
    assert {"accuracy", "nmi", "ari"} <= set(json.loads((run_folder / "scores.json").read_text()))
    _refused(scan_main, *args)
    code, out, err = _call(extract, "--algo", ALGO, "--dataset", memes, "--scan", checkpoint, *run)
    assert code == 0, err
    probabilities = load_features(out.split()[-1])
    np.testing.assert_array_equal(np.asarray(probabilities.features).argmax(axis=1), assignment)
    # the hash features are another model: refused in one line
    assert _call(extract, "--algo", "Dhash 64 bits", "--dataset", memes, *run)[0] == 0
    code, _, err = _call(scan_main, "predict", "--checkpoint", checkpoint, "--algo", "Dhash", "64", "bits",
                         "--dataset", memes, "--features-root", features, "--results-dir", results)
    assert code == 2 and err.startswith("error: SCAN checkpoint") and len(err.strip().splitlines()) == 1
