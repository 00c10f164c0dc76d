#!/usr/bin/env python3
"""SCAN clustering on frozen features, with the self-labelling step (seed 002, steps 2-3; see clustering/scan.py
and the README's section).

Example::

    python3 scan.py --features Features/demo_memes/resnet50_1x --labels files --runs 5 \\
        --config configs/scan/scan_memes.yml
"""
import sys

from clustering.scan_pipeline import main

if __name__ == "__main__":
    sys.exit(main())
