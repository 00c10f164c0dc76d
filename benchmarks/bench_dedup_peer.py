#!/usr/bin/env python3
"""Duplicate finding, ours vs imagededup, on one folder of originals + edited copies + unrelated photos.

The folder: ``--originals`` photos of BSDS500 (``../shared/datasets/BSDS500`` or ``Datasets/BSDS500``), each with
one edited copy per everyday edit family (:data:`dedup.testset.EVERYDAY_FAMILIES`: jpeg, scale, crop,
enhancement, text; the project's attack generator), plus ``--unrelated`` other photos (BSDS500 and scikit-image's
sample photos). Every method sees the same folder; the ground truth is its ``ground_truth.csv``.

Methods: imagededup's PHash, DHash, AHash, WHash (default ``max_distance_threshold=10``) and CNN (default
``min_similarity_threshold=0.9``; its MobileNetV3 weights are downloaded by torchvision on first use, so offline
it fails and the error is reported), and ours (``find_duplicates``, calibrated threshold at precision 0.99) with
the algorithms of ``--ours``. Prints pair precision, pair recall (all pairs of images of the same original) and
wall time of each, and the recall per edit family; saves ``benchmarks/results/dedup_peer.json``.

Example::

    nice -n 10 python3 benchmarks/bench_dedup_peer.py --ours "Phash 64 bits" EfficientNet-Lite0
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dedup.testset import EVERYDAY_FAMILIES, build_folder, pair_scores, read_ground_truth  # noqa: E402
from helpers.image_io import list_images  # noqa: E402
from helpers.results import write_json  # noqa: E402

SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "motorcycle_left", "moon", "coins", "brick", "grass", "gravel", "page", "text")
IMAGEDEDUP_HASHES = ("PHash", "DHash", "AHash", "WHash")


def bsds_photos():
    for candidate in (ROOT.parent / "shared" / "datasets" / "BSDS500", ROOT / "Datasets" / "BSDS500",
                      Path("/work/shared/datasets/BSDS500")):
        if candidate.is_dir():
            return [str(p) for p in list_images(candidate)]
    raise SystemExit("error: BSDS500 not found (../shared/datasets/BSDS500 or Datasets/BSDS500)")


def skimage_photos():
    import skimage.data
    from PIL import Image

    images = []
    for name in SKIMAGE_PHOTOS:
        try:
            array = getattr(skimage.data, name)()
        except Exception as exc:  # noqa: BLE001 - a sample that needs a download offline: leave it out
            print(f"  scikit-image {name}: not available ({type(exc).__name__})")
            continue
        images.append(Image.fromarray(array).convert("RGB"))
    return images


def make_folder(folder, n_originals, n_unrelated, seed):
    if (folder / "ground_truth.csv").is_file():
        return folder
    photos = bsds_photos()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    extra = skimage_photos()
    n_bsds_unrelated = max(0, n_unrelated - len(extra))
    originals = [photos[i] for i in order[:n_originals]]
    unrelated = [photos[i] for i in order[n_originals:n_originals + n_bsds_unrelated]] + extra[:n_unrelated]
    build_folder(folder, originals, unrelated, families=EVERYDAY_FAMILIES, seed=seed)
    return folder


def imagededup_pairs(method_name, folder, workers):
    """(pairs, seconds, error) of one imagededup method at its default threshold."""
    import imagededup.methods as methods

    start = time.perf_counter()
    try:
        method = getattr(methods, method_name)(verbose=False) if method_name == "CNN" else \
            getattr(methods, method_name)(verbose=False)
        if method_name == "CNN":
            found = method.find_duplicates(image_dir=str(folder), recursive=True, num_enc_workers=0,
                                           num_sim_workers=workers)
        else:
            found = method.find_duplicates(image_dir=str(folder), recursive=True, num_enc_workers=workers,
                                           num_dist_workers=workers)
    except Exception as exc:  # noqa: BLE001 - report the peer's failure as it is
        return None, time.perf_counter() - start, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    seconds = time.perf_counter() - start
    pairs = {(str(folder / a), str(folder / b)) for a, dups in found.items() for b in dups}
    return pairs, seconds, None


def ours_pairs(algo, folder, out, precision, sample, workers):
    from dedup.find import run_find
    from dedup.report import read_pairs_csv

    start = time.perf_counter()
    lines = []
    algo, _, verify = algo.partition("+")
    summary = run_find(path=str(folder), output=str(out), algo=algo, verify_with=verify or None,
                       precision=precision,
                       calibration_sample=sample, workers=workers, device="cpu", force=True, echo=lines.append)
    seconds = time.perf_counter() - start
    pairs = {(row["a"], row["b"]) for row in read_pairs_csv(out / "pairs.csv")}
    return pairs, seconds, summary, lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "dedup_peer"), help="work folder")
    parser.add_argument("--originals", type=int, default=50)
    parser.add_argument("--unrelated", type=int, default=100)
    parser.add_argument("--ours", nargs="*", default=["Phash 64 bits", "EfficientNet-Lite0",
                                                      "Phash 64 bits+EfficientNet-Lite0"],
                        help="our algorithms; HASH+MODEL is the cascade (default: %(default)s)")
    parser.add_argument("--peers", nargs="*", default=list(IMAGEDEDUP_HASHES) + ["CNN"])
    parser.add_argument("--precision", type=float, default=0.99)
    parser.add_argument("--calibration-sample", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "dedup_peer.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    folder = make_folder(out / "folder", args.originals, args.unrelated, args.seed)
    truth = read_ground_truth(folder)
    n_images = len(list_images(folder))
    print(f"folder: {n_images} images ({args.originals} originals x {len(EVERYDAY_FAMILIES)} edited copies "
          f"[{', '.join(EVERYDAY_FAMILIES)}] + {args.unrelated} unrelated); load average before: "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    rows = []
    for name in args.peers:
        pairs, seconds, error = imagededup_pairs(name, folder, args.workers)
        row = {"method": f"imagededup {name} (default threshold)", "seconds": seconds, "error": error}
        if pairs is not None:
            row.update(pair_scores(pairs, truth))
        rows.append(row)
        print(_line(row))
    for algo in args.ours:
        pairs, seconds, summary, lines = ours_pairs(algo, folder, out / f"ours_{algo.replace(' ', '_').replace('+', '_then_')}",
                                                    args.precision, args.calibration_sample, args.workers)
        name = f"cascade {algo.replace('+', ' -> ')}" if "+" in algo else algo
        row = {"method": f"ours {name} (calibrated, precision {args.precision})", "seconds": seconds,
               "threshold": summary["threshold"], "shortlist_distance": summary["shortlist_distance"],
               "cascade": summary["cascade"], "timings": summary["timings"],
               "calibration": summary["calibration"], "error": None}
        row.update(pair_scores(pairs, truth))
        rows.append(row)
        print(_line(row))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    write_json(args.results, {"images": n_images, "originals": args.originals, "unrelated": args.unrelated,
                              "families": list(EVERYDAY_FAMILIES), "rows": rows,
                              "load_average_end": os.getloadavg()[0], "cpus": os.cpu_count()})
    return rows


def _line(row):
    if row.get("error"):
        return f"{row['method']:<58s} FAILED after {row['seconds']:.1f} s: {row['error']}"
    families = " ".join(f"{k}={v:.2f}" for k, v in row["recall_per_family"].items())
    return (f"{row['method']:<58s} precision {row['pair_precision']:.3f} recall {row['pair_recall']:.3f} "
            f"({row['correct_pairs']}/{row['true_pairs']}, {row['found_pairs']} found) {row['seconds']:6.1f} s | "
            f"{families}")


if __name__ == "__main__":
    main()
