"""The neural model zoo: registry names, the seed's preprocessing, weights (random / cached pretrained / offline /
local file / SimCLR), EmbeddingNet and the fine-tuning checkpoint format."""
import dataclasses
import hashlib
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from torch import nn

from extractor import models as M
from extractor.registry import SEED_MODELS, get_model_spec, resolve_algorithm
from extractor.transforms import ImageTransform, Preprocessing, reference_transform
from helpers.paths import slugify

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
LANCZOS = T.InterpolationMode.LANCZOS
# The seed's transforms, written out literally (extractor/neural.py of the seed repository).
SEED_TRANSFORMS = {
    "ResNet50 1x": T.Compose([T.Resize((256, 256), interpolation=LANCZOS), T.CenterCrop(224), T.ToTensor(),
                              T.Normalize(**IMAGENET)]),
    "Inception v3": T.Compose([T.Resize((299, 299), interpolation=LANCZOS), T.ToTensor(), T.Normalize(**IMAGENET)]),
    "EfficientNet B7": T.Compose([T.Resize((600, 600), interpolation=LANCZOS), T.ToTensor(),
                                  T.Normalize(**IMAGENET)]),
    "SimCLR v2 ResNet50 2x": T.Compose([T.Resize(256, interpolation=LANCZOS), T.CenterCrop(224), T.ToTensor()]),
    "SimCLR v1 ResNet50 4x": T.Compose([T.Resize(256, interpolation=LANCZOS), T.CenterCrop(224), T.ToTensor()]),
}
SEED_DIMS = {"Inception v3": 2048, "ResNet50 1x": 2048, "ResNet101 1x": 2048, "ResNet152 1x": 2048,
             "ResNet50 2x": 2048, "ResNet101 2x": 2048, "EfficientNet B7": 2560, "SimCLR v1 ResNet50 1x": 2048,
             "SimCLR v1 ResNet50 2x": 4096, "SimCLR v1 ResNet50 4x": 8192, "SimCLR v2 ResNet50 2x": 4096,
             "SimCLR v2 ResNet101 2x": 4096, "SimCLR v2 ResNet152 3x": 6144}


def test_seed_names_resolve_case_insensitively_and_by_slug():
    assert set(SEED_MODELS) == set(SEED_DIMS)
    for name in list(SEED_MODELS) + ["ResNet18 1x", "ResNet34 1x"]:
        spec = get_model_spec(name)
        assert spec is not None and spec.name == name
        assert get_model_spec(name.upper()) is spec
        assert get_model_spec(slugify(name)) is spec
        assert resolve_algorithm(name.lower()) is spec
    assert get_model_spec("wide_resnet50_2").name == "ResNet50 2x"
    assert get_model_spec("SimCLR v2 ResNet50 2x sk1").arch == "r50_2x_sk1"
    assert get_model_spec("simclr_v2_resnet101_3x_sk0").arch == "r101_3x_sk0"
    with pytest.raises(ValueError, match="unknown algorithm"):
        resolve_algorithm("ResNet51 1x")


def test_embedding_dimension_of_every_registered_model_on_meta_tensors():
    names = list(SEED_DIMS) + ["ResNet18 1x", "ResNet34 1x", "SimCLR v2 ResNet50 1x sk0", "SimCLR v2 ResNet101 3x"]
    for spec in (get_model_spec(name) for name in names):
        with torch.device("meta"):
            net = M._headless(spec, M._architecture(spec)).eval()
            out = net(torch.empty(2, 3, *spec.preprocessing.input_size))
        assert tuple(out.shape) == (2, spec.embedding_dim), spec.name
        assert spec.embedding_dim == SEED_DIMS.get(spec.name, spec.embedding_dim)


@pytest.mark.parametrize("name", sorted(SEED_TRANSFORMS))
def test_preprocessing_is_the_seeds(name, photo):
    transform = ImageTransform(get_model_spec(name).preprocessing)
    for seed, (w, h) in enumerate([(481, 321), (200, 640), (256, 256), (97, 43)]):
        image = photo(w, h, seed=seed)
        assert torch.equal(transform(image), SEED_TRANSFORMS[name](image)), (name, w, h)


