"""The audit cases: each builds its input from :mod:`tests.audit.corpus` in an empty folder and runs one entry point.

Cases named ``rowNN_...`` pin the failures of the first audit (issue 12, the table's row NN); the others pin what
passed it. Scripts are called in this process through their ``main(argv)``; a subprocess only where the behaviour
needs one (``kill -9``, another user).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import REPO_ROOT, NotApplicable, call, case, expect_error, expect_ok
from .corpus import (BAD_FILES, assert_payload_never_ran, malicious_checkpoint, marker, pickled_npy,
                     truncated_checkpoint, unsafe_yaml, write_bad_file, write_odd_images, write_photos)

HASH = "Dhash 64 bits"
FLOAT = "Toy Net"


# --------------------------------------------------------------------------------------------------------------
# Entry points (the root scripts' main functions)
# --------------------------------------------------------------------------------------------------------------
def _extract(argv):
    import extract_features

    return call(extract_features.main, argv)


def _search(argv):
    import search_experiment

    return call(search_experiment.main, argv)


def _explore(argv):
    import explore_neighbors

    return call(explore_neighbors.main, argv)


def _process(argv):
    import process

    return call(process.main, argv)


def _clustering(module_name):
    def run(argv):
        import importlib

        from clustering.pipeline import CLI_ERRORS
        from helpers.cli import run_cli

        module = importlib.import_module(f"clustering.{module_name}")
        return call(lambda a: run_cli(module.build_parser(), module.run, a, errors=CLI_ERRORS), argv)
    return run


def _finetune(argv):
    import finetune

    return call(finetune.main, argv)


def _evaluate_finetuning(argv):
    import evaluate_finetuning

    return call(evaluate_finetuning.main, argv)


def _attacks(argv):
    from data_retrieval import generate_attacks

    return call(generate_attacks.main, argv)


def _memes(argv):
    from data_retrieval import build_memes

    return call(build_memes.main, argv)


def _kaggle(argv):
    from data_retrieval import kaggle_splitter

    return call(kaggle_splitter.main, argv)


def _demo(argv):
    import demo

    return call(demo.main, argv)


ENTRY_POINTS = {
    "extract_features.py": _extract, "search_experiment.py": _search, "explore_neighbors.py": _explore,
    "process.py": _process, "hierarchical.py": _clustering("hierarchical"), "DBSCAN.py": _clustering("density"),
    "kmeans.py": _clustering("kmeans"), "finetune.py": _finetune, "evaluate_finetuning.py": _evaluate_finetuning,
    "data_retrieval/generate_attacks.py": _attacks, "data_retrieval/build_memes.py": _memes,
    "data_retrieval/kaggle_splitter.py": _kaggle, "demo.py": _demo,
}


# --------------------------------------------------------------------------------------------------------------
# Small builders
# --------------------------------------------------------------------------------------------------------------
def copy_name(original, attack):
    """The file name of an attacked copy of ``original`` (the ground-truth convention, in one place)."""
    return f"{original}_{attack}.png"


def _hash_argv(dataset, out, *extra):
    return ["--algo", HASH, "--dataset", dataset, "--out", out, "--workers", "0", "--no-progress", *extra]


def _store_dir(root, dataset, algorithm=HASH):
    from helpers.feature_store import feature_dir

    return feature_dir(dataset, algorithm, root)


def _skipped(folder):
    """``{file name: reason}`` of a run's ``skipped.txt`` (names with a line break appear escaped: ``\\n``)."""
    path = Path(folder) / "skipped.txt"
    assert path.is_file(), f"no {path}"
    items = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, reason = line.partition("\t")
        items[Path(name).name] = reason
    return items


def _listed_name(name):
    """How ``name`` appears in skipped.txt (one entry per line: line breaks escaped, bad UTF-8 backslashed)."""
    return name.replace("\n", "\\n").encode("utf-8", "backslashreplace").decode("utf-8")


