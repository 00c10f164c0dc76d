"""Image preprocessing of the neural models: one declarative :class:`Preprocessing` per registry entry.

Every model of the zoo carries its own preprocessing (as timm does), the seed's:

- ImageNet models: resize to 256x256 (LANCZOS), centre crop 224, ImageNet mean/std normalisation;
- Inception v3: resize to 299x299; EfficientNet B7: resize to 600x600 (LANCZOS, ImageNet normalisation);
- SimCLR models: resize the shorter side to 256 (LANCZOS), centre crop 224, inputs in [0, 1] (no normalisation);

and the published preprocessing of the models added since:

- EfficientNet-Lite (TF-lite release's scaling): the whole image resized to ``size x size`` (224 / 240 / 260,
  bilinear), ``(pixels - 127) / 128``;
- SSCD (its evaluation ``small_288``): shorter side 288 (bilinear), no crop, ImageNet mean/std; images keep their
  aspect ratio, so a batch may hold several sizes (the extractor runs each size as its own sub-batch);
- ``timm:`` models: timm's own evaluation transform of the model's pretrained config.

:func:`reference_transform` builds the torchvision ``Compose`` that defines the result. The extractor computes the
same pixels faster (:class:`ImageTransform`):

- the resize and the crop are PIL's (the same calls as torchvision's), then the pixels stay ``uint8``;
- a data-loader worker returns ``uint8`` HWC pixels (4x less to copy than float32); the division by 255 and the
  mean/std normalisation run on the model's device (:meth:`ImageTransform.finish`), with the same float32
  operations as ``ToTensor`` + ``Normalize``. The permuted HWC batch is already in ``channels_last`` layout.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

# torch is imported where tensors are made: the registry imports this module, and a process that only hashes or
# runs the ONNX export of a model (query.py, dedup.onnx_model) must not pay torch's import (seconds).

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF-lite release's (pixels - 127) / 128, written as the mean/std of pixels scaled to [0, 1].
TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3

_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def _pair(value):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise ValueError(f"expected an int or (height, width), got {value!r}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into model inputs.

    Parameters
    ----------
    resize : int or (height, width)
        An int resizes the *shorter side* to this length keeping the aspect ratio (torchvision ``Resize(int)``);
        a pair resizes to exactly ``(height, width)`` (``Resize((h, w))``, aspect ratio not kept).
    crop : int or (height, width), optional
        Centre crop after the resize (``CenterCrop``); ``None`` for no crop. A shorter-side resize without a crop
        (SSCD's) gives inputs of the images' own aspect ratios (:attr:`variable_size`).
    interpolation : {'lanczos', 'bicubic', 'bilinear', 'nearest'}
        PIL resampling filter of the resize.
    mean, std : tuple of 3 floats, optional
        Per-channel normalisation after scaling to [0, 1]; ``None`` keeps inputs in [0, 1] (SimCLR).
    """

    resize: object
    crop: object = None
    interpolation: str = "lanczos"
    mean: tuple = None
    std: tuple = None

    def __post_init__(self):
        if isinstance(self.resize, (list, tuple)):
            object.__setattr__(self, "resize", _pair(self.resize))
        elif not isinstance(self.resize, (int, np.integer)) or self.resize <= 0:
            raise ValueError(f"resize must be a positive int or (height, width), got {self.resize!r}")
        object.__setattr__(self, "crop", _pair(self.crop))
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_FILTERS)}, got {self.interpolation!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def variable_size(self):
        """True for a shorter-side resize without a crop: every aspect ratio gives its own input size."""
        return self.crop is None and not isinstance(self.resize, tuple)

    @property
    def input_size(self):
        """``(height, width)`` of the model input; for :attr:`variable_size` that of a square image."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else (self.resize, self.resize)

    def resized_size(self, width, height):
        """``(height, width)`` after the resize of a ``width x height`` image (torchvision's rounding)."""
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def description(self):
        """One line, e.g. ``'resize 256x256 lanczos, centre crop 224x224, ImageNet mean/std'``."""
        if isinstance(self.resize, tuple):
            parts = [f"resize {self.resize[0]}x{self.resize[1]} {self.interpolation}"]
        else:
            parts = [f"resize shorter side {self.resize} {self.interpolation}"]
        if self.crop is not None:
            parts.append(f"centre crop {self.crop[0]}x{self.crop[1]}")
        elif self.variable_size:
            parts.append("no crop (aspect ratio kept)")
        if self.mean is None:
            parts.append("inputs in [0, 1] (no normalisation)")
        elif self.mean == IMAGENET_MEAN and self.std == IMAGENET_STD:
            parts.append("ImageNet mean/std")
        elif self.mean == TFLITE_MEAN and self.std == TFLITE_STD:
            parts.append("(x - 127) / 128")
        else:
            parts.append(f"mean {list(self.mean)} std {list(self.std)}")
        return ", ".join(parts)

    def meta(self):
        """JSON-able description (stored in the feature store's ``meta.json`` and in checkpoints)."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else int(self.resize),
            "resize_mode": "exact" if isinstance(self.resize, tuple) else "shorter_side",
            "crop": list(self.crop) if self.crop is not None else None,
            "interpolation": self.interpolation,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "input_size": None if self.variable_size else list(self.input_size),
            "description": self.description(),
        }

    @classmethod
    def from_meta(cls, meta):
        """Inverse of :meth:`meta`."""
        return cls(resize=meta["resize"], crop=meta.get("crop"), interpolation=meta.get("interpolation", "lanczos"),
                   mean=meta.get("mean"), std=meta.get("std"))


def imagenet_preprocessing(resize=(256, 256), crop=224):
    """The seed's preprocessing of torchvision's ImageNet models."""
    return Preprocessing(resize=resize, crop=crop, interpolation="lanczos", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def simclr_preprocessing():
    """The seed's preprocessing of the SimCLR models: shorter side 256, centre crop 224, no normalisation."""
    return Preprocessing(resize=256, crop=224, interpolation="lanczos")


def tflite_preprocessing(size):
    """EfficientNet-Lite's preprocessing: the whole image resized to ``size x size`` (bilinear) and the TF-lite
    release's ``(pixels - 127) / 128``.

    The release's ImageNet evaluation keeps only the centre ``size / (size + 32)`` of the image; copy detection
    needs the whole picture (edits at the borders, crops, frames), as SSCD's ``skew`` preprocessing, so nothing is
    cut off here.
    """
    return Preprocessing(resize=(int(size), int(size)), crop=None, interpolation="bilinear", mean=TFLITE_MEAN,
                         std=TFLITE_STD)


def sscd_preprocessing(size=288):
    """SSCD's evaluation preprocessing (``small_288`` of its README): ``Resize(288)`` (torchvision's default
    bilinear), no crop, ImageNet mean/std."""
    return Preprocessing(resize=int(size), crop=None, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def timm_preprocessing(config, model_name="the model"):
    """timm's evaluation transform (:func:`timm.data.create_transform` with ``is_training=False``) of a data config
    (:func:`timm.data.resolve_model_data_config`), as a :class:`Preprocessing`.

    timm resizes the shorter side to ``floor(size / crop_pct)`` and centre-crops ``size`` (``crop_mode`` 'center'),
    or squashes the image to ``floor(size / crop_pct)`` squared before the crop ('squash').

    Raises
    ------
    ValueError
        For timm's 'border' mode and non-square centre crops (not supported here), or an unknown interpolation.
    """
    import math

    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    mode = config.get("crop_mode") or "center"
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"timm's interpolation {interpolation!r} of {model_name} is not supported "
                         f"({sorted(_PIL_FILTERS)})")
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode == "squash":
        resize = scale
    elif mode == "center" and scale[0] == scale[1] and height == width:
        resize = scale[0]
    else:
        raise ValueError(f"timm's crop_mode {mode!r} with input size {height}x{width} of {model_name} is not "
                         f"supported (only 'center' with square inputs and 'squash')")
    return Preprocessing(resize=resize, crop=(height, width), interpolation=interpolation,
                         mean=tuple(config["mean"]), std=tuple(config["std"]))


def reference_transform(pre):
    """The torchvision ``Compose`` that defines ``pre`` (PIL image -> float tensor ``[3, H, W]``).

    This is the seed's formulation; :class:`ImageTransform` computes the same values faster.
    """
    import torchvision.transforms as T

    modes = {"nearest": T.InterpolationMode.NEAREST, "bilinear": T.InterpolationMode.BILINEAR,
             "bicubic": T.InterpolationMode.BICUBIC, "lanczos": T.InterpolationMode.LANCZOS}
    size = list(pre.resize) if isinstance(pre.resize, tuple) else pre.resize
    steps = [T.Resize(size, interpolation=modes[pre.interpolation])]
    if pre.crop is not None:
        steps.append(T.CenterCrop(list(pre.crop)))
    steps.append(T.ToTensor())
    if pre.mean is not None:
        steps.append(T.Normalize(list(pre.mean), list(pre.std)))
    return T.Compose(steps)


class ImageTransform:
    """Fast, exact implementation of a :class:`Preprocessing`, split between CPU workers and the device.

    ``transform(image)`` gives the same float tensor ``[3, H, W]`` as :func:`reference_transform`. The extractor
    uses the two halves: :meth:`to_uint8` in the data-loader workers, :meth:`finish` on the model's device.
    """

    def __init__(self, preprocessing):
        self.preprocessing = preprocessing
        self._filter = _PIL_FILTERS[preprocessing.interpolation]
        self._stats = {}

    def __repr__(self):
        return f"ImageTransform({self.preprocessing.description()})"

    def __getstate__(self):
        # Data-loader workers started with 'spawn' receive a copy: without the cached (possibly CUDA) tensors.
        return {"preprocessing": self.preprocessing}

    def __setstate__(self, state):
        self.__init__(state["preprocessing"])

    def resize_crop(self, image):
        """The resized and centre-cropped PIL image (RGB)."""
        pre = self.preprocessing
        width, height = image.size
        new_h, new_w = pre.resized_size(width, height)
        if pre.crop is None:
            if (new_h, new_w) == (height, width):
                return image
            return image.resize((new_w, new_h), self._filter)
        resized = image if (new_h, new_w) == (height, width) else image.resize((new_w, new_h), self._filter)
        crop_h, crop_w = pre.crop
        if crop_h > new_h or crop_w > new_w:
            # The crop pads (torchvision fills with zeros); rare, so take the reference path.
            import torchvision.transforms.functional as F

            return F.center_crop(resized, [crop_h, crop_w])
        # PIL's resize(box=...) would compute only the kept pixels, but it passes the box as float32, which shifts
        # the filter taps and changes some pixels: the whole image is resized, then cropped, as the reference.
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        return resized.crop((left, top, left + crop_w, top + crop_h))

    def to_uint8(self, image):
        """``uint8`` tensor ``[H, W, 3]`` of the resized, cropped image (the CPU half)."""
        import torch

        if image.mode != "RGB":
            image = image.convert("RGB")
        return torch.from_numpy(np.array(self.resize_crop(image), dtype=np.uint8, copy=True))

    def _mean_std(self, device):
        import torch

        key = str(device)
        if key not in self._stats:
            pre = self.preprocessing
            self._stats[key] = (torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
                                torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        return self._stats[key]

    def finish(self, batch, device="cpu", channels_last=False, non_blocking=False):
        """Float32 model input ``[B, 3, H, W]`` from a ``uint8 [B, H, W, 3]`` batch (the device half).

        The result is in ``channels_last`` memory layout when ``channels_last`` (free: it is the layout of the
        permuted HWC batch), contiguous NCHW otherwise. The arithmetic is ``ToTensor`` + ``Normalize``'s.
        """
        import torch

        device = torch.device(device)
        x = batch.to(device, non_blocking=non_blocking).permute(0, 3, 1, 2)
        if not channels_last:
            x = x.contiguous()
        x = x.to(torch.float32).div_(255)
        if self.preprocessing.mean is not None:
            mean, std = self._mean_std(device)
            x.sub_(mean).div_(std)
        return x

    def __call__(self, image):
        """Float tensor ``[3, H, W]``, equal to ``reference_transform(preprocessing)(image)``."""
        return self.finish(self.to_uint8(image)[None])[0]
