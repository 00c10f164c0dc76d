"""LARS: exclusion of biases and batch-norm parameters, the update rule, the zero-norm guard."""
import numpy as np
import pytest
import torch
from torch import nn

from finetuning.lars import LARS, excluded_parameter_names, lars_param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2, bias=True)
        self.ln = nn.LayerNorm(2)


def _set_known_grads(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=gen, dtype=param.dtype)


def test_excluded_parameters_are_biases_and_norm_layers():
    model = Tiny()
    assert excluded_parameter_names(model) == {"conv.bias", "bn.weight", "bn.bias", "fc.bias", "ln.weight",
                                               "ln.bias"}
    groups = lars_param_groups(model, weight_decay=0.1)
    regular, special = groups
    assert {id(p) for p in regular["params"]} == {id(model.conv.weight), id(model.fc.weight)}
    assert regular["weight_decay"] == 0.1 and not regular["lars_exclude"]
    assert special["weight_decay"] == 0.0 and special["lars_exclude"]


def test_frozen_parameters_are_left_out():
    model = Tiny()
    model.conv.weight.requires_grad_(False)
    params = [p for group in lars_param_groups(model, 0.0) for p in group["params"]]
    assert all(p is not model.conv.weight for p in params)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_update_matches_hand_computation(nesterov):
    torch.manual_seed(0)
    model = Tiny().double()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-1, 1)
    lr, momentum, wd, eta = 0.5, 0.9, 0.01, 0.001
    opt = LARS(lars_param_groups(model, wd), lr=lr, momentum=momentum, weight_decay=wd, eta=eta,
               nesterov=nesterov)
    excluded = excluded_parameter_names(model)
    weights = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    velocity = {name: np.zeros_like(w) for name, w in weights.items()}
    for step in range(3):
        _set_known_grads(model, seed=step)
        grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
        opt.step()
        for name, w in weights.items():
            g = grads[name].copy()
            if name in excluded:
                scaled = lr                                     # no weight decay, no trust ratio
            else:
                g = g + wd * w
                scaled = lr * eta * np.linalg.norm(w) / np.linalg.norm(g)
            velocity[name] = momentum * velocity[name] + scaled * g
            update = momentum * velocity[name] + scaled * g if nesterov else velocity[name]
            weights[name] = w - update
        for name, p in model.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), weights[name], rtol=1e-12, atol=1e-15,
                                       err_msg=f"{name} at step {step}")


def test_excluded_parameters_get_no_weight_decay():
    """With a zero gradient, a decayed weight would shrink; biases and BN parameters must stay put."""
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = LARS(lars_param_groups(model, 0.5), lr=1.0, momentum=0.0, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if name in excluded_parameter_names(model):
            assert torch.all(p == 1.0), name
        else:
            assert torch.all(p < 1.0), name


def test_zero_norm_guard():
    """A zero weight (zero-initialised layer) or a zero gradient must not give 0/0: the trust ratio is 1."""
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    layer.weight.grad = torch.full((2, 3), 2.0)
    opt = LARS(lars_param_groups(layer, 0.0), lr=0.1, momentum=0.0, weight_decay=0.0)
    opt.step()
    assert torch.allclose(layer.weight, torch.full((2, 3), -0.2))       # w - lr * 1 * g
    layer.weight.grad = torch.zeros(2, 3)
    opt.step()
    assert torch.isfinite(layer.weight).all()
    assert torch.allclose(layer.weight, torch.full((2, 3), -0.2))


def test_invalid_hyper_parameters():
    with pytest.raises(ValueError):
        LARS(Tiny().parameters(), lr=-1.0)