def _stores(tmp, n_main=12, n_queries=6, dim=16, dataset="main", queries="queries", seed=0):
    """Feature stores of a float algorithm: ``n_main`` originals and ``n_queries`` copies of the first ones."""
    from fast_search.synthetic import write_store

    rng = np.random.default_rng(seed)
    root = tmp / "Features"
    db = rng.normal(size=(n_main, dim)).astype(np.float32)
    names = [f"img{i}.png" for i in range(n_main)]
    write_store(root, dataset, FLOAT, db, names)
    q = db[:n_queries] + 0.01 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    write_store(root, queries, FLOAT, q, [copy_name(f"img{i}", "blur") for i in range(n_queries)])
    return root


def _search_argv(tmp, root, name="exp", *extra, main="main", queries="queries"):
    return [name, "--algo", FLOAT, "--main-dataset", main, "--query-dataset", queries, "--features-root", root,
            "--results-root", tmp / "Results", "--ks", "1", "--repeats", "1", "--device", "cpu", *extra]


def _explore_argv(tmp, root, name="gallery", *extra):
    return ["--name", name, "--algo", FLOAT, "--main-dataset", "main", "--query-dataset", "queries",
            "--features-root", root, "--neighbors-root", tmp / "Neighbors", "--k", "2", "--device", "cpu", *extra]


def _clustering_argv(tmp, root, *extra, dataset="main"):
    return ["--algo", *FLOAT.split(), "--dataset", dataset, "--features-root", root, "--results-dir",
            tmp / "Clustering", "--device", "cpu", *extra]


def _finished(folder):
    from helpers.experiment import is_finished

    return is_finished(folder)


# --------------------------------------------------------------------------------------------------------------
# Rows 1, 3, 4 (and bombs, passing): every bad file is skipped and listed with its reason, the rest extracted
# --------------------------------------------------------------------------------------------------------------
_ROW_OF = {"truncated.jpg": 1, "truncated.png": 1, "garbage.jpg": 1, "bomb.png": None, "empty.jpg": None,
           "text.png": None, "dangling.png": 3, "loop.jpg": 3, "line\nbreak.png": 4, "fifo.jpg": None,
           "latin\udce9.png": None}


def _bad_file_case(bad_name):
    row = _ROW_OF[bad_name]
    label = bad_name.replace("\n", "-newline-").encode("ascii", "replace").decode()

    @case(f"{'row%02d' % row if row else 'pinned'}_extract_skips_{label}", "extract_features.py", row)
    def run(tmp):
        folder = tmp / "photos"
        good = write_photos(folder, 2)
        write_bad_file(folder, bad_name)
        out = tmp / "Features"
        expect_ok(_extract(_hash_argv(folder, out)))
        store = _store_dir(out, folder)
        names = (store / "names.txt").read_text(encoding="utf-8").splitlines()
        assert [Path(n).name for n in names] == [p.name for p in good], names
        skipped = _skipped(store)
        assert BAD_FILES[bad_name] in skipped.get(_listed_name(bad_name), ""), skipped
    return run


for _name in BAD_FILES:
    _bad_file_case(_name)


@case("pinned_extract_converts_odd_modes_and_sizes_shell_names_inert", "extract_features.py")
def _odd_images(tmp):
    folder = tmp / "odd"
    names = write_odd_images(folder)
    out = tmp / "Features"
    cwd = os.getcwd()
    os.chdir(tmp)  # a shell-interpreted name would create PAYLOAD_RAN here
    try:
        expect_ok(_extract(_hash_argv(folder, out)))
    finally:
        os.chdir(cwd)
    store = _store_dir(out, folder)
    stored = sorted(Path(n).name for n in (store / "names.txt").read_text(encoding="utf-8").splitlines())
    assert stored == names and not (store / "skipped.txt").exists()
    assert_payload_never_ran(tmp, folder)


