"""Feature extraction: perceptual hashes and neural embeddings, written to the feature store.

Public names (imported lazily, so ``import extractor`` stays cheap and the hashes do not pull in torch):

- models: :func:`build_model`, :class:`EmbeddingNet`, :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`pretrained_weights_file`, :func:`package_weights_file`, :func:`timm_pretrained_file`,
  :func:`sscd_weights_file`, :func:`positional_state`, :class:`WeightsUnavailableError` (:mod:`extractor.models`);
- registry: :func:`resolve_algorithm`, :func:`get_model_spec`, :func:`model_names`, :data:`SEED_MODELS`
  (:mod:`extractor.registry`);
- preprocessing: :class:`Preprocessing`, :class:`ImageTransform`, :func:`reference_transform`
  (:mod:`extractor.transforms`);
- extraction: :func:`extract_features` (:mod:`extractor.extract`, the orchestration; its parts are
  :mod:`extractor.loading` (DataLoader), :mod:`extractor.embedding` (running a model, :func:`embed_images`),
  :mod:`extractor.writer` (resumable store writing) and :mod:`extractor.merge` (torchrun shard merge));
- post-processing: :func:`l2_normalize`, :class:`PCA`, :class:`MultiLayerFeatures` (:mod:`extractor.postprocess`);
- hashes: :func:`get_hash_spec`, :func:`compute_hashes`, :func:`hash_images`, :class:`HashSpec`
  (:mod:`extractor.hashing`).
"""
import importlib

_EXPORTS = {
    "models": ("build_model", "EmbeddingNet", "save_checkpoint", "load_checkpoint", "WeightsUnavailableError",
               "CHECKPOINT_FORMAT", "pretrained_weights_file", "package_weights_file", "timm_pretrained_file",
               "sscd_weights_file", "positional_state"),
    "registry": ("resolve_algorithm", "get_model_spec", "model_names", "SEED_MODELS", "ModelSpec", "CheckpointSpec"),
    "transforms": ("Preprocessing", "ImageTransform", "reference_transform"),
    "extract": ("extract_features",),
    "embedding": ("embed_images",),
    "postprocess": ("l2_normalize", "PCA", "MultiLayerFeatures"),
    "hashing": ("get_hash_spec", "compute_hashes", "hash_images", "HashSpec"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'extractor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
