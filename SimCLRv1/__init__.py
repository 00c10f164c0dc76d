"""SimCLRv1 models (google-research/simclr, first release): the "wider" ResNet-50 1x, 2x and 4x.

The encoder is the SimCLRv2 ResNet-50 without selective kernels (same TF code and variable naming); the v1
projection head has two layers instead of three. Get the weights once with
``python3 SimCLRv1/download.py --model 2x`` (download + conversion), then::

    import SimCLRv1
    resnet = SimCLRv1.load_pretrained("2x", "pretrain")   # eval mode, on CPU
    features = resnet(images)   # images [B, 3, H, W] in [0, 1], no normalisation -> [B, 2048 * width]
"""
from SimCLRv2 import resnet as _resnet
from SimCLRv2.release import Release
from SimCLRv2.release import checkpoint_path as _checkpoint_path
from SimCLRv2.release import load_pretrained as _load_pretrained
from SimCLRv2.release import main as _main

#: Official SimCLRv1 checkpoints: ResNet-50 of width 1x, 2x, 4x.
MODELS = ("1x", "2x", "4x")
#: Checkpoint categories and the training step in their file names (per width when they differ).
STEPS = {"pretrain": 225206,
         "finetune_100pct": {"1x": 9384, "2x": 18768, "4x": 4692},
         "finetune_10pct": {"1x": 939, "2x": 939, "4x": 470}}
DEFAULT_MODEL = "2x"
#: Layers of the SimCLRv1 projection head (``head_contrastive/nl_0``, ``nl_1``).
HEAD_LAYERS = 2


def get_resnet(width_multiplier=1):
    """``(resnet, head)``: SimCLRv1 ResNet-50 of the given width and its 2-layer projection head (eval mode).

    ``resnet(x)`` maps ``[B, 3, H, W]`` images in [0, 1] to ``[B, 2048 * width_multiplier]`` features.
    """
    return _resnet.get_resnet(50, width_multiplier, 0.0, head_layers=HEAD_LAYERS)


def build_model(model):
    """``(resnet, head)`` of a SimCLRv1 model name (``'1x'``, ``'2x'``, ``'4x'``)."""
    if model not in MODELS:
        raise ValueError(f"unknown SimCLRv1 model {model!r}; choose one of {', '.join(MODELS)}")
    return get_resnet(int(model[:-1]))


RELEASE = Release(
    name="SimCLRv1",
    url_template="https://storage.googleapis.com/simclr-checkpoints/simclrv1/{category}/{model}/",
    models=(DEFAULT_MODEL,) + tuple(m for m in MODELS if m != DEFAULT_MODEL),
    steps=STEPS, build=build_model, category_flag="--category", has_ema=False, default_model=DEFAULT_MODEL)


def checkpoint_path(model=DEFAULT_MODEL, category="pretrain", root=None):
    """Absolute path of a converted checkpoint: ``SimCLRv1/torch_checkpoints/<category>/<model>.pth``."""
    return _checkpoint_path(RELEASE, model, category, False, root)


def load_pretrained(model=DEFAULT_MODEL, category="pretrain", path=None, root=None, return_heads=False):
    """Load a converted SimCLRv1 encoder (strict), in eval mode, on CPU.

    ``model`` is ``'1x'``, ``'2x'`` or ``'4x'``, ``category`` one of :data:`STEPS`; ``path``, ``root`` and
    ``return_heads`` are those of :func:`SimCLRv2.load_pretrained`. A missing file raises FileNotFoundError
    whose message is the command that creates it (``python3 SimCLRv1/download.py --model 2x --category pretrain``).
    """
    return _load_pretrained(RELEASE, model, category, False, path, root, return_heads)


def main(argv=None):
    """Command line of ``SimCLRv1/download.py``; returns the exit code."""
    return _main(RELEASE, argv)


__all__ = ["DEFAULT_MODEL", "HEAD_LAYERS", "MODELS", "RELEASE", "STEPS", "build_model", "checkpoint_path",
           "get_resnet", "load_pretrained", "main"]
