"""Regularisers toward the start (L2-SP, feature distillation), frozen batch norm, held-out flips, selection by µAP."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import finetune
from finetuning.augment import CopyDetectionAugment, eval_transform, seeded_view
from finetuning.models import TrainingModel
from finetuning.regularizers import StartSnapshot, feature_distillation_loss, l2sp_penalty
from finetuning.trainer import LossSpec, StartRegularizer, compute_loss
from helpers.results import read_json


def _linear():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        layer.bias.copy_(torch.tensor([0.5]))
    return layer


def test_l2sp_penalty_and_gradient_hand_values():
    layer = _linear()
    start = StartSnapshot(layer)
    assert float(l2sp_penalty(layer, start, 3.0).detach()) == 0.0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.5, -1.0]]))    # moved by (0.5, 1.0)
        layer.bias.copy_(torch.tensor([-0.5]))             # moved by -1.0
    penalty = l2sp_penalty(layer, start, 3.0)
    # 3 / 2 * (0.25 + 1 + 1) = 3.375
    assert float(penalty.detach()) == pytest.approx(3.375)
    penalty.backward()
    # gradient alpha * (w - w0)
    np.testing.assert_allclose(layer.weight.grad.numpy(), [[1.5, 3.0]])
    np.testing.assert_allclose(layer.bias.grad.numpy(), [-3.0])
    # the snapshot is a copy, not a view of the trained tensors
    np.testing.assert_allclose(start.values["weight"].numpy(), [[1.0, -2.0]])


def test_l2sp_skips_frozen_parameters_and_refuses_other_networks():
    layer = _linear()
    layer.bias.requires_grad_(False)
    start = StartSnapshot(layer)
    assert list(start.values) == ["weight"]
    with torch.no_grad():
        layer.bias.add_(10.0)
    assert float(l2sp_penalty(layer, start, 1.0)) == 0.0
    with pytest.raises(ValueError, match="no parameter"):
        l2sp_penalty(nn.Sequential(nn.Linear(2, 1)), start, 1.0)


def test_feature_distillation_hand_values():
    student = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    # row 1: (0.6, 0.8) - (1, 0) -> 0.16 + 0.64 = 0.8 (= 2 - 2 cos, cos 0.6); row 2: same direction -> 0
    loss = feature_distillation_loss(student, teacher)
    assert float(loss.detach()) == pytest.approx(0.4)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="shape"):
        feature_distillation_loss(student, teacher[:1])


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TrainingModel(net)


def test_compute_loss_adds_regularisers_with_their_weights():
    model = _tiny_model()
    rng = torch.Generator().manual_seed(1)
    batch = [torch.rand(6, 3, 8, 8, generator=rng), torch.rand(6, 3, 8, 8, generator=rng)]
    plain_spec = LossSpec("copy_detection", temperature=0.5)
    spec = LossSpec("copy_detection", temperature=0.5, l2sp_weight=4.0, distill_weight=2.0)
    regularizer = StartRegularizer.for_model(model, spec)
    assert StartRegularizer.for_model(model, plain_spec) is None
    model.eval()                      # batch statistics off: the teacher (eval mode) and the start agree exactly
    plain, _ = compute_loss(model, batch, plain_spec)
    loss, parts = compute_loss(model, batch, spec, regularizer)
    assert parts["l2sp"] == 0.0 and parts["distill"] == pytest.approx(0.0, abs=1e-12)
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)
    with torch.no_grad():
        model.net[0].bias.add_(0.1)   # 4 biases moved by 0.1: sum of squares 0.04
    plain, _ = compute_loss(model, batch, plain_spec)
    loss, parts = compute_loss(model, batch, spec, regularizer)
    descriptors = torch.nn.functional.normalize(model.descriptor(torch.cat(batch)), dim=1)
    teacher = torch.nn.functional.normalize(regularizer.teacher.descriptor(torch.cat(batch)), dim=1)
    distill = float((descriptors - teacher).pow(2).sum(dim=1).mean())
    assert parts["l2sp"] == pytest.approx(0.04, rel=1e-5)
    assert parts["distill"] == pytest.approx(distill, rel=1e-5) and distill > 0
    assert float(loss) == pytest.approx(float(plain) + 0.5 * 4.0 * 0.04 + 2.0 * distill, rel=1e-5)
    # the teacher stays frozen at the start
    assert not any(p.requires_grad for p in regularizer.teacher.parameters())
    assert float(regularizer.teacher.net[0].bias[0]) == pytest.approx(float(model.net[0].bias[0]) - 0.1)


def test_freeze_bn_keeps_running_statistics_and_trains_affine():
    frozen, free = _tiny_model(), _tiny_model()
    frozen = TrainingModel(frozen.net, freeze_bn=True)
    before = frozen.net[1].running_mean.clone()
    for model in (frozen, free):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(torch.rand(4, 3, 8, 8) * 5)
        out.pow(2).sum().backward()
        optimizer.step()
    assert torch.equal(frozen.net[1].running_mean, before) and not frozen.net[1].training
    assert not torch.equal(free.net[1].running_mean, before)
    assert frozen.net[1].weight.grad is not None and frozen.training


def test_held_out_flips_are_never_applied(photo):
    image = photo(90, 60, seed=4)
    augment = CopyDetectionAugment(32, p_edit=1.0, jitter=0.0, families=["grayscale"], crop_prob=0.0)
    assert augment.flip is False and CopyDetectionAugment(32).flip is True
    straight = eval_transform(32)(image.convert("L").convert("RGB"))
    mirror = torch.flip(straight, dims=[2])
    assert float((straight - mirror).abs().mean()) > 0.05
    for index in range(12):
        view = seeded_view(augment, image, 0, 0, index, 0)
        if float(view.std()) == 0:     # the view's random grayscale/blur never flip; only compare shapes then
            continue
        assert float((view - straight).abs().mean()) < float((view - mirror).abs().mean())


def test_finetune_with_regularisers_frozen_bn_and_muap_selection_resumes(tmp_path):
    from conftest import synthetic_photo

    for split, seeds in (("train", range(8)), ("val", range(50, 53))):
        (tmp_path / split).mkdir()
        for i in seeds:
            synthetic_photo(64, 48, seed=i).save(tmp_path / split / f"{split}{i}.png")
    args = ["--train_dataset", tmp_path / "train", "--val_dataset", tmp_path / "val", "--log_dir", tmp_path / "log",
            "--mode", "copy_detection", "--epochs", 2, "--val_copies", 2, "--backbone", "ResNet18 1x",
            "--model", "random", "--size", "32", "--batch_size", "4", "--workers", "0", "--device", "cpu",
            "--l2sp_weight", "0.5", "--distill_weight", "1.0", "--freeze_bn", "--select_metric", "muap"]
    assert finetune.main([str(a) for a in args]) == 0
    best = read_json(tmp_path / "log" / "best_epoch.json")
    assert best["metric"] == "validation muap"
    values = {r["epoch"]: r["val_muap"] for r in best["history"]}
    assert best["best_value"] == max(values.values()) and values[best["best_epoch"]] == best["best_value"]
    trained = [r for r in best["history"] if r["epoch"] > 0]
    assert all(r["train_l2sp"] >= 0 and r["train_distill"] >= 0 for r in trained)
    assert trained[-1]["train_l2sp"] > 0          # the weights moved away from the start

    # resumed after epoch 1, the regularisers anchor at the same start: the same epoch-2 weights
    import yaml

    run_dir = next(Path(f"{tmp_path / 'log'}_models").iterdir())
    reference = torch.load(run_dir / "epoch_2.pth", weights_only=True)
    (run_dir / "epoch_2.pth").unlink()
    record = yaml.safe_load((tmp_path / "log" / "experiment.yml").read_text())
    record["status"] = "running"
    (tmp_path / "log" / "experiment.yml").write_text(yaml.safe_dump(record))
    assert finetune.main([str(a) for a in args] + ["--resume"]) == 0
    resumed = torch.load(run_dir / "epoch_2.pth", weights_only=True)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