@case("row01_neural_extraction_skips_partial_files", "extract_features.py", 1)
def _neural_partial(tmp):
    folder = tmp / "photos"
    write_photos(folder, 2)
    for name in ("truncated.jpg", "garbage.jpg", "bomb.png"):
        write_bad_file(folder, name)
    out = tmp / "Features"
    expect_ok(_extract(["--algo", "ResNet18 1x", "--weights", "random", "--dataset", folder, "--out", out,
                        "--workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "2"]))
    store = _store_dir(out, folder, "ResNet18 1x")
    assert len((store / "names.txt").read_text().splitlines()) == 2
    skipped = _skipped(store)
    assert "truncated or corrupt" in skipped["truncated.jpg"] and "truncated or corrupt" in skipped["garbage.jpg"]
    assert "exceeds the limit" in skipped["bomb.png"]


@case("row02_max_pixels_flag_of_extract_features", "extract_features.py", 2)
def _max_pixels_extract(tmp):
    folder = tmp / "photos"
    write_photos(folder, 1, prefix="small", size=(40, 40))
    write_photos(folder, 1, prefix="big", size=(100, 100))
    out = tmp / "Features"
    expect_ok(_extract(_hash_argv(folder, out, "--max-pixels", "5000")))
    store = _store_dir(out, folder)
    assert (store / "names.txt").read_text().splitlines() == [str(folder / "small0.png")]
    reason = _skipped(store)["big0.png"]
    assert "exceeds the limit of 5000" in reason and "--max-pixels" in reason  # names a flag that exists
    expect_ok(_extract(_hash_argv(folder, out, "--max-pixels", "0", "--force")))  # 0: no limit
    assert len((store / "names.txt").read_text().splitlines()) == 2


@case("row02_every_image_reading_script_has_max_pixels", "all scripts", 2)
def _max_pixels_everywhere(tmp):
    for script in ("extract_features.py", "finetune.py", "evaluate_finetuning.py", "explore_neighbors.py",
                   "hierarchical.py", "DBSCAN.py", "kmeans.py", "data_retrieval/generate_attacks.py",
                   "data_retrieval/build_memes.py"):
        result = ENTRY_POINTS[script](["-h"])
        assert result.code == 0 and "--max-pixels" in result.out, script


# --------------------------------------------------------------------------------------------------------------
# Row 1/3 for the other readers: attacks, memes, fine-tuning, fine-tuning evaluation
# --------------------------------------------------------------------------------------------------------------
_READER_BAD = ("truncated.jpg", "garbage.jpg", "dangling.png", "bomb.png")


def _bad_folder(folder, n=3, size=(64, 48)):
    good = write_photos(folder, n, size=size)
    for name in _READER_BAD:
        write_bad_file(folder, name)
    return good


def _assert_listed(folder):
    skipped = _skipped(folder)
    for name in _READER_BAD:
        assert BAD_FILES[name] in skipped.get(name, ""), (name, skipped)


@case("row01_generate_attacks_skips_and_lists", "data_retrieval/generate_attacks.py", 1)
def _attacks_bad(tmp):
    good = _bad_folder(tmp / "originals")
    out = tmp / "attacks"
    expect_ok(_attacks([tmp / "originals", out, "--families", "grayscale", "--workers", "1", "--no-progress"]))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p.stem}_grayscale.png" for p in good)
    _assert_listed(out)


@case("row01_build_memes_skips_and_lists", "data_retrieval/build_memes.py", 1)
def _memes_bad(tmp):
    good = _bad_folder(tmp / "templates")
    out = tmp / "out"
    expect_ok(_memes([tmp / "templates", out, "--per-template", "1", "--workers", "1", "--no-progress"]))
    assert len(list((out / "Templates").glob("*.jpg"))) == len(good)
    _assert_listed(out)


_TINY = ["--backbone", "ResNet18 1x", "--model", "random", "--size", "32", "--batch_size", "2", "--workers", "0",
         "--device", "cpu", "--log_every", "1", "--epochs", "1", "--mode", "copy_detection"]


@case("row01_finetune_skips_and_lists", "finetune.py", 1)
def _finetune_bad(tmp):
    _bad_folder(tmp / "train", n=4)
    log_dir = tmp / "run"
    expect_ok(_finetune(["--train_dataset", tmp / "train", "--log_dir", log_dir] + _TINY))
    _assert_listed(log_dir)


def _checkpoint(tmp):
    """A real (tiny) fine-tuning checkpoint, trained for one epoch on 4 photos."""
    write_photos(tmp / "train", 4)
    log_dir = tmp / "run"
    expect_ok(_finetune(["--train_dataset", tmp / "train", "--log_dir", log_dir] + _TINY))
    return next(Path(f"{log_dir}_models").glob("*/epoch_1.pth"))


@case("row01_evaluate_finetuning_skips_and_lists", "evaluate_finetuning.py", 1)
def _evaluate_bad(tmp):
    checkpoint = _checkpoint(tmp)
    data = tmp / "eval"
    good = _bad_folder(data, n=2)
    from PIL import Image

    for path in good:  # an original and a copy of it: a cluster
        Image.open(path).save(data / copy_name(path.stem, "copy"))
    out = tmp / "evaluation"
    expect_ok(_evaluate_finetuning(["--checkpoints", checkpoint, "--dataset", data, "--out", out, "--device",
                                    "cpu"]))
    _assert_listed(out)
    # and a malicious --baseline checkpoint (the one flag that needs a real --checkpoints to be reached)
    evil = tmp / "evil.pth"
    malicious_checkpoint(evil, marker(tmp))
    expect_error(_evaluate_finetuning(["--checkpoints", checkpoint, "--baseline", evil, "--dataset", data, "--out",
                                       tmp / "evaluation2", "--device", "cpu"]), "evil.pth", "Python objects")
    assert_payload_never_ran(tmp)


# --------------------------------------------------------------------------------------------------------------
# Rows 6-9 (and pickled .npy, passing): a damaged feature store is one error line naming the file
# --------------------------------------------------------------------------------------------------------------
def _damage(store, kind, tmp):
    features = store / "features.npy"
    if kind == "truncated":
        data = features.read_bytes()
        features.write_bytes(data[: len(data) - 40])
    elif kind == "meta-garbage":
        (store / "meta.json").write_text("{{{ not json")
    elif kind == "meta-empty":
        (store / "meta.json").write_text("")
    elif kind == "1-d":
        np.save(features, np.zeros(12, np.float32))
    elif kind == "text":
        features.write_text("not an array\n")
    elif kind == "pickled":
        pickled_npy(features, marker(tmp))


_DAMAGE = {"truncated": (6, "features.npy", "is truncated"), "meta-garbage": (7, "meta.json", "not valid JSON"),
           "meta-empty": (7, "meta.json", "not valid JSON"), "1-d": (8, "features.npy", "2-D array"),
           "text": (9, "features.npy", "not a NumPy array file"),
           "pickled": (None, "features.npy", "pickled Python objects")}


def _damaged_store_case(kind, script):
    row, file, message = _DAMAGE[kind]

    @case(f"{'row%02d' % row if row else 'pinned'}_{kind}_store_{script.split('.')[0]}", script, row)
    def run(tmp):
        root = _stores(tmp)
        store = _store_dir(root, "main", FLOAT)
        _damage(store, kind, tmp)
        if script == "search_experiment.py":
            result = _search(_search_argv(tmp, root))
        elif script == "explore_neighbors.py":
            result = _explore(_explore_argv(tmp, root))
        else:
            result = ENTRY_POINTS[script](_clustering_argv(tmp, root, *(["--clusters", "3"] if script ==
                                                                        "hierarchical.py" else ["--k", "3"])))
        line = expect_error(result, str(store / file), message)
        assert "--force" in line or "extract_features.py" in line  # how to rebuild it
        assert_payload_never_ran(tmp)
    return run


for _kind in _DAMAGE:
    for _script in ("search_experiment.py", "explore_neighbors.py", "hierarchical.py", "kmeans.py"):
        _damaged_store_case(_kind, _script)


# --------------------------------------------------------------------------------------------------------------
# Row 10 and malicious checkpoints via every flag (passing): refused in one line, payload never run
# --------------------------------------------------------------------------------------------------------------
def _resume_case(kind):
    @case(f"row10_finetune_resume_{kind}_checkpoint", "finetune.py", 10)
    def run(tmp):
        write_photos(tmp / "train", 4)
        log_dir = tmp / "run"
        run_dir = Path(f"{log_dir}_models") / "2024-01-01_00-00-00"
        run_dir.mkdir(parents=True)
        if kind == "malicious":
            malicious_checkpoint(run_dir / "epoch_1.pth", marker(tmp))
        else:
            truncated_checkpoint(run_dir / "epoch_1.pth")
        result = _finetune(["--train_dataset", tmp / "train", "--log_dir", log_dir, "--resume"] + _TINY)
        expect_error(result, "epoch_1.pth", "Python objects" if kind == "malicious" else "truncated")
        assert not _finished(log_dir)
        assert_payload_never_ran(tmp)
    return run


for _kind in ("malicious", "truncated"):
    _resume_case(_kind)


def _checkpoint_flag_case(script, flag_argv):
    @case(f"pinned_malicious_checkpoint_via_{script.split('.')[0]}_{flag_argv[0].strip('-')}", script)
    def run(tmp):
        bad = tmp / "evil.pth"
        malicious_checkpoint(bad, marker(tmp))
        write_photos(tmp / "photos", 3)
        argv = [str(a).replace("EVIL", str(bad)).replace("DATA", str(tmp / "photos")).replace("TMP", str(tmp))
                for a in flag_argv]
        result = ENTRY_POINTS[script](argv)
        expect_error(result, "evil.pth")
        assert_payload_never_ran(tmp)
    return run


for _script, _argv in [
    ("extract_features.py", ["--checkpoint", "EVIL", "--dataset", "DATA", "--out", "TMP/F", "--workers", "0"]),
    ("extract_features.py", ["--weights", "EVIL", "--algo", "ResNet18 1x", "--dataset", "DATA", "--out", "TMP/F",
                             "--workers", "0"]),
    ("finetune.py", ["--model", "EVIL", "--train_dataset", "DATA", "--log_dir", "TMP/run", "--size", "32",
                     "--batch_size", "2", "--workers", "0", "--device", "cpu", "--epochs", "1"]),
    ("evaluate_finetuning.py", ["--checkpoints", "EVIL", "--dataset", "DATA", "--out", "TMP/ev", "--device", "cpu"]),
]:
    _checkpoint_flag_case(_script, _argv)


# --------------------------------------------------------------------------------------------------------------
# Rows 11-12 (and !!python/object YAML, passing): config files
# --------------------------------------------------------------------------------------------------------------
def _config_case(script, kind):
    @case(f"row11_config_{kind}_{script.split('/')[-1].split('.')[0]}", script, 11)
    def run(tmp):
        path = tmp / "config.yml"
        expected = {"missing": "config file not found", "list": "must hold a mapping",
                    "unsafe": "not valid (safe) YAML", "folder": "is a folder"}[kind]
        if kind == "list":
            path.write_text("- a\n- b\n")
        elif kind == "unsafe":
            unsafe_yaml(path, marker(tmp))
        elif kind == "folder":
            path.mkdir()
        result = ENTRY_POINTS[script](["--config", path])
        line = expect_error(result, expected)
        assert line.startswith("error: ") and result.err.count("\n") == 1, result.err
        assert_payload_never_ran(tmp)
    return run


for _script in ENTRY_POINTS:
    for _kind in ("missing", "list", "unsafe", "folder"):
        _config_case(_script, _kind)


@case("row12_wrong_typed_config_value_search", "search_experiment.py", 12)
def _wrong_type(tmp):
    root = _stores(tmp)
    config = tmp / "c.yml"
    config.write_text("repeats: [1, 2]\n")
    from_file = expect_error(_search(_search_argv(tmp, root) + ["--config", config]), "argument --repeats")
    from_flag = expect_error(_search(_search_argv(tmp, root) + ["--repeats", "[1, 2]"]), "argument --repeats")
    assert from_file.endswith(from_flag.split("error: ", 1)[1]), (from_file, from_flag)
    assert not (tmp / "Results" / "exp").exists()


# --------------------------------------------------------------------------------------------------------------
# Rows 13-18: empty inputs, impossible requests
# --------------------------------------------------------------------------------------------------------------
@case("row13_generate_attacks_empty_folder", "data_retrieval/generate_attacks.py", 13)
def _attacks_empty(tmp):
    (tmp / "empty").mkdir()
    expect_error(_attacks([tmp / "empty", tmp / "out", "--workers", "1", "--no-progress"]), "no image")


@case("row13_build_memes_empty_folder", "data_retrieval/build_memes.py", 13)
def _memes_empty(tmp):
    (tmp / "empty").mkdir()
    expect_error(_memes([tmp / "empty", tmp / "out", "--workers", "1", "--no-progress"]), "no template image")


@case("row13_generate_attacks_no_readable_image", "data_retrieval/generate_attacks.py", 13)
def _attacks_unreadable(tmp):
    write_bad_file(tmp / "bad", "truncated.jpg")
    expect_error(_attacks([tmp / "bad", tmp / "out", "--families", "grayscale", "--workers", "1", "--no-progress"]),
                 "could be read")
    assert "truncated.jpg" in _skipped(tmp / "out")


@case("row14_extract_no_readable_image", "extract_features.py", 14)
def _extract_unreadable(tmp):
    for name in ("truncated.jpg", "text.png", "empty.jpg"):
        write_bad_file(tmp / "bad", name)
    out = tmp / "Features"
    expect_error(_extract(_hash_argv(tmp / "bad", out)), "no readable image", "no feature store written")
    assert not list(out.rglob("names.txt")) and not list(out.rglob("*.partial"))  # no store, no leftovers


@case("row15_search_zero_query_rows", "search_experiment.py", 15)
def _zero_queries(tmp):
    from fast_search.synthetic import write_store

    root = _stores(tmp)
    write_store(root, "none", FLOAT, np.zeros((0, 16), np.float32), [])
    expect_error(_search(_search_argv(tmp, root, queries="none")), "0 rows")
    assert not _finished(tmp / "Results" / "exp") and not (tmp / "Results" / "exp").exists()


@case("row15_search_no_query_with_original", "search_experiment.py", 15)
def _no_original(tmp):
    from fast_search.synthetic import write_store

    root = _stores(tmp)
    write_store(root, "strangers", FLOAT, np.ones((3, 16), np.float32),
                [copy_name(f"stranger{i}", "blur") for i in range(3)])
    expect_error(_search(_search_argv(tmp, root, queries="strangers")), "has its original")
    assert not (tmp / "Results" / "exp").exists()


@case("row16_ivf_lists_exceed_database", "search_experiment.py", 16)
def _ivf_too_big(tmp):
    root = _stores(tmp, n_main=10)
    result = _search(_search_argv(tmp, root, "exp", "--experiment", "index", "--index", "IVF4096,Flat"))
    expect_error(result, "IVF4096", "at most IVF10")
    assert not (tmp / "Results" / "exp").exists()
    # the same through the gallery's --index
    expect_error(_explore(_explore_argv(tmp, root, "gallery", "--index", "IVF4096,Flat")), "IVF4096")


def _impossible_case(script, argv):
    @case(f"row17_impossible_clusters_{script.split('.')[0]}", script, 17)
    def run(tmp):
        root = _stores(tmp)
        expect_error(ENTRY_POINTS[script](_clustering_argv(tmp, root, *argv)), "could be made", "not marked finished")
        records = list((tmp / "Clustering").rglob("experiment.yml"))
        assert records and not any(_finished(p.parent) for p in records)
        # the next valid request runs without --force
        valid = ["--clusters", "3"] if script == "hierarchical.py" else ["--k", "3"]
        expect_ok(ENTRY_POINTS[script](_clustering_argv(tmp, root, *valid)))
    return run


_impossible_case("hierarchical.py", ["--clusters", "500", "1000"])
_impossible_case("kmeans.py", ["--k", "500", "1000"])


@case("row18_extract_name_with_a_hash", "extract_features.py", 18)
def _name_with_hash(tmp):
    write_photos(tmp / "photos", 2)
    out = tmp / "Features"
    expect_error(_extract(_hash_argv(tmp / "photos", out, "--name", "my hash")), "--name")
    assert not out.exists() or not list(out.rglob("names.txt"))


# --------------------------------------------------------------------------------------------------------------
# Row 19: kill -9 of generate_attacks' main process
# --------------------------------------------------------------------------------------------------------------
def _children(pid):
    children = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return children


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).glob("*.png")}


