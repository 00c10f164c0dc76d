"""query.py's fast paths: the ONNX export of the model run by ONNX Runtime (dedup.onnx_model), the memory-mapped
index, the lean imports of a fresh process and the --serve mode, each checked against the torch model / the plain
path."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dedup.features import Featurizer
from dedup.index import SavedIndex, build_from_features
from dedup.index_cli import run_query
from dedup import onnx_model
from dedup.onnx_model import MODEL_FILE, ExportRefused, export_model, load_network
from dedup.testset import synthetic_images
from extractor.models import build_model
from extractor.transforms import Preprocessing
from tests.conftest import REPO_ROOT

ALGO = "EfficientNet-Lite0"


def _randomise_batch_norms(model, seed=0):
    """Random running statistics and affine terms, so that the batch-norm folding is really exercised (a freshly
    initialised network has mean 0, variance 1, weight 1, bias 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def _onnx_equals_torch(model, transform, info, folder):
    pre = Preprocessing.from_meta(info["preprocessing"])
    check = export_model(model, pre, folder)
    assert check["file"] == MODEL_FILE and check["cosine"] > 1 - 1e-5
    network = load_network(folder, pre, threads=1)
    images = synthetic_images(3, seed=5, width=131, height=77)  # odd sizes: the resize path of the transform
    images.append(images[0].convert("L"))  # a grayscale image goes through the RGB conversion
    for image in images:  # the torch-free preprocessing gives exactly the indexing pixels
        np.testing.assert_array_equal(network.preprocess(image), transform(image).numpy())
    with torch.inference_mode():
        reference = model(torch.stack([transform(image) for image in images])).double().numpy()
    ours = network.embed(images).astype(np.float64)
    assert ours.shape == reference.shape == (4, info["embedding_dim"])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * max(1.0, np.abs(reference).max()))
    cosines = np.sum(ours * reference, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosines.min() > 1 - 1e-6


@pytest.mark.parametrize("algo", [ALGO, "ResNet18 1x"])
def test_onnx_export_equals_torch_random_weights(tmp_path, algo):
    """Any registry model that exports, not only EfficientNet-Lite; random batch-norm statistics and affine terms
    so that the exported batch norms are really exercised."""
    model, transform, info = build_model(algo, weights="random")
    _onnx_equals_torch(_randomise_batch_norms(model.eval()), transform, info, tmp_path)


def test_onnx_export_equals_torch_pretrained_efficientnet_lite(tmp_path):
    model, transform, info = build_model(ALGO, weights="pretrained")
    _onnx_equals_torch(model.eval(), transform, info, tmp_path)


@pytest.fixture(scope="module")
def model_index(tmp_path_factory):
    """An EfficientNet-Lite0 index (random weights, seed 0: the same network in every process) of 40 images."""
    root = tmp_path_factory.mktemp("qfast")
    images = synthetic_images(40, seed=11, width=80, height=64)
    paths = []
    for number, image in enumerate(images):
        path = root / f"img{number:02d}.png"
        image.save(path)
        paths.append(str(path))
    featurizer = Featurizer(ALGO, weights="random", device="cpu")
    names, features = featurizer.files(paths)
    info = build_from_features(root / "index", names, features, featurizer, threshold=0.05)
    return root, paths, info


def test_index_saves_the_onnx_export_and_query_engines_agree(model_index):
    root, paths, info = model_index
    assert info["onnx_model"]["cosine"] > 1 - 1e-5 and (root / "index" / MODEL_FILE).is_file()
    queries = paths[:3]
    fast = run_query(queries, str(root / "index"), k=5, device="cpu", echo=lambda *_: None)
    slow = run_query(queries, str(root / "index"), k=5, device="cpu", engine="torch", echo=lambda *_: None)
    assert fast["engine"] == "onnx" and slow["engine"] == "torch"
    assert [r["neighbour"] for r in fast["results"]] == [r["neighbour"] for r in slow["results"]]
    np.testing.assert_allclose([r["similarity"] for r in fast["results"]],
                               [r["similarity"] for r in slow["results"]], atol=1e-5)
    # each image is its own nearest neighbour, at similarity 1
    for query in queries:
        first = next(r for r in fast["results"] if r["query"] == query)
        assert first["neighbour"] == query and first["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_memory_mapped_index_searches_as_the_read_one(model_index):
    root, _, _ = model_index
    queries = np.random.default_rng(0).standard_normal((4, 1280)).astype(np.float32)
    read, mapped = SavedIndex(root / "index"), SavedIndex(root / "index", mmap=True)
    d_read, i_read = read.search(queries, 7)
    d_map, i_map = mapped.search(queries, 7)
    np.testing.assert_array_equal(i_read, i_map)
    np.testing.assert_array_equal(d_read, d_map)


@pytest.fixture(scope="module")
def hash_index(model_index):
    root, paths, _ = model_index
    featurizer = Featurizer("Phash 64 bits")
    names, codes = featurizer.files(paths)
    info = build_from_features(root / "hash_index", names, codes, featurizer, threshold=4)
    assert info["onnx_model"] is None and not (root / "hash_index" / MODEL_FILE).exists()
    return root / "hash_index"


@pytest.mark.parametrize("kind", ["model", "hash"])
def test_fresh_query_process_does_not_import_torch(model_index, hash_index, tmp_path, kind):
    root, paths, _ = model_index
    index = root / "index" if kind == "model" else hash_index
    out = tmp_path / "q.json"
    code = ("import runpy, sys; sys.argv = ['query.py', sys.argv[1], '--index', sys.argv[2], '-k', '3', '--json', "
            "sys.argv[3]]; runpy.run_path('query.py', run_name='__main__'); "
            "print('IMPORTED', sorted(m for m in ('torch', 'timm', 'torchvision', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, paths[4], str(index), str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Phash's DCT is scipy.fftpack's (imagehash's definition): a hash query imports that part of scipy, never torch
    assert ("IMPORTED []" if kind == "model" else "IMPORTED ['scipy']") in done.stdout
    result = json.loads(out.read_text())
    assert result["engine"] == ("onnx" if kind == "model" else "hash")
    assert result["results"][0]["neighbour"] == paths[4]


def test_serve_answers_each_line_as_a_single_query(model_index):
    root, paths, _ = model_index
    single = run_query(paths[5:7], str(root / "index"), k=4, device="cpu", echo=lambda *_: None)["results"]
    lines = []
    stdin = io.StringIO(f"{paths[5]}\n\n{root / 'missing.png'}\n{paths[6]}\n")
    answered = run_query([], str(root / "index"), k=4, serve=True, json="-", device="cpu", echo=lines.append,
                         stdin=stdin)
    assert answered == {"answered": 3}  # the empty line is not a query
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [record["error"] is None for record in records] == [True, False, True]
    assert "missing.png" in records[1]["error"]
    served = records[0]["results"] + records[2]["results"]
    assert [r["neighbour"] for r in served] == [r["neighbour"] for r in single]
    np.testing.assert_allclose([r["similarity"] for r in served], [r["similarity"] for r in single], atol=1e-6)


def test_query_without_images_or_serve_is_an_error(model_index):
    root, _, _ = model_index
    done = subprocess.run([sys.executable, "query.py", "--index", str(root / "index")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--serve" in done.stderr


def _refuse_by_cosine(session, x):
    """ONNX Runtime's answer, perturbed: an export that does not match torch."""
    y = session.run([onnx_model.OUTPUT], {onnx_model.INPUT: x})[0]
    return y + np.random.default_rng(1).standard_normal(y.shape).astype(np.float32) * np.abs(y).max()


def _fail_export(*args, **kwargs):
    raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX opset version 20 is not supported")


@pytest.mark.parametrize("how", ["cosine", "export"])
def test_refused_export_falls_back_to_torch(model_index, monkeypatch, tmp_path, how):
    root, paths, _ = model_index
    if how == "cosine":
        monkeypatch.setattr(onnx_model, "_run", _refuse_by_cosine)
    else:
        monkeypatch.setattr(torch.onnx, "export", _fail_export)
    featurizer = Featurizer(ALGO, weights="random", device="cpu")
    names, features = featurizer.files(paths[:10])
    folder = tmp_path / "refused"
    info = build_from_features(folder, names, features, featurizer)
    assert info["onnx_model"]["file"] is None and not (folder / MODEL_FILE).exists()
    assert ("cosine" if how == "cosine" else "aten::made_up") in info["onnx_model"]["refused"]
    assert json.loads((folder / "index.json").read_text())["onnx_model"] == info["onnx_model"]
    result = run_query(paths[:1], str(folder), k=3, device="cpu", echo=lambda *_: None)
    assert result["engine"] == "torch" and result["results"][0]["neighbour"] == paths[0]
    with pytest.raises(ValueError, match="no ONNX export.*" + ("cosine" if how == "cosine" else "made_up")):
        run_query(paths[:1], str(folder), k=3, device="cpu", engine="onnx", echo=lambda *_: None)
