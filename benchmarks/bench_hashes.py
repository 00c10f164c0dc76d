#!/usr/bin/env python3
"""Perceptual hashing speed: ``extractor.hashing`` against imagehash 4.3.2, with a bit-for-bit identity check.

What is timed, per hash size (8 and 16 by default), over every image of the dataset (BSDS500: train + val + test,
500 JPEGs of 481x321 or 321x481):

- the **four hashes** ``average_hash``, ``phash``, ``dhash``, ``whash`` (default arguments) of each decoded RGB image
  (``helpers.image_io.load_image``), in this process with one BLAS thread, on both sides:
  imagehash = the four function calls a user would write; ours = one ``compute_hashes`` call with the four specs;
- the same with both hash sizes at once (8 hashes);
- end to end from the files (decode + hashes), one process, both sides;
- optionally (``--workers N``, N > 1), ours over N processes (``hash_images``), end to end; labelled separately.

Decoding is timed once and excluded from the hash-only numbers (both sides hash the same in-memory image).
Each measurement is repeated ``--repeat`` times with the two sides interleaved; the fastest run of each side is
reported (the machine is shared, the fastest is the least disturbed run) with the median next to it, in wall time
and in CPU time of this process (``time.process_time``: on a shared machine, wall time also counts the time other
jobs held the cores).
Every bit of every hash of every image is compared with imagehash's; the script exits with status 1 on any
difference. Results: ``benchmarks/results/bench_hashes.json``.

Run: ``.venv/bin/python benchmarks/bench_hashes.py`` (about 2 minutes on 2 cores).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from helpers.cli import add_common_arguments, parse_args, resolved_config  # noqa: E402
from helpers.datasets import resolve_dataset  # noqa: E402
from helpers.image_io import ImageLoadError, SkipReport, load_image  # noqa: E402
from helpers.log import get_logger, setup_logging  # noqa: E402
from helpers.results import write_json  # noqa: E402
from timing import summarise, time_sides  # noqa: E402  (benchmarks/timing.py)

logger = get_logger("bench_hashes")
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "BSDS500"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "bench_hashes.json"
KINDS = ("ahash", "phash", "dhash", "whash")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET),
                        help="dataset name or image folder, read recursively (default: %(default)s)")
    parser.add_argument("--hash-sizes", type=int, nargs="+", default=[8, 16],
                        help="hash sizes to time (bits = size^2) (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repetitions of each side, interleaved (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="also time ours end to end over this many processes; 1 to skip (default: %(default)s)")
    parser.add_argument("--crop-images", type=int, default=40,
                        help="also time the crop-resistant hash on the first N images (imagehash takes about 0.4 s "
                             "per image); 0 to skip (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file (default: %(default)s)")
    add_common_arguments(parser, device=False, seed=False, force=False)
    return parser


def _imagehash_functions(hash_size):
    import imagehash

    return [
        lambda im: imagehash.average_hash(im, hash_size=hash_size),
        lambda im: imagehash.phash(im, hash_size=hash_size),
        lambda im: imagehash.dhash(im, hash_size=hash_size),
        lambda im: imagehash.whash(im, hash_size=hash_size),
    ]


def _specs(hash_size):
    from extractor import hashing

    return [hashing.Ahash(hash_size), hashing.Phash(hash_size), hashing.Dhash(hash_size), hashing.Whash(hash_size)]


def _ratios(times):
    """imagehash time / our time, from the fastest run of each side and from the medians, per clock."""
    return {f"{clock}_{stat.__name__}": stat(times["imagehash"][clock]) / stat(times["ours"][clock])
            for clock in ("wall", "cpu") for stat in (min, statistics.median)}


def _line(result):
    them, us, ratio = result["imagehash"], result["ours"], result["ratio"]
    return (f"imagehash {them['wall']['ms_per_image_min']:.2f} ms/img wall ({them['cpu']['ms_per_image_min']:.2f} "
            f"cpu) | ours {us['wall']['ms_per_image_min']:.2f} ms/img wall ({us['cpu']['ms_per_image_min']:.2f} "
            f"cpu) | ratio {ratio['wall_min']:.2f}x wall, {ratio['cpu_min']:.2f}x cpu (medians "
            f"{ratio['wall_median']:.2f}x, {ratio['cpu_median']:.2f}x)")


def _check(names, ours_rows, their_hashes):
    """Count bit differences between our packed rows and imagehash's hashes, per hash."""
    differences = {}
    for k, name in enumerate(names):
        bad = 0
        for rows, hashes in zip(ours_rows, their_hashes):
            expected = np.packbits(np.asarray(hashes[k].hash, dtype=bool).flatten())
            bad += int(not np.array_equal(rows[k], expected))
        differences[name] = bad
    return differences


