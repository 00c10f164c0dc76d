#!/usr/bin/env python3
"""Perceptual hashing end to end (files -> hashes), ours vs imagededup, both with the same number of workers.

The peer is what a user would otherwise run: imagededup's ``PHash().encode_images(folder, num_enc_workers=W)``
(full decode, RGB LANCZOS resize to 32x32, grayscale, DCT; a pool of ``W`` processes). Ours is
``extractor.extract.extract_features([hash], [folder], workers=W)``, the Python API of ``extract_features.py``
(decode, hash, feature store written), in the two decode modes of ``--hash-decode``: ``exact`` (imagehash's bits)
and ``fast`` (reduced-size decoding). Every timed call runs in this process after the imports (imagededup's
``from imagededup.methods import PHash`` and ours are done once before timing), the three sides interleaved,
``--repeat`` times after one untimed warm-up call of each (files in the page cache, lazy imports done); the best
and the median wall time of each are reported, with CPU time (this process and its
workers) and the ratios to imagededup measured in the same run.

Folders (``--folders``; built under ``--work``, never inside the repository):

- ``one_file``: the first BSDS500 photo alone: the fixed cost of one call (listing, store, pool start-up);
- ``bsds500_jpeg``: the 500 BSDS500 photos (JPEG, 481x321);
- ``mixed``: the same 500 JPEGs plus ``--mixed-pngs`` PNG attacked copies of the BSDS500 test photos (written by
  ``generate_attacks.py`` into ``--work/attacks`` when missing);
- ``camera``: ``--camera`` (150) camera-size JPEGs, a stand-in for a folder of phone photos. Real collections are
  8-12 megapixel camera photos, where the full decode that imagededup (and the exact mode) pays grows with the
  pixels while the fast mode's DCT-domain decode at 1/8 scale does not; the 0.15-megapixel BSDS500 files cannot
  show that, and no camera photos can be shipped or downloaded here. So the first ``--camera`` BSDS500 photos are
  upscaled with LANCZOS to 4032x3024 (landscape) or 3024x4032 (portrait), 12.2 megapixels like a phone's main
  camera; Gaussian noise (sigma 3 grey levels per channel, independent per pixel, about a phone sensor's at low
  ISO) is added so that the JPEG holds realistic high-frequency content (a smooth upscale compresses to a
  fraction of a real photo's size and would make the Huffman decoding, which every decode scale pays,
  unrealistically cheap); saved as JPEG quality 90 (4:2:0) with an EXIF orientation tag: every third file is
  stored sideways with orientation 6 (as phones store portrait shots), the others with orientation 1. Built in
  parallel into ``--work/camera_photos`` once (about 1-3 CPU-s per photo), reused afterwards.

Optional parts:

- ``--camera-agreement``: the same for Ahash / Phash / Dhash 64 bits on the camera folder (the fast decode reduces
  them much more: 1/8 scale, then a LANCZOS resize from about 500x380 instead of 4032x3024);
- ``--agreement``: bits of the fast decode against imagehash 4.3.2 itself (mean Hamming distance, % identical
  hashes, largest distance) for Ahash / Phash / Dhash at 64 and 256 bits on the 500 photos, and the exact mode's
  (which must be 0 / 100 %);
- ``--recall``: recall@1 (tie-aware: pessimistic and expected) of Dhash / Phash 64 bits on the seed's 58 attacks of
  the 200 test photos (queries) against the 500 photos (database), exact vs fast decode; the truth is the
  generator's ``ground_truth.csv``.

Example (the figures of docs/hashing.md)::

    flock /work/bench.lock .venv/bin/python benchmarks/bench_hash_end_to_end.py --workers 2 --repeat 3 \\
        --agreement --recall

Camera-size figures (docs/hashing.md)::

    flock /work/bench.lock .venv/bin/python benchmarks/bench_hash_end_to_end.py --workers 2 --repeat 3 \\
        --folders one_file,bsds500_jpeg,camera --camera-agreement \\
        --output benchmarks/results/bench_hash_end_to_end_camera.json

Results: ``benchmarks/results/bench_hash_end_to_end.json`` (``--output``).
"""
import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from helpers.image_io import list_images  # noqa: E402
from helpers.results import write_json  # noqa: E402

