"""Exact search of every metric and backend against an independent numpy/scipy brute force, on synthetic features
with planted duplicates; recall@k, per-attack recall and µAP against loops over the brute-force neighbours.

The oracle helpers here are also used by tests/test_search_experiment.py.
"""
import sys
import types

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from fast_search import synthetic as S
from fast_search.evaluate import retrieval_metrics, summarize_search
from fast_search.index import (TorchFlatIndex, choose_backend, make_index, prepare_vectors, to_binary_factory)
from helpers.datasets import attack_of, identity_of

K = 10
KS = (1, 5, 10)


# -- the independent reference ----------------------------------------------------------------------------------
def oracle_distances(db, queries, metric):
    """Distances in float64 with numpy/scipy, written from the definitions (lower = closer)."""
    if metric == "hamming":
        a = np.unpackbits(queries, axis=1).astype(np.int64)
        b = np.unpackbits(db, axis=1).astype(np.int64)
        return (a[:, None, :] != b[None, :, :]).sum(axis=2).astype(np.float64)
    x, q = db.astype(np.float64), queries.astype(np.float64)
    if metric == "L2":
        return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    if metric == "L1":
        return np.abs(q[:, None, :] - x[None, :, :]).sum(axis=2)
    if metric == "cosine":
        return 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    if metric == "JS":  # scipy returns the square root of the JS divergence of the normalised rows
        return cdist(q, x, metric="jensenshannon") ** 2
    raise AssertionError(metric)


def oracle_search(db, queries, metric, k):
    dist = oracle_distances(db, queries, metric)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, ids, axis=1), ids, dist


def oracle_quality(distances, ids, db_names, query_names, k):
    """recall@k, per-attack recall and µAP (DISC21) by plain loops over the neighbour lists."""
    db_ident = [identity_of(n) for n in db_names]
    present = set(db_ident)
    hits, per_attack, pairs = [], {}, []
    for q, name in enumerate(query_names):
        ident = identity_of(name)
        found = any(db_ident[i] == ident for i in ids[q, :k] if i >= 0)
        if ident in present:
            hits.append(found)
            per_attack.setdefault(attack_of(name) or "(none)", []).append(found)
        best = {}
        for d, i in zip(distances[q], ids[q]):
            if i >= 0 and db_ident[i] not in best:
                best[db_ident[i]] = d
        pairs += [(d, other == ident) for other, d in best.items()]
    n_pos = len(hits)
    pairs.sort(key=lambda p: (p[0], p[1]))  # ties: False (wrong pair) first
    tp, ap = 0, 0.0
    for rank, (_, correct) in enumerate(pairs, start=1):
        if correct:
            tp += 1
            ap += tp / rank / n_pos
    return {"recall": sum(hits) / n_pos, "per_attack": {a: sum(v) / len(v) for a, v in per_attack.items()},
            "muap": ap}


def name_truth(db_names, query_names):
    """The test data's ground truth, from how it names its images: database identities, query identities and
    query attacks."""
    return ([identity_of(n) for n in db_names], [identity_of(n) for n in query_names],
            [attack_of(n) for n in query_names])


def assert_quality_matches(summary, oracle_d, oracle_ids, db_names, query_names, ks=KS):
    for k in ks:
        ref = oracle_quality(oracle_d, oracle_ids, db_names, query_names, k)
        assert summary[f"recall@{k}"] == ref["recall"]
        assert {a: v["recall"] for a, v in summary["per_attack"][str(k)].items()} == ref["per_attack"]
    ref = oracle_quality(oracle_d, oracle_ids, db_names, query_names, max(ks))
    assert summary["muap"] == pytest.approx(ref["muap"], abs=1e-9)


def without_near_ties(dist, k, gap=1e-5):
    """Rows whose k+1 nearest distances are all at least ``gap`` (relative) apart: float32 and float64 rankings
    of these are certain to agree, so results must match exactly."""
    top = np.sort(dist, axis=1)[:, : k + 1]
    keep = (np.diff(top, axis=1) > gap * np.maximum(1, np.abs(top[:, 1:]))).all(axis=1)
    assert keep.mean() > 0.9, "the test data has too many near ties"
    return keep


