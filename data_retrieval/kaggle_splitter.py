"""Prepare the Kaggle memes dataset ("Most viewed memes templates of 2018") the way the seed did.

Usage (from the repository root)::

    python3 data_retrieval/kaggle_splitter.py archive/reddit_posts.csv archive/images/kaggle_images \\
        archive/images/Templates

1. Every image listed in the CSV (column 0: image id = file stem, column 1: template name, as the seed reads
   ``reddit_posts.csv``) is renamed, in place, ``<template>_<id>.<ext>``, with ``_`` replaced by ``-`` in both
   parts (``_`` separates the template from the rest) and ``?`` removed from the id.
2. The one known mislabelled image, ``EQKrGAq_imgr``, a Bad Luck Brian meme that the seed's procedure would
   otherwise turn into a template of its own (``EQKrGAq``), is renamed ``bad-luck-brian_EQKrGAq-imgr``.
3. The first occurrence (in CSV order) of each template is copied to ``TEMPLATES/<template>.<ext>``.
4. The labels are written as data (:mod:`helpers.ground_truth`): ``IMAGES/labels.csv`` and
   ``TEMPLATES/labels.csv`` (the template of each image) and ``IMAGES/ground_truth.csv`` (each meme is a copy of
   its template image).

Re-running is safe: images already renamed and templates already present are counted, not redone. Ids that
match no file, files the CSV does not list, and name clashes are reported and listed in
``TEMPLATES/../kaggle_splitter_skipped.txt``; a CSV that lacks the columns or matches no image at all is an
error. ``--dry-run`` shows what would be done. The seed picked each template from the file-system order of the
renamed files; the CSV order used here is the same "first occurrence" made deterministic.
"""
import argparse
import csv
import logging
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.cli import add_common_arguments, run_cli  # noqa: E402
from helpers.datasets import identity_of  # noqa: E402
from helpers.image_io import SkipReport, list_images  # noqa: E402

logger = logging.getLogger(__name__)

#: Known labelling errors of the Kaggle dataset: file stem (after the CSV renaming) -> (template, new id).
KNOWN_FIXES = {"EQKrGAq_imgr": ("bad-luck-brian", "EQKrGAq-imgr")}


class CsvFormatError(ValueError):
    """The CSV cannot be used (missing, empty, without the needed columns)."""


def _column_index(header, column, role):
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        index = int(column)
        if index >= len(header):
            raise CsvFormatError(
                f"the CSV has {len(header)} column(s) ({', '.join(header) or 'none'}); the {role} column "
                f"{index} does not exist. Expected reddit_posts.csv: image id in column 0, template in column 1 "
                f"(or name the columns with --id-column / --template-column)")
        return index
    if column not in header:
        raise CsvFormatError(f"the CSV has no {role} column {column!r}; its columns are: {', '.join(header)}")
    return header.index(column)


def read_labels(csv_path, id_column=0, template_column=1):
    """``[(image_id, template), ...]`` in CSV order (header row skipped, as the seed does).

    Raises
    ------
    CsvFormatError
        Missing or empty file, not UTF-8, too few columns, or no usable row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CsvFormatError(f"CSV file not found: {csv_path}")
    try:
        with open(csv_path, "r", encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"{csv_path} is not a UTF-8 text CSV ({exc})")
    except csv.Error as exc:
        raise CsvFormatError(f"{csv_path} is not a valid CSV ({exc})")
    if not rows:
        raise CsvFormatError(f"{csv_path} is empty; expected a header row and one row per meme")
    header = [name.strip() for name in rows[0]]
    id_index = _column_index(header, id_column, "image id")
    template_index = _column_index(header, template_column, "template")
    labels, bad = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) <= max(id_index, template_index) or not row[id_index].strip() or not row[template_index].strip():
            bad.append(line)
            continue
        labels.append((row[id_index].strip(), row[template_index].strip()))
    if not labels:
        raise CsvFormatError(f"{csv_path} has no row with both an image id (column {id_index}) and a template "
                             f"(column {template_index})")
    if bad:
        logger.warning("%s: %d row(s) without an id or a template ignored (lines %s%s)", csv_path, len(bad),
                       ", ".join(map(str, bad[:10])), " ..." if len(bad) > 10 else "")
    return labels


def _clean(part):
    """A name part usable in the identity convention and as a file name."""
    return part.replace("?", "").replace("_", "-").replace("/", "-").replace("\\", "-")


def plan_split(labels, images_dir, report):
    """The renames ``[(source, target)]``, the final name of every labelled image and the templates' sources."""
    images_dir = Path(images_dir)
    by_stem = {}
    for path in list_images(images_dir, recursive=False, report=report):
        if path.stem in by_stem:
            report.add(path, f"same stem as {by_stem[path.stem].name}: ambiguous id, left as is")
            continue
        by_stem[path.stem] = path
    existing_names = {path.name for path in by_stem.values()}
    renames, final_paths, matched, listed = [], [], 0, set()
    for image_id, template in labels:
        source = by_stem.get(image_id) or by_stem.get(image_id.replace("?", ""))
        stem = f"{_clean(template)}_{_clean(image_id)}"
        stem_fixed = "_".join(KNOWN_FIXES[stem]) if stem in KNOWN_FIXES else stem
        if source is None:
            already = [by_stem[s] for s in (stem_fixed, stem) if s in by_stem]
            if already:  # renamed by an earlier run
                matched += 1
                listed.add(already[0])
                final_paths.append(already[0])
            else:
                report.add(images_dir / image_id, f"listed in the CSV (template {template!r}) but no such image")
            continue
        matched += 1
        if source in listed:
            continue  # the same id listed twice: the first row wins
        listed.add(source)
        target = images_dir / f"{stem_fixed}{source.suffix}"
        if target.name in existing_names and target != source:
            report.add(source, f"cannot rename to {target.name}: a file of that name exists")
            continue
        existing_names.add(target.name)
        renames.append((source, target))
        final_paths.append(target)
    for stem, path in by_stem.items():
        if path in listed:
            continue
        if stem in KNOWN_FIXES:
            target = images_dir / ("_".join(KNOWN_FIXES[stem]) + path.suffix)
            renames.append((path, target))
            final_paths.append(target)
        else:
            report.add(path, "not listed in the CSV: left as is (its identity is unknown)")
    templates = {}
    for path in final_paths:
        templates.setdefault(identity_of(path), path)
    return renames, templates, matched


