"""The clustering plots (the seed's, in the toolkit's one style: :mod:`helpers.plotting`, PNG + PDF).

Experiment level (over the runs of one experiment, ground truth in red as "original"): cluster size evolution,
size violins, diameter violins, completeness vs homogeneity, metrics vs number of clusters. Run level: cluster
balance, size vs diameter, intersection-over-union heatmap against the ground truth. Also the dendrogram, the
k-selection curves and the t-SNE maps.
"""
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from scipy.optimize import linear_sum_assignment

from helpers.plotting import PALETTE, new_figure, save_figure

CLUSTER_COLOR = PALETTE[0]
TRUTH_COLOR = PALETTE[1]


def _sorted_desc(values):
    return -np.sort(-np.asarray(values))


def cluster_balance(sizes, path, title=None, n_outliers=0):
    """Bar plot of the cluster sizes (largest first, log scale) above a box plot of their distribution."""
    sizes = _sorted_desc(sizes)
    fig, (ax1, ax2) = new_figure(2, 1, figsize=(9, 5), gridspec_kw={"height_ratios": [3, 1]})
    ax1.bar(np.arange(sizes.size), sizes, width=1.0, color=CLUSTER_COLOR)
    ax1.set_yscale("log")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("Cluster (largest first)")
    ax1.set_ylabel("Images in the cluster")
    note = f", {n_outliers} outliers not shown" if n_outliers else ""
    ax1.set_title(title or f"{sizes.size} clusters{note}")
    ax2.boxplot(sizes, orientation="horizontal", widths=0.6)
    ax2.set_xscale("log")
    ax2.set_yticks([])
    ax2.set_xlabel("Cluster size (images)")
    fig.tight_layout()
    return save_figure(fig, path)


def size_diameter(sizes, diameters, metric, path, title=None):
    """Scatter of cluster diameter against cluster size."""
    fig, ax = new_figure()
    ax.scatter(sizes, diameters, s=12, alpha=0.7, color=CLUSTER_COLOR)
    ax.set_xscale("log")
    ax.set_xlabel("Cluster size (images)")
    ax.set_ylabel(f"Cluster diameter ({metric} distance)")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def order_iou(iou):
    """Rows and columns of an IoU matrix reordered so best-matching pairs (Hungarian) lie on the diagonal.

    Rows are ordered by decreasing matched IoU; unmatched rows and columns follow, by decreasing best IoU.
    """
    iou = np.asarray(iou)
    if iou.size == 0:
        return np.arange(iou.shape[0]), np.arange(iou.shape[1])
    rows, cols = linear_sum_assignment(iou, maximize=True)
    order = np.argsort(-iou[rows, cols], kind="stable")
    rows, cols = rows[order], cols[order]
    rest_r = np.setdiff1d(np.arange(iou.shape[0]), rows)
    rest_c = np.setdiff1d(np.arange(iou.shape[1]), cols)
    rest_r = rest_r[np.argsort(-iou[rest_r].max(axis=1), kind="stable")] if rest_r.size else rest_r
    rest_c = rest_c[np.argsort(-iou[:, rest_c].max(axis=0), kind="stable")] if rest_c.size else rest_c
    return np.concatenate([rows, rest_r]).astype(int), np.concatenate([cols, rest_c]).astype(int)