# -- data ---------------------------------------------------------------------------------------------------------
def float_data(nonnegative=False, n=1500, d=24, nq=150, n_neg=30):
    db = S.clustered_database(n, d, n_clusters=15, spread=1.5, seed=11)
    negatives = S.clustered_database(n_neg, d, n_clusters=15, spread=1.5, seed=12)
    queries, targets = S.planted_queries(db, nq, noise=0.8, seed=13, negatives=negatives)
    if nonnegative:
        db, queries = np.maximum(db, 0), np.maximum(queries, 0)
    return db, queries, S.database_names(n), S.query_names(targets)


@pytest.fixture(scope="module")
def binary_data():
    db = S.random_codes(900, 128, seed=21)
    targets = np.sort(np.random.default_rng(22).choice(900, 120, replace=False))
    queries = np.concatenate([S.flip_bits(db[targets], 5, seed=23), S.random_codes(25, 128, seed=24)])
    names = S.query_names(np.concatenate([targets, -np.ones(25, dtype=int)]))
    return db, queries, S.database_names(900), names


# -- float metrics --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["L2", "L1", "cosine", "JS"])
def test_faiss_flat_matches_brute_force_exactly(metric):
    db, queries, db_names, q_names = float_data(nonnegative=metric == "JS")
    keep = without_near_ties(oracle_distances(db, queries, metric), K)
    queries, q_names = queries[keep], [name for name, ok in zip(q_names, keep) if ok]
    ref_d, ref_ids, _ = oracle_search(db, queries, metric, K)
    index = make_index("Flat", metric, db.shape[1], batch_size=37)  # several query batches
    index.add(prepare_vectors(db, metric))
    distances, ids = index.search(prepare_vectors(queries, metric), K)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(distances, ref_d, rtol=2e-4, atol=2e-5)
    summary = summarize_search(distances, ids, *name_truth(db_names, q_names), KS)
    assert summary["n_queries_with_original"] == sum(not n.startswith("neg") for n in q_names) > 130
    assert_quality_matches(summary, ref_d, ref_ids, db_names, q_names)
    assert 0.5 < summary["recall@1"] < 1.0  # neither trivial nor broken: the planted copies are hard enough


@pytest.mark.parametrize("metric", ["L2", "cosine", "L1"])
def test_torch_backend_on_cpu_matches_brute_force(metric):
    db, queries, _, _ = float_data()
    queries = queries[without_near_ties(oracle_distances(db, queries, metric), K)]
    ref_d, ref_ids, _ = oracle_search(db, queries, metric, K)
    # small batches and chunks: many chunks merged into the running top-k, a last partial chunk of 1500 % 64 rows
    index = TorchFlatIndex(metric, db.shape[1], device="cpu", batch_size=29, db_chunk=64)
    index.add(prepare_vectors(db, metric))
    distances, ids = index.search(prepare_vectors(queries, metric), K)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(distances, ref_d, rtol=2e-4, atol=2e-4)


def test_torch_backend_with_fewer_rows_than_k_pads():
    db = np.eye(3, 4, dtype=np.float32)
    index = TorchFlatIndex("L2", 4, device="cpu", db_chunk=2)
    index.add(db)
    distances, ids = index.search(db[:1], 5)
    assert ids.tolist() == [[0, 1, 2, -1, -1]]
    assert np.isinf(distances[0, 3:]).all()


def test_query_batches_do_not_change_results():
    db, queries, _, _ = float_data()
    out = []
    for batch in (7, 10_000):
        index = make_index("Flat", "cosine", db.shape[1], batch_size=batch)
        index.add(prepare_vectors(db, "cosine"))
        out.append(index.search(prepare_vectors(queries, "cosine"), 5))
    np.testing.assert_array_equal(out[0][1], out[1][1])
    np.testing.assert_array_equal(out[0][0], out[1][0])


def test_ivf_visiting_every_list_is_exact_and_nprobe_one_is_not():
    db, queries, _, _ = float_data()
    queries = queries[without_near_ties(oracle_distances(db, queries, "L2"), 5)]
    _, ref_ids, _ = oracle_search(db, queries, "L2", 5)
    index = make_index("IVF16,Flat", "L2", db.shape[1])
    index.train(prepare_vectors(db, "L2"))
    index.add(prepare_vectors(db, "L2"))
    index.set_search_params(nprobe=16)
    np.testing.assert_array_equal(index.search(queries, 5)[1], ref_ids)
    index.set_search_params(nprobe=1)
    assert (index.search(queries, 5)[1] != ref_ids).any()
    with pytest.raises(ValueError, match="efSearch"):
        index.set_search_params(efsearch=10)


