#!/usr/bin/env python3
"""Learn an adaptation function on frozen features (seed 001; see adaptation/ and the README's section).

Examples::

    # features of the pairs' images, then 5 runs of the seed's module (1024-d ReLU(W x), 150 epochs, t = 1/15)
    python3 extract_features.py --algo "EfficientNet-Lite0" --dataset Datasets/TLL --pca 256 --pca-fit-dataset Datasets/TLL
    python3 train_adaptation.py --features "Features/TLL/efficientnet-lite0_pca256_on_tll" --pairs TLL_pairs.csv \\
        --model original --epochs 150 --runs 5 --test-split 0.25 -k 1 3 5
    # the adapted features as a searchable store
    python3 extract_features.py --algo "EfficientNet-Lite0" --dataset Datasets/TLL --pca 256 \\
        --pca-fit-dataset Datasets/TLL --adapt Results/adaptation/<name>/run_0/adaptation.pt
"""
import sys

from adaptation.train import main

if __name__ == "__main__":
    sys.exit(main())
