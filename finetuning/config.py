"""The fine-tuning configuration: every flag of ``finetune.py``, with the seed's names and defaults.

:class:`FinetuneConfig` is the single definition of the flags: each field holds its flag's default, help text, type
and choices, and :func:`add_finetune_arguments` declares the flags from the fields (``finetune.py`` and the
benchmark use it). A :class:`FinetuneConfig` is the resolved configuration the trainer runs (built from the parsed
flags by :func:`config_from_args`, or directly in Python and tests).
"""
from dataclasses import MISSING, asdict, dataclass, field, fields

from helpers.cli import add_max_pixels_argument, str2bool
from helpers.image_io import DEFAULT_MAX_PIXELS

from .models import MODES

OPTIMIZERS = ("lars", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
SELECT_METRICS = ("recall@1", "muap")


SEED_GROUP = "the seed's flags"
TOOLKIT_GROUP = "toolkit flags"


def _flag(group, default=MISSING, **options):
    """A field of :class:`FinetuneConfig` that is also the flag ``--<field>`` of ``finetune.py``.

    The default is the field's (none: a required flag); ``options`` are argparse's (``help``, ``type``,
    ``choices``, ``nargs``, ``metavar``, ``action``), kept in the field's metadata with the help ``group``.
    :func:`add_finetune_arguments` declares the flags from them, so each flag is declared once.
    """
    return field(default=default, metadata={"flag": dict(options, group=group)})


@dataclass
class FinetuneConfig:
    """Resolved fine-tuning configuration (see ``finetune.py -h`` for the meaning of each field).

    Each field is a flag: those made with :func:`_flag` are declared from here by :func:`add_finetune_arguments`
    (default, help, type and choices in one place), the last five are the common flags of :mod:`helpers.cli`.
    """

    train_dataset: str = _flag(
        SEED_GROUP, nargs="+",
        help="training images: folders (read recursively) or registered dataset names")
    log_dir: str = _flag(
        SEED_GROUP,
        help="experiment folder: config.yml, experiment.yml, TensorBoard events (one sub-folder per "
             "run), best_epoch.json; checkpoints go to <log_dir>_models/<timestamp>/epoch_<n>.pth")
    model: str = _flag(
        SEED_GROUP, "original",
        help="starting weights: 'original' (= 'pretrained': the converted SimCLR v2 checkpoint of "
             "--arch_*, or the backbone's pretrained weights), 'random', or PATH to a fine-tuning "
             "checkpoint (default: %(default)s)")
    arch_depth: int = _flag(
        SEED_GROUP, 50, type=int, choices=[50, 101, 152],
        help="SimCLR v2 depth when no --backbone is given (default: %(default)s)")
    arch_width: int = _flag(
        SEED_GROUP, 2, type=int, choices=[1, 2, 3],
        help="SimCLR v2 width multiplier (default: %(default)s)")
    arch_sk: float = _flag(
        SEED_GROUP, 0.0625, type=float,
        help="SimCLR v2 selective-kernel ratio: 0.0625 (sk1) or 0 (sk0) (default: %(default)s)")
    val_dataset: str = _flag(
        SEED_GROUP, None,
        help="validation images, disjoint from the training ones: originals (+ attacked copies "
             "<id>_<attack>.<ext>; --val_copies random edits per original are generated when there "
             "are none). recall@1 is computed every --val_every epochs and the best epoch recorded")
    size: int = _flag(
        SEED_GROUP, 224, type=int,
        help="training and validation image size (default: %(default)s)")
    jitter: float = _flag(
        SEED_GROUP, 1.0, type=float,
        help="colour-jitter strength s: brightness/contrast/saturation 0.8*s, hue 0.2*s "
             "(default: %(default)s)")
    optimizer: str = _flag(
        SEED_GROUP, "lars", choices=OPTIMIZERS,
        help="(default: %(default)s)")
    lr: float = _flag(
        SEED_GROUP, 0.0, type=float,
        help="base learning rate; 0 = automatic: LARS 0.075*sqrt(global batch) (SimCLR's square-root "
             "rule), Adam 1e-3*sqrt(global batch/256); times --pretrained_lr_scale when starting from "
             "pretrained weights or a checkpoint (default: %(default)s)")
    epochs: int = _flag(
        SEED_GROUP, 100, type=int,
        help="(default: %(default)s)")
    batch_size: int = _flag(
        SEED_GROUP, 64, type=int,
        help="images per process (GPU); the global batch is batch_size x processes "
             "(default: %(default)s)")
    temperature: float = _flag(
        SEED_GROUP, None, type=float,
        help="NT-Xent temperature (default: 0.1 in simclr mode, 0.05 in copy_detection mode)")
    weight_decay: float = _flag(
        SEED_GROUP, 1e-6, type=float,
        help="weight decay (not applied to biases and batch-norm parameters) (default: %(default)s)")
    momentum: float = _flag(
        SEED_GROUP, 0.9, type=float,
        help="LARS momentum (default: %(default)s)")
    nesterov: bool = _flag(
        SEED_GROUP, False, type=str2bool, metavar="{False,True}",
        help="Nesterov momentum for LARS (default: %(default)s)")
    scheduler: bool = _flag(
        SEED_GROUP, True, type=str2bool, metavar="{False,True}",
        help="linear warm-up then cosine decay of the learning rate (default: %(default)s)")
    gpus: int = _flag(
        SEED_GROUP, 1, type=int,
        help="processes to start on this machine (one per GPU; CPU processes with --device cpu). "
             "Under torchrun (multi-GPU, multi-node) the launcher's world size is used instead "
             "(default: %(default)s)")
    workers: int = _flag(
        SEED_GROUP, 4, type=int,
        help="data-loader workers per process (default: %(default)s)")
    mode: str = _flag(
        TOOLKIT_GROUP, "simclr", choices=MODES,
        help="simclr: the seed's SimCLR fine-tuning (projection head, SimCLR augmentations); "
             "copy_detection: SSCD-like (loss on the searched GeM descriptor, augmentations that match "
             "the attacks, KoLeo regulariser, low temperature); triplet: seed 004's triplet loss "
             "(default: %(default)s)")
    backbone: str = _flag(
        TOOLKIT_GROUP, None,
        help="any extractor registry model ('ResNet18 1x', 'ResNet50 1x', 'SimCLR v2 ResNet50 2x'...) "
             "or 'siamese' (triplet mode's small CNN); default: SimCLR v2 from --arch_*")
    resume: bool = _flag(
        TOOLKIT_GROUP, False, action="store_true",
        help="continue the latest run of --log_dir from its last checkpoint (weights, optimizer, "
             "scheduler, epoch, random state)")
    precision: str = _flag(
        TOOLKIT_GROUP, "fp32", choices=PRECISIONS,
        help="fp32, or mixed precision: bf16 (CPU or GPU) or fp16 (GPU, with loss scaling) "
             "(default: %(default)s)")
    pooling: str = _flag(
        TOOLKIT_GROUP, None, choices=["avg", "gem"],
        help="descriptor pooling (default: gem in copy_detection mode, avg otherwise)")
    gem_p: float = _flag(
        TOOLKIT_GROUP, 3.0, type=float,
        help="initial GeM exponent (default: %(default)s)")
    embedding_dim: int = _flag(
        TOOLKIT_GROUP, None, type=int,
        help="linear projection of the descriptor to this size (default: none; 128 in triplet mode)")
    head_layers: int = _flag(
        TOOLKIT_GROUP, 3, type=int,
        help="layers of the SimCLR projection head (simclr mode) (default: %(default)s)")
    head_dim: int = _flag(
        TOOLKIT_GROUP, 128, type=int,
        help="output size of the SimCLR projection head (default: %(default)s)")
    koleo_weight: float = _flag(
        TOOLKIT_GROUP, None, type=float,
        help="weight of the KoLeo entropy regulariser (default: 10 in copy_detection mode, 0 otherwise)")
    margin: float = _flag(
        TOOLKIT_GROUP, 0.2, type=float,
        help="triplet margin (default: %(default)s)")
    freeze_backbone: bool = _flag(
        TOOLKIT_GROUP, False, action="store_true",
        help="train only the pooling/projection (triplet mode's frozen ResNet)")
    freeze_bn: bool = _flag(
        TOOLKIT_GROUP, False, action="store_true",
        help="keep the batch-norm layers in evaluation mode: the starting model's running statistics "
             "are used and kept (small, heavily edited batches would overwrite a pretrained model's); "
             "their scale and shift still train")
    l2sp_weight: float = _flag(
        TOOLKIT_GROUP, 0.0, type=float,
        help="L2-SP regulariser toward the start: alpha/2 * sum ||w - w0||^2 over the trained "
             "network's parameters (Li et al. 2018); 0 = off (default: %(default)s)")
    distill_weight: float = _flag(
        TOOLKIT_GROUP, 0.0, type=float,
        help="feature distillation toward the start: beta * mean ||n(f(x)) - n(f0(x))||^2 between the "
             "L2-normalised descriptors of every training view by the trained and the frozen starting "
             "network; 0 = off (default: %(default)s)")
    select_metric: str = _flag(
        TOOLKIT_GROUP, "recall@1", choices=SELECT_METRICS,
        help="validation metric that picks the best epoch: recall@1 or muap (micro-average precision, "
             "finer-grained when recall@1 saturates) (default: %(default)s)")
    warmup_epochs: float = _flag(
        TOOLKIT_GROUP, None, type=float,
        help="epochs of linear warm-up (default: 10%% of --epochs)")
    pretrained_lr_scale: float = _flag(
        TOOLKIT_GROUP, 0.1, type=float,
        help="factor of the automatic learning rate (--lr 0) when starting from pretrained weights or "
             "a checkpoint: a modest rate keeps what the model knows (default: %(default)s)")
    edit_prob: float = _flag(
        TOOLKIT_GROUP, 0.9, type=float,
        help="copy_detection mode: probability of a random attack edit per view (default: %(default)s)")
    crop_scale: float = _flag(
        TOOLKIT_GROUP, 0.4, type=float,
        help="copy_detection mode: smallest area fraction of the random resized crop "
             "(default: %(default)s)")
    crop_prob: float = _flag(
        TOOLKIT_GROUP, 0.5, type=float,
        help="copy_detection mode: probability of the random resized crop; otherwise the whole view is "
             "resized to size x size, as images are at search time (default: %(default)s)")
    edit_families: list = _flag(
        TOOLKIT_GROUP, None, nargs="+",
        help="copy_detection mode: restrict the random edits to these families of "
             "data_retrieval.attacks.RANDOM_EDITS (and 'chain'); default: all")
    val_copies: int = _flag(
        TOOLKIT_GROUP, 10, type=int,
        help="edited copies generated per validation original (default: %(default)s)")
    val_every: int = _flag(
        TOOLKIT_GROUP, 1, type=int,
        help="validate every N epochs (default: %(default)s)")
    val_distractors: bool = _flag(
        TOOLKIT_GROUP, True, type=str2bool, metavar="{False,True}",
        help="add the training originals to the validation database as distractors "
             "(default: %(default)s)")
    image_side: int = _flag(
        TOOLKIT_GROUP, None, type=int,
        help="shorter side of the decoded images kept in memory (default: 1.5 x --size)")
    in_memory: str = _flag(
        TOOLKIT_GROUP, "auto", choices=["auto", "true", "false"],
        help="keep the decoded training images in memory (auto: up to 20000 images) "
             "(default: %(default)s)")
    keep_checkpoints: str = _flag(
        TOOLKIT_GROUP, "all", choices=["all", "best_last"],
        help="all: one checkpoint per epoch (the seed's; evaluate_finetuning.py plots every epoch); "
             "best_last: only the validation-best and the latest epochs are kept (saves disk: each "
             "file holds the weights and the optimizer state) (default: %(default)s)")
    max_minutes: float = _flag(
        TOOLKIT_GROUP, None, type=float,
        help="wall-clock limit of the training: no epoch is started that would end after it (the "
             "run then stops early, says so in best_epoch.json, and can be continued with --resume "
             "and a larger limit) (default: none)")
    log_every: int = _flag(
        TOOLKIT_GROUP, 10, type=int,
        help="TensorBoard logging interval in steps (default: %(default)s)")
    # the flags of helpers.cli (add_common_arguments, add_max_pixels_argument), which every script shares
    seed: int = 0
    device: str = "auto"
    force: bool = False
    log_level: str = "INFO"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "size", "gpus", "val_copies", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.size < 32:
            raise ValueError(f"--size must be >= 32 pixels, got {self.size}")
        if self.lr < 0 or self.weight_decay < 0 or self.momentum < 0 or self.workers < 0:
            raise ValueError("--lr, --weight_decay, --momentum and --workers must be >= 0")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.crop_scale <= 1 or not 0 <= self.edit_prob <= 1 or not 0 <= self.crop_prob <= 1:
            raise ValueError("--crop_scale must be in (0, 1], --edit_prob and --crop_prob in [0, 1]")
        if self.keep_checkpoints not in ("all", "best_last"):
            raise ValueError(f"--keep_checkpoints must be all or best_last, got {self.keep_checkpoints!r}")
        if self.l2sp_weight < 0 or self.distill_weight < 0:
            raise ValueError("--l2sp_weight and --distill_weight must be >= 0")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"--select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.in_memory not in ("auto", "true", "false"):
            raise ValueError(f"--in_memory must be auto, true or false, got {self.in_memory!r}")

    @property
    def loss_temperature(self):
        """``--temperature``, or the mode's default: 0.1 (SimCLR, the seed's) and 0.05 (copy detection, SSCD)."""
        if self.temperature is not None:
            return float(self.temperature)
        return 0.05 if self.mode == "copy_detection" else 0.1

    @property
    def koleo(self):
        """KoLeo weight: ``--koleo_weight``, or 10 in copy-detection mode and 0 otherwise."""
        if self.koleo_weight is not None:
            return float(self.koleo_weight)
        return 10.0 if self.mode == "copy_detection" else 0.0

    @property
    def bank_side(self):
        """Shorter side of the decoded training images kept in memory (1.5x the training size by default)."""
        return self.image_side or int(round(1.5 * self.size))

    def to_dict(self):
        return asdict(self)


def config_from_args(args):
    """A :class:`FinetuneConfig` from parsed flags (unknown attributes such as ``config`` are ignored)."""
    names = {f.name for f in fields(FinetuneConfig)}
    values = {key: value for key, value in vars(args).items() if key in names}
    return FinetuneConfig(**values)


def add_finetune_arguments(parser):
    """Add every fine-tuning flag (the seed's names first) to ``parser``, declared from :class:`FinetuneConfig`."""
    groups = {}
    for spec in fields(FinetuneConfig):
        if "flag" not in spec.metadata:
            continue  # a common flag of helpers.cli
        options = dict(spec.metadata["flag"])
        group = options.pop("group")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        if spec.default is MISSING:
            options["required"] = True
        else:
            options["default"] = spec.default
        groups[group].add_argument(f"--{spec.name}", **options)
    add_max_pixels_argument(groups[TOOLKIT_GROUP])
    return parser
