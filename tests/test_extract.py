"""extract_features: the stores it writes (against torchvision / imagehash references), unreadable files, keeping
finished stores, resuming after an injected failure and after a real kill, torchrun with 2 CPU processes (gloo),
fine-tuning checkpoints, embed_images and the command line."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import imagehash
import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from torch import nn

import extract_features as cli
from conftest import exit_code
from extractor.embedding import embed_images
from extractor.extract import extract_features
from extractor.models import EmbeddingNet, build_model, save_checkpoint
from helpers.feature_store import feature_dir, load_features
from helpers.image_io import ImageLoadError, load_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_RESNET_TRANSFORM = T.Compose([T.Resize((256, 256), interpolation=T.InterpolationMode.LANCZOS),
                                   T.CenterCrop(224), T.ToTensor(),
                                   T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
# Batch 1 makes every image's computation independent of how the list is split (chunks, shards).
RUN = dict(chunk_size=2, batch_size=1, workers=0, device="cpu", progress=False, weights="random")
CLI_RUN = ["--chunk-size", "2", "--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress",
           "--weights", "random"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """6 photos of assorted sizes, an unreadable .jpg third in natural order, and a text file."""
    from conftest import synthetic_photo

    folder = tmp_path_factory.mktemp("data") / "photos"
    folder.mkdir()
    for i in range(6):
        synthetic_photo(60 + 9 * i, 90 - 4 * i, seed=i).save(folder / f"img{i}.png")
    (folder / "img1b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted single-process extraction of ResNet18 1x and Dhash 64 bits."""
    out = tmp_path_factory.mktemp("reference")
    folders = extract_features(["ResNet18 1x", "Dhash 64 bits"], str(dataset), out=out, **RUN)
    return {folder.name: folder for folder in folders}


def _good_images(dataset):
    return [dataset / f"img{i}.png" for i in range(6)]


def test_store_matches_torchvision_and_imagehash_references(dataset, reference):
    store = load_features(reference["resnet18_1x"])
    paths = _good_images(dataset)
    assert store.names == [str(p) for p in paths]
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    with torch.no_grad():
        expected = model.eval()(torch.stack([SEED_RESNET_TRANSFORM(load_image(p)) for p in paths])).numpy()
    assert store.features.dtype == np.float32 and store.features.shape == (6, 512)
    assert np.allclose(store.features, expected, atol=1e-5)
    meta = store.meta
    assert meta["weights"] == "random (seed 0)" and meta["skipped"] == 2 and meta["dataset"] == "photos"
    assert meta["preprocessing"]["description"] == "resize 256x256 lanczos, centre crop 224x224, ImageNet mean/std"
    skipped = (reference["resnet18_1x"] / "skipped.txt").read_text()
    assert "img1b.jpg" in skipped and "notes.txt" in skipped

    hashes = load_features(reference["dhash_64_bits"])
    oracle = np.stack([np.packbits(imagehash.dhash(load_image(p)).hash.flatten()) for p in paths])
    assert hashes.binary and hashes.dim == 64 and np.array_equal(hashes.features, oracle)


def test_embed_images_gives_the_store_rows(dataset, reference):
    model, transform, _ = build_model("ResNet18 1x")
    paths = _good_images(dataset)
    store = load_features(reference["resnet18_1x"])
    from_paths = embed_images(model, transform, paths[:3], batch_size=1)
    from_images = embed_images(model, transform, [load_image(p) for p in paths[3:5]], batch_size=2)
    # The store's extraction folds the batch norms into the convolutions and runs channels_last: float rounding.
    assert np.allclose(from_paths, store.features[:3], atol=1e-5)
    assert np.allclose(from_images, store.features[3:5], atol=1e-5)
    model.train()
    with pytest.raises(ImageLoadError, match="img1b.jpg"):
        embed_images(model, transform, [paths[0], dataset / "img1b.jpg"])
    assert model.training  # the caller's mode is restored


def test_finished_store_is_kept_unless_force(dataset, reference, capsys):
    features = reference["resnet18_1x"] / "features.npy"
    before = features.stat().st_mtime_ns
    out = reference["resnet18_1x"].parent.parent
    extract_features(["ResNet18 1x", "dhash_64_bits"], str(dataset), out=out, **RUN)
    assert features.stat().st_mtime_ns == before
    assert capsys.readouterr().out.count("already extracted") == 2
    hashes = reference["dhash_64_bits"] / "features.npy"
    content, stamp = hashes.read_bytes(), hashes.stat().st_mtime_ns
    extract_features("Dhash 64 bits", str(dataset), out=out, force=True, **RUN)
    assert hashes.stat().st_mtime_ns != stamp and hashes.read_bytes() == content


class InjectedFailure(RuntimeError):
    """Raised by the ``fail_after_chunks`` fixture (tests of the resume logic)."""


@pytest.fixture
def fail_after_chunks(monkeypatch):
    """``with fail_after_chunks(n):`` an extraction dies right after writing its n-th chunk (as a kill would)."""
    from extractor.writer import StoreTarget

    @contextlib.contextmanager
    def armed(n):
        written = []
        real = StoreTarget.write_chunk

        def write_chunk(self, *args, **kwargs):
            real(self, *args, **kwargs)
            written.append(1)
            if len(written) >= n:
                raise InjectedFailure(f"injected failure after {len(written)} chunk(s)")

        with monkeypatch.context() as patch:
            patch.setattr(StoreTarget, "write_chunk", write_chunk)
            yield
    return armed


