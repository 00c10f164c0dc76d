"""A torch-free copy of an EfficientNet-Lite embedding network, so that ``query.py`` can embed one image without
importing torch, timm and torchvision (several seconds of imports, measured ~2-4 s of a 2-core machine's fresh
process, against ~0.1 s for this forward pass).

:func:`export_network` walks a timm EfficientNet built by :func:`extractor.models.build_model` (stem convolution,
depthwise-separable and inverted-residual blocks without squeeze-excitation, head convolution, average pooling:
the EfficientNet-Lite family), folds every batch norm into its convolution, and returns the layers as a JSON-able
plan and float32 arrays; :func:`save_network` writes them next to a saved index (``model.npz``, read back with
``allow_pickle=False``, and ``model.json``). :class:`NumpyNetwork` runs the same arithmetic with numpy on
channels-last ``[H, W, C]`` arrays: 1x1 convolutions are matrix products, depthwise convolutions sums of shifted
slices, TensorFlow's "same" padding (timm's ``Conv2dSame``) is reproduced. Any other architecture raises
:class:`UnsupportedNetwork` and the caller keeps torch.

At export, :func:`export_network` checks the copy against the torch model on a fixed input and refuses it when the
cosine between the two embeddings is below ``1 - 1e-5``.
"""
import json
import math
from pathlib import Path

import numpy as np

from helpers.image_io import load_image

MODEL_FILE = "model.npz"
PLAN_FILE = "model.json"
FORMAT = "dedup-numpy-net-1"
_ACTIVATIONS = {"Identity": "none", "ReLU": "relu", "ReLU6": "relu6"}


class UnsupportedNetwork(ValueError):
    """The network has a layer this module does not implement (the caller keeps the torch model)."""


# ----------------------------------------------------------------------------------------------------- export


def _activation(module):
    name = type(module).__name__
    if name not in _ACTIVATIONS:
        raise UnsupportedNetwork(f"activation {name} is not implemented in numpy")
    return _ACTIVATIONS[name]


def _conv_layer(conv, bn, arrays):
    """One convolution + its batch norm (+ activation) as a plan entry; the folded arrays go into ``arrays``."""
    if type(conv).__name__ not in ("Conv2d", "Conv2dSame"):
        raise UnsupportedNetwork(f"layer {type(conv).__name__} is not implemented in numpy")
    if tuple(conv.dilation) != (1, 1):
        raise UnsupportedNetwork("dilated convolutions are not implemented in numpy")
    weight = conv.weight.detach().double().cpu().numpy()  # [out, in/groups, kh, kw]
    out_channels, _, kh, kw = weight.shape
    bias = np.zeros(out_channels) if conv.bias is None else conv.bias.detach().double().cpu().numpy()
    if type(bn).__name__ not in ("BatchNormAct2d", "BatchNorm2d"):
        raise UnsupportedNetwork(f"normalisation {type(bn).__name__} is not implemented in numpy")
    # eval-mode batch norm: y = (x - mean) / sqrt(var + eps) * gamma + beta, folded into the convolution
    scale = bn.weight.detach().double().cpu().numpy() / np.sqrt(bn.running_var.detach().double().cpu().numpy()
                                                                 + bn.eps)
    shift = bn.bias.detach().double().cpu().numpy() - bn.running_mean.detach().double().cpu().numpy() * scale
    weight = weight * scale[:, None, None, None]
    bias = bias * scale + shift
    activation = "none"
    if type(bn).__name__ == "BatchNormAct2d":
        if type(getattr(bn, "drop", None)).__name__ not in ("Identity", "NoneType"):
            raise UnsupportedNetwork("dropout inside a batch norm is not implemented in numpy")
        activation = _activation(bn.act)
    groups = int(conv.groups)
    if groups == 1 and (kh, kw) == (1, 1):
        kind, weight = "pointwise", weight[:, :, 0, 0].T  # [in, out]
    elif groups == 1:
        kind, weight = "dense", weight.transpose(2, 3, 1, 0).reshape(kh * kw * weight.shape[1], out_channels)
    elif groups == out_channels and weight.shape[1] == 1:
        kind, weight = "depthwise", weight[:, 0].transpose(1, 2, 0)  # [kh, kw, channels]
    else:
        raise UnsupportedNetwork("grouped convolutions are not implemented in numpy")
    key = f"w{len(arrays) // 2:03d}"
    arrays[key], arrays[key.replace("w", "b", 1)] = weight.astype(np.float32), bias.astype(np.float32)
    same = type(conv).__name__ == "Conv2dSame"
    return {"kind": kind, "weight": key, "bias": key.replace("w", "b", 1), "kernel": [int(kh), int(kw)],
            "stride": [int(s) for s in conv.stride], "padding": "same" if same else [int(p) for p in conv.padding],
            "activation": activation}