def _measure(label, images, specs, functions, repeat, stats_extra=None):
    from extractor.hashing import compute_hashes

    n = len(images)

    def ours(image):
        return compute_hashes(image, specs)

    def theirs(image):
        return [fn(image) for fn in functions]

    # Warm-up on both sides: imports, and one image of each size (our filter coefficients and product plans are
    # cached per image size; with a few distinct sizes that cost belongs to the first images, not to every one).
    by_size = {}
    for image in images:
        by_size.setdefault(image.size, image)
    for image in list(by_size.values())[:20]:
        ours(image), theirs(image)
    times, outputs = time_sides(images, {"imagehash": theirs, "ours": ours}, repeat)
    names = [spec.name for spec in specs]
    differences = _check(names, outputs["ours"], outputs["imagehash"])
    stats = {}
    for image in images:
        compute_hashes(image, specs, stats=stats)
    result = {
        "label": label, "n": n, "hashes": names, "threads": 1, "processes": 1, "device": "cpu",
        "imagehash": summarise(times["imagehash"], n), "ours": summarise(times["ours"], n), "ratio": _ratios(times),
        "images_with_a_difference_per_hash": differences, "bits_identical": not any(differences.values()),
        "bits_compared": n * sum(spec.bits for spec in specs),
        "whash_pywt_fallbacks": stats.get("whash_fallbacks", 0),
    }
    if stats_extra:
        result.update(stats_extra)
    print(f"{label}: n={n} images, hashes={'+'.join(names)}, 1 process, 1 BLAS thread, cpu | {_line(result)} | "
          f"bits identical: {result['bits_identical']} ({result['bits_compared']} bits; whash PyWavelets "
          f"fallbacks: {result['whash_pywt_fallbacks']})", flush=True)
    return result


def _end_to_end(paths, specs, functions, repeat):
    from extractor.hashing import compute_hashes

    def ours(path):
        return compute_hashes(load_image(path), specs)

    def theirs(path):
        image = load_image(path)
        return [fn(image) for fn in functions]

    times, _ = time_sides(paths, {"imagehash": theirs, "ours": ours}, repeat)
    n = len(paths)
    result = {"label": "end to end (decode + 4 hashes)", "n": n, "hashes": [spec.name for spec in specs],
              "threads": 1, "processes": 1, "device": "cpu", "imagehash": summarise(times["imagehash"], n),
              "ours": summarise(times["ours"], n), "ratio": _ratios(times)}
    print(f"end to end from files (load_image + {len(specs)} hashes): n={n}, 1 process, 1 BLAS thread, cpu | "
          f"{_line(result)}", flush=True)
    return result


def _crop_resistant(images):
    import imagehash

    from extractor.hashing import CropResistantHash, compute_hashes

    spec = CropResistantHash()
    start = time.process_time()
    rows = [compute_hashes(image, [spec])[0] for image in images]
    ours = time.process_time() - start
    start = time.process_time()
    refs = [imagehash.crop_resistant_hash(image, limit_segments=spec.max_segments) for image in images]
    theirs = time.process_time() - start
    differences = 0
    for row, ref in zip(rows, refs):
        segments = spec.unpack(row)
        same = len(segments) == len(ref.segment_hashes) and all(
            np.array_equal(a, b.hash) for a, b in zip(segments, ref.segment_hashes))
        differences += int(not same)
    n = len(images)
    result = {"label": "crop-resistant hash", "n": n, "hashes": [spec.name], "threads": 1, "processes": 1,
              "clock": "cpu (process_time)",
              "device": "cpu", "imagehash_ms_per_image": 1e3 * theirs / n, "ours_ms_per_image": 1e3 * ours / n,
              "ratio": theirs / ours, "images_with_a_difference": differences, "bits_identical": differences == 0}
    print(f"crop-resistant hash (limit_segments=16): n={n}, 1 process, cpu | imagehash "
          f"{result['imagehash_ms_per_image']:.1f} ms/img cpu | ours {result['ours_ms_per_image']:.1f} ms/img cpu | ratio "
          f"{result['ratio']:.1f}x | segment hashes identical: {result['bits_identical']}", flush=True)
    return result


