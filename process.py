#!/usr/bin/env python3
"""Plots of a search experiment (Results/NAME/results.json) as PNG and PDF in Results/NAME/.

Example::

    python3 process.py flat_k --log-y
"""
from fast_search.cli import process_parser, run_cli
from fast_search.plot import process_experiment


def main(argv=None):
    return run_cli(process_parser(), process_experiment, argv)


if __name__ == "__main__":
    main()
