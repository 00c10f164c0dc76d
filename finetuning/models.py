"""The networks that fine-tuning trains, and how they are built from the command-line flags.

Every mode trains an :class:`extractor.models.EmbeddingNet` (a registry backbone's trunk, pooling, optional
projection, optional L2 normalisation), so each epoch's checkpoint is an ``extractor`` checkpoint that
``extract_features.py --checkpoint PATH`` loads:

- ``simclr`` (the seed's method): average pooling, no projection; a SimCLR projection head (the seed's
  :class:`SimCLRv2.ProjectionHead`, pretrained when available) maps the descriptor to the 128-d space of the
  loss and is discarded afterwards (its weights are kept in the checkpoint to resume);
- ``copy_detection`` (SSCD): GeM pooling, optional linear projection, L2 normalisation; the loss is computed on
  that descriptor, the one that is searched;
- ``triplet`` (seed 004): a ResNet with an L2-normalised 128-d linear head (optionally a frozen backbone), or the
  small siamese CNN of seed 004 (``--backbone siamese``; its checkpoints are read by this package only).

The wrapper :class:`TrainingModel` takes images in [0, 1] and applies the backbone's normalisation itself, so
the augmentations never need to know it.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from helpers.log import get_logger
from helpers.seeding import stable_seed

logger = get_logger(__name__)

MODES = ("simclr", "copy_detection", "triplet")
SIAMESE = "siamese"
SIAMESE_FORMAT = "simsearch-siamese-v1"


class SiameseNet(nn.Module):
    """The small CNN of seed 004 (two 5x5 convolutions with PReLU and max pooling, then fully connected layers),
    made resolution-independent by an adaptive pooling to 4x4, with an L2-normalised ``embedding_dim`` output."""

    def __init__(self, embedding_dim=128, seed=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 5), nn.PReLU(), nn.MaxPool2d(2, 2),
                nn.Conv2d(32, 64, 5), nn.PReLU(), nn.MaxPool2d(2, 2),
                nn.AdaptiveAvgPool2d(4))
            self.fc = nn.Sequential(nn.Linear(64 * 16, 256), nn.PReLU(), nn.Linear(256, 256), nn.PReLU(),
                                    nn.Linear(256, int(embedding_dim)))
        self.embedding_dim = int(embedding_dim)
        self.config = {"backbone": SIAMESE, "embedding_dim": self.embedding_dim, "seed": int(seed)}
        self.preprocessing = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

    def forward(self, x):
        return F.normalize(self.fc(self.features(x).flatten(1)), dim=1)


class TrainingModel(nn.Module):
    """Normalisation of [0, 1] inputs, the descriptor network and (SimCLR mode) the projection head.

    ``forward(x)`` returns what the loss uses (the projection in SimCLR mode, the descriptor otherwise);
    :meth:`descriptor` returns what is searched. ``freeze_bn`` keeps every batch-norm layer in evaluation mode
    (running statistics of the start, used and not updated) while its affine parameters train.
    """

    def __init__(self, net, head=None, freeze_backbone=False, freeze_bn=False):
        super().__init__()
        self.freeze_bn = bool(freeze_bn)
        self.net, self.head = net, head
        pre = getattr(net, "preprocessing", None) or {}
        mean, std = pre.get("mean"), pre.get("std")
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, 3, 1, 1))
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            trunk = getattr(net, "backbone", None)
            if trunk is None:
                raise ValueError("--freeze_backbone needs a registry backbone (not the siamese CNN)")
            for param in trunk.parameters():
                param.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_backbone:
            self.net.backbone.eval()     # a frozen trunk keeps its batch-norm statistics too
        if self.freeze_bn and mode:
            # pretrained running statistics kept (small, heavily edited batches would overwrite them); the
            # affine parameters still train
            for module in self.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def normalize_input(self, x):
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def descriptor(self, x):
        return self.net(self.normalize_input(x))

    def forward(self, x, with_descriptor=False):
        """What the loss uses; with ``with_descriptor`` the pair ``(loss output, descriptor)`` (one pass, for a
        regulariser on the searched descriptor; a keyword of ``forward`` so that DDP sees the call)."""
        out = self.descriptor(x)
        loss_out = self.head(out) if self.head is not None else out
        return (loss_out, out) if with_descriptor else loss_out


def backbone_name(config):
    """Registry name of the backbone: ``--backbone``, or the seed's ``--arch_depth/--arch_width/--arch_sk``
    (``'SimCLR v2 ResNet50 2x'``; ``' sk0'`` is appended when ``--arch_sk 0``)."""
    if config.backbone:
        return config.backbone
    suffix = "" if config.arch_sk and config.arch_sk > 0 else " sk0"
    return f"SimCLR v2 ResNet{config.arch_depth} {config.arch_width}x{suffix}"


def start_kind(config):
    """``'random'``, ``'pretrained'`` or ``'checkpoint'`` for the ``--model`` flag."""
    value = str(config.model)
    if value in ("original", "pretrained"):
        return "pretrained"
    if value == "random":
        return "random"
    return "checkpoint"


def mode_defaults(config):
    """Pooling, projection size and normalisation of the descriptor for the mode (flags win when given)."""
    pooling = config.pooling or ("gem" if config.mode == "copy_detection" else "avg")
    projection = config.embedding_dim
    if projection is None and config.mode == "triplet":
        projection = 128
    normalize = config.mode in ("copy_detection", "triplet")
    return pooling, projection, normalize


def training_preprocessing(name, size):
    """What a fine-tuned network sees: the whole image resized to ``size x size`` (bilinear, as
    :func:`finetuning.augment.eval_resize`) with the backbone's own normalisation. Stored in the checkpoint, so
    ``extract_features.py --checkpoint`` prepares images exactly as training and validation did."""
    from extractor.registry import get_model_spec
    from extractor.transforms import Preprocessing

    spec = get_model_spec(name)
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; use a registry model name such as 'ResNet18 1x' or "
                         f"'SimCLR v2 ResNet50 2x', or 'siamese'")
    return Preprocessing(resize=(int(size), int(size)), crop=None, interpolation="bilinear",
                         mean=spec.preprocessing.mean, std=spec.preprocessing.std)


def _embedding_net(name, pooling, gem_p, projection, normalize, weights, seed, size):
    from extractor.models import EmbeddingNet

    return EmbeddingNet(name, pooling=pooling, gem_p=gem_p, projection_dim=projection, normalize=normalize,
                        weights=weights, seed=seed, preprocessing=training_preprocessing(name, size))


def _simclr_head(net, config, name, pretrained):
    """The seed's projection head (SimCLRv2 layout), with the converted pretrained weights when they exist."""
    from SimCLRv2 import ProjectionHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed("projection-head", config.seed))
        head = ProjectionHead(net.embedding_dim, num_layers=config.head_layers, out_dim=config.head_dim)
    spec = getattr(net, "spec", None)
    if pretrained and spec is not None and spec.family == "simclr_v2" and config.head_layers == 3 \
            and config.head_dim == 128:
        import SimCLRv2

        _, loaded, _ = SimCLRv2.load_pretrained(spec.arch, "pretrained", ema=True, return_heads=True)
        if loaded is not None:
            head.load_state_dict(loaded.state_dict())
            logger.info("projection head: pretrained SimCLRv2 %s head", spec.arch)
    return head