MODES = ("exact", "fast")
AGREEMENT_HASHES = ("Ahash 64 bits", "Phash 64 bits", "Dhash 64 bits", "Ahash 256 bits", "Phash 256 bits",
                    "Dhash 256 bits")
RECALL_HASHES = ("Dhash 64 bits", "Phash 64 bits")
CAMERA_AGREEMENT_HASHES = ("Ahash 64 bits", "Phash 64 bits", "Dhash 64 bits")
FOLDERS = ("one_file", "bsds500_jpeg", "mixed", "camera")


def find_bsds(given):
    for candidate in ([Path(given)] if given else []) + [ROOT.parent / "shared" / "datasets" / "BSDS500",
                                                         ROOT / "Datasets" / "BSDS500",
                                                         Path("/work/shared/datasets/BSDS500")]:
        if candidate.is_dir():
            return candidate
    raise SystemExit("error: BSDS500 not found (give --bsds FOLDER)")


def link_folder(folder, files):
    """``folder`` holding one symbolic link per file, under the file's own name (the ground truth names the
    originals by their file names)."""
    names = [Path(path).name for path in files]
    if len(set(names)) != len(names):
        raise SystemExit("error: two files share a name; cannot link them into one flat folder")
    if folder.is_dir() and sorted(p.name for p in folder.iterdir()) == sorted(names):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        path = Path(path).resolve()
        (folder / path.name).symlink_to(path)
    return folder


def attacks_folder(bsds, work, workers):
    attacks = work / "attacks"
    if not (attacks / "ground_truth.csv").is_file():
        from data_retrieval.generate_attacks import generate_attacks

        started = time.time()
        generate_attacks(bsds / "test", attacks, workers=workers, progress=False)
        print(f"attacks of the 200 test photos written in {time.time() - started:.0f} s", flush=True)
    return attacks


CAMERA_SIDES = (4032, 3024)  # a 12-megapixel phone sensor (4:3)
CAMERA_NOISE_SIGMA = 3.0  # grey levels of Gaussian noise per channel, about a phone photo's sensor noise at ISO 100-400
CAMERA_QUALITY = 90
CAMERA_ROTATED_EVERY = 3  # every third file stored sideways with EXIF orientation 6, as phones store portraits


def _camera_photo(job):
    """One camera-size stand-in: ``source`` upscaled (LANCZOS) to 4032x3024 or 3024x4032, noise added, JPEG q90."""
    index, source, target = job
    from PIL import Image

    rng = np.random.default_rng(index)
    with Image.open(source) as original:
        upright = original.convert("RGB")
    size = CAMERA_SIDES if upright.width >= upright.height else CAMERA_SIDES[::-1]
    pixels = np.asarray(upright.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0.0, CAMERA_NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 1
    if index % CAMERA_ROTATED_EVERY == 0:
        # Stored sideways; orientation 6 tells the reader to rotate 270 degrees (ImageOps.exif_transpose), which
        # gives back the upright photo.
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    partial = target.with_suffix(".part")
    image.save(partial, "JPEG", quality=CAMERA_QUALITY, exif=exif.tobytes())
    partial.rename(target)
    return target


def camera_folder(photos, work, count, workers):
    """``work/camera_<count>``: links to ``count`` camera-size JPEG stand-ins built from the first ``count``
    ``photos`` into ``work/camera_photos`` (kept between runs: a file is built only when missing)."""
    built = work / "camera_photos"
    built.mkdir(parents=True, exist_ok=True)
    jobs = [(i, path, built / (Path(path).stem + ".jpg")) for i, path in enumerate(photos[:count])]
    missing = [job for job in jobs if not job[2].is_file()]
    if missing:
        import multiprocessing

        started = time.time()
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_camera_photo, missing):
                pass
        print(f"{len(missing)} camera-size photos written in {time.time() - started:.0f} s", flush=True)
    return link_folder(work / f"camera_{count}", [job[2] for job in jobs])


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_imagededup(folder, workers):
    from imagededup.methods import PHash

    return len(PHash(verbose=False).encode_images(image_dir=str(folder), num_enc_workers=workers))


