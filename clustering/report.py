"""What ``--save True`` writes: cluster statistics, the seed's plots, montages per cluster, t-SNE maps and a
one-page HTML summary per experiment.

Per run folder: ``cluster_stats.npz`` (per-cluster arrays of :func:`clustering.metrics.cluster_statistics`),
``cluster_balance``, ``size_diameter`` and ``intersection_union`` plots (PNG + PDF), ``representatives/<id>.png``
(up to 10 random members) and ``extremes/<id>.png`` (the 5 members closest to the centroid, then the 5
farthest) for the largest clusters, and ``tsne.png`` with ``--tsne True``. Montage borders: green when the
image's template is the cluster's majority template, red otherwise.

Per experiment folder: ``sizes``, ``sizes_violin``, ``diameters_violin``, ``completeness_homogeneity`` and
``metrics`` plots, ``groundtruth/cluster_stats.npz`` (the statistics of the true classes, drawn in red as
"original"), and ``summary.html``.
"""
import html
import os
from pathlib import Path

import numpy as np

from helpers.log import get_logger
from helpers.image_io import DEFAULT_MAX_PIXELS
from helpers.montage import make_montage
from helpers.seeding import stable_seed

from . import layout, plots
from .metrics import GLOBAL_KEYS, PER_CLUSTER_KEYS, cluster_statistics, intersection_over_union

logger = get_logger(__name__)

TSNE_SAMPLE = 5000
MONTAGE_TILE = 160


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------

