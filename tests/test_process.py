"""process.py: the seed's plots (Flat metrics, k sweep annotated with k, IVF vs Flat with optional log y), per-attack
bars and precision-recall curves, as PNG and PDF, from real experiment results and from the seed's own layout."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fast_search import plot
from fast_search.experiment import run_experiment
from fast_search.plot import process_experiment
from tests.conftest import REPO_ROOT
from tests.test_search_experiment import FLOAT, HASH, store  # noqa: F401  (module fixture)

SEED_IVF = {  # the layout of the seed's Results/IVF_BSDS500/results.json
    "Flat--L2": {"recall": 0.944, "training_time": 0.62, "searching_time": 2.74, "k": 1},
    "Flat--cosine": {"recall": 0.949, "training_time": 0.77, "searching_time": 2.67, "k": 1},
    "IVF7071,Flat--cosine": {"recall": [0.735, 0.908, 0.943], "training_time": 49.1,
                             "searching_time": [0.064, 0.171, 1.063], "k": 1, "nprobe": [1, 10, 80]},
}


@pytest.fixture(scope="module")
def results(store, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("results")
    common = dict(main_dataset="main", query_dataset="queries", distractor_dataset="distractors", repeats=1,
                  device="cpu", results_root=root, features_root=store["root"])
    k = run_experiment("k", algo=[FLOAT, HASH], experiment="k", ks=[1, 2, 4], **common)
    ivf = run_experiment("ivf", algo=[FLOAT], experiment="nprobe", index=["IVF8,Flat"], nprobes=[1, 2, 8], **common)
    return {"root": root, "k": k, "ivf": ivf}


def _readable_png(path):
    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 10  # not blank


def test_process_writes_png_and_pdf(results):
    written = process_experiment("k", results_root=results["root"])
    names = {p.name for p in written}
    for stem in ("time_recall", "recall_k", "time_k", "per_attack_float_16", "precision_recall_float_16",
                 "per_attack_hash_64_bits", "precision_recall_hash_64_bits"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for path in written:
        assert path.parent == results["root"] / "k" and path.stat().st_size > 1000
        if path.suffix == ".png":
            _readable_png(path)
        else:
            assert path.read_bytes()[:5] == b"%PDF-"


def test_k_sweep_is_annotated_with_k(results):
    fig = plot.time_recall_plot_flat_sweep_k(results["k"])
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.texts]
    assert labels.count("k=1") == 3 and labels.count("k=4") == 3  # 3 runs: L2, cosine, hamming
    assert len(ax.get_lines()) == 3
    run = results["k"]["algorithms"][FLOAT]["runs"]["Flat--cosine"]
    x, y = ax.get_lines()[1].get_data()
    np.testing.assert_allclose(x, run["recall"])
    np.testing.assert_allclose(y, run["searching_time"])


def test_recall_and_time_against_k(results):
    run = results["k"]["algorithms"][FLOAT]["runs"]["Flat--cosine"]
    ax = plot.recall_k_plot(results["k"]).axes[0]
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert len(solid) == 3  # L2, cosine, hamming
    x, y = solid[1].get_data()
    np.testing.assert_allclose(x, run["k"])
    np.testing.assert_allclose(y, run["recall"])
    x, y = plot.time_k_plot(results["k"]).axes[0].get_lines()[1].get_data()
    np.testing.assert_allclose(x, run["k"])
    np.testing.assert_allclose(y, run["searching_time"])


def test_ivf_plot_log_y_and_flat_points(results):
    written = process_experiment("ivf", results_root=results["root"], log_y=True, formats=["png"])
    assert all(p.suffix == ".png" for p in written)
    fig = plot.time_recall_plot_IVF(results["ivf"], ylog=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2  # IVF curves, Flat markers (L2 and cosine)
    assert "nprobe=8" in [text.get_text() for text in ax.texts]


def test_per_attack_and_precision_recall_content(results):
    section = results["k"]["algorithms"][FLOAT]
    fig = plot.per_attack_recall_plot(section, FLOAT)
    ax = fig.axes[0]
    per_attack = section["runs"]["Flat--L2"]["points"][0]["per_attack"]["1"]
    assert len(ax.patches) == 2 * len(per_attack)  # one bar per attack and run
    widths = sorted(round(p.get_width(), 9) for p in ax.patches[: len(per_attack)])
    assert widths == sorted(round(v["recall"], 9) for v in per_attack.values())
    fig = plot.precision_recall_plot(section, FLOAT)
    assert sum(ax.get_visible() for ax in fig.axes) == 3  # PR curves + one threshold panel per run


def test_seed_layout_is_plotted(tmp_path):
    written = plot.plot_experiment(SEED_IVF, tmp_path, formats=("png",))
    assert [p.name for p in written] == ["time_recall.png"]
    _readable_png(written[0])
    metrics = {key: run for key, run in SEED_IVF.items() if key.startswith("Flat")}  # compare_metrics_Flat output
    fig = plot.time_recall_plot_flat(metrics)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Recall@1" and len(ax.collections) == 2
    np.testing.assert_allclose(sorted(c.get_offsets()[0][1] for c in ax.collections), [2.67, 2.74])
    assert [p.name for p in plot.plot_experiment(metrics, tmp_path / "m", formats=("png",))] == ["time_recall.png"]


def test_cli_missing_results_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "process.py", "nope", "--results-root", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "search_experiment.py nope" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
