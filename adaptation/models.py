"""Adaptation modules and their checkpoints.

==============  ==================================================================================
``original``    the seed's module: ``ReLU(W x)``, ``W`` a bias-free ``d -> out_dim`` linear map (1024)
``linear``      ``W x`` (bias-free): a learnt linear projection, comparable to PCA
``mlp``         ``W2 ReLU(W1 x + b1)``: one hidden layer of ``out_dim`` units
==============  ==================================================================================

With ``pca_dim``, a PCA fitted on the training images (the seed reduces its features to 256 components first) is
the module's first step, so a checkpoint takes the store's raw features.

Similarities are cosines of the module's outputs, so the stored (adapted) features are L2-normalised.

A checkpoint (``simsearch-adaptation-v1``) is a ``torch.save`` dict of tensors and plain values, read with
``weights_only=True``: the module's kind, sizes and state dict, and the features it was trained on.
"""
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = "simsearch-adaptation-v1"
MODEL_KINDS = ("original", "linear", "mlp")


class AdaptationModule(nn.Module):
    """A small module on top of frozen features (see the module docstring for the kinds).

    Parameters
    ----------
    in_dim : int
    kind : {'original', 'linear', 'mlp'}
    out_dim : int
    """

    def __init__(self, in_dim, kind="original", out_dim=1024, pca_dim=None):
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown adaptation model {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
        if int(in_dim) <= 0 or int(out_dim) <= 0 or (pca_dim is not None and int(pca_dim) <= 0):
            raise ValueError(f"dimensions must be positive, got in_dim={in_dim}, out_dim={out_dim}, "
                             f"pca_dim={pca_dim}")
        self.kind, self.in_dim, self.out_dim = kind, int(in_dim), int(out_dim)
        self.pca_dim = None if pca_dim is None else int(pca_dim)
        if self.pca_dim is not None:  # the seed's PCA before the module, part of it (set by set_pca)
            self.register_buffer("pca_mean", torch.zeros(self.in_dim))
            self.register_buffer("pca_components", torch.zeros(self.pca_dim, self.in_dim))
        width = self.pca_dim or self.in_dim
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(width, self.out_dim), nn.ReLU(),
                                     nn.Linear(self.out_dim, self.out_dim, bias=False))
        else:
            self.net = nn.Linear(width, self.out_dim, bias=False)

    def set_pca(self, mean, components):
        """Use a fitted PCA (``mean [in_dim]``, ``components [pca_dim, in_dim]``) as the first step."""
        self.pca_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.pca_components.copy_(torch.as_tensor(np.asarray(components), dtype=torch.float32))

    def reduce(self, x):
        """The input step: PCA projection when the module has one, else ``x``."""
        if self.pca_dim is None:
            return x
        return (x - self.pca_mean) @ self.pca_components.t()

    def head(self, x):
        """The trained part, on already reduced inputs."""
        x = self.net(x)
        return torch.relu(x) if self.kind == "original" else x

    def forward(self, x):
        return self.head(self.reduce(x))


def save_adaptation(path, module, **info):
    """Write a checkpoint; ``info`` holds plain values (source store name, dims, metrics...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "kind": module.kind, "in_dim": module.in_dim,
               "out_dim": module.out_dim, "pca_dim": module.pca_dim,
               "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
               "info": dict(info)}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_adaptation(path):
    """Read a checkpoint written by :func:`save_adaptation`.

    Returns
    -------
    module : AdaptationModule (in eval mode, on CPU)
    info : dict

    Raises
    ------
    ValueError
        When the file is missing or not an adaptation checkpoint.
    """
    from helpers.checkpoints import load_tagged_checkpoint

    payload = load_tagged_checkpoint(path, CHECKPOINT_FORMAT, "adaptation checkpoint",
                                     "train_adaptation.py writes <save-to>/run_<i>/adaptation.pt")
    module = AdaptationModule(payload["in_dim"], payload["kind"], payload["out_dim"], payload.get("pca_dim"))
    module.load_state_dict(payload["state_dict"])
    module.eval()
    return module, dict(payload.get("info") or {})


@torch.no_grad()
def adapt_features(module, features, batch_size=65536, device="cpu"):
    """The module applied to ``features`` (``[n, in_dim]``, array or memmap, in blocks), L2-normalised float32."""
    n = features.shape[0]
    if features.ndim != 2 or features.shape[1] != module.in_dim:
        raise ValueError(f"the adaptation module takes {module.in_dim}-d features, got shape {features.shape}")
    module = module.to(device).eval()
    out = np.empty((n, module.out_dim), dtype=np.float32)
    for start in range(0, n, batch_size):
        block = torch.from_numpy(np.array(features[start:start + batch_size], dtype=np.float32)).to(device)
        out[start:start + block.shape[0]] = torch.nn.functional.normalize(module(block), dim=1).cpu().numpy()
    return out
