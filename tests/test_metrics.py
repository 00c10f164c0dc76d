"""fast_search.metrics against hand-computed values and independent references (sklearn, numpy loops)."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fast_search import metrics as M

DB = ["a", "b", "c", "d"]


def test_recall_at_k_by_hand_with_a_negative_query_and_missing_neighbours():
    queries = ["a", "b", "x", "d"]  # x has no original in the database
    ids = np.array([[0, 1], [2, 1], [0, 1], [-1, -1]])
    assert M.has_original(DB, queries).tolist() == [True, True, False, True]
    assert M.hits_at_k(ids, DB, queries, 1).tolist() == [True, False, False, False]
    # 3 queries have an original; the negative one is left out; -1 never matches
    assert M.recall_at_k(ids, DB, queries, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(ids, DB, queries, 2) == pytest.approx(2 / 3)
    assert M.target_ranks(ids, DB, queries).tolist() == [1, 2, 0, 0]
    with pytest.raises(ValueError):
        M.hits_at_k(ids, DB, queries, 3)


def test_recall_is_nan_without_any_original():
    assert math.isnan(M.recall_at_k(np.array([[0]]), DB, ["zz"], 1))


def test_per_attack_recall_by_hand():
    attacks = ["jpg_50", "crop", "crop", "crop", None]  # the ground truth's attack column
    hits = np.array([True, False, True, False, True])
    positive = np.array([True, True, True, False, True])
    table = M.per_attack_recall(hits, attacks, positive)
    assert table == {"(none)": {"recall": 1.0, "n": 1}, "crop": {"recall": 0.5, "n": 2},
                     "jpg_50": {"recall": 1.0, "n": 1}}


def test_candidate_pairs_merge_images_of_one_identity():
    db = ["a", "a", "b"]  # two images of identity a
    distances = np.array([[0.2, 0.1, 0.5]])
    ids = np.array([[0, 1, 2]])
    dist, positive, n_pos = M.candidate_pairs(distances, ids, db, ["a"])
    assert sorted(zip(dist.tolist(), positive.tolist())) == [(0.1, True), (0.5, False)]
    assert n_pos == 1


def test_micro_average_precision_by_hand():
    # ranks: pos (P=1), neg, pos (P=2/3); 3 queries have an original -> AP = (1 + 2/3) / 3
    d = np.array([0.1, 0.2, 0.3])
    pos = np.array([True, False, True])
    assert M.micro_average_precision(d, pos, 3) == pytest.approx((1 + 2 / 3) / 3)
    precision, recall, dist = M.precision_recall_curve(d, pos, 3)
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3])
    assert M.recall_at_precision(d, pos, 3, 0.9) == (pytest.approx(1 / 3), 0.1)
    assert M.recall_at_precision(d, pos, 3, 0.6) == (pytest.approx(2 / 3), 0.3)
    assert math.isnan(M.micro_average_precision(d, pos, 0))


def test_ties_are_ranked_pessimistically():
    # equal distances: the false pair is ranked first (DISC21), so AP = 1/2, not 1
    assert M.micro_average_precision(np.array([0.1, 0.1]), np.array([True, False]), 1) == pytest.approx(0.5)
    assert M.micro_average_precision(np.array([0.1, 0.1]), np.array([False, True]), 1) == pytest.approx(0.5)


def test_micro_average_precision_matches_sklearn_without_ties():
    rng = np.random.default_rng(3)
    d = rng.random(400)
    pos = rng.random(400) < 0.3
    n_pos = int(pos.sum()) + 25  # 25 originals never retrieved
    # sklearn's AP normalises by the positives it sees; DISC21's by all queries with an original
    reference = average_precision_score(pos, -d) * pos.sum() / n_pos
    assert M.micro_average_precision(d, pos, n_pos) == pytest.approx(reference, rel=1e-12)


def test_threshold_curve_by_hand():
    d = np.array([0.1, 0.2, 0.3])
    pos = np.array([True, False, True])
    curve = M.threshold_curve(d, pos, 3, thresholds=[0.05, 0.1, 0.25, 0.3])
    assert math.isnan(curve["precision"][0])
    np.testing.assert_allclose(curve["precision"][1:], [1, 0.5, 2 / 3])
    np.testing.assert_allclose(curve["recall"], [0, 1 / 3, 1 / 3, 2 / 3])
    default = M.threshold_curve(d, pos, 3)
    assert default["threshold"] == [0.1, 0.2, 0.3]


def test_threshold_curve_matches_a_loop():
    rng = np.random.default_rng(5)
    d = rng.random(300)
    pos = rng.random(300) < 0.4
    curve = M.threshold_curve(d, pos, 150, n_points=20)
    for t, p, r in zip(curve["threshold"], curve["precision"], curve["recall"]):
        selected = d <= t
        assert p == pytest.approx((selected & pos).sum() / selected.sum())
        assert r == pytest.approx((selected & pos).sum() / 150)


def test_ann_recall_by_hand():
    exact = np.array([[1, 2], [3, 4]])
    approx = np.array([[2, 5], [4, 3]])
    assert M.ann_recall(approx, exact, 2) == pytest.approx(0.75)
    assert M.ann_recall(approx, exact, 1) == 0.0
    assert M.ann_recall(np.array([[-1, 1]]), np.array([[1, 2]]), 2) == pytest.approx(0.5)
