#!/usr/bin/env python3
"""Query a saved index with one or more images.

Example::

    python3 query.py holiday.jpg --index photos -k 10 --json neighbours.json
"""
from dedup.index_cli import query_parser, run_query
from helpers.cli import keyword_flags, passive_openmp_wait, run_cli


def main(argv=None):
    passive_openmp_wait()  # before FAISS is loaded
    return run_cli(query_parser(), lambda args: run_query(**keyword_flags(args)), argv)


if __name__ == "__main__":
    main()
