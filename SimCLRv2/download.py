"""Download an official SimCLRv2 TensorFlow checkpoint and convert it to PyTorch.

Usage (from the repository root or from this folder)::

    python3 SimCLRv2/download.py --model r50_2x_sk1 --simclr_category pretrained --ema True
    python3 SimCLRv2/download.py --model r50_2x_sk1 --from-dir /path/to/downloaded/files   # offline
    python3 SimCLRv2/download.py -h
"""
import sys
from pathlib import Path

# Runnable from anywhere: put the repository root (SimCLRv2, helpers) first on the path, in place of this
# folder, whose module names (resnet, convert, ...) must not shadow anything as top-level modules.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from SimCLRv2 import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
