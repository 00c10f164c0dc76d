"""nn_maker (seed 002): selection against numpy brute force, the Fréchet distance, the script end to end."""
import csv
import contextlib
import io
import subprocess

import numpy as np
import pytest
import torch
import yaml

from conftest import exit_code
from data_retrieval.nn_maker import frechet_distance, nearest_in_pool, select
from fast_search.synthetic import write_store


def _brute_force_selection(targets, pool, k, thr):
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    dist = 1 - t @ p.T
    best = {}
    for i in range(len(t)):
        for rank, j in enumerate(np.argsort(dist[i])[:k], start=1):
            if dist[i, j] <= thr and (j not in best or dist[i, j] < best[j][1]):
                best[j] = (i, dist[i, j], rank)
    return best


@pytest.mark.parametrize("block_size", [7, 1000])
def test_selection_matches_numpy_brute_force(block_size):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))
    targets = (centres[rng.integers(0, 5, 20)] + 0.3 * rng.normal(size=(20, 12))).astype(np.float32)
    pool = np.concatenate([centres[rng.integers(0, 5, 60)] + 0.3 * rng.normal(size=(60, 12)),
                           rng.normal(size=(80, 12))]).astype(np.float32)
    distances, ids = nearest_in_pool(targets, pool, 6, block_size=block_size)
    selection = select(distances, ids, 0.3)
    expected = _brute_force_selection(targets.astype(np.float64), pool.astype(np.float64), 6, 0.3)
    assert 0 < len(expected) < len(pool)  # the threshold and K both bite
    assert selection["pool"].tolist() == sorted(expected)
    for row, target, dist, rank in zip(*(selection[key] for key in ("pool", "target", "distance", "rank"))):
        assert target == expected[row][0] and rank == expected[row][2]
        assert dist == pytest.approx(expected[row][1], abs=1e-5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pool_smaller_than_k():
    distances, ids = nearest_in_pool(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[:2], 4,
                                     block_size=1)
    assert (ids[:, 2:] == -1).all() and np.isinf(distances[:, 2:]).all()
    assert select(distances, ids, 2.0)["pool"].tolist() == [0, 1]


def _frechet_reference(a, b):
    """The symmetric form tr((A^1/2 B A^1/2)^1/2), with eigen-decompositions instead of sqrtm."""
    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = psd_sqrt(ca)
    return ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(psd_sqrt(ra @ cb @ ra))


def test_frechet_distance_against_an_independent_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.5, size=(150, 6)) * 2
    assert frechet_distance(a, b) == pytest.approx(_frechet_reference(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def _run(*args):
    """The script's ``main`` in this process (a subprocess re-imports torch, seconds on a shared machine); the
    script files themselves run in tests/test_scripts_help.py."""
    from data_retrieval.nn_maker import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = exit_code(main, [str(a) for a in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def test_nn_maker_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 16))
    targets = centres[rng.integers(0, 3, 12)] + 0.2 * rng.normal(size=(12, 16))
    pool = np.concatenate([centres[rng.integers(0, 3, 40)] + 0.2 * rng.normal(size=(40, 16)),
                           rng.normal(size=(300, 16))])
    images = tmp_path / "pool"
    images.mkdir()
    pool_names = []
    for i in range(len(pool)):
        path = images / f"p{i}.jpg"
        path.write_bytes(b"x")
        pool_names.append(str(path))
    target_store = write_store(tmp_path / "F", "target", "Toy", targets.astype(np.float32),
                               [f"t{i}.jpg" for i in range(12)])
    near_store = write_store(tmp_path / "F", "near", "Toy", pool.astype(np.float32), pool_names)
    out = tmp_path / "sel"
    args = ["--target", str(target_store), "--near", str(near_store), "--save-dir", str(out), "--nn-factor", "5",
            "--dist-thr", "0.4", "--symlink", "--block-size", "100", "--device", "cpu"]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    with open(out / "selected.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(r["distance"]) <= 0.4 for r in rows)
    assert len({r["image"] for r in rows}) == len(rows)
    # every selected image comes from the clustered part of the pool, near the targets
    assert all(int(r["image"].rsplit("/p", 1)[1].split(".")[0]) < 40 for r in rows)
    for r in rows:
        assert (out / "images" / r["image"].lstrip("/")).is_symlink()
    report = yaml.safe_load((out / "closeness.json").read_text())["closeness"]
    assert report["selected"]["to_target"] < report["random"]["to_target"]
    assert report["selected"]["frechet"] < report["random"]["frechet"]
    assert yaml.safe_load((out / "experiment.yml").read_text())["status"] == "finished"
    refused = _run(*args)
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    wrong = write_store(tmp_path / "F", "other", "Toy8", np.ones((4, 8), np.float32), list("abcd"))
    bad = _run("--target", str(wrong), "--near", str(near_store), "--save-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
