#!/usr/bin/env python3
"""Our copies of library code against the plain library calls: are the copies worth their maintenance?

Two copies are measured, on every image of the dataset (BSDS500: 500 JPEGs of 481x321 or 321x481):

- **the hashes' LANCZOS resize**: the NumPy copy of Pillow's LANCZOS that computed all the target sizes of one
  image in one go (``resize_many`` of ``extractor/_hash_resample.py``, removed after this measurement; read from
  git at ``--resize-copy-commit``) against **plain Pillow**, one ``Image.resize(size, LANCZOS)`` per target size on
  the one shared greyscale image (``extractor.hashing.lanczos_pixels``, bit-exact with imagehash by construction:
  imagehash makes the same call). Timed: the resizes alone, every distinct size the ten standard hashes
  (``extractor.hashing.HASH_NAMES``) need for the image; and ``compute_hashes`` from the decoded RGB image with
  either resize, for the seed's four hashes at 64 bits and for the ten. Checked: every resized image of the copy equals Pillow's, and every bit of every hash equals
  imagehash 4.3.2's (the script exits with status 1 on a difference).
- **the JPEG header and EXIF parser of the GPU input path** (``extractor.gpu_decode.jpeg_header``) against
  **Pillow's parser**: ``Image.open`` on the same bytes (size, mode, sample precision, component ids, Adobe
  marker) plus ``getexif()`` for the orientation. This is the CPU-side work a data-loader worker does per file;
  the GPU decode itself cannot run here. Every file's ``(height, width, orientation)`` is compared with Pillow's,
  and with ``ImageOps.exif_transpose``'s output size.

Both sides of each pair run interleaved, ``--repeat`` times in this process with one BLAS thread; the fastest run
of each side is reported (the machine is shared: the fastest is the least disturbed), the median next to it, in
wall time and CPU time (``time.process_time``). Results: ``benchmarks/results/bench_library_copies.json``.

Run: ``flock /work/bench.lock .venv/bin/python benchmarks/bench_library_copies.py`` (about 5 minutes on 2 cores);
add ``--cold-caches --output benchmarks/results/bench_library_copies_cold.json`` for images of all different sizes.
"""
import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from helpers.cli import add_common_arguments, parse_args, resolved_config  # noqa: E402
from helpers.image_io import ImageLoadError, list_images, load_image  # noqa: E402
from helpers.log import get_logger, setup_logging  # noqa: E402
from helpers.results import write_json  # noqa: E402
from timing import summarise, time_sides  # noqa: E402  (benchmarks/timing.py)

logger = get_logger("bench_library_copies")
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "BSDS500"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "bench_library_copies.json"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET),
                        help="image folder, read recursively (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (default: all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repetitions of each side, interleaved (default: %(default)s)")
    parser.add_argument("--resize-copy-commit", default=RESIZE_COPY_COMMIT,
                        help="git commit whose extractor/_hash_resample.py (the removed copy) is measured "
                             "(default: %(default)s)")
    parser.add_argument("--cold-caches", action="store_true",
                        help="clear the copy's coefficient and plan caches before every image: the case of a "
                             "collection whose images all differ in size (BSDS500 has two sizes, so by default the "
                             "caches are always warm)")
    parser.add_argument("--output", default=str(DEFAULT_OUT), help="result JSON (default: %(default)s)")
    add_common_arguments(parser)
    return parser


# ------------------------------------------------------------------------------------------------ the resizes

#: The last commit holding the hashes' NumPy copy of Pillow's resize (``extractor/_hash_resample.py``).
RESIZE_COPY_COMMIT = "26e1fa6"
#: The seed's four hashes at 64 bits (the common set) next to the ten standard ones.
FOUR_64 = ("Ahash 64 bits", "Phash 64 bits", "Dhash 64 bits", "Whash 64 bits")


