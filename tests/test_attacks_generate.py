"""The attack generator: files written, IDs, determinism across worker counts, resume, bad inputs, CLI."""
import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from data_retrieval.attacks import extra_attack_ids, retrieve_ids
from data_retrieval.generate_attacks import CHAINS_FILE, generate_attacks
from helpers.datasets import attack_of, identity_of

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "data_retrieval" / "generate_attacks.py"


@pytest.fixture
def originals(tmp_path, photo):
    """Three small photos, a corrupt JPEG and a text file."""
    folder = tmp_path / "originals"
    folder.mkdir()
    for i, (w, h) in enumerate([(48, 36), (40, 40), (30, 50)]):
        photo(w, h, seed=i).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())
            if p.suffix in (".png", ".jpg")}


def test_files_written_are_exactly_retrieve_ids(originals, tmp_path):
    out = tmp_path / "attacks"
    summary = generate_attacks(originals, out, workers=1, progress=False)
    ids = retrieve_ids()
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 3 * 58
    for stem in ("img0", "img1", "img2"):
        written = [attack_of(n) for n in names if identity_of(n) == stem]
        assert sorted(written) == sorted(ids)
    assert summary["images_total"] == 4 and summary["images_read"] == 3  # the broken JPEG is listed, not read
    assert summary["variants_written"] == 174 and summary["variants_existing"] == 0
    assert summary["attack_ids"] == ids
    skipped = (out / "skipped.txt").read_text()
    assert "broken.jpg" in skipped and "notes.txt" in skipped
    assert {Path(p).name for p, _ in summary["skipped"]} == {"broken.jpg", "notes.txt"}


