"""evaluate_finetuning.py: per-epoch cluster statistics and recall@1 against the exactly rebuilt starting model."""
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_finetuning
import finetune
from helpers.results import read_json


@pytest.fixture(scope="module")
def run_and_dataset(tmp_path_factory):
    from conftest import synthetic_photo

    root = tmp_path_factory.mktemp("evalft")
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    for i in range(8):
        synthetic_photo(64, 48, seed=i).save(train / f"t{i}.png")
    for i in range(5):
        image = synthetic_photo(64, 48, seed=100 + i)
        image.save(test / f"o{i}.png")
        image.transpose(0).save(test / f"o{i}_flip.png")
        image.rotate(15).save(test / f"o{i}_rot.png")
        image.crop((8, 6, 56, 42)).save(test / f"o{i}_crop.png")
    log_dir = root / "run"
    assert finetune.main(["--train_dataset", str(train), "--log_dir", str(log_dir), "--mode", "copy_detection",
                          "--backbone", "ResNet18 1x", "--model", "random", "--size", "32", "--batch_size", "4",
                          "--epochs", "2", "--workers", "0", "--device", "cpu", "--seed", "7"]) == 0
    run_dir = next(Path(f"{log_dir}_models").iterdir())
    return run_dir, test, root


def test_evaluate_finetuning_writes_metrics_and_plots(run_and_dataset, capsys):
    run_dir, test, root = run_and_dataset
    out = root / "eval"
    assert evaluate_finetuning.main(["--checkpoints", str(run_dir), "--dataset", str(test), "--out", str(out),
                                     "--device", "cpu"]) == 0
    summary = read_json(out / "finetuning_evaluation.json")
    assert [m["epoch"] for m in summary["models"]] == [None, 1, 2]
    assert summary["size"] == 32 and summary["n_clusters"] == 5 and summary["n_images"] == 20
    for model in summary["models"]:
        assert 0 <= model["recall@1"] <= 1
        assert np.isfinite(model["sn_ratio1"]) and np.isfinite(model["sn_ratio2"])
        assert set(model["per_cluster"]) == {"diameter", "min_distance_outside", "mean_distance_inside",
                                             "centroid_to_centroid"}
    for name in ("violin_diameter", "violin_min_distance_outside", "ratios_per_epoch", "recall_per_epoch"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file()
    assert "recall@1" in capsys.readouterr().out

    # recall@1 of the stored descriptors, recomputed by brute force
    from helpers.feature_store import load_features

    for slug, model in zip(("start", "epoch_1", "epoch_2"), summary["models"]):
        stored = load_features(out / "features" / slug)
        x = np.asarray(stored.features, dtype=np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        names = [Path(n).stem for n in stored.names]
        db = [i for i, n in enumerate(names) if "_" not in n]
        queries = [i for i, n in enumerate(names) if "_" in n]
        nearest = [db[int(np.argmax(x[db] @ x[q]))] for q in queries]
        hits = [names[n] == names[q].split("_")[0] for n, q in zip(nearest, queries)]
        assert model["recall@1"] == pytest.approx(np.mean(hits))

    # The finished experiment is not overwritten without --force.
    with pytest.raises(SystemExit) as exc:
        evaluate_finetuning.main(["--checkpoints", str(run_dir), "--dataset", str(test), "--out", str(out)])
    assert exc.value.code == 2


def test_starting_model_is_rebuilt_exactly(run_and_dataset):
    from extractor.models import EmbeddingNet
    from finetuning.evaluate import starting_model
    from finetuning.models import read_checkpoint

    run_dir, _, _ = run_and_dataset
    model, info = starting_model(read_checkpoint(run_dir / "epoch_1.pth"))
    independent = EmbeddingNet("ResNet18 1x", pooling="gem", normalize=True, weights="random", seed=7)
    assert info["start"] == "random"
    for key, value in independent.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    trained = read_checkpoint(run_dir / "epoch_2.pth")["state_dict"]
    assert not torch.equal(trained["backbone.conv1.weight"], independent.state_dict()["backbone.conv1.weight"])


def test_errors(run_and_dataset, tmp_path, capsys):
    run_dir, test, _ = run_and_dataset
    with pytest.raises(SystemExit) as exc:
        evaluate_finetuning.main(["--checkpoints", str(tmp_path / "none.pth"), "--dataset", str(test),
                                  "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
