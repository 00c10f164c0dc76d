"""Checked conversion of official SimCLR TensorFlow checkpoints to PyTorch state dicts.

The official checkpoints (google-research/simclr, TF1 estimator format) name their variables after the TF
layers that created them, numbered in creation order inside a variable scope:

* encoder: ``base_model/conv2d/kernel``, ``base_model/conv2d_1/kernel``, ... and
  ``base_model/batch_normalization{_i}/gamma|beta|moving_mean|moving_variance``;
* projection head: ``head_contrastive/nl_{j}/dense/kernel`` and ``head_contrastive/nl_{j}/batch_normalization/...``
  (the last layer has no ``beta``);
* linear-evaluation / fine-tuned classifier: ``head_supervised/linear_layer/dense/kernel|bias``;
* exponential moving averages of the weights, either under ``ema_model/`` (SimCLRv2) or as
  ``<name>/ExponentialMovingAverage``; optimizer slots ``<name>/Momentum`` and ``global_step``.

The mapping is derived from the PyTorch model definition (:meth:`SimCLRv2.resnet.ResNet.tf_layers` gives the
creation order), and the conversion is verified rather than assumed: every checkpoint variable is either
consumed exactly once or skipped by an explicit rule (optimizer slot, step counter, the unused EMA / non-EMA
copy, an unrequested head), every PyTorch parameter and buffer is filled (``num_batches_tracked`` is set to 0),
and shapes are asserted after the layout change (conv kernels HWIO -> OIHW, dense kernels transposed). Anything
left over, missing or mis-shaped raises :class:`ConversionError` naming the variables.

TensorFlow is only needed by :func:`read_tf_checkpoint`, which imports it lazily.
"""
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers.log import get_logger

logger = get_logger(__name__)

ENCODER_SCOPE = "base_model"
HEAD_SCOPE = "head_contrastive"
SUPERVISED_SCOPE = "head_supervised/linear_layer"
EMA_PREFIX = "ema_model/"
EMA_SUFFIX = "/ExponentialMovingAverage"
#: Variables that hold no model weights: optimizer slots and step counters.
NON_WEIGHT_PATTERNS = (r"(^|/)global_step$", r"/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1)$")
#: TF batch-norm variable -> PyTorch state-dict entry.
BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
             ("moving_variance", "running_var"))


class ConversionError(RuntimeError):
    """The checkpoint does not match the PyTorch model (names, presence or shapes)."""


@dataclass(frozen=True)
class Entry:
    """One checkpoint variable and the PyTorch state-dict key it fills.

    ``tf_name`` is the canonical (non-EMA) name; ``layout`` is ``'conv'`` (HWIO kernel), ``'dense'`` ([in, out]
    kernel) or ``'vector'``.
    """

    tf_name: str
    key: str
    layout: str


def _layer_name(kind, index):
    base = "conv2d" if kind == "conv" else "batch_normalization"
    return base if index == 0 else f"{base}_{index}"


def _bn_entries(tf_prefix, torch_prefix, bn):
    return [Entry(f"{tf_prefix}/{tf_field}", f"{torch_prefix}{field}", "vector")
            for tf_field, field in BN_FIELDS if getattr(bn, field) is not None]


def resnet_entries(resnet, scope=ENCODER_SCOPE):
    """Entries of a :class:`SimCLRv2.resnet.ResNet`, numbered like TF numbers its layers (creation order)."""
    names = {id(module): name for name, module in resnet.named_modules()}
    counters = {"conv": 0, "bn": 0}
    entries = []
    for kind, module in resnet.tf_layers():
        tf_prefix = f"{scope}/{_layer_name(kind, counters[kind])}"
        counters[kind] += 1
        torch_prefix = names[id(module)] + "."
        if kind == "conv":
            entries.append(Entry(f"{tf_prefix}/kernel", torch_prefix + "weight", "conv"))
        else:
            entries += _bn_entries(tf_prefix, torch_prefix, module)
    return entries


def head_entries(head, scope=HEAD_SCOPE):
    """Entries of a :class:`SimCLRv2.resnet.ProjectionHead` (``nl_j/dense`` + ``nl_j/batch_normalization``)."""
    entries = []
    for j, layer in enumerate(head.layers):
        entries.append(Entry(f"{scope}/nl_{j}/dense/kernel", f"layers.{j}.linear.weight", "dense"))
        entries += _bn_entries(f"{scope}/nl_{j}/batch_normalization", f"layers.{j}.bn.", layer.bn)
    return entries


