#!/usr/bin/env python3
"""CPU extraction speed of a pretrained model: ``extract_features`` against the plain torch loop a user would write.

Both run in the same process on the same images (BSDS500 photos by default), interleaved round by round so that a
shared machine's load hits both alike:

- **plain loop (peer)**: PIL ``Image.open(...).convert('RGB')``, the torchvision ``Compose`` of the model's
  preprocessing (:func:`extractor.transforms.reference_transform`), ``torch.stack`` of ``--batch-size`` images, the
  model in fp32 under ``torch.no_grad`` with torch's default threads, ``.numpy()`` after every batch. Its model is
  built before the clock starts (in its favour);
- **extract_features (ours)**: the production function writing a feature store (``--force`` each round), timed end
  to end: model build, decoding in ``--workers`` processes, the model's own settings (see the README: channels_last,
  inference mode, thread settings, ``--precision``), chunked writing.

Printed for each: n, device, threads, batch size, workers, precision, images/s (the best and the median round);
then ours / peer. The features of both are compared (max abs difference; in bf16 also the cosine similarity to
fp32 and whether every image's nearest neighbour is the same). Results: ``benchmarks/results/bench_cpu_extraction.json``.

With ``--recall-originals``/``--recall-queries`` (e.g. the demo's ``Datasets/demo/Original`` and ``Attacks``) it also
extracts a sample of attacked copies and their originals in fp32 and in bf16 and prints recall@1 of each: bf16 is
worth it only if it is faster and keeps the recall.

Run (2-core CPU): ``.venv/bin/python benchmarks/bench_cpu_extraction.py``
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.cli import add_common_arguments, parse_args, resolved_config  # noqa: E402
from helpers.image_io import list_images  # noqa: E402
from helpers.log import setup_logging  # noqa: E402
from helpers.results import write_json  # noqa: E402

BSDS = REPO_ROOT.parent / "shared" / "datasets" / "BSDS500"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--algo", default="EfficientNet-Lite0", help="registry model (default: %(default)s)")
    parser.add_argument("--weights", default="pretrained", help="model weights (default: %(default)s)")
    parser.add_argument("--dataset", nargs="+", default=[str(BSDS / "test")],
                        help="image folders (default: BSDS500/test, 200 photos)")
    parser.add_argument("--images", type=int, default=200, help="images per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of both (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="extract_features' decoding workers (default: its own choice)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="extract_features' precision (the peer is fp32) (default: %(default)s)")
    parser.add_argument("--recall-originals", default=None, metavar="FOLDER",
                        help="with --recall-queries: also extract these originals and attacked copies in fp32 and in "
                             "bf16 and compare recall@1 (cosine), e.g. Datasets/demo/Original")
    parser.add_argument("--recall-queries", default=None, metavar="FOLDER",
                        help="attacked copies of --recall-originals (e.g. Datasets/demo/Attacks)")
    parser.add_argument("--recall-sample", type=int, default=300,
                        help="queries drawn at random (seed 0) for the recall check (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "bench_cpu_extraction.json"),
                        help="JSON results file (default: %(default)s)")
    add_common_arguments(parser, seed=False, force=False)
    return parser


def plain_loop(model, transform, paths, batch_size):
    """The loop a user writes: PIL + torchvision transforms + model, batch by batch."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            rows.append(model(batch).numpy())
    return np.concatenate(rows)


def originals_of(queries_folder):
    """``{query file name: its original's path relative to the originals folder}``, from the queries folder's
    ``ground_truth.csv`` (written by ``generate_attacks.py``; :mod:`helpers.ground_truth`)."""
    from helpers.ground_truth import read_ground_truth

    truth = read_ground_truth(Path(queries_folder) / "ground_truth.csv")
    return {Path(query).name: reference for query, reference, _ in truth.rows()}


