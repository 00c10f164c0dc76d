"""TF -> PyTorch conversion of SimCLR checkpoints, verified offline on checkpoints written here.

The checkpoints are real TensorFlow checkpoints (``tf.raw_ops.SaveV2``, the V2 format the official
``model.ckpt-STEP.index/.data-*`` files use) whose variables carry the official names, filled with random
values. The expected names come from the PyTorch definition, so they are *also* checked against names and
shapes transcribed independently from google-research/simclr (``resnet.py``: the projection shortcut is
created before the residual branch; ``model_util.py``: ``head_contrastive/nl_j``, no ``beta`` on the last
layer), from the first SimCLRv1 kernels reported in google-research/simclr issue #88
([64,3,7,7], [256,64,1,1], [64,64,1,1]) and from the published parameter counts. Finally a forward pass is
computed from the TF variables with TensorFlow ops, following the official code, and compared with the
converted PyTorch model.
"""
import os
from urllib.error import URLError

import numpy as np
import pytest
import torch

import SimCLRv1
import SimCLRv2
from SimCLRv2 import convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402  (a dev requirement: requirements-dev.txt)

V2_STEP = SimCLRv2.STEPS["pretrained"]
V1_STEP = SimCLRv1.STEPS["pretrain"]
NUM_CLASSES = 1000


# ----------------------------------------------------------------------------------------------------------
# Writing official-looking checkpoints
# ----------------------------------------------------------------------------------------------------------
def expected_variables(resnet, head):
    """``{name: tf_shape}`` of the weights (encoder, projection head, supervised head) of a checkpoint."""
    names = convert.expected_tf_variables(resnet, convert.resnet_entries(resnet))
    names.update(convert.expected_tf_variables(head, convert.head_entries(head)))
    names["head_supervised/linear_layer/dense/kernel"] = (resnet.num_features, NUM_CLASSES)
    names["head_supervised/linear_layer/dense/bias"] = (NUM_CLASSES,)
    return names


def random_value(name, shape, rng):
    """Random values of a plausible scale, so that the random network's activations stay finite."""
    if name.endswith("moving_variance"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith("gamma"):
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(("beta", "moving_mean", "bias")):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[:-1]))
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in)))


def official_variables(resnet, head, ema, seed):
    """Weights (+ ``ema_model/`` copies of encoder and projection head), a few Momentum slots, global_step."""
    rng = np.random.default_rng(seed)
    expected = expected_variables(resnet, head)
    variables = {}
    if ema:
        # SimCLRv2 keeps EMA copies under ema_model/ for the encoder and the projection head; the converter
        # falls back to the trained value for variables without one (here the supervised head). The trained
        # copies, skipped when EMA is requested, are written for one variable in ten only, to keep the test fast.
        variables.update({"ema_model/" + name: random_value(name, shape, rng) for name, shape in expected.items()
                          if not name.startswith("head_supervised")})
        expected = {name: shape for i, (name, shape) in enumerate(expected.items())
                    if i % 10 == 0 or name.startswith("head_supervised")}
    variables.update({name: random_value(name, shape, rng) for name, shape in expected.items()})
    for name in ("base_model/conv2d/kernel", "head_supervised/linear_layer/dense/kernel"):
        variables[name + "/Momentum"] = np.zeros_like(variables[name])
    variables["global_step"] = np.array(V2_STEP, dtype=np.int64)
    return variables


