"""hierarchical.py, DBSCAN.py and kmeans.py end to end on small generated feature stores: result layout, records,
resume, overwrite refusal, error messages and the --save outputs."""
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, synthetic_photo

from clustering import density, hierarchical, kmeans
from clustering.pipeline import CLI_ERRORS
from helpers.cli import CliError, run_cli
from helpers.feature_store import feature_dir, save_features

TEMPLATES = ["cat", "dog", "who-would-win", "harold", "boat", "tree"]
PER_TEMPLATE = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A feature store with a float model and a 64-bit hash on 6 templates x 6 memes (+ the template images)."""
    root = tmp_path_factory.mktemp("clustering")
    images = root / "images"
    (images / "Memes").mkdir(parents=True)
    (images / "Templates").mkdir()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(len(TEMPLATES), 24)) * 4
    protos = rng.integers(0, 2, size=(len(TEMPLATES), 64))
    names, floats, bits = [], [], []
    for t, template in enumerate(TEMPLATES):
        photo = synthetic_photo(64, 48, seed=t)
        for i in range(PER_TEMPLATE + 1):
            path = images / ("Templates" if i == PER_TEMPLATE else "Memes") / \
                (f"{template}.png" if i == PER_TEMPLATE else f"{template}_{i}.png")
            photo.save(path)
            names.append(str(path))
            floats.append(centers[t] + rng.normal(size=24) * 0.4)
            b = protos[t].copy()
            b[rng.choice(64, 3, replace=False)] ^= 1
            bits.append(b)
    features = root / "Features"
    save_features(feature_dir("memes", "Toy Net", features), np.array(floats, np.float32), names,
                  {"name": "Toy Net"})
    save_features(feature_dir("memes", "Dhash 64 bits", features), np.packbits(np.array(bits, np.uint8), axis=1),
                  names, {"name": "Dhash 64 bits", "binary": True, "dim": 64})
    return root


def _argv(store, tmp_path, *extra, algo=("Toy", "Net")):
    return ["--algo", *algo, "--dataset", "memes", "--features-root", str(store / "Features"),
            "--results-dir", str(tmp_path / "results"), *extra]


def _run(module, argv):
    return run_cli(module.build_parser(), module.run, argv, errors=CLI_ERRORS)


def _fails(module, argv, pattern):
    """The script must stop with one ``error:`` line matching ``pattern`` (exit code 2)."""
    with pytest.raises(CliError) as info:
        _run(module, argv)
    assert info.value.code == 2
    assert info.value.message.startswith("error: ") and "\n" not in info.value.message
    assert re.search(pattern, info.value.message), info.value.message


def test_hierarchical_layout_record_and_refusal(store, tmp_path):
    n_classes = len(TEMPLATES)
    results = _run(hierarchical, _argv(store, tmp_path, "--linkage", "average", "--clusters", "12", str(n_classes),
                                       "3"))
    exp = tmp_path / "results" / "memes_full" / "euclidean_average_toy_net"
    runs = sorted(p.name for p in exp.iterdir() if p.is_dir() and "-clusters_thresh-" in p.name)
    assert [r.split("-clusters")[0] for r in runs] == ["12", "3", "6"]
    six = next(exp.glob("6-clusters_thresh-*"))
    labels = np.load(six / "assignment.npy", allow_pickle=False)
    assert labels.dtype == np.int64 and labels.shape == (n_classes * (PER_TEMPLATE + 1),)
    scores = yaml.safe_load((six / "scores.json").read_text())
    assert scores["v_measure"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    assert scores["n_clusters"] == 6 and scores["threshold"] > 0
    record = yaml.safe_load((exp / "experiment.yml").read_text())
    assert record["status"] == "finished" and record["config"]["linkage"] == "average"
    assert (exp / "config.yml").is_file() and (exp / "linkage.npy").is_file() and (exp / "dendrogram.png").is_file()
    assert len(results["runs"]) == 3
    assert list((tmp_path / "results" / ".cache").rglob("euclidean.npy"))  # distances cached (float32 .npy)
    _fails(hierarchical, _argv(store, tmp_path, "--linkage", "average", "--clusters", "6"),
           "already holds a finished experiment.*--force")
    _run(hierarchical, _argv(store, tmp_path, "--linkage", "average", "--clusters", "6", "--force"))
    assert [p.name for p in exp.iterdir() if p.is_dir() and "clusters" in p.name] == [six.name]
    # The written config.yml re-runs the experiment.
    config = exp / "config.yml"
    copy = tmp_path / "rerun.yml"
    copy.write_text(config.read_text())
    again = _run(hierarchical, ["--config", str(copy), "--force"])
    assert again["runs"][0]["run"] == six.name and again["runs"][0]["v_measure"] == pytest.approx(1.0)


def test_hierarchical_resume_redoes_only_unfinished_runs(store, tmp_path):
    argv = _argv(store, tmp_path, "--linkage", "ward", "--clusters", "6", "12")
    _run(hierarchical, argv)
    exp = tmp_path / "results" / "memes_full" / "euclidean_ward_toy_net"
    six, twelve = next(exp.glob("6-clusters_*")), next(exp.glob("12-clusters_*"))
    (twelve / "scores.json").unlink()  # an interrupted run
    kept = (six / "assignment.npy").stat().st_mtime_ns
    record = yaml.safe_load((exp / "experiment.yml").read_text())
    record["status"] = "running"
    (exp / "experiment.yml").write_text(yaml.safe_dump(record))
    _run(hierarchical, argv)
    assert (twelve / "scores.json").is_file()
    assert (six / "assignment.npy").stat().st_mtime_ns == kept


def test_unreachable_count_is_reported_not_fatal(store, tmp_path):
    results = _run(hierarchical, _argv(store, tmp_path, "--linkage", "single", "--clusters", "6", "500"))
    assert [r["n_clusters"] for r in results["runs"]] == [6]
    assert "cannot make 500 clusters" in results["failures"][0]["error"]


def test_errors_are_one_line(store, tmp_path):
    _fails(hierarchical, _argv(store, tmp_path, "--linkage", "ward", "--metric", "cosine"),
           "ward linkage is only defined for the euclidean metric, not cosine")
    # Binary features force hamming, so ward is refused for them too.
    _fails(hierarchical, _argv(store, tmp_path, "--linkage", "ward", algo=("Dhash", "64", "bits")),
           "ward linkage .* not hamming .*binary hash")
    _fails(hierarchical, _argv(store, tmp_path, algo=("Nope",)), "extract_features.py")
    _fails(density, _argv(store, tmp_path, "--precisions", "wide"), "--precisions takes float values or .auto.")
    assert not (tmp_path / "results" / "memes_full").exists()  # nothing written by failed runs


def test_binary_hash_dbscan_uses_hamming_and_clean_partition(store, tmp_path):
    results = _run(density, _argv(store, tmp_path, "--partition", "clean", "--samples", "3", "--precisions",
                                  "0.15", "0.3", algo=("Dhash", "64", "bits")))
    exp = tmp_path / "results" / "memes_clean" / "hamming_DBSCAN_dhash_64_bits"
    assert results["metric"] == "hamming" and results["n_images"] == 4 * (PER_TEMPLATE + 1)
    assert results["excluded"]["templates"] == ["harold", "who-would-win"]
    names = sorted(p.name for p in exp.iterdir() if p.is_dir())
    assert names == ["4-clusters_eps-0.150_samples-3", "4-clusters_eps-0.300_samples-3"]
    run = results["runs"][0]
    assert run["eps"] == 0.15 and run["graph"]["graph"] == "radius" and run["v_measure"] == pytest.approx(1.0)


def test_dbscan_knn_graph_and_hdbscan(store, tmp_path):
    results = _run(density, _argv(store, tmp_path, "--graph", "knn", "--k", "8", "--precisions", "auto"))
    assert results["method"] == "DBSCAN-knn" and results["graph"]["k"] == 8
    assert all(r["graph"]["graph"] == "knn" for r in results["runs"])
    _fails(density, _argv(store, tmp_path, "--graph", "knn", "--k", "3", "--samples", "5", "--force"),
           "--k .* at least --samples")
    results = _run(density, _argv(store, tmp_path, "--method", "hdbscan", "--min-cluster-size", "4", "20"))
    assert results["method"] == "HDBSCAN"
    best = max(results["runs"], key=lambda r: r["v_measure"])
    assert best["n_clusters"] == len(TEMPLATES) and best["ari"] == pytest.approx(1.0)


def test_kmeans_auto_and_save_outputs(store, tmp_path):
    results = _run(kmeans, _argv(store, tmp_path, "--k", "auto", "--k-range", "2", "10", "1", "--save", "True",
                                 "--montages", "2", "--tsne", "True", "--metric", "cosine"))
    exp = tmp_path / "results" / "memes_full" / "cosine_kmeans_toy_net"
    assert results["k_selection"]["best_k"] == len(TEMPLATES)
    run = exp / f"{len(TEMPLATES)}-clusters"
    for plot in ("cluster_balance", "size_diameter", "intersection_union", "tsne"):
        assert (run / f"{plot}.png").is_file() and (run / f"{plot}.pdf").is_file()
    for plot in ("sizes", "sizes_violin", "diameters_violin", "completeness_homogeneity", "metrics",
                 "k_selection"):
        assert (exp / f"{plot}.png").is_file()
    assert sorted(p.name for p in (run / "representatives").iterdir()) == ["0.png", "1.png"]
    assert sorted(p.name for p in (run / "extremes").iterdir()) == ["0.png", "1.png"]
    with np.load(run / "cluster_stats.npz", allow_pickle=False) as stats:
        assert stats["sizes"].sum() == len(TEMPLATES) * (PER_TEMPLATE + 1)
    scores = yaml.safe_load((run / "scores.json").read_text())
    assert scores["sn_ratio1"] > 1 and scores["metric"] == "cosine"
    html = (exp / "summary.html").read_text()
    assert f"{len(TEMPLATES)}-clusters" in html and "representatives/0.png" in html and "k_selection.png" in html


@pytest.mark.parametrize("module", [hierarchical, density, kmeans])
def test_scripts_help(module, capsys):
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args(["-h"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--algo", "--dataset", "--metric", "--partition", "--save", "--features-root", "--force",
                 "--config", "--results-dir"):
        assert flag in out
    for action in module.build_parser()._actions:  # every flag is documented
        assert action.help, action.dest


def test_script_error_exit_code(store, tmp_path):
    """The root script itself: one error line and exit code 2."""
    out = subprocess.run([sys.executable, "hierarchical.py", *_argv(store, tmp_path, "--linkage", "centroid",
                                                                     "--metric", "cosine")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: centroid linkage is only defined")
    assert "Traceback" not in out.stderr
