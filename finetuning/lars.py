"""LARS (layer-wise adaptive rate scaling), the optimiser of SimCLR, as in google-research/simclr ``lars_optimizer``.

For every parameter ``w`` with gradient ``g``::

    g <- g + weight_decay * w                      (not for biases and normalisation parameters)
    trust = eta * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0, else 1
                                                   (1 for biases and normalisation parameters)
    v <- momentum * v + lr * trust * g
    w <- w - (momentum * v + lr * trust * g)       (Nesterov)    or    w <- w - v

Biases and batch-norm parameters are excluded from both weight decay and the trust-ratio adaptation (the
SimCLR recipe); :func:`lars_param_groups` builds the two parameter groups.

Why not a maintained implementation: torch has no LARS, and the one in the requirements, ``timm.optim.Lars``
(timm 1.0), computes another update: its trust ratio is ``eta ||w|| / (||g|| + weight_decay ||w|| + eps)`` on the
gradient before weight decay (here ``||g + weight_decay w||``, as in SimCLR), it only adapts groups with weight
decay unless ``always_adapt`` (so a model trained without weight decay would lose the adaptation), and it keeps
the learning rate out of the momentum buffer (``w -= lr v``; SimCLR's ``v`` accumulates ``lr * trust * g``, which
differs as soon as the schedule changes the rate). ``tests/test_lars.py`` checks SimCLR's rule step by step.
"""
import torch
from torch import nn
from torch.optim import Optimizer

#: Normalisation layers whose parameters LARS leaves alone (no weight decay, no adaptation).
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
               nn.modules.instancenorm._InstanceNorm)


def excluded_parameter_names(model):
    """Names of the parameters LARS excludes: every bias and every parameter of a normalisation layer."""
    excluded = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_LAYERS) or param_name == "bias" or param_name.endswith("_bias"):
                excluded.add(full)
    return excluded


def lars_param_groups(model, weight_decay):
    """Two parameter groups for :class:`LARS` (or any optimiser): regular weights (weight decay, adaptation)
    and excluded ones (biases, normalisation parameters: ``weight_decay=0``, ``lars_exclude=True``).

    Parameters that do not require gradients (a frozen backbone) are left out.
    """
    excluded = excluded_parameter_names(model)
    regular, special = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (special if name in excluded else regular).append(param)
    groups = []
    if regular:
        groups.append({"params": regular, "weight_decay": weight_decay, "lars_exclude": False})
    if special:
        groups.append({"params": special, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(Optimizer):
    """LARS with classic (SimCLR) momentum.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups; a group with ``lars_exclude=True`` gets neither weight decay nor the
        trust ratio (see :func:`lars_param_groups`).
    lr : float
    momentum : float
    weight_decay : float
    eta : float
        Trust coefficient (SimCLR: 0.001).
    nesterov : bool
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS hyper-parameters: lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay}, eta={eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = group["lars_exclude"]
            lr, momentum, eta = group["lr"], group["momentum"], group["eta"]
            weight_decay = 0.0 if exclude else group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if weight_decay:
                    grad = grad.add(param, alpha=weight_decay)
                if exclude:
                    scaled_lr = torch.as_tensor(lr, dtype=param.dtype, device=param.device)
                else:
                    w_norm, g_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    # Zero norms (a zero-initialised layer, a dead gradient) keep the plain learning rate
                    # instead of producing 0/0.
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm.clamp_min(1e-30),
                                        torch.ones_like(w_norm))
                    scaled_lr = lr * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                velocity = state["momentum_buffer"]
                velocity.mul_(momentum).add_(grad * scaled_lr)
                if group["nesterov"]:
                    param.sub_(velocity * momentum + grad * scaled_lr)
                else:
                    param.sub_(velocity)
        return loss
