"""``find_duplicates.py``: the duplicates of a collection (or of a collection against a reference collection).

Steps: list the images, compute one algorithm's features, take the explicit threshold or calibrate one
(:mod:`dedup.calibrate`), find every pair within it (:mod:`dedup.pairs`), group them, write ``pairs.csv``,
``groups.json`` and ``review.html``, print a summary, and plan (dry run) or carry out the actions
(:mod:`dedup.actions`).
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np

from helpers.image_io import SkipReport, list_images
from helpers.log import get_logger
from helpers.paths import REPO_ROOT
from helpers.results import write_json

from . import actions as act
from .calibrate import calibrate
from .features import Featurizer, distance_of, score_of
from .pairs import GROUPINGS, connected_components, cross_pairs, self_pairs, star_groups
from .report import write_groups_json, write_pairs_csv, write_review_html

logger = get_logger(__name__)

DUPLICATES_DIR = REPO_ROOT / "Duplicates"
DEFAULT_ALGO = "Phash 64 bits"


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value




def build_parser():
    from helpers.cli import add_common_arguments, positive_int

    parser = argparse.ArgumentParser(
        prog="find_duplicates.py",
        description="Find the duplicate images of a folder (or of a folder against a --reference folder): "
                    "pairs.csv, groups.json, review.html and a summary in OUTPUT; with a threshold calibrated on "
                    "your own images by default. Nothing is moved unless --apply is given, and nothing is ever "
                    "deleted (see the README, 'Find duplicates in your collection').",
        epilog="Undo: find_duplicates.py --undo OUTPUT/undo.jsonl")
    parser.add_argument("path", nargs="?", default=None, help="folder of images (searched recursively)")
    parser.add_argument("--reference", default=None, metavar="PATH2",
                        help="reference folder: report only images of PATH that are copies of images of PATH2 "
                             "(the reference is never touched)")
    parser.add_argument("--algo", default=DEFAULT_ALGO,
                        help="a perceptual hash ('Phash 64 bits', 'Dhash 256 bits'...) or a model of the zoo "
                             "('EfficientNet-Lite0', 'ResNet50 1x'...) (default: %(default)s)")
    parser.add_argument("--weights", default="pretrained",
                        help="model weights: pretrained, pretrained:TAG, random (tests only) or a file "
                             "(default: %(default)s)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--max-distance", type=float, default=None,
                           help="explicit threshold for hashes: pairs within this many differing bits")
    threshold.add_argument("--min-similarity", type=float, default=None,
                           help="explicit threshold for models: pairs with at least this cosine similarity")
    parser.add_argument("--precision", type=_fraction, default=0.99,
                        help="calibrated threshold (the default when no explicit one is given): the loosest "
                             "threshold keeping this precision on edited copies of a sample of your images "
                             "(default: %(default)s)")
    parser.add_argument("--calibration-sample", type=positive_int, default=100,
                        help="images of the collection edited for the calibration (default: %(default)s)")
    parser.add_argument("--edit-families", nargs="+", default=None, metavar="FAMILY",
                        help="edit families of the calibration copies (default: all families of the attack "
                             "generator: noise blur jpeg scale crop rotation shear enhancement text overlay flip "
                             "padding paste perspective pixelization grayscale meme; 'chain' adds chained edits)")
    parser.add_argument("--calibration-k", type=positive_int, default=512,
                        help="non-copies are counted among each calibration copy's k nearest images "
                             "(default: %(default)s)")
    parser.add_argument("--verify-with", default=None, metavar="MODEL",
                        help="cascade: the hash of --algo shortlists pairs, this model (e.g. EfficientNet-Lite0) "
                             "verifies them; only the shortlisted images are embedded")
    parser.add_argument("--shortlist-precision", type=_fraction, default=0.5,
                        help="cascade: the hash shortlist radius is the calibrated hash threshold at this (low) "
                             "precision (default: %(default)s)")
    parser.add_argument("--shortlist-distance", type=float, default=None,
                        help="cascade: explicit shortlist radius in bits (needed with --min-similarity)")
    parser.add_argument("--grouping", choices=GROUPINGS, default="star",
                        help="star: the best image takes every image within the threshold of it (no chaining; "
                             "every removed image is a direct match of the kept one); components: connected "
                             "components (chains merge) (default: %(default)s)")
    parser.add_argument("--qdrant", default=None, metavar="LOCATION",
                        help="search the pairs through a Qdrant vector database instead of FAISS: a folder "
                             "(embedded mode) or http(s)://HOST:6333 (server or cluster); at most 100 matches per "
                             "image")
    parser.add_argument("--output", default=None,
                        help="output folder (default: Duplicates/<folder name>); refused if it holds a finished "
                             "run, unless --force")
    parser.add_argument("--move-to", default=None, metavar="DIR",
                        help="move every image that is not kept into DIR (keeping relative paths); dry run unless "
                             "--apply")
    parser.add_argument("--symlink-to", default=None, metavar="DIR",
                        help="make links in DIR to every image that is not kept (the collection is untouched); "
                             "dry run unless --apply")
    parser.add_argument("--list-to-remove", default=None, metavar="FILE",
                        help="write the images that are not kept, one path per line")
    parser.add_argument("--apply", action="store_true",
                        help="carry out --move-to / --symlink-to (otherwise a dry run reports what would happen)")
    parser.add_argument("--undo", default=None, metavar="LOG",
                        help="reverse the moves and links of an undo log (OUTPUT/undo.jsonl) and exit")
    parser.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1),
                        help="hashing processes (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="model batch size (default: %(default)s)")
    parser.add_argument("--html-limit", type=positive_int, default=2000,
                        help="pairs shown in review.html (all are in pairs.csv) (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def _list(folder, report):
    paths = [str(path) for path in list_images(folder, report=report)]
    if not paths:
        raise ValueError(f"no image found in {folder}")
    return paths


def explicit_threshold(featurizer, max_distance, min_similarity):
    """The distance threshold of an explicit flag, or None; the flag must fit the algorithm."""
    if featurizer.binary and min_similarity is not None:
        raise ValueError(f"{featurizer.name} is a hash: give --max-distance (bits), not --min-similarity")
    if not featurizer.binary and max_distance is not None:
        raise ValueError(f"{featurizer.name} is a neural model: give --min-similarity (cosine), not --max-distance")
    if max_distance is not None:
        if max_distance < 0:
            raise ValueError(f"--max-distance must be >= 0, got {max_distance}")
        return float(max_distance)
    if min_similarity is not None:
        if not -1 <= min_similarity <= 1:
            raise ValueError(f"--min-similarity must be in [-1, 1], got {min_similarity}")
        return float(distance_of(min_similarity, False))
    return None


def make_groups(n, a, b, infos, grouping):
    """Groups of one collection, each starting with the image kept by the keep rule."""
    order = act.keep_order(infos)
    if grouping == "star":
        return star_groups(n, a, b, order)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(n)
    return [sorted(group, key=lambda row: rank[row]) for group in connected_components(n, a, b)]


def reference_groups(a, b, d, n_queries):
    """Reference mode: each matched query joins the group of its closest reference image (kept, first).
    Rows of the reference are numbered after the queries (``n_queries + j``)."""
    best = {}
    for q, r, dist in zip(a.tolist(), b.tolist(), d.tolist()):
        if q not in best or (dist, r) < best[q]:
            best[q] = (dist, r)
    groups = {}
    for q, (_, r) in sorted(best.items()):
        groups.setdefault(r, []).append(q)
    return [[n_queries + r] + members for r, members in sorted(groups.items())]


def _format_threshold(featurizer, threshold):
    if not np.isfinite(threshold):
        return "none (no threshold reaches the target precision)"
    if featurizer.binary:
        return f"max distance {threshold:g} bits"
    return f"min cosine similarity {score_of(threshold, False):.4f}"


def run_find(path=None, reference=None, algo=DEFAULT_ALGO, weights="pretrained", max_distance=None,
             min_similarity=None, precision=0.99, calibration_sample=100, edit_families=None, calibration_k=512,
             verify_with=None, shortlist_precision=0.5, shortlist_distance=None, grouping="star", qdrant=None,
             output=None, move_to=None, symlink_to=None, list_to_remove=None, apply=False,
             undo=None, workers=1, batch_size=32, html_limit=2000, device="auto", seed=0, force=False,
             config=None, argv=None, echo=print):
    """Everything ``find_duplicates.py`` does; returns a summary dict (also written as ``summary.json``)."""
    from helpers.experiment import start_experiment

    if undo is not None:
        restored, problems = act.undo(undo)
        for problem in problems:
            echo(f"not undone: {problem}")
        echo(f"undo: {restored} action(s) reversed, {len(problems)} left as they are")
        return {"restored": restored, "problems": problems}
    if path is None:
        raise ValueError("give the folder of images (PATH), or --undo LOG")
    if move_to and symlink_to:
        raise ValueError("choose one of --move-to and --symlink-to")
    started = time.perf_counter()
    report = SkipReport()
    paths = _list(path, report)
    ref_paths = _list(reference, report) if reference else []
    folder = Path(output) if output else DUPLICATES_DIR / Path(path).resolve().name
    for target in (move_to, symlink_to):
        if target and any(Path(target).resolve() == Path(root).resolve() or
                          Path(root).resolve() in Path(target).resolve().parents for root in [path, reference]
                          if root):
            raise ValueError(f"{target} is inside a searched folder; choose a folder outside it")
    experiment = start_experiment(folder, config or {}, force=force, argv=argv)

    featurizer = Featurizer(algo, weights=weights, device=device, batch_size=batch_size, workers=workers)
    timings = {}
    tick = time.perf_counter()
    paths, features = featurizer.files(paths, report)
    if reference:
        ref_paths, ref_features = featurizer.files(ref_paths, report)
    timings["features_s"] = time.perf_counter() - tick
    report.warn(logger)
    report.write(folder)
    if not paths or (reference and not ref_paths):
        raise ValueError("no readable image to compare")

    calibration = None
    radius = None
    if verify_with:
        a, b, d, radius, threshold, calibration, final, method, cascade_info = _cascade(
            featurizer, paths, features, ref_paths if reference else None, ref_features if reference else None,
            verify_with, weights, device, batch_size, max_distance, min_similarity, shortlist_distance,
            shortlist_precision, precision, calibration_sample, edit_families, seed, calibration_k, timings)
    else:
        final, method, cascade_info = featurizer, featurizer.name, None
        threshold = explicit_threshold(featurizer, max_distance, min_similarity)
        tick = time.perf_counter()
        if threshold is None:
            cal_paths, cal_features = (ref_paths, ref_features) if reference else (paths, features)
            calibration = calibrate(featurizer, cal_paths, cal_features, precision=precision,
                                    sample_size=calibration_sample, families=edit_families, seed=seed,
                                    k=calibration_k)
            threshold = calibration.threshold
        timings["calibration_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if qdrant:
            from .vectordb import qdrant_cross_pairs, qdrant_self_pairs

            if reference:
                a, b, d = qdrant_cross_pairs(features, ref_features, threshold, featurizer.binary, featurizer.dim,
                                             qdrant)
            else:
                a, b, d = qdrant_self_pairs(features, threshold, featurizer.binary, featurizer.dim, qdrant)
        elif reference:
            a, b, d = cross_pairs(features, ref_features, threshold, featurizer.binary)
        else:
            a, b, d = self_pairs(features, threshold, featurizer.binary)
        timings["pairs_s"] = time.perf_counter() - tick
    if reference:
        all_paths = paths + ref_paths
        pair_a, pair_b = a, b + len(paths)
    else:
        all_paths = paths
        pair_a, pair_b = a, b

    involved = sorted(set(pair_a.tolist()) | set(pair_b.tolist()))
    infos = [None] * len(all_paths)
    for row in involved:
        infos[row] = act.file_info(all_paths[row])
    if reference:
        groups = reference_groups(a, b, d, len(paths))
    else:
        # unmatched images never enter a group: give them a placeholder that sorts last
        filled = [info or act.FileInfo(all_paths[row], 0, 0, 0, float("inf")) for row, info in enumerate(infos)]
        groups = make_groups(len(all_paths), pair_a, pair_b, filled, grouping)

    scores = score_of(d, final.binary)
    pair_rows = [(all_paths[x], all_paths[y], s, method) for x, y, s in zip(pair_a.tolist(), pair_b.tolist(),
                                                                            scores.tolist())]
    lookup = {(x, y): s for x, y, s in zip(pair_a.tolist(), pair_b.tolist(), scores.tolist())}
    lookup.update({(y, x): s for (x, y), s in list(lookup.items())})
    write_pairs_csv(folder / "pairs.csv", pair_rows, final.score_name)
    write_groups_json(folder / "groups.json", groups, infos, "star" if reference else grouping,
                      _threshold_value(final, threshold), final.score_name, method, lookup)
    write_review_html(folder / "review.html", pair_rows, {all_paths[row]: infos[row] for row in involved},
                      final.score_name, method, limit=html_limit)

    removable = [all_paths[row] for row in act.to_remove(groups)]
    removable_bytes = sum(infos[row].bytes for row in act.to_remove(groups))
    roots = [path]
    action_summary = {}
    if list_to_remove:
        act.write_list(removable, list_to_remove)
        action_summary["list"] = str(list_to_remove)
    if move_to or symlink_to:
        action = "move" if move_to else "symlink"
        plan = act.plan_actions(removable, action, move_to or symlink_to, roots)
        done, refused = act.apply_actions(plan, action, folder / act.UNDO_LOG, dry_run=not apply)
        action_summary.update({"action": action, "dry_run": not apply, "files": len(done),
                               "refused": [list(item) for item in refused]})
        if apply:
            action_summary["undo"] = f"find_duplicates.py --undo {folder / act.UNDO_LOG}"

    summary = {
        "images": len(paths), "reference_images": len(ref_paths), "algorithm": method,
        "threshold": _threshold_value(final, threshold), "shortlist_distance": radius, "cascade": cascade_info,
        "threshold_source":
            "calibrated" if calibration else "explicit", "pairs": int(len(d)), "groups": len(groups),
        "grouping": "star" if reference else grouping, "not_kept": len(removable), "not_kept_bytes": removable_bytes,
        "timings": timings, "total_s": time.perf_counter() - started, "actions": action_summary,
        "calibration": calibration.as_dict() if calibration else None,
    }
    write_json(folder / "summary.json", summary)
    _print_summary(echo, summary, final, threshold, calibration, folder, bool(reference))
    experiment.finish(pairs=int(len(d)), groups=len(groups))
    return summary


def _threshold_value(featurizer, threshold):
    if not np.isfinite(threshold):
        return None
    key = "max_distance" if featurizer.binary else "min_similarity"
    return {key: float(score_of(threshold, featurizer.binary))}


def _print_summary(echo, summary, featurizer, threshold, calibration, folder, reference):
    what = f"{summary['images']} images" + (f" against {summary['reference_images']} reference images"
                                            if reference else "")
    echo(f"{what}, {summary['algorithm']}, threshold: {_format_threshold(featurizer, threshold)} "
         f"({summary['threshold_source']})")
    if summary["cascade"]:
        info = summary["cascade"]
        echo(f"cascade: {info['model_images']} of {info['images']} images embedded by the model "
             f"({info['model_fraction']:.1%}), shortlist {info['shortlisted_pairs']} pairs within "
             f"{summary['shortlist_distance']:g} bits")
    if calibration:
        echo(f"calibration: {calibration.n_copies} edited copies of {calibration.n_sample} of your images; at this "
             f"threshold expected precision {calibration.precision:.3f} (target {calibration.target_precision}), "
             f"expected recall {calibration.recall:.3f}; per edit family:")
        for family, value in calibration.recall_per_family.items():
            echo(f"  {family:<14s} recall {value['recall']:.3f}  (n={value['n']})")
    echo(f"{summary['pairs']} pairs, {summary['groups']} groups ({summary['grouping']} grouping), "
         f"{summary['not_kept']} images not kept ({summary['not_kept_bytes'] / 2**20:.1f} MiB)")
    echo(f"outputs: {folder / 'pairs.csv'}, {folder / 'groups.json'}, {folder / 'review.html'}")
    actions = summary["actions"]
    if actions.get("action"):
        if actions["dry_run"]:
            echo(f"dry run: would {actions['action']} {actions['files']} files; nothing changed (add --apply)")
        else:
            echo(f"{actions['action']}: {actions['files']} files, {len(actions['refused'])} refused; undo with: "
                 f"{actions['undo']}")
    if actions.get("list"):
        echo(f"list of images not kept: {actions['list']}")


def _cascade(hasher, paths, features, ref_paths, ref_features, verify_with, weights, device, batch_size,
             max_distance, min_similarity, shortlist_distance, shortlist_precision, precision, calibration_sample,
             edit_families, seed, calibration_k, timings):
    from .cascade import EmbeddingCache, calibrate_cascade, cascade_pairs

    if not hasher.binary:
        raise ValueError(f"--verify-with needs a hash as --algo (the shortlist), got the model {hasher.name}")
    if max_distance is not None:
        raise ValueError("in a cascade give --shortlist-distance (bits) and --min-similarity (the model's), "
                         "not --max-distance")
    if (min_similarity is None) != (shortlist_distance is None):
        raise ValueError("an explicit cascade needs both --shortlist-distance and --min-similarity (or neither, "
                         "to calibrate both)")
    model = Featurizer(verify_with, weights=weights, device=device, batch_size=batch_size)
    if model.binary:
        raise ValueError(f"--verify-with takes a neural model, got the hash {model.name}")
    cache = EmbeddingCache(model, paths)
    ref_cache = EmbeddingCache(model, ref_paths) if ref_paths is not None else None
    calibration = None
    tick = time.perf_counter()
    if min_similarity is not None:
        radius = float(shortlist_distance)
        threshold = float(explicit_threshold(model, None, min_similarity))
    else:
        cal_paths, cal_features = (ref_paths, ref_features) if ref_paths is not None else (paths, features)
        radius, calibration = calibrate_cascade(
            hasher, model, cal_paths, cal_features, ref_cache or cache, precision=precision,
            shortlist_precision=shortlist_precision, sample_size=calibration_sample, families=edit_families,
            seed=seed, k=calibration_k)
        threshold = calibration.threshold
    timings["calibration_s"] = time.perf_counter() - tick
    calibration_embedded = cache.embedded + (ref_cache.embedded if ref_cache else 0)
    tick = time.perf_counter()
    a, b, d = cascade_pairs(features, cache, radius, threshold, ref_features, ref_cache)
    timings["pairs_s"] = time.perf_counter() - tick
    from .pairs import cross_pairs as _cross, self_pairs as _self

    shortlisted = len((_cross(features, ref_features, radius, True) if ref_paths is not None
                       else _self(features, radius, True))[0])
    embedded = cache.embedded + (ref_cache.embedded if ref_cache else 0)
    total = len(paths) + (len(ref_paths) if ref_paths is not None else 0)
    method = (f"cascade: {hasher.name} <= {radius:g} bits, then {model.name} cosine >= "
              f"{score_of(threshold, False):.4f}" if np.isfinite(threshold) else f"cascade {hasher.name} + {model.name}")
    info = {"hash": hasher.name, "model": model.name, "images": total, "model_images": embedded,
            "model_fraction": embedded / max(1, total), "shortlisted_pairs": shortlisted,
            "model_images_for_calibration": calibration_embedded,
            "model_images_added_by_the_pairs": embedded - calibration_embedded}
    return a, b, d, radius, threshold, calibration, model, method, info
