"""What SimCLRv1 and SimCLRv2 share: where checkpoints live, how they are fetched, converted and loaded.

A :class:`Release` describes one family of official checkpoints (URLs, model names, training steps, the
PyTorch builder). Everything else is written once here and used by both ``SimCLRv1`` and ``SimCLRv2``:

* ``<package>/tf_checkpoints/<category>/<model>/``: the downloaded TensorFlow files;
* ``<package>/torch_checkpoints/<category>/<model>[_ema].pth``: the converted PyTorch weights, a plain dict
  ``{"resnet": state_dict, "head": state_dict, "supervised_head": state_dict}`` (heads when present);
* :func:`main`: the ``download.py`` command line (download with resume, or ``--from-dir`` offline, then convert);
* :func:`load_pretrained`: the loader used by the feature extractor and the fine-tuning code.
"""
import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from helpers.cli import add_common_arguments, run_cli, str2bool
from helpers.log import get_logger

from .convert import ConversionError, convert_checkpoint, find_checkpoint_prefix, save_state
from .download_utils import NetworkError, RemoteFileError, download_files

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = get_logger(__name__)


@dataclass(frozen=True)
class Release:
    """One family of official SimCLR checkpoints.

    Parameters
    ----------
    name : str
        Package name (``'SimCLRv2'``); also the folder holding ``download.py`` and the checkpoints.
    url_template : str
        Folder URL with ``{category}`` and ``{model}`` fields.
    models : tuple of str
        Downloadable model names; ``default_model`` is the first.
    steps : dict
        ``{category: step}`` or ``{category: {model: step}}``: the training step in the file names.
    build : callable
        ``build(model) -> (resnet, head)``, randomly initialised.
    category_flag : str
        The command-line flag that selects the category.
    has_ema : bool
        Whether the checkpoints carry exponential-moving-average weights (``--ema``).
    """

    name: str
    url_template: str
    models: tuple
    steps: dict
    build: Callable
    category_flag: str
    has_ema: bool
    default_model: str
    folder: Path = field(default=None)

    def __post_init__(self):
        if self.folder is None:
            object.__setattr__(self, "folder", REPO_ROOT / self.name)

    @property
    def categories(self):
        return tuple(self.steps)

    def check(self, model, category):
        """Raise ValueError with the valid choices for an unknown model or category."""
        if model not in self.models:
            raise ValueError(f"unknown {self.name} model {model!r}; choose one of {', '.join(self.models)}")
        if category not in self.steps:
            raise ValueError(f"unknown {self.name} category {category!r}; choose one of {', '.join(self.steps)}")

    def step(self, model, category):
        self.check(model, category)
        steps = self.steps[category]
        return steps[model] if isinstance(steps, dict) else steps

    def root(self, root=None):
        return Path(root).resolve() if root is not None else self.folder

    def tf_dir(self, model, category, root=None):
        """Folder of the downloaded TF files: ``<root>/tf_checkpoints/<category>/<model>``."""
        self.check(model, category)
        return self.root(root) / "tf_checkpoints" / category / model

    def torch_path(self, model, category, ema=False, root=None):
        """Converted file: ``<root>/torch_checkpoints/<category>/<model>[_ema].pth`` (absolute)."""
        self.check(model, category)
        suffix = "_ema" if ema and self.has_ema else ""
        return self.root(root) / "torch_checkpoints" / category / f"{model}{suffix}.pth"

    def file_names(self, model, category):
        step = self.step(model, category)
        return ["checkpoint", "graph.pbtxt"] + [f"model.ckpt-{step}.{ext}"
                                               for ext in ("data-00000-of-00001", "index", "meta")]

    def base_url(self, model, category):
        self.check(model, category)
        return self.url_template.format(category=category, model=model)

    def command(self, model, category, ema=False, root=None, from_dir=None):
        """The ``download.py`` command (from the repository root) that creates ``torch_path(...)``."""
        parts = ["python3", f"{self.name}/download.py", "--model", model, self.category_flag, category]
        if self.has_ema:
            parts += ["--ema", str(bool(ema))]
        if root is not None and self.root(root) != self.folder:
            parts += ["--out-dir", str(self.root(root))]
        if from_dir is not None:
            parts += ["--from-dir", str(from_dir)]
        return " ".join(parts)


def checkpoint_path(release, model, category, ema=False, root=None):
    """Absolute path of the converted PyTorch checkpoint (see :meth:`Release.torch_path`)."""
    return release.torch_path(model, category, ema, root)


def supervised_head_from_state(state):
    """An ``nn.Linear`` sized from a saved ``supervised_head`` state dict."""
    num_classes, num_features = state["weight"].shape
    linear = nn.Linear(num_features, num_classes)
    linear.load_state_dict(state, strict=True)
    return linear.eval()


def build_empty(release, model):
    """``release.build(model)`` on the meta device: every tensor is then assigned from a checkpoint, so random
    initialisation (seconds and gigabytes for the largest models) would be wasted."""
    with torch.device("meta"):
        return release.build(model)


