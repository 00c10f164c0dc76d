"""build_index / query: a saved index, appended without rebuilding, queried by images."""
import json
import subprocess
import sys
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from dedup.features import normalize
from dedup.index import SavedIndex, append_to_index, build_from_features, new_faiss_index
from dedup.index_cli import run_build, run_query
from dedup.testset import build_folder, synthetic_images
from fast_search.synthetic import clustered_database
from tests.conftest import REPO_ROOT


def float_featurizer(dim):
    """What build_from_features needs of a model featurizer (features here are given, not computed)."""
    return SimpleNamespace(algo="test-model", name="test-model", binary=False, metric="cosine", dim=dim,
                           score_name="similarity", meta={"name": "test-model", "preprocessing": "none"})


def ivf_centroids(index):
    ivf = faiss.extract_index_ivf(index)
    return faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * ivf.d).copy()


def ivf_list(index, number):
    ivf = faiss.extract_index_ivf(index)
    size = ivf.invlists.list_size(number)
    ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size).copy()
    codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(number), size * ivf.code_size).copy()
    return ids, codes


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_append_1000_extends_the_index_and_equals_a_fresh_build(tmp_path, factory):
    data = normalize(clustered_database(3000, 32, n_clusters=20, seed=0))
    old, new = data[:2000], data[2000:]
    names = [f"img{i}.png" for i in range(3000)]
    folder = tmp_path / "index"
    build_from_features(folder, names[:2000], old, float_featurizer(32), factory=factory, nprobe=4,
                        threshold=0.1)
    before = SavedIndex(folder)
    part0 = (folder / "store" / "part-0000" / "features.npy").read_bytes()
    if factory != "Flat":
        centroids = ivf_centroids(before.index)
        lists_before = [ivf_list(before.index, i) for i in range(16)]
    assert append_to_index(folder, None, features=new, names=names[2000:]) == 1000
    after = SavedIndex(folder)
    assert after.index.ntotal == 3000 and after.info["n"] == 3000
    assert after.info["parts"] == ["store/part-0000", "store/part-0001"]
    assert (folder / "store" / "part-0000" / "features.npy").read_bytes() == part0  # store extended, not rewritten
    assert after.names == names
    np.testing.assert_array_equal(after.features(), data)
    queries = normalize(data[::97] + 0.05 * np.random.default_rng(1).standard_normal((len(data[::97]), 32)))
    d_after, i_after = after.search(queries, 5)
    if factory == "Flat":
        exact = 1.0 - queries.astype(np.float64) @ data.astype(np.float64).T
        np.testing.assert_array_equal(i_after, np.argsort(exact, axis=1, kind="stable")[:, :5])
        np.testing.assert_allclose(d_after, np.sort(exact, axis=1)[:, :5], atol=1e-5)
    else:
        # not retrained: the centroids and every old row of every list are unchanged, the new rows follow
        np.testing.assert_array_equal(ivf_centroids(after.index), centroids)
        for number, (ids, codes) in enumerate(lists_before):
            ids_now, codes_now = ivf_list(after.index, number)
            np.testing.assert_array_equal(ids_now[:len(ids)], ids)
            np.testing.assert_array_equal(codes_now[:len(codes)], codes)
            assert np.all(ids_now[len(ids):] >= 2000)
        # a fresh build with these centroids, all 3000 rows at once, gives the same results
        fresh = faiss.clone_index(before.index)
        fresh.reset()  # empties the lists, keeps the trained centroids
        fresh.add(data)
        faiss.extract_index_ivf(fresh).nprobe = 4
        d_fresh, i_fresh = fresh.search(queries, 5)
        np.testing.assert_array_equal(i_after, i_fresh)
        np.testing.assert_allclose(d_after, 1.0 - d_fresh, atol=1e-6)


def test_new_faiss_index_translates_float_factories_for_hashes():
    assert isinstance(new_faiss_index("Flat", 64, binary=True), faiss.IndexBinaryFlat)
    with pytest.raises(ValueError, match="FAISS cannot build"):
        new_faiss_index("NotAnIndex", 8, binary=False)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    images = synthetic_images(30, seed=3, width=96, height=72)
    build_folder(folder, images[:10], images[10:], families=("jpeg", "text"), seed=0)
    return folder


def test_build_append_query_with_images(photo_folder, tmp_path):
    lines = []
    run_build(str(photo_folder / "originals"), str(tmp_path / "idx"), max_distance=8, workers=1, device="cpu",
              echo=lines.append)
    run_build(str(photo_folder / "unrelated"), str(tmp_path / "idx"), append=True, workers=1, device="cpu",
              echo=lines.append)
    assert "no rebuild" in lines[-1]
    # appending the same folder again adds nothing
    run_build(str(photo_folder / "unrelated"), str(tmp_path / "idx"), append=True, workers=1, device="cpu",
              echo=lines.append)
    assert lines[-1].startswith("appended 0 images")
    queries = [str(photo_folder / "copies" / f"photo000{i}_jpeg.jpg") for i in range(3)]
    out = []
    result = run_query(queries, str(tmp_path / "idx"), k=4, json=str(tmp_path / "q.json"), device="cpu",
                       echo=out.append)
    saved = SavedIndex(tmp_path / "idx")
    from dedup.features import Featurizer

    hasher = Featurizer("Phash 64 bits")
    _, q = hasher.files(queries)
    bits = lambda a, b: np.unpackbits(a ^ b).sum()  # noqa: E731
    db = saved.features()
    for number, query in enumerate(queries):
        rows = [r for r in result["results"] if r["query"] == query]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4]
        expected = sorted(bits(q[number], row) for row in db)[:4]
        assert [r["distance"] for r in rows] == expected
        assert rows[0]["neighbour"].endswith(f"photo000{number}.jpg")
        assert all(r["likely_copy"] == (r["distance"] <= 8) for r in rows)
    assert json.loads((tmp_path / "q.json").read_text())["results"] == result["results"]
    assert any("yes" in line for line in out)