@case("row19_kill_9_generate_attacks_workers_exit", "data_retrieval/generate_attacks.py", 19)
def _kill_attacks(tmp):
    if not Path("/proc/self/task").is_dir():
        raise AssertionError("needs Linux /proc to find the worker processes")
    write_photos(tmp / "originals", 8, size=(256, 192))
    families = ["--families", "noise", "filter", "grayscale"]
    out = tmp / "attacks"
    command = [sys.executable, str(REPO_ROOT / "data_retrieval" / "generate_attacks.py"), tmp / "originals", out,
               "--workers", "2", "--no-progress", *families]
    process = subprocess.Popen([str(c) for c in command], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    workers = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            workers = _children(process.pid)
            if len(workers) >= 2 and out.is_dir() and any(out.glob("*.png")):
                break
            time.sleep(0.05)
        assert process.poll() is None and workers, "the run ended before it could be killed; give it more work"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 20  # a liveness bound, not a speed claim: workers used to write on for ~1.5 s
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.05)
        survivors = [pid for pid in workers if _alive(pid)]
        assert not survivors, f"workers {survivors} outlived their killed parent"
    finally:
        if process.poll() is None:
            process.kill()
    # Still correct: the re-run completes the outputs, byte-identical to an uninterrupted run.
    expect_ok(_attacks([tmp / "originals", out, "--workers", "1", "--no-progress", *families]))
    expect_ok(_attacks([tmp / "originals", tmp / "reference", "--workers", "1", "--no-progress", *families]))
    assert _hashes(out) == _hashes(tmp / "reference") and not list(out.glob(".*.part"))


