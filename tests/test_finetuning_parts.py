"""Fine-tuning building blocks: schedules, augmentation policies, seeded views, validation sets, SyncBN layer."""
import math

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from finetuning.augment import (CopyDetectionAugment, blur_kernel_size, eval_transform, seeded_view,
                                simclr_transform)
from finetuning.config import FinetuneConfig, config_from_args
from finetuning.schedules import WarmupCosine, sqrt_batch_lr, warmup_cosine_factor
from finetuning.syncbn import SyncBatchNorm, convert_sync_batchnorm
from finetuning.validation import RetrievalSet, build_validation_set, evaluate_retrieval


# ----------------------------------------------------------------------------------------------- schedules

def test_sqrt_batch_rule():
    assert sqrt_batch_lr(4096) == pytest.approx(0.075 * 64)
    assert sqrt_batch_lr(256) == pytest.approx(1.2)
    with pytest.raises(ValueError):
        sqrt_batch_lr(0)


def test_warmup_then_cosine_values():
    total, warmup = 110, 10
    factors = [warmup_cosine_factor(step, total, warmup) for step in range(total + 1)]
    np.testing.assert_allclose(factors[:10], [(s + 1) / 10 for s in range(10)])   # linear warm-up to 1
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5)                                        # half-way down the cosine
    assert factors[35] == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))
    assert factors[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))                 # monotone decay


def test_scheduler_drives_optimizer_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=123.0)
    sched = WarmupCosine(opt, base_lr=2.0, total_steps=20, warmup_steps=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    expected = 2.0 * warmup_cosine_factor(7, 20, 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    opt2 = torch.optim.SGD([param], lr=123.0)
    again = WarmupCosine(opt2, base_lr=2.0, total_steps=20, warmup_steps=4)
    again.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected)
    constant = WarmupCosine(opt2, base_lr=0.3, total_steps=20, warmup_steps=4, enabled=False)
    constant.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.3)


# -------------------------------------------------------------------------------------------- augmentation

def test_simclr_policy_is_the_seeds():
    policy = simclr_transform(size=100, jitter=0.5).transforms
    crop, flip, jitter, gray, blur, to_tensor = policy
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (100, 100)
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(jitter, T.RandomApply) and jitter.p == 0.8
    color = jitter.transforms[0]
    assert color.brightness == pytest.approx((0.6, 1.4)) and color.contrast == pytest.approx((0.6, 1.4))
    assert color.saturation == pytest.approx((0.6, 1.4)) and color.hue == pytest.approx((-0.1, 0.1))
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    assert isinstance(blur, T.RandomApply) and blur.p == 0.5
    assert blur.transforms[0].kernel_size == (11, 11) and blur.transforms[0].sigma == (0.1, 2.0)
    assert isinstance(to_tensor, T.ToTensor)


def test_blur_kernel_is_ten_percent_and_odd():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(96) == 9
    assert blur_kernel_size(100) == 11
    assert blur_kernel_size(20) == 3


def test_seeded_views_are_reproducible_and_leave_global_rng(photo):
    image = photo(120, 90, seed=1)
    policy = simclr_transform(64)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = seeded_view(policy, image, seed=0, epoch=1, index=3, view=0)
    assert torch.equal(torch.get_rng_state(), before)
    b = seeded_view(policy, image, seed=0, epoch=1, index=3, view=0)
    c = seeded_view(policy, image, seed=0, epoch=1, index=3, view=1)
    d = seeded_view(policy, image, seed=0, epoch=2, index=3, view=0)
    assert a.shape == (3, 64, 64) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_copy_detection_augment(photo):
    augment = CopyDetectionAugment(48, p_edit=1.0)
    image = photo(100, 80, seed=2)
    views = [seeded_view(augment, image, 0, 0, 0, v) for v in range(4)]
    assert all(v.shape == (3, 48, 48) for v in views)
    assert torch.equal(views[0], seeded_view(augment, image, 0, 0, 0, 0))
    assert not torch.equal(views[0], views[1])
    only_flips = CopyDetectionAugment(48, p_edit=1.0, scale=(1.0, 1.0), jitter=0.0, families=["flip"])
    # scale (1, 1) keeps the whole image; with a flip edit and the random flip, a view is the image or its mirror
    flipped = seeded_view(only_flips, image, 0, 0, 0, 0)
    straight = eval_transform(48)(image)
    mirror = torch.flip(straight, dims=[2])
    assert min(float((flipped - straight).abs().mean()), float((flipped - mirror).abs().mean())) < 0.06
    with pytest.raises(ValueError, match="unknown"):
        CopyDetectionAugment(48, families=["no_such_family"])


# ---------------------------------------------------------------------------------------------- validation

def test_validation_set_generates_copies_and_refuses_overlap(tmp_path, photo):
    folder = tmp_path / "val"
    folder.mkdir()
    for i in range(3):
        photo(80, 60, seed=10 + i).save(folder / f"v{i}.png")
    train = tmp_path / "train"
    train.mkdir()
    for i in range(2):
        photo(80, 60, seed=20 + i).save(train / f"t{i}.png")
    rset = build_validation_set(folder, train_paths=sorted(train.iterdir()), copies=2, seed=0)
    assert len(rset.db_names) == 3 and len(rset.query_names) == 6
    assert sorted({name.split("_")[0] for name in rset.query_names}) == ["v0.png", "v1.png", "v2.png"]
    assert [Path(name).name for name in rset.query_identities] == ["v0.png"] * 2 + ["v1.png"] * 2 + ["v2.png"] * 2
    again = build_validation_set(folder, copies=2, seed=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(rset.query_images, again.query_images))
    # a training photo under another name is still the same image: refused (compared by content)
    (train / "renamed.png").write_bytes((folder / "v1.png").read_bytes())
    with pytest.raises(ValueError, match="shares 1 images"):
        build_validation_set(folder, train_paths=sorted(train.iterdir()), copies=1)


