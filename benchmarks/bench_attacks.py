#!/usr/bin/env python3
"""Throughput of the attack generator, and speed of ``random_edit``, against the naive way of doing the same.

There is no standard tool for the seed's 58 attacks, so the peer is what a user would write (and what the seed's
script did): a single-process loop that loads each image, applies each attack and saves a PNG, with

- ``naive-same-png``: the same attack functions and PNG settings as ours (isolates processes + pipeline);
- ``naive-seed-png``: the same functions, PNGs saved with PIL's default zlib level 6, as the seed's
  ``image.save(name, format='PNG')`` did.

``ours``: :func:`data_retrieval.generate_attacks.generate_attacks` with ``--workers`` processes into an empty
folder. Each case prints images/s, variants/s, wall and CPU seconds (CPU of the children included), and the
ratio to ours. The per-attack CPU cost (compute vs PNG encoding) comes from the naive loop.

``random_edit`` (the copy-detection training augmentation) is timed on 224x224 images, CPU time per call,
next to a typical torchvision SimCLR augmentation pipeline (RandomResizedCrop, flip, ColorJitter, RandomGrayscale,
GaussianBlur) on the same images.

The machine is shared: the load average before and after each case is recorded, and CPU seconds, unlike wall
seconds, do not depend on other jobs; ``workers / CPU seconds per image`` is printed as the throughput the same
run would reach on idle cores. Results: ``benchmarks/results/bench_attacks.json``.

Run (2-4 minutes on 2 idle cores):
``.venv/bin/python benchmarks/bench_attacks.py --input /work/shared/datasets/BSDS500/test --n 20 --workers 2``
"""
import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_retrieval.attacks import apply_attack, random_edit, retrieve_ids  # noqa: E402
from data_retrieval.generate_attacks import generate_attacks, output_name, variant_seed  # noqa: E402
from data_retrieval.runner import encode  # noqa: E402
from helpers.image_io import list_images, load_image  # noqa: E402
from helpers.results import write_json  # noqa: E402

# The registered BSDS500 originals when present, else the shared copy of its test split.
DEFAULT_INPUT = next((str(p) for p in (REPO_ROOT / "Datasets" / "BSDS500" / "Original",
                                       Path("/work/shared/datasets/BSDS500/test")) if p.is_dir()),
                     str(REPO_ROOT / "Datasets" / "BSDS500" / "Original"))


def _cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _case(name, n_images, n_variants, wall, cpu, load_before):
    return {"case": name, "images": n_images, "variants": n_variants, "wall_s": wall, "cpu_s": cpu,
            "images_per_s": n_images / wall, "variants_per_s": n_variants / wall,
            "cpu_s_per_image": cpu / n_images, "load_before": load_before, "load_after": os.getloadavg()[0]}


def naive_loop(paths, ids, out_dir, png_level, costs=None):
    """The peer: one process, image after image, attack after attack."""
    for path in paths:
        image = load_image(path)
        stem = Path(path).stem
        for attack_id in ids:
            start = time.process_time()
            attacked = apply_attack(image, attack_id, variant_seed(0, stem, attack_id))
            middle = time.process_time()
            (Path(out_dir) / output_name(stem, attack_id)).write_bytes(encode(attacked, "png", png_level))
            if costs is not None:
                costs[attack_id][0] += middle - start
                costs[attack_id][1] += time.process_time() - middle


def time_generators(paths, workers, png_level, scratch):
    ids = retrieve_ids()
    subset = Path(scratch) / "input"
    subset.mkdir()
    for path in paths:
        os.symlink(path, subset / Path(path).name)
    cases, costs = [], defaultdict(lambda: [0.0, 0.0])
    for name, level in (("naive-same-png", png_level), ("naive-seed-png", 6)):
        out = Path(scratch) / name
        out.mkdir()
        load, cpu, start = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
        naive_loop(paths, ids, out, level, costs if name == "naive-same-png" else None)
        cases.append(_case(name, len(paths), len(paths) * len(ids), time.perf_counter() - start,
                           _cpu_seconds() - cpu, load))
    load, cpu, start = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
    summary = generate_attacks(subset, Path(scratch) / "ours", workers=workers, png_level=png_level,
                               progress=False)
    ours = _case("ours", len(paths), summary["variants_written"], time.perf_counter() - start,
                 _cpu_seconds() - cpu, load)
    ours["workers"] = workers
    cases.append(ours)
    per_attack = {aid: {"attack_ms": a / len(paths) * 1000, "encode_ms": e / len(paths) * 1000}
                  for aid, (a, e) in costs.items()}
    return cases, per_attack


