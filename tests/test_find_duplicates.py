"""find_duplicates: calibration, pairs, groups, keep rule, actions and undo, and the acceptance folder."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dedup import actions as act
from dedup.calibrate import choose_threshold, neighbour_pairs, precision_curve
from dedup.features import normalize
from dedup.find import run_find
from dedup.pairs import connected_components, cross_pairs, self_pairs, star_groups
from dedup.report import read_pairs_csv
from dedup.testset import build_folder, pair_scores, read_ground_truth, synthetic_images
from fast_search.synthetic import flip_bits, random_codes
from tests.conftest import REPO_ROOT


# ------------------------------------------------------------------------------------------- numpy references

def hamming_matrix(a, b):
    bits_a, bits_b = np.unpackbits(a, axis=1).astype(int), np.unpackbits(b, axis=1).astype(int)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(axis=2).astype(float)


def cosine_distance_matrix(a, b):
    return 1.0 - a.astype(np.float64) @ b.astype(np.float64).T


def brute_force_threshold(d_copy, d_source, sources, target, cap=np.inf):
    """The calibration rule written out with full matrices: ``d_copy[m, y]`` copy-to-collection distances,
    ``d_source[m, y]`` distances of the copy's original to the collection."""
    m, n = d_copy.shape
    is_source = np.zeros((m, n), dtype=bool)
    is_source[np.arange(m), sources] = True
    candidates = sorted(set(d_copy.ravel().tolist()))
    best = -np.inf
    for t in candidates:
        if t > cap:
            break
        tp = np.sum(d_copy[is_source] <= t)
        fp = np.sum((d_copy <= t) & (d_source > t) & ~is_source)
        precision = tp / (tp + fp) if tp + fp else 1.0
        if precision >= target:
            best = t
    return best


# ---------------------------------------------------------------------------------------------- calibration

