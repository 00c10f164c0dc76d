"""Neighbour galleries for visual inspection (``explore_neighbors.py``).

For each query: one montage ``query | its k nearest neighbours | its target`` (the database image of its
identity), saved under ``Neighbors/<name>/Correct/`` when the target is among the query's ``correct_within``
nearest neighbours, ``Incorrect/`` when it is not, and ``NoOriginal/`` for queries whose identity is not in the
database at all. ``index.html`` lists them (incorrect first, then queries without an original, then correct), with
the distances, and links to the montages relatively, so the folder can be moved or zipped.

Borders: blue = query, green = a neighbour of the query's identity, red = another image, gray = the target.
The neighbours themselves are written as data too: ``neighbors.csv.gz`` (:mod:`fast_search.neighbor_table`).
Montages are written atomically and skipped when present, so an interrupted gallery resumes.
"""
import html
import os
import shutil
from pathlib import Path

from helpers.experiment import ExperimentExistsError, is_finished, start_experiment
from helpers.log import get_logger
from helpers.image_io import DEFAULT_MAX_PIXELS
from helpers.montage import make_montage
from helpers.paths import FEATURES_DIR, NEIGHBORS_DIR

from .experiment import same_config
from .neighbor_table import read_neighbor_table, write_neighbor_table
from .search import Experiment, resolve_image_path

logger = get_logger(__name__)

CATEGORIES = ("Incorrect", "NoOriginal", "Correct")


def _short(name, width=28):
    stem = Path(name).name
    return stem if len(stem) <= width else stem[: width - 3] + "..."


def _safe_stem(name):
    stem = Path(name).stem
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]


def _save_atomic(image, path):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def table_entries(table, correct_within=1, k=None):
    """One dict per query of a neighbour table (:func:`fast_search.neighbor_table.read_neighbor_table`): its
    ``k`` nearest neighbours with distances and correctness, target, rank and category.

    A query is Correct when its target is among its ``correct_within`` nearest neighbours counting ties at the
    cut-off as misses (the pessimistic convention of :func:`fast_search.metrics.tie_aware_hits`: the wrong
    neighbours of a tie group come first); ``tied`` says when the target's distance is shared with another image,
    so its rank depends on how ties are broken.
    """
    entries = []
    for q, (name, row) in enumerate(table.items()):
        shown = row["neighbors"] if k is None else row["neighbors"][: int(k)]
        first = next((n for n in row["neighbors"] if n["correct"]), None)
        rank = first["rank"] if first is not None and (k is None or first["rank"] <= int(k)) else 0
        hit = False
        if first is not None:
            group = [n for n in row["neighbors"] if n["tie_first"] == first["tie_first"]]
            correct_in_group = sum(n["correct"] for n in group)
            hit = first["tie_last"] - correct_in_group + 1 <= int(correct_within)
        category = "NoOriginal" if row["reference"] is None else ("Correct" if hit else "Incorrect")
        entries.append({"query": q, "name": name, "neighbors": [n["neighbor"] for n in shown],
                        "correct": [n["correct"] for n in shown], "distances": [n["distance"] for n in shown],
                        "target": row["reference"], "target_distance": first["distance"] if first else None,
                        "rank": rank, "tied": bool(first) and first["tie_first"] != first["tie_last"],
                        "category": category})
    return entries


def _montage(entry, tile, max_pixels=DEFAULT_MAX_PIXELS):
    items = [{"path": resolve_image_path(entry["name"]), "caption": f"query\n{_short(entry['name'])}",
              "border": "blue"}]
    for r, (name, good, dist) in enumerate(zip(entry["neighbors"], entry["correct"], entry["distances"]), start=1):
        items.append({"path": resolve_image_path(name), "caption": f"#{r} d={dist:.4g}\n{_short(name)}",
                      "border": "green" if good else "red"})
    if entry["target"]:
        where = f"rank {entry['rank']}" if entry["rank"] else "not in top k"
        items.append({"path": resolve_image_path(entry["target"]),
                      "caption": f"target ({where})\n{_short(entry['target'])}", "border": "gray"})
    return make_montage(items, tile=tile, max_pixels=max_pixels)