def run_ours(folder, workers, mode, hash_name, out):
    from extractor.extract import extract_features
    from helpers.feature_store import load_features

    (store,) = extract_features([hash_name], [str(folder)], out=out, workers=workers, force=True, progress=False,
                                hash_decode=mode)
    return len(load_features(store, mmap=True))


def megapixels(folder):
    """Median size of the folder's images: ``(megapixels, megabytes)`` (pixels read from the headers)."""
    from PIL import Image

    sizes, nbytes = [], []
    for path in list_images(folder):
        with Image.open(path) as image:
            sizes.append(image.width * image.height / 1e6)
        nbytes.append(os.path.getsize(path) / 1e6)
    return float(statistics.median(sizes)), float(statistics.median(nbytes))


def time_folder(label, folder, args, out):
    n = len(list_images(folder))
    mpix, mbytes = megapixels(folder)
    sides = {"imagededup PHash": lambda: run_imagededup(folder, args.workers)}
    for mode in MODES:
        sides[f"ours {mode}"] = (lambda m: lambda: run_ours(folder, args.workers, m, args.hash, out))(mode)
    runs = {side: [] for side in sides}
    for side, fn in sides.items():  # untimed warm-up: files in the page cache, lazy imports done, for every side
        fn()
    for repeat in range(args.repeat):
        for side, fn in sides.items():
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            count = fn()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            if count != n:
                raise SystemExit(f"error: {side} hashed {count} of the {n} files of {folder}")
            runs[side].append({"wall_s": wall, "cpu_s": cpu})
            print(f"  [{label} repeat {repeat + 1}] {side}: {wall:.2f} s wall, {cpu:.2f} s cpu", flush=True)
    peer = runs["imagededup PHash"]
    rows = []
    for side, measured in runs.items():
        walls = [r["wall_s"] for r in measured]
        cpus = [r["cpu_s"] for r in measured]
        ratios = [p["wall_s"] / r["wall_s"] for p, r in zip(peer, measured)]
        rows.append({
            "folder": label, "n": n, "hash": args.hash if side != "imagededup PHash" else "imagededup PHash (64 bits)",
            "side": side, "mode": side.split()[-1] if side.startswith("ours") else "imagededup (full decode)",
            "workers": args.workers, "threads": 1, "device": "cpu", "megapixels": mpix,
            "median_file_mb": mbytes,
            "best_wall_s": min(walls), "median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus),
            "files_per_s_best": n / min(walls), "files_per_s_median": n / statistics.median(walls),
            "ratio_to_imagededup_best": min(r["wall_s"] for r in peer) / min(walls),
            "ratio_to_imagededup_median_of_pairs": statistics.median(ratios),
            "cpu_ratio_to_imagededup": statistics.median([r["cpu_s"] for r in peer]) / statistics.median(cpus),
            "runs": measured,
        })
    return rows


def print_rows(rows):
    print(f"{'folder':13s} {'n':>5s} {'MP':>5s} {'side':17s} {'hash':26s} {'workers':>7s} {'threads':>7s} {'device':6s} "
          f"{'files/s best':>12s} {'files/s med':>11s} {'ratio best':>10s} {'ratio med':>9s} {'cpu ratio':>9s}")
    for r in rows:
        print(f"{r['folder']:13s} {r['n']:5d} {r['megapixels']:5.2f} {r['side']:17s} {r['hash']:26s} {r['workers']:7d} {r['threads']:7d} "
              f"{r['device']:6s} {r['files_per_s_best']:12.1f} {r['files_per_s_median']:11.1f} "
              f"{r['ratio_to_imagededup_best']:9.2f}x {r['ratio_to_imagededup_median_of_pairs']:8.2f}x "
              f"{r['cpu_ratio_to_imagededup']:8.2f}x")


