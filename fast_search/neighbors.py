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

import numpy as np

from helpers.experiment import ExperimentExistsError, is_finished, start_experiment
from helpers.log import get_logger
from helpers.image_io import DEFAULT_MAX_PIXELS
from helpers.montage import make_montage
from helpers.paths import FEATURES_DIR, NEIGHBORS_DIR

from .experiment import same_config
from .neighbor_table import write_neighbor_table
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


def query_entries(experiment, correct_within=1, k=None):
    """One dict per query of the last search: names, the ``k`` nearest neighbours' ids and distances, target,
    rank and category.

    A query is Correct when its target is among its ``correct_within`` nearest neighbours counting ties at the
    cut-off as misses (the pessimistic convention of :func:`fast_search.metrics.tie_aware_hits`); ``tied`` says
    when the target's distance is shared with another image, so its rank depends on how ties are broken.
    """
    from . import metrics as M

    ids_by_identity = {}
    for row, ident in enumerate(experiment.identifiers_db):
        ids_by_identity.setdefault(ident, []).append(row)
    within = min(int(correct_within), experiment.I.shape[1])
    hits = M.tie_aware_hits(experiment.D, experiment.I, experiment.identifiers_db, experiment.identifiers_query,
                            within, experiment.n)[0]
    k = experiment.I.shape[1] if k is None else int(k)
    entries = []
    for q, name in enumerate(experiment.query_names):
        ident = experiment.identifiers_query[q]
        targets = ids_by_identity.get(ident, [])
        valid = experiment.I[q] >= 0
        all_ids, all_d = experiment.I[q][valid], experiment.D[q][valid]
        neighbors = [int(i) for i in all_ids[:k]]
        distances = [float(d) for d in all_d[:k]]
        rank = next((r + 1 for r, i in enumerate(neighbors) if experiment.identifiers_db[i] == ident), 0)
        tied = bool(rank) and int(np.sum(all_d == distances[rank - 1])) > 1
        category = "NoOriginal" if not targets else ("Correct" if hits[q] else "Incorrect")
        entries.append({"query": q, "name": name, "identity": ident, "neighbors": neighbors,
                        "distances": distances, "targets": targets, "rank": rank, "tied": tied,
                        "category": category})
    return entries


def _montage(entry, experiment, tile, max_pixels=DEFAULT_MAX_PIXELS):
    items = [{"path": resolve_image_path(entry["name"]), "caption": f"query\n{_short(entry['name'])}",
              "border": "blue"}]
    for r, (row, dist) in enumerate(zip(entry["neighbors"], entry["distances"]), start=1):
        name = experiment.db_names[row]
        good = experiment.identifiers_db[row] == entry["identity"]
        items.append({"path": resolve_image_path(name), "caption": f"#{r} d={dist:.4g}\n{_short(name)}",
                      "border": "green" if good else "red"})
    if entry["targets"]:
        name = experiment.db_names[entry["targets"][0]]
        where = f"rank {entry['rank']}" if entry["rank"] else "not in top k"
        items.append({"path": resolve_image_path(name), "caption": f"target ({where})\n{_short(name)}",
                      "border": "gray"})
    return make_montage(items, tile=tile, max_pixels=max_pixels)


def _write_index(folder, entries, title, experiment, k, correct_within):
    order = {category: i for i, category in enumerate(CATEGORIES)}
    entries = sorted(entries, key=lambda e: (order[e["category"]], e["query"]))
    counts = {c: sum(e["category"] == c for e in entries) for c in CATEGORIES}
    rows = []
    for entry in entries:
        link = html.escape(entry["file"], quote=True)
        dists = ", ".join(f"{d:.4g}" for d in entry["distances"])
        target_d = next((d for row, d in zip(entry["neighbors"], entry["distances"])
                         if experiment.identifiers_db[row] == entry["identity"]), None)
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
                      neighbors_root=NEIGHBORS_DIR, features_root=FEATURES_DIR, ground_truth=None, force=False,
                      config=None, argv=None, **ignored):
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
    experiment = Experiment(algo, main_dataset, query_dataset, distractor_dataset, features_root=features_root,
                            device=torch_device, backend=backend, batch_size=batch_size, ground_truth=ground_truth)
    config = config or {"name": name, "algo": algo, "main_dataset": main_dataset, "query_dataset": query_dataset,
                        "distractor_dataset": distractor_dataset, "metric": metric, "k": k, "limit": limit,
                        "correct_within": correct_within, "factory": factory, "device": device,
                        "backend": backend, "tile": tile}
    try:
        experiment.set_index(factory, metric)
        k_eff = min(int(k), experiment.n)
        experiment.search(k=k_eff)
        entries = query_entries(experiment, int(correct_within), k_eff)
        order = {category: i for i, category in enumerate(CATEGORIES)}
        entries.sort(key=lambda e: (order[e["category"]], e["query"]))
        if limit is not None:
            entries = entries[: int(limit)]
        stale = folder.exists() and not same_config(folder, config)
        record = start_experiment(folder, config, force=force, device=torch_device, argv=argv)
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
                rows = entry["neighbors"] + entry["targets"][:1]
                missing.update(str(p) for p in [resolve_image_path(entry["name"])] +
                               [resolve_image_path(experiment.db_names[r]) for r in rows] if not p.is_file())
                _save_atomic(_montage(entry, experiment, tile, max_pixels), target)
        if missing:
            shown = sorted(missing)
            logger.warning("%d image(s) named in the feature store are missing and drawn as gray tiles: %s%s",
                           len(shown), "; ".join(shown[:5]), " ..." if len(shown) > 5 else "")
        title = f"{experiment.algorithm}: {query_dataset} vs {main_dataset}" + \
            (f" + {distractor_dataset}" if distractor_dataset else "") + f" ({experiment.factory_str}, {metric})"
        index = _write_index(folder, entries, title, experiment, k_eff, int(correct_within))
        write_neighbor_table(folder / "neighbors.csv.gz", experiment.query_names, experiment.db_names, experiment.D,
                             experiment.I, experiment.identifiers_db, experiment.identifiers_query, k=k_eff)
        counts = {c: sum(e["category"] == c for e in entries) for c in CATEGORIES}
        recall = experiment.recall(min(int(correct_within), k_eff))[0]
        record.finish(shown=counts, recall_at_correct_within=None if np.isnan(recall) else recall)
    finally:
        experiment.close()
    print(f"{len(entries)} montages ({counts['Incorrect']} incorrect, {counts['NoOriginal']} without original, "
          f"{counts['Correct']} correct): {index}")
    return counts
