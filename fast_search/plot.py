"""Plots of search experiments (``process.py``), in the toolkit's one style (:mod:`helpers.plotting`).

The seed's three plots keep their names: :func:`time_recall_plot_flat` (search time vs recall@k of Flat
indexes), :func:`time_recall_plot_flat_sweep_k` (the same over a k sweep, each point annotated with its k) and
:func:`time_recall_plot_IVF` (IVF/HNSW curves over their sweep against Flat points, optional log y). Added:
:func:`per_attack_recall_plot`, :func:`precision_recall_plot`, and the seed's recall-vs-k and time-vs-k figures
(:func:`recall_k_plot`, :func:`time_k_plot`). :func:`plot_experiment` makes the ones that fit
an experiment.
"""
from pathlib import Path

import numpy as np

from helpers.paths import slugify
from helpers.plotting import PALETTE, new_figure, save_figure

from .experiment import run_points, sections

MARKERS = {"cosine": "*", "L2": "o", "L1": "x", "JS": "s", "hamming": "*", "crop_resistant": "D"}


def _runs(results):
    """Yield ``(label, algorithm, factory, metric, run, points)`` for every run."""
    for algorithm, section in sections(results).items():
        for key, run in section.get("runs", {}).items():
            factory, _, metric = key.rpartition("--")
            yield f"{algorithm} {factory} {metric}".strip(), algorithm, factory, metric, run, run_points(run)


def _is_exact(factory):
    return factory in ("Flat", "BFlat")


def _recall(point):
    return point.get(f"recall@{point['k']}")


def _finish(fig, ax, xlabel, ylabel, log_y, save, filename, formats):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="best")
    if save:
        if filename is None:
            raise ValueError("You need to specify a filename if you want to save the figure")
        return save_figure(fig, filename, formats=formats)
    return fig


def time_recall_plot_flat(results, save=False, filename=None, log_y=False, formats=("png", "pdf")):
    """Search time against recall@k, one marker per Flat run (all at the same k, as in the seed)."""
    fig, ax = new_figure()
    ks = set()
    for i, (label, _, factory, metric, _, points) in enumerate(_runs(results)):
        if not _is_exact(factory):
            continue
        for point in points:
            ks.add(point["k"])
            ax.scatter(_recall(point), point["search_time"], color=PALETTE[i % len(PALETTE)],
                       marker=MARKERS.get(metric, "o"), s=70, label=label if point is points[0] else None)
    k_text = f"Recall@{ks.pop()}" if len(ks) == 1 else "Recall@k"
    ax.set_title("Flat (exact) search: time vs recall")
    return _finish(fig, ax, k_text, "Search time [s]", log_y, save, filename, formats)