def test_fast_transform_equals_torchvision_reference_on_many_sizes(photo):
    rng = np.random.default_rng(1)
    pres = [Preprocessing((256, 256), 224, "lanczos", IMAGENET["mean"], IMAGENET["std"]),
            Preprocessing(256, 224, "lanczos"), Preprocessing(64, 60, "bicubic"),
            Preprocessing((40, 70), (32, 50), "bilinear"), Preprocessing(32, 48, "lanczos"),  # crop > resize: pads
            Preprocessing(72, None, "bilinear", IMAGENET["mean"], IMAGENET["std"]),  # SSCD's: aspect ratio kept
            Preprocessing((40, 40), None, "bilinear", [127 / 255] * 3, [128 / 255] * 3)]  # TF-lite scaling
    for trial in range(12):
        image = photo(int(rng.integers(16, 400)), int(rng.integers(16, 400)), seed=trial)
        for pre in pres:
            fast, ref = ImageTransform(pre)(image), reference_transform(pre)(image)
            assert fast.shape == ref.shape and torch.equal(fast, ref), (pre, image.size)
    assert Preprocessing(256).variable_size and not pres[0].variable_size
    assert Preprocessing(256).meta()["input_size"] is None  # a shorter-side resize without a crop: no fixed size
    with pytest.raises(ValueError):
        Preprocessing(256, interpolation="box")


def _tv_resnet18(seed):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    return model.eval()


def test_random_weights_are_seeded_and_are_torchvisions_initialisation():
    x = torch.randn(2, 3, 64, 64)
    a, _, info = M.build_model("ResNet18 1x", weights="random", seed=3)
    b, _, _ = M.build_model("resnet18_1x", weights="random", seed=3)
    c, _, _ = M.build_model("ResNet18 1x", weights="random", seed=4)
    with torch.no_grad():
        ya, yb, yc, ref = a(x), b(x), c(x), _tv_resnet18(3)(x)
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert torch.equal(ya, ref)
    assert info["weights"] == "random (seed 3)" and info["weights_sha256"] is None
    assert info["embedding_dim"] == 512 and ya.shape == (2, 512)


def test_pretrained_weights_load_from_the_torch_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("no download may be attempted when the file is cached"))
    reference = torchvision.models.resnet18()
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model, transform, info = M.build_model("ResNet18 1x", weights="pretrained")
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    assert info["weights_file"] == str(cached)
    assert info["weights_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert "ResNet18_Weights.IMAGENET1K_V1" in info["weights"]
    assert M.pretrained_weights_file("ResNet18 1x") == cached


def test_missing_pretrained_weights_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(M.WeightsUnavailableError) as info:
        M.build_model("ResNet50 1x", weights="pretrained")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message


def test_local_weights_file_with_or_without_classifier(tmp_path):
    source = torchvision.models.resnet18()
    full = tmp_path / "full.pth"
    torch.save(source.state_dict(), full)
    headless = tmp_path / "headless.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, headless)
    source.fc = nn.Identity()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.eval()(x)
        for path in (full, headless):
            model, _, info = M.build_model("ResNet18 1x", weights=str(path))
            assert torch.equal(model(x), expected)
            assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="does not fit"):
        M.build_model("ResNet34 1x", weights=str(full))
    with pytest.raises(ValueError, match="pretrained"):
        M.build_model("ResNet18 1x", weights=str(tmp_path / "missing.pth"))


def test_simclr_pretrained_checkpoint_and_missing_file_message(tmp_path, monkeypatch):
    import SimCLRv2

    resnet, _ = SimCLRv2.get_resnet(50, 1, SimCLRv2.SK_RATIO)
    path = tmp_path / "r50_1x_sk1_ema.pth"
    monkeypatch.setattr(SimCLRv2, "checkpoint_path", lambda model, category, ema=True: path)
    with pytest.raises(M.WeightsUnavailableError, match="python3 SimCLRv2/download.py --model r50_1x_sk1"):
        M.build_model("SimCLR v2 ResNet50 1x", weights="pretrained")
    torch.save({"resnet": resnet.state_dict()}, path)
    model, transform, info = M.build_model("SimCLR v2 ResNet50 1x", weights="pretrained")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = resnet(x)
        assert torch.equal(model(x), expected)
        # EmbeddingNet's trunk of a SimCLR model, average-pooled, is the same embedding.
        trunk = M.feature_maps(get_model_spec("SimCLR v2 ResNet50 1x"), model, x)
        assert torch.allclose(trunk.mean(dim=(2, 3)), expected, atol=1e-5)
    assert transform.preprocessing.mean is None  # SimCLR inputs stay in [0, 1]
    assert info["embedding_dim"] == 2048 and info["weights_file"] == str(path)
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _small_spec(name):
    """The registry spec, cheaper to run on a loaded CPU: PyTorch's default initialisation for Inception v3 (its
    truncated normal is slow), the B0 member of the EfficientNet family (same code path as B7)."""
    spec = get_model_spec(name)
    if "init_weights" in spec.options:
        spec = dataclasses.replace(spec, options={**spec.options, "init_weights": False})
    if spec.arch == "efficientnet_b7":
        spec = dataclasses.replace(spec, arch="efficientnet_b0")
    return spec


