"""PyTorch ResNets and projection heads that match the official SimCLR TensorFlow checkpoints.

The architecture follows google-research/simclr (``resnet.py`` / ``model_util.py``) layer for layer: the
post-activation bottleneck ResNet with the stride on the 3x3 convolution, optional selective-kernel (SK)
convolutions with the ResNet-D stem and shortcut, and the contrastive projection head (dense layers without
bias followed by batch normalisation). TensorFlow padding is reproduced exactly, including the asymmetric
``SAME`` padding of the stem max-pool and of the stride-1 ResNet-D average pool (which, unlike PyTorch, does
not count the padded cells), so a converted checkpoint computes the same features as the original.

Every module that owns weights lists them in TensorFlow creation order (:meth:`tf_layers`): the TF layer
names (``conv2d_7``, ``batch_normalization_12``, ...) are numbered in that order, which is how
:mod:`SimCLRv2.convert` maps checkpoint variables onto the PyTorch parameters.

Inputs are ``[B, 3, H, W]`` float images in ``[0, 1]``; SimCLR does *not* use ImageNet mean/std
normalisation.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

#: Epsilon of every batch normalisation in SimCLR (``BATCH_NORM_EPSILON`` in the TF code).
BN_EPSILON = 1e-5
#: ``sk_ratio`` of the official selective-kernel models (the ``_sk1`` checkpoints).
SK_RATIO = 0.0625
#: Blocks per group for the supported bottleneck depths.
BLOCKS_PER_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
#: Output dimension of the contrastive projection head.
PROJECTION_DIM = 128


def _bn2d(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPSILON)


def _conv(in_channels, out_channels, kernel_size, stride=1):
    # TF pads odd kernels symmetrically by (k - 1) // 2, both for 'SAME' at stride 1 and for the explicit
    # fixed padding used before strided convolutions, so PyTorch's symmetric padding is exact.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def _same_padding(size, kernel_size, stride):
    """TF ``SAME`` padding (before, after) for one spatial dimension; the extra cell goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def max_pool_same(x, kernel_size=3, stride=2):
    """Max pooling with TensorFlow ``padding='SAME'`` (asymmetric: more padding at the bottom/right)."""
    top, bottom = _same_padding(x.shape[-2], kernel_size, stride)
    left, right = _same_padding(x.shape[-1], kernel_size, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride)


def avg_pool_resnet_d(x, stride):
    """The 2x2 average pool of the ResNet-D projection shortcut, as TF computes it.

    At stride 2 TF pads one zero row/column at the bottom/right and pools ``VALID`` (the zeros count); at
    stride 1 it pools ``SAME``, where padded cells are *excluded* from the average.
    """
    padded = F.pad(x, (0, 1, 0, 1))
    if stride > 1:
        return F.avg_pool2d(padded, 2, stride)
    ones = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
    return F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(ones, 2, 1)


