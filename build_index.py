#!/usr/bin/env python3
"""Save an index of a folder of images, or append images to one.

Example::

    python3 build_index.py ~/Photos --index photos --algo EfficientNet-Lite0
    python3 build_index.py ~/Photos/2027 --index photos --append
"""
from dedup.index_cli import build_parser, run_build
from fast_search.cli import run_cli


def main(argv=None):
    return run_cli(build_parser(), run_build, argv)


if __name__ == "__main__":
    main()