# --------------------------------------------------------------------------------------------------------------
# Row 20: an unreadable file, as a non-root user
# --------------------------------------------------------------------------------------------------------------
_AS_NOBODY = """
import sys
sys.path.insert(0, {repo!r})
from helpers.image_io import ImageLoadError, SkipReport, list_images, load_image
report = SkipReport()
kept = []
for path in list_images({folder!r}, report=report):
    try:
        load_image(path)
        kept.append(path.name)
    except ImageLoadError as exc:
        report.add(path, str(exc))
print(sorted(kept))
print(report.items)
"""


def _locked_folder(folder):
    """Two photos and ``locked0.png``, the file the test makes unreadable."""
    write_photos(folder, 2)
    write_photos(folder, 1, prefix="locked")
    return folder / "locked0.png"


@case("row20_unreadable_file_skipped_and_listed", "every reader", 20)
def _unreadable(tmp):
    """extract_features on a folder with a file that ``open`` refuses (what chmod 000 gives a non-root user)."""
    import builtins

    folder = tmp / "photos"
    locked = _locked_folder(folder)
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    out = tmp / "Features"
    builtins.open = denying_open
    try:
        expect_ok(_extract(_hash_argv(folder, out)))
    finally:
        builtins.open = real_open
    store = _store_dir(out, folder)
    assert len((store / "names.txt").read_text().splitlines()) == 2
    assert "not readable (permission denied)" in _skipped(store)["locked0.png"]