def agreement(files, hashes=AGREEMENT_HASHES, label="BSDS500 photos"):
    """Fast and exact decode against imagehash itself (on the exactly decoded image, EXIF orientation applied),
    per hash."""
    import imagehash
    from PIL import Image

    from extractor import hashing as H
    from helpers.image_io import load_image

    calls = {"ahash": imagehash.average_hash, "phash": imagehash.phash, "dhash": imagehash.dhash}
    specs = H.resolve_hash_specs(hashes)
    out = {}
    distances = {(spec.name, mode): [] for spec in specs for mode in MODES}
    for path in files:
        image = load_image(path)
        for spec in specs:
            reference = calls[spec.kind](image, hash_size=spec.hash_size).hash.ravel()
            for mode in MODES:
                decoded = H.load_for_hashing(path, [spec], decode=mode)
                bits = spec.unpack(H.compute_hashes(decoded, [spec])[0]).ravel()
                distances[(spec.name, mode)].append(int(np.count_nonzero(bits != reference)))
        assert isinstance(image, Image.Image)
    for (name, mode), values in distances.items():
        values = np.asarray(values)
        out.setdefault(name, {})[mode] = {"mean_hamming": float(values.mean()),
                                          "identical_pct": float(100 * np.mean(values == 0)),
                                          "max_hamming": int(values.max()), "n": int(values.size)}
    print(f"bit agreement with imagehash 4.3.2 on {len(files)} {label} (fast decode keeps "
          f">= {H.FAST_DECODE_FACTOR}x the resize size):")
    print(f"  {'hash':16s} {'mode':6s} {'mean Hamming':>12s} {'identical':>9s} {'max':>4s}")
    for name, modes in out.items():
        for mode, v in modes.items():
            print(f"  {name:16s} {mode:6s} {v['mean_hamming']:12.3f} {v['identical_pct']:8.1f}% {v['max_hamming']:4d}")
    return out