def supervised_entries(scope=SUPERVISED_SCOPE):
    """Entries of the supervised ``nn.Linear`` head (``head_supervised/linear_layer/dense/kernel|bias``)."""
    return [Entry(f"{scope}/dense/kernel", "weight", "dense"), Entry(f"{scope}/dense/bias", "bias", "vector")]


def to_torch_layout(array, layout):
    """TF array -> PyTorch tensor: conv HWIO -> OIHW, dense [in, out] -> [out, in]."""
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if layout == "conv":
        tensor = tensor.permute(3, 2, 0, 1)
    elif layout == "dense":
        tensor = tensor.t()
    return tensor.contiguous()


def tf_layout_shape(torch_shape, layout):
    """The TF shape of a variable whose PyTorch shape is ``torch_shape`` (inverse of :func:`to_torch_layout`)."""
    shape = tuple(torch_shape)
    if layout == "conv":
        out_channels, in_channels, height, width = shape
        return height, width, in_channels, out_channels
    if layout == "dense":
        return shape[::-1]
    return shape


def expected_tf_variables(module, entries):
    """``{tf_name: tf_shape}`` that a checkpoint must hold for ``module`` (used to check and to build tests)."""
    state = module.state_dict()
    return {entry.tf_name: tf_layout_shape(state[entry.key].shape, entry.layout) for entry in entries}


def check_entries_cover(module, entries, group):
    """Raise unless ``entries`` fill every parameter and buffer of ``module`` (but num_batches_tracked) once."""
    keys = [entry.key for entry in entries]
    tf_names = [entry.tf_name for entry in entries]
    wanted = {key for key in module.state_dict() if not key.endswith("num_batches_tracked")}
    problems = []
    if len(set(keys)) != len(keys) or len(set(tf_names)) != len(tf_names):
        problems.append("a key or variable is mapped twice")
    if set(keys) - wanted:
        problems.append(f"unknown keys {sorted(set(keys) - wanted)}")
    if wanted - set(keys):
        problems.append(f"unfilled keys {sorted(wanted - set(keys))}")
    if problems:
        raise ConversionError(f"internal mapping error for {group}: " + "; ".join(problems))


def split_ema(name):
    """``(canonical_name, is_ema)``: strips the ``ema_model/`` prefix or ``/ExponentialMovingAverage`` suffix."""
    if name.startswith(EMA_PREFIX):
        return name[len(EMA_PREFIX):], True
    if name.endswith(EMA_SUFFIX):
        return name[:-len(EMA_SUFFIX)], True
    return name, False


def _names_list(names, limit=25):
    """Indented list of the first ``limit`` names (in the order given: model order shows the first culprit)."""
    names = list(names)
    shown = "\n  ".join(names[:limit])
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"\n  {shown}{more}"


@dataclass
class Group:
    """A PyTorch module to fill from the checkpoint; an optional group may be absent altogether."""

    name: str
    module: nn.Module
    entries: list
    required: bool = True


def weight_names(names, ignore=()):
    """The stored names that hold model weights (not optimizer slots, step counters or ``ignore`` regexes)."""
    patterns = [re.compile(p) for p in (*NON_WEIGHT_PATTERNS, *ignore)]
    return [name for name in names if not any(p.search(name) for p in patterns)]


def _index_copies(names):
    """``{canonical: {is_ema: stored_name}}``; two stored names for the same copy is an error."""
    index = defaultdict(dict)
    for name in names:
        canonical, is_ema = split_ema(name)
        if is_ema in index[canonical]:
            raise ConversionError(f"ambiguous EMA copies of {canonical}: {index[canonical][is_ema]} and {name}")
        index[canonical][is_ema] = name
    return index


def _select(index, canonical, ema):
    """The stored name to read for ``canonical``: its EMA copy when requested (else the trained weights)."""
    copies = index.get(canonical, {})
    if ema and True in copies:
        return copies[True]
    return copies.get(False)


