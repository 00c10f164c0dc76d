"""The fine-tuning configuration: every flag of ``finetune.py``, with the seed's names and defaults.

:func:`add_finetune_arguments` is the single definition of the flags (``finetune.py`` and the benchmark use it);
:class:`FinetuneConfig` is the resolved configuration the trainer runs (built from the parsed flags by
:func:`config_from_args`, or directly in Python and tests).
"""
from dataclasses import asdict, dataclass, field, fields

from helpers.cli import add_max_pixels_argument, str2bool
from helpers.image_io import DEFAULT_MAX_PIXELS

from .models import MODES

OPTIMIZERS = ("lars", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
SELECT_METRICS = ("recall@1", "muap")


@dataclass
class FinetuneConfig:
    """Resolved fine-tuning configuration (see ``finetune.py -h`` for the meaning of each field)."""

    train_dataset: str
    log_dir: str
    model: str = "original"
    arch_depth: int = 50
    arch_width: int = 2
    arch_sk: float = 0.0625
    val_dataset: str = None
    size: int = 224
    jitter: float = 1.0
    optimizer: str = "lars"
    lr: float = 0.0
    epochs: int = 100
    batch_size: int = 64
    temperature: float = None
    weight_decay: float = 1e-6
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: bool = True
    gpus: int = 1
    workers: int = 4
    backbone: str = None
    resume: bool = False
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    force: bool = False
    mode: str = "simclr"
    pooling: str = None
    gem_p: float = 3.0
    embedding_dim: int = None
    head_layers: int = 3
    head_dim: int = 128
    koleo_weight: float = None
    margin: float = 0.2
    freeze_backbone: bool = False
    freeze_bn: bool = False
    l2sp_weight: float = 0.0
    distill_weight: float = 0.0
    select_metric: str = "recall@1"
    warmup_epochs: float = None
    pretrained_lr_scale: float = 0.1
    edit_prob: float = 0.9
    crop_scale: float = 0.4
    crop_prob: float = 0.5
    edit_families: list = field(default_factory=lambda: None)
    val_copies: int = 10
    val_every: int = 1
    val_distractors: bool = True
    image_side: int = None
    in_memory: str = "auto"
    log_every: int = 10
    keep_checkpoints: str = "all"
    max_minutes: float = None
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
    """Add every fine-tuning flag (the seed's names first) to ``parser``."""
    seed = parser.add_argument_group("the seed's flags")
    seed.add_argument("--train_dataset", required=True, nargs="+",
                      help="training images: folders (read recursively) or registered dataset names")
    seed.add_argument("--log_dir", required=True,
                      help="experiment folder: config.yml, experiment.yml, TensorBoard events (one sub-folder per "
                           "run), best_epoch.json; checkpoints go to <log_dir>_models/<timestamp>/epoch_<n>.pth")
    seed.add_argument("--model", default="original",
                      help="starting weights: 'original' (= 'pretrained': the converted SimCLR v2 checkpoint of "
                           "--arch_*, or the backbone's pretrained weights), 'random', or PATH to a fine-tuning "
                           "checkpoint (default: %(default)s)")
    seed.add_argument("--arch_depth", type=int, default=50, choices=[50, 101, 152],
                      help="SimCLR v2 depth when no --backbone is given (default: %(default)s)")
    seed.add_argument("--arch_width", type=int, default=2, choices=[1, 2, 3],
                      help="SimCLR v2 width multiplier (default: %(default)s)")
    seed.add_argument("--arch_sk", type=float, default=0.0625,
                      help="SimCLR v2 selective-kernel ratio: 0.0625 (sk1) or 0 (sk0) (default: %(default)s)")
    seed.add_argument("--val_dataset", default=None,
                      help="validation images, disjoint from the training ones: originals (+ attacked copies "
                           "<id>_<attack>.<ext>; --val_copies random edits per original are generated when there "
                           "are none). recall@1 is computed every --val_every epochs and the best epoch recorded")
    seed.add_argument("--size", type=int, default=224, help="training and validation image size (default: %(default)s)")
    seed.add_argument("--jitter", type=float, default=1.0,
                      help="colour-jitter strength s: brightness/contrast/saturation 0.8*s, hue 0.2*s "
                           "(default: %(default)s)")
    seed.add_argument("--optimizer", default="lars", choices=OPTIMIZERS, help="(default: %(default)s)")
    seed.add_argument("--lr", type=float, default=0.0,
                      help="base learning rate; 0 = automatic: LARS 0.075*sqrt(global batch) (SimCLR's square-root "
                           "rule), Adam 1e-3*sqrt(global batch/256); times --pretrained_lr_scale when starting from "
                           "pretrained weights or a checkpoint (default: %(default)s)")
    seed.add_argument("--epochs", type=int, default=100, help="(default: %(default)s)")
    seed.add_argument("--batch_size", type=int, default=64,
                      help="images per process (GPU); the global batch is batch_size x processes "
                           "(default: %(default)s)")
    seed.add_argument("--temperature", type=float, default=None,
                      help="NT-Xent temperature (default: 0.1 in simclr mode, 0.05 in copy_detection mode)")
    seed.add_argument("--weight_decay", type=float, default=1e-6,
                      help="weight decay (not applied to biases and batch-norm parameters) (default: %(default)s)")
    seed.add_argument("--momentum", type=float, default=0.9, help="LARS momentum (default: %(default)s)")
    seed.add_argument("--nesterov", type=str2bool, default=False, metavar="{False,True}",
                      help="Nesterov momentum for LARS (default: %(default)s)")
    seed.add_argument("--scheduler", type=str2bool, default=True, metavar="{False,True}",
                      help="linear warm-up then cosine decay of the learning rate (default: %(default)s)")
    seed.add_argument("--gpus", type=int, default=1,
                      help="processes to start on this machine (one per GPU; CPU processes with --device cpu). "
                           "Under torchrun (multi-GPU, multi-node) the launcher's world size is used instead "
                           "(default: %(default)s)")
    seed.add_argument("--workers", type=int, default=4, help="data-loader workers per process (default: %(default)s)")

    more = parser.add_argument_group("toolkit flags")
    more.add_argument("--mode", default="simclr", choices=MODES,
                      help="simclr: the seed's SimCLR fine-tuning (projection head, SimCLR augmentations); "
                           "copy_detection: SSCD-like (loss on the searched GeM descriptor, augmentations that match "
                           "the attacks, KoLeo regulariser, low temperature); triplet: seed 004's triplet loss "
                           "(default: %(default)s)")
    more.add_argument("--backbone", default=None,
                      help="any extractor registry model ('ResNet18 1x', 'ResNet50 1x', 'SimCLR v2 ResNet50 2x'...) "
                           "or 'siamese' (triplet mode's small CNN); default: SimCLR v2 from --arch_*")
    more.add_argument("--resume", action="store_true",
                      help="continue the latest run of --log_dir from its last checkpoint (weights, optimizer, "
                           "scheduler, epoch, random state)")
    more.add_argument("--precision", default="fp32", choices=PRECISIONS,
                      help="fp32, or mixed precision: bf16 (CPU or GPU) or fp16 (GPU, with loss scaling) "
                           "(default: %(default)s)")
    more.add_argument("--pooling", default=None, choices=["avg", "gem"],
                      help="descriptor pooling (default: gem in copy_detection mode, avg otherwise)")
    more.add_argument("--gem_p", type=float, default=3.0, help="initial GeM exponent (default: %(default)s)")
    more.add_argument("--embedding_dim", type=int, default=None,
                      help="linear projection of the descriptor to this size (default: none; 128 in triplet mode)")
    more.add_argument("--head_layers", type=int, default=3,
                      help="layers of the SimCLR projection head (simclr mode) (default: %(default)s)")
    more.add_argument("--head_dim", type=int, default=128,
                      help="output size of the SimCLR projection head (default: %(default)s)")
    more.add_argument("--koleo_weight", type=float, default=None,
                      help="weight of the KoLeo entropy regulariser (default: 10 in copy_detection mode, 0 otherwise)")
    more.add_argument("--margin", type=float, default=0.2, help="triplet margin (default: %(default)s)")
    more.add_argument("--freeze_backbone", action="store_true",
                      help="train only the pooling/projection (triplet mode's frozen ResNet)")
    more.add_argument("--freeze_bn", action="store_true",
                      help="keep the batch-norm layers in evaluation mode: the starting model's running statistics "
                           "are used and kept (small, heavily edited batches would overwrite a pretrained model's); "
                           "their scale and shift still train")
    more.add_argument("--l2sp_weight", type=float, default=0.0,
                      help="L2-SP regulariser toward the start: alpha/2 * sum ||w - w0||^2 over the trained "
                           "network's parameters (Li et al. 2018); 0 = off (default: %(default)s)")
    more.add_argument("--distill_weight", type=float, default=0.0,
                      help="feature distillation toward the start: beta * mean ||n(f(x)) - n(f0(x))||^2 between the "
                           "L2-normalised descriptors of every training view by the trained and the frozen starting "
                           "network; 0 = off (default: %(default)s)")
    more.add_argument("--select_metric", default="recall@1", choices=SELECT_METRICS,
                      help="validation metric that picks the best epoch: recall@1 or muap (micro-average precision, "
                           "finer-grained when recall@1 saturates) (default: %(default)s)")
    more.add_argument("--warmup_epochs", type=float, default=None,
                      help="epochs of linear warm-up (default: 10%% of --epochs)")
    more.add_argument("--pretrained_lr_scale", type=float, default=0.1,
                      help="factor of the automatic learning rate (--lr 0) when starting from pretrained weights or "
                           "a checkpoint: a modest rate keeps what the model knows (default: %(default)s)")
    more.add_argument("--edit_prob", type=float, default=0.9,
                      help="copy_detection mode: probability of a random attack edit per view (default: %(default)s)")
    more.add_argument("--crop_scale", type=float, default=0.4,
                      help="copy_detection mode: smallest area fraction of the random resized crop "
                           "(default: %(default)s)")
    more.add_argument("--crop_prob", type=float, default=0.5,
                      help="copy_detection mode: probability of the random resized crop; otherwise the whole view is "
                           "resized to size x size, as images are at search time (default: %(default)s)")
    more.add_argument("--edit_families", nargs="+", default=None,
                      help="copy_detection mode: restrict the random edits to these families of "
                           "data_retrieval.attacks.RANDOM_EDITS (and 'chain'); default: all")
    more.add_argument("--val_copies", type=int, default=10,
                      help="edited copies generated per validation original (default: %(default)s)")
    more.add_argument("--val_every", type=int, default=1, help="validate every N epochs (default: %(default)s)")
    more.add_argument("--val_distractors", type=str2bool, default=True, metavar="{False,True}",
                      help="add the training originals to the validation database as distractors "
                           "(default: %(default)s)")
    more.add_argument("--image_side", type=int, default=None,
                      help="shorter side of the decoded images kept in memory (default: 1.5 x --size)")
    more.add_argument("--in_memory", default="auto", choices=["auto", "true", "false"],
                      help="keep the decoded training images in memory (auto: up to 20000 images) "
                           "(default: %(default)s)")
    more.add_argument("--keep_checkpoints", default="all", choices=["all", "best_last"],
                      help="all: one checkpoint per epoch (the seed's; evaluate_finetuning.py plots every epoch); "
                           "best_last: only the validation-best and the latest epochs are kept (saves disk: each "
                           "file holds the weights and the optimizer state) (default: %(default)s)")
    more.add_argument("--max_minutes", type=float, default=None,
                      help="wall-clock limit of the training: no epoch is started that would end after it (the "
                           "run then stops early, says so in best_epoch.json, and can be continued with --resume "
                           "and a larger limit) (default: none)")
    more.add_argument("--log_every", type=int, default=10,
                      help="TensorBoard logging interval in steps (default: %(default)s)")
    add_max_pixels_argument(more)
    return parser
