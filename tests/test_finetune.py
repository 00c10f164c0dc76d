"""finetune.py end to end on generated images: checkpoints, TensorBoard, best epoch, exact resume, modes, errors."""
from pathlib import Path

import pytest
import torch
import yaml

import finetune
from helpers.results import read_json

TINY = ["--backbone", "ResNet18 1x", "--model", "random", "--size", "32", "--batch_size", "4", "--workers", "0",
        "--device", "cpu", "--log_every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import synthetic_photo

    root = tmp_path_factory.mktemp("ft_data")
    for split, seeds in (("train", range(8)), ("val", range(50, 54))):
        (root / split).mkdir()
        for i in seeds:
            synthetic_photo(64, 48, seed=i).save(root / split / f"{split}{i}.png")
    return root


def run(args):
    return finetune.main([str(a) for a in args])


def only_run_dir(log_dir):
    runs = sorted(Path(f"{log_dir}_models").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_copy_detection_run_checkpoints_logs_and_exact_resume(data, tmp_path):
    log_dir = tmp_path / "cd"
    args = ["--train_dataset", data / "train", "--val_dataset", data / "val", "--log_dir", log_dir,
            "--mode", "copy_detection", "--epochs", 3, "--val_copies", 2, "--embedding_dim", 16] + TINY
    assert run(args) == 0
    run_dir = only_run_dir(log_dir)
    assert sorted(p.name for p in run_dir.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"]

    from extractor.models import load_checkpoint

    net, transform, info = load_checkpoint(run_dir / "epoch_3.pth")
    assert net.embedding_dim == 16 and net.config["pooling"] == "gem" and net.config["normalize"]
    # The extractor prepares images exactly as training and validation did: whole image, 32x32, ImageNet stats.
    from finetuning.augment import eval_transform

    image = data_image(data)
    mean, std = torch.tensor(net.preprocessing["mean"]), torch.tensor(net.preprocessing["std"])
    expected = (eval_transform(32)(image) - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(transform(image), expected)
    with torch.no_grad():
        out = net(transform(data_image(data)).unsqueeze(0))
    assert out.shape == (1, 16) and abs(float(out.norm()) - 1) < 1e-5

    best = read_json(log_dir / "best_epoch.json")
    assert [r["epoch"] for r in best["history"]] == [0, 1, 2, 3]
    values = {r["epoch"]: r["recall@1"] for r in best["history"]}
    assert best["best_value"] == max(values.values()) and values[best["best_epoch"]] == best["best_value"]
    assert all(0 <= v <= 1 for v in values.values())
    events = b"".join(p.read_bytes() for p in (log_dir / run_dir.name).glob("events.out.tfevents.*"))
    for tag in (b"loss/train", b"loss/nt_xent", b"loss/koleo", b"lr", b"val/recall@1"):
        assert tag in events
    record = yaml.safe_load((log_dir / "experiment.yml").read_text())
    assert record["status"] == "finished" and record["config"]["mode"] == "copy_detection"

    # A finished experiment is not overwritten without --force.
    with pytest.raises(SystemExit) as exc:
        run(args)
    assert exc.value.code == 2

    # Simulate a run killed during epoch 3: resuming from epoch 2 must give exactly the same weights.
    reference = torch.load(run_dir / "epoch_3.pth", weights_only=True)
    (run_dir / "epoch_3.pth").unlink()
    record["status"] = "running"
    (log_dir / "experiment.yml").write_text(yaml.safe_dump(record))
    assert run(args + ["--resume"]) == 0
    resumed = torch.load(run_dir / "epoch_3.pth", weights_only=True)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert resumed["history"] == reference["history"][:3] + [resumed["history"][3]]
    assert resumed["history"][3]["train_loss"] == pytest.approx(reference["history"][3]["train_loss"], rel=1e-6)


def data_image(data):
    from helpers.image_io import load_image

    return load_image(next((data / "val").glob("*.png")))


def test_simclr_mode_keeps_head_and_continues_from_checkpoint(data, tmp_path):
    args = ["--train_dataset", data / "train", "--log_dir", tmp_path / "simclr", "--epochs", 1,
            "--head_layers", 2, "--head_dim", 8] + TINY
    assert run(args) == 0
    checkpoint = only_run_dir(tmp_path / "simclr") / "epoch_1.pth"
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["mode"] == "simclr" and payload["config"]["pooling"] == "avg"
    assert payload["head_state_dict"]["layers.1.linear.weight"].shape == (8, 512)
    # --model PATH starts a new run from those weights (head included)
    args2 = ["--train_dataset", data / "train", "--log_dir", tmp_path / "simclr2", "--epochs", 1,
             "--head_layers", 2, "--head_dim", 8, "--optimizer", "adam"] + TINY
    args2[args2.index("--model") + 1] = str(checkpoint)
    args2[args2.index("--size") + 1] = "40"          # continued at another size: the preprocessing follows
    assert run(args2) == 0
    again = torch.load(only_run_dir(tmp_path / "simclr2") / "epoch_1.pth", weights_only=True)
    assert again["start"]["start"] == "checkpoint"
    assert again["config"]["preprocessing"]["input_size"] == [40, 40]
    assert payload["config"]["preprocessing"]["input_size"] == [32, 32]


def test_triplet_mode_with_siamese_network(data, tmp_path):
    from finetuning.models import load_descriptor_net

    args = ["--train_dataset", data / "train", "--log_dir", tmp_path / "tri", "--epochs", 2, "--mode", "triplet",
            "--optimizer", "adam", "--lr", "0.001"] + TINY
    args[args.index("--backbone") + 1] = "siamese"
    # A time limit that only allows one epoch: the run stops early, stays unfinished, and resumes.
    assert run(args + ["--max_minutes", "1e-6"]) == 0
    best = read_json(tmp_path / "tri" / "best_epoch.json")
    assert best["stopped_early"]["after_epoch"] == 1 and best["last_epoch"] == 1
    assert yaml.safe_load((tmp_path / "tri" / "experiment.yml").read_text())["status"] == "running"
    assert run(args + ["--resume"]) == 0
    assert read_json(tmp_path / "tri" / "best_epoch.json")["last_epoch"] == 2
    net, payload = load_descriptor_net(only_run_dir(tmp_path / "tri") / "epoch_2.pth")
    assert payload["mode"] == "triplet" and net(torch.rand(2, 3, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize("extra,message", [
    (["--train_dataset", "/nonexistent/folder"], "unknown dataset"),
    (["--model", "original", "--backbone", "SimCLR v2 ResNet50 1x"], "download.py"),
    (["--batch_size", "64"], "lower --batch_size"),
])
def test_errors_are_one_line(data, tmp_path, capsys, extra, message):
    args = ["--train_dataset", data / "train", "--log_dir", tmp_path / "err", "--epochs", 1] + TINY + extra
    with pytest.raises(SystemExit) as exc:
        run(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