@case("row20_chmod_000_as_a_non_root_user", "every reader", 20)
def _unreadable_for_real(tmp):
    """The real thing where this machine allows it: chmod 000, read by a non-root user (this one, or 'nobody' in a
    subprocess when the tests run as root and 'nobody' can run this Python); otherwise the case above stands."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        folder = tmp / "photos"
        locked = _locked_folder(folder)
        locked.chmod(0)
        out = tmp / "Features"
        try:
            expect_ok(_extract(_hash_argv(folder, out)))
        finally:
            locked.chmod(0o644)
        assert "permission denied" in _skipped(_store_dir(out, folder))["locked0.png"]
        return
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise NotApplicable("running as root and there is no user 'nobody' to read the file as") from None

    def drop():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    shared = Path(tempfile.mkdtemp(prefix="audit-nobody-"))
    try:
        shared.chmod(0o755)
        _locked_folder(shared).chmod(0)
        try:
            done = subprocess.run([sys.executable, "-c", _AS_NOBODY.format(repo=str(REPO_ROOT), folder=str(shared))],
                                  preexec_fn=drop, capture_output=True, text=True, timeout=120, cwd="/")
        except PermissionError:
            raise NotApplicable(f"'nobody' cannot run {sys.executable} (e.g. it lives under /root); the "
                                f"permission-denied path is covered by the case above") from None
        if done.returncode != 0 and "ermission denied" in done.stderr and "ImageLoadError" not in done.stderr:
            raise NotApplicable("'nobody' cannot read this interpreter's libraries or the repository")
        assert done.returncode == 0, done.stderr
        kept, items = done.stdout.strip().splitlines()[-2:]
        assert kept == "['img0.png', 'img1.png']", kept
        assert "locked0.png" in items and "not readable (permission denied)" in items, items
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Passing behaviours: '..' and shell metacharacters inert, finished experiments never overwritten
# --------------------------------------------------------------------------------------------------------------
@case("pinned_dotdot_names_refused", "search_experiment.py, explore_neighbors.py")
def _dotdot(tmp):
    root = _stores(tmp)
    (tmp / "Results").mkdir()
    expect_error(_search(_search_argv(tmp, root, "../escape")), "plain folder name")
    expect_error(_explore(_explore_argv(tmp, root, "../escape")), "plain folder name")
    assert not (tmp / "escape").exists()


@case("pinned_shell_metacharacters_in_names_are_plain_text", "search_experiment.py")
def _metachars(tmp):
    root = _stores(tmp)
    name = "x; touch PAYLOAD_RAN; $(touch PAYLOAD_RAN)"
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        expect_ok(_search(_search_argv(tmp, root, name)))
    finally:
        os.chdir(cwd)
    assert (tmp / "Results" / name / "results.json").is_file()
    assert_payload_never_ran(tmp, REPO_ROOT)


@case("pinned_finished_experiments_never_overwritten", "search_experiment.py, explore_neighbors.py, kmeans.py")
def _no_overwrite(tmp):
    root = _stores(tmp)
    expect_ok(_search(_search_argv(tmp, root)))
    results = (tmp / "Results" / "exp" / "results.json").read_bytes()
    expect_error(_search(_search_argv(tmp, root)), "--force")
    assert (tmp / "Results" / "exp" / "results.json").read_bytes() == results
    expect_ok(_explore(_explore_argv(tmp, root)))
    index = (tmp / "Neighbors" / "gallery" / "index.html").read_bytes()
    expect_error(_explore(_explore_argv(tmp, root)), "--force")
    assert (tmp / "Neighbors" / "gallery" / "index.html").read_bytes() == index
    expect_ok(_clustering("kmeans")(_clustering_argv(tmp, root, "--k", "3")))
    expect_error(_clustering("kmeans")(_clustering_argv(tmp, root, "--k", "3")), "--force")


@case("pinned_process_garbage_results_json", "process.py")
def _process_garbage(tmp):
    folder = tmp / "Results" / "exp"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text("{ not json")
    expect_error(_process(["exp", "--results-root", tmp / "Results"]), "results.json")


@case("pinned_kaggle_splitter_dotdot_template_stays_inside", "data_retrieval/kaggle_splitter.py")
def _kaggle_dotdot(tmp):
    images = tmp / "data" / "images"
    write_photos(images, 2, prefix="m")
    csv = tmp / "data" / "posts.csv"
    csv.write_text("id,template\nm0,../../../escaped\nm1,$(touch PAYLOAD_RAN)\n")
    before = set(tmp.rglob("*"))
    expect_ok(_kaggle([csv, images, tmp / "data" / "templates"]))
    created = set(tmp.rglob("*")) - before
    assert all((tmp / "data") in p.parents for p in created), created
    assert_payload_never_ran(tmp, tmp / "data", images)