def load_resize_copy(commit):
    """The removed ``extractor/_hash_resample.py`` of ``commit`` (read with ``git show``) as a module."""
    import subprocess
    import types

    try:
        source = subprocess.run(["git", "show", f"{commit}:extractor/_hash_resample.py"], cwd=REPO_ROOT,
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: cannot read extractor/_hash_resample.py at {commit} ({exc}); run from a git "
                         "checkout that has this commit, or pass --resize-copy-commit") from None
    module = types.ModuleType("_hash_resample_copy")
    exec(compile(source, f"{commit}:extractor/_hash_resample.py", "exec"), module.__dict__)
    return module


def _interleaved(sides, items, repeat):
    """:func:`timing.time_sides` summarised per side (fastest and median run, wall and CPU)."""
    times, _ = time_sides(items, sides, repeat)
    return {name: summarise(times[name], len(items)) for name in sides}


def bench_resize(images, repeat, commit, cold_caches=False):
    import imagehash

    import extractor.hashing as hashing

    copy = load_resize_copy(commit)
    resize_many = copy.resize_many
    if cold_caches:  # every image as if of a size never seen before: the copy's coefficient and plan caches miss
        caches = (copy.axis_coefficients, copy._axis_matrix, copy._target_plan, copy._cached_plan)

        def resize_many(gray, sizes, reuse=False):
            for cache in caches:
                cache.cache_clear()
            return copy.resize_many(gray, sizes, reuse=reuse)
    specs = hashing.resolve_hash_specs(hashing.HASH_NAMES)
    jobs = []
    for image in images:
        gray = image.convert("L")
        sizes = list(dict.fromkeys(size for spec in specs for size in spec.sizes(image.size)))
        jobs.append((gray, np.asarray(gray), sizes))

    def pillow(job):
        return {size: hashing.lanczos_pixels(job[0], size) for size in job[2]}

    sides = {"copy (resize_many)": lambda job: resize_many(job[1], job[2], reuse=True),
             "pillow (one resize per size)": pillow}
    resize_runs = _interleaved(sides, jobs, repeat)

    class CopyContext(hashing._Context):
        def _resize(self, sizes):
            return resize_many(np.asarray(self.gray_image), sizes, reuse=True) if sizes else {}

    def compute(context, names):
        chosen = hashing.resolve_hash_specs(names)

        def run(image):
            hashing._Context = context
            try:
                return hashing.compute_hashes(image, chosen)
            finally:
                hashing._Context = pillow_context
        return run

    pillow_context = hashing._Context
    hash_runs = {}
    for label, names in (("4 hashes of 64 bits", FOUR_64), ("10 standard hashes", hashing.HASH_NAMES)):
        hash_runs[label] = _interleaved({"copy (resize_many)": compute(CopyContext, names),
                                         "pillow (one resize per size)": compute(pillow_context, names)},
                                        images, repeat)
    pixels_differing = sum(not np.array_equal(copy[size], theirs[size])
                           for job in jobs for copy, theirs in [(resize_many(job[1], job[2]), pillow(job))]
                           for size in job[2])
    reference = {"ahash": imagehash.average_hash, "phash": imagehash.phash, "dhash": imagehash.dhash,
                 "whash": imagehash.whash}
    differing = 0
    for image in images:
        for spec, row in zip(specs, hashing.compute_hashes(image, specs)):
            ours = spec.unpack(row)
            if spec.kind == "colorhash":
                same = np.array_equal(ours, imagehash.colorhash(image, binbits=spec.binbits).hash)
            elif spec.kind == "crop_resistant":
                multi = imagehash.crop_resistant_hash(image, limit_segments=spec.max_segments)
                theirs = [h.hash for h in multi.segment_hashes]
                same = len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
            else:
                same = np.array_equal(ours, reference[spec.kind](image, hash_size=spec.hash_size).hash)
            differing += int(not same)
    return {"hashes": list(hashing.HASH_NAMES), "copy_commit": commit, "cold_caches": bool(cold_caches),
            "distinct_sizes_per_image": statistics.mean(len(job[2]) for job in jobs),
            "resize_only": resize_runs, "compute_hashes": hash_runs,
            "resized_images_differing_copy_vs_pillow": int(pixels_differing),
            "hashes_differing_from_imagehash": differing}


# ------------------------------------------------------------------------------------------------ the header


