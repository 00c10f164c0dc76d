"""Shared test fixtures: every image the tests use is generated here (no downloads, no datasets)."""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def exit_code(main, argv):
    """The exit code of a script's ``main(argv)`` run in this process: what it returns, or the code of the
    ``SystemExit`` it raises (bad input ends through :func:`helpers.cli.run_cli` with ``SystemExit(2)``)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def synthetic_photo(width=96, height=72, seed=0):
    """A deterministic RGB image with structure (gradients, shapes, texture), unlike pure noise.

    Different seeds give visibly different images, so hashes and embeddings can tell them apart.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(xx / (5 + 10 * rng.random()) + rng.random() * 6),
        128 + 100 * np.cos(yy / (5 + 10 * rng.random()) + rng.random() * 6),
        128 + 100 * np.sin((xx + yy) / (7 + 10 * rng.random())),
    ], axis=-1)
    base += rng.normal(0, 8, size=base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(5, max(6, width // 2))), y0 + int(rng.integers(5, max(6, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    return image


@pytest.fixture
def photo():
    """A factory: ``photo(width, height, seed)`` -> RGB PIL image."""
    return synthetic_photo


@pytest.fixture
def image_folder(tmp_path):
    """A folder of 6 generated photos named ``img<i>.png`` of assorted sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        synthetic_photo(64 + 8 * i, 48 + 4 * i, seed=i).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests of tiny models: faster than two threads fighting over a loaded 2-core machine
    (OpenMP spin-waits). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