def test_retrieval_metrics_in_memory_accepts_tensors():
    db, queries, db_names, q_names = float_data()
    keep = without_near_ties(oracle_distances(db, queries, "cosine"), K)
    queries, q_names = queries[keep], [name for name, ok in zip(q_names, keep) if ok]
    ref_d, ref_ids, _ = oracle_search(db, queries, "cosine", K)
    db_ids, q_ids, q_attacks = name_truth(db_names, q_names)
    out = retrieval_metrics(torch.from_numpy(db), db_ids, torch.from_numpy(queries), q_ids, q_attacks,
                            metric="cosine", ks=KS)
    assert out["metric"] == "cosine" and out["n_database"] == len(db)
    assert_quality_matches(out, ref_d, ref_ids, db_names, q_names)
    assert 0 <= out["recall@P90"] <= 1


# -- binary ---------------------------------------------------------------------------------------------------------
def assert_same_neighbors_with_ties(distances, ids, ref_full, k):
    """Exact integer distances; ids equal up to the order among equal distances (hamming ties are common)."""
    ref_sorted = np.sort(ref_full, axis=1)[:, :k]
    np.testing.assert_array_equal(distances, ref_sorted)
    for q in range(len(ids)):
        np.testing.assert_array_equal(ref_full[q, ids[q]], distances[q])  # each id is at its stated distance
        assert len(set(ids[q].tolist())) == k
        kth = ref_sorted[q, -1]
        assert set(np.flatnonzero(ref_full[q] < kth)) <= set(ids[q].tolist())


def test_hamming_flat_matches_brute_force(binary_data):
    db, queries, db_names, q_names = binary_data
    ref_d, ref_ids, full = oracle_search(db, queries, "hamming", K)
    index = make_index("Flat", "hamming", 128, binary=True, batch_size=50)
    assert index.factory == "BFlat"
    index.add(prepare_vectors(db, "hamming"))
    distances, ids = index.search(prepare_vectors(queries, "hamming"), K)
    assert_same_neighbors_with_ties(distances, ids, full, K)
    summary = summarize_search(distances, ids, *name_truth(db_names, q_names), KS)
    assert_quality_matches(summary, ref_d, ref_ids, db_names, q_names)
    assert summary["recall@1"] == 1.0  # 5 flipped bits of 128 vs ~64 for any other code
    db_ids, q_ids, q_attacks = name_truth(db_names, q_names)
    out = retrieval_metrics(db, db_ids, queries, q_ids, q_attacks, metric="hamming", ks=KS)
    assert out["muap"] == pytest.approx(summary["muap"])


def test_binary_ivf_with_all_lists_equals_flat(binary_data):
    db, queries, _, _ = binary_data
    _, _, full = oracle_search(db, queries, "hamming", 5)
    index = make_index("IVF8,Flat", "hamming", 128, binary=True)
    assert index.factory == "BIVF8" and index.kind == "ivf"
    index.train(db)
    index.add(db)
    index.set_search_params(nprobe=8)
    distances, ids = index.search(queries, 5)
    assert_same_neighbors_with_ties(distances, ids, full, 5)


def test_binary_hnsw_finds_the_planted_copies(binary_data):
    db, queries, _, _ = binary_data
    index = make_index("BHNSW32", "hamming", 128, binary=True)
    index.add(db)
    index.set_search_params(efsearch=64)
    distances, _ = index.search(queries[:120], 1)
    assert (distances[:, 0] <= 5).mean() > 0.95