def pillow_jpeg_header(data):
    """What Pillow's parser tells of the same bytes: ``(height, width, components, orientation)`` for an 8-bit
    3-component JPEG without an Adobe marker or R/G/B component ids, else ``None`` (the frame type is not
    exposed by Pillow: lossless and arithmetic JPEGs are not told apart)."""
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError):
        return None
    if image.format != "JPEG" or image.mode != "RGB" or getattr(image, "bits", 8) != 8 or "adobe" in image.info:
        return None
    if tuple(layer[0] for layer in getattr(image, "layer", ())) == ("R", "G", "B"):
        return None
    orientation = image.getexif().get(0x0112, 1)
    return image.height, image.width, 3, orientation


def bench_header(paths, repeat):
    from extractor.gpu_decode import jpeg_header

    blobs = [Path(p).read_bytes() for p in paths]
    sides = {"copy (jpeg_header)": jpeg_header, "pillow (Image.open + getexif)": pillow_jpeg_header}
    runs = _interleaved(sides, blobs, repeat)
    mismatches, transposed = 0, 0
    for data in blobs:
        ours, theirs = jpeg_header(data), pillow_jpeg_header(data)
        mismatches += int(ours != theirs)
        with Image.open(io.BytesIO(data)) as image:
            upright = ImageOps.exif_transpose(image)
            expected = (image.height, image.width) if (ours is None or ours[3] < 5) else (image.width, image.height)
            transposed += int((upright.height, upright.width) != expected)
    return {"files": len(blobs), "header": runs, "files_differing_from_pillow": mismatches,
            "files_differing_from_exif_transpose": transposed}


def main(argv=None):
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging(args.log_level)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    paths = list_images(args.dataset)
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        parser.error(f"no images under {args.dataset}")
    images = []
    for path in paths:
        try:
            images.append(load_image(path))
        except ImageLoadError as exc:
            logger.warning("skipped %s: %s", path, exc)
    started = time.perf_counter()
    resize = bench_resize(images, args.repeat, args.resize_copy_commit, args.cold_caches)
    header = bench_header(paths, args.repeat)
    result = {"config": resolved_config(args), "n_images": len(images), "threads": 1,
              "load_average": os.getloadavg(), "python": platform.python_version(),
              "pillow": Image.__version__, "numpy": np.__version__, "resize": resize, "jpeg_header": header,
              "seconds": time.perf_counter() - started}
    blocks = [("resize only, 10 standard hashes' sizes", result["resize"]["resize_only"])]
    blocks += [(f"compute_hashes, {label}", block) for label, block in result["resize"]["compute_hashes"].items()]
    blocks += [("JPEG header + EXIF orientation", result["jpeg_header"]["header"])]
    for label, block in blocks:
        names = list(block)
        for name in names:
            print(f"{label}: {name}: {block[name]['wall']['ms_per_image_min']:.3f} ms/image wall "
                  f"({block[name]['cpu']['ms_per_image_min']:.3f} ms cpu), n={len(images)}, 1 thread")
        ratio = block[names[1]]["wall"]["seconds_min"] / block[names[0]]["wall"]["seconds_min"]
        cpu_ratio = block[names[1]]["cpu"]["seconds_min"] / block[names[0]]["cpu"]["seconds_min"]
        print(f"{label}: pillow / copy = {ratio:.2f} wall, {cpu_ratio:.2f} cpu (best of {args.repeat})")
    print(f"resized images differing copy vs Pillow: {resize['resized_images_differing_copy_vs_pillow']}; hashes "
          f"differing from imagehash: {resize['hashes_differing_from_imagehash']}; JPEG headers differing from "
          f"Pillow: {header['files_differing_from_pillow']}, from exif_transpose: "
          f"{header['files_differing_from_exif_transpose']}; load average {os.getloadavg()}")
    write_json(args.output, result)
    bad = resize["hashes_differing_from_imagehash"] + resize["resized_images_differing_copy_vs_pillow"]
    return 1 if bad or header["files_differing_from_exif_transpose"] else 0


if __name__ == "__main__":
    sys.exit(main())
