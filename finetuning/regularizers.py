"""Regularisers toward the starting model: what keeps a pretrained network's knowledge while it is fine-tuned.

- **L2-SP** (Li, Grandvalet & Davoine, 2018, "Explicit inductive bias for transfer learning"): the penalty
  ``alpha / 2 * sum_i ||w_i - w0_i||^2`` on the distance of the weights to their *starting* values (plain weight
  decay pulls them toward zero instead, which forgets the pretrained solution).
- **Feature distillation**: the fine-tuned descriptor of every training view stays close to the one the frozen
  starting network gives it, ``beta * mean_views ||n(f(x)) - n(f0(x))||^2`` with ``n`` the L2 normalisation
  (``= beta * mean(2 - 2 cos)``), so what moves is only what the new task needs.

Both are selected by flags (``--l2sp_weight``, ``--distill_weight``) and added to the loss of every step.
"""
import copy

import torch
import torch.nn.functional as F

from .losses import full_precision, no_autocast


class StartSnapshot:
    """Frozen copy of the starting parameters (and, for distillation, of the starting network).

    Parameters
    ----------
    module : torch.nn.Module
        The network being fine-tuned, *before* any step (a resumed run rebuilds its start from the same
        configuration, so the anchor is always the true start).
    keep_network : bool
        Keep a frozen, evaluation-mode copy of the whole network for feature distillation.
    """

    def __init__(self, module, keep_network=False):
        self.names = [name for name, param in module.named_parameters() if param.requires_grad]
        self.values = {name: param.detach().clone() for name, param in module.named_parameters()
                       if param.requires_grad}
        self.network = None
        if keep_network:
            self.network = copy.deepcopy(module).eval()
            for param in self.network.parameters():
                param.requires_grad_(False)

    def to(self, device):
        self.values = {name: value.to(device) for name, value in self.values.items()}
        if self.network is not None:
            self.network = self.network.to(device)
        return self


def l2sp_penalty(module, start, weight):
    """``weight / 2 * sum ||w - w0||^2`` over the parameters of ``module`` recorded in ``start``.

    Parameters
    ----------
    module : torch.nn.Module
        The network being trained (not a DDP wrapper: the names must match the snapshot's).
    start : StartSnapshot or dict
        The starting values (``{name: tensor}`` or a :class:`StartSnapshot`).
    weight : float
        ``alpha`` of L2-SP.

    Returns
    -------
    torch.Tensor
        A float32 scalar with gradient ``weight * (w - w0)`` for every recorded parameter.
    """
    values = start.values if isinstance(start, StartSnapshot) else start
    params = dict(module.named_parameters())
    missing = [name for name in values if name not in params]
    if missing:
        raise ValueError(f"L2-SP: the network has no parameter {missing[0]!r} of the starting snapshot")
    total = None
    with no_autocast(next(iter(params.values()))):
        for name, start_value in values.items():
            term = (full_precision(params[name]) - full_precision(start_value)).pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * float(weight) * total


def feature_distillation_loss(student, teacher):
    """``mean_i ||s_i / |s_i| - t_i / |t_i| ||^2`` (= ``mean(2 - 2 cos(s_i, t_i))``) in float32.

    Parameters
    ----------
    student : torch.Tensor
        ``[n, d]`` descriptors of the network being trained.
    teacher : torch.Tensor
        ``[n, d]`` descriptors of the frozen starting network on the same inputs (no gradient flows into it).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} descriptors differ "
                         f"in shape")
    with no_autocast(student):
        s = F.normalize(full_precision(student), dim=1)
        t = F.normalize(full_precision(teacher.detach()), dim=1)
        return (s - t).pow(2).sum(dim=1).mean()
