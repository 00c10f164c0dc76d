#!/usr/bin/env python3
"""k-means clustering of image features, k given or estimated (see clustering/kmeans.py and the Clustering section of README.md).

Run ``python3 kmeans.py -h`` for every flag.
"""
from clustering.kmeans import build_parser, run
from clustering.pipeline import CLI_ERRORS
from helpers.cli import run_cli

if __name__ == "__main__":
    run_cli(build_parser(), run, errors=CLI_ERRORS)
