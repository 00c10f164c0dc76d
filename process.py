#!/usr/bin/env python3
"""Plots of a search experiment (Results/NAME/results.json) as PNG and PDF in Results/NAME/.

Example::

    python3 process.py flat_k --log-y
"""
from fast_search.cli import process_parser
from fast_search.plot import process_experiment
from helpers.cli import run_cli


def main(argv=None):
    return run_cli(process_parser(), lambda args: process_experiment(args.name, args.results_root, args.log_y,
                                                                      args.formats), argv)


if __name__ == "__main__":
    main()
