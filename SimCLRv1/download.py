"""Download an official SimCLRv1 TensorFlow checkpoint and convert it to PyTorch.

Usage (from the repository root or from this folder)::

    python3 SimCLRv1/download.py --model 2x --category pretrain
    python3 SimCLRv1/download.py --model 2x --from-dir /path/to/downloaded/files   # offline
    python3 SimCLRv1/download.py -h
"""
import sys
from pathlib import Path

# Same path set-up as SimCLRv2/download.py: the repository root replaces this folder on the path.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from SimCLRv1 import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