def _multiprocess(paths, specs, workers):
    from extractor.hashing import hash_images

    start = time.perf_counter()
    kept, _ = hash_images(paths, specs, workers=workers)
    seconds = time.perf_counter() - start
    result = {"label": f"ours end to end, {workers} processes", "n": len(kept), "processes": workers,
              "threads": 1, "device": "cpu", "hashes": [spec.name for spec in specs], "seconds": seconds,
              "ms_per_image": 1e3 * seconds / max(1, len(kept)), "note": "includes process start-up"}
    print(f"ours end to end over {workers} processes (hash_images, decode included, start-up included): "
          f"n={len(kept)}, {result['ms_per_image']:.2f} ms/img ({seconds:.2f} s wall)", flush=True)
    return result


def main(argv=None):
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging(args.log_level)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for size in args.hash_sizes:
        if size < 2 or size & (size - 1):
            parser.error(f"--hash-sizes: {size} is not a power of 2 >= 2 (whash needs a power of 2)")
    try:
        import imagehash
    except ImportError:
        parser.error("imagehash is the peer of this benchmark: pip install -r requirements-dev.txt")
    from threadpoolctl import threadpool_limits

    from extractor import _lanczos

    threadpool_limits(1)
    try:
        dataset = resolve_dataset(args.dataset)
        report = SkipReport()
        paths = dataset.image_paths(report=report)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        parser.error(f"no images in {args.dataset}")

    start = time.perf_counter()
    images, kept = [], []
    for path in paths:
        try:
            images.append(load_image(path))
            kept.append(path)
        except ImageLoadError as exc:
            report.add(path, exc)
    decode = time.perf_counter() - start
    report.warn(logger)
    sizes = sorted({image.size for image in images})
    print(f"dataset {dataset.name}: n={len(images)} images, sizes {sizes[:4]}{' ...' if len(sizes) > 4 else ''}; "
          f"decode (load_image, RGB) {1e3 * decode / len(images):.2f} ms/img, not included in the hash-only numbers",
          flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), load average "
          f"{os.getloadavg()[0]:.1f}; Pillow pass order: {_lanczos.pillow_pass_order()}", flush=True)

    results = []
    for size in args.hash_sizes:
        results.append(_measure(f"hash_size={size}", images, _specs(size), _imagehash_functions(size),
                                args.repeat))
    if len(args.hash_sizes) > 1:
        specs = [spec for size in args.hash_sizes for spec in _specs(size)]
        functions = [fn for size in args.hash_sizes for fn in _imagehash_functions(size)]
        results.append(_measure(f"hash_size={'+'.join(map(str, args.hash_sizes))} at once", images, specs,
                                functions, args.repeat))
    first = args.hash_sizes[0]
    end_to_end = _end_to_end(kept, _specs(first), _imagehash_functions(first), max(1, args.repeat - 1))
    multi = _multiprocess(kept, _specs(first), args.workers) if args.workers > 1 else None
    crop = _crop_resistant(images[: args.crop_images]) if args.crop_images > 0 else None

    import PIL
    import pywt
    import scipy

    payload = {
        "benchmark": "bench_hashes", "dataset": dataset.name, "dataset_path": str(args.dataset), "n": len(images),
        "decode_ms_per_image": 1e3 * decode / len(images), "results": results, "end_to_end": end_to_end,
        "multiprocess": multi, "crop_resistant": crop,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "shared": True, "load_average_end": os.getloadavg()},
        "versions": {"imagehash": imagehash.__version__, "numpy": np.__version__, "Pillow": PIL.__version__,
                     "scipy": scipy.__version__, "pywt": pywt.__version__, "python": platform.python_version()},
        "pillow_pass_order": _lanczos.pillow_pass_order(),
        "config": resolved_config(args),
    }
    write_json(args.out, payload)
    print(f"results written to {args.out}")
    identical = all(result["bits_identical"] for result in results) and (crop is None or crop["bits_identical"])
    if not identical:
        print("error: some hashes differ from imagehash", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
