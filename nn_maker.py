#!/usr/bin/env python3
"""Make a training set distributed like a target set (seed 002, step 1-2; see data_retrieval/nn_maker.py and the
README's section).

Example::

    python3 extract_features.py --algo "ResNet50 1x" --dataset Datasets/target Flickr500K
    python3 nn_maker.py --target Features/target/resnet50_1x --near Features/Flickr500K/resnet50_1x \\
        --save-dir Results/nn_maker/target --nn-factor 20 --dist-thr 0.3 --symlink
"""
import sys

from data_retrieval.nn_maker import main

if __name__ == "__main__":
    sys.exit(main())
