#!/usr/bin/env python3
"""Query a saved index with one or more images.

Example::

    python3 query.py holiday.jpg --index photos -k 10 --json neighbours.json
    python3 query.py --index photos --serve < list_of_paths.txt     # loads once, one answer per line
"""
from dedup.index_cli import query_parser, run_query
from helpers.cli import keyword_flags, passive_openmp_wait, run_cli


def _echo(*values):
    print(*values, flush=True)  # flushed: with --serve a client reads each answer as it comes


def main(argv=None):
    passive_openmp_wait()  # before FAISS is loaded
    return run_cli(query_parser(), lambda args: run_query(**keyword_flags(args), argv=argv, echo=_echo), argv)


if __name__ == "__main__":
    main()
