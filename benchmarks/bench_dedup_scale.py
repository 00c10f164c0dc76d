#!/usr/bin/env python3
"""find_duplicates at scale: all pairs within a threshold among ``--n`` feature vectors on one machine.

Data (synthetic, written chunk by chunk to a memory-mapped ``.npy``): ``n - n/10`` "originals" (clustered,
L2-normalised, ``--dim`` values; two images of one cluster have cosine ~0.3, as unrelated photos of one kind) and
``n/10`` edited copies, each of a distinct original, whose cosine to it follows the one measured between real
edited copies and their originals: ``1 - cos`` log-normal with median 0.09 and 95th percentile 0.29 (cosine median
0.91, 5th percentile 0.71). Hash variant (``--binary``): 64-bit codes, copies with a log-normal number of flipped
bits (median 6).

The search (:func:`dedup.scale.large_self_pairs`, in a fresh process so its peak memory is its own): IVF-SQ8 by default (or
binary IVF; ``--factory`` for others) trained on 100K rows, range search in batches from the memory map, exact verification. Printed: n, d,
index, nprobe, threshold, build and search time, peak resident memory, pairs found, recall of the planted pairs
that are within the threshold (the approximate search's loss), false pairs among originals, and the load average.
Saved as ``benchmarks/results/dedup_scale[_binary]_<n>.json``.

Example::

    nice -n 10 python3 benchmarks/bench_dedup_scale.py --n 1000000 --threads 2
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHUNK = 65536


def generate(path, n, dim, binary, seed=0):
    """Write the features to ``path`` (``.npy``) and the planted pairs to ``path.pairs.npy``."""
    from fast_search.synthetic import copies_at_cosine

    rng = np.random.default_rng(seed)
    n_copies = n // 10
    n_orig = n - n_copies
    if binary:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, dim // 8))
        for start in range(0, n_orig, CHUNK):
            stop = min(n_orig, start + CHUNK)
            out[start:stop] = rng.integers(0, 256, size=(stop - start, dim // 8), dtype=np.uint8)
    else:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        centres = rng.standard_normal((1000, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        for start in range(0, n_orig, CHUNK):
            stop = min(n_orig, start + CHUNK)
            block = centres[rng.integers(0, 1000, stop - start)] + \
                rng.standard_normal((stop - start, dim), dtype=np.float32) * (1.5 / dim ** 0.5)
            out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sources = np.sort(rng.choice(n_orig, n_copies, replace=False))
    gap = np.exp(rng.normal(np.log(0.09), (np.log(0.29) - np.log(0.09)) / 1.645, n_copies))
    for start in range(0, n_copies, CHUNK):
        stop = min(n_copies, start + CHUNK)
        original = np.asarray(out[sources[start:stop]])
        if binary:
            flips = np.clip(np.round(gap[start:stop] / 0.09 * 6), 0, dim).astype(int)
            bits = np.unpackbits(original, axis=1)
            for row, count in enumerate(flips):
                bits[row, rng.choice(dim, count, replace=False)] ^= 1
            out[n_orig + start:n_orig + stop] = np.packbits(bits, axis=1)
        else:
            cos = np.clip(1.0 - gap[start:stop], -1.0, 0.9999)
            out[n_orig + start:n_orig + stop] = copies_at_cosine(original, cos, rng)
    out.flush()
    del out
    np.save(f"{path}.pairs.npy", np.stack([sources, np.arange(n_orig, n)], axis=1), allow_pickle=False)


def find(path, threshold, binary, nprobe, factory, batch_size, threads):
    """Run in a fresh process: the search, its time and its peak memory."""
    import faiss

    from dedup.features import paired_distances
    from dedup.scale import large_self_pairs

    faiss.omp_set_num_threads(threads)
    features = np.load(path, mmap_mode="r", allow_pickle=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tick = time.perf_counter()
    a, b, d, info = large_self_pairs(features, threshold, binary, factory=factory, nprobe=nprobe,
                                     batch_size=batch_size)
    seconds = time.perf_counter() - tick
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    planted = np.load(f"{path}.pairs.npy", allow_pickle=False)
    true_d = paired_distances(np.asarray(features[planted[:, 0]]), np.asarray(features[planted[:, 1]]), binary)
    within = planted[true_d <= threshold]
    found = set(zip(a.tolist(), b.tolist()))
    hit = sum((int(x), int(y)) in found for x, y in within)
    n_orig = len(features) - len(planted)
    false_pairs = int(np.sum(b < n_orig))  # both ends originals: unrelated images
    return {"n": int(len(features)), "dim": int(features.shape[1] * (8 if binary else 1)), "binary": binary,
            "factory": info["factory"], "nprobe": nprobe, "threshold": threshold, "seconds": seconds,
            "build_s": info["timings"]["build_s"], "search_s": info["timings"]["search_s"],
            "peak_rss_mib": peak_kib / 1024, "rss_before_mib": before / 1024, "pairs": int(len(a)),
            "candidates": info["candidates"], "planted": int(len(planted)), "planted_within": int(len(within)),
            "planted_within_found": int(hit), "recall_of_pairs_within": hit / max(1, len(within)),
            "recall_of_all_planted": hit / max(1, len(planted)), "false_pairs_among_originals": false_pairs,
            "index_bytes_per_vector": info["index_bytes_per_vector"], "threads": threads,
            "planted_cosine_median": float(np.median(1 - true_d)) if not binary else None,
            "planted_cosine_p5": float(np.percentile(1 - true_d, 5)) if not binary else None,
            "planted_bits_median": float(np.median(true_d)) if binary else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=None, help="default: 256 (floats), 64 bits (--binary)")
    parser.add_argument("--binary", action="store_true", help="64-bit hash codes, binary IVF")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine distance (default 0.25 = similarity 0.75) or bits (default 10)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--factory", default=None)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "scale"))
    parser.add_argument("--stage", choices=["all", "find"], default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dim = args.dim or (64 if args.binary else 256)
    threshold = args.threshold if args.threshold is not None else (10.0 if args.binary else 0.25)
    path = Path(args.out) / f"{'codes' if args.binary else 'vectors'}_{args.n}_{dim}.npy"
    if args.stage == "find":
        result = find(str(path), threshold, args.binary, args.nprobe, args.factory, args.batch_size, args.threads)
        print(json.dumps(result))
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tick = time.perf_counter()
        generate(str(path), args.n, dim, args.binary)
        print(f"generated {args.n} x {dim} in {time.perf_counter() - tick:.0f} s ({path})")
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, "--stage", "find", "--n", str(args.n), "--dim", str(dim), "--threshold",
               str(threshold), "--nprobe", str(args.nprobe), "--batch-size", str(args.batch_size), "--threads",
               str(args.threads), "--out", args.out] + (["--binary"] if args.binary else []) + \
        (["--factory", args.factory] if args.factory else [])
    done = subprocess.run(command, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_before"], result["load_average_after"] = load, os.getloadavg()[0]
    score = f"{threshold:g} bits" if args.binary else f"cosine >= {1 - threshold:.2f}"
    planted = "" if args.binary else (f" (planted copies' cosine: median {result['planted_cosine_median']:.3f}, "
                                      f"5th percentile {result['planted_cosine_p5']:.3f})")
    print(f"n={result['n']} d={result['dim']} {result['factory']} nprobe={args.nprobe} threshold {score}{planted}: "
          f"{result['seconds']:.0f} s (build {result['build_s']:.0f} s, range search + exact check "
          f"{result['search_s']:.0f} s), peak memory {result['peak_rss_mib']:.0f} MiB, "
          f"{result['index_bytes_per_vector']:.0f} index bytes/vector; {result['pairs']} pairs; planted pairs within "
          f"the threshold found: {result['recall_of_pairs_within']:.3f} ({result['planted_within_found']}/"
          f"{result['planted_within']}; {result['recall_of_all_planted']:.3f} of all {result['planted']}); false "
          f"pairs among originals {result['false_pairs_among_originals']}; threads {args.threads}, load average "
          f"{load:.1f} -> {result['load_average_after']:.1f}")
    from helpers.results import write_json

    name = f"dedup_scale{'_binary' if args.binary else ''}_{args.n}.json"
    write_json(ROOT / "benchmarks" / "results" / name, result)
    return result


if __name__ == "__main__":
    main()
