"""Post-processing: L2 normalisation, PCA / whitening (scikit-learn as the oracle), multi-layer features
(torchvision's feature extractor as the oracle), and their use through extract_features."""
import numpy as np
import pytest
import torch
import torchvision
from sklearn.decomposition import PCA as SkPCA
from torchvision.models.feature_extraction import create_feature_extractor

from extractor import postprocess as P
from extractor.extract import extract_features
from extractor.models import build_model
from helpers.feature_store import feature_dir, load_features


def _anisotropic(n, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(5, 0.5, d) + rng.normal(size=d) * 3).astype(np.float32)


def test_l2_normalize_against_numpy():
    x = np.array([[3, 4, 0], [0, 0, 0], [1e-3, -2e-3, 2e-3]], dtype=np.float32)
    out = P.l2_normalize(x)
    assert out.dtype == np.float32
    assert np.allclose(out[0], [0.6, 0.8, 0.0]) and np.array_equal(out[1], [0, 0, 0])
    assert np.allclose(out[2], x[2] / np.sqrt((x[2].astype(np.float64) ** 2).sum()), rtol=1e-6)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn(whiten, monkeypatch, tmp_path):
    monkeypatch.setattr(P, "ROWS_PER_BLOCK", 37)  # stream the fit and the transform in several blocks
    train, test = _anisotropic(300, 24, 0), _anisotropic(50, 24, 1)
    ours = P.PCA(8).fit(train)
    ref = SkPCA(8, svd_solver="full", whiten=whiten).fit(train.astype(np.float64))
    assert np.allclose(ours.mean_, ref.mean_)
    assert np.allclose(ours.components_, ref.components_, atol=1e-6)  # same sign convention
    assert np.allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-6)
    assert np.allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6)
    expected = ref.transform(test.astype(np.float64))
    assert np.allclose(ours.transform(test, whiten=whiten), expected, rtol=1e-4, atol=1e-4)
    path = ours.save(tmp_path / "pca.npz")
    with np.load(path, allow_pickle=False) as data:  # no pickle anywhere in the file
        assert set(data.files) >= {"mean", "components", "explained_variance"}
    again = P.PCA.load(path)
    assert np.array_equal(again.transform(test, whiten=whiten), ours.transform(test, whiten=whiten))
    with pytest.raises(ValueError, match="n_components"):
        P.PCA(30).fit(train)


def test_multi_layer_features_match_torchvision_feature_extractor():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    layers = ["layer2", "layer3", "avgpool", "fc"]  # 4-D maps, a 1x1 map and a 2-D output
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = create_feature_extractor(model, return_nodes=layers)(x)
        ours = P.MultiLayerFeatures(model, layers)(x).numpy()
    parts = []
    for name in layers:
        out = reference[name].numpy().astype(np.float64)
        pooled = out.mean(axis=(2, 3)) if out.ndim == 4 else out
        parts.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    assert np.allclose(ours, np.concatenate(parts, axis=1), atol=1e-5)
    early = P.MultiLayerFeatures(model, ["layer1"])
    with torch.no_grad():  # stops after layer1, same values
        assert torch.allclose(early(x), P.MultiLayerFeatures(model, ["layer1", "fc"])(x)[:, :64])
    with pytest.raises(ValueError, match="unknown layer"):
        P.MultiLayerFeatures(model, ["layer9"])


def test_extraction_with_pca_whitening_l2_and_layers(tmp_path, photo):
    fit, query = tmp_path / "fitset", tmp_path / "queryset"
    for folder, count, offset in ((fit, 8, 0), (query, 3, 100)):
        folder.mkdir()
        for i in range(count):
            photo(72 + 4 * i, 60, seed=offset + i).save(folder / f"im{i}.png")
    out = tmp_path / "Features"
    common = dict(out=out, device="cpu", batch_size=4, workers=2, progress=False, weights="random")
    folders = extract_features(["ResNet18 1x", "Dhash 64 bits"], str(query), pca=4, whiten=True,
                               pca_fit_dataset=str(fit), l2_normalize=True, **common)
    names = [f.name for f in folders]
    assert names == ["dhash_64_bits", "dhash_64_bits_pca4_whitened_on_fitset_l2", "resnet18_1x",
                     "resnet18_1x_pca4_whitened_on_fitset_l2"]
    raw_fit = np.asarray(load_features(feature_dir(str(fit), "ResNet18 1x", out)).features, dtype=np.float64)
    raw_query = np.asarray(load_features(feature_dir(str(query), "ResNet18 1x", out)).features, dtype=np.float64)
    expected = SkPCA(4, svd_solver="full", whiten=True).fit(raw_fit).transform(raw_query)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    derived = load_features(folders[3])
    assert np.allclose(derived.features, expected, atol=1e-4)
    assert derived.meta["postprocessing"][0]["whiten"] and derived.meta["source_name"] == "ResNet18 1x"
    assert (feature_dir(str(fit), "ResNet18 1x", out) / "pca_4.npz").is_file()
    bits = np.unpackbits(np.asarray(load_features(folders[0]).features), axis=1).astype(np.float64)
    fit_bits = np.unpackbits(np.asarray(load_features(feature_dir(str(fit), "Dhash 64 bits", out)).features), axis=1)
    hashed = SkPCA(4, svd_solver="full", whiten=True).fit(fit_bits.astype(np.float64)).transform(bits)
    hashed /= np.linalg.norm(hashed, axis=1, keepdims=True)
    assert np.allclose(load_features(folders[1]).features, hashed, atol=1e-4)

    layered = extract_features("ResNet18 1x", str(query), layers=["layer3", "layer4"], **common)[0]
    store = load_features(layered)
    assert store.meta["name"] == "ResNet18 1x layers layer3+layer4" and store.features.shape == (3, 256 + 512)
    model, transform, _ = build_model("ResNet18 1x")
    from helpers.image_io import load_image

    inputs = torch.stack([transform(load_image(query / f"im{i}.png")) for i in range(3)])
    with torch.no_grad():
        reference = create_feature_extractor(model, return_nodes=["layer3", "layer4"])(inputs)
    parts = [torch.nn.functional.normalize(reference[k].mean(dim=(2, 3)), dim=1) for k in ("layer3", "layer4")]
    assert np.allclose(store.features, torch.cat(parts, 1).numpy(), atol=1e-5)
