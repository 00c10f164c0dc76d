"""Evaluate a fine-tuning run epoch by epoch against its starting model (``evaluate_finetuning.py``).

For the starting model and every checkpoint, the images of a dataset are embedded (whole images resized to the
training size), grouped into clusters by ground-truth identity (an original with its attacked copies, a meme
template with its memes: :func:`evaluation_groups`, from the ground-truth files), and measured with the seed's cluster statistics
(:func:`clustering.metrics.cluster_statistics`: diameters, minimum centroid-to-outside distance, mean
centroid-to-inside distance, centroid-to-centroid distances) and the seed's two signal-to-noise ratios per cluster
(:func:`clustering.metrics.signal_to_noise_per_cluster`: diameter / separation, dispersion / mean distance to the
other centroids; lower is better), shown as violins as the seed does. Two global ratios (means first, separation
and centroid spacing over dispersion: higher is better) are kept beside them as one number per model. When the
dataset holds originals and attacked copies, every copy is also searched among the originals: recall@1 per epoch.

Outputs in ``--out``: ``finetuning_evaluation.json``, a violin plot per cluster statistic and per ratio
(``violin_<stat>``, ``violin_diameter_over_separation``, ``violin_dispersion_over_spacing``), the global ratios per
epoch (``ratios_per_epoch``) and recall@1 per epoch (``recall_per_epoch``), PNG and PDF; the descriptors of each
model are kept in ``features/`` (feature-store format) so an interrupted run resumes.
"""
import re
from pathlib import Path

import numpy as np
import torch

from helpers.datasets import resolve_dataset
from helpers.feature_store import FeatureStoreError, load_features, save_features
from helpers.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, SkipReport, load_image
from helpers.log import get_logger
from helpers.paths import slugify
from helpers.plotting import new_figure, save_figure

from .augment import eval_resize
from .config import FinetuneConfig
from .models import TrainingModel, build_networks, load_descriptor_net, read_checkpoint

logger = get_logger(__name__)

PER_CLUSTER = {"diameter": "cluster diameter", "min_distance_outside": "min distance centroid -> outside",
               "mean_distance_inside": "mean distance centroid -> inside",
               "centroid_to_centroid": "mean distance centroid -> other centroids"}
#: The seed's signal-to-noise ratios, one value per cluster (lower = better).
PER_CLUSTER_RATIOS = {"diameter_over_separation": "ratio 1 per cluster: diameter / min distance centroid -> outside",
                      "dispersion_over_spacing": "ratio 2 per cluster: mean distance centroid -> inside / "
                                                 "mean distance to other centroids"}
GLOBAL = {"sn_ratio1": "global ratio 1: separation / dispersion",
          "sn_ratio2": "global ratio 2: centroid spacing / dispersion",
          "mean_centroid_to_centroid": "mean centroid-to-centroid distance"}
_EPOCH = re.compile(r"epoch_(\d+)\.pth$")


def expand_checkpoints(paths):
    """``[(epoch, path)]`` sorted by epoch: files as given, folders expanded to their ``epoch_<n>.pth`` files.

    The epoch comes from the file name, else from the checkpoint's ``epoch`` entry.
    """
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            files = [p for p in path.iterdir() if _EPOCH.search(p.name)]
            if not files:
                raise FileNotFoundError(f"no epoch_<n>.pth checkpoints in {path}")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"checkpoint not found: {path}")
        for file in files:
            match = _EPOCH.search(file.name)
            epoch = int(match.group(1)) if match else int(read_checkpoint(file).get("epoch", len(found) + 1))
            found.append((epoch, file))
    epochs = [epoch for epoch, _ in found]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"several checkpoints for the same epoch: {sorted(epochs)}; evaluate one run at a time")
    return sorted(found)