def recall_check(args, workers):
    """recall@1 (cosine) of fp32 and bf16 extraction on attacked copies against their originals."""
    from extractor.extract import extract_features
    from helpers.datasets import resolve_dataset
    from helpers.feature_store import load_features

    originals = list_images(args.recall_originals)
    queries = list_images(args.recall_queries)
    rng = np.random.default_rng(0)
    queries = [queries[k] for k in sorted(rng.choice(len(queries), min(args.recall_sample, len(queries)),
                                                     replace=False))]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            stores = []
            for name, folder in (("originals", args.recall_originals), ("queries", None)):
                target = folder
                if folder is None:  # the sampled queries, linked into one folder under their own names
                    target = Path(tmp) / "queries"
                    target.mkdir(exist_ok=True)
                    for path in queries:
                        link = target / Path(path).name
                        if not link.exists():
                            os.symlink(Path(path).resolve(), link)
                began = time.perf_counter()
                store_folder, = extract_features([args.algo], str(target), out=Path(tmp) / precision, device="cpu",
                                                 weights=args.weights, batch_size=args.batch_size, workers=workers,
                                                 precision=precision, progress=False, force=True)
                stores.append((load_features(store_folder, mmap=False), time.perf_counter() - began))
            (db, db_seconds), (q, q_seconds) = stores
            unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
            nearest = (unit(np.asarray(q.features)) @ unit(np.asarray(db.features)).T).argmax(axis=1)
            truth = originals_of(args.recall_queries)
            relative = resolve_dataset(args.recall_originals).relative_names(db.names)
            hits = [relative[j] == truth.get(Path(name).name) for j, name in zip(nearest, q.names)]
            out[precision] = {"recall_at_1": float(np.mean(hits)), "n_queries": len(q.names), "n_db": len(db.names),
                              "images_per_s": (len(q.names) + len(db.names)) / (db_seconds + q_seconds)}
            print(f"recall check {precision}: recall@1 {out[precision]['recall_at_1']:.4f} on {len(q.names)} queries "
                  f"vs {len(db.names)} originals, {out[precision]['images_per_s']:.1f} img/s end to end "
                  f"(load average {load_average()})", flush=True)
    return out


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    from extractor.extract import extract_features
    from extractor.loading import auto_workers
    from extractor.models import build_model
    from extractor.transforms import reference_transform
    from helpers.feature_store import load_features

    paths = []
    for folder in args.dataset:
        if not Path(folder).is_dir():
            raise SystemExit(f"error: {folder} is not a folder of images")
        paths += list_images(folder)
    paths = paths[:args.images]
    if not paths:
        raise SystemExit("error: no images found")
    workers = auto_workers("cpu") if args.workers is None else args.workers
    model, transform, info = build_model(args.algo, weights=args.weights, device="cpu")
    model.eval()
    peer_transform = reference_transform(transform.preprocessing)
    threads = torch.get_num_threads()
    print(f"{args.algo} ({info['weights']}), {len(paths)} images from {', '.join(args.dataset)}, device cpu, "
          f"{os.cpu_count()} CPUs, torch threads {threads}, batch {args.batch_size}; load average {load_average()}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k, path in enumerate(paths):  # one folder, same files, same order as the peer's list
            os.symlink(Path(path).resolve(), folder / f"{k:05d}{Path(path).suffix.lower()}")
        ordered = [str(folder / name) for name in sorted(os.listdir(folder))]
        plain_loop(model, peer_transform, ordered[:args.batch_size], args.batch_size)  # warm-up, as ours' first batch
        peer_times, our_times, peer_features, store = [], [], None, None
        peer_cpu, our_cpu = [], []
        for round_ in range(args.rounds):
            began, cpu = time.perf_counter(), time.process_time()
            peer_features = plain_loop(model, peer_transform, ordered, args.batch_size)
            peer_times.append(time.perf_counter() - began)
            peer_cpu.append(time.process_time() - cpu)
            began, cpu = time.perf_counter(), time.process_time()
            out, = extract_features([args.algo], str(folder), out=Path(tmp) / "features", force=True, device="cpu",
                                    weights=args.weights, batch_size=args.batch_size, workers=workers,
                                    precision=args.precision, progress=False, chunk_size=4096)
            our_times.append(time.perf_counter() - began)
            our_cpu.append(time.process_time() - cpu)
            store = load_features(out, mmap=False)
            print(f"round {round_ + 1}: plain loop {len(paths) / peer_times[-1]:.1f} img/s, extract_features "
                  f"{len(paths) / our_times[-1]:.1f} img/s (load average {load_average()})", flush=True)
        ours = np.asarray(store.features)
        names = [Path(n).name for n in store.names]
        assert names == [Path(p).name for p in ordered], "the store's rows are not in the folder's order"

    def rates(times):
        return {"best": len(paths) / min(times), "median": len(paths) / statistics.median(times)}

    peer, our = rates(peer_times), rates(our_times)
    diff = float(np.abs(ours - peer_features).max())
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = np.sum(unit(ours.astype(np.float64)) * unit(peer_features.astype(np.float64)), axis=1)
    same_nn = None
    if len(paths) > 2:
        def nearest(x):
            sim = unit(x.astype(np.float64)) @ unit(x.astype(np.float64)).T
            np.fill_diagonal(sim, -np.inf)
            return sim.argmax(axis=1)

        same_nn = float(np.mean(nearest(ours) == nearest(peer_features)))
    ratio = our["best"] / peer["best"]
    print(f"\n{'':32s}{'n':>6s}{'threads':>9s}{'batch':>7s}{'workers':>9s}{'precision':>11s}{'best img/s':>12s}"
          f"{'median':>9s}")
    print(f"{'plain loop (PIL+torchvision)':32s}{len(paths):6d}{threads:9d}{args.batch_size:7d}{0:9d}{'fp32':>11s}"
          f"{peer['best']:12.1f}{peer['median']:9.1f}")
    print(f"{'extract_features':32s}{len(paths):6d}{threads:9d}{args.batch_size:7d}{workers:9d}"
          f"{args.precision:>11s}{our['best']:12.1f}{our['median']:9.1f}")
    cpu_ratio = (len(paths) / min(our_cpu)) / (len(paths) / min(peer_cpu))
    print(f"images per CPU-second of this process (less disturbed by other jobs; with --workers 0 all the work is "
          f"in it): plain loop {len(paths) / min(peer_cpu):.1f}, extract_features {len(paths) / min(our_cpu):.1f}"
          f"{'' if workers == 0 else ' (its workers not counted)'}, ratio {cpu_ratio:.2f}x")
    print(f"ours / plain loop: {ratio:.2f}x (best), {our['median'] / peer['median']:.2f}x (median); features: max abs "
          f"difference {diff:.2e}, min cosine {cosine.min():.6f}, same nearest neighbour for "
          f"{'-' if same_nn is None else f'{100 * same_nn:.1f} %'} of the images; load average {load_average()}")
    write_json(args.out, {
        "benchmark": "bench_cpu_extraction", "config": resolved_config(args), "algo": args.algo,
        "weights": info["weights"], "weights_sha256": info["weights_sha256"], "n": len(paths), "device": "cpu",
        "cpus": os.cpu_count(), "torch_threads": threads, "batch_size": args.batch_size, "workers": workers,
        "precision": args.precision, "rounds": args.rounds,
        "plain_loop_images_per_s": peer, "extract_features_images_per_s": our,
        "plain_loop_seconds": peer_times, "extract_features_seconds": our_times,
        "ratio_best": ratio, "ratio_median": our["median"] / peer["median"],
        "plain_loop_cpu_seconds": peer_cpu, "extract_features_cpu_seconds": our_cpu, "ratio_cpu_time": cpu_ratio,
        "features_max_abs_difference": diff, "features_min_cosine": float(cosine.min()),
        "same_nearest_neighbour": same_nn, "load_average_end": load_average(),
        "store_extraction_seconds": store.meta.get("extraction_seconds"),
        "torch": torch.__version__,
    })
    if args.recall_originals and args.recall_queries:
        results = {}
        try:
            from helpers.results import read_json

            results = read_json(args.out)
        except (OSError, ValueError):
            pass
        results["recall_check"] = recall_check(args, workers)
        write_json(args.out, results)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
