"""Reproducible randomness."""
import hashlib
import random

import numpy as np


def seed_everything(seed):
    """Seed Python, NumPy and (when installed) PyTorch generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a runtime requirement
        return
    torch.manual_seed(seed)


def stable_seed(*parts):
    """A 32-bit seed derived from ``parts`` (strings, numbers) that does not depend on the process.

    Python's ``hash`` is salted per process, so it cannot seed work that must give the same result whatever the
    worker count or order; this uses SHA-256 of the parts instead.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")