def load_pixels(datasets, size, report=None, sources=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Names and ``uint8 [N, size, size, 3]`` pixels of every readable image of ``datasets`` (decoded once);
    ``sources``, a list when given, receives the index of each image's dataset."""
    report = report if report is not None else SkipReport()
    names, pixels = [], []
    for position, dataset in enumerate(datasets):
        for path in resolve_dataset(dataset).image_paths(report=report):
            try:
                image = load_image(path, max_pixels)
            except ImageLoadError as exc:
                report.add(path, str(exc))
                continue
            names.append(str(path))
            if sources is not None:
                sources.append(position)
            pixels.append(np.asarray(eval_resize(image, size), dtype=np.uint8))
    if report:
        report.warn(logger)
    if not names:
        raise ValueError(f"no readable images in {', '.join(map(str, datasets))}")
    return names, np.stack(pixels)


@torch.no_grad()
def embed_pixels(model, pixels, batch_size=128, device="cpu"):
    """Descriptors ``float32 [N, d]`` of ``uint8 [N, H, W, 3]`` images by a :class:`TrainingModel`."""
    model = model.to(device).eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size])).to(device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255)
        chunks.append(model.descriptor(batch).float().cpu())
    return torch.cat(chunks).numpy()


def evaluation_groups(datasets, names, sources):
    """The ground-truth group of each image and whether it is a query, from the datasets' ground-truth files.

    Copy mode, when a dataset has a ground truth (``ground_truth.csv``, :mod:`helpers.ground_truth`): each query
    belongs to the group of its reference (a path relative to the reference dataset), each image of the other
    datasets to its own group. Label mode otherwise: the ``labels.csv`` class of each image (derived once from
    the folders or file names when missing, :func:`helpers.ground_truth.dataset_labels`); an image is a query
    when it is not its class's own template (its file stem differs from its label).

    Returns
    -------
    groups : list of str
    is_query : bool array
    """
    from helpers.datasets import resolve_store_dataset
    from helpers.ground_truth import dataset_labels, find_ground_truth, match_queries, read_ground_truth

    resolved = [resolve_store_dataset(dataset) for dataset in datasets]
    sources = np.asarray(sources)
    members = [[names[i] for i in np.flatnonzero(sources == d)] for d in range(len(resolved))]
    truths = [find_ground_truth(ds.folders, None, ds.ground_truth) for ds in resolved]
    groups, is_query = [None] * len(names), np.zeros(len(names), dtype=bool)
    if any(truths):
        references = [k for d, ds in enumerate(resolved) if not truths[d] for k in ds.relative_names(members[d])]
        for d, ds in enumerate(resolved):
            rows = np.flatnonzero(sources == d)
            keys = ds.relative_names(members[d])
            if truths[d]:
                refs, _ = match_queries(read_ground_truth(truths[d]), keys, references)
                for row, ref, key in zip(rows, refs, keys):
                    groups[row] = ref if ref is not None else f"negative:{ds.store_key}:{key}"
                    is_query[row] = True
            else:
                for row, key in zip(rows, keys):
                    groups[row] = key
        return groups, is_query
    for d, ds in enumerate(resolved):
        rows = np.flatnonzero(sources == d)
        for row, label in zip(rows, dataset_labels(ds, members[d])):
            groups[row] = label
            is_query[row] = Path(names[row]).stem != label
    return groups, is_query


def cluster_labels(groups, min_size=2):
    """Integer cluster id per image from its group (:func:`evaluation_groups`); groups with fewer than
    ``min_size`` images get -1."""
    identities = np.asarray(groups)
    uniques, codes, counts = np.unique(identities, return_inverse=True, return_counts=True)
    labels = codes.astype(np.int64)
    labels[counts[codes] < min_size] = -1
    return labels


def starting_model(payload):
    """The exact starting model of a run, rebuilt from a checkpoint's ``training_config`` (same seed, same
    weights source: random, pretrained or the checkpoint it started from)."""
    saved = dict(payload.get("training_config") or {})
    if not saved:
        raise ValueError("the checkpoint has no training_config; give the starting model with --baseline NAME")
    allowed = set(FinetuneConfig.__dataclass_fields__)
    config = FinetuneConfig(**{key: value for key, value in saved.items() if key in allowed})
    net, _, info = build_networks(config)
    return TrainingModel(net), info