def test_query_script_reports_missing_index(tmp_path):
    result = subprocess.run([sys.executable, "query.py", str(tmp_path / "x.png"), "--index", str(tmp_path / "none")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "build_index.py" in result.stderr


# ------------------------------------------------------------------------------------------- index budget

def test_budget_candidates_measure_copy_detection_recall():
    from dedup.budget import measure_candidates
    from fast_search.synthetic import planted_queries

    db = normalize(clustered_database(4000, 32, n_clusters=40, seed=2))
    queries, targets = planted_queries(db, 200, noise=0.6, seed=3)
    queries = normalize(queries)
    results = measure_candidates(db, queries, targets, binary=False, latency_queries=5)
    exact = np.argmax(queries.astype(np.float64) @ db.astype(np.float64).T, axis=1)
    flat = next(c for c in results if c.factory == "Flat")
    assert flat.recall_at_1 == pytest.approx(np.mean(exact == targets))
    assert 0 < flat.recall_at_1 < 1  # noisy enough that the index choice matters
    assert flat.bytes_per_vector >= 32 * 4
    pq = [c for c in results if ",PQ" in c.factory]
    assert pq and all(c.bytes_per_vector < flat.bytes_per_vector / 4 for c in pq)
    ivf = sorted((c for c in results if c.factory.endswith(",Flat")), key=lambda c: c.nprobe)
    assert ivf[-1].recall_at_1 >= ivf[0].recall_at_1


def test_choose_respects_the_budgets():
    from dedup.budget import Candidate, choose, parse_bytes

    flat = Candidate("Flat", recall_at_1=0.90, latency_ms=20.0, bytes_per_vector=5120)
    ivf = Candidate("IVF1024,Flat", nprobe=16, recall_at_1=0.89, latency_ms=2.0, bytes_per_vector=5200)
    pq = Candidate("IVF1024,PQ64", nprobe=16, recall_at_1=0.80, latency_ms=1.0, bytes_per_vector=80)
    results = [flat, ivf, pq]
    assert choose(results, 10**6) is flat
    assert choose(results, 10**6, latency_budget_ms=5) is ivf
    assert choose(results, 10**6, memory_budget=parse_bytes("1GB")) is pq
    assert choose(results, 10**6, memory_budget=parse_bytes("1MiB")) is None
    assert parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="cannot read the size"):
        parse_bytes("lots")


# ----------------------------------------------------------------------------------------- vector database

def test_qdrant_embedded_index_matches_faiss(photo_folder, tmp_path):
    """The same build / append / query through Qdrant's embedded mode gives FAISS's neighbours and scores."""
    pytest.importorskip("qdrant_client", reason="qdrant-client is in requirements.txt; install it")
    results = {}
    for backend in ("faiss", "qdrant"):
        extra = {"qdrant": str(tmp_path / "qdrant_data")} if backend == "qdrant" else {}
        folder = str(tmp_path / f"idx_{backend}")
        run_build(str(photo_folder / "originals"), folder, max_distance=8, workers=1, device="cpu",
                  echo=lambda *_: None, **extra)
        run_build(str(photo_folder / "unrelated"), folder, append=True, workers=1, device="cpu",
                  echo=lambda *_: None)
        queries = [str(photo_folder / "copies" / f"photo000{i}_text.jpg") for i in range(3)]
        results[backend] = run_query(queries, folder, k=3, device="cpu", echo=lambda *_: None)["results"]
    assert SavedIndex(tmp_path / "idx_qdrant").info["vector_db"]["kind"] == "qdrant"
    key = lambda r: (r["query"], r["distance"], r["neighbour"])  # noqa: E731 - ties may come in either order
    assert sorted(map(key, results["qdrant"])) == sorted(map(key, results["faiss"]))


def test_find_duplicates_through_qdrant_equals_faiss(photo_folder, tmp_path):
    pytest.importorskip("qdrant_client", reason="qdrant-client is in requirements.txt; install it")
    from dedup.find import run_find
    from dedup.report import read_pairs_csv

    pairs = {}
    for backend in ("faiss", "qdrant"):
        extra = {"qdrant": str(tmp_path / "qdrant_data")} if backend == "qdrant" else {}
        run_find(path=str(photo_folder), output=str(tmp_path / backend), max_distance=10, workers=1,
                 device="cpu", echo=lambda *_: None, **extra)
        pairs[backend] = {(r["a"], r["b"], r["distance"]) for r in read_pairs_csv(tmp_path / backend / "pairs.csv")}
    assert pairs["qdrant"] == pairs["faiss"] and pairs["faiss"]
