"""The meme builder: output layout, ground truth, determinism, resume, and memes that look like their template."""
import hashlib
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from data_retrieval.memes import build_memes, make_meme
from helpers.datasets import identity_of

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def templates(tmp_path, photo):
    folder = tmp_path / "templates"
    folder.mkdir()
    for i in range(7):
        photo(160, 120, seed=i).save(folder / f"tpl{i}.png")
    photo(100, 140, seed=7).save(folder / "bad_luck.png")  # '_' in a template name becomes '-'
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*.jpg"))}


def test_layout_and_ground_truth(templates, tmp_path):
    out = tmp_path / "out"
    summary = build_memes(templates, out, per_template=5, seed=0, progress=False)
    names = {f"tpl{i}" for i in range(7)} | {"bad-luck"}
    assert {p.stem for p in (out / "Templates").glob("*.jpg")} == names
    memes = sorted(p.name for p in (out / "Memes").glob("*.jpg"))
    assert memes == sorted(f"{name}_{n}.jpg" for name in names for n in range(5))
    assert {identity_of(m) for m in memes} == names
    assert summary["memes_written"] == 40 and summary["templates_written"] == 8
    assert [Path(p).name for p, _ in summary["skipped"]] == ["corrupt.png"]
    assert "corrupt.png" in (out / "skipped.txt").read_text()


def test_deterministic_across_workers_and_resumable(templates, tmp_path):
    build_memes(templates, tmp_path / "a", per_template=3, seed=4, workers=1, progress=False)
    build_memes(templates, tmp_path / "b", per_template=3, seed=4, workers=2, progress=False)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    again = build_memes(templates, tmp_path / "a", per_template=3, seed=4, progress=False)
    assert again["memes_written"] == 0 and again["memes_existing"] == 24 and again["templates_written"] == 0
    more = build_memes(templates, tmp_path / "a", per_template=4, seed=4, progress=False)
    assert more["memes_written"] == 8


def _histogram(image):
    codes = np.asarray(image.convert("RGB")).reshape(-1, 3) // 64
    counts = np.bincount(codes[:, 0] * 16 + codes[:, 1] * 4 + codes[:, 2], minlength=64).astype(float)
    return counts / counts.sum()


def test_memes_visibly_share_their_template(templates, tmp_path):
    out = tmp_path / "out"
    build_memes(templates, out, per_template=8, seed=1, progress=False)
    refs = {}
    for path in (out / "Templates").glob("*.jpg"):
        with Image.open(path) as image:
            refs[path.stem] = (imagehash.phash(image), _histogram(image))
    by_hash = by_histogram = 0
    own, others = [], []
    memes = sorted((out / "Memes").glob("*.jpg"))
    for path in memes:
        with Image.open(path) as image:
            phash, histogram = imagehash.phash(image), _histogram(image)
        truth = identity_of(path)
        by_hash += min(refs, key=lambda t: refs[t][0] - phash) == truth
        by_histogram += max(refs, key=lambda t: np.minimum(refs[t][1], histogram).sum()) == truth
        own.append(refs[truth][0] - phash)
        others.extend(refs[t][0] - phash for t in refs if t != truth)
    # Chance is 1 in 8; captions and bars change a meme, but not so much that it stops looking like its template.
    assert by_histogram >= 0.95 * len(memes)
    assert by_hash >= 0.65 * len(memes)
    assert np.mean(own) < np.mean(others) - 8


def test_make_meme_edits_stay_moderate(photo):
    template = photo(200, 150, seed=3)
    for seed in range(30):
        meme, quality, description = make_meme(template, np.random.default_rng(seed))
        assert meme.mode == "RGB" and 40 <= quality <= 95 and "rescale" in description
        # Height grows by at most a caption bar and a second bar (< 0.35 + 0.25 of it), crops remove <= 15 %.
        ratio = (meme.height / meme.width) / (150 / 200)
        assert 0.8 < ratio < 1.9
    tiny, _, _ = make_meme(Image.new("RGB", (3, 2), (9, 9, 9)), np.random.default_rng(0))
    assert tiny.mode == "RGB" and tiny.width >= 1


def test_errors_and_cli(templates, tmp_path):
    with pytest.raises(FileNotFoundError):
        build_memes(tmp_path / "missing", tmp_path / "o", per_template=1, progress=False)
    with pytest.raises(ValueError, match="per_template"):
        build_memes(templates, tmp_path / "o", per_template=0, progress=False)
    script = REPO / "data_retrieval" / "build_memes.py"
    run = subprocess.run([sys.executable, str(script), str(templates), str(tmp_path / "cli"), "--per-template", "2",
                          "--workers", "1", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "memes written: 16" in run.stdout
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "missing"), str(tmp_path / "o")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
    assert subprocess.run([sys.executable, str(script), "-h"], cwd=REPO, capture_output=True,
                          timeout=120).returncode == 0