def plan_conversion(shapes, groups, ema=False, skip_scopes=(), ignore=()):
    """Decide which stored variable fills each entry, and check names and shapes, without reading any tensor.

    Parameters
    ----------
    shapes : dict
        ``{stored_variable_name: shape}`` of the whole checkpoint.
    groups : list of Group
        Modules to fill (``required=False`` groups are skipped when the checkpoint has none of their variables).
    ema : bool
        Read the exponential-moving-average copies (a variable without one falls back to its trained value).
    skip_scopes : sequence of str
        Canonical name prefixes deliberately not converted (e.g. the supervised head when not requested).
    ignore : sequence of str
        Extra regular expressions of stored names to skip (an escape hatch for unforeseen variables).

    Returns
    -------
    dict
        ``{group.name: [(entry, stored_name), ...]}`` for the groups present in the checkpoint.

    Raises
    ------
    ConversionError
        Naming the missing, mis-shaped or left-over (neither consumed nor skipped by a rule) variables.
    """
    weights = weight_names(shapes, ignore)
    index = _index_copies(weights)
    if ema and not any(True in copies for copies in index.values()):
        raise ConversionError("this checkpoint has no EMA weights (no 'ema_model/...' nor "
                              "'.../ExponentialMovingAverage' variables): convert it with ema=False (--ema False)")
    plan, missing, bad_shapes = {}, [], []
    for group in groups:
        check_entries_cover(group.module, group.entries, group.name)
        selected = [(entry, _select(index, entry.tf_name, ema)) for entry in group.entries]
        if not group.required and all(stored is None for _, stored in selected):
            logger.info("checkpoint has no %s variables: %s not converted", group.name, group.name)
            continue
        state = group.module.state_dict()
        for entry, stored in selected:
            expected = tf_layout_shape(state[entry.key].shape, entry.layout)
            if stored is None:
                missing.append(entry.tf_name)
            elif tuple(shapes[stored]) != expected:
                bad_shapes.append(f"{stored}: checkpoint {tuple(shapes[stored])}, model expects {expected}")
        plan[group.name] = selected
    if missing:
        raise ConversionError(f"{len(missing)} variables the model needs are missing from the checkpoint "
                              f"(wrong model name or architecture?):{_names_list(missing)}")
    if bad_shapes:
        raise ConversionError(f"{len(bad_shapes)} variables have the wrong shape (wrong model name?):"
                              f"{_names_list(bad_shapes)}")
    reads = [stored for selected in plan.values() for _, stored in selected]
    used = set(reads)
    if len(used) != len(reads):
        twice = sorted({name for name in reads if reads.count(name) > 1})
        raise ConversionError(f"internal mapping error: variables read more than once:{_names_list(twice)}")
    leftover = sorted(_leftover(weights, used, index, skip_scopes))
    if leftover:
        raise ConversionError(f"{len(leftover)} checkpoint variables were not consumed by the model (the "
                              f"checkpoint has layers this architecture lacks; pass ignore=[regex] / "
                              f"--ignore-variables REGEX only if they are known to be unused):"
                              f"{_names_list(leftover)}")
    fallbacks = sorted(stored for stored in used if ema and not split_ema(stored)[1])
    if fallbacks:
        logger.warning("%d variables have no EMA copy, their trained values were used: %s%s", len(fallbacks),
                       ", ".join(fallbacks[:5]), " ..." if len(fallbacks) > 5 else "")
    logger.info("converting %d variables (%d stored, the others are optimizer state or unused copies)",
                len(used), len(shapes))
    return plan


def convert_variables(shapes, get_tensor, groups, ema=False, skip_scopes=(), ignore=()):
    """Fill ``groups`` from checkpoint variables, checking that everything is consumed exactly once.

    Parameters are those of :func:`plan_conversion`, plus ``get_tensor(stored_name) -> numpy array``.
    Everything is checked (:func:`plan_conversion`) before the first tensor is read.

    Returns
    -------
    dict
        ``{group.name: state_dict}`` for the groups present in the checkpoint; the modules are loaded too.
    """
    plan = plan_conversion(shapes, groups, ema, skip_scopes, ignore)
    states = {}
    for group in groups:
        if group.name not in plan:
            continue
        state = group.module.state_dict()
        for entry, stored in plan[group.name]:
            state[entry.key] = to_torch_layout(get_tensor(stored), entry.layout)
        for key in state:
            if key.endswith("num_batches_tracked"):
                state[key] = torch.zeros((), dtype=torch.long)
        # A strict load is the final check that keys and shapes agree with the module; assign=True lets the
        # module be built on the meta device (no memory, no random init) and take the converted tensors.
        group.module.load_state_dict(state, strict=True, assign=True)
        states[group.name] = state
    return states


