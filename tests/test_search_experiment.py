"""search_experiment.py / fast_search.experiment on synthetic feature stores: results.json against the numpy brute
force, the seed's experiment functions, overwrite refusal, resume, CLI and config."""
import subprocess
import sys
import types

import numpy as np
import pytest
import yaml

from fast_search import synthetic as S
from fast_search.experiment import format_results_table, run_experiment
from fast_search.search import Experiment, compare_k_Flat, compare_metrics_Flat, compare_nprobe_IVF
from helpers.experiment import ExperimentExistsError
from helpers.results import read_json
from tests.conftest import REPO_ROOT, synthetic_photo
from tests.test_search_backends import oracle_distances, oracle_quality, oracle_search, without_near_ties

FLOAT, RELU, HASH = "Float 16", "Relu 16", "Hash 64 bits"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Stores of three algorithms for main (300), distractors (200) and queries (70 planted + 10 negatives)."""
    root = tmp_path_factory.mktemp("features")
    main_names, dis_names = S.database_names(300), S.database_names(200, prefix="dis")
    rng = np.random.default_rng(0)
    targets = np.sort(rng.choice(500, 70, replace=False))  # originals in main and in the distractors
    names = [(main_names + dis_names)[t].replace(".png", f"_{S.ATTACKS[j % 4]}.png") for j, t in enumerate(targets)]
    names += [f"neg{j:03d}_{S.ATTACKS[j % 4]}.png" for j in range(10)]
    data = {}
    db = S.clustered_database(500, 16, n_clusters=8, spread=1.5, seed=1)
    # noisy copies of db[targets] in that order (all 70 rows of the sub-array are picked, sorted), then negatives
    queries, picked = S.planted_queries(db[targets], 70, noise=0.6, seed=2,
                                        negatives=S.clustered_database(10, 16, n_clusters=8, spread=1.5, seed=3))
    assert picked[:70].tolist() == list(range(70))
    data[FLOAT] = (db, queries)
    data[RELU] = (np.maximum(db, 0), np.maximum(queries, 0))
    codes = S.random_codes(500, 64, seed=4)
    data[HASH] = (codes, np.concatenate([S.flip_bits(codes[targets], 3, seed=5), S.random_codes(10, 64, seed=6)]))
    for algo, (x, q) in data.items():
        S.write_store(root, "main", algo, x[:300], main_names)
        S.write_store(root, "distractors", algo, x[300:], dis_names)
        S.write_store(root, "queries", algo, q, names)
    # ground truth: a distractor is never a query's original (identity = dataset + path), so the queries planted
    # from distractor rows are negative queries; the oracle sees the distractors under other identities
    oracle_db_names = main_names + [f"distractor-{name}" for name in dis_names]
    return {"root": root, "data": data, "db_names": main_names + dis_names, "q_names": names,
            "oracle_db_names": oracle_db_names, "n_with_original": int((targets < 300).sum())}


def _run(tmp_path, store, name="exp", **kwargs):
    options = dict(algo=[FLOAT, HASH], main_dataset="main", query_dataset="queries",
                   distractor_dataset="distractors", experiment="k", ks=[1, 3], repeats=1, device="cpu",
                   results_root=tmp_path / "Results", features_root=store["root"])
    options.update(kwargs)
    return run_experiment(name, **options)


def _check_points_against_oracle(run, store, algo, metric):
    db, queries = store["data"][algo]
    for point in run["points"]:
        k = point["k"]
        ref_d, ref_ids, _ = oracle_search(db, queries, metric, k)
        ref = oracle_quality(ref_d, ref_ids, store["oracle_db_names"], store["q_names"], k)
        assert point[f"recall@{k}"] == ref["recall"]
        assert {a: v["recall"] for a, v in point["per_attack"][str(k)].items()} == ref["per_attack"]
        assert point["muap"] == pytest.approx(ref["muap"], abs=1e-9)


def test_data_has_no_near_ties(store):
    for algo in (FLOAT, RELU):
        db, queries = store["data"][algo]
        for metric in ("L2", "L1", "cosine") + (("JS",) if algo == RELU else ()):
            assert without_near_ties(oracle_distances(db, queries, metric), 3).all()


def test_k_experiment_with_two_algorithms(tmp_path, store, capsys):
    _run(tmp_path, store)
    saved = read_json(tmp_path / "Results" / "exp" / "results.json")
    assert saved["complete"] and saved["experiment"] == "k" and list(saved["algorithms"]) == [FLOAT, HASH]
    float_section, hash_section = saved["algorithms"][FLOAT], saved["algorithms"][HASH]
    assert (float_section["n"], float_section["d"], float_section["nq"]) == (500, 16, 80)
    assert float_section["n_queries_with_original"] == store["n_with_original"] and hash_section["binary"]
    assert 30 < store["n_with_original"] < 70  # some queries are copies of distractors: negatives
    assert list(float_section["runs"]) == ["Flat--L2", "Flat--cosine"]
    assert list(hash_section["runs"]) == ["BFlat--hamming"]
    for algo, section in saved["algorithms"].items():
        for key, run in section["runs"].items():
            _check_points_against_oracle(run, store, algo, key.rpartition("--")[2])
            # the seed's keys next to ours
            assert run["k"] == [1, 3] and len(run["recall"]) == 2 and len(run["searching_time"]) == 2
            assert run["recall"][0] == run["points"][0]["recall@1"]
            for field in ("backend", "device", "threads", "n", "d", "nq", "train_time", "add_time"):
                assert field in run
            assert run["points"][0]["qps"] == pytest.approx(80 / run["points"][0]["search_time"])
    record = yaml.safe_load((tmp_path / "Results" / "exp" / "experiment.yml").read_text())
    assert record["status"] == "finished"
    table = capsys.readouterr().out
    assert "recall@k" in table and "BFlat" in table and "queries/s" in table
    with pytest.raises(ExperimentExistsError):
        _run(tmp_path, store)
    _run(tmp_path, store, force=True, algo=[HASH], ks=[1])
    assert list(read_json(tmp_path / "Results" / "exp" / "results.json")["algorithms"]) == [HASH]


def test_metrics_experiment_every_float_metric(tmp_path, store):
    results = _run(tmp_path, store, algo=[RELU], experiment="metrics", metrics=["L2", "L1", "cosine", "JS"], ks=[3])
    runs = results["algorithms"][RELU]["runs"]
    assert list(runs) == ["Flat--L2", "Flat--L1", "Flat--cosine", "Flat--JS"]
    for key, run in runs.items():
        assert run["k"] == 3 and isinstance(run["recall"], float)  # one point: the seed's scalars
        _check_points_against_oracle(run, store, RELU, key.rpartition("--")[2])


def test_js_on_negative_features_fails_before_writing(tmp_path, store):
    with pytest.raises(ValueError, match="non-negative"):
        _run(tmp_path, store, algo=[FLOAT], experiment="metrics", metrics=["JS"])
    assert not (tmp_path / "Results" / "exp").exists()


def test_nprobe_experiment_against_flat(tmp_path, store):
    results = _run(tmp_path, store, algo=[FLOAT, HASH], experiment="nprobe", index=["IVF8,Flat"], nprobes=[1, 8],
                   metrics=["L2"], ks=[1])
    runs = results["algorithms"][FLOAT]["runs"]
    assert list(runs) == ["Flat--L2", "IVF8,Flat--L2"]
    ivf = runs["IVF8,Flat--L2"]
    assert ivf["nprobe"] == [1, 8] and ivf["sweep"] == "nprobe" and ivf["k"] == 1
    assert ivf["points"][1]["ann_recall"] == 1.0  # all lists visited: exact
    assert ivf["recall"][1] == runs["Flat--L2"]["recall"]
    assert ivf["train_time"] > 0
    assert list(results["algorithms"][HASH]["runs"]) == ["BFlat--hamming", "BIVF8--hamming"]


def test_index_and_efsearch_experiments(tmp_path, store):
    results = _run(tmp_path, store, algo=[FLOAT], experiment="index", index=["Flat", "HNSW16", "IVF4,PQ4x4"],
                   metrics=["L2"], ks=[1])
    runs = results["algorithms"][FLOAT]["runs"]
    assert list(runs) == ["Flat--L2", "HNSW16--L2", "IVF4,PQ4x4--L2"]
    assert "ann_recall" not in runs["Flat--L2"]["points"][0]
    assert 0 < runs["HNSW16--L2"]["points"][0]["ann_recall"] <= 1
    results = _run(tmp_path, store, name="ef", algo=[FLOAT], experiment="efsearch", efsearch=[4, 64],
                   metrics=["cosine"])
    hnsw = results["algorithms"][FLOAT]["runs"]["HNSW32--cosine"]
    assert hnsw["efsearch"] == [4, 64] and hnsw["points"][1]["efsearch"] == 64


def test_interrupted_experiment_resumes(tmp_path, store):
    _run(tmp_path, store, algo=[FLOAT], experiment="metrics", metrics=["L2", "cosine"])
    folder = tmp_path / "Results" / "exp"
    record = yaml.safe_load((folder / "experiment.yml").read_text())
    record["status"] = "running"  # as if killed during the cosine run
    (folder / "experiment.yml").write_text(yaml.safe_dump(record))
    partial = read_json(folder / "results.json")
    partial["complete"] = False
    del partial["algorithms"][FLOAT]["runs"]["Flat--cosine"]
    partial["algorithms"][FLOAT]["runs"]["Flat--L2"]["train_time"] = -1.0  # marks the kept run
    (folder / "results.json").write_text(__import__("json").dumps(partial))
    results = _run(tmp_path, store, algo=[FLOAT], experiment="metrics", metrics=["L2", "cosine"])
    runs = results["algorithms"][FLOAT]["runs"]
    assert runs["Flat--L2"]["train_time"] == -1.0 and list(runs) == ["Flat--L2", "Flat--cosine"]
    assert results["complete"]
    # another configuration does not reuse the interrupted runs
    record["status"] = "running"
    (folder / "experiment.yml").write_text(yaml.safe_dump(record))
    results = _run(tmp_path, store, algo=[FLOAT], experiment="metrics", metrics=["L2", "cosine"], ks=[2])
    assert results["algorithms"][FLOAT]["runs"]["Flat--L2"]["train_time"] >= 0


def test_seed_experiment_functions(tmp_path, store):
    common = dict(features_root=store["root"])
    out = compare_metrics_Flat(["L2", "L1"], FLOAT, "main", "queries", "distractors", tmp_path / "m.json", k=1,
                               **common)
    saved = read_json(tmp_path / "m.json")
    assert list(saved) == ["Flat--L2", "Flat--L1"] and saved["Flat--L2"]["k"] == 1
    assert saved["Flat--L1"]["recall"] == out["Flat--L1"]["recall"]
    saved = compare_k_Flat([1, 2], HASH, "main", "queries", "distractors", None, **common)
    assert saved["BFlat--hamming"]["recall"][0] == 70 / 70
    saved = compare_nprobe_IVF(8, [1, 8], FLOAT, "main", "queries", None, None, k=1, metrics=["cosine"], **common)
    assert list(saved) == ["Flat--cosine", "IVF8,Flat--cosine"]
    with pytest.raises(ValueError, match="nlist"):
        compare_nprobe_IVF(4, [8], FLOAT, "main", "queries", None, None, **common)


def test_seed_experiment_object(store):
    exp = Experiment(FLOAT, "main", "queries", "distractors", features_root=store["root"])
    exp.set_index("Flat", metric="L2")
    result = exp.fit(k=[1, 3])
    assert set(result) == {"recall", "training_time", "searching_time", "k"} and len(result["recall"]) == 2
    query, neighbors, targets = exp.neighbor_paths(0)
    assert query == store["q_names"][0] and len(neighbors) == 3
    for q in range(len(store["q_names"])):
        query, _, targets = exp.neighbor_paths(q)
        assert targets == [name for name in store["db_names"][:300] if name[:-4] == query.split("_")[0]]
    with pytest.raises(AttributeError):
        Experiment(FLOAT, "main", "queries", features_root=store["root"]).recall()


def test_crop_resistant_store(tmp_path, store, monkeypatch):
    codes, queries = store["data"][HASH]
    S.write_store(store["root"], "main", "Crop 64", codes, store["db_names"], matching="crop_resistant")
    S.write_store(store["root"], "queries", "Crop 64", queries, store["q_names"], matching="crop_resistant")
    fake = types.ModuleType("extractor.hashing")
    fake.crop_resistant_distances = lambda q, db, **rule: oracle_distances(db, q, "hamming")
    monkeypatch.setitem(sys.modules, "extractor.hashing", fake)
    results = _run(tmp_path, store, algo=["Crop 64"], distractor_dataset=None, ks=[1], metrics=["cosine"])
    run = results["algorithms"]["Crop 64"]["runs"]["BFlat--crop_resistant"]
    assert run["backend"] == "brute-force" and run["recall"] == 1.0
    with pytest.raises(ValueError, match="brute force"):
        _run(tmp_path, store, name="x", algo=["Crop 64"], distractor_dataset=None, experiment="nprobe")


def test_crop_resistant_search_uses_the_stores_segment_size(tmp_path):
    """256-bit segments (dhash 16): the search must read the segment size and cutoff from meta.json; imagehash's
    own ImageMultiHash distance is the reference."""
    import imagehash  # the test oracle (requirements-dev.txt)
    from extractor.hashing import CropResistantHash

    spec = CropResistantHash(hash_size=16)
    originals = {f"img{i}": synthetic_photo(320 - 10 * i, 240, seed=50 + i) for i in range(5)}
    copies = {f"img{i}_crop{c}": image.crop((8 * c, 6 * c, image.width - 30, image.height - 20 * c))
              for i, image in enumerate(originals.values()) for c in (1, 3)}
    for dataset, images in (("main", originals), ("queries", copies)):
        rows = np.stack([spec.compute(image) for image in images.values()])
        S.write_store(tmp_path, dataset, spec.name, rows, [f"{name}.png" for name in images], **spec.meta())
    exp = Experiment(spec.name, "main", "queries", features_root=tmp_path)
    exp.set_index("Flat", metric="crop_resistant")
    exp.search(k=len(originals))

    def reference(image):
        return imagehash.crop_resistant_hash(image, hash_func=lambda im: imagehash.dhash(im, 16), limit_segments=16)

    refs_db = [reference(image) for image in originals.values()]
    for q, image in enumerate(copies.values()):
        ref_q = reference(image)
        want = np.array([ref_q - ref_db for ref_db in refs_db])
        np.testing.assert_allclose(exp.D[q], np.sort(want), err_msg=list(copies)[q])
        assert want[exp.I[q, 0]] == want.min()


def test_results_table_reads_the_seed_layout():
    seed = {"Flat--L2": {"recall": 0.94, "training_time": 0.6, "searching_time": 2.7, "k": 1},
            "IVF7071,Flat--cosine": {"recall": [0.73, 0.94], "training_time": 49.1, "searching_time": [0.06, 1.06],
                                     "k": 1, "nprobe": [1, 80]}}
    table = format_results_table(seed)
    assert "IVF7071,Flat" in table and "0.9400" in table and "1.060" in table and len(table.splitlines()) == 6
    assert table.splitlines()[-1].startswith("recall@k and uAP count ties at the cut-off as misses")


def test_cli_with_config_and_refusal(tmp_path, store):
    config = tmp_path / "exp.yml"
    config.write_text(yaml.safe_dump({"name": "cli", "algo": [HASH], "main_dataset": "main",
                                      "query_dataset": "queries", "ks": [1, 2], "repeats": 1,
                                      "results_root": str(tmp_path / "Results"),
                                      "features_root": str(store["root"])}))
    command = [sys.executable, "search_experiment.py", "--config", str(config), "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "BFlat" in done.stdout and "recall@k" in done.stdout
    saved = read_json(tmp_path / "Results" / "cli" / "results.json")
    assert saved["algorithms"][HASH]["runs"]["BFlat--hamming"]["k"] == [1, 2]
    resolved = yaml.safe_load((tmp_path / "Results" / "cli" / "config.yml").read_text())
    assert resolved["ks"] == [1, 2] and resolved["algo"] == [HASH]
    again = subprocess.run(command + ["--ks", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run([sys.executable, "search_experiment.py", "other", "--algo", "Nope", "--main-dataset",
                              "main", "--query-dataset", "queries", "--features-root", str(store["root"]),
                              "--results-root", str(tmp_path / "Results")], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "extract_features.py" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "Results" / "other").exists()
