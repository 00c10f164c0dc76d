#!/usr/bin/env python3
"""Save an index of a folder of images, or append images to one.

Example::

    python3 build_index.py ~/Photos --index photos --algo EfficientNet-Lite0
    python3 build_index.py ~/Photos/2027 --index photos --append
"""
from dedup.index_cli import build_parser, run_build
from helpers.cli import keyword_flags, passive_openmp_wait, run_cli


def main(argv=None):
    passive_openmp_wait()  # before FAISS is loaded
    return run_cli(build_parser(), lambda args: run_build(**keyword_flags(args)), argv)


if __name__ == "__main__":
    main()