def _leftover(weights, used, index, skip_scopes):
    """Weight variables neither used nor accounted for by their used EMA / non-EMA twin or a skipped scope."""
    leftover = []
    for name in weights:
        if name in used:
            continue
        canonical, _ = split_ema(name)
        if any(stored in used for stored in index[canonical].values()):
            continue  # the other copy (EMA or trained) of this variable was converted
        if any(canonical == scope or canonical.startswith(scope + "/") for scope in skip_scopes):
            continue
        leftover.append(name)
    return leftover


def find_checkpoint_prefix(path, step=None):
    """The TF checkpoint prefix (``.../model.ckpt-STEP``) in folder ``path`` (or ``path`` itself if a prefix).

    Raises
    ------
    FileNotFoundError
        When no complete checkpoint (``.index`` + ``.data-*``) is there; the message lists what is expected.
    """
    path = Path(path)
    if not path.is_dir() and Path(str(path) + ".index").is_file():
        prefix = path
    else:
        indexes = sorted(path.glob("*.index")) if path.is_dir() else []
        preferred = [p for p in indexes if step is not None and p.name == f"model.ckpt-{step}.index"]
        if preferred:
            indexes = preferred
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) or "none"
            raise FileNotFoundError(
                f"expected one TensorFlow checkpoint (model.ckpt-STEP.index and model.ckpt-STEP.data-00000-of-00001) "
                f"in {path}, found: {found}")
        prefix = indexes[0].with_suffix("")
    # Only finished shards count: an interrupted download leaves "<shard>.part", which must not pass.
    shards = [f for f in prefix.parent.glob(prefix.name + ".data-*") if re.search(r"\.data-\d+-of-\d+$", f.name)]
    if not shards:
        raise FileNotFoundError(f"checkpoint {prefix} has an .index but no {prefix.name}.data-00000-of-00001 file")
    return prefix


def read_tf_checkpoint(prefix):
    """``(shapes, get_tensor)`` of a TF checkpoint; imports TensorFlow here and only here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError("reading the TensorFlow checkpoints needs TensorFlow (only for this conversion "
                          "step): pip install tensorflow-cpu") from exc
    reader = tf.train.load_checkpoint(str(prefix))
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    return shapes, reader.get_tensor


def convert_checkpoint(path, resnet, head=None, ema=False, supervised=True, step=None, ignore=()):
    """Convert the TF checkpoint at ``path`` (folder or prefix) into PyTorch state dicts.

    Parameters
    ----------
    path : str or Path
        Folder with ``model.ckpt-STEP.index`` / ``.data-00000-of-00001`` (or the prefix itself).
    resnet : SimCLRv2.resnet.ResNet
        Encoder of the matching architecture (filled in place).
    head : SimCLRv2.resnet.ProjectionHead, optional
        Projection head; converted when the checkpoint has ``head_contrastive`` variables.
    ema : bool
        Use the exponential-moving-average weights.
    supervised : bool
        Also convert ``head_supervised`` (the linear-eval or fine-tuned classifier) into an ``nn.Linear``.
    step : int, optional
        Preferred checkpoint step when the folder holds several.
    ignore : sequence of str
        Regular expressions of extra variables to skip.

    Returns
    -------
    dict
        ``{"resnet": state_dict, "head": ..., "supervised_head": ...}`` (heads only when present).
    """
    prefix = find_checkpoint_prefix(path, step)
    shapes, get_tensor = read_tf_checkpoint(prefix)
    groups = [Group("resnet", resnet, resnet_entries(resnet))]
    if head is not None:
        groups.append(Group("head", head, head_entries(head), required=False))
    skip = [] if head is not None else [HEAD_SCOPE]
    kernel = _select(_index_copies(weight_names(shapes, ignore)), supervised_entries()[0].tf_name, ema)
    if supervised and kernel is not None:
        # The number of classes (1000 for ImageNet) is read from the checkpoint; the input size is not, so
        # a classifier on features of another width is reported as a shape error.
        linear = nn.Linear(resnet.num_features, shapes[kernel][-1])
        groups.append(Group("supervised_head", linear, supervised_entries()))
    elif not supervised:
        skip.append("head_supervised")
    logger.info("converting %s (ema=%s)", prefix, ema)
    return convert_variables(shapes, get_tensor, groups, ema=ema, skip_scopes=skip, ignore=ignore)


def save_state(state, path):
    """Write the converted dict with ``torch.save`` atomically (a partial file never has the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
