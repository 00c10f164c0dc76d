"""Inference-only rewrites of a network that keep its outputs (to float rounding): batch-norm folding.

A batch norm in eval mode is an affine map per channel, so when it directly follows a convolution it can be folded
into the convolution's weights and bias (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``)
and the batch norm dropped: one pass over the feature maps less per layer, which matters on a CPU (EfficientNet-Lite0
spends about a quarter of its time in its 49 batch norms there).

:func:`fold_batch_norms` finds the pairs by running the network once with hooks (a batch norm whose input is the
output of a convolution), works on a copy, and keeps the folded copy only when its outputs match the original's on
that input; timm's ``BatchNormAct2d`` (batch norm + activation) keeps its activation.
"""
import copy

import torch
from torch import nn


def _conv_bn_pairs(model, example):
    """``[(conv name, bn name)]`` where the batch norm's input tensor is the convolution's output."""
    produced, pairs, handles = {}, [], []
    modules = dict(model.named_modules())

    def conv_hook(name):
        def hook(module, inputs, output):
            produced[id(output)] = (name, output)  # the tensor is kept alive so that its id stays unique
        return hook

    def bn_hook(name):
        def hook(module, inputs):
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                pairs.append((source[0], name))
        return hook

    for name, module in modules.items():
        if isinstance(module, nn.Conv2d) and module.groups >= 1 and not isinstance(module, nn.ConvTranspose2d):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    # A convolution used by two batch norms, or a batch norm called twice, cannot be folded.
    convs = [conv for conv, _ in pairs]
    bns = [bn for _, bn in pairs]
    return [(conv, bn) for conv, bn in dict.fromkeys(pairs) if convs.count(conv) == 1 and bns.count(bn) == 1]


def _bn_replacement(bn):
    """What is left of a folded batch norm: nothing, or timm's activation (and its eval-mode dropout). The
    activation now reads the convolution's output, which nothing else reads: it runs in place (no new tensor)."""
    tail = [copy.deepcopy(getattr(bn, name)) for name in ("drop", "act")
            if isinstance(getattr(bn, name, None), nn.Module)]
    for module in tail:
        if hasattr(module, "inplace"):
            module.inplace = True
    return nn.Sequential(*tail) if tail else nn.Identity()


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def fold_batch_norms(model, example, rtol=1e-4):
    """A copy of ``model`` (eval mode) with every convolution + batch norm pair folded into the convolution.

    Parameters
    ----------
    model : nn.Module
        Left unchanged.
    example : Tensor
        An input batch (for the pairing and the check).
    rtol : float
        The folded copy is kept only when ``max |y' - y| <= rtol * max |y|`` on ``example``.

    Returns
    -------
    nn.Module, int
        The folded copy and the number of batch norms folded, or ``model`` itself and 0 when nothing could be
        folded or the check failed (e.g. a network whose batch norm classes do more than ``BatchNorm2d``).
    """
    model = model.eval()
    pairs = _conv_bn_pairs(model, example)
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if type(bn).forward not in (nn.BatchNorm2d.forward,) and not hasattr(bn, "act"):
            continue  # an unknown batch-norm variant: leave it
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
        weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        _set(folded, bn_name, _bn_replacement(bn))
    folded.eval()
    with torch.inference_mode():
        expected, got = model(example).float(), folded(example).float()
    if got.shape != expected.shape or (got - expected).abs().max() > rtol * max(1.0, expected.abs().max().item()):
        return model, 0
    return folded, len(pairs)
