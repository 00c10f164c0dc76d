"""The realistic ANN benchmark's pieces: synthesis fitted to "real" features (quantile matching of the copies'
cosines, pairwise statistics) and exact re-ranking, against numpy references."""
import numpy as np
import pytest

from fast_search import synthetic as S
from fast_search.index import RerankedIndex, exact_rerank, make_index, prepare_vectors


def brute_force(db, queries, k):
    """numpy reference: cosine distances of the k nearest, ties by row id."""
    dist = 1.0 - queries.astype(np.float64) @ db.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(db)), dist.shape), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


@pytest.fixture(scope="module")
def fake_real():
    """Stand-in for CNN features: non-negative, anisotropic, 300 images and 3 edited copies of 40 of them."""
    rng = np.random.default_rng(5)
    d = 24
    spectrum = 1.0 / np.arange(1, d + 1)
    db = np.abs(0.8 + rng.standard_normal((300, d)) * spectrum)
    sources = np.repeat(np.arange(40), 3)
    copies = db[sources] + rng.standard_normal((len(sources), d)) * rng.uniform(0.05, 0.6, (len(sources), 1))
    return db.astype(np.float32), np.abs(copies).astype(np.float32), sources


@pytest.fixture(scope="module")
def fitted(fake_real):
    db, copies, sources = fake_real
    return S.fit_feature_model(db, copies, sources, shares=(0.0, 0.5), noises=(0.0, 0.2), sample=300)


def test_planted_copies_match_the_target_cosine_quantiles(fake_real, fitted):
    db, copies, sources = fake_real
    model, _ = fitted
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    target = np.einsum("ij,ij->i", unit(copies.astype(np.float64)), unit(db[sources].astype(np.float64)))
    originals = model.database(4000, seed=3)
    queries, drawn = model.queries(originals, seed=4)
    achieved = np.einsum("ij,ij->i", queries.astype(np.float64), originals.astype(np.float64))
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(achieved, drawn, atol=1e-5)  # each copy sits at its drawn cosine
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(achieved, levels), np.quantile(target, levels), atol=0.01)


def test_fitted_database_matches_the_real_pairwise_median(fake_real, fitted):
    db, _, _ = fake_real
    model, report = fitted
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    real = (unit @ unit.T)[np.triu_indices(len(db), 1)]
    assert report["real"]["database_pairwise"]["q50"] == pytest.approx(np.median(real))
    synthetic = S.pairwise_cosines(model.database(3000, seed=7), 50_000, seed=1)
    assert np.median(synthetic) == pytest.approx(np.median(real), abs=0.02)
    negatives = model.negatives(50, 3000, seed=7)
    np.testing.assert_allclose(np.linalg.norm(negatives, axis=1), 1.0, atol=1e-5)


def test_quantile_sample_reproduces_the_quantiles():
    rng = np.random.default_rng(0)
    values = rng.beta(8, 1.5, 500)
    drawn = S.quantile_sample(values, 2000, np.random.default_rng(1))
    levels = np.linspace(0.02, 0.98, 25)
    np.testing.assert_allclose(np.quantile(drawn, levels), np.quantile(values, levels), atol=0.01)


@pytest.fixture(scope="module")
def small_db():
    rng = np.random.default_rng(11)
    db = prepare_vectors(rng.standard_normal((2000, 16)).astype(np.float32), "cosine")
    queries = prepare_vectors((db[:50] + 0.3 * rng.standard_normal((50, 16))).astype(np.float32), "cosine")
    return db, queries


def test_rerank_returns_flat_results_when_candidates_hold_the_neighbours(small_db, tmp_path):
    db, queries = small_db
    k = 5
    ref_d, ref_i = brute_force(db, queries, k)
    rng = np.random.default_rng(2)
    extra = rng.integers(0, len(db), (len(queries), 40))
    candidates = np.concatenate([extra, ref_i, ref_i[:, :2], np.full((len(queries), 3), -1)], axis=1)
    candidates = np.take_along_axis(candidates, rng.permuted(np.tile(np.arange(candidates.shape[1]),
                                                                     (len(queries), 1)), axis=1), axis=1)
    np.save(tmp_path / "db.npy", db)
    stored = np.load(tmp_path / "db.npy", mmap_mode="r", allow_pickle=False)
    dist, ids = exact_rerank(stored, queries, candidates, k)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)


def test_rerank_pads_when_fewer_candidates_than_k(small_db):
    db, queries = small_db
    dist, ids = exact_rerank(db, queries[:2], np.array([[3, -1, 3], [-1, -1, -1]]), 2)
    assert ids.tolist() == [[3, -1], [-1, -1]]
    assert np.isinf(dist[0, 1]) and np.isinf(dist[1]).all()
    assert dist[0, 0] == pytest.approx(1 - float(db[3] @ queries[0]), abs=1e-6)


@pytest.fixture
def one_faiss_thread():
    """One OpenMP thread: on a loaded 2-core machine FAISS's thread team can wait minutes for a core."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_reranked_ivf_equals_flat_with_every_list_probed(small_db, one_faiss_thread):
    db, queries = small_db
    base = make_index("IVF8,Flat", "cosine", db.shape[1], backend="faiss")
    base.train(db)
    base.add(db)
    index = RerankedIndex(base, db, k_factor=4)
    index.set_search_params(nprobe=8)
    dist, ids = index.search(queries, 5)
    ref_d, ref_i = brute_force(db, queries, 5)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)