class ConvBN(nn.Module):
    """Convolution (no bias) then batch normalisation, optionally followed by ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, relu=True):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size, stride)
        self.bn = _bn2d(out_channels)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x

    def tf_layers(self):
        yield "conv", self.conv
        yield "bn", self.bn


class SelectiveKernel(nn.Module):
    """Selective-kernel 3x3 convolution (https://arxiv.org/abs/1903.06586) of SimCLRv2's ``sk_conv2d``.

    One convolution produces two streams of ``channels`` maps; a small squeeze network (1x1 conv + BN + ReLU,
    then 1x1 conv) computes per-channel softmax weights that mix them.
    """

    def __init__(self, in_channels, channels, stride, sk_ratio, min_dim=32):
        super().__init__()
        mid_dim = max(int(channels * sk_ratio), min_dim)
        self.channels = channels
        self.streams = ConvBN(in_channels, 2 * channels, 3, stride)
        self.squeeze = ConvBN(channels, mid_dim, 1)
        self.mixing = nn.Conv2d(mid_dim, 2 * channels, 1, bias=False)

    def forward(self, x):
        streams = self.streams(x)
        streams = streams.view(streams.shape[0], 2, self.channels, *streams.shape[2:])
        summary = streams.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        weights = self.mixing(self.squeeze(summary))
        weights = torch.softmax(weights.view(weights.shape[0], 2, self.channels, 1, 1), dim=1)
        return (streams * weights).sum(dim=1)

    def tf_layers(self):
        yield from self.streams.tf_layers()
        yield from self.squeeze.tf_layers()
        yield "conv", self.mixing


class Shortcut(nn.Module):
    """Projection shortcut of the first block of a group (1x1 conv + BN, ResNet-D pooling when SK)."""

    def __init__(self, in_channels, out_channels, stride, resnet_d):
        super().__init__()
        self.stride = stride
        self.resnet_d = resnet_d
        # With ResNet-D the downsampling is done by the average pool, the convolution keeps stride 1.
        self.proj = ConvBN(in_channels, out_channels, 1, 1 if resnet_d else stride, relu=False)

    def forward(self, x):
        if self.resnet_d:
            x = avg_pool_resnet_d(x, self.stride)
        return self.proj(x)

    def tf_layers(self):
        yield from self.proj.tf_layers()


class Bottleneck(nn.Module):
    """Post-activation bottleneck block (1x1, 3x3 with the stride, 1x1 with 4x channels)."""

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, projection=False, sk_ratio=0.0):
        super().__init__()
        out_channels = self.expansion * channels
        self.shortcut = Shortcut(in_channels, out_channels, stride, resnet_d=sk_ratio > 0) if projection else None
        self.conv1 = ConvBN(in_channels, channels, 1)
        if sk_ratio > 0:
            self.conv2 = SelectiveKernel(channels, channels, stride, sk_ratio)
        else:
            self.conv2 = ConvBN(channels, channels, 3, stride)
        self.conv3 = ConvBN(channels, out_channels, 1, relu=False)

    def forward(self, x):
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)

    def tf_layers(self):
        # TF builds the projection shortcut before the residual branch.
        if self.shortcut is not None:
            yield from self.shortcut.tf_layers()
        for part in (self.conv1, self.conv2, self.conv3):
            yield from part.tf_layers()


class ResNet(nn.Module):
    """SimCLR ResNet encoder: ``forward(x)`` maps ``[B, 3, H, W]`` images in [0, 1] to ``[B, 2048 * width]``.

    Parameters
    ----------
    depth : {50, 101, 152}
        Number of layers.
    width_multiplier : int
        Channel multiplier (1x, 2x, 3x, 4x).
    sk_ratio : float
        0 for plain ResNets; > 0 (the official models use 0.0625) enables selective kernels together with the
        ResNet-D stem (three 3x3 convolutions) and average-pool shortcuts.
    """

    def __init__(self, depth=50, width_multiplier=1, sk_ratio=0.0):
        super().__init__()
        if depth not in BLOCKS_PER_DEPTH:
            raise ValueError(f"depth must be one of {sorted(BLOCKS_PER_DEPTH)}, got {depth!r}")
        if int(width_multiplier) != width_multiplier or width_multiplier < 1:
            raise ValueError(f"width_multiplier must be a positive integer, got {width_multiplier!r}")
        if sk_ratio < 0:
            raise ValueError(f"sk_ratio must be >= 0, got {sk_ratio!r}")
        width = int(width_multiplier)
        self.depth, self.width_multiplier, self.sk_ratio = depth, width, float(sk_ratio)
        stem_channels = 64 * width
        if sk_ratio > 0:
            self.stem = nn.Sequential(
                ConvBN(3, stem_channels // 2, 3, 2),
                ConvBN(stem_channels // 2, stem_channels // 2, 3),
                ConvBN(stem_channels // 2, stem_channels, 3),
            )
        else:
            self.stem = nn.Sequential(ConvBN(3, stem_channels, 7, 2))
        in_channels = stem_channels
        groups = []
        for index, blocks in enumerate(BLOCKS_PER_DEPTH[depth]):
            channels = 64 * width * 2 ** index
            stride = 1 if index == 0 else 2
            group = [Bottleneck(in_channels, channels, stride, projection=True, sk_ratio=sk_ratio)]
            in_channels = channels * Bottleneck.expansion
            group += [Bottleneck(in_channels, channels, sk_ratio=sk_ratio) for _ in range(1, blocks)]
            groups.append(nn.Sequential(*group))
        self.layer1, self.layer2, self.layer3, self.layer4 = groups
        self.num_features = in_channels

    def forward_features(self, x):
        """Feature maps of the last block group, ``[B, 2048 * width, H / 32, W / 32]``."""
        x = max_pool_same(self.stem(x), 3, 2)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.forward_features(x).mean(dim=(2, 3))

    def tf_layers(self):
        """``(kind, module)`` pairs, kind ``'conv'`` or ``'bn'``, in TensorFlow creation order."""
        for part in self.stem:
            yield from part.tf_layers()
        for group in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in group:
                yield from block.tf_layers()


def batch_norm_1d(dim, center=True):
    """BatchNorm1d as TF's ``batch_normalization(center=center)``: without ``center`` there is no bias (beta)."""
    if center:
        return nn.BatchNorm1d(dim, eps=BN_EPSILON)
    bn = nn.BatchNorm1d(dim, eps=BN_EPSILON, affine=False)
    # A scale without a shift: F.batch_norm accepts weight without bias, and the state dict then has exactly
    # the variables the checkpoint has (gamma, moving mean/variance, no beta).
    bn.weight = nn.Parameter(torch.ones(dim))
    return bn


class HeadLayer(nn.Module):
    """One ``nl_j`` layer of the projection head: dense (no bias) + batch norm (+ ReLU except the last)."""

    def __init__(self, in_dim, out_dim, last):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        # The TF head gives the middle layers a BN bias and ReLU, the last layer neither.
        self.bn = batch_norm_1d(out_dim, center=not last)
        self.relu = not last

    def forward(self, x):
        x = self.bn(self.linear(x))
        return F.relu(x) if self.relu else x


class ProjectionHead(nn.Module):
    """Non-linear contrastive projection head (``head_contrastive/nl_0 ... nl_{n-1}``).

    The hidden layers keep the feature dimension, the last projects to ``out_dim`` (128). SimCLRv2 uses three
    layers, SimCLRv1 two.
    """

    def __init__(self, in_dim, num_layers=3, out_dim=PROJECTION_DIM):
        super().__init__()
        dims = [in_dim] * num_layers + [out_dim]
        self.layers = nn.ModuleList(
            HeadLayer(dims[j], dims[j + 1], last=j == num_layers - 1) for j in range(num_layers))

    def forward(self, x, num_layers=None):
        """Apply the first ``num_layers`` layers (all by default; SimCLRv2 fine-tunes from the first one)."""
        for layer in self.layers[:num_layers]:
            x = layer(x)
        return x


def parse_model_name(model):
    """``'r50_2x_sk1'`` -> ``(50, 2, 0.0625)``: depth, width multiplier and sk_ratio of a SimCLRv2 model name."""
    try:
        depth, width, sk = str(model).split("_")
        if depth[0] != "r" or width[-1] != "x" or sk not in ("sk0", "sk1"):
            raise ValueError
        return int(depth[1:]), int(width[:-1]), SK_RATIO if sk == "sk1" else 0.0
    except ValueError:
        raise ValueError(f"not a SimCLRv2 model name: {model!r} (expected r<depth>_<width>x_sk<0|1>, "
                         f"e.g. 'r50_2x_sk1')") from None


def get_resnet(depth=50, width_multiplier=1, sk_ratio=0.0, head_layers=3):
    """Build a SimCLR encoder and its projection head, randomly initialised, in eval mode.

    Parameters
    ----------
    depth : {50, 101, 152}
    width_multiplier : int
    sk_ratio : float
        0.0 for ``_sk0`` models, 0.0625 for ``_sk1`` models.
    head_layers : int
        Layers of the projection head (3 for SimCLRv2).

    Returns
    -------
    resnet : ResNet
        ``resnet(x)`` gives ``[B, 2048 * width_multiplier]`` features for images in [0, 1].
    head : ProjectionHead
        ``head(features)`` gives the ``[B, 128]`` contrastive projection.
    """
    resnet = ResNet(depth, width_multiplier, sk_ratio)
    head = ProjectionHead(resnet.num_features, num_layers=head_layers)
    return resnet.eval(), head.eval()
