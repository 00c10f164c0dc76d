"""The Kaggle memes splitter on a generated CSV and image folder."""
import subprocess
import sys
from pathlib import Path

import pytest

from data_retrieval.kaggle_splitter import CsvFormatError, read_labels, split_kaggle
from helpers.datasets import identity_of
from helpers.ground_truth import read_ground_truth
from helpers.ground_truth import read_labels as read_label_file

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "data_retrieval" / "kaggle_splitter.py"


@pytest.fixture
def archive(tmp_path, photo):
    """A miniature of the Kaggle archive: reddit_posts.csv and images/kaggle_images."""
    images = tmp_path / "images" / "kaggle_images"
    images.mkdir(parents=True)
    files = {"abc": ".jpg", "def_1": ".jpg", "xyz": ".png", "ghi": ".jpg", "q2": ".png", "EQKrGAq_imgr": ".png",
             "stray": ".jpg"}
    for i, (stem, suffix) in enumerate(files.items()):
        photo(40, 30, seed=i).save(images / f"{stem}{suffix}")
    rows = [
        "id,meme_template,title",
        "abc,bad_luck_brian,first of its template",
        "def_1,bad_luck_brian,an id with an underscore",
        "xyz,success_kid,first success kid",
        "gh?i,success_kid,the file name lacks the question mark",
        "q2,success_kid,",
        "missing1,success_kid,no such image",
        ",success_kid,no id",
    ]
    csv = tmp_path / "reddit_posts.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv, images, tmp_path / "images" / "Templates"


def test_split_renames_fixes_and_extracts_templates(archive):
    csv, images, templates = archive
    original = {p.stem: p.read_bytes() for p in images.iterdir()}
    summary = split_kaggle(csv, images, templates)
    names = sorted(p.name for p in images.iterdir() if p.suffix != ".csv")
    assert names == sorted(["bad-luck-brian_abc.jpg", "bad-luck-brian_def-1.jpg", "success-kid_xyz.png",
                            "success-kid_ghi.jpg", "success-kid_q2.png", "bad-luck-brian_EQKrGAq-imgr.png",
                            "stray.jpg"])
    # The first occurrence in the CSV is each template; the mislabelled image makes no template of its own.
    assert sorted(p.name for p in templates.iterdir()) == ["bad-luck-brian.jpg", "labels.csv", "success-kid.png"]
    # the labels as data: the stray image (not in the CSV) has none
    labels = read_label_file(images / "labels.csv")
    assert labels == {"bad-luck-brian_EQKrGAq-imgr.png": "bad-luck-brian", "bad-luck-brian_abc.jpg": "bad-luck-brian",
                      "bad-luck-brian_def-1.jpg": "bad-luck-brian", "success-kid_ghi.jpg": "success-kid",
                      "success-kid_q2.png": "success-kid", "success-kid_xyz.png": "success-kid"}
    assert read_label_file(templates / "labels.csv") == {"bad-luck-brian.jpg": "bad-luck-brian",
                                                     "success-kid.png": "success-kid"}
    truth = read_ground_truth(images / "ground_truth.csv")
    assert truth.references["success-kid_q2.png"] == "success-kid.png" and len(truth) == 6
    assert (templates / "bad-luck-brian.jpg").read_bytes() == original["abc"]
    assert (templates / "success-kid.png").read_bytes() == original["xyz"]
    assert (images / "bad-luck-brian_EQKrGAq-imgr.png").read_bytes() == original["EQKrGAq_imgr"]
    assert identity_of("bad-luck-brian_EQKrGAq-imgr.png") == "bad-luck-brian"
    assert summary["rows"] == 6 and summary["matched"] == 5 and summary["renamed"] == 6
    reported = {Path(p).name: reason for p, reason in summary["skipped"]}
    assert set(reported) == {"missing1", "stray.jpg"}
    assert "no such image" in reported["missing1"] and "not listed" in reported["stray.jpg"]
    assert "missing1" in (templates.parent / "kaggle_splitter_skipped.txt").read_text()
    again = split_kaggle(csv, images, templates)
    assert again["renamed"] == 0 and again["templates_written"] == 0 and again["templates_existing"] == 2
    assert sorted(p.name for p in images.iterdir() if p.suffix != ".csv") == names


def test_mislabelled_image_coming_from_the_csv_is_fixed(tmp_path, photo):
    images = tmp_path / "imgs"
    images.mkdir()
    photo(20, 20, seed=0).save(images / "blb.png")
    photo(20, 20, seed=1).save(images / "imgr.png")
    csv = tmp_path / "posts.csv"
    csv.write_text("id,template\nblb,bad-luck-brian\nimgr,EQKrGAq\n")
    split_kaggle(csv, images, tmp_path / "Templates")
    assert sorted(p.name for p in images.iterdir() if p.suffix != ".csv") == ["bad-luck-brian_EQKrGAq-imgr.png",
                                                                             "bad-luck-brian_blb.png"]
    assert sorted(p.name for p in (tmp_path / "Templates").iterdir()) == ["bad-luck-brian.png", "labels.csv"]


def test_dry_run_changes_nothing(archive, capsys):
    csv, images, templates = archive
    before = sorted(p.name for p in images.iterdir())
    summary = split_kaggle(csv, images, templates, dry_run=True)
    assert sorted(p.name for p in images.iterdir()) == before and not templates.exists()
    assert summary["renamed"] == 6 and "rename abc.jpg -> bad-luck-brian_abc.jpg" in capsys.readouterr().out


def test_named_columns(archive):
    csv, images, templates = archive
    assert read_labels(csv, "id", "meme_template")[:2] == [("abc", "bad_luck_brian"), ("def_1", "bad_luck_brian")]
    with pytest.raises(CsvFormatError, match="no template column 'template'"):
        read_labels(csv, "id", "template")


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("id\nabc\n", "1 column"),
    ("id,template\n,\n", "no row"),
    ("id,template\nnothing,here\n", "none of the 1 image ids"),
])
def test_wrong_csv_is_a_clear_error(tmp_path, photo, content, message):
    images = tmp_path / "imgs"
    images.mkdir()
    photo(20, 20).save(images / "abc.png")
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(CsvFormatError, match=message):
        split_kaggle(csv, images, tmp_path / "T")
    assert [p.name for p in images.iterdir()] == ["abc.png"]


def test_cli(archive, tmp_path):
    csv, images, templates = archive
    wrong = tmp_path / "wrong.csv"
    wrong.write_bytes(b"\xff\xfe\x00binary")
    for args in ([wrong, images, templates], [tmp_path / "none.csv", images, templates]):
        run = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error:"), run.stderr
    run = subprocess.run([sys.executable, str(SCRIPT), str(csv), str(images), str(templates)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "renamed: 6" in run.stdout and "templates written: 2" in run.stdout
