#!/usr/bin/env python3
"""Query a saved index with one or more images.

Example::

    python3 query.py holiday.jpg --index photos -k 10 --json neighbours.json
"""
from dedup.index_cli import query_parser, run_query
from fast_search.cli import run_cli


def main(argv=None):
    return run_cli(query_parser(), run_query, argv)


if __name__ == "__main__":
    main()
