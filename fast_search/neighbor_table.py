"""Neighbours as data: each query's nearest neighbours with distances and correctness, as a CSV file.

``write_neighbor_table`` writes one row per (query, neighbour) to a gzip-compressed CSV
(``neighbors.csv.gz``), with the columns:

=============  ======================================================================================
``query``      the query image (as in the query store's ``names.txt``)
``reference``  its original in the database by the ground truth (empty for a negative query)
``rank``       1-based rank of the neighbour as returned by the index
``neighbor``   the neighbour image
``distance``   its distance (lower = closer; cosine is ``1 - similarity``)
``correct``    1 when the neighbour is the query's original, else 0
``tie_first``  first and last rank of the group of neighbours at exactly this distance: when they differ the
``tie_last``   neighbour's rank depends on tie-breaking (the metrics count such ties explicitly)
=============  ======================================================================================

Rows are in query order, then rank. Any CSV reader (pandas, ``csv``) reads the file; :func:`read_neighbor_table`
returns it grouped by query.
"""
import csv
import gzip
import io
import os
from pathlib import Path

import numpy as np

COLUMNS = ("query", "reference", "rank", "neighbor", "distance", "correct", "tie_first", "tie_last")


def write_neighbor_table(path, query_names, db_names, distances, neighbor_ids, db_identities, query_identities,
                         k=None):
    """Write the ``k`` nearest neighbours of every query (all returned when None) to ``path`` (atomically)."""
    path = Path(path)
    distances, neighbor_ids = np.asarray(distances), np.asarray(neighbor_ids)
    k = neighbor_ids.shape[1] if k is None else min(int(k), neighbor_ids.shape[1])
    reference_of = {}
    for row, ident in enumerate(db_identities):
        reference_of.setdefault(ident, db_names[row])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for q, name in enumerate(query_names):
        ident = query_identities[q]
        valid = neighbor_ids[q] >= 0
        ids, dist = neighbor_ids[q][valid], distances[q][valid]
        for r in range(min(k, len(ids))):
            same = np.flatnonzero(dist == dist[r])
            writer.writerow([name, reference_of.get(ident, "") if ident is not None else "", r + 1,
                             db_names[int(ids[r])], f"{float(dist[r]):.9g}",
                             int(ident is not None and db_identities[int(ids[r])] == ident),
                             int(same[0]) + 1, int(same[-1]) + 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


def read_neighbor_table(path):
    """``{query: {"reference": str or None, "neighbors": [dict(rank, neighbor, distance, correct, tie_first,
    tie_last)]}}`` in file order.

    Raises
    ------
    ValueError
        When the file is not a neighbour table (wrong header).
    """
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read neighbour table {path}: {exc}") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path} is not a neighbour table (expected the header {','.join(COLUMNS)})")
    table = {}
    for row in rows[1:]:
        query, reference, rank, neighbor, distance, correct, tie_first, tie_last = row
        entry = table.setdefault(query, {"reference": reference or None, "neighbors": []})
        entry["neighbors"].append({"rank": int(rank), "neighbor": neighbor, "distance": float(distance),
                                   "correct": bool(int(correct)), "tie_first": int(tie_first),
                                   "tie_last": int(tie_last)})
    return table