def _block(block, arrays):
    name = type(block).__name__
    for attr in ("se", "aa"):
        if type(getattr(block, attr, None)).__name__ not in ("Identity", "NoneType"):
            raise UnsupportedNetwork(f"{name}.{attr} ({type(getattr(block, attr)).__name__}) is not implemented "
                                     f"in numpy")
    if getattr(block, "conv_s2d", None) is not None:
        raise UnsupportedNetwork("space-to-depth blocks are not implemented in numpy")
    if name == "DepthwiseSeparableConv":
        layers = [_conv_layer(block.conv_dw, block.bn1, arrays), _conv_layer(block.conv_pw, block.bn2, arrays)]
    elif name == "InvertedResidual":
        layers = [_conv_layer(block.conv_pw, block.bn1, arrays), _conv_layer(block.conv_dw, block.bn2, arrays),
                  _conv_layer(block.conv_pwl, block.bn3, arrays)]
    else:
        raise UnsupportedNetwork(f"block {name} is not implemented in numpy")
    return {"layers": layers, "skip": bool(block.has_skip)}


def export_network(model, preprocessing, check=True):
    """The numpy plan and arrays of a timm EfficientNet(-Lite) embedding network.

    Parameters
    ----------
    model : torch.nn.Module
        timm's ``EfficientNet`` with ``num_classes=0`` (pooled pre-logits features), in eval mode.
    preprocessing : extractor.transforms.Preprocessing
        The model's preprocessing (stored with the plan).
    check : bool
        Compare the numpy forward pass with the torch one on a fixed input.

    Returns
    -------
    plan : dict
        JSON-able description of the layers.
    arrays : dict
        Name -> float32 array (folded weights and biases).

    Raises
    ------
    UnsupportedNetwork
        For any other architecture, or when the check fails.
    """
    if type(model).__name__ != "EfficientNet" or not hasattr(model, "blocks"):
        raise UnsupportedNetwork(f"{type(model).__name__} is not an EfficientNet: no numpy copy")
    if int(getattr(model, "num_classes", 0)) != 0:
        raise UnsupportedNetwork("the network still has its classifier")
    pool = getattr(model.global_pool, "pool_type", None)
    if pool != "avg":
        raise UnsupportedNetwork(f"pooling {pool!r} is not implemented in numpy")
    arrays = {}
    plan = {"format": FORMAT, "preprocessing": preprocessing.meta(),
            "stem": _conv_layer(model.conv_stem, model.bn1, arrays),
            "blocks": [_block(block, arrays) for stage in model.blocks for block in stage],
            "head": _conv_layer(model.conv_head, model.bn2, arrays), "pool": "avg"}
    if check:
        plan["check"] = _check(model, NumpyNetwork(plan, arrays), preprocessing)
    return plan, arrays


def _check(model, network, preprocessing):
    import torch

    height, width = preprocessing.input_size
    x = np.random.default_rng(0).normal(0, 1, size=(height, width, 3)).astype(np.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        batch = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(device)
        reference = model(batch)[0].double().cpu().numpy()
    ours = network.forward(x).astype(np.float64)
    cosine = float(ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference)))
    max_abs = float(np.max(np.abs(ours - reference)))
    if not cosine > 1 - 1e-5:
        raise UnsupportedNetwork(f"the numpy copy differs from the torch model (cosine {cosine:.7f})")
    return {"cosine": cosine, "max_abs_difference": max_abs}


