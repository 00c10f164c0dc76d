"""Build a stand-in for the Kaggle memes dataset from a folder of template images.

Usage (from the repository root)::

    python3 data_retrieval/build_memes.py TEMPLATES_DIR OUT_DIR --per-template 20 --workers 2

writes ``OUT_DIR/Memes/<template>_<n>.jpg`` and ``OUT_DIR/Templates/<template>.jpg`` (see
:mod:`data_retrieval.memes`). Resumable; bad template files are skipped and listed in ``OUT_DIR/skipped.txt``.
"""
import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_retrieval.memes import build_memes  # noqa: E402
from helpers.cli import add_common_arguments, add_max_pixels_argument, run_cli  # noqa: E402


def build_parser():
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="build_memes.py",
        description="Generate memes (captions, caption bars, crops up to 15%%, rescales, JPEG) from template "
                    "images: OUT_DIR/Memes/<template>_<n>.jpg and OUT_DIR/Templates/<template>.jpg. Template "
                    "names are the file stems with '_' replaced by '-'. Existing files are kept.")
    parser.add_argument("templates_dir", help="folder of template images (read recursively)")
    parser.add_argument("out_dir", help="output folder (Memes/ and Templates/ are created in it)")
    parser.add_argument("--per-template", type=int, default=20, help="memes per template (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="parallel processes (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_pixels_argument(parser)
    add_common_arguments(parser, device=False, seed=True, force=False)
    return parser


def main(argv=None):
    """Entry point of ``python3 data_retrieval/build_memes.py``."""
    return run_cli(build_parser(), _run, argv, errors=(OSError,))


def _run(args):
    summary = build_memes(args.templates_dir, args.out_dir, per_template=args.per_template, seed=args.seed,
                          workers=args.workers, progress=not args.no_progress, max_pixels=args.max_pixels)
    print(f"templates: {summary['templates_total']} (read {summary['templates_read']}, "
          f"{summary['templates_written']} template files written), memes written: {summary['memes_written']}, "
          f"already present: {summary['memes_existing']}, skipped: {len(summary['skipped'])}, "
          f"{summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    from data_retrieval.build_memes import main as _main  # the package module, so workers can import it

    sys.exit(_main())