def iou_heatmap(iou, path, ylabel="Predicted clusters", xlabel="Ground-truth classes (templates)", title=None):
    """Heatmap of the intersection over union between two assignments, best matches on the diagonal."""
    rows, cols = order_iou(iou)
    matrix = np.asarray(iou)[rows][:, cols]
    fig, ax = new_figure(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="afmhot_r", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.grid(False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{xlabel} ({matrix.shape[1]})")
    ax.set_ylabel(f"{ylabel} ({matrix.shape[0]})")
    fig.colorbar(image, ax=ax, label="Intersection over union")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def size_evolution(runs, truth_sizes, path):
    """One bar plot of sorted cluster sizes per run (rows), the ground truth in red at the bottom.

    ``runs`` is a list of ``(label, sizes)``.
    """
    rows = len(runs) + 1
    fig, axes = new_figure(rows, 1, figsize=(9, 1.5 * rows + 1), sharex=True, sharey=True, squeeze=False)
    axes = axes[:, 0]
    for ax, (label, sizes) in zip(axes, runs):
        sizes = _sorted_desc(sizes)
        ax.bar(np.arange(sizes.size), sizes, width=1.0, color=CLUSTER_COLOR)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    truth = _sorted_desc(truth_sizes)
    axes[-1].bar(np.arange(truth.size), truth, width=1.0, color=TRUTH_COLOR)
    axes[-1].set_ylabel(f"original ({truth.size})", rotation=0, ha="right", va="center")
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("Cluster (largest first)")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Cluster sizes (images, log scale)")
    fig.tight_layout()
    return save_figure(fig, path)


def violins(runs, truth_values, ylabel, path, log=False, title=None):
    """Violins of a per-cluster value for each run (blue) and the ground truth (red)."""
    labels = [label for label, _ in runs] + ["original"]
    values = [np.asarray(v, dtype=np.float64) for _, v in runs] + [np.asarray(truth_values, dtype=np.float64)]
    values = [v[np.isfinite(v)] for v in values]
    if log:
        values = [np.log10(np.maximum(v, 1e-12)) for v in values]
    keep = [i for i, v in enumerate(values) if v.size]
    fig, ax = new_figure(figsize=(max(5.0, 0.9 * len(keep) + 2), 4.5))
    if keep:
        parts = ax.violinplot([values[i] if values[i].size > 1 else np.repeat(values[i], 2) for i in keep],
                              positions=np.arange(len(keep)), showmedians=True)
        for position, (body, i) in enumerate(zip(parts["bodies"], keep)):
            color = TRUTH_COLOR if i == len(values) - 1 else CLUSTER_COLOR
            body.set_facecolor(color)
            body.set_alpha(0.6)
            # A dot at the median, so that a group of equal values (no violin body) still shows its colour.
            ax.scatter([position], [np.median(values[i])], color=color, s=30, zorder=3)
        for key in ("cmedians", "cmins", "cmaxes", "cbars"):
            if key in parts:
                parts[key].set_color("0.35")
                parts[key].set_linewidth(1.0)
    ax.set_xticks(np.arange(len(keep)))
    ax.set_xticklabels([labels[i] for i in keep], rotation=30 if len(keep) > 6 else 0)
    ax.set_xlabel("Number of clusters")
    ax.set_ylabel(f"log10 {ylabel}" if log else ylabel)
    ax.legend(handles=[Patch(facecolor=CLUSTER_COLOR, label="Clustering"),
                       Patch(facecolor=TRUTH_COLOR, label="Original")], loc="best")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def completeness_homogeneity(scores, path, title=None):
    """Completeness against homogeneity over the runs (a precision-recall-like curve for clustering)."""
    points = sorted((s["homogeneity"], s["completeness"], s["n_clusters"]) for s in scores
                    if s.get("homogeneity") is not None)
    fig, ax = new_figure()
    if points:
        h, c, n = zip(*points)
        ax.plot(h, c, marker="o", color=CLUSTER_COLOR)
        for x, y, label in points:
            ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("Homogeneity")
    ax.set_ylabel("Completeness")
    ax.set_title(title or "Completeness vs homogeneity (labels: number of clusters)")
    return save_figure(fig, path)


METRIC_LABELS = {"homogeneity": "Homogeneity", "completeness": "Completeness", "v_measure": "V-measure",
                 "ari": "ARI", "ami": "AMI", "nmi": "NMI", "accuracy": "Accuracy (Hungarian)"}


def metrics_vs_clusters(scores, path, truth_clusters=None, title=None):
    """Every external score against the number of clusters."""
    scores = sorted((s for s in scores if s.get("v_measure") is not None), key=lambda s: s["n_clusters"])
    fig, ax = new_figure()
    x = [s["n_clusters"] for s in scores]
    for key, label in METRIC_LABELS.items():
        # NMI (arithmetic) equals the V-measure: dashed so that both stay visible.
        ax.plot(x, [s[key] for s in scores], marker="o", markersize=3, label=label,
                linestyle="--" if key == "nmi" else "-")
    if truth_clusters:
        ax.axvline(truth_clusters, color="gray", linestyle="--", linewidth=1, label="true number of classes")
    ax.set_xlabel("Number of clusters")
    ax.set_ylabel("Score")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="best", ncol=2)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def dendrogram(Z, linkage, metric, path, p=60):
    """Dendrogram truncated to its last ``p`` merges (leaf labels: number of images below)."""
    from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram

    fig, ax = new_figure(figsize=(10, 6))
    scipy_dendrogram(Z, truncate_mode="lastp", p=int(min(p, Z.shape[0] + 1)), ax=ax, show_contracted=True,
                     color_threshold=0, above_threshold_color=CLUSTER_COLOR, leaf_rotation=90, leaf_font_size=7)
    ax.set_xlabel("Images (in parentheses: number of images under a truncated branch)")
    ax.set_ylabel(f"Merge distance ({linkage} linkage, {metric})")
    ax.grid(False)
    return save_figure(fig, path)


def k_selection(curve, best_k, path):
    """Silhouette, Calinski-Harabasz, Davies-Bouldin and inertia against k, the chosen k marked."""
    fig, axes = new_figure(2, 2, figsize=(10, 6.5), sharex=True)
    panels = [("silhouette", "Silhouette (higher is better)"), ("calinski_harabasz", "Calinski-Harabasz (higher)"),
              ("davies_bouldin", "Davies-Bouldin (lower is better)"), ("inertia", "Inertia (elbow)")]
    for ax, (key, label) in zip(axes.ravel(), panels):
        ax.plot(curve["k"], curve[key], marker="o", markersize=3, color=CLUSTER_COLOR)
        ax.axvline(best_k, color=TRUTH_COLOR, linestyle="--", linewidth=1)
        ax.set_title(label)
    for ax in axes[-1]:
        ax.set_xlabel("k")
    fig.suptitle(f"Choice of k: {best_k} (largest silhouette)")
    fig.tight_layout()
    return save_figure(fig, path)


def _group_colors(labels, top=20):
    """Colours for the ``top`` largest groups (tab20), light gray for the others and for outliers."""
    import matplotlib

    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    largest = ids[np.argsort(-counts, kind="stable")[:top]]
    cmap = matplotlib.colormaps["tab20"]
    colors = np.tile(np.array([[0.82, 0.82, 0.82, 0.5]]), (labels.size, 1))
    for rank, cid in enumerate(largest):
        colors[labels == cid] = cmap(rank % 20)
    return colors, len(largest)


def tsne_map(coords, labels_true, labels_pred, path, title=None):
    """Two t-SNE panels: points coloured by ground-truth template and by predicted cluster."""
    fig, axes = new_figure(1, 2, figsize=(12, 5.8))
    for ax, labels, name in ((axes[0], labels_true, "ground truth"), (axes[1], labels_pred, "prediction")):
        colors, top = _group_colors(labels)
        order = np.argsort(colors[:, 3])  # gray (alpha 0.5) first, coloured points on top
        ax.scatter(coords[order, 0], coords[order, 1], c=colors[order], s=6, linewidths=0)
        groups = np.unique(np.asarray(labels)[np.asarray(labels) >= 0]).size
        ax.set_title(f"Coloured by {name}: {top} largest of {groups} groups, others gray")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