def _write_index(folder, entries, title, k, correct_within):
    order = {category: i for i, category in enumerate(CATEGORIES)}
    entries = sorted(entries, key=lambda e: (order[e["category"]], e["query"]))
    counts = {c: sum(e["category"] == c for e in entries) for c in CATEGORIES}
    rows = []
    for entry in entries:
        link = html.escape(entry["file"], quote=True)
        dists = ", ".join(f"{d:.4g}" for d in entry["distances"])
        target_d = entry["target_distance"]
        rows.append(
            f'<tr class="{entry["category"]}"><td>{entry["category"]}</td><td>{html.escape(entry["name"])}</td>'
            f'<td>{entry["rank"] or "-"}{" (tied)" if entry.get("tied") else ""}</td>'
            f'<td>{"-" if target_d is None else f"{target_d:.4g}"}</td>'
            f'<td>{dists}</td></tr>\n<tr class="{entry["category"]}"><td colspan="5"><a href="{link}">'
            f'<img src="{link}" loading="lazy" alt="{html.escape(entry["name"], quote=True)}"></a></td></tr>')
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }} table {{ border-collapse: collapse; }}
td {{ padding: 2px 8px; vertical-align: top; font-size: 13px; }} img {{ max-width: 100%; }}
tr.Incorrect td:first-child {{ color: #D55E00; font-weight: bold; }}
tr.Correct td:first-child {{ color: #009E73; font-weight: bold; }}
tr.NoOriginal td:first-child {{ color: #555; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{counts['Incorrect']} incorrect, {counts['NoOriginal']} without an original in the database, {counts['Correct']}
correct (target among the nearest {correct_within}, a tie at the cut-off counting as a miss); each montage shows the query (blue), its {k} nearest
neighbours (green: same identity, red: other) with their distances, and the target (gray). Incorrect first.</p>
<table><tr><th>category</th><th>query</th><th>target rank</th><th>target distance</th><th>neighbour distances</th></tr>
{''.join(rows)}
</table></body></html>
"""
    path = folder / "index.html"
    tmp = path.with_name(f".index.html.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def explore_neighbors(name, algo, main_dataset, query_dataset, distractor_dataset=None, metric="cosine", k=10,
                      limit=None, correct_within=1, factory="Flat", device="auto", backend="auto", batch_size=None,
                      tile=160, max_pixels=DEFAULT_MAX_PIXELS,
                      neighbors_root=NEIGHBORS_DIR, features_root=FEATURES_DIR, ground_truth=None,
                      neighbors_file=None, force=False, config=None, argv=None):
    """Write the neighbour gallery ``neighbors_root/name/`` and return ``{category: count}``.

    Parameters
    ----------
    k : int
        Neighbours shown per query.
    limit : int, optional
        At most this many queries, incorrect ones first (then those without an original, then correct ones),
        each group in query order.
    correct_within : int
        A query is correct when its target is among its ``correct_within`` nearest neighbours (default 1: the
        nearest is right).
    factory : str
        Index to search with (default exact ``Flat``).
    neighbors_file : path, optional
        Draw the gallery from a neighbour table written by a search experiment (``--save-neighbors``) instead
        of searching (:mod:`fast_search.neighbor_table`); the dataset arguments are then not needed.
    max_pixels : int or None
        Images of more pixels are drawn as "unreadable" tiles (``--max-pixels``; ``None``: no limit).

    Raises
    ------
    helpers.experiment.ExperimentExistsError
        When the gallery exists (finished) and ``force`` is False.
    """
    from helpers.device import resolve_device

    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"gallery name {name!r} must be a plain folder name (no path separators)")
    if int(k) < 1 or int(correct_within) < 1 or (limit is not None and int(limit) < 1):
        raise ValueError("--k, --correct-within and --limit must be positive")
    folder = Path(neighbors_root) / name
    if is_finished(folder) and not force:
        raise ExperimentExistsError(f"{folder} already holds a neighbour gallery; choose another --name or pass "
                                    "--force to overwrite it")
    torch_device = resolve_device(device)
    config = config or {"name": name, "algo": algo, "main_dataset": main_dataset, "query_dataset": query_dataset,
                        "distractor_dataset": distractor_dataset, "metric": metric, "k": k, "limit": limit,
                        "correct_within": correct_within, "factory": factory, "device": device,
                        "backend": backend, "tile": tile, "neighbors_file": neighbors_file}
    stale = folder.exists() and not same_config(folder, config)
    experiment = None
    try:
        if neighbors_file:
            table, title = read_neighbor_table(neighbors_file), f"neighbours of {neighbors_file}"
            k_eff = int(k)
        else:
            if not algo or not main_dataset or not query_dataset:
                raise ValueError("give --algo, --main-dataset and --query-dataset (or --neighbors-file FILE)")
            experiment = Experiment(algo, main_dataset, query_dataset, distractor_dataset,
                                    features_root=features_root, device=torch_device, backend=backend,
                                    batch_size=batch_size, ground_truth=ground_truth)
            experiment.set_index(factory, metric)
            k_eff = min(int(k), experiment.n)
            experiment.search(k=k_eff)
            title = f"{experiment.algorithm}: {query_dataset} vs {main_dataset}" + \
                (f" + {distractor_dataset}" if distractor_dataset else "") + f" ({experiment.factory_str}, {metric})"
        record = start_experiment(folder, config, force=force, device=torch_device, argv=argv)
        if experiment is not None:
            # the gallery is drawn from the neighbours written as data (the file search experiments write too)
            write_neighbor_table(folder / "neighbors.csv.gz", experiment.query_names, experiment.db_names,
                                 experiment.D, experiment.I, experiment.identifiers_db, experiment.identifiers_query,
                                 k=k_eff)
            table = read_neighbor_table(folder / "neighbors.csv.gz")
    finally:
        if experiment is not None:
            experiment.close()
    entries = table_entries(table, int(correct_within), k_eff)
    positives = [e for e in entries if e["category"] != "NoOriginal"]
    recall = sum(e["category"] == "Correct" for e in positives) / len(positives) if positives else None
    order = {category: i for i, category in enumerate(CATEGORIES)}
    entries.sort(key=lambda e: (order[e["category"]], e["query"]))
    if limit is not None:
        entries = entries[: int(limit)]
    for category in CATEGORIES:
        if stale:  # montages of an interrupted run with other settings must not be reused
            shutil.rmtree(folder / category, ignore_errors=True)
        (folder / category).mkdir(exist_ok=True)
    missing = set()
    for entry in entries:
        relative = f"{entry['category']}/{entry['query']:06d}_{_safe_stem(entry['name'])}.png"
        entry["file"] = relative
        target = folder / relative
        if not target.exists():  # resume: finished montages are kept
            shown = [entry["name"]] + entry["neighbors"] + ([entry["target"]] if entry["target"] else [])
            missing.update(str(resolve_image_path(p)) for p in shown if not resolve_image_path(p).is_file())
            _save_atomic(_montage(entry, tile, max_pixels), target)
    if missing:
        shown = sorted(missing)
        logger.warning("%d image(s) named in the feature store are missing and drawn as gray tiles: %s%s",
                       len(shown), "; ".join(shown[:5]), " ..." if len(shown) > 5 else "")
    index = _write_index(folder, entries, title, k_eff, int(correct_within))
    counts = {c: sum(e["category"] == c for e in entries) for c in CATEGORIES}
    record.finish(shown=counts, recall_at_correct_within=recall)
    print(f"{len(entries)} montages ({counts['Incorrect']} incorrect, {counts['NoOriginal']} without original, "
          f"{counts['Correct']} correct): {index}")
    return counts