def time_recall_plot_flat_sweep_k(results, save=False, filename=None, log_y=False, formats=("png", "pdf")):
    """Search time against recall@k over a k sweep, one line per run, each point annotated with its k."""
    fig, ax = new_figure()
    for i, (label, _, _, metric, _, points) in enumerate(_runs(results)):
        recall = [_recall(p) for p in points]
        times = [p["search_time"] for p in points]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(recall, times, color=color, marker=MARKERS.get(metric, "o"), label=label, alpha=0.9)
        for point, x, y in zip(points, recall, times):
            ax.annotate(f"k={point['k']}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color=color)
    ax.set_title("Search time vs recall@k over k")
    return _finish(fig, ax, "Recall@k", "Search time [s]", log_y, save, filename, formats)


def time_recall_plot_IVF(results, ylog=False, save=False, filename=None, formats=("png", "pdf")):
    """Approximate indexes (IVF over nprobe, HNSW over efSearch) as curves annotated with their parameter,
    against the Flat points of the same metric (the seed's IVF plot; ``ylog`` puts time on a log scale)."""
    fig, ax = new_figure()
    ks = set()
    groups, styles = {}, ("-", "--", ":", "-.")
    for label, algorithm, factory, metric, run, points in _runs(results):
        # one colour per (algorithm, metric): an index and the Flat it is compared with share it
        group = groups.setdefault((algorithm, metric), {"color": PALETTE[len(groups) % len(PALETTE)], "n": 0})
        color = group["color"]
        ks.update(p["k"] for p in points)
        recall = [_recall(p) for p in points]
        times = [p["search_time"] for p in points]
        if _is_exact(factory):
            ax.scatter(recall, times, color=color, marker=MARKERS.get(metric, "o"), s=90, zorder=3, label=label)
            continue
        ax.plot(recall, times, color=color, marker=".", linestyle=styles[group["n"] % len(styles)], label=label)
        group["n"] += 1
        sweep = run.get("sweep", "nprobe")
        name = "ef" if sweep == "efsearch" else sweep
        for point, x, y in zip(points, recall, times):
            if point.get(sweep) is not None:
                ax.annotate(f"{name}={point[sweep]}", (x, y), xytext=(4, -10), textcoords="offset points",
                            fontsize=7, color=color)
    k_text = f"Recall@{ks.pop()}" if len(ks) == 1 else "Recall@k"
    ax.set_title("Approximate indexes vs Flat")
    return _finish(fig, ax, k_text, "Search time [s]", ylog, save, filename, formats)


def _bar_runs(section):
    """Runs shown in per-attack and precision-recall plots: the exact ones, else every run's last point."""
    runs = []
    for key, run in section.get("runs", {}).items():
        factory, _, metric = key.rpartition("--")
        points = run_points(run)
        if points and "per_attack" in points[0]:
            runs.append((factory, metric, points))
    exact = [r for r in runs if _is_exact(r[0])]
    return exact or runs


def per_attack_recall_plot(section, algorithm="", save=False, filename=None, formats=("png", "pdf")):
    """Horizontal bars of recall@k per attack ID (one bar per run, at the run's first point for Flat runs,
    its last point for approximate ones), so the attacks that defeat a method stand out."""
    runs = _bar_runs(section)
    if not runs:
        return None
    chosen = []
    for factory, metric, points in runs:
        point = points[0] if _is_exact(factory) else points[-1]
        chosen.append((f"{factory} {metric} (k={point['k']})", metric, point["per_attack"][str(point["k"])]))
    attacks = sorted({attack for _, _, table in chosen for attack in table},
                     key=lambda a: np.mean([t.get(a, {}).get("recall", 0) for _, _, t in chosen]))
    height = max(3.0, 0.22 * len(attacks) * max(1, len(chosen)) ** 0.5 + 1.2)
    fig, ax = new_figure(figsize=(7.5, height))
    bar = 0.8 / len(chosen)
    y = np.arange(len(attacks))
    for i, (label, _, table) in enumerate(chosen):
        values = [table.get(attack, {}).get("recall", np.nan) for attack in attacks]
        ax.barh(y + (i - (len(chosen) - 1) / 2) * bar, values, height=bar, color=PALETTE[i % len(PALETTE)],
                label=label)
    counts = {attack: max(t.get(attack, {}).get("n", 0) for _, _, t in chosen) for attack in attacks}
    ax.set_yticks(y, [f"{attack} (n={counts[attack]})" for attack in attacks], fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.grid(axis="y", visible=False)
    ax.set_title(f"Recall per attack{' - ' + algorithm if algorithm else ''}", pad=8 + 12 * ((len(chosen) + 2) // 3))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(chosen)), fontsize=7)
    ax.set_xlabel("Recall@k")
    if save:
        return save_figure(fig, filename, formats=formats)
    return fig


def precision_recall_plot(section, algorithm="", save=False, filename=None, formats=("png", "pdf")):
    """Left: precision vs recall of the global pair ranking (µAP and recall at 90% precision in the legend).
    Then one panel per run: precision and recall vs the distance threshold ("duplicate if distance <= t")."""
    runs = _bar_runs(section)
    if not runs:
        return None
    chosen = []
    for factory, metric, points in runs:
        point = max(points, key=lambda p: p["k"]) if _is_exact(factory) else points[-1]
        if point.get("threshold_curve"):
            chosen.append((f"{factory} {metric}", metric, point))
    if not chosen:
        return None
    panels = 1 + len(chosen)
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = new_figure(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    axes = axes.ravel()
    pr = axes[0]
    for i, (label, _, point) in enumerate(chosen):
        curve = point["threshold_curve"]
        muap = point.get("muap")
        r90 = point.get("recall@P90")
        text = f"{label} (k={point['k']}): uAP {muap:.3f}" if muap is not None else label
        if r90 is not None:
            text += f", R@P90 {r90:.3f}"
        pr.plot(curve["recall"], curve["precision"], color=PALETTE[i % len(PALETTE)], label=text)
        ax = axes[i + 1]
        ax.plot(curve["threshold"], curve["precision"], color=PALETTE[0], label="precision")
        ax.plot(curve["threshold"], curve["recall"], color=PALETTE[1], label="recall")
        if point.get("threshold@P90") is not None:
            ax.axvline(point["threshold@P90"], color="gray", linestyle="--", linewidth=1,
                       label=f"P>=0.9 up to {point['threshold@P90']:.3g}")
        ax.set_xlabel(f"{label} distance threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="best", fontsize=7)
    pr.axhline(0.9, color="gray", linestyle=":", linewidth=1)
    pr.set_xlabel("Recall")
    pr.set_ylabel("Precision")
    pr.set_xlim(-0.02, 1.02)
    pr.set_ylim(-0.02, 1.02)
    pr.set_title(f"Precision-recall{' - ' + algorithm if algorithm else ''}")
    pr.legend(loc="lower left", fontsize=7)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.tight_layout()
    if save:
        return save_figure(fig, filename, formats=formats)
    return fig


def recall_k_plot(results, save=False, filename=None, formats=("png", "pdf")):
    """Recall@k against k, one line per run of a k sweep (the pessimistic value, solid, and the expected value
    under random tie-breaking, dashed, where they differ); the seed's recall-vs-k figure."""
    fig, ax = new_figure()
    for i, (label, _, _, metric, _, points) in enumerate(_runs(results)):
        points = sorted(points, key=lambda p: p["k"])
        if len({p["k"] for p in points}) < 2:
            continue
        color = PALETTE[i % len(PALETTE)]
        ks = [p["k"] for p in points]
        ax.plot(ks, [_recall(p) for p in points], marker=MARKERS.get(metric, "o"), color=color, label=label)
        expected = [p.get(f"recall@{p['k']}_expected") for p in points]
        if all(v is not None for v in expected) and not np.allclose(expected, [_recall(p) for p in points]):
            ax.plot(ks, expected, linestyle="--", color=color, label=f"{label} (expected, random ties)")
    ax.set_xscale("log")
    return _finish(fig, ax, "k (neighbours searched)", "recall@k", False, save, filename, formats)


def time_k_plot(results, save=False, filename=None, log_y=False, formats=("png", "pdf")):
    """Search time against k, one line per run of a k sweep; the seed's time-vs-k figure."""
    fig, ax = new_figure()
    for i, (label, _, _, metric, _, points) in enumerate(_runs(results)):
        points = sorted(points, key=lambda p: p["k"])
        if len({p["k"] for p in points}) < 2:
            continue
        ax.plot([p["k"] for p in points], [p["search_time"] for p in points], marker=MARKERS.get(metric, "o"),
                color=PALETTE[i % len(PALETTE)], label=label)
    ax.set_xscale("log")
    return _finish(fig, ax, "k (neighbours searched)", "search time (s)", log_y, save, filename, formats)


def plot_experiment(results, folder, log_y=False, formats=("png", "pdf")):
    """All plots that fit a results dict, saved into ``folder``; returns the written paths.

    ``time_recall``: the seed's plot for the experiment kind (Flat metrics, k sweep, IVF/HNSW vs Flat, or all
    runs for an index comparison); for a k sweep also ``recall_k`` and ``time_k`` (recall and search time vs k);
    ``per_attack_<algorithm>`` and ``precision_recall_<algorithm>`` per algorithm.
    """
    folder = Path(folder)
    kind = results.get("experiment")
    if kind is None:  # the seed's layout: guess from the runs
        runs = list(results.values())
        kind = "nprobe" if any("nprobe" in run for run in runs) else \
            "k" if any(isinstance(run.get("k"), list) for run in runs) else "metrics"
    several_k = any(len({p["k"] for p in points}) > 1 for *_, points in _runs(results))
    written = []
    if kind in ("nprobe", "efsearch", "index"):
        written += time_recall_plot_IVF(results, ylog=log_y, save=True, filename=folder / "time_recall",
                                        formats=formats)
    elif kind == "k" or several_k:
        written += time_recall_plot_flat_sweep_k(results, save=True, filename=folder / "time_recall",
                                                 log_y=log_y, formats=formats)
        written += recall_k_plot(results, save=True, filename=folder / "recall_k", formats=formats)
        written += time_k_plot(results, save=True, filename=folder / "time_k", log_y=log_y, formats=formats)
    else:
        written += time_recall_plot_flat(results, save=True, filename=folder / "time_recall", log_y=log_y,
                                         formats=formats)
    for algorithm, section in sections(results).items():
        suffix = f"_{slugify(algorithm)}" if algorithm else ""
        for function, stem in ((per_attack_recall_plot, "per_attack"), (precision_recall_plot, "precision_recall")):
            paths = function(section, algorithm, save=True, filename=folder / f"{stem}{suffix}", formats=formats)
            written += paths or []
    return written


def process_experiment(name, results_root=None, log_y=False, formats=("png", "pdf")):
    """``process.py``: read ``results_root/name/results.json``, write its plots beside it, return their paths."""
    from helpers.paths import RESULTS_DIR
    from helpers.results import read_json

    folder = Path(results_root or RESULTS_DIR) / name
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results in {path}; run search_experiment.py {name} ... first")
    try:
        results = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not results.get("complete", True):
        from helpers.log import get_logger

        get_logger(__name__).warning("%s is from an unfinished experiment: plotting the runs done so far", path)
    written = plot_experiment(results, folder, log_y=log_y, formats=tuple(formats))
    for target in written:
        print(target)
    return written
