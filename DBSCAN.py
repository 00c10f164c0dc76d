#!/usr/bin/env python3
"""DBSCAN / HDBSCAN clustering of image features (see clustering/density.py and the Clustering section of README.md).

Run ``python3 DBSCAN.py -h`` for every flag.
"""
from clustering.density import build_parser, run
from clustering.pipeline import CLI_ERRORS
from helpers.cli import run_cli

if __name__ == "__main__":
    run_cli(build_parser(), run, errors=CLI_ERRORS)