def baseline_model(name, weights="random", seed=0, pooling="avg"):
    """A registry model (``'ResNet18 1x'``...) as :class:`TrainingModel`, or a checkpoint file."""
    if Path(str(name)).is_file():
        net, _ = load_descriptor_net(name)
        return TrainingModel(net)
    from extractor.models import EmbeddingNet

    return TrainingModel(EmbeddingNet(name, pooling=pooling, weights=weights, seed=seed))


def _features(model, slug, pixels, names, folder, device):
    """Embed (or reuse the stored descriptors of an interrupted run)."""
    store = Path(folder) / "features" / slug
    try:
        stored = load_features(store, mmap=False)
        if list(stored.names) == list(names):
            return np.asarray(stored.features)
    except FeatureStoreError:
        pass
    features = embed_pixels(model, pixels, device=device)
    save_features(store, features.astype(np.float32), names, {"name": slug, "binary": False}, overwrite=True)
    return features


def evaluate_model(features, groups, is_query, labels, metric="cosine"):
    """Cluster statistics (and retrieval metrics of the queries against the other images, when there are
    queries) of one model's descriptors."""
    from clustering.metrics import cluster_statistics, signal_to_noise_per_cluster

    stats = cluster_statistics(features, labels, metric=metric)
    out = {"per_cluster": {key: np.asarray(stats[key], dtype=float) for key in PER_CLUSTER},
           "per_cluster_ratios": signal_to_noise_per_cluster(stats),
           **{key: stats[key] for key in GLOBAL}, "n_clusters": stats["n_clusters"]}
    is_query = np.asarray(is_query, dtype=bool)
    if is_query.any() and (~is_query).any():
        from fast_search.evaluate import retrieval_metrics

        db, queries = np.flatnonzero(~is_query), np.flatnonzero(is_query)
        metrics = retrieval_metrics(features[db], [groups[i] for i in db], features[queries],
                                    [groups[i] for i in queries], metric=metric, ks=(1, 5, 10))
        out.update({key: metrics[key] for key in ("recall@1", "recall@5", "recall@10", "muap") if key in metrics})
    return out


def _summary(values):
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "median": None, "q1": None, "q3": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "q1": float(np.quantile(values, 0.25)), "q3": float(np.quantile(values, 0.75))}


def plot_violins(results, out):
    """One violin per model (starting model first) for each per-cluster statistic and each per-cluster ratio."""
    written = []
    labels = [r["label"] for r in results]
    panels = [("per_cluster", key, title, "distance") for key, title in PER_CLUSTER.items()]
    panels += [("per_cluster_ratios", key, title, "ratio (lower = better)")
               for key, title in PER_CLUSTER_RATIOS.items()]
    for group, key, title, ylabel in panels:
        data = [r[group][key][np.isfinite(r[group][key])] for r in results]
        if not any(len(d) for d in data):
            continue
        fig, ax = new_figure(figsize=(max(6.0, 0.7 * len(results) + 2), 4.5))
        positions = [i for i, d in enumerate(data) if len(d)]
        parts = ax.violinplot([data[i] for i in positions], positions=positions, showmedians=True)
        if positions and positions[0] == 0:
            parts["bodies"][0].set_facecolor("#D55E00")          # the starting model stands out
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        written += save_figure(fig, Path(out) / f"violin_{key}")
    return written