def save_network(folder, plan, arrays):
    """Write ``model.npz`` and ``model.json`` into ``folder``."""
    folder = Path(folder)
    np.savez(folder / MODEL_FILE, **arrays)
    (folder / PLAN_FILE).write_text(json.dumps(plan, indent=1) + "\n")


def load_network(folder):
    """The :class:`NumpyNetwork` saved in ``folder``, or ``None`` when there is none."""
    folder = Path(folder)
    if not ((folder / MODEL_FILE).is_file() and (folder / PLAN_FILE).is_file()):
        return None
    plan = json.loads((folder / PLAN_FILE).read_text())
    if plan.get("format") != FORMAT:
        return None
    with np.load(folder / MODEL_FILE, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return NumpyNetwork(plan, arrays)


# ---------------------------------------------------------------------------------------------------- forward


def _same_padding(size, kernel, stride):
    """TensorFlow's "same" padding (timm's ``pad_same``): ``(before, after)``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad(x, layer):
    (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
    if layer["padding"] == "same":
        top, bottom = _same_padding(x.shape[0], kh, sh)
        left, right = _same_padding(x.shape[1], kw, sw)
    else:
        (top, left), (bottom, right) = layer["padding"], layer["padding"]
    if top or bottom or left or right:
        x = np.pad(x, ((top, bottom), (left, right), (0, 0)))
    return x


def _windows(x, layer):
    """The ``kh * kw`` shifted, strided views of the padded input, each ``[out_h, out_w, C]``."""
    (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
    x = _pad(x, layer)
    out_h, out_w = (x.shape[0] - kh) // sh + 1, (x.shape[1] - kw) // sw + 1
    return [x[i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw] for i in range(kh) for j in range(kw)]


class NumpyNetwork:
    """The forward pass of an exported plan (:func:`export_network`) with numpy, one ``[H, W, 3]`` image at a
    time."""

    def __init__(self, plan, arrays):
        self.plan = plan
        self.arrays = arrays

    def _layer(self, x, layer):
        weight, bias = self.arrays[layer["weight"]], self.arrays[layer["bias"]]
        if layer["kind"] == "pointwise":
            if layer["stride"] != [1, 1]:
                x = x[::layer["stride"][0], ::layer["stride"][1]]
            y = x @ weight
        elif layer["kind"] == "dense":
            y = np.concatenate(_windows(x, layer), axis=2) @ weight
        else:
            windows = _windows(x, layer)
            taps = weight.reshape(-1, weight.shape[-1])
            y = windows[0] * taps[0]
            for window, tap in zip(windows[1:], taps[1:]):
                y += window * tap
        y += bias
        if layer["activation"] == "relu6":
            np.clip(y, 0, 6, out=y)
        elif layer["activation"] == "relu":
            np.maximum(y, 0, out=y)
        return y

    def forward(self, x):
        """Embedding ``float32 [D]`` of a preprocessed ``float32 [H, W, 3]`` input."""
        x = self._layer(np.asarray(x, dtype=np.float32), self.plan["stem"])
        for block in self.plan["blocks"]:
            shortcut = x
            for layer in block["layers"]:
                x = self._layer(x, layer)
            if block["skip"]:
                x = x + shortcut
        x = self._layer(x, self.plan["head"])
        return x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)

    def preprocess(self, image):
        """The model input ``float32 [H, W, 3]`` of a PIL image: the same resize (PIL) and float32 arithmetic as
        :class:`extractor.transforms.ImageTransform`."""
        from extractor.transforms import ImageTransform, Preprocessing

        pre = Preprocessing.from_meta(self.plan["preprocessing"])
        if image.mode != "RGB":
            image = image.convert("RGB")
        x = np.asarray(ImageTransform(pre).resize_crop(image), dtype=np.float32) / np.float32(255)
        if pre.mean is not None:
            x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
        return x

    def embed(self, images):
        """``float32 [len(images), D]`` embeddings (not normalised) of PIL images."""
        return np.stack([self.forward(self.preprocess(image)) for image in images])

    def embed_file(self, path):
        return self.embed([load_image(path)])[0]