@pytest.mark.parametrize("binary", [True, False])
def test_calibrated_threshold_matches_numpy_brute_force(binary):
    rng = np.random.default_rng(0)
    if binary:
        collection = random_codes(120, 64, seed=3)
        # a few near-duplicates already in the collection, as in real folders
        collection[100:110] = flip_bits(collection[:10], 3, seed=4)
        sources = np.repeat(np.arange(0, 40), 3)
        copies = np.concatenate([flip_bits(collection[sources[j::3]], flips, seed=5 + j)
                                 for j, flips in enumerate((2, 9, 20))])
        sources = np.concatenate([sources[j::3] for j in range(3)])
        d_copy, d_source = hamming_matrix(copies, collection), hamming_matrix(collection[sources], collection)
    else:
        collection = normalize(rng.standard_normal((150, 16)))
        collection[140:150] = normalize(collection[:10] + 0.1 * rng.standard_normal((10, 16)))
        sources = np.arange(60) % 50
        copies = normalize(collection[sources] + rng.uniform(0.05, 0.6, (60, 1)) * rng.standard_normal((60, 16)))
        d_copy = cosine_distance_matrix(copies, collection)
        d_source = cosine_distance_matrix(collection[sources], collection)
    positive, neg_copy, neg_source, kth = neighbour_pairs(copies, sources, collection, binary, k=10_000)
    assert np.all(np.isinf(kth))
    np.testing.assert_allclose(positive, d_copy[np.arange(len(sources)), sources], atol=1e-5)
    for target in (0.9, 0.97, 0.99):
        expected = brute_force_threshold(d_copy, d_source, sources, target)
        got, reached = choose_threshold(positive, neg_copy, neg_source, target=target)
        assert reached == np.isfinite(expected)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # a cap keeps the choice below it
    expected = brute_force_threshold(d_copy, d_source, sources, 0.5, cap=np.median(d_copy))
    got, _ = choose_threshold(positive, neg_copy, neg_source, target=0.5, cap=np.median(d_copy))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_precision_curve_leaves_out_duplicates_already_in_the_collection():
    # copy 0 of image 0 is 1 away from image 1, which is 2 away from image 0: a duplicate at t >= 2 only
    tp, fp, precision = precision_curve(np.array([3.0]), np.array([1.0]), np.array([2.0]), [0, 1, 2, 3])
    assert tp.tolist() == [0, 0, 0, 1]
    assert fp.tolist() == [0, 1, 0, 0]
    assert precision.tolist() == [1.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------------- pairs

def test_self_and_cross_pairs_match_brute_force():
    codes = random_codes(80, 64, seed=1)
    codes[40:60] = flip_bits(codes[:20], 4, seed=2)
    d = hamming_matrix(codes, codes)
    a, b, dist = self_pairs(codes, 10, binary=True, batch_size=7)
    expected = {(i, j) for i in range(80) for j in range(i + 1, 80) if d[i, j] <= 10}
    assert set(zip(a.tolist(), b.tolist())) == expected
    np.testing.assert_array_equal(dist, d[a, b])
    assert np.all(np.diff(dist) >= 0)

    rng = np.random.default_rng(0)
    ref = normalize(rng.standard_normal((50, 8)))
    queries = normalize(np.concatenate([ref[:10] + 0.05 * rng.standard_normal((10, 8)),
                                        rng.standard_normal((10, 8))]))
    dm = cosine_distance_matrix(queries, ref)
    q, r, dist = cross_pairs(queries, ref, 0.2, binary=False, batch_size=3)
    assert set(zip(q.tolist(), r.tolist())) == {(i, j) for i in range(20) for j in range(50) if dm[i, j] <= 0.2}
    np.testing.assert_allclose(dist, dm[q, r], atol=1e-5)


def test_groups_star_has_no_chains_components_do():
    # chain 0-1-2: 0 and 2 are not within the threshold of each other
    a, b = np.array([0, 1]), np.array([1, 2])
    assert connected_components(4, a, b) == [[0, 1, 2]]
    assert star_groups(4, a, b, order=[1, 0, 2, 3]) == [[1, 0, 2]]
    groups = star_groups(4, a, b, order=[0, 1, 2, 3])
    assert groups == [[0, 1]]  # 2 is only a match of 1, which is already grouped with 0: no chain through it
    for group in groups:
        pairs = set(zip(a.tolist(), b.tolist())) | set(zip(b.tolist(), a.tolist()))
        assert all((group[0], member) in pairs for member in group[1:])


def test_keep_rule_pixels_then_bytes_then_oldest():
    infos = [act.FileInfo("a", 10, 10, 500, 3.0), act.FileInfo("b", 20, 10, 100, 5.0),
             act.FileInfo("c", 20, 10, 100, 1.0), act.FileInfo("d", 20, 10, 900, 9.0)]
    assert act.keep_order(infos) == [3, 2, 1, 0]


# -------------------------------------------------------------------------------------------------- actions

def snapshot(*folders):
    """{relative path: sha256} of every file (links: their target) under the folders."""
    state = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            key = f"{folder.name}/{path.relative_to(folder)}"
            if path.is_symlink():
                state[key] = "link->" + os.readlink(path)
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def contents(*folders):
    return sorted(value for value in snapshot(*folders).values() if not value.startswith("link->"))


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collection")
    images = synthetic_images(14, seed=1, width=96, height=72)
    build_folder(folder, images[:4], images[4:], families=("jpeg", "scale"), seed=0)
    return folder


def run(folder, out, echo=None, **kwargs):
    lines = []
    kwargs.setdefault("max_distance", 6)
    summary = run_find(path=str(folder), output=str(out), workers=1, device="cpu", force=True,
                       echo=lines.append if echo is None else echo, **kwargs)
    return summary, lines


def test_dry_run_changes_nothing(small_collection, tmp_path):
    before = snapshot(small_collection)
    summary, lines = run(small_collection, tmp_path / "out", move_to=str(tmp_path / "moved"),
                         list_to_remove=str(tmp_path / "remove.txt"))
    assert summary["not_kept"] > 0 and summary["actions"]["dry_run"]
    assert snapshot(small_collection) == before
    assert not (tmp_path / "moved").exists() and not (tmp_path / "out" / act.UNDO_LOG).exists()
    listed = (tmp_path / "remove.txt").read_text().split()
    assert len(listed) == summary["not_kept"] and all(Path(p).is_file() for p in listed)
    assert any("dry run" in line for line in lines)


@pytest.mark.parametrize("action", ["move", "symlink"])
def test_apply_then_undo_restores_everything_and_deletes_nothing(small_collection, tmp_path, action):
    work = tmp_path / "collection"
    work.mkdir()
    for path in small_collection.rglob("*"):  # a private copy: this test changes it
        if path.is_file():
            target = work / path.relative_to(small_collection)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    dest = tmp_path / "dest"
    before, all_contents = snapshot(work), contents(work)
    flag = {"move_to" if action == "move" else "symlink_to": str(dest)}
    summary, _ = run(work, tmp_path / "out", apply=True, **flag)
    moved = summary["actions"]["files"]
    assert moved == summary["not_kept"] > 0
    assert contents(work, dest) == all_contents  # nothing deleted, nothing duplicated
    groups = __import__("json").loads((tmp_path / "out" / "groups.json").read_text())["groups"]
    for group in groups:  # the kept file stays where it was
        assert Path(group["members"][0]["path"]).is_file()
    if action == "move":
        assert len(snapshot(work)) == len(before) - moved
    else:
        assert snapshot(work) == before and all(p.is_symlink() for p in dest.rglob("*") if not p.is_dir())
    log = tmp_path / "out" / act.UNDO_LOG
    result = subprocess.run([sys.executable, "find_duplicates.py", "--undo", str(log)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{moved} action(s) reversed" in result.stdout
    assert snapshot(work) == before
    assert not any(p.is_file() or p.is_symlink() for p in dest.rglob("*"))
    assert Path(f"{log}.undone").is_file()


def test_move_never_overwrites(small_collection, tmp_path):
    work = tmp_path / "c"
    for path in small_collection.rglob("*.jpg"):
        target = work / path.relative_to(small_collection)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    summary, _ = run(work, tmp_path / "out1", list_to_remove=str(tmp_path / "list.txt"))
    first = Path((tmp_path / "list.txt").read_text().split()[0])
    blocker = tmp_path / "dest" / first.relative_to(work.resolve())
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"already here")
    summary, _ = run(work, tmp_path / "out2", move_to=str(tmp_path / "dest"), apply=True)
    assert first.is_file() and blocker.read_bytes() == b"already here"
    assert [item[0] for item in summary["actions"]["refused"]] == [str(first)]


# ----------------------------------------------------------------------------------------------- acceptance

def test_acceptance_folder_precision_with_calibrated_threshold(tmp_path):
    """50 photos, 5 edited copies of each, 100 unrelated photos (generated, small): the calibrated threshold
    (target 0.99) finds copies with pair precision >= 0.99, and prints the recall per edit family."""
    images = synthetic_images(150, seed=7, width=128, height=96)
    build_folder(tmp_path / "photos", images[:50], images[50:], seed=0)
    lines = []
    summary = run_find(path=str(tmp_path / "photos"), output=str(tmp_path / "out"), workers=1, device="cpu",
                       calibration_sample=40, echo=lines.append)
    assert summary["threshold_source"] == "calibrated" and summary["calibration"]["reached"]
    found = [(row["a"], row["b"]) for row in read_pairs_csv(tmp_path / "out" / "pairs.csv")]
    scores = pair_scores(found, read_ground_truth(tmp_path / "photos"))
    print("\n".join(lines))
    print("pair precision", scores["pair_precision"], "pair recall", scores["pair_recall"], "per family",
          scores["recall_per_family"])
    assert scores["pair_precision"] >= 0.99
    assert scores["correct_pairs"] >= 250  # at least the easy edits (jpeg, scale) of every photo
    assert any(line.strip().startswith("jpeg") and "recall" in line for line in lines)
    html = (tmp_path / "out" / "review.html").read_text()
    assert html.count("<tr>") == len(found) + 1


def test_explicit_threshold_must_fit_the_algorithm(small_collection, tmp_path):
    result = subprocess.run([sys.executable, "find_duplicates.py", str(small_collection), "--min-similarity",
                             "0.9", "--output", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--max-distance" in result.stderr


# --------------------------------------------------------------------------------------------------- cascade

def test_cascade_pairs_are_hash_shortlist_and_model_verification(small_collection, tmp_path):
    from dedup.features import Featurizer

    summary, _ = run(small_collection, tmp_path / "out", max_distance=None, verify_with="ResNet18 1x",
                     weights="random", shortlist_distance=20, min_similarity=0.97)
    hasher = Featurizer("Phash 64 bits")
    model = Featurizer("ResNet18 1x", weights="random", device="cpu")
    paths, codes = hasher.files(sorted(str(p) for p in small_collection.rglob("*.jpg")))
    vectors = model.images([__import__("helpers.image_io", fromlist=["load_image"]).load_image(p) for p in paths])
    hd, cos = hamming_matrix(codes, codes), vectors.astype(np.float64) @ vectors.astype(np.float64).T
    n = len(paths)
    expected = {frozenset((paths[i], paths[j])) for i in range(n) for j in range(i + 1, n)
                if hd[i, j] <= 20 and cos[i, j] >= 0.97 - 1e-6}
    found = {frozenset((row["a"], row["b"])) for row in read_pairs_csv(tmp_path / "out" / "pairs.csv")}
    assert found == expected
    shortlisted = {i for i in range(n) for j in range(n) if i != j and hd[i, j] <= 20}
    assert summary["cascade"]["model_images"] == len(shortlisted) < n


# ---------------------------------------------------------------------------------------------------- scale

@pytest.mark.parametrize("binary", [True, False])
def test_large_self_pairs_memory_mapped_match_brute_force(tmp_path, binary):
    from dedup.scale import large_self_pairs

    rng = np.random.default_rng(5)
    if binary:
        data = random_codes(3000, 64, seed=6)
        data[2500:] = flip_bits(data[:500], 3, seed=7)
        threshold, factory = 6.0, "BIVF16"
        full = hamming_matrix(data, data)
    else:
        data = normalize(rng.standard_normal((3000, 32)))
        data[2500:] = normalize(data[:500] + rng.uniform(0.2, 0.9, (500, 1)) * rng.standard_normal((500, 32)) / np.sqrt(32))
        threshold, factory = 0.2, "IVF16,SQ8"
        full = cosine_distance_matrix(data, data)
    np.save(tmp_path / "f.npy", data)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    a, b, d, info = large_self_pairs(mapped, threshold, binary, factory=factory, nprobe=16, batch_size=700)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(full <= threshold + 1e-9, 1)))}
    assert set(zip(a.tolist(), b.tolist())) == expected  # nprobe = nlist: exhaustive, so exact
    np.testing.assert_allclose(d, full[a, b], atol=1e-5)
    assert info["factory"] == factory and len(expected) >= 300


def test_reference_mode_pairs_only_across_and_never_touches_the_reference(small_collection, tmp_path):
    from dedup.features import Featurizer

    summary, _ = run(small_collection / "copies", tmp_path / "out", reference=str(small_collection / "originals"),
                     list_to_remove=str(tmp_path / "remove.txt"))
    hasher = Featurizer("Phash 64 bits")
    copies, qc = hasher.files(sorted(str(p) for p in (small_collection / "copies").glob("*.jpg")))
    originals, rc = hasher.files(sorted(str(p) for p in (small_collection / "originals").glob("*.jpg")))
    d = hamming_matrix(qc, rc)
    expected = {(copies[i], originals[j]) for i in range(len(copies)) for j in range(len(originals)) if d[i, j] <= 6}
    found = {(row["a"], row["b"]) for row in read_pairs_csv(tmp_path / "out" / "pairs.csv")}
    assert found == expected and expected
    removed = set((tmp_path / "remove.txt").read_text().split())
    assert removed == {a for a, _ in expected}
    assert summary["reference_images"] == len(originals)


class ThumbnailModel:
    """A transparent stand-in for a neural model: the L2-normalised 12x12 grayscale thumbnail (what the cascade
    needs of a model: ``images``, ``dim``, ``name``)."""

    name, dim, binary = "thumbnail", 144, False

    def images(self, images):
        rows = [np.asarray(image.convert("L").resize((12, 12)), dtype=np.float32).ravel() - 128 for image in images]
        return normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)