@pytest.mark.parametrize("name", ["ResNet18 1x", "Inception v3", "EfficientNet B7"])
def test_trunk_then_average_pooling_is_the_embedding(name):
    spec = _small_spec(name)
    model, _ = M.build_network(spec, "random", seed=0)
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        pooled = M.feature_maps(spec, model, x).mean(dim=(2, 3))
        if spec.head == "relu":
            assert (pooled < 0).any()  # the ReLU of the seed's EfficientNet head matters
            pooled = torch.relu(pooled)
        assert torch.allclose(pooled, model(x), atol=1e-5), name
    if name == "Inception v3":
        assert model.AuxLogits is None and model.transform_input


def test_embedding_net_average_pooling_equals_build_model():
    net = M.EmbeddingNet("ResNet18 1x", weights="random", seed=5).eval()
    model, _, _ = M.build_model("ResNet18 1x", weights="random", seed=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-6)
    assert net.embedding_dim == 512 and net.preprocessing["crop"] == [224, 224]


def test_gem_pooling_projection_and_normalisation_against_numpy():
    net = M.EmbeddingNet("ResNet18 1x", pooling="gem", gem_p=2.5, projection_dim=8, normalize=True, seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = net.forward_features(x).numpy().astype(np.float64)
        out = net(x).numpy()
    gem = (np.clip(maps, 1e-6, None) ** 2.5).mean(axis=(2, 3)) ** (1 / 2.5)
    projected = gem @ net.projection.weight.detach().numpy().T + net.projection.bias.detach().numpy()
    expected = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-5)
    assert net.embedding_dim == 8 and isinstance(net.pool.p, nn.Parameter)
    fixed = M.EmbeddingNet("ResNet18 1x", pooling="gem", gem_learnable=False)
    assert "pool.p" in fixed.state_dict() and "pool.p" not in dict(fixed.named_parameters())


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    net = M.EmbeddingNet("ResNet18 1x", pooling="gem", gem_p=3.0, projection_dim=16, normalize=True, seed=2)
    with torch.no_grad():
        net.pool.p.fill_(4.0)  # a "trained" value must survive the round trip
    path = tmp_path / "run1_models" / "epoch_3.pth"
    M.save_checkpoint(path, net, epoch=3, metrics={"loss": 0.5, "history": [1.0, 0.5]}, optimizer={"lr": 0.1})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "simsearch-checkpoint-v1" and raw["epoch"] == 3
    assert raw["config"] == {"backbone": "ResNet18 1x", "pooling": "gem", "gem_p": 3.0, "projection_dim": 16,
                             "normalize": True, "seed": 2, "gem_learnable": True, "preprocessing": None}
    loaded, transform, info = M.load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    assert info["name"] == "Checkpoint run1_models/epoch_3" and info["embedding_dim"] == 16
    assert info["checkpoint"] == {"epoch": 3}
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(transform, ImageTransform) and not loaded.training
    with pytest.raises(TypeError, match="only tensors"):
        M.save_checkpoint(tmp_path / "bad.pth", net, scheduler=object())
    custom = M.EmbeddingNet("ResNet18 1x", preprocessing={"resize": [96, 96], "crop": None, "mean": [0.5] * 3,
                                                          "std": [0.5] * 3})
    _, custom_transform, custom_info = M.load_checkpoint(M.save_checkpoint(tmp_path / "custom.pth", custom))
    assert custom_transform.preprocessing.input_size == (96, 96)
    assert custom_info["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    plain = tmp_path / "plain.pth"
    torch.save(net.state_dict(), plain)
    with pytest.raises(ValueError, match="not a simsearch-checkpoint-v1"):
        M.load_checkpoint(plain)