def time_random_edit(calls, photos):
    images = [photo.resize((224, 224), Image.Resampling.BICUBIC) for photo in photos]
    rng = np.random.default_rng(0)
    random_edit(images[0], rng)
    start = time.process_time()
    for i in range(calls):
        random_edit(images[i % len(images)], rng)
    ours_ms = (time.process_time() - start) / calls * 1000
    result = {"calls": calls, "size": 224, "random_edit_cpu_ms": ours_ms}
    try:
        import torch
        from torchvision import transforms as T
    except ImportError:  # torchvision is a runtime requirement; report rather than fail
        result["torchvision_simclr_cpu_ms"] = None
        return result
    torch.manual_seed(0)
    torch.set_num_threads(1)
    simclr = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                        T.GaussianBlur(23, sigma=(0.1, 2.0))])
    simclr(images[0])
    start = time.process_time()
    for i in range(calls):
        simclr(images[i % len(images)])
    result["torchvision_simclr_cpu_ms"] = (time.process_time() - start) / calls * 1000
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=DEFAULT_INPUT, help="folder of photos (default: %(default)s)")
    parser.add_argument("--n", type=int, default=20, help="images to attack (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="processes of our generator (default: %(default)s)")
    parser.add_argument("--png-level", type=int, default=1, help="PNG zlib level of ours (default: %(default)s)")
    parser.add_argument("--edit-calls", type=int, default=500, help="random_edit calls timed (default: %(default)s)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "bench_attacks.json"),
                        help="JSON results file (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = [str(p) for p in list_images(args.input)][:args.n]
    if not paths:
        parser.error(f"no images in {args.input}")
    sizes = [Image.open(p).size for p in paths]
    print(f"# attack generation: n={len(paths)} images ({sizes[0][0]}x{sizes[0][1]} first), 58 seed attacks, "
          f"PNG, cpu_count={os.cpu_count()}, device=cpu")
    scratch = tempfile.mkdtemp(prefix="bench_attacks_")
    try:
        cases, per_attack = time_generators(paths, args.workers, args.png_level, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ours = next(case for case in cases if case["case"] == "ours")
    print(f"{'case':16s} {'workers':>7s} {'png':>4s} {'images/s':>9s} {'variants/s':>11s} {'wall s':>8s} "
          f"{'cpu s/img':>9s} {'load':>5s} {'ours is x faster':>17s}")
    for case in cases:
        workers = case.get("workers", 1)
        level = 6 if case["case"] == "naive-seed-png" else args.png_level
        ratio = ours["images_per_s"] / case["images_per_s"]
        case["speedup_of_ours"] = ratio
        print(f"{case['case']:16s} {workers:7d} {level:4d} {case['images_per_s']:9.2f} {case['variants_per_s']:11.1f} "
              f"{case['wall_s']:8.1f} {case['cpu_s_per_image']:9.2f} {case['load_before']:5.1f} {ratio:17.2f}")
    projections = ", ".join(
        f"{case['case']} {case.get('workers', 1) / case['cpu_s_per_image']:.2f}" for case in cases)
    for case in cases:
        case["cpu_bound_images_per_s"] = case.get("workers", 1) / case["cpu_s_per_image"]
    print(f"# CPU-bound projection for idle cores (workers / CPU s per image), images/s: {projections}")
    slowest = sorted(per_attack.items(), key=lambda kv: -(kv[1]["attack_ms"] + kv[1]["encode_ms"]))[:8]
    total_attack = sum(v["attack_ms"] for v in per_attack.values())
    total_encode = sum(v["encode_ms"] for v in per_attack.values())
    print(f"# CPU per image (naive loop): attacks {total_attack:.0f} ms + PNG encoding {total_encode:.0f} ms; "
          f"costliest: " + ", ".join(f"{k} {v['attack_ms']:.0f}+{v['encode_ms']:.0f} ms" for k, v in slowest))
    photos = [load_image(p) for p in paths[:8]]
    edit = time_random_edit(args.edit_calls, photos)
    peer = edit["torchvision_simclr_cpu_ms"]
    comparison = (f"; torchvision SimCLR augmentation {peer:.2f} ms; ratio {peer / edit['random_edit_cpu_ms']:.2f}"
                  if peer else "; torchvision not installed")
    print(f"# random_edit: {edit['calls']} calls on 224x224 RGB, 1 thread: {edit['random_edit_cpu_ms']:.2f} ms CPU "
          f"per call{comparison}")
    record = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "device": "cpu"},
              "input": args.input, "n_images": len(paths), "png_level": args.png_level, "cases": cases,
              "per_attack_cpu_ms": per_attack, "random_edit": edit,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(args.output, record)
    print(f"# saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