def write_checkpoint(folder, variables, step):
    """Write ``variables`` by name as ``folder/model.ckpt-STEP`` (plus the ``checkpoint`` state file)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=str(folder / f"model.ckpt-{step}"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=[variables[n] for n in names])
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "model.ckpt-{step}"\n')
    return folder


def written_checkpoint(tmp_path_factory, build, model, ema, seed, step):
    """Random official-looking variables for ``build(model)``, written to a fresh folder: (folder, variables)."""
    variables = official_variables(*build(model), ema=ema, seed=seed)
    return write_checkpoint(tmp_path_factory.mktemp(model), variables, step), variables


@pytest.fixture(scope="module")
def v2_sk1(tmp_path_factory):
    """r50_1x_sk1 with EMA copies, as in the official pretrained SimCLRv2 checkpoints."""
    return written_checkpoint(tmp_path_factory, SimCLRv2.build_model, "r50_1x_sk1", True, 1, V2_STEP)


@pytest.fixture(scope="module")
def v1_1x(tmp_path_factory):
    """SimCLRv1 ResNet-50 1x (no EMA, 2-layer head)."""
    return written_checkpoint(tmp_path_factory, SimCLRv1.build_model, "1x", False, 2, V1_STEP)


@pytest.fixture(scope="module")
def v2_sk1_cli(v2_sk1, tmp_path_factory):
    """``download.py --from-dir`` on the sk1 checkpoint (EMA): the root folder of the converted file."""
    folder, _ = v2_sk1
    root = tmp_path_factory.mktemp("simclrv2_root")
    code = SimCLRv2.main(["--model", "r50_1x_sk1", "--simclr_category", "pretrained", "--ema", "True",
                          "--from-dir", str(folder), "--out-dir", str(root)])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def sk0_shapes():
    """Names and shapes of a plain r50_1x_sk0 checkpoint (for the checks that read no tensor)."""
    with torch.device("meta"):
        names = expected_variables(*SimCLRv2.build_model("r50_1x_sk0"))
    names.update({"base_model/conv2d/kernel/Momentum": names["base_model/conv2d/kernel"], "global_step": ()})
    return names


def as_torch(array, layout):
    array = np.asarray(array)
    if layout == "conv":
        array = array.transpose(3, 2, 0, 1)
    elif layout == "dense":
        array = array.T
    return torch.from_numpy(array.copy())


# ----------------------------------------------------------------------------------------------------------
# Naming: independent transcription of the official names and shapes
# ----------------------------------------------------------------------------------------------------------
OFFICIAL_SK0 = {
    "base_model/conv2d/kernel": (7, 7, 3, 64),
    "base_model/conv2d_1/kernel": (1, 1, 64, 256),   # block 1 projection shortcut, created first
    "base_model/conv2d_2/kernel": (1, 1, 64, 64),
    "base_model/conv2d_3/kernel": (3, 3, 64, 64),
    "base_model/conv2d_4/kernel": (1, 1, 64, 256),
    "base_model/conv2d_5/kernel": (1, 1, 256, 64),   # block 2 (no shortcut conv)
    "base_model/conv2d_11/kernel": (1, 1, 256, 512),  # group 2 shortcut
    "base_model/conv2d_13/kernel": (3, 3, 128, 128),  # group 2, first 3x3 (stride 2)
    "base_model/conv2d_52/kernel": (1, 1, 512, 2048),
    "base_model/batch_normalization/gamma": (64,),
    "base_model/batch_normalization_1/moving_mean": (256,),
    "base_model/batch_normalization_52/moving_variance": (2048,),
    "head_supervised/linear_layer/dense/kernel": (2048, 1000),
    "head_supervised/linear_layer/dense/bias": (1000,),
}
OFFICIAL_V2_HEAD = {
    "head_contrastive/nl_0/dense/kernel": (2048, 2048),
    "head_contrastive/nl_0/batch_normalization/beta": (2048,),
    "head_contrastive/nl_1/dense/kernel": (2048, 2048),
    "head_contrastive/nl_2/dense/kernel": (2048, 128),
    "head_contrastive/nl_2/batch_normalization/gamma": (128,),
    "head_contrastive/nl_2/batch_normalization/moving_variance": (128,),
}
OFFICIAL_SK1 = {
    "base_model/conv2d/kernel": (3, 3, 3, 32),        # ResNet-D stem: three 3x3 convolutions
    "base_model/conv2d_1/kernel": (3, 3, 32, 32),
    "base_model/conv2d_2/kernel": (3, 3, 32, 64),
    "base_model/conv2d_3/kernel": (1, 1, 64, 256),    # shortcut (after the average pool)
    "base_model/conv2d_4/kernel": (1, 1, 64, 64),
    "base_model/conv2d_5/kernel": (3, 3, 64, 128),    # selective kernel: two streams
    "base_model/conv2d_6/kernel": (1, 1, 64, 32),     # mixing: max(64 * 0.0625, 32)
    "base_model/conv2d_7/kernel": (1, 1, 32, 128),
    "base_model/conv2d_8/kernel": (1, 1, 64, 256),
    "base_model/conv2d_86/kernel": (1, 1, 512, 2048),
    "base_model/batch_normalization_2/beta": (64,),
    "base_model/batch_normalization_70/gamma": (2048,),
}


@pytest.mark.parametrize("model, official, n_conv, n_bn", [
    ("r50_1x_sk0", {**OFFICIAL_SK0, **OFFICIAL_V2_HEAD}, 53, 53),
    ("r50_1x_sk1", {**OFFICIAL_SK1, **OFFICIAL_V2_HEAD}, 87, 71),
])
def test_expected_names_match_official_v2(model, official, n_conv, n_bn):
    names = expected_variables(*SimCLRv2.build_model(model))
    for name, shape in official.items():
        assert names.get(name) == shape, name
    assert sum(n.endswith("/kernel") and n.startswith("base_model/conv2d") for n in names) == n_conv
    assert sum(n.endswith("/moving_mean") and n.startswith("base_model/") for n in names) == n_bn
    assert "head_contrastive/nl_2/batch_normalization/beta" not in names
    assert f"base_model/conv2d_{n_conv}/kernel" not in names


def test_expected_names_match_official_v1():
    names = expected_variables(*SimCLRv1.build_model("1x"))
    for name, shape in OFFICIAL_SK0.items():
        assert names.get(name) == shape, name
    assert names["head_contrastive/nl_0/dense/kernel"] == (2048, 2048)
    assert names["head_contrastive/nl_1/dense/kernel"] == (2048, 128)
    assert "head_contrastive/nl_1/batch_normalization/beta" not in names
    assert not any(n.startswith("head_contrastive/nl_2") for n in names)


# ----------------------------------------------------------------------------------------------------------
# Conversion through download.py --from-dir (offline), then the loader
# ----------------------------------------------------------------------------------------------------------
def test_cli_from_dir_then_load_pretrained(v2_sk1_cli, capsys):
    root = v2_sk1_cli
    target = SimCLRv2.checkpoint_path("r50_1x_sk1", "pretrained", ema=True, root=root)
    assert target == root.resolve() / "torch_checkpoints" / "pretrained" / "r50_1x_sk1_ema.pth"
    saved = torch.load(target, map_location="cpu", weights_only=True)
    assert set(saved) == {"resnet", "head", "supervised_head"}
    resnet, head, supervised = SimCLRv2.load_pretrained("r50_1x_sk1", "pretrained", ema=True, root=root,
                                                         return_heads=True)
    assert not resnet.training and not head.training and supervised.weight.shape == (NUM_CLASSES, 2048)
    with torch.no_grad():
        features = resnet(torch.rand(1, 3, 64, 64))
        logits, projection = supervised(features), head(features)
    assert features.shape == (1, 2048) and torch.isfinite(features).all()
    assert logits.shape == (1, NUM_CLASSES) and projection.shape == (1, 128)
    assert isinstance(SimCLRv2.load_pretrained("r50_1x_sk1", "pretrained", path=target), SimCLRv2.ResNet)
    # A second run finds the converted file and does nothing.
    assert SimCLRv2.main(["--model", "r50_1x_sk1", "--out-dir", str(root)]) == 0
    assert "already converted" in capsys.readouterr().out


def test_every_tensor_equals_its_source(v2_sk1, v2_sk1_cli):
    _, variables = v2_sk1
    state = torch.load(SimCLRv2.checkpoint_path("r50_1x_sk1", "pretrained", ema=True, root=v2_sk1_cli),
                       map_location="cpu", weights_only=True)
    resnet, head = SimCLRv2.build_model("r50_1x_sk1")
    groups = {"resnet": convert.resnet_entries(resnet), "head": convert.head_entries(head),
              "supervised_head": convert.supervised_entries()}
    for group, entries in groups.items():
        assert len(entries) == len(state[group]) - sum(k.endswith("num_batches_tracked") for k in state[group])
        for entry in entries:
            ema_name = "ema_model/" + entry.tf_name
            source = variables[ema_name] if ema_name in variables else variables[entry.tf_name]
            assert torch.equal(state[group][entry.key], as_torch(source, entry.layout)), entry.tf_name
    # Spot checks written by hand (independent of the entry list): EMA values, HWIO -> OIHW, transposes.
    sd, src = state["resnet"], variables
    assert torch.equal(sd["stem.0.conv.weight"],
                       torch.from_numpy(src["ema_model/base_model/conv2d/kernel"]).permute(3, 2, 0, 1))
    assert not torch.equal(sd["stem.0.conv.weight"],
                           torch.from_numpy(src["base_model/conv2d/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(sd["layer1.0.shortcut.proj.conv.weight"][:, :, 0, 0],
                       torch.from_numpy(src["ema_model/base_model/conv2d_3/kernel"][0, 0]).t())
    assert torch.equal(sd["layer1.0.conv2.streams.conv.weight"][5, 7],
                       torch.from_numpy(src["ema_model/base_model/conv2d_5/kernel"][:, :, 7, 5]))
    assert torch.equal(sd["stem.1.bn.running_mean"],
                       torch.from_numpy(src["ema_model/base_model/batch_normalization_1/moving_mean"]))
    assert torch.equal(sd["layer4.2.conv3.bn.running_var"],
                       torch.from_numpy(src["ema_model/base_model/batch_normalization_70/moving_variance"]))
    assert torch.equal(state["head"]["layers.2.bn.weight"],
                       torch.from_numpy(src["ema_model/head_contrastive/nl_2/batch_normalization/gamma"]))
    assert "layers.2.bn.bias" not in state["head"]
    # No EMA copy of the supervised head: its trained values are used.
    assert torch.equal(state["supervised_head"]["weight"],
                       torch.from_numpy(src["head_supervised/linear_layer/dense/kernel"]).t())
    assert all(int(v) == 0 for k, v in sd.items() if k.endswith("num_batches_tracked"))


def test_converted_model_matches_tensorflow_forward(v2_sk1, v2_sk1_cli):
    """The converted PyTorch model computes what the official TF graph computes (TF ops, official order)."""
    _, variables = v2_sk1
    resnet, head, _ = SimCLRv2.load_pretrained("r50_1x_sk1", "pretrained", ema=True, root=v2_sk1_cli,
                                               return_heads=True)
    # 40x56: odd and non-square feature maps on the way (20x28 -> 10x14 -> 5x7 -> 3x4 -> 2x2), where TF's
    # asymmetric SAME padding and the ResNet-D pooling of odd sizes would show any difference.
    images = np.random.default_rng(0).random((2, 3, 40, 56), dtype=np.float32)
    with torch.no_grad():
        features = resnet(torch.from_numpy(images))
        projection = head(features)
    reference = TFReference(variables, "ema_model/")
    tf_features = reference.resnet(images.transpose(0, 2, 3, 1), sk=True)
    tf_projection = reference.head(tf_features, num_layers=3)
    assert features.shape == (2, 2048) and projection.shape == (2, 128)
    for ours, theirs in ((features, tf_features), (projection, tf_projection)):
        theirs = theirs.numpy()
        assert np.all(np.isfinite(theirs))
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())


def test_cli_v1_offline_with_files_put_in_place(v1_1x, tmp_path, monkeypatch, capsys):
    """Offline, with the weight files copied by hand into tf_checkpoints/ (as the offline message says)."""
    folder, variables = v1_1x
    tf_dir = SimCLRv1.RELEASE.tf_dir("1x", "pretrain", root=tmp_path)
    tf_dir.mkdir(parents=True)
    for file in folder.glob("model.ckpt-*"):
        (tf_dir / file.name).symlink_to(file)

    def unreachable(request, timeout=None):
        raise URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    argv = ["--model", "1x", "--category", "pretrain", "--out-dir", str(tmp_path)]
    assert SimCLRv1.main(argv + ["--supervised", "False"]) == 0
    assert str(SimCLRv1.checkpoint_path("1x", "pretrain", root=tmp_path)) in capsys.readouterr().out
    resnet, head, supervised = SimCLRv1.load_pretrained("1x", "pretrain", root=tmp_path, return_heads=True)
    assert supervised is None  # not requested
    # The projection shortcut is the second TF convolution, the block's first 1x1 the third.
    assert torch.equal(resnet.layer1[0].shortcut.proj.conv.weight,
                       as_torch(variables["base_model/conv2d_1/kernel"], "conv"))
    assert torch.equal(resnet.layer1[0].conv1.conv.weight, as_torch(variables["base_model/conv2d_2/kernel"], "conv"))
    assert torch.equal(resnet.layer4[2].conv3.bn.running_var,
                       torch.from_numpy(variables["base_model/batch_normalization_52/moving_variance"]))
    assert torch.equal(head.layers[1].linear.weight,
                       as_torch(variables["head_contrastive/nl_1/dense/kernel"], "dense"))
    with torch.no_grad():
        assert resnet(torch.rand(1, 3, 64, 64)).shape == (1, 2048)


def meta_model(build, model):
    """A model without storage: the checks run before any tensor is read, so only shapes are needed."""
    with torch.device("meta"):
        return build(model)


def test_wrong_architecture_is_an_error(v2_sk1, v1_1x):
    """Converting with the wrong model fails before reading tensors, naming the variables."""
    sk1, _ = v2_sk1
    v1, _ = v1_1x
    with pytest.raises(convert.ConversionError, match=r"111 variables .* missing[\s\S]*batch_normalization_53/"):
        convert.convert_checkpoint(v1, *meta_model(SimCLRv2.build_model, "r50_1x_sk1"))
    with pytest.raises(convert.ConversionError,
                       match=r"5 variables .* missing[\s\S]*nl_1/batch_normalization/beta[\s\S]*nl_2/dense/kernel"):
        convert.convert_checkpoint(v1, *meta_model(SimCLRv2.build_model, "r50_1x_sk0"))
    with pytest.raises(convert.ConversionError, match=r"wrong shape[\s\S]*ema_model/base_model/conv2d/kernel: "
                                                      r"checkpoint \(3, 3, 3, 32\), model expects \(7, 7, 3, 64\)"):
        convert.convert_checkpoint(sk1, *meta_model(SimCLRv1.build_model, "1x"), ema=True)
    with pytest.raises(convert.ConversionError, match=r"wrong shape[\s\S]*base_model/batch_normalization/beta: "
                                                      r"checkpoint \(64,\), model expects \(128,\)"):
        convert.convert_checkpoint(v1, *meta_model(SimCLRv1.build_model, "2x"))
    with pytest.raises(convert.ConversionError, match="no EMA weights.*ema=False"):
        convert.convert_checkpoint(v1, *meta_model(SimCLRv1.build_model, "1x"), ema=True)


def _plan(shapes, model="r50_1x_sk0", supervised=True, **kwargs):
    """``{tf_name: stored_name}`` chosen for every entry (all checks run, no tensor read)."""
    resnet, head = meta_model(SimCLRv2.build_model, model)
    with torch.device("meta"):
        linear = torch.nn.Linear(2048, NUM_CLASSES)
    groups = [convert.Group("resnet", resnet, convert.resnet_entries(resnet)),
              convert.Group("head", head, convert.head_entries(head), required=False)]
    if supervised:
        groups.append(convert.Group("supervised_head", linear, convert.supervised_entries()))
    plan = convert.plan_conversion(shapes, groups, **kwargs)
    return {entry.tf_name: stored for selected in plan.values() for entry, stored in selected}


def test_leftover_and_missing_variables_are_named(sk0_shapes):
    assert len(_plan(sk0_shapes)) == 265 + 14 + 2
    extra = dict(sk0_shapes, **{"base_model/conv2d_53/kernel": (1, 1, 8, 8)})
    with pytest.raises(convert.ConversionError, match=r"1 checkpoint variables were not consumed[\s\S]*conv2d_53"):
        _plan(extra)
    assert "base_model/conv2d_53/kernel" not in _plan(extra, ignore=[r"conv2d_53/"]).values()  # escape hatch
    with pytest.raises(convert.ConversionError, match=r"not consumed[\s\S]*ema_model/base_model/extra/kernel"):
        _plan(dict(sk0_shapes, **{"ema_model/base_model/extra/kernel": (3,)}))
    gone = {k: v for k, v in sk0_shapes.items() if k != "base_model/batch_normalization_17/moving_mean"}
    with pytest.raises(convert.ConversionError, match=r"1 variables .* missing[\s\S]*batch_normalization_17/mov"):
        _plan(gone)
    with pytest.raises(convert.ConversionError, match=r"wrong shape[\s\S]*nl_1/dense/kernel: checkpoint"):
        _plan(dict(sk0_shapes, **{"head_contrastive/nl_1/dense/kernel": (2048, 64)}))
    # A head that is only partly there is missing variables; a checkpoint without any head is fine.
    with pytest.raises(convert.ConversionError, match=r"missing[\s\S]*nl_2/dense/kernel"):
        _plan({k: v for k, v in sk0_shapes.items() if not k.startswith("head_contrastive/nl_2")})
    no_head = {k: v for k, v in sk0_shapes.items() if not k.startswith("head_contrastive/")}
    assert not any(name.startswith("head_contrastive") for name in _plan(no_head))
    # Not converting the supervised head is a deliberate skip, not an accident.
    with pytest.raises(convert.ConversionError, match=r"2 checkpoint variables were not consumed[\s\S]*head_sup"):
        _plan(sk0_shapes, supervised=False)
    assert len(_plan(sk0_shapes, supervised=False, skip_scopes=["head_supervised"])) == 265 + 14


def test_ema_copy_selection(sk0_shapes):
    """EMA copies named ``ema_model/<var>`` or ``<var>/ExponentialMovingAverage`` are used when requested,
    their twins are skipped by rule, and a variable without EMA copy falls back to its trained value."""
    shadow = {k + "/ExponentialMovingAverage": v for k, v in sk0_shapes.items()
              if k.startswith(("base_model/", "head_contrastive/")) and not k.endswith("/Momentum")}
    plan = _plan({**sk0_shapes, **shadow}, ema=True)
    assert plan["base_model/conv2d/kernel"] == "base_model/conv2d/kernel/ExponentialMovingAverage"
    assert plan["head_supervised/linear_layer/dense/kernel"] == "head_supervised/linear_layer/dense/kernel"
    assert _plan({**sk0_shapes, **shadow}, ema=False)["base_model/conv2d/kernel"] == "base_model/conv2d/kernel"
    prefixed = {"ema_model/" + k: v for k, v in sk0_shapes.items() if k.startswith("base_model/")}
    assert _plan({**sk0_shapes, **prefixed}, ema=True)["base_model/conv2d_9/kernel"] == \
        "ema_model/base_model/conv2d_9/kernel"
    with pytest.raises(convert.ConversionError, match="ambiguous EMA copies"):
        _plan({**sk0_shapes, **shadow, "ema_model/base_model/conv2d/kernel": (7, 7, 3, 64)})


def test_cli_reports_a_bad_checkpoint_without_traceback(tmp_path, capsys):
    folder = write_checkpoint(tmp_path / "partial", {"base_model/conv2d/kernel": np.zeros((7, 7, 3, 64), np.float32),
                                                     "global_step": np.array(1, np.int64)}, V2_STEP)
    code = SimCLRv2.main(["--model", "r50_1x_sk0", "--ema", "False", "--from-dir", str(folder),
                          "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "base_model/batch_normalization/gamma" in err and "missing" in err
    assert SimCLRv2.main(["--model", "r50_1x_sk0", "--from-dir", str(tmp_path / "nowhere"),
                          "--out-dir", str(tmp_path)]) == 1
    assert "model.ckpt-STEP.index" in capsys.readouterr().err


class TFReference:
    """Forward pass straight from checkpoint variables with TF ops, transcribing google-research/simclr."""

    def __init__(self, variables, prefix):
        self.v, self.prefix, self.n_conv, self.n_bn = variables, prefix, 0, 0

    def _next(self, kind):
        index = self.n_conv if kind == "conv2d" else self.n_bn
        if kind == "conv2d":
            self.n_conv += 1
        else:
            self.n_bn += 1
        return f"{self.prefix}base_model/{kind}" + (f"_{index}" if index else "")

    def conv(self, x, strides=1):  # conv2d_fixed_padding
        kernel = self.v[self._next("conv2d") + "/kernel"]
        if strides > 1:
            total = kernel.shape[0] - 1
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
        return tf.nn.conv2d(x, kernel, strides, "SAME" if strides == 1 else "VALID")

    def bn(self, x, relu=True, scope=None):
        scope = scope or self._next("batch_normalization")
        beta = self.v.get(scope + "/beta", 0.0)
        x = tf.nn.batch_normalization(x, self.v[scope + "/moving_mean"], self.v[scope + "/moving_variance"],
                                      beta, self.v[scope + "/gamma"], 1e-5)
        return tf.nn.relu(x) if relu else x

    def sk_conv(self, x, filters, strides):
        x = self.bn(self.conv(x, strides))
        x = tf.stack(tf.split(x, 2, axis=3))
        g = tf.reduce_mean(tf.reduce_sum(x, axis=0), [1, 2], keepdims=True)
        g = self.bn(self.conv(g))
        mixing = tf.nn.softmax(tf.stack(tf.split(self.conv(g), 2, axis=3)), axis=0)
        return tf.reduce_sum(x * mixing, axis=0)

    def bottleneck(self, x, filters, strides, projection, sk):
        shortcut = x
        if projection:
            if sk:
                shortcut = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]) if strides > 1 else x
                shortcut = tf.nn.avg_pool2d(shortcut, 2, strides, "SAME" if strides == 1 else "VALID")
                shortcut = self.conv(shortcut)
            else:
                shortcut = self.conv(x, strides)
            shortcut = self.bn(shortcut, relu=False)
        x = self.bn(self.conv(x))
        x = self.sk_conv(x, filters, strides) if sk else self.bn(self.conv(x, strides))
        x = self.bn(self.conv(x), relu=False)
        return tf.nn.relu(x + shortcut)

    def resnet(self, x, sk, blocks=(3, 4, 6, 3)):
        if sk:
            x = self.conv(self.bn(self.conv(self.bn(self.conv(x, 2)))))
        else:
            x = self.conv(x, 2)
        x = tf.nn.max_pool2d(self.bn(x), 3, 2, "SAME")
        for group, n in enumerate(blocks):
            for i in range(n):
                x = self.bottleneck(x, 64 * 2 ** group, 1 if group == 0 or i else 2, i == 0, sk)
        return tf.reduce_mean(x, [1, 2])

    def head(self, x, num_layers):
        for j in range(num_layers):
            scope = f"{self.prefix}head_contrastive/nl_{j}"
            x = tf.matmul(x, self.v[scope + "/dense/kernel"])
            x = self.bn(x, relu=j != num_layers - 1, scope=scope + "/batch_normalization")
        return x
