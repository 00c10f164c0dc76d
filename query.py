#!/usr/bin/env python3
"""Query a saved index with one or more images.

Example::

    python3 query.py holiday.jpg --index photos -k 10 --json neighbours.json
    python3 query.py --index photos --serve < list_of_paths.txt     # loads once, one answer per line
"""
from dedup.index_cli import main_query


def main(argv=None):
    return main_query(argv)


if __name__ == "__main__":
    main()
