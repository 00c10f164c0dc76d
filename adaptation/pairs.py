"""Similar-image pairs: reading them, finding their feature rows, and splitting them without leaks.

A pairs file is a CSV with the header ``left,right`` (the seed's pairs: Totally Looks Like, two images people
judged alike) or a ground-truth file with the header ``query,reference`` (rows with an empty reference, negative
queries, are skipped). Paths are as in the feature store's ``names.txt``, or relative to the CSV's folder, to the
repository root or to the dataset's folders.
"""
import csv
import os
from pathlib import Path

import numpy as np

from helpers.paths import REPO_ROOT

PAIR_HEADERS = (("left", "right"), ("query", "reference"))


class PairsError(ValueError):
    """A pairs file that cannot be read or matched to the features."""


def read_ground_truth_pairs(path):
    """``(query, reference)`` pairs of a ground-truth file (``query,reference[,attack]``, or DISC21's
    ``query_id,reference_id``), read by :func:`helpers.ground_truth.read_ground_truth`.

    Rows without a reference (negative queries) are skipped.
    """
    from helpers.ground_truth import GroundTruthError, read_ground_truth

    try:
        pairs = [(query, reference) for query, reference, _ in read_ground_truth(path).rows() if reference]
    except GroundTruthError as exc:
        raise PairsError(str(exc)) from None
    if not pairs:
        raise PairsError(f"{path} holds no pair (every query is negative)")
    return pairs


def read_pairs(path, columns=None):
    """Pairs ``[(left, right), ...]`` of a CSV with the header ``left,right`` or ``query,reference``.

    Parameters
    ----------
    path : path
    columns : tuple of str, optional
        The two columns to read; by default the first of :data:`PAIR_HEADERS` the header has.

    Raises
    ------
    PairsError
        When the file is missing, has neither header, or holds no pair.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"pairs file not found: {path}")
    if columns is None:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            first = handle.readline().strip().lower().replace(" ", "")
        if first.startswith(("query,reference", "query_id,reference_id")):
            return read_ground_truth_pairs(path)  # ground truth: the one reader of those files
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        if columns is None:
            columns = next((cols for cols in PAIR_HEADERS if all(c in header for c in cols)), None)
        if columns is None or not all(c in header for c in columns):
            raise PairsError(f"{path}: expected a header 'left,right' (pairs) or 'query,reference' (ground truth), "
                             f"got {','.join(header) or 'nothing'}")
        left, right = columns
        pairs = [((row.get(left) or "").strip(), (row.get(right) or "").strip()) for row in reader]
    pairs = [(a, b) for a, b in pairs if a and b]
    if not pairs:
        raise PairsError(f"{path} holds no pair (every row needs both '{left}' and '{right}')")
    return pairs


def _absolute(name):
    path = Path(name)
    return os.path.normpath(str(path if path.is_absolute() else REPO_ROOT / path))


def _resolved(path):
    return str(Path(path).resolve())


class NameMatcher:
    """Finds the row of an image path among a store's names (exact name, or the same file on disk)."""

    def __init__(self, names, roots=()):
        self.exact = {}
        self.by_file = {}
        for row, name in enumerate(names):
            self.exact.setdefault(name, row)
            self.by_file.setdefault(_resolved(_absolute(name)), row)
        self.roots = [Path(root) for root in roots]

    def row(self, path):
        """The row of ``path``, or ``None``."""
        if path in self.exact:
            return self.exact[path]
        candidate = Path(path)
        candidates = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        for option in candidates:
            row = self.by_file.get(_resolved(option))
            if row is not None:
                return row
        return None


def match_pairs(pairs, names, roots=()):
    """Row indices ``[n_pairs, 2]`` of the pairs in a store whose rows are ``names``.

    Parameters
    ----------
    pairs : list of (str, str)
    names : list of str
        The store's ``names.txt``.
    roots : list of path
        Folders relative paths are tried against (the CSV's folder, the repository root, the dataset folders).

    Raises
    ------
    PairsError
        When an image of a pair is not in the store (the first few are listed), or a pair is an image with itself.
    """
    matcher = NameMatcher(names, roots=list(roots) + [REPO_ROOT])
    rows, missing = [], []
    for left, right in pairs:
        a, b = matcher.row(left), matcher.row(right)
        if a is None:
            missing.append(left)
        if b is None:
            missing.append(right)
        rows.append((a, b))
    if missing:
        raise PairsError(f"{len(missing)} image(s) of the pairs are not in the features (e.g. {missing[:3]}); "
                         "extract features of the datasets holding them, or fix the paths (as in names.txt, or "
                         "relative to the pairs file, the repository or the dataset folder)")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    same = np.flatnonzero(rows[:, 0] == rows[:, 1])
    if same.size:
        raise PairsError(f"pair {int(same[0]) + 1} is an image with itself ({pairs[int(same[0])][0]})")
    return rows


def pair_groups(rows):
    """Connected components of the pair graph: pairs sharing an image (directly or through others) share a group.

    Returns an ``int64 [n_pairs]`` group id per pair.
    """
    rows = np.asarray(rows, dtype=np.int64)
    parent = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in rows:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(int(a)) for a in rows[:, 0]]
    _, groups = np.unique(roots, return_inverse=True)
    return groups.astype(np.int64)


def split_pairs(rows, test_split=0.25, seed=0):
    """Train/test pair indices; pairs that share an image stay on the same side (held-out images).

    Whole groups (:func:`pair_groups`) go to the test side in a random order until it holds about
    ``test_split`` of the pairs.

    Returns
    -------
    train, test : ndarray of int64
        Sorted pair indices.
    """
    if not 0 < test_split < 1:
        raise ValueError(f"--test-split must be between 0 and 1 (exclusive), got {test_split}")
    groups = pair_groups(rows)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < 2:
        raise PairsError(f"the {len(rows)} pairs form {n_groups} group(s) of connected images; a held-out split "
                         "needs at least 2 groups")
    order = np.random.default_rng(seed).permutation(n_groups)
    sizes = np.bincount(groups, minlength=n_groups)
    target = test_split * len(rows)
    test_groups, count = [], 0
    for group in order:
        if count >= target or len(test_groups) == n_groups - 1:
            break
        test_groups.append(group)
        count += sizes[group]
    is_test = np.isin(groups, test_groups)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