def read_checkpoint(path):
    """The raw dict of a fine-tuning checkpoint (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from extractor.models import checkpoint_load_error

        raise ValueError(checkpoint_load_error(path, exc)) from None


def load_descriptor_net(path, device="cpu"):
    """The descriptor network of any checkpoint this package writes (an extractor checkpoint or a siamese one)."""
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == SIAMESE_FORMAT:
        config = {k: v for k, v in payload["config"].items() if k != "backbone"}
        net = SiameseNet(**config)
        net.load_state_dict(payload["state_dict"])
        return net.eval().to(device), payload
    from extractor.models import load_checkpoint

    net, _, _ = load_checkpoint(path, device=device)
    return net, payload


def _with_training_preprocessing(net, name, size):
    """A checkpoint's network, rebuilt (same weights) with the preprocessing of ``--size`` when it differs."""
    from extractor.models import EmbeddingNet

    if not isinstance(net, EmbeddingNet):
        return net
    wanted = training_preprocessing(name, size).meta()
    if net.preprocessing == wanted:
        return net
    logger.info("continuing %s at %dx%d (its checkpoint had: %s)", name, size, size,
                net.preprocessing.get("description"))
    config = {**net.config, "preprocessing": wanted}
    rebuilt = EmbeddingNet(**config, weights=None)
    rebuilt.load_state_dict(net.state_dict(), assign=True)
    rebuilt.weights_info = net.weights_info
    return rebuilt.eval()


def build_networks(config):
    """Build the descriptor network and (SimCLR mode) the projection head from the configuration.

    Returns
    -------
    net : EmbeddingNet or SiameseNet
    head : nn.Module or None
    info : dict
        ``backbone``, ``start`` (random / pretrained / checkpoint), ``weights`` description.
    """
    kind = start_kind(config)
    pooling, projection, normalize = mode_defaults(config)
    head_state = None
    if kind == "checkpoint":
        net, payload = load_descriptor_net(config.model)
        head_state = payload.get("head_state_dict") if isinstance(payload, dict) else None
        name = net.config.get("backbone")
        net = _with_training_preprocessing(net, name, config.size)
        weights = f"checkpoint {config.model}"
    elif backbone_name(config) == SIAMESE:
        if config.mode != "triplet":
            raise ValueError("the siamese CNN is the triplet mode's network (--mode triplet)")
        if kind == "pretrained":
            raise ValueError("the siamese CNN has no pretrained weights; use --model random")
        net, name, weights = SiameseNet(projection or 128, seed=config.seed), SIAMESE, "random"
    else:
        name = backbone_name(config)
        net = _embedding_net(name, pooling, config.gem_p, projection, normalize, kind, config.seed, config.size)
        weights = net.weights_info.get("weights")
    head = None
    if config.mode == "simclr":
        head = _simclr_head(net, config, name, pretrained=kind == "pretrained")
        if head_state is not None:
            head.load_state_dict(head_state)
    return net, head, {"backbone": name, "start": kind, "weights": weights}


def save_training_checkpoint(path, net, **extra):
    """Write an epoch checkpoint: :func:`extractor.models.save_checkpoint` for registry backbones (so
    ``extract_features.py --checkpoint`` reads it), the siamese format otherwise. Atomic either way."""
    if isinstance(net, SiameseNet):
        import os

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"format": SIAMESE_FORMAT, "config": dict(net.config),
                    "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, **extra}, tmp)
        os.replace(tmp, path)
        return path
    from extractor.models import save_checkpoint

    return save_checkpoint(path, net, **extra)