def split_kaggle(csv_path, images_dir, templates_dir, id_column=0, template_column=1, dry_run=False):
    """Rename the memes ``<template>_<id>``, fix the mislabelled one, copy one template image per class.

    Returns
    -------
    dict
        ``rows`` (labelled rows), ``matched`` (rows whose image exists), ``renamed``, ``templates_written``,
        ``templates_existing``, ``skipped`` (list of ``[path, reason]``).

    Raises
    ------
    CsvFormatError
        The CSV is unusable, or none of its ids matches an image of ``images_dir``.
    FileNotFoundError
        ``images_dir`` does not exist.
    """
    images_dir, templates_dir = Path(images_dir), Path(templates_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    labels = read_labels(csv_path, id_column, template_column)
    report = SkipReport()
    renames, templates, matched = plan_split(labels, images_dir, report)
    if matched == 0:
        raise CsvFormatError(f"none of the {len(labels)} image ids of {csv_path} (column {id_column}) matches an "
                             f"image file in {images_dir}: wrong CSV, wrong folder or wrong --id-column?")
    summary = {"rows": len(labels), "matched": matched, "renamed": 0, "templates_written": 0,
               "templates_existing": 0}
    for source, target in renames:
        if source == target:
            continue
        if dry_run:
            print(f"rename {source.name} -> {target.name}")
        else:
            source.rename(target)
        summary["renamed"] += 1
    if not dry_run:
        templates_dir.mkdir(parents=True, exist_ok=True)
    for template, path in templates.items():
        destination = templates_dir / f"{template}{path.suffix}"
        if destination.exists():
            summary["templates_existing"] += 1
            continue
        if dry_run:
            print(f"copy {path.name} -> {destination}")
        else:
            shutil.copy2(path, destination)
        summary["templates_written"] += 1
    if not dry_run:
        _write_truth(images_dir, templates_dir, renames, templates)
    if report:
        report.warn(logger)
        if not dry_run:
            report.write(templates_dir.parent, name="kaggle_splitter_skipped.txt")
    summary["skipped"] = [list(item) for item in report.items]
    return summary


def _write_truth(images_dir, templates_dir, renames, templates):
    """The labels as data: ``IMAGES/labels.csv`` (meme -> template), ``TEMPLATES/labels.csv`` and
    ``IMAGES/ground_truth.csv`` (each meme is a copy of its template image)."""
    from helpers.ground_truth import GROUND_TRUTH_FILE, LABELS_FILE, write_ground_truth, write_labels

    final = {target.name for _, target in renames} | {p.name for p in images_dir.iterdir() if p.is_file()}
    memes = {name: identity_of(name) for name in sorted(final) if "_" in Path(name).stem
             and (images_dir / name).is_file()}
    template_files = {template: f"{template}{path.suffix}" for template, path in templates.items()}
    write_labels(images_dir / LABELS_FILE, memes)
    write_labels(templates_dir / LABELS_FILE, {file: template for template, file in template_files.items()})
    write_ground_truth(images_dir / GROUND_TRUTH_FILE,
                       [(name, template_files.get(template), "meme") for name, template in memes.items()])


def build_parser():
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="kaggle_splitter.py",
        description="Prepare the Kaggle memes dataset as the seed did: rename the images of IMAGES to "
                    "<template>_<id> (from the CSV), fix the known mislabelled image, and copy the first meme "
                    "of each template to TEMPLATES/<template>.<ext>.")
    parser.add_argument("csv", help="reddit_posts.csv of the Kaggle archive")
    parser.add_argument("images", help="folder of the meme images (archive/images/kaggle_images); renamed in place")
    parser.add_argument("templates", help="folder to create with one template image per class")
    parser.add_argument("--id-column", default="0",
                        help="CSV column of the image id (file stem): index or header name (default: %(default)s)")
    parser.add_argument("--template-column", default="1",
                        help="CSV column of the template name: index or header name (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be renamed and copied; change nothing")
    add_common_arguments(parser, device=False, seed=False, force=False)
    return parser


def main(argv=None):
    """Entry point of ``python3 data_retrieval/kaggle_splitter.py``."""
    return run_cli(build_parser(), _run, argv, errors=(OSError,))


def _run(args):
    summary = split_kaggle(args.csv, args.images, args.templates, args.id_column, args.template_column,
                           dry_run=args.dry_run)
    print(f"CSV rows: {summary['rows']}, with an image: {summary['matched']}, renamed: {summary['renamed']}, "
          f"templates written: {summary['templates_written']} (already present: {summary['templates_existing']}), "
          f"reported: {len(summary['skipped'])}{' (dry run: nothing changed)' if args.dry_run else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