def plot_per_epoch(results, out, keys, name, ylabel):
    """Values of ``keys`` per epoch, the starting model as a dashed line."""
    base, epochs = results[0], results[1:]
    if not epochs or not any(key in base for key in keys):
        return []
    fig, ax = new_figure()
    x = [r["epoch"] for r in epochs]
    for index, key in enumerate(k for k in keys if k in base):
        color = f"C{index}"
        ax.plot(x, [r.get(key) for r in epochs], marker="o", color=color, label=f"{key} (fine-tuned)")
        ax.axhline(base[key], color=color, linestyle="--", label=f"{key} ({base['label']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    return save_figure(fig, Path(out) / name)


def evaluate_finetuning(checkpoints, datasets, out, baseline=None, baseline_weights="random", seed=0, size=None,
                        metric="cosine", min_cluster_size=2, device="cpu", max_pixels=DEFAULT_MAX_PIXELS):
    """Evaluate every checkpoint and the starting model; write the JSON and the plots into ``out``.

    Returns
    -------
    dict
        ``models``: one entry per model (starting model first) with its global cluster values, per-cluster
        summaries and retrieval metrics; ``size``, ``metric``, ``n_images``, ``n_clusters``.
    """
    from helpers.results import write_json

    checkpoints = expand_checkpoints(checkpoints)
    if not checkpoints:
        raise ValueError("no checkpoints given")
    first = read_checkpoint(checkpoints[0][1])
    if size is None:
        size = int((first.get("training_config") or {}).get("size") or 224)
    if baseline:
        start, start_label = baseline_model(baseline, baseline_weights, seed), f"start: {baseline}"
    else:
        start, info = starting_model(first)
        start_label = f"start ({info['start']})"
    report = SkipReport()
    sources = []
    try:
        names, pixels = load_pixels(datasets, size, report=report, sources=sources, max_pixels=max_pixels)
    finally:
        report.write(out)  # the files left out, with their reasons
    groups, is_query = evaluation_groups(datasets, names, sources)
    labels = cluster_labels(groups, min_cluster_size)
    if (labels >= 0).sum() == 0:
        raise ValueError(f"no group has {min_cluster_size} or more images; clusters need originals with their "
                         f"copies (a ground_truth.csv) or classes (a labels.csv)")
    logger.info("evaluating %d checkpoints + the starting model on %d images (%d clusters), size %d",
                len(checkpoints), len(names), len(set(labels[labels >= 0])), size)
    models = [("start", None, start_label, start)]
    for epoch, path in checkpoints:
        models.append((f"epoch_{epoch}", epoch, f"epoch {epoch}", None))
    results = []
    for slug, epoch, label, model in models:
        if model is None:
            net, _ = load_descriptor_net(dict(checkpoints)[epoch])
            model = TrainingModel(net)
        features = _features(model, slugify(slug), pixels, names, out, device)
        result = evaluate_model(features, groups, is_query, labels, metric)
        result.update(label=label, epoch=epoch,
                      checkpoint=None if epoch is None else str(dict(checkpoints)[epoch]))
        results.append(result)
        shown = f", recall@1 {result['recall@1']:.4f}" if "recall@1" in result else ""
        ratios = {key: _summary(values)["median"] for key, values in result["per_cluster_ratios"].items()}
        logger.info("%s: median diameter/separation %s, median dispersion/spacing %s (per cluster); global ratio1 "
                    "%.3f, ratio2 %.3f%s", label, ratios["diameter_over_separation"],
                    ratios["dispersion_over_spacing"], result["sn_ratio1"], result["sn_ratio2"], shown)
    plots = plot_violins(results, out)
    plots += plot_per_epoch(results, out, ["sn_ratio1", "sn_ratio2"], "ratios_per_epoch", "ratio")
    plots += plot_per_epoch(results, out, ["recall@1"], "recall_per_epoch", "recall@1")
    summary = {"size": size, "metric": metric, "n_images": len(names), "datasets": [str(d) for d in datasets],
               "n_clusters": int(len(set(labels[labels >= 0]))), "min_cluster_size": min_cluster_size,
               "models": [{**{k: v for k, v in r.items() if k not in ("per_cluster", "per_cluster_ratios")},
                           "per_cluster": {k: _summary(v) for k, v in r["per_cluster"].items()},
                           "per_cluster_ratios": {k: _summary(v) for k, v in r["per_cluster_ratios"].items()}}
                          for r in results],
               "plots": [str(p) for p in plots]}
    with_recall = [r for r in results[1:] if "recall@1" in r]
    if with_recall:
        best = max(with_recall, key=lambda r: r["recall@1"])
        summary["best_epoch"] = {"epoch": best["epoch"], "recall@1": best["recall@1"],
                                 "start_recall@1": results[0].get("recall@1")}
    write_json(Path(out) / "finetuning_evaluation.json", summary)
    return summary
