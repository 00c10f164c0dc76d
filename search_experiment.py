#!/usr/bin/env python3
"""Search experiment: recall@k, uAP and search time of queries against a feature database.

Example::

    python3 search_experiment.py flat_k --algo "SimCLR v2 ResNet50 2x" "Dhash 64 bits" \
        --main-dataset BSDS500_original --query-dataset BSDS500_attacks --distractor-dataset Flickr500K \
        --experiment k --ks 1 5 10
"""
from fast_search.cli import search_experiment_parser
from fast_search.experiment import run_experiment
from helpers.cli import keyword_flags, run_cli


def main(argv=None):
    return run_cli(search_experiment_parser(), lambda args: run_experiment(**keyword_flags(args)), argv)


if __name__ == "__main__":
    main()
