"""The one JSON results writer (and reader) of the toolkit."""
import json
import math
import os
from pathlib import Path

import numpy as np


def to_jsonable(obj):
    """Convert NumPy scalars/arrays, paths, sets and tuples to JSON types; NaN and inf become ``None``."""
    if isinstance(obj, dict):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, data, indent=2):
    """Write ``data`` as JSON atomically (temporary file, then rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(to_jsonable(data), handle, indent=indent, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path):
    """Read a JSON file written by :func:`write_json`."""
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)
