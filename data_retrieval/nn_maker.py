"""Target-similar training sets (seed 002, ``nn_maker``): from a large "near" pool, the images closest to a
target set.

For each target image, its ``K`` nearest pool images (cosine distance) within a threshold ``T`` are selected; an
image pulled in by several targets is kept once, with the closest target. The search streams the pool in blocks
(memory-mapped stores: a 1M-image pool is never held in memory) through an exact FAISS index per block (on the GPU
with faiss-gpu), and merges each block's top ``K`` into a running top ``K`` per target.

How close the selection is to the targets is measured against a random sample of the pool of the same size:
mean nearest-neighbour cosine distance (selected -> nearest target, and target -> nearest selected) and the
Fréchet distance between the two feature distributions (Gaussians fitted to the L2-normalised features, as FID).
"""
import argparse
import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from fast_search.index import make_index, prepare_vectors
from helpers.cli import add_common_arguments, resolved_config
from helpers.device import resolve_device
from helpers.experiment import start_experiment
from helpers.feature_store import load_features
from helpers.log import get_logger
from helpers.paths import REPO_ROOT
from helpers.results import write_json

logger = get_logger(__name__)
MODES = ("list", "copy", "symlink")
SELECTED_CSV = "selected.csv"


def nearest_in_pool(targets, pool, k, block_size=65536, device="cpu"):
    """Exact ``k`` nearest pool rows (cosine distance) of every target row, streaming the pool in blocks.

    Parameters
    ----------
    targets : ndarray ``[nt, d]``
    pool : ndarray or memmap ``[n, d]``
        Read ``block_size`` rows at a time.
    k : int

    Returns
    -------
    distances : float32 ``[nt, k]`` (ascending; ``inf`` where the pool has fewer than ``k`` rows)
    ids : int64 ``[nt, k]`` (``-1`` where missing)
    """
    if targets.shape[1] != pool.shape[1]:
        raise ValueError(f"target features are {targets.shape[1]}-d but the pool's are {pool.shape[1]}-d; use the "
                         "same algorithm for both")
    k = int(k)
    queries = prepare_vectors(targets, "cosine")
    best_d = np.full((len(queries), k), np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, pool.shape[0], block_size):
        block = prepare_vectors(pool[start:start + block_size], "cosine")
        index = make_index("Flat", "cosine", block.shape[1], device=device, backend="faiss")
        index.add(block)
        dist, ids = index.search(queries, min(k, block.shape[0]))
        index.close()
        ids = np.where(ids >= 0, ids + start, -1)
        all_d = np.concatenate([best_d, dist], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(all_d, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return best_d, best_i


def select(distances, ids, dist_thr):
    """Deduplicated selection from :func:`nearest_in_pool`'s output.

    Returns
    -------
    dict of arrays, one entry per selected pool row, sorted by pool row: ``pool`` (row), ``target`` (the closest
    target that pulled it in), ``distance`` (cosine distance to it) and ``rank`` (1-based rank of the image among
    that target's neighbours).
    """
    nt, k = ids.shape
    keep = (ids >= 0) & (distances <= dist_thr)
    pool = ids[keep]
    dist = distances[keep]
    target = np.repeat(np.arange(nt), k).reshape(nt, k)[keep]
    rank = np.tile(np.arange(1, k + 1), (nt, 1))[keep]
    order = np.lexsort((target, dist, pool))  # by pool row, then closest, then lowest target
    pool, dist, target, rank = pool[order], dist[order], target[order], rank[order]
    first = np.ones(len(pool), dtype=bool)
    first[1:] = pool[1:] != pool[:-1]
    return {"pool": pool[first], "target": target[first], "distance": dist[first], "rank": rank[first]}


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def frechet_distance(a, b):
    """Fréchet distance between Gaussians fitted to ``a`` and ``b`` (rows are samples), as in FID:
    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``, computed with ``scipy.linalg.sqrtm``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)  # tiny imaginary parts from round-off on (nearly) singular covariances
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)


def mean_nearest_distance(queries, database, device="cpu"):
    """Mean over ``queries`` of the cosine distance to the nearest ``database`` row (exact, FAISS)."""
    dist, _ = nearest_in_pool(queries, database, 1, device=device)
    return float(dist[:, 0].mean())


def closeness(targets, pool, selected_rows, seed=0, device="cpu"):
    """How close the selection is to the targets, against a random pool sample of the same size.

    Returns
    -------
    dict
        ``{'selected': {...}, 'random': {...}}`` with ``to_target`` (mean distance of each image to its nearest
        target), ``coverage`` (mean distance of each target to its nearest image) and ``frechet`` (on
        L2-normalised features); plus ``n`` and the sample's seed.
    """
    selected_rows = np.sort(np.asarray(selected_rows, dtype=np.int64))
    n = len(selected_rows)
    if n == 0:
        raise ValueError("nothing was selected: raise --dist-thr or --nn-factor")
    random_rows = np.sort(np.random.default_rng(seed).choice(pool.shape[0], size=n, replace=False))
    t = _unit(targets)
    out = {"n": int(n), "random_seed": int(seed)}
    for key, rows in (("selected", selected_rows), ("random", random_rows)):
        x = _unit(pool[rows])
        out[key] = {"to_target": mean_nearest_distance(x, t, device),
                    "coverage": mean_nearest_distance(t, x, device),
                    "frechet": frechet_distance(t, x) if n >= 2 and len(t) >= 2 else None}
    return out


def _image_path(name):
    path = Path(name)
    return path if path.is_absolute() else REPO_ROOT / path


def _relative_target(name):
    path = Path(name)
    return Path(*path.parts[1:]) if path.is_absolute() else path


def export_images(names, folder, mode):
    """Copy or symlink the selected images into ``folder`` (their relative paths kept); returns missing files."""
    missing = []
    for name in names:
        source = _image_path(name)
        if not source.is_file():
            missing.append(name)
            continue
        dest = Path(folder) / _relative_target(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        if mode == "copy":
            shutil.copy2(source, dest)
        else:
            os.symlink(source.resolve(), dest)
    return missing


def write_selection(path, selection, target_names, pool_names):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "target", "distance", "rank"])
        for row, target, dist, rank in zip(selection["pool"], selection["target"], selection["distance"],
                                           selection["rank"]):
            writer.writerow([pool_names[row], target_names[target], f"{float(dist):.6f}", int(rank)])


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nn_maker.py",
        description="Make a training set distributed like a target set (seed 002): for each target image its "
                    "--nn-factor nearest images of the --near pool within cosine distance --dist-thr, deduplicated. "
                    "Writes SAVE_DIR/selected.csv (image, target that pulled it in, distance, rank), optionally the "
                    "images (--copy/--symlink), and closeness.json: mean nearest-neighbour distance and Fréchet "
                    "distance to the targets, against a random pool sample of the same size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", required=True, metavar="STORE",
                        help="feature store folder of the target images (Features/<dataset>/<algorithm>)")
    parser.add_argument("--near", required=True, metavar="STORE",
                        help="feature store folder of the large pool to select from (same algorithm)")
    parser.add_argument("--save-dir", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--nn-factor", type=int, default=10, metavar="K", help="neighbours per target image")
    parser.add_argument("--dist-thr", type=float, default=0.5, metavar="T",
                        help="largest cosine distance (1 - cosine similarity) of a selected image to its target")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", dest="mode", action="store_const", const="list",
                      help="only write selected.csv (the default)")
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy",
                      help="also copy the selected images into SAVE_DIR/images/")
    mode.add_argument("--symlink", dest="mode", action="store_const", const="symlink",
                      help="also symlink the selected images into SAVE_DIR/images/")
    parser.set_defaults(mode="list")
    parser.add_argument("--block-size", type=int, default=65536, help="pool rows searched at a time")
    add_common_arguments(parser)
    return parser


def run(args):
    """Select, write the list (and images) and the closeness report; returns the summary dict."""
    if args.nn_factor <= 0 or args.block_size <= 0:
        raise ValueError("--nn-factor and --block-size must be positive")
    if not 0 <= args.dist_thr <= 2:
        raise ValueError(f"--dist-thr is a cosine distance between 0 and 2, got {args.dist_thr}")
    device = resolve_device(args.device)
    target = load_features(args.target)
    near = load_features(args.near)
    if target.binary or near.binary:
        raise ValueError("nn_maker works on float features (cosine distance), not binary hashes")
    if target.features.shape[1] != near.features.shape[1]:
        raise ValueError(f"target features are {target.features.shape[1]}-d but the pool's are "
                         f"{near.features.shape[1]}-d; use the same algorithm for both")
    experiment = start_experiment(args.save_dir, resolved_config(args), force=args.force, device=device)
    started = time.perf_counter()
    targets = np.asarray(target.features, dtype=np.float32)
    distances, ids = nearest_in_pool(targets, near.features, args.nn_factor, args.block_size, device)
    selection = select(distances, ids, args.dist_thr)
    folder = Path(args.save_dir)
    write_selection(folder / SELECTED_CSV, selection, target.names, near.names)
    missing = []
    if args.mode != "list":
        missing = export_images([near.names[row] for row in selection["pool"]], folder / "images", args.mode)
        if missing:
            (folder / "missing.txt").write_text("".join(f"{name}\n" for name in missing), encoding="utf-8")
            logger.warning("%d selected image files were not found (listed in missing.txt)", len(missing))
    report = closeness(targets, near.features, selection["pool"], seed=args.seed, device=device)
    summary = {"target": str(args.target), "near": str(args.near), "n_targets": len(target),
               "n_pool": len(near), "nn_factor": args.nn_factor, "dist_thr": args.dist_thr,
               "n_selected": int(len(selection["pool"])),
               "n_candidates": int((ids >= 0).sum()), "n_within_threshold": int(((ids >= 0) & (
                   distances <= args.dist_thr)).sum()),
               "closeness": report, "missing_files": len(missing), "seconds": time.perf_counter() - started}
    write_json(folder / "closeness.json", summary)
    experiment.finish(n_selected=summary["n_selected"], selected_frechet=report["selected"]["frechet"],
                      random_frechet=report["random"]["frechet"])
    s, r = report["selected"], report["random"]
    print(f"selected {summary['n_selected']} of {len(near)} pool images for {len(target)} targets -> "
          f"{folder / SELECTED_CSV}")
    print(f"{'':10}{'to target':>12}{'coverage':>12}{'Fréchet':>12}")
    for name, values in (("selected", s), ("random", r)):
        print(f"{name:10}{values['to_target']:>12.4f}{values['coverage']:>12.4f}{values['frechet']:>12.4f}")
    return summary


def main(argv=None):
    """``nn_maker.py``: parse, run, one ``error:`` line and exit code 2 on bad input (:func:`helpers.cli.run_cli`)."""
    from helpers.cli import run_cli

    run_cli(build_parser(), run, argv, errors=(OSError,))
    return 0