def load_pretrained(release, model, category, ema=False, path=None, root=None, return_heads=False):
    """Load a converted checkpoint into a fresh encoder (strict), in eval mode.

    Parameters
    ----------
    release : Release
    model, category : str
    ema : bool
        Pick the EMA checkpoint (SimCLRv2 only).
    path : str or Path, optional
        Explicit ``.pth`` file; defaults to :func:`checkpoint_path`.
    root : str or Path, optional
        Folder holding ``torch_checkpoints/`` (defaults to the package folder).
    return_heads : bool
        Also return the projection head and the supervised classifier (``None`` when not in the file).

    Returns
    -------
    resnet or (resnet, head, supervised_head)

    Raises
    ------
    FileNotFoundError
        When the file does not exist; the message gives the command that creates it.
    """
    path = Path(path) if path is not None else checkpoint_path(release, model, category, ema, root)
    if not path.is_file():
        raise FileNotFoundError(
            f"no converted {release.name} checkpoint at {path}. Create it (from the repository root) with:\n"
            f"  {release.command(model, category, ema, root)}\n"
            f"It downloads the official TensorFlow checkpoint and converts it (TensorFlow needed: pip install "
            f"tensorflow-cpu). Without internet access, see the --from-dir option of that script.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    resnet, head = build_empty(release, model)
    resnet.load_state_dict(state["resnet"], strict=True, assign=True)
    if not return_heads:
        return resnet.eval()
    if "head" in state:
        head.load_state_dict(state["head"], strict=True, assign=True)
    head = head.eval() if "head" in state else None
    supervised = supervised_head_from_state(state["supervised_head"]) if "supervised_head" in state else None
    return resnet, head, supervised


def build_parser(release):
    """The ``download.py`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=f"python3 {release.name}/download.py",
        description=f"Download an official {release.name} TensorFlow checkpoint into "
                    f"{release.name}/tf_checkpoints/ and convert it to PyTorch in {release.name}/torch_checkpoints/.")
    parser.add_argument("--model", default=release.default_model, choices=release.models,
                        help="model to download (default: %(default)s)")
    parser.add_argument(release.category_flag, dest="category", default=release.categories[0],
                        choices=release.categories, help="checkpoint category (default: %(default)s)")
    if release.has_ema:
        parser.add_argument("--ema", type=str2bool, default=True, metavar="True|False",
                            help="convert the exponential-moving-average weights (default: %(default)s)")
    parser.add_argument("--supervised", type=str2bool, default=True, metavar="True|False",
                        help="also convert the supervised (linear-eval / fine-tuned) classifier head when the "
                             "checkpoint has one (default: %(default)s)")
    parser.add_argument("--from-dir", metavar="DIR", default=None,
                        help="convert the TF checkpoint already in DIR (model.ckpt-STEP.index/.data-*), no network")
    parser.add_argument("--out-dir", metavar="DIR", default=None,
                        help=f"folder for tf_checkpoints/ and torch_checkpoints/ (default: the {release.name} folder)")
    parser.add_argument("--ignore-variables", metavar="REGEX", action="append", default=[],
                        help="skip checkpoint variables matching REGEX (repeatable); only for variables known to "
                             "be unused, the conversion otherwise refuses leftovers")
    parser.add_argument("--force", action="store_true", help="convert again even if the .pth file exists")
    add_common_arguments(parser, device=False, seed=False, force=False)
    return parser


def has_checkpoint(folder, step):
    """Whether ``folder`` holds a complete TF checkpoint (``.index`` and ``.data``) to convert."""
    try:
        find_checkpoint_prefix(folder, step)
    except FileNotFoundError:
        return False
    return True


def offline_message(release, model, category, ema, root, reason):
    """The single message printed when the checkpoint cannot be downloaded."""
    urls = [release.base_url(model, category) + name for name in release.file_names(model, category)]
    folder = release.tf_dir(model, category, root)
    return (f"error: cannot download the {release.name} checkpoint {model} ({category}): {reason}\n"
            f"Without internet access, fetch these files on another machine:\n  " + "\n  ".join(urls) + "\n"
            f"and put them in\n  {folder}\n"
            f"then run the same command again (files already there are not downloaded), or convert them from "
            f"any folder with\n  {release.command(model, category, ema, root, from_dir='DIR')}")


def main(release, argv=None):
    """``download.py``: download (or take ``--from-dir``), convert, save. Returns the exit code.

    Bad flags end as one ``error:`` line and exit code 2 (:func:`helpers.cli.run_cli`); a download or conversion
    that fails returns 1 after its explanation (the offline instructions take several lines).
    """
    return run_cli(build_parser(release), lambda args: _download(release, args), argv)


def _download(release, args):
    ema = bool(getattr(args, "ema", False))
    target = release.torch_path(args.model, args.category, ema, args.out_dir)
    if target.is_file() and not args.force:
        print(f"already converted: {target} (use --force to convert again)")
        return 0
    source = args.from_dir
    if source is None:
        source = release.tf_dir(args.model, args.category, args.out_dir)
        try:
            download_files(release.base_url(args.model, args.category),
                           release.file_names(args.model, args.category), source)
        except NetworkError as exc:
            if not has_checkpoint(source, release.step(args.model, args.category)):
                print(offline_message(release, args.model, args.category, ema, args.out_dir, exc.reason),
                      file=sys.stderr)
                return 1
            # The weights (.index + .data) are there, copied by hand: the other files are not needed.
            logger.warning("%s; converting the checkpoint already in %s", exc, source)
        except RemoteFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    resnet, head = build_empty(release, args.model)
    try:
        state = convert_checkpoint(source, resnet, head, ema=ema, supervised=args.supervised,
                                   step=release.step(args.model, args.category), ignore=args.ignore_variables)
    except (ConversionError, FileNotFoundError, ImportError) as exc:
        print(f"error: cannot convert {source}: {exc}", file=sys.stderr)
        return 1
    save_state(state, target)
    print(f"saved {target} ({', '.join(state)})")
    return 0
