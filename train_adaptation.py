#!/usr/bin/env python3
"""Learn an adaptation function on frozen features (seed 001; see adaptation/ and the README's section).

Examples::

    # features of the pairs' images, then 5 runs of the seed's recipe: PCA 256 (fitted on the training images) and
    # the 1024-d ReLU(W x) module, 150 epochs, temperature 1/15
    python3 extract_features.py --algo EfficientNet-Lite0 --dataset Datasets/TLL
    python3 train_adaptation.py --features Features/TLL/efficientnet-lite0 --pairs TLL_pairs.csv --input-pca \
        --model original --epochs 150 --runs 5 --test-split 0.25 -k 1 3 5
    # the adapted features as a searchable store (the checkpoint holds the PCA)
    python3 extract_features.py --algo EfficientNet-Lite0 --dataset Datasets/TLL \
        --adapt Results/adaptation/<experiment>/run_0/adaptation.pt
"""
import sys

from adaptation.train import main

if __name__ == "__main__":
    sys.exit(main())