def save_statistics(path, stats):
    """Write the per-cluster arrays of a statistics dict as a plain ``.npz`` (no pickle)."""
    arrays = {key: np.asarray(stats[key]) for key in PER_CLUSTER_KEYS}
    if arrays["centroid"].dtype == np.float64:
        arrays["centroid"] = arrays["centroid"].astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_statistics(path):
    with np.load(path, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def global_statistics(stats):
    """The global values of a statistics dict, JSON-ready."""
    return {key: stats[key] for key in GLOBAL_KEYS}


def ground_truth_statistics(exp_dir, data, space, quantile=1.0):
    """Statistics of the ground-truth classes (cached in ``<exp_dir>/groundtruth/``)."""
    path = Path(exp_dir) / "groundtruth" / layout.STATS
    if path.is_file():
        return load_statistics(path)
    stats = cluster_statistics(data.features, data.labels_true, metric=space.metric, diameter_quantile=quantile,
                               nbits=data.dim if data.binary else None, space=space)
    save_statistics(path, stats)
    return load_statistics(path)


# --------------------------------------------------------------------------------------------------------------
# Montages
# --------------------------------------------------------------------------------------------------------------

def _caption(name, extra=None):
    stem = Path(name).stem
    stem = stem if len(stem) <= 24 else stem[:21] + "..."
    return stem if extra is None else f"{stem}\n{extra}"


def cluster_montages(run_dir, data, space, labels, stats, max_clusters=100, seed=0, max_pixels=DEFAULT_MAX_PIXELS):
    """Write ``representatives/<id>.png`` and ``extremes/<id>.png`` for the ``max_clusters`` largest clusters.

    ``max_clusters < 0`` means every cluster. Returns the ids of the clusters drawn, largest first.
    """
    run_dir = Path(run_dir)
    ids, sizes = np.asarray(stats["ids"]), np.asarray(stats["sizes"])
    order = np.argsort(-sizes, kind="stable")
    if max_clusters >= 0:
        order = order[:max_clusters]
    prepared, sq = space.transform(np.asarray(stats["centroid"]) if not space.binary
                                   else np.asarray(stats["centroid"], dtype=np.uint8))
    identities = np.asarray(data.identities)
    drawn = []
    for position in order:
        cid = int(ids[position])
        members = np.flatnonzero(labels == cid)
        if members.size == 0:
            continue
        values, counts = np.unique(identities[members], return_counts=True)
        majority = values[np.argmax(counts)]
        rng = np.random.default_rng(stable_seed(seed, run_dir.name, cid))
        chosen = np.sort(rng.choice(members, size=min(10, members.size), replace=False))
        items = [{"path": data.image_path(i), "caption": _caption(data.names[i]),
                  "border": "green" if identities[i] == majority else "red"} for i in chosen]
        target = run_dir / "representatives" / f"{cid}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        make_montage(items, tile=MONTAGE_TILE, columns=5, max_pixels=max_pixels).save(target)

        dist = space.to_points(prepared[position:position + 1], sq[position:position + 1], members)[0]
        # equal distances (constant for hashes) are ordered by a seeded random key, never by row order; a member
        # whose distance it shares with one left out of the montage is captioned "tied"
        order_keys = np.lexsort((rng.random(members.size), dist))
        ranked, rank_dist = members[order_keys], dist[order_keys]
        picks = list(range(ranked.size)) if ranked.size <= 10 else list(range(5)) + \
            list(range(ranked.size - 5, ranked.size))
        left_out = set(np.unique(rank_dist[[j for j in range(ranked.size) if j not in set(picks)]]).tolist())
        items = [{"path": data.image_path(ranked[j]),
                  "caption": _caption(data.names[ranked[j]], f"d={rank_dist[j]:.3g}"
                                      + (" tied" if rank_dist[j] in left_out else "")),
                  "border": "green" if identities[ranked[j]] == majority else "red"} for j in picks]
        target = run_dir / "extremes" / f"{cid}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        make_montage(items, tile=MONTAGE_TILE, columns=5, max_pixels=max_pixels).save(target)
        drawn.append(cid)
    return drawn


# --------------------------------------------------------------------------------------------------------------
# t-SNE
# --------------------------------------------------------------------------------------------------------------

def tsne_coordinates(exp_dir, space, seed=0, sample=TSNE_SAMPLE):
    """2-D t-SNE of a seeded sample of at most ``sample`` images (cached in ``<exp_dir>/tsne.npz``).

    Runs on the features as prepared for the metric (centred; unit vectors for cosine; 0/1 bits for hashes),
    after PCA to 50 dimensions when there are more.
    """
    path = Path(exp_dir) / "tsne.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            if int(arrays["n"]) == space.n:
                return arrays["indices"], arrays["coords"]
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(space.n, size=min(sample, space.n), replace=False))
    data = np.asarray(space.X[indices], dtype=np.float32)
    if data.shape[1] > 50 and data.shape[0] > 50:
        data = PCA(n_components=50, random_state=seed).fit_transform(data)
    perplexity = float(min(30.0, max(2.0, (indices.size - 1) / 3.0)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)
    np.savez(path, indices=indices, coords=coords.astype(np.float32), n=np.array(space.n))
    return indices, coords


# --------------------------------------------------------------------------------------------------------------
# Per run and per experiment
# --------------------------------------------------------------------------------------------------------------

def run_outputs(run_dir, data, space, labels, title, max_montages=100, tsne=None, seed=0, quantile=1.0,
                max_pixels=DEFAULT_MAX_PIXELS):
    """Statistics, plots and montages of one run; returns the global statistics (for ``scores.json``)."""
    run_dir = Path(run_dir)
    stats = cluster_statistics(data.features, labels, metric=space.metric, diameter_quantile=quantile,
                               nbits=data.dim if data.binary else None, space=space)
    save_statistics(run_dir / layout.STATS, stats)
    plots.cluster_balance(stats["sizes"], run_dir / "cluster_balance", title=title,
                          n_outliers=stats["n_outliers"])
    plots.size_diameter(stats["sizes"], stats["diameter"], space.metric, run_dir / "size_diameter", title=title)
    iou, _, _ = intersection_over_union(labels, data.labels_true)
    plots.iou_heatmap(iou, run_dir / "intersection_union", title=title)
    if max_montages:
        cluster_montages(run_dir, data, space, labels, stats, max_clusters=max_montages, seed=seed,
                         max_pixels=max_pixels)
    if tsne is not None:
        indices, coords = tsne
        plots.tsne_map(coords, data.labels_true[indices], labels[indices], run_dir / "tsne", title=title)
    return global_statistics(stats)


def _run_label(run_dir):
    return str(layout.run_clusters(run_dir))


def experiment_outputs(exp_dir, data, space, quantile=1.0):
    """The experiment-level plots over all finished runs (ground truth as "original")."""
    metric = space.metric
    exp_dir = Path(exp_dir)
    runs = layout.list_runs(exp_dir)
    with_stats = [r for r in runs if (r / layout.STATS).is_file()]
    if not runs:
        return
    truth = ground_truth_statistics(exp_dir, data, space, quantile=quantile)
    scores = [layout.load_scores(r) for r in runs]
    if with_stats:
        stats = [(_run_label(r), load_statistics(r / layout.STATS)) for r in reversed(with_stats)]
        plots.size_evolution([(label, s["sizes"]) for label, s in stats], truth["sizes"], exp_dir / "sizes")
        plots.violins([(label, s["sizes"]) for label, s in stats], truth["sizes"], "cluster size (images)",
                      exp_dir / "sizes_violin", log=True)
        plots.violins([(label, s["diameter"]) for label, s in stats], truth["diameter"],
                      f"cluster diameter ({metric} distance)", exp_dir / "diameters_violin")
    plots.completeness_homogeneity(scores, exp_dir / "completeness_homogeneity")
    plots.metrics_vs_clusters(scores, exp_dir / "metrics", truth_clusters=data.n_classes)


def _img(path, root, width=None):
    rel = os.path.relpath(path, root)
    style = f' style="max-width:{width}px"' if width else ""
    return f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}"{style} loading="lazy"></a>'


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return html.escape(str(value))


