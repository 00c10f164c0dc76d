"""The outputs of ``find_duplicates.py``: ``pairs.csv``, ``groups.json``, ``review.html`` and the summary."""
import csv
import html
import os
from pathlib import Path

from helpers.results import write_json


def write_pairs_csv(path, rows, score_name):
    """``a,b,<distance|similarity>,method`` per pair, in the order given (closest first)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", score_name, "method"])
        for a, b, score, method in rows:
            writer.writerow([a, b, _number(score), method])
    return Path(path)


def read_pairs_csv(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value):
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.6f}"


def write_groups_json(path, groups, infos, grouping, threshold, score_name, method, scores=None):
    """One entry per group: the kept file first, then the others, with their size in pixels and bytes."""
    entries = []
    for number, group in enumerate(groups):
        members = []
        for position, row in enumerate(group):
            info = infos[row]
            member = {"path": info.path, "width": info.width, "height": info.height, "bytes": info.bytes,
                      "keep": position == 0}
            if scores is not None and position:
                member[f"{score_name}_to_kept"] = scores.get((group[0], row))
            members.append(member)
        entries.append({"group": number, "size": len(group), "members": members})
    description = {"star": "every member is within the threshold of the kept image (no chaining)",
                   "components": "connected components of the pairs (chains of matches merge)"}[grouping]
    return write_json(path, {"grouping": grouping, "grouping_rule": description, "method": method,
                             "threshold": threshold, "score": score_name,
                             "keep_rule": "largest pixel count, then largest file, then oldest",
                             "groups": entries})


def _img(path, folder):
    src = html.escape(Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix())
    return f'<a href="{src}"><img src="{src}" loading="lazy"></a>'


def write_review_html(path, pairs, infos_by_path, score_name, method, limit=2000):
    """Pairs side by side, closest first, with sizes and paths (images linked relatively to the page)."""
    folder = Path(path).parent
    rows = []
    for number, (a, b, score, _) in enumerate(pairs[:limit]):
        cells = []
        for side in (a, b):
            info = infos_by_path[side]
            cells.append(f"<td>{_img(side, folder)}<br><code>{html.escape(side)}</code><br>{info.width}x"
                         f"{info.height} px, {info.bytes / 1024:.1f} KiB</td>")
        rows.append(f"<tr><td>{number + 1}</td><td>{_number(score)}</td>{''.join(cells)}</tr>")
    more = f"<p>{len(pairs) - limit} more pairs in pairs.csv.</p>" if len(pairs) > limit else ""
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Duplicate pairs ({html.escape(method)})</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px;border-bottom:1px solid #ccc}}
img{{max-width:320px;max-height:240px}} code{{font-size:11px}}</style></head><body>
<h1>{len(pairs)} duplicate pairs</h1>
<p>Method: {html.escape(method)}; sorted by {score_name} ({'lowest' if score_name == 'distance' else 'highest'}
first).</p>
<table><tr><th>#</th><th>{score_name}</th><th>a</th><th>b</th></tr>
{chr(10).join(rows)}
</table>{more}</body></html>
"""
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