def recall(database, attacks, work, workers):
    """Recall@1 of the attack queries against the 500 photos, per hash and decode mode."""
    from extractor.extract import extract_features
    from fast_search import metrics as M
    from fast_search.search import Experiment

    out = {}
    for mode in MODES:
        features = work / f"Features_recall_{mode}"
        extract_features(list(RECALL_HASHES), [str(database), str(attacks)], out=features, progress=False,
                         workers=workers, hash_decode=mode)
        for algorithm in RECALL_HASHES:
            exp = Experiment(algorithm, str(database), str(attacks), features_root=features, device="cpu")
            exp.set_index("Flat", "hamming")
            exp.search(k=1)
            pes, expected, _, _ = M.tie_aware_hits(exp.D, exp.I, exp.identifiers_db, exp.identifiers_query, 1,
                                                   exp.n)
            positive = exp.has_original
            n_queries = int(np.count_nonzero(positive))
            out.setdefault(algorithm, {})[mode] = {
                "recall_at_1_pessimistic": float(np.asarray(pes)[positive].mean()),
                "recall_at_1_expected": float(np.asarray(expected)[positive].mean()),
                "queries": n_queries, "database": int(exp.n)}
            exp.close()
    print("recall@1 (pessimistic / expected) of the seed's attacks of the 200 test photos vs the 500 photos:")
    for algorithm, modes in out.items():
        for mode, v in modes.items():
            print(f"  {algorithm:15s} {mode:6s} {v['recall_at_1_pessimistic']:.4f} / {v['recall_at_1_expected']:.4f} "
                  f"({v['queries']} queries, {v['database']} images)")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--bsds", default=None, help="BSDS500 folder (default: ../shared/datasets/BSDS500)")
    parser.add_argument("--work", default="/tmp/bench_hash_end_to_end",
                        help="where the folders, attacks and stores are built (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of both sides (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default: %(default)s)")
    parser.add_argument("--hash", default="Phash 64 bits", help="our hash (default: %(default)s, imagededup's PHash)")
    parser.add_argument("--mixed-pngs", type=int, default=2500,
                        help="PNG attacked copies added to the 500 JPEGs in the mixed folder; 0 leaves it out "
                             "(default: %(default)s)")
    parser.add_argument("--camera", type=int, default=150,
                        help="camera-size stand-ins in the camera folder (default: %(default)s)")
    parser.add_argument("--folders", default="bsds500_jpeg,mixed",
                        help=f"comma-separated folders to time, among {','.join(FOLDERS)} (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (a quick check)")
    parser.add_argument("--agreement", action="store_true", help="also measure the bit agreement with imagehash")
    parser.add_argument("--camera-agreement", action="store_true",
                        help=f"also measure it on the camera folder ({', '.join(CAMERA_AGREEMENT_HASHES)})")
    parser.add_argument("--recall", action="store_true", help="also measure recall@1 on the attacks, exact vs fast")
    parser.add_argument("--skip-timing", action="store_true", help="only --agreement / --recall")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_hash_end_to_end.json"))
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeat < 1 or args.camera < 1:
        parser.error("--workers, --repeat and --camera must be positive")
    wanted = [name.strip() for name in args.folders.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(FOLDERS))
    if unknown:
        parser.error(f"unknown folder(s) {', '.join(unknown)}; choose among {', '.join(FOLDERS)}")

    bsds = find_bsds(args.bsds)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = [str(p) for p in list_images(bsds)]
    if args.limit:
        photos = photos[:args.limit]
    jpeg = link_folder(work / "bsds500_jpeg", photos)
    available = {"one_file": lambda: link_folder(work / "one_file", photos[:1]), "bsds500_jpeg": lambda: jpeg}
    attacks = None
    if ("mixed" in wanted and args.mixed_pngs) or args.recall:
        attacks = attacks_folder(bsds, work, args.workers)
    if "mixed" in wanted and args.mixed_pngs:
        pngs = [str(p) for p in list_images(attacks) if p.suffix.lower() == ".png"][:args.mixed_pngs]
        available["mixed"] = lambda: link_folder(work / "mixed", photos + pngs)
    camera = None
    if "camera" in wanted or args.camera_agreement:
        camera = camera_folder(photos, work, args.camera, args.workers)
        available["camera"] = lambda: camera
    folders = [(label, available[label]()) for label in wanted if label in available]

    import imagededup
    import threadpoolctl
    from imagededup.methods import PHash  # noqa: F401  (imported before timing, like ours)

    import extractor.extract  # noqa: F401
    from extractor.hashing import FAST_DECODE_FACTOR

    threadpoolctl.threadpool_limits(1)  # both sides: one BLAS thread per process (the workers use the cores)
    load = os.getloadavg()
    setup = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "load_average_start": load, "workers": args.workers, "repeat": args.repeat, "hash": args.hash,
             "peer": f"imagededup {imagededup.__version__} PHash().encode_images(num_enc_workers={args.workers})",
             "ours": "extractor.extract.extract_features (extract_features.py's API, store written), --hash-decode",
             "fast_decode_factor": FAST_DECODE_FACTOR, "device": "cpu", "threads": 1,
             "camera": {"n": args.camera, "size": list(CAMERA_SIDES), "noise_sigma": CAMERA_NOISE_SIGMA,
                        "jpeg_quality": CAMERA_QUALITY, "orientation_6_every": CAMERA_ROTATED_EVERY,
                        "source": "first BSDS500 photos, LANCZOS upscale"}}
    print(f"cpus {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; workers {args.workers}, "
          f"repeat {args.repeat}, threads 1, device cpu", flush=True)
    results = {"setup": setup, "timing": [], "folders": {label: str(path) for label, path in folders}}
    out = work / "Features"
    if not args.skip_timing:
        for label, folder in folders:
            rows = time_folder(label, folder, args, out)
            results["timing"].extend(rows)
            print_rows(rows)
            write_json(args.output, results)  # kept if a later part fails
    if args.agreement:
        results["agreement"] = agreement(photos)
        write_json(args.output, results)
    if args.camera_agreement:
        results["agreement_camera"] = agreement([str(p) for p in list_images(camera)], CAMERA_AGREEMENT_HASHES,
                                                "camera-size stand-ins")
        write_json(args.output, results)
    if args.recall:
        results["recall"] = recall(jpeg, attacks, work, args.workers)
    results["setup"]["load_average_end"] = os.getloadavg()
    print(f"load average at the end {results['setup']['load_average_end'][0]:.2f}")
    write_json(args.output, results)
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