def test_resume_after_injected_failure_writes_the_same_features(dataset, reference, tmp_path, caplog,
                                                                 fail_after_chunks):
    with fail_after_chunks(2), pytest.raises(InjectedFailure):
        extract_features("ResNet18 1x", str(dataset), out=tmp_path, **RUN)
    store = feature_dir(str(dataset), "ResNet18 1x", tmp_path)  # Features/photos-<digest of its location>/...
    assert store.parent.name.startswith("photos-")
    assert not store.exists() and store.with_name("resnet18_1x.partial").is_dir()
    caplog.set_level("INFO")
    extract_features("ResNet18 1x", str(dataset), out=tmp_path, **RUN)
    assert "resuming after 3 finished image(s)" in caplog.text  # img0, img1, img2: chunk 1 held the broken file
    expected = reference["resnet18_1x"]
    assert (store / "features.npy").read_bytes() == (expected / "features.npy").read_bytes()
    assert (store / "names.txt").read_text() == (expected / "names.txt").read_text()
    assert (store / "skipped.txt").read_text() == (expected / "skipped.txt").read_text()
    assert not store.with_name("resnet18_1x.partial").exists()


def _cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(torch.get_num_threads()))
    return [sys.executable, *args], dict(cwd=REPO, env=env, **kwargs)


def test_killed_extraction_resumes_to_the_same_features(dataset, reference, tmp_path):
    # One image per chunk (the reference used two): the kill comes after the first image, with 5 more to go.
    options = list(CLI_RUN)
    options[options.index("--chunk-size") + 1] = "1"
    command, kwargs = _cli(["extract_features.py", "--algo", "ResNet18 1x", "--dataset", str(dataset),
                            "--out", str(tmp_path), *options])
    store = feature_dir(str(dataset), "ResNet18 1x", tmp_path)
    partial = store.with_name("resnet18_1x.partial")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    deadline = time.time() + 120
    while not (partial / "chunk_000000.npy").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not store.exists()  # killed mid-run, not after the end
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stderr
    assert "resuming after" in done.stderr
    written, expected = store, reference["resnet18_1x"]
    assert (written / "features.npy").read_bytes() == (expected / "features.npy").read_bytes()
    assert (written / "names.txt").read_text() == (expected / "names.txt").read_text()


def test_torchrun_with_two_cpu_processes_equals_a_single_process(dataset, reference, tmp_path):
    command, kwargs = _cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "extract_features.py", "--algo", "ResNet18 1x", "Dhash 64 bits", "--dataset",
                            str(dataset), "--out", str(tmp_path), *CLI_RUN])
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    for slug in ("resnet18_1x", "dhash_64_bits"):
        ours, single = load_features(feature_dir(str(dataset), slug, tmp_path)), load_features(reference[slug])
        assert ours.names == single.names
        assert np.array_equal(ours.features, single.features), slug
        assert ours.meta["world_size"] == 2 and ours.meta["skipped"] == 2
        assert sorted((feature_dir(str(dataset), slug, tmp_path) / "skipped.txt").read_text().splitlines()) == \
            sorted((reference[slug] / "skipped.txt").read_text().splitlines())
    assert sorted(p.name for p in feature_dir(str(dataset), "x", tmp_path).parent.iterdir()
                  if not p.name.startswith(".")) == ["dhash_64_bits", "resnet18_1x"]


def test_checkpoint_extraction_and_names(dataset, tmp_path):
    net = EmbeddingNet("ResNet18 1x", pooling="gem", projection_dim=8, normalize=True, seed=1)
    path = save_checkpoint(tmp_path / "myrun_models" / "epoch_2.pth", net, epoch=2)
    small = tmp_path / "small"
    small.mkdir()
    for p in _good_images(dataset)[:2]:
        (small / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "Features"
    folder = extract_features(checkpoint=str(path), dataset=str(small), out=out, **RUN)[0]
    store = load_features(folder)
    assert folder.name == "checkpoint_myrun_models_epoch_2" and store.meta["name"] == "Checkpoint myrun_models/epoch_2"
    with torch.no_grad():
        expected = net.eval()(torch.stack([SEED_RESNET_TRANSFORM(load_image(small / n)) for n in
                                           ("img0.png", "img1.png")])).numpy()
    assert np.allclose(store.features, expected, atol=1e-5)
    assert store.meta["checkpoint_config"]["pooling"] == "gem"
    assert cli.main(["--checkpoint", str(path), "--name", "My model", "--dataset", str(small), "--out", str(out),
                     *CLI_RUN]) == 0
    assert np.array_equal(load_features(feature_dir(str(small), "My model", out)).features, store.features)


def test_command_line_errors_are_one_line(capsys, dataset):
    assert exit_code(cli.main, ["--algo", "ResNet51 1x", "--dataset", str(dataset)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown algorithm 'ResNet51 1x'")
    assert exit_code(cli.main, ["--algo", "ResNet18 1x", "--dataset", str(dataset), "--whiten"]) == 2
    assert "--whiten needs --pca" in capsys.readouterr().err
    assert exit_code(cli.main, ["--algo", "ResNet18 1x", "--dataset", str(dataset), "--pca", "8"]) == 2
    assert "--pca-fit-dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--algo", "ResNet18 1x"])
    assert exit_info.value.code == 2
    help_text = cli.build_parser().format_help()
    for action in cli.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in help_text
