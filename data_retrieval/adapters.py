"""Dataset adapters: write the ground-truth files (:mod:`helpers.ground_truth`) of datasets in their own layout.

Usage (from the repository root)::

    python3 data_retrieval/adapters.py copydays Datasets/Copydays
    python3 data_retrieval/adapters.py names QUERY_FOLDER REFERENCE_FOLDER     # folders of older versions
    python3 data_retrieval/adapters.py csv PAIRS.csv QUERY_FOLDER --query-column copy --reference-column original
    python3 data_retrieval/adapters.py folder-labels CLASS_FOLDERS              # <class>/<image> -> labels.csv
    python3 data_retrieval/adapters.py name-labels MEMES [--templates TEMPLATES]  # <template>_<n> -> labels.csv

DISC21 needs no adapter: its ``dev_ground_truth.csv`` / ``final_ground_truth.csv`` (``query_id,reference_id``)
are read as they are (``DISC21_dev_queries`` / ``DISC21_final_queries``, see ``Datasets/README.md``). The layouts
are described in ``Datasets/README.md``; each adapter refuses (one ``error:`` line) rather than guess.
"""
import argparse
import csv
import sys
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.cli import add_common_arguments, run_cli  # noqa: E402
from helpers.ground_truth import (GROUND_TRUTH_FILE, LABELS_FILE, GroundTruthError,  # noqa: E402
                                  ground_truth_from_names, labels_from_names, labels_from_subfolders,
                                  write_ground_truth, write_labels)
from helpers.image_io import SkipReport, list_images  # noqa: E402

COPYDAYS_QUERY_FOLDERS = ("crops", "jpegqual", "strong")


def _relative(paths, root):
    root = Path(root)
    return [PurePosixPath(*Path(path).relative_to(root).parts).as_posix() for path in paths]


def _images(folder, report=None):
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    return list_images(folder, report=report if report is not None else SkipReport())


def copydays_ground_truth(root):
    """``root/ground_truth.csv`` of INRIA Copydays.

    Layout: ``original/<id>.jpg`` (157 originals whose ids end in ``00``), ``crops/<percent>/<id>.jpg``,
    ``jpegqual/<quality>/<id>.jpg`` (same file name as the original) and ``strong/<id>.jpg`` (ids ending in
    ``01``, ``02``...: a strong edit of original ``<id[:-2]>00``). Queries are named as the registered dataset
    ``Copydays_queries`` names them (``crops/<percent>/<id>.jpg`` ...), attacks are ``crops_<percent>``,
    ``jpegqual_<quality>`` and ``strong``.

    Raises
    ------
    GroundTruthError
        When a query has no original, or ``original/`` is missing.
    """
    root = Path(root)
    originals = {Path(key).stem: key for key in _relative(_images(root / "original"), root / "original")}
    if not originals:
        raise GroundTruthError(f"{root / 'original'} holds no image")
    rows, orphans = [], []
    for folder in COPYDAYS_QUERY_FOLDERS:
        if not (root / folder).is_dir():
            continue
        for key in _relative(_images(root / folder), root / folder):
            parts = PurePosixPath(key).parts
            stem = PurePosixPath(key).stem
            if folder == "strong":
                original, attack = originals.get(stem[:-2] + "00"), "strong"
            else:
                original, attack = originals.get(stem), f"{folder}_{parts[0]}" if len(parts) > 1 else folder
            if original is None:
                orphans.append(f"{folder}/{key}")
            rows.append((f"{folder}/{key}", original, attack))
    if not rows:
        raise GroundTruthError(f"{root} has none of the query folders {', '.join(COPYDAYS_QUERY_FOLDERS)}")
    if orphans:
        raise GroundTruthError(f"{len(orphans)} Copydays queries have no original in {root / 'original'} (e.g. "
                               f"{orphans[0]}); is the layout the one of Datasets/README.md?")
    return write_ground_truth(root / GROUND_TRUTH_FILE, rows)


