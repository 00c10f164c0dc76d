#!/usr/bin/env python3
"""Neighbour gallery for visual inspection: Neighbors/NAME/{Correct,Incorrect,NoOriginal}/ and index.html.

Example::

    python3 explore_neighbors.py --name memes_cosine --algo "SimCLR v2 ResNet50 2x" \
        --main-dataset Kaggle_templates --query-dataset Kaggle_memes --metric cosine --k 10
"""
from fast_search.cli import explore_neighbors_parser
from fast_search.neighbors import explore_neighbors
from helpers.cli import keyword_flags, run_cli


def main(argv=None):
    return run_cli(explore_neighbors_parser(), lambda args: explore_neighbors(**keyword_flags(args)), argv)


if __name__ == "__main__":
    main()
