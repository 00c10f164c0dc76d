"""Dataset registry and the ground-truth identity convention."""
import pytest

from helpers.datasets import REGISTERED_DATASETS, attack_of, identity_of, resolve_dataset


def test_registered_names_map_to_seed_folders(tmp_path):
    expected = {
        "BSDS500_original": ["BSDS500/Original"], "BSDS500_attacks": ["BSDS500/Attacks"],
        "Kaggle_templates": ["Kaggle_memes/Templates"], "Kaggle_memes": ["Kaggle_memes/Memes"],
        "all_memes": ["Kaggle_memes/Memes", "Kaggle_memes/Templates"], "Flickr500K": ["Flickr500K"],
        "demo": ["demo/Original"],
    }
    for name, subfolders in expected.items():
        dataset = resolve_dataset(name, datasets_dir=tmp_path)
        assert dataset.folders == [tmp_path / sub for sub in subfolders]
    assert set(expected) <= set(REGISTERED_DATASETS)


def test_missing_registered_folder_points_to_readme(tmp_path):
    with pytest.raises(FileNotFoundError, match="Datasets/README.md"):
        resolve_dataset("Flickr500K", datasets_dir=tmp_path).image_paths()


def test_path_dataset_named_after_folder(image_folder):
    dataset = resolve_dataset(str(image_folder))
    assert dataset.name == "images"
    assert [p.name for p in dataset.image_paths()] == [f"img{i}.png" for i in range(6)]


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="not a registered name"):
        resolve_dataset("no_such_dataset_or_folder")


def test_flickr_order_is_numeric(tmp_path):
    for folder in ("10", "2"):
        for image in ("100.jpg", "20.jpg"):
            path = tmp_path / "Flickr500K" / folder / image
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    paths = resolve_dataset("Flickr500K", datasets_dir=tmp_path).image_paths()
    assert [p.relative_to(tmp_path / "Flickr500K").as_posix() for p in paths] == [
        "2/20.jpg", "2/100.jpg", "10/20.jpg", "10/100.jpg"]


@pytest.mark.parametrize("name,identity,attack", [
    ("100007.jpg", "100007", None),
    ("Attacks/100007_gaussian_noise_0.01.png", "100007", "gaussian_noise_0.01"),
    ("100007_s&p_noise_0.1.png", "100007", "s&p_noise_0.1"),
    ("Memes/who-would-win_123.jpg", "who-would-win", "123"),
    ("Templates/who-would-win.jpg", "who-would-win", None),
])
def test_identity_convention(name, identity, attack):
    assert identity_of(name) == identity
    assert attack_of(name) == attack
