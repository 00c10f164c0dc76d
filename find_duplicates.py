#!/usr/bin/env python3
"""Find the duplicate images of a folder, or of a folder against a reference folder.

Example::

    python3 find_duplicates.py ~/Photos --algo "Phash 64 bits" --move-to ~/Photos-duplicates   # dry run
    python3 find_duplicates.py ~/Photos --move-to ~/Photos-duplicates --apply
    python3 find_duplicates.py --undo Duplicates/Photos/undo.jsonl
"""
from dedup.find import build_parser, run_find
from helpers.cli import keyword_flags, passive_openmp_wait, run_cli


def main(argv=None):
    passive_openmp_wait()  # before FAISS is loaded
    return run_cli(build_parser(), lambda args: run_find(**keyword_flags(args)), argv)


if __name__ == "__main__":
    main()
