"""The fine-tuning benchmark's own pieces: tie-aware recall@1 (the shared metrics), Hamming distances, the negatives split, the splits."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_finetune_pretrained.py"
spec = importlib.util.spec_from_file_location("bench_finetune_pretrained", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_tie_aware_recall_hand_values():
    db = ["a", "b", "c", "d"]
    queries = ["a", "b", "c", "x"]            # "x" has no original: left out
    distances = np.array([
        [0.0, 1.0, 2.0, 3.0],                 # a: unique nearest, correct -> 1 / 1
        [1.0, 1.0, 1.0, 5.0],                 # b: tied with 2 wrong images -> pessimistic 0, expected 1/3
        [0.5, 2.0, 1.0, 0.5],                 # c: nearest are two wrong images -> 0 / 0
        [0.0, 0.0, 0.0, 0.0],
    ])
    out = bench.scores(distances, db, queries)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@1_expected"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_scores_use_explicit_identities():
    db = ["d1", "d2", "o1", "o2"]
    queries = ["o1", "o2", "o1"]
    distances = np.array([[0.9, 0.8, 0.1, 0.7], [0.2, 0.9, 0.9, 0.3], [0.5, 0.4, 0.6, 0.1]])
    out = bench.scores(distances, db, queries)
    assert out["recall@1"] == pytest.approx(1 / 3) and out["recall@1_expected"] == pytest.approx(1 / 3)
    assert out["recall@10"] == 1.0 and out["nq"] == 3
    # µAP by hand: all pairs ranked by distance, false before true on ties (DISC21):
    # 0.1 F (q2, o2), 0.1 T (q0, o1), 0.2 F, 0.3 T (q1, o2), 0.4 F, 0.5 F, 0.6 T (q2, o1), ...
    # precision at the true pairs 1/2, 2/4, 3/7 over 3 positives
    assert out["muap"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 7) / 3)


def test_hamming_distances_match_bit_counts():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    d = rng.integers(0, 256, size=(7, 8), dtype=np.uint8)
    expected = np.array([[np.unpackbits(a ^ b).sum() for b in d] for a in q])
    np.testing.assert_array_equal(bench.hamming_distances(q, d), expected)


def test_negative_columns_remove_half_of_the_originals():
    data = {"n_distractors": 3, "db_identities": np.array(["d1", "d2", "d3", "o1", "o2", "o3", "o4"])}
    keep = bench.negative_columns(data, seed=0)
    assert set(range(3)) <= set(keep.tolist())                  # distractors always stay
    assert len(keep) == 3 + 2
    np.testing.assert_array_equal(keep, bench.negative_columns(data, seed=0))


def test_family_groups():
    groups = bench.family_groups(["noise", "flip", "chain", "crop"], ("flip",))
    assert groups == {"trained": ["noise", "crop"], "held_out": ["flip"], "chain": ["chain"]}