SUMMARY_COLUMNS = (("n_clusters", "clusters"), ("n_outliers", "outliers"), ("homogeneity", "h"),
                   ("completeness", "c"), ("v_measure", "V"), ("ari", "ARI"), ("ami", "AMI"), ("nmi", "NMI"),
                   ("accuracy", "acc."), ("sn_ratio1", "SN1"), ("sn_ratio2", "SN2"))


def write_summary(exp_dir, data, metric, method, extra_plots=(), gallery=6):
    """Write ``<exp_dir>/summary.html``: settings, a table of every run, all plots and the largest clusters."""
    exp_dir = Path(exp_dir)
    runs = layout.list_runs(exp_dir)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(exp_dir.name)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}"
        "img{max-width:560px;margin:4px;border:1px solid #ddd}.gallery img{max-width:420px}</style></head><body>",
        f"<h1>{html.escape(method)} clustering: {html.escape(data.algorithm)}</h1>",
        f"<p>Dataset <b>{html.escape(data.dataset)}</b>, partition <b>{html.escape(data.partition)}</b>: "
        f"{len(data)} images of {data.n_classes} ground-truth templates; metric <b>{html.escape(metric)}</b>. "
        f"Scores against the template identity of each image; outliers (-1) count as clusters of one. "
        f"SN1 = mean separation / mean dispersion, SN2 = mean centroid-to-centroid distance / mean dispersion "
        f"(see clustering.metrics.cluster_statistics).</p>",
        "<table><tr><th>run</th>" + "".join(f"<th>{label}</th>" for _, label in SUMMARY_COLUMNS) + "</tr>",
    ]
    for run in runs:
        scores = layout.load_scores(run)
        parts.append(f"<tr><td style='text-align:left'><a href='#{html.escape(run.name)}'>"
                     f"{html.escape(run.name)}</a></td>" +
                     "".join(f"<td>{_fmt(scores.get(key))}</td>" for key, _ in SUMMARY_COLUMNS) + "</tr>")
    parts.append("</table>")
    figures = [exp_dir / f"{name}.png" for name in ("metrics", "completeness_homogeneity", "sizes",
                                                    "sizes_violin", "diameters_violin")]
    figures += [exp_dir / f"{name}.png" for name in extra_plots]
    figures = [f for f in figures if f.is_file()]
    if figures:
        parts.append("<h2>Over the runs</h2><div>" + "".join(_img(f, exp_dir) for f in figures) + "</div>")
    for run in runs:
        parts.append(f"<h2 id='{html.escape(run.name)}'>{html.escape(run.name)}</h2>")
        run_figs = [run / f"{name}.png" for name in ("cluster_balance", "size_diameter", "intersection_union",
                                                     "tsne")]
        parts.append("<div>" + "".join(_img(f, exp_dir) for f in run_figs if f.is_file()) + "</div>")
        reps = sorted((run / "representatives").glob("*.png"), key=lambda p: int(p.stem))
        if reps:
            parts.append(f"<p>The {min(gallery, len(reps))} largest clusters: 10 random members (left) and the 5 "
                         f"closest + 5 farthest from the centroid (right); green border = the cluster's majority "
                         f"template. All {len(reps)} montages: <code>{html.escape(run.name)}/representatives/"
                         f"</code> and <code>extremes/</code>.</p><div class='gallery'>")
            for rep in reps[:gallery]:
                ext = run / "extremes" / rep.name
                parts.append(f"<p>cluster {html.escape(rep.stem)}<br>{_img(rep, exp_dir)}"
                             f"{_img(ext, exp_dir) if ext.is_file() else ''}</p>")
            parts.append("</div>")
    parts.append("</body></html>")
    path = exp_dir / "summary.html"
    tmp = path.with_name(".summary.html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