# -- crop-resistant hashes: brute force through extractor.hashing ---------------------------------------------------
def test_crop_resistant_uses_the_extractor_distance(monkeypatch, binary_data):
    db, queries, _, _ = binary_data
    calls = []

    def crop_resistant_distances(query_rows, db_rows, **rule):  # stand-in: hamming, recording the calls
        calls.append((len(query_rows), len(db_rows)))
        assert rule == {"segment_bits": 64, "hamming_cutoff": None}
        return oracle_distances(db_rows, query_rows, "hamming")

    fake = types.ModuleType("extractor.hashing")
    fake.crop_resistant_distances = crop_resistant_distances
    monkeypatch.setitem(sys.modules, "extractor.hashing", fake)
    index = make_index("BFlat", "crop_resistant", 128, binary=True, batch_size=40)
    assert index.backend == "brute-force"
    index.add(prepare_vectors(db, "crop_resistant"))
    distances, ids = index.search(prepare_vectors(queries, "crop_resistant"), K)
    assert_same_neighbors_with_ties(distances, ids, oracle_distances(db, queries, "hamming"), K)
    assert calls and all(n == 900 for _, n in calls) and max(q for q, _ in calls) <= 40
    with pytest.raises(ValueError, match="brute force"):
        make_index("BIVF8", "crop_resistant", 128, binary=True)


def test_crop_resistant_without_the_extractor_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "extractor.hashing", None)  # import fails
    with pytest.raises(ValueError, match="crop_resistant_distances"):
        make_index("BFlat", "crop_resistant", 64, binary=True)


# -- input checks and backend choice --------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        prepare_vectors(x, "L2")
    with pytest.raises(ValueError, match="non-negative"):
        prepare_vectors(-np.ones((2, 3), dtype=np.float32), "JS")
    with pytest.raises(ValueError, match="hamming"):
        prepare_vectors(np.zeros((2, 8), dtype=np.uint8), "cosine")
    with pytest.raises(ValueError, match="does not apply"):
        make_index("Flat", "hamming", 8)
    with pytest.raises(ValueError, match="binary"):
        make_index("BFlat", "L2", 8)
    with pytest.raises(ValueError, match="no binary equivalent"):
        to_binary_factory("IVF16,PQ4")


def test_cosine_and_js_keep_zero_rows_finite():
    x = np.array([[0, 0, 0], [1, 2, 0]], dtype=np.float32)
    for metric in ("cosine", "JS"):
        assert np.isfinite(prepare_vectors(x, metric)).all()
    np.testing.assert_allclose(prepare_vectors(x, "JS")[1], [1 / 3, 2 / 3, 0], atol=1e-7)


def test_prepare_concatenates_main_and_distractor_parts():
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 3), dtype=np.float32)
    np.testing.assert_array_equal(prepare_vectors([a, b], "L1"), np.concatenate([a, b]))


def test_backend_choice():
    import faiss

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_backend("auto", cpu, "Flat", "L2") == "faiss-cpu"
    gpu = faiss.get_num_gpus() > 0
    assert choose_backend("auto", cuda, "Flat", "cosine") == ("faiss-gpu" if gpu else "torch")
    assert choose_backend("auto", cuda, "IVF16,Flat", "cosine") == ("faiss-gpu" if gpu else "faiss-cpu")
    assert choose_backend("torch", cpu, "Flat", "L1") == "torch"
    with pytest.raises(ValueError, match="torch backend"):
        choose_backend("torch", cpu, "Flat", "JS")
    with pytest.raises(ValueError, match="torch backend"):
        choose_backend("torch", cpu, "HNSW32", "L2")
    with pytest.raises(ValueError, match="backend"):
        choose_backend("gpu", cpu, "Flat", "L2")
    assert make_index("Flat", "cosine", 8, backend="torch").backend == "torch-cpu"


def test_seed_draws_the_training_sample_of_train_size():
    """``--seed`` (``make_index(seed=)``) draws the ``train_size`` rows an IVF index is trained on: the trained
    centroids equal those of FAISS trained directly on the rows numpy's generator of that seed draws."""
    import faiss

    x = np.random.default_rng(5).normal(size=(600, 8)).astype(np.float32)
    centroids = {}
    for seed in (0, 1):
        index = make_index("IVF4,Flat", "L2", 8, device="cpu", backend="faiss", train_size=100, seed=seed)
        index.train(x)
        centroids[seed] = faiss.extract_index_ivf(index.index).quantizer.reconstruct_n(0, 4)
        rows = np.sort(np.random.default_rng(seed).choice(600, 100, replace=False))
        reference = faiss.index_factory(8, "IVF4,Flat", faiss.METRIC_L2)
        reference.train(x[rows])
        expected = faiss.extract_index_ivf(reference).quantizer.reconstruct_n(0, 4)
        assert np.array_equal(centroids[seed], expected)
    assert not np.array_equal(centroids[0], centroids[1])