def names_ground_truth(query_folder, reference_folder):
    """``query_folder/ground_truth.csv`` from the seed's file names (``<id>_<attack>`` is a copy of ``<id>``)."""
    queries = _relative(_images(query_folder), query_folder)
    references = _relative(_images(reference_folder), reference_folder)
    truth = ground_truth_from_names(queries, references)
    return write_ground_truth(Path(query_folder) / GROUND_TRUTH_FILE, truth.rows())


def csv_ground_truth(source, query_folder, query_column, reference_column, attack_column=None):
    """``query_folder/ground_truth.csv`` from any CSV that names each copy and its original (columns by name)."""
    source = Path(source)
    try:
        with open(source, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in (query_column, reference_column, attack_column) if c and c not in
                       (reader.fieldnames or [])]
            if missing:
                raise GroundTruthError(f"{source} has no column {missing[0]!r} (columns: "
                                       f"{', '.join(reader.fieldnames or [])})")
            rows = [(row[query_column], row[reference_column] or None, row[attack_column] if attack_column else None)
                    for row in reader]
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read {source}: {exc}") from None
    present = set(_relative(_images(query_folder), query_folder))
    absent = [query for query, _, _ in rows if query not in present]
    if absent:
        raise GroundTruthError(f"{len(absent)} queries of {source} are not in {query_folder} (e.g. {absent[0]!r}); "
                               "paths must be relative to the query folder")
    return write_ground_truth(Path(query_folder) / GROUND_TRUTH_FILE, rows)


def folder_labels(folder):
    """``folder/labels.csv`` of a folder-per-class dataset (``<class>/<image>``)."""
    return write_labels(Path(folder) / LABELS_FILE, labels_from_subfolders(_relative(_images(folder), folder)))


def name_labels(folder, templates=None):
    """``folder/labels.csv`` from the meme convention (``<template>_<n>``); with ``templates``, also
    ``templates/labels.csv`` (each template labelled by its own stem)."""
    template_keys = _relative(_images(templates), templates) if templates else []
    template_stems = [PurePosixPath(key).stem for key in template_keys]
    written = [write_labels(Path(folder) / LABELS_FILE,
                            labels_from_names(_relative(_images(folder), folder), template_stems))]
    if templates:
        written.append(write_labels(Path(templates) / LABELS_FILE, labels_from_names(template_keys, template_keys)))
    return written


def build_parser():
    parser = argparse.ArgumentParser(prog="adapters.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("copydays", help="ground_truth.csv of Copydays (original/, crops/, jpegqual/, strong/)")
    p.add_argument("root")
    p = sub.add_parser("names", help="ground_truth.csv from <id>_<attack> file names (folders of older versions)")
    p.add_argument("query_folder")
    p.add_argument("reference_folder")
    p = sub.add_parser("csv", help="ground_truth.csv from any CSV of (copy, original) paths")
    p.add_argument("source")
    p.add_argument("query_folder")
    p.add_argument("--query-column", required=True)
    p.add_argument("--reference-column", required=True)
    p.add_argument("--attack-column", default=None)
    p = sub.add_parser("folder-labels", help="labels.csv of a folder-per-class dataset")
    p.add_argument("folder")
    p = sub.add_parser("name-labels", help="labels.csv from <template>_<n> meme names")
    p.add_argument("folder")
    p.add_argument("--templates", default=None)
    for action in sub.choices.values():
        add_common_arguments(action, device=False, seed=False, force=False)
    add_common_arguments(parser, device=False, seed=False, force=False)
    return parser


def _run(args):
    if args.command == "copydays":
        written = [copydays_ground_truth(args.root)]
    elif args.command == "names":
        written = [names_ground_truth(args.query_folder, args.reference_folder)]
    elif args.command == "csv":
        written = [csv_ground_truth(args.source, args.query_folder, args.query_column, args.reference_column,
                                    args.attack_column)]
    elif args.command == "folder-labels":
        written = [folder_labels(args.folder)]
    else:
        written = name_labels(args.folder, args.templates)
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv=None):
    return run_cli(build_parser(), _run, argv, errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
