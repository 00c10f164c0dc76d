"""explore_neighbors.py: montages sorted into Correct/Incorrect/NoOriginal as an independent numpy search says,
an index.html with incorrect first, distances and relative links, and the overwrite refusal."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fast_search import synthetic as S
from fast_search.neighbors import explore_neighbors
from fast_search.search import resolve_image_path
from helpers.experiment import ExperimentExistsError
from tests.conftest import REPO_ROOT, synthetic_photo

ALGO = "Feat 8"
TILE, BORDER = 64, 4  # montage cell = tile + 2 * border wide


@pytest.fixture(scope="module")
def gallery_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("gallery")
    (base / "orig").mkdir()
    (base / "att").mkdir()
    rng = np.random.default_rng(7)
    db = rng.standard_normal((12, 8)).astype(np.float32)
    db_names = []
    for i in range(12):
        path = base / "orig" / f"im{i:02d}.png"
        synthetic_photo(80, 60, seed=i).save(path)
        db_names.append(str(path))
    queries, q_names = [], []
    for i in range(8):  # 0-5: close copies; 6, 7: pulled towards another image
        own = db[i] + 0.05 * rng.standard_normal(8).astype(np.float32)
        queries.append(own if i < 6 else 0.45 * db[i] + 0.55 * db[(i + 3) % 12])
        path = base / "att" / f"im{i:02d}_flip.png"
        synthetic_photo(80, 60, seed=i).transpose(Image.FLIP_LEFT_RIGHT).save(path)
        q_names.append(str(path))
    for j in range(2):  # no original in the database
        queries.append(rng.standard_normal(8).astype(np.float32))
        path = base / "att" / f"other{j}_crop.png"
        synthetic_photo(70, 70, seed=50 + j).save(path)
        q_names.append(str(path))
    queries = np.stack(queries)
    root = base / "Features"
    S.write_store(root, "main", ALGO, db, db_names)
    S.write_store(root, "queries", ALGO, queries, q_names)
    return {"base": base, "root": root, "db": db, "queries": queries, "db_names": db_names, "q_names": q_names}


def expected_categories(store, k, within):
    """Numpy cosine search: category of each query (the reference)."""
    x = store["db"] / np.linalg.norm(store["db"], axis=1, keepdims=True)
    q = store["queries"] / np.linalg.norm(store["queries"], axis=1, keepdims=True)
    order = np.argsort(1 - q @ x.T, axis=1)[:, :k]
    out = {}
    for j, name in enumerate(store["q_names"]):
        ident = Path(name).stem.split("_")[0]
        idents = [Path(store["db_names"][i]).stem for i in order[j]]
        out[Path(name).stem] = "NoOriginal" if not ident.startswith("im") else \
            ("Correct" if ident in idents[:within] else "Incorrect")
    return out


def _gallery(store, tmp_path, **kwargs):
    options = dict(name="g", algo=ALGO, main_dataset="main", query_dataset="queries", metric="cosine", k=3,
                   device="cpu", tile=TILE, neighbors_root=tmp_path / "Neighbors", features_root=store["root"])
    options.update(kwargs)
    return explore_neighbors(**options)


def test_gallery_sorts_montages_like_a_numpy_search(gallery_store, tmp_path):
    expected = expected_categories(gallery_store, 3, 1)
    assert sorted(expected.values()).count("Incorrect") >= 1  # the data makes some mistakes
    counts = _gallery(gallery_store, tmp_path)
    folder = tmp_path / "Neighbors" / "g"
    for category in ("Correct", "Incorrect", "NoOriginal"):
        files = sorted(folder.glob(f"{category}/*.png"))
        stems = {re.sub(r"^\d{6}_", "", f.stem) for f in files}
        assert stems == {s for s, c in expected.items() if c == category}
        assert counts[category] == len(files)
        for f in files:  # query | 3 neighbours | target (no target tile without an original)
            width = Image.open(f).width
            assert width == (4 if category == "NoOriginal" else 5) * (TILE + 2 * BORDER)
    page = (folder / "index.html").read_text()
    rows = re.findall(r'<tr class="(\w+)"><td>\w+</td>', page)
    order = {"Incorrect": 0, "NoOriginal": 1, "Correct": 2}
    assert rows == sorted(rows, key=order.get) and rows[0] == "Incorrect"
    links = re.findall(r'src="([^"]+)"', page)
    assert len(links) == 10 and all(not link.startswith("/") and (folder / link).is_file() for link in links)
    # the distance of each query's nearest neighbour is shown
    x = gallery_store["db"] / np.linalg.norm(gallery_store["db"], axis=1, keepdims=True)
    q = gallery_store["queries"] / np.linalg.norm(gallery_store["queries"], axis=1, keepdims=True)
    shown = dict(re.findall(r"<td>([^<]+)</td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td></tr>", page))
    for name, best in zip(gallery_store["q_names"], (1 - q @ x.T).min(axis=1)):
        assert float(shown[name].split(",")[0]) == pytest.approx(best, rel=1e-3, abs=1e-5)
    with pytest.raises(ExperimentExistsError):
        _gallery(gallery_store, tmp_path)
    _gallery(gallery_store, tmp_path, force=True, correct_within=3)
    expected3 = expected_categories(gallery_store, 3, 3)
    stems = {re.sub(r"^\d{6}_", "", f.stem) for f in folder.glob("Correct/*.png")}
    assert stems == {s for s, c in expected3.items() if c == "Correct"}


def test_limit_keeps_incorrect_first(gallery_store, tmp_path):
    expected = expected_categories(gallery_store, 3, 1)
    n_wrong = list(expected.values()).count("Incorrect")
    counts = _gallery(gallery_store, tmp_path, name="lim", limit=n_wrong + 1)
    assert counts == {"Incorrect": n_wrong, "NoOriginal": 1, "Correct": 0}


def test_cli_refuses_an_existing_gallery(gallery_store, tmp_path):
    command = [sys.executable, "explore_neighbors.py", "--name", "cli", "--algo", ALGO, "--main-dataset", "main",
               "--query-dataset", "queries", "--k", "2", "--tile", "48", "--device", "cpu",
               "--features-root", str(gallery_store["root"]), "--neighbors-root", str(tmp_path / "N")]
    _gallery(gallery_store, tmp_path, name="cli", k=2, neighbors_root=tmp_path / "N")
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "--force" in second.stderr and "Traceback" not in second.stderr


def test_image_paths_resolve_against_the_repository():
    assert resolve_image_path("Datasets/demo/Original/a.png") == REPO_ROOT / "Datasets/demo/Original/a.png"
    assert resolve_image_path("/abs/a.png") == Path("/abs/a.png")


def test_missing_images_are_drawn_gray_and_reported(gallery_store, tmp_path, caplog):
    names = list(gallery_store["db_names"])
    names[3] = str(Path(names[3]).with_name("im03_deleted.png"))  # same identity, file absent
    S.write_store(gallery_store["root"], "main_missing", ALGO, gallery_store["db"], names)
    with caplog.at_level("WARNING", logger="fast_search.neighbors"):
        counts = _gallery(gallery_store, tmp_path, name="missing", main_dataset="main_missing")
    assert sum(counts.values()) == 10
    assert "im03_deleted.png" in caplog.text and "gray" in caplog.text


def test_gallery_from_a_search_experiments_neighbour_table(gallery_store, tmp_path):
    """search_experiment --save-neighbors writes the table the gallery reads: same categories as a numpy search."""
    from fast_search.experiment import run_experiment
    from fast_search.neighbor_table import read_neighbor_table

    run_experiment("exp", ALGO, "main", "queries", experiment="k", ks=[3], metrics=["cosine"], repeats=1,
                   device="cpu", results_root=tmp_path / "Results", features_root=gallery_store["root"],
                   save_neighbors=True)
    table_file = next((tmp_path / "Results" / "exp" / "neighbors").glob("*.csv.gz"))
    table = read_neighbor_table(table_file)
    assert list(table) == gallery_store["q_names"] and all(len(row["neighbors"]) == 3 for row in table.values())
    counts = explore_neighbors(name="from_table", neighbors_file=str(table_file), k=3, tile=TILE,
                               neighbors_root=tmp_path / "Neighbors", device="cpu", algo=None, main_dataset=None,
                               query_dataset=None)
    expected = expected_categories(gallery_store, 3, 1)
    folder = tmp_path / "Neighbors" / "from_table"
    for category in ("Correct", "Incorrect", "NoOriginal"):
        stems = {re.sub(r"^\d{6}_", "", f.stem) for f in folder.glob(f"{category}/*.png")}
        assert stems == {s for s, c in expected.items() if c == category}
        assert counts[category] == len(stems)
