"""Write the attacked copies of every image of a folder: ``OUTPUT_DIR/<stem>_<attack_id>.<fmt>``.

Usage (from the repository root)::

    python3 data_retrieval/generate_attacks.py Datasets/BSDS500/Original Datasets/BSDS500/Attacks --workers 2

The default set is the seed's 58 attacks (:func:`data_retrieval.attacks.retrieve_ids`); ``--extra`` adds the
copy-detection families, ``--families`` selects families, ``--list`` prints the IDs. Work is spread over
processes; every variant is seeded by (seed, image stem, attack ID), so the files are byte-identical whatever the
worker count or order. Existing outputs are kept (a second run writes nothing), files are written atomically
(an interrupted run leaves no half-written image), unreadable inputs are skipped and listed in
``OUTPUT_DIR/skipped.txt``. Chained edits (``chain_<n>``) are described in ``OUTPUT_DIR/chains.tsv``.

Any file name works (``IMG_1234.JPG``, spaces, unicode); sub-folders of INPUT_DIR are mirrored in OUTPUT_DIR.
Which copy comes from which original is written as data: ``OUTPUT_DIR/ground_truth.csv`` (``query,reference,
attack``, paths relative to OUTPUT_DIR and INPUT_DIR; :mod:`helpers.ground_truth`), rewritten at the end of every
run with every variant present.
"""
import argparse
import logging
import os
import sys
import time
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_retrieval.attacks import (DEFAULT_PARAMS, all_families, apply_attack,  # noqa: E402
                                    apply_attack_described, attack_ids)
from data_retrieval.runner import (clean_partial_files, encode, finish_report, load_for_task,  # noqa: E402
                                   new_result, run_parallel, write_atomic)
from helpers.cli import add_common_arguments, add_max_pixels_argument, run_cli, str2bool  # noqa: E402
from helpers.ground_truth import GROUND_TRUTH_FILE, write_ground_truth  # noqa: E402
from helpers.image_io import DEFAULT_MAX_PIXELS, SkipReport, list_images  # noqa: E402
from helpers.seeding import stable_seed  # noqa: E402

logger = logging.getLogger(__name__)

FORMATS = ("png", "jpg")
CHAINS_FILE = "chains.tsv"


def output_name(stem, attack_id, fmt="png"):
    """File name (relative to the output folder) of the ``attack_id`` variant of the image ``stem`` (its path
    relative to the input folder, without extension)."""
    return f"{stem}_{attack_id}.{fmt}"


def variant_seed(seed, stem, attack_id):
    """The seed of one variant: depends on nothing but (global seed, output stem, attack ID)."""
    return stable_seed("attack", seed, stem, attack_id)


def check_attack_ids(ids):
    """Apply every attack once to a small test image, so a bad parameter fails before any work starts.

    Raises
    ------
    ValueError
        Naming the first invalid attack ID and why.
    """
    probe = Image.new("RGB", (16, 12), (128, 64, 32))
    for attack_id in ids:
        apply_attack(probe, attack_id, 0)