def test_second_run_writes_nothing_and_missing_files_are_redone(originals, tmp_path):
    out = tmp_path / "attacks"
    generate_attacks(originals, out, families=["noise", "text"], progress=False)
    before = _hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = generate_attacks(originals, out, families=["noise", "text"], progress=False)
    assert again["variants_written"] == 0 and again["variants_existing"] == 3 * 14 and again["images_read"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes
    # An interrupted run leaves a hidden partial file and a missing variant: both are repaired.
    (out / "img1_text_length_30.png").unlink()
    (out / ".img1_text_length_30.png.999.part").write_bytes(b"partial")
    third = generate_attacks(originals, out, families=["noise", "text"], progress=False)
    assert third["variants_written"] == 1
    assert _hashes(out) == before and not list(out.glob(".*.part"))


def test_identical_bytes_with_one_or_two_workers(originals, tmp_path):
    one = generate_attacks(originals, tmp_path / "w1", workers=1, extra=True, progress=False)
    two = generate_attacks(originals, tmp_path / "w2", workers=2, extra=True, progress=False)
    assert one["variants_written"] == two["variants_written"] == 3 * (58 + 23)
    assert _hashes(tmp_path / "w1") == _hashes(tmp_path / "w2")
    assert (tmp_path / "w1" / CHAINS_FILE).read_text() == (tmp_path / "w2" / CHAINS_FILE).read_text()
    other_seed = generate_attacks(originals, tmp_path / "s1", seed=1, families=["noise"], progress=False)
    assert other_seed["variants_written"] == 27
    assert _hashes(tmp_path / "s1")["img0_gaussian_noise_0.01.png"] != _hashes(tmp_path / "w1")[
        "img0_gaussian_noise_0.01.png"]


def test_chains_are_recorded_in_a_sidecar(originals, tmp_path):
    out = tmp_path / "attacks"
    generate_attacks(originals, out, families=["chain"], progress=False)
    lines = (out / CHAINS_FILE).read_text().splitlines()
    assert len(lines) == 3 * 5
    for line in lines:
        name, description = line.split("\t")
        assert (out / name).is_file() and description.startswith("chain[")


def test_any_name_works_and_ground_truth_is_written(tmp_path, photo):
    """Underscores, spaces, unicode and sub-folders: the ground truth is a file, not a naming convention."""
    from helpers.ground_truth import read_ground_truth

    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    photo(20, 20, seed=1).save(folder / "my_photo.png")
    photo(20, 20, seed=2).save(folder / "IMG_0001 été.png")
    photo(20, 20, seed=3).save(folder / "a" / "x.png")
    photo(20, 20, seed=4).save(folder / "b" / "x.png")  # same name in another sub-folder: another image
    summary = generate_attacks(folder, tmp_path / "out", families=["flip"], progress=False)
    assert summary["variants_written"] == 4
    truth = read_ground_truth(tmp_path / "out" / "ground_truth.csv")
    assert sorted(truth.rows()) == [("IMG_0001 été_horizontal_flip.png", "IMG_0001 été.png", "horizontal_flip"),
                            ("a/x_horizontal_flip.png", "a/x.png", "horizontal_flip"),
                            ("b/x_horizontal_flip.png", "b/x.png", "horizontal_flip"),
                            ("my_photo_horizontal_flip.png", "my_photo.png", "horizontal_flip")]
    for query, _, _ in truth.rows():
        assert (tmp_path / "out" / query).is_file()
    again = generate_attacks(folder, tmp_path / "out", families=["flip"], progress=False)
    assert again["variants_written"] == 0 and read_ground_truth(again["ground_truth"]).rows() == truth.rows()


def test_parameters_formats_and_guards(originals, tmp_path, photo):
    out = tmp_path / "jpg"
    summary = generate_attacks(originals, out, families=["text"], params={"text_lengths": (5,)}, fmt="jpg",
                               progress=False)
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"img{i}_text_length_5.jpg" for i in range(3)]
    assert summary["attack_ids"] == ["text_length_5"]
    with pytest.raises(ValueError, match="odd"):
        generate_attacks(originals, tmp_path / "bad", params={"gaussian_kernels": (4,)}, progress=False)
    with pytest.raises(ValueError, match="differ"):
        generate_attacks(originals, originals, progress=False)
    with pytest.raises(FileNotFoundError):
        generate_attacks(tmp_path / "missing", tmp_path / "x", progress=False)
    # An output folder inside the input folder is not read back as input.
    nested = originals / "attacks"
    generate_attacks(originals, nested, families=["flip"], progress=False)
    again = generate_attacks(originals, nested, families=["flip"], progress=False)
    assert again["images_total"] == 4 and again["variants_written"] == 0


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_png_writer_is_lossless_for_independent_decoders(photo):
    import io

    import numpy as np
    from PIL import Image

    from data_retrieval.runner import png_bytes

    rng = np.random.default_rng(0)
    for width, height in [(1, 1), (2, 3), (400, 4), (97, 61)]:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        data = png_bytes(Image.fromarray(array), level=1)
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), array)
        torch = pytest.importorskip("torch")  # a runtime requirement; libpng through torchvision is a 2nd decoder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io moves to torchcodec
            from torchvision.io import decode_png

            libpng = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()
        assert np.array_equal(libpng, array)
    image = photo(120, 90, seed=1)
    assert png_bytes(image) == png_bytes(image)  # deterministic
    pil = io.BytesIO()
    image.save(pil, format="PNG", compress_level=1)
    assert len(png_bytes(image)) < 1.1 * len(pil.getvalue())  # compresses about as well as PIL


def test_cli(originals, tmp_path):
    listed = _run("--list", "--extra")
    assert listed.returncode == 0 and listed.stdout.split() == retrieve_ids() + extra_attack_ids()
    missing = _run(tmp_path / "nope", tmp_path / "out")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error:")
    done = _run(originals, tmp_path / "out", "--families", "grayscale", "--workers", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "variants written: 3" in done.stdout and "skipped: 2" in done.stdout
    assert len(list((tmp_path / "out").glob("*_grayscale.png"))) == 3
    help_text = _run("-h")
    assert help_text.returncode == 0 and "ground_truth.csv" in help_text.stdout and "--text-lengths" in \
        help_text.stdout