def test_validation_set_uses_existing_attacked_copies(tmp_path, photo):
    folder = tmp_path / "val"
    folder.mkdir()
    for i in range(2):
        photo(80, 60, seed=i).save(folder / f"a{i}.png")
        photo(80, 60, seed=i).transpose(0).save(folder / f"a{i}_flip.png")
    rset = build_validation_set(folder, copies=5)
    assert len(rset.db_names) == 2 and len(rset.query_names) == 2


def test_evaluate_retrieval_counts_hits(photo):
    images = [photo(40, 40, seed=i) for i in range(4)]
    rset = RetrievalSet(images, [f"i{i}.png" for i in range(4)], [images[0], images[1], images[3]],
                        ["i0_q.png", "i1_q.png", "i2_q.png"])
    flatten = lambda x: x.flatten(1)  # noqa: E731  pixels as descriptors: exact copies are found
    metrics = evaluate_retrieval(flatten, rset, eval_transform(16), batch_size=2)
    # i2_q is a copy of image 3, so it is a miss; the others are exact copies: recall@1 = 2/3
    assert metrics["recall@1"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------- syncbn

def test_syncbn_global_batch_against_numpy(monkeypatch):
    """Our synchronised path (not torch's) on a simulated world of 2 processes holding the same batch: the
    statistics are those of the two batches concatenated, checked against numpy; single-process it is torch's."""
    import finetuning.syncbn as syncbn_module

    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        bn[0].weight.uniform_(0.5, 2)
        bn[0].bias.uniform_(-1, 1)
    weight, bias = bn[0].weight.detach().numpy().copy(), bn[0].bias.detach().numpy().copy()
    converted = convert_sync_batchnorm(bn, "cpu")
    assert isinstance(converted[0], SyncBatchNorm)
    monkeypatch.setattr(syncbn_module, "is_initialized", lambda: True)
    monkeypatch.setattr(syncbn_module, "world_size", lambda: 2)
    monkeypatch.setattr(syncbn_module, "all_reduce_sum_with_grad", lambda tensor: tensor * 2)  # two equal ranks
    x = torch.randn(6, 4, 5, 5)
    out = converted(x).detach().numpy()
    both = np.concatenate([x.numpy(), x.numpy()]).astype(np.float64)  # the global batch of the 2 processes
    mean, var = both.mean(axis=(0, 2, 3)), both.var(axis=(0, 2, 3))
    expected = (x.numpy() - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    expected = expected * weight[None, :, None, None] + bias[None, :, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    n = both.size / 4
    np.testing.assert_allclose(converted[0].running_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(converted[0].running_var.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_syncbn_keeps_scale_without_shift():
    from SimCLRv2.resnet import batch_norm_1d

    layer = torch.nn.Sequential(batch_norm_1d(3, center=False))
    converted = convert_sync_batchnorm(layer, "cpu")[0]
    assert converted.weight is not None and converted.bias is None


# ------------------------------------------------------------------------------------------------- config

def test_config_defaults_and_validation():
    config = FinetuneConfig("data", "log")
    assert config.loss_temperature == 0.1 and config.koleo == 0.0
    cd = FinetuneConfig("data", "log", mode="copy_detection")
    assert cd.loss_temperature == 0.05 and cd.koleo > 0
    assert FinetuneConfig("d", "l", temperature=0.3).loss_temperature == 0.3
    with pytest.raises(ValueError):
        FinetuneConfig("d", "l", mode="nope")
    with pytest.raises(ValueError):
        FinetuneConfig("d", "l", epochs=0)


def test_every_config_field_is_exactly_one_flag_with_the_same_default():
    """Flags are declared once, in FinetuneConfig: finetune.py's parser has one flag per field, with the field's
    default (a field without default is a required flag), and no fine-tuning flag outside the dataclass."""
    import dataclasses

    import finetune

    parser = finetune.build_parser()
    actions = [action for action in parser._actions if action.dest not in ("help", "config")]
    by_dest = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    names = [spec.name for spec in dataclasses.fields(FinetuneConfig)]
    assert sorted(by_dest) == sorted(names)
    for spec in dataclasses.fields(FinetuneConfig):
        (action,) = by_dest[spec.name]
        if spec.default is dataclasses.MISSING:
            assert action.required, spec.name
        else:
            assert not action.required and action.default == spec.default, spec.name
        if "flag" in spec.metadata:  # declared from the field: the flag is --<field>, help and choices from there
            assert action.option_strings == [f"--{spec.name}"] and action.help == spec.metadata["flag"]["help"]
            assert action.choices == spec.metadata["flag"].get("choices")
    args = parser.parse_args(["--train_dataset", "d", "--log_dir", "l"])
    assert config_from_args(args) == FinetuneConfig(train_dataset=["d"], log_dir="l")
