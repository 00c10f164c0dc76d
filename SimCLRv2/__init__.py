"""SimCLRv2 models (google-research/simclr): ResNet-50/101/152, width 1x/2x/3x, with or without selective kernels.

Get the weights once with ``python3 SimCLRv2/download.py --model r50_2x_sk1`` (downloads the official TensorFlow
checkpoint and converts it), then::

    import SimCLRv2
    resnet = SimCLRv2.load_pretrained("r50_2x_sk1", "pretrained", ema=True)   # eval mode, on CPU
    features = resnet(images)            # images [B, 3, H, W] in [0, 1], no mean/std normalisation
                                         # -> [B, 2048 * width] global-average-pooled features
"""
from .release import Release
from .release import checkpoint_path as _checkpoint_path
from .release import load_pretrained as _load_pretrained
from .release import main as _main
from .resnet import SK_RATIO, ProjectionHead, ResNet, get_resnet, parse_model_name

#: Official SimCLRv2 checkpoints (``r<depth>_<width>x_sk<0|1>``).
MODELS = ("r50_1x_sk0", "r50_1x_sk1", "r50_2x_sk0", "r50_2x_sk1", "r101_1x_sk0", "r101_1x_sk1", "r101_2x_sk0",
          "r101_2x_sk1", "r152_1x_sk0", "r152_1x_sk1", "r152_2x_sk0", "r152_2x_sk1", "r152_3x_sk1")
#: Checkpoint categories and the training step in their file names.
STEPS = {"pretrained": 250228, "finetuned_100pct": 37535, "finetuned_10pct": 3754, "finetuned_1pct": 751,
         "supervised": 28151}
#: The seed's default model ("SimCLR v2 ResNet50 2x").
DEFAULT_MODEL = "r50_2x_sk1"


def build_model(model):
    """``(resnet, head)`` of a SimCLRv2 model name such as ``'r50_2x_sk1'``, randomly initialised."""
    depth, width, sk_ratio = parse_model_name(model)
    return get_resnet(depth, width, sk_ratio)


RELEASE = Release(
    name="SimCLRv2",
    url_template="https://storage.googleapis.com/simclr-checkpoints/simclrv2/{category}/{model}/",
    models=(DEFAULT_MODEL,) + tuple(m for m in MODELS if m != DEFAULT_MODEL),
    steps=STEPS, build=build_model, category_flag="--simclr_category", has_ema=True, default_model=DEFAULT_MODEL)


def checkpoint_path(model=DEFAULT_MODEL, category="pretrained", ema=True, root=None):
    """Absolute path of a converted checkpoint: ``SimCLRv2/torch_checkpoints/<category>/<model>[_ema].pth``.

    ``root`` replaces the ``SimCLRv2`` folder (as ``download.py --out-dir`` does).
    """
    return _checkpoint_path(RELEASE, model, category, ema, root)


def load_pretrained(model=DEFAULT_MODEL, category="pretrained", ema=True, path=None, root=None,
                    return_heads=False):
    """Load a converted SimCLRv2 encoder (strict), in eval mode, on CPU.

    Parameters
    ----------
    model : str
        e.g. ``'r50_2x_sk1'`` (the default), ``'r152_3x_sk1'``.
    category : {'pretrained', 'finetuned_100pct', 'finetuned_10pct', 'finetuned_1pct', 'supervised'}
    ema : bool
        The exponential-moving-average weights (default) or the raw trained ones.
    path : str or Path, optional
        Explicit ``.pth`` file instead of :func:`checkpoint_path`.
    root : str or Path, optional
        Folder holding ``torch_checkpoints/`` instead of the package folder.
    return_heads : bool
        Return ``(resnet, projection_head, supervised_head)`` (heads ``None`` when absent from the file).

    Raises
    ------
    FileNotFoundError
        The message gives the command that creates the file, e.g.
        ``python3 SimCLRv2/download.py --model r50_2x_sk1 --simclr_category pretrained --ema True``.
    """
    return _load_pretrained(RELEASE, model, category, ema, path, root, return_heads)


def main(argv=None):
    """Command line of ``SimCLRv2/download.py``; returns the exit code."""
    return _main(RELEASE, argv)


__all__ = ["DEFAULT_MODEL", "MODELS", "RELEASE", "STEPS", "SK_RATIO", "ProjectionHead", "ResNet", "build_model",
           "checkpoint_path", "get_resnet", "load_pretrained", "main", "parse_model_name"]