def test_calibrated_cascade_reaches_the_target_precision_by_brute_force(tmp_path):
    """calibrate_cascade's radius R and cosine threshold against the rule computed with full numpy matrices:
    R is the loosest hash distance (below the hash bulk cap) whose hash-only precision reaches the shortlist
    target; 1 - s the loosest model distance (below the model bulk cap) whose cascade precision (hash <= R and
    model <= 1 - s) reaches the target; the precision and recall it reports are the brute-force ones."""
    from dedup.calibrate import make_copies, sample_rows
    from dedup.cascade import EmbeddingCache, calibrate_cascade
    from dedup.features import Featurizer
    from helpers.image_io import load_image

    images = synthetic_images(36, seed=21, width=96, height=72)
    paths = []
    for number, image in enumerate(images):
        paths.append(str(tmp_path / f"img{number:02d}.png"))
        image.save(paths[-1])
    for number in range(4):  # duplicates already in the collection: re-saved JPEGs of the first four
        paths.append(str(tmp_path / f"dup{number:02d}.jpg"))
        images[number].save(paths[-1], quality=70)
    hasher, model = Featurizer("Phash 64 bits"), ThumbnailModel()
    paths, codes = hasher.files(paths)
    families, seed, sample, target, shortlist = ("jpeg", "text", "crop", "scale"), 3, 15, 0.9, 0.5
    radius, calibration = calibrate_cascade(hasher, model, paths, codes, EmbeddingCache(model, paths),
                                            precision=target, shortlist_precision=shortlist, sample_size=sample,
                                            families=families, seed=seed)
    # the brute force, from the same edited copies
    rows = sample_rows(len(paths), sample, seed)
    sources, _, copies = make_copies(paths, rows, families, 1, seed)
    m, n = len(copies), len(paths)
    collection = model.images([load_image(p) for p in paths])
    h_copy, h_all = hamming_matrix(hasher.images(copies), codes), hamming_matrix(codes, codes)
    d_copy = cosine_distance_matrix(model.images(copies), collection)
    d_all = cosine_distance_matrix(collection, collection)
    is_source = np.zeros((m, n), dtype=bool)
    is_source[np.arange(m), sources] = True

    def off_diagonal_quantile(matrix, quantile):
        values = np.sort(np.concatenate([np.delete(matrix[row], row) for row in rows]))
        return values, values[min(len(values) - 1, int(quantile * (n - 1) * len(rows)))]

    _, hash_cap = off_diagonal_quantile(h_all, 0.01)

    def hash_precision(r):
        tp = np.sum(h_copy[is_source] <= r)
        fp = np.sum((h_copy <= r) & (h_all[sources] > r) & ~is_source)
        return tp / (tp + fp) if tp + fp else 1.0

    expected_radius = max(r for r in np.unique(h_copy) if r <= hash_cap and hash_precision(r) >= shortlist)
    assert radius == expected_radius

    def cascade_counts(t):
        kept = (h_copy <= radius) & (d_copy <= t)
        tp = np.sum(kept & is_source)
        fp = np.sum(kept & ~is_source & (d_all[sources] > t))
        return tp, fp

    def cascade_precision(t):
        tp, fp = cascade_counts(t)
        return tp / (tp + fp) if tp + fp else 1.0

    model_values = np.concatenate([d_all[row][np.arange(n) != row] for row in rows])  # n <= 200: all picked
    model_cap = np.quantile(model_values, 0.01)
    candidates = np.unique(d_copy[h_copy <= radius])
    reaching = [t for t in candidates if t <= model_cap + 1e-9 and cascade_precision(t) >= target]
    assert reaching, "the generated set must admit a threshold (else the test checks nothing)"
    assert calibration.reached
    np.testing.assert_allclose(calibration.threshold, max(reaching), atol=1e-5)
    tp, fp = cascade_counts(calibration.threshold + 1e-7)
    assert calibration.precision >= target
    np.testing.assert_allclose(calibration.precision, tp / (tp + fp), atol=1e-9)
    np.testing.assert_allclose(calibration.recall, tp / m, atol=1e-9)
    assert 0 < calibration.recall < 1 and calibration.n_copies == m