def _process_image(task):
    """Worker: all missing variants of one image. Returns counts, chain descriptions and failures."""
    path, stem, ids, output_dir, fmt, seed, png_level, max_pixels = task
    missing = [aid for aid in ids if not (Path(output_dir) / output_name(stem, aid, fmt)).exists()]
    result = new_result(written=0, existing=len(ids) - len(missing), chains={})
    image = load_for_task(path, result, max_pixels) if missing else None
    if image is None:
        return result
    for attack_id in missing:
        name = output_name(stem, attack_id, fmt)
        try:
            attacked, description = apply_attack_described(image, attack_id, variant_seed(seed, stem, attack_id))
            (Path(output_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(output_dir) / name, encode(attacked, fmt, png_level))
        except (ValueError, OSError, MemoryError) as exc:
            result["failures"].append((str(path), f"attack {attack_id} failed: {exc}"))
            continue
        result["written"] += 1
        if attack_id.startswith("chain_"):
            result["chains"][name] = description
    return result


def _plan(input_dir, output_dir, report):
    """``(path, output stem, relative path)`` for each input image: the stem is the image's path relative to the
    input folder without its extension (sub-folders mirrored)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    paths = list_images(input_dir, report=report)
    out_resolved = output_dir.resolve()
    paths = [p for p in paths if out_resolved not in p.resolve().parents]
    plan, seen = [], {}
    for path in paths:
        relative = path.relative_to(input_dir).as_posix()
        stem = relative[: len(relative) - len(path.suffix)] if path.suffix else relative
        if stem in seen:
            report.add(path, f"same output name '{stem}' as {seen[stem]} (same name, other extension): its "
                             "variants would overwrite those")
            continue
        seen[stem] = path
        plan.append((path, stem, relative))
    return plan


def _write_ground_truth(output_dir, plan, ids, fmt):
    """``ground_truth.csv`` of every variant present in ``output_dir`` (query, reference, attack)."""
    rows = []
    for _, stem, relative in plan:
        for attack_id in ids:
            name = output_name(stem, attack_id, fmt)
            if (Path(output_dir) / name).exists():
                rows.append((name, relative, attack_id))
    return write_ground_truth(Path(output_dir) / GROUND_TRUTH_FILE, rows)


def _merge_chains(output_dir, new_entries):
    path = Path(output_dir) / CHAINS_FILE
    entries = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, _, description = line.partition("\t")
            if name:
                entries[name] = description
    entries.update(new_entries)
    text = "".join(f"{name}\t{entries[name]}\n" for name in sorted(entries))
    write_atomic(path, text.encode("utf-8"))


def generate_attacks(input_dir, output_dir, workers=1, seed=0, families=None, extra=False, fmt="png",
                     progress=True, params=None, png_level=1, max_pixels=DEFAULT_MAX_PIXELS):
    """Write every attack variant of every image of ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    input_dir, output_dir : str or Path
        Images are listed recursively (:func:`helpers.image_io.list_images`); sub-folders are mirrored in the
        output, and ``output_dir/ground_truth.csv`` says which variant comes from which image.
    workers : int
        Processes (1 = in this process).
    seed : int
        Global seed; each variant's randomness is seeded by (seed, stem, attack ID).
    families : list of str, optional
        Families to generate (see :func:`data_retrieval.attacks.all_families`); default: the seed's 12.
    extra : bool
        Add every extra copy-detection family.
    fmt : {'png', 'jpg'}
        Output format (PNG is lossless, as in the seed; JPEG at quality 95).
    progress : bool
        Show a progress bar.
    params : dict, optional
        Attack parameters overriding :data:`data_retrieval.attacks.DEFAULT_PARAMS`.
    png_level : int
        zlib level of the PNG files (0-9; 1 is the fastest compression, 9 the smallest files). PNGs are
        written by :func:`data_retrieval.runner.png_bytes`, about twice as fast as PIL's encoder.
    max_pixels : int or None
        Inputs of more pixels are skipped and listed (decompression-bomb guard); ``None``: no limit.

    Returns
    -------
    dict
        ``images_read`` (images decoded), ``images_total`` (images listed), ``variants_written``,
        ``variants_existing`` (kept from an earlier run), ``variants_per_image``, ``attack_ids``, ``skipped``
        (list of ``[path, reason]``), ``seconds``.

    Raises
    ------
    FileNotFoundError
        ``input_dir`` does not exist.
    ValueError
        Bad parameters, no image in ``input_dir``, or none readable (the reasons are then in
        ``output_dir/skipped.txt``).
    """

    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not 0 <= int(png_level) <= 9:
        raise ValueError(f"png_level must be in 0..9, got {png_level}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    if input_dir.resolve() == output_dir.resolve():
        raise ValueError("the output folder must differ from the input folder (originals and attacks would mix)")
    ids = attack_ids(families=families, extra=extra, **(params or {}))
    if not ids:
        raise ValueError("the selected families and parameters give no attack at all")
    check_attack_ids(ids)
    report = SkipReport()
    plan = _plan(input_dir, output_dir, report)
    if not plan:
        listed = ""
        if report:
            finish_report(report, output_dir, logger)
            listed = f"; {len(report)} file(s) skipped, listed in {output_dir / 'skipped.txt'}"
        raise ValueError(f"no image to attack in {input_dir}{listed}")
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_partial_files(output_dir)
    tasks = [(str(path), stem, ids, str(output_dir), fmt, int(seed), int(png_level), max_pixels)
             for path, stem, _ in plan]
    summary = {"images_total": len(plan), "images_read": 0, "variants_written": 0, "variants_existing": 0,
               "variants_per_image": len(ids), "attack_ids": ids}
    chains = {}
    start = time.perf_counter()
    for result in run_parallel(_process_image, tasks, workers, desc="attacks", unit="img", progress=progress):
        summary["images_read"] += int(result["loaded"])
        summary["variants_written"] += result["written"]
        summary["variants_existing"] += result["existing"]
        chains.update(result["chains"])
        for path, reason in result["failures"]:
            report.add(path, reason)
    summary["seconds"] = time.perf_counter() - start
    if chains:
        _merge_chains(output_dir, chains)
    summary["ground_truth"] = str(_write_ground_truth(output_dir, plan, ids, fmt))
    summary["skipped"] = finish_report(report, output_dir, logger)
    if summary["images_read"] == 0 and summary["variants_existing"] == 0:
        raise ValueError(f"none of the {len(plan)} image(s) of {input_dir} could be read; the reasons are in "
                         f"{output_dir / 'skipped.txt'}")
    return summary


def build_parser():
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="generate_attacks.py",
        description="Write the attacked copies <stem>_<attack_id>.<fmt> of every image of INPUT_DIR into "
                    "OUTPUT_DIR (the seed's 58 attacks by default), and OUTPUT_DIR/ground_truth.csv (query, "
                    "reference, attack). Resumable: existing outputs are kept.",
)
    parser.add_argument("input_dir", nargs="?", help="folder of original images (read recursively)")
    parser.add_argument("output_dir", nargs="?", help="folder for the attacked copies (created)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="parallel processes (default: %(default)s)")
    parser.add_argument("--families", nargs="+", choices=all_families(), metavar="FAMILY", default=None,
                        help=f"families to generate (default: the seed's 12). Choices: {', '.join(all_families())}")
    parser.add_argument("--extra", action="store_true",
                        help="add every extra copy-detection family (flip, meme format, emoji overlay, background "
                             "paste, screenshot frame, padding, perspective, pixelization, grayscale, chains)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="png",
                        help="output format (png is lossless; jpg at quality 95; default: %(default)s)")
    parser.add_argument("--png-level", type=int, default=1,
                        help="zlib level 0-9 of the PNG files (1: fastest, 9: smallest; default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the attack IDs that would be written and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("attack parameters (the seed's; each takes a list of values)")
    for key, value in DEFAULT_PARAMS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            group.add_argument(flag, type=str2bool, default=value, metavar="BOOL",
                               help=f"{'resize cropped' if 'crop' in key else 'resize rotated'} images back to "
                                    f"the original size, adding '_and_rescaling' to the ID (default: %(default)s)")
        else:
            group.add_argument(flag, type=_number, nargs="*", default=list(value), metavar="V",
                               help=f"values of {key} (default: {' '.join(map(str, value))})")
    add_max_pixels_argument(parser)
    add_common_arguments(parser, device=False, seed=True, force=False)
    return parser


def _number(text):
    """An attack parameter as written: '5' -> 5, '0.66' -> 0.66 (the ID shows the value as typed)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")


def main(argv=None):
    """Entry point of ``python3 data_retrieval/generate_attacks.py``."""
    parser = build_parser()
    return run_cli(parser, lambda args: _run(parser, args), argv, errors=(OSError, TypeError))


def _run(parser, args):
    params = {key: getattr(args, key) for key in DEFAULT_PARAMS}
    params = {key: (value if isinstance(value, bool) else tuple(value)) for key, value in params.items()}
    ids = attack_ids(families=args.families, extra=args.extra, **params)
    check_attack_ids(ids)
    if args.list:
        print("\n".join(ids))
        return 0
    if not args.input_dir or not args.output_dir:
        parser.error("INPUT_DIR and OUTPUT_DIR are required (unless --list)")
    summary = generate_attacks(args.input_dir, args.output_dir, workers=args.workers, seed=args.seed,
                               families=args.families, extra=args.extra, fmt=args.fmt,
                               progress=not args.no_progress, params=params,
                               png_level=args.png_level, max_pixels=args.max_pixels)
    rate = summary["images_total"] / summary["seconds"] if summary["seconds"] > 0 else float("nan")
    print(f"images listed: {summary['images_total']}, read: {summary['images_read']}, "
          f"variants written: {summary['variants_written']}, already present: {summary['variants_existing']}, "
          f"skipped: {len(summary['skipped'])} ({summary['variants_per_image']} attacks per image, "
          f"{summary['seconds']:.1f} s, {rate:.2f} images/s, {args.workers} worker(s))")
    if summary["skipped"]:
        print(f"skipped files are listed in {Path(args.output_dir) / 'skipped.txt'}")
    return 0


if __name__ == "__main__":
    from data_retrieval.generate_attacks import main as _main  # the package module, so workers can import it

    sys.exit(_main())
