"""Ground truth as data: which query is a copy of which reference, and which class each image belongs to.

Two files, both plain CSV with a header, paths relative to the dataset folder they describe (``/`` separators,
any file name: ``IMG_1234.JPG``, spaces, unicode, sub-folders):

``ground_truth.csv`` (in the query folder; :data:`GROUND_TRUTH_FILE`)
    One row per query image: ``query,reference,attack``. ``query`` is relative to the query dataset's folder,
    ``reference`` to the database (main) dataset's folder; an **empty reference marks a negative query** (no copy
    of it is in the database, as in DISC21). ``attack`` (optional) names the edit family for per-attack results.
    DISC21's own files (``query_id,reference_id``, ids without extension) are accepted as they are: ids are
    matched to file stems.
``labels.csv`` (in a dataset folder; :data:`LABELS_FILE`)
    One row per image: ``image,label`` (meme templates, classes for clustering). A folder-per-class dataset needs
    no file (:func:`labels_from_subfolders`).

The identity of an image is its dataset plus its path inside the dataset (:meth:`helpers.datasets.Dataset.
relative_names`), never a bare file stem: two files with the same name in two sub-folders are two images, and a
distractor can never be mistaken for an original.

Folders written by older versions follow the seed's file-name convention (``<id>_<attack>.<ext>`` is a copy of
``<id>.<ext>``; a meme ``<template>_<n>`` belongs to template ``<template>``). :func:`ground_truth_from_names`
and :func:`labels_from_names` turn such a folder into the files above, and refuse when the convention would be
ambiguous (two database images a query name could belong to).
"""
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .log import get_logger

logger = get_logger(__name__)

GROUND_TRUTH_FILE = "ground_truth.csv"
LABELS_FILE = "labels.csv"
GROUND_TRUTH_HEADER = ("query", "reference", "attack")
DISC21_HEADER = ("query_id", "reference_id")


class GroundTruthError(ValueError):
    """A ground-truth or labels file that is missing, malformed or does not match the images."""


@dataclass
class GroundTruth:
    """Query -> reference pairs (``None`` for a negative query), with the edit family of each query.

    ``by_stem`` is True for DISC21 files, whose ids are file stems rather than relative paths.
    """

    references: dict = field(default_factory=dict)  # query key -> reference key or None
    attacks: dict = field(default_factory=dict)  # query key -> attack id or None
    by_stem: bool = False
    source: str = ""

    def __len__(self):
        return len(self.references)

    def rows(self):
        """``(query, reference or None, attack or None)`` in file order."""
        return [(query, ref, self.attacks.get(query)) for query, ref in self.references.items()]


def _posix(path):
    return PurePosixPath(str(path).replace(os.sep, "/")).as_posix()


def read_ground_truth(path):
    """Read a ``ground_truth.csv`` (``query,reference[,attack]``) or a DISC21 ``query_id,reference_id`` file.

    Raises
    ------
    GroundTruthError
        Missing file, unknown header, or a query listed twice.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read ground-truth file {path}: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    header = tuple(cell.strip().lower() for cell in header) if header else ()
    if header[:2] == GROUND_TRUTH_HEADER[:2]:
        by_stem, attack_col = False, 2 if len(header) > 2 and header[2] == "attack" else None
    elif header[:2] == DISC21_HEADER:
        by_stem, attack_col = True, None
    else:
        raise GroundTruthError(f"{path}: expected a header 'query,reference[,attack]' (or DISC21's "
                               f"'query_id,reference_id'), got {','.join(header) or 'nothing'}")
    truth = GroundTruth(by_stem=by_stem, source=str(path))
    for line_number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        query = _posix(row[0].strip())
        reference = row[1].strip() if len(row) > 1 else ""
        if not query:
            raise GroundTruthError(f"{path}, line {line_number}: empty query")
        if query in truth.references:
            if truth.references[query] != (_posix(reference) if reference else None) or not by_stem:
                raise GroundTruthError(f"{path}, line {line_number}: query {query!r} is listed twice")
            continue
        truth.references[query] = _posix(reference) if reference else None
        attack = row[attack_col].strip() if attack_col is not None and len(row) > attack_col else ""
        truth.attacks[query] = attack or None
    return truth


def write_ground_truth(path, rows):
    """Write ``(query, reference or None, attack or None)`` rows as a ``ground_truth.csv`` (atomically)."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GROUND_TRUTH_HEADER)
    for query, reference, attack in rows:
        writer.writerow([_posix(query), _posix(reference) if reference else "", attack or ""])
    _atomic_write(path, buffer.getvalue())
    return path


def _atomic_write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_labels(path):
    """``{image: label}`` from a ``labels.csv`` (``image,label``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read labels file {path}: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = tuple(cell.strip().lower() for cell in (next(reader, None) or ()))
    if header[:2] != ("image", "label"):
        raise GroundTruthError(f"{path}: expected a header 'image,label', got {','.join(header) or 'nothing'}")
    labels = {}
    for line_number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[1].strip():
            raise GroundTruthError(f"{path}, line {line_number}: an image without a label")
        labels[_posix(row[0].strip())] = row[1].strip()
    return labels


def write_labels(path, labels):
    """Write ``{image: label}`` as a ``labels.csv`` (atomically)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("image", "label"))
    for image, label in labels.items():
        writer.writerow([_posix(image), label])
    _atomic_write(Path(path), buffer.getvalue())
    return Path(path)


# ------------------------------------------------------------------------------------- the file-name adapters


def _stem(key):
    return PurePosixPath(key).stem


def ground_truth_from_names(query_keys, reference_keys):
    """The seed's file-name convention as a :class:`GroundTruth`: ``<id>_<attack>`` is a copy of ``<id>``.

    A query is matched to the reference whose file stem is the longest prefix of the query's stem followed by
    ``_`` (so ``my_photo_rotation_90.png`` is a copy of ``my_photo.jpg``); the rest of the stem is the attack.
    A query with no such reference is a negative query.

    Raises
    ------
    GroundTruthError
        When the convention cannot tell: two references share a stem (``a/x.jpg`` and ``b/x.png``), or a query
        name fits two references (``a`` and ``a_b`` for ``a_b_c``). Write a ``ground_truth.csv`` instead.
    """
    by_stem = {}
    for key in reference_keys:
        by_stem.setdefault(_stem(key), []).append(key)
    clashes = {stem: keys for stem, keys in by_stem.items() if len(keys) > 1}
    if clashes:
        stem, keys = next(iter(clashes.items()))
        raise GroundTruthError(
            f"the file-name convention (<id>_<attack>) cannot tell {len(clashes)} group(s) of database images "
            f"apart (e.g. {', '.join(keys[:3])} all have the id {stem!r}); write a {GROUND_TRUTH_FILE} "
            "(query,reference,attack) in the query folder (see Datasets/README.md)")
    truth = GroundTruth(source="file names (<id>_<attack>)")
    for query in query_keys:
        stem = _stem(query)
        parts = stem.split("_")
        candidates = ["_".join(parts[:cut]) for cut in range(1, len(parts)) if "_".join(parts[:cut]) in by_stem]
        if len(candidates) > 1:
            raise GroundTruthError(
                f"query {query!r} fits several database images by the file-name convention "
                f"({', '.join(by_stem[c][0] for c in candidates)}); write a {GROUND_TRUTH_FILE} instead")
        if candidates:
            truth.references[query] = by_stem[candidates[0]][0]
            truth.attacks[query] = stem[len(candidates[0]) + 1:]
        else:
            truth.references[query] = None
            truth.attacks[query] = None
    return truth


def labels_from_names(keys, template_keys=()):
    """The meme convention as labels: ``<template>_<rest>`` has the label ``<template>``; a template image (in
    ``template_keys``, or a stem without ``_``) is labelled by its own stem."""
    labels = {}
    templates = {_stem(key) for key in template_keys}
    for key in keys:
        stem = _stem(key)
        if key in template_keys or "_" not in stem:
            labels[key] = stem
            continue
        parts = stem.split("_")
        known = [("_".join(parts[:cut])) for cut in range(len(parts) - 1, 0, -1) if "_".join(parts[:cut]) in
                 templates]
        labels[key] = known[0] if known else parts[0]
    return labels


def labels_from_subfolders(keys):
    """Folder-per-class labels: the first folder of each relative path (``cat/001.jpg`` -> ``cat``).

    Raises
    ------
    GroundTruthError
        When an image lies directly in the dataset folder (it has no class folder).
    """
    labels = {}
    for key in keys:
        parts = PurePosixPath(key).parts
        if len(parts) < 2:
            raise GroundTruthError(f"{key!r} is not inside a class folder: a folder-per-class dataset keeps each "
                                   "image in <class>/<image>")
        labels[key] = parts[0]
    return labels


# ---------------------------------------------------------------------------------------- matching to stores


def find_ground_truth(folders, explicit=None, registered=None):
    """The ground-truth file of a query dataset: ``explicit`` when given, else the ``registered`` one (a dataset
    whose file lies elsewhere, e.g. DISC21's), else ``ground_truth.csv`` in its folder; ``None`` when there is
    none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise GroundTruthError(f"ground-truth file not found: {path}")
        return path
    if registered:
        if not Path(registered).is_file():
            raise GroundTruthError(f"ground-truth file not found: {registered} (see Datasets/README.md)")
        return Path(registered)
    found = [Path(folder) / GROUND_TRUTH_FILE for folder in folders if (Path(folder) / GROUND_TRUTH_FILE).is_file()]
    if len(found) > 1:
        raise GroundTruthError(f"the query dataset has several ground-truth files ({', '.join(map(str, found))}); "
                               "pass the one to use with --ground-truth")
    return found[0] if found else None


def match_queries(truth, query_keys, reference_keys):
    """Each query's reference key (``None`` for a negative query) and attack, in the order of ``query_keys``.

    Parameters
    ----------
    truth : GroundTruth
    query_keys : sequence of str
        Relative paths of the query rows (the query store's images).
    reference_keys : sequence of str
        Relative paths of the database (main dataset) rows.

    Returns
    -------
    references, attacks : lists
        ``references[i]`` is a key of ``reference_keys`` or ``None``.

    Raises
    ------
    GroundTruthError
        When query images are missing from the ground truth (every query needs a row).
    """
    reference_set = set(reference_keys)
    if truth.by_stem:
        query_lookup = _unique_stems(query_keys, "query")
        reference_lookup = _unique_stems(reference_keys, "database")
        references_by_query = {query_lookup[q]: (reference_lookup.get(r) if r else None, r)
                               for q, r in truth.references.items() if q in query_lookup}
        attacks = {query_lookup[q]: a for q, a in truth.attacks.items() if q in query_lookup}
    else:
        references_by_query = {q: (r if r in reference_set else None, r) for q, r in truth.references.items()}
        attacks = truth.attacks
    missing = [key for key in query_keys if key not in references_by_query]
    if missing:
        raise GroundTruthError(f"{len(missing)} query image(s) are not in the ground truth {truth.source} "
                               f"(e.g. {missing[0]!r}); every query needs a row (an empty reference for a "
                               "negative query)")
    absent = [(q, wanted) for q, (found, wanted) in references_by_query.items() if wanted and found is None]
    if absent:
        logger.warning("%d queries of %s name a reference that is not among the database's features (e.g. %r "
                       "-> %r: skipped at extraction, or another database); they count as negative queries",
                       len(absent), truth.source, absent[0][0], absent[0][1])
    not_extracted = len(truth.references) - len(query_keys)
    if not_extracted > 0:
        logger.info("%d queries of %s have no features (not extracted or skipped) and are left out",
                    not_extracted, truth.source)
    return ([references_by_query[key][0] for key in query_keys],
            [attacks.get(key) for key in query_keys])


def _unique_stems(keys, what):
    lookup = {}
    for key in keys:
        stem = _stem(key)
        if stem in lookup:
            raise GroundTruthError(f"two {what} images share the id {stem!r} ({lookup[stem]!r}, {key!r}): a DISC21 "
                                   "ground-truth file names images by id, so ids must be unique")
        lookup[stem] = key
    return lookup


@dataclass
class CopyTruth:
    """Identities of a search's database rows and queries (see :mod:`fast_search.metrics`), with each query's
    edit family and where the ground truth came from."""

    db_identities: list
    query_identities: list
    query_attacks: list
    source: str


def copy_truth(main, query, main_names, query_names, distractor=None, distractor_names=(), ground_truth=None,
               write_adapter=True):
    """The ground truth of a copy-detection search: database = ``main`` (+ ``distractor``), queries = ``query``.

    Parameters
    ----------
    main, query, distractor : helpers.datasets.Dataset
    main_names, query_names, distractor_names : sequences of str
        The image paths of each store's rows (``names.txt``).
    ground_truth : path, optional
        The ground-truth file; by default ``ground_truth.csv`` in the query folder. Without one, the seed's
        file-name convention is read (:func:`ground_truth_from_names`, refused when ambiguous) and, with
        ``write_adapter``, written to the query folder as a ``ground_truth.csv`` so that it becomes data.

    Returns
    -------
    CopyTruth
        A database row's identity is ``(dataset, relative path)``; a query's is its reference's (``None`` for a
        negative query), so a distractor can never be a query's original.
    """
    main_keys = main.relative_names(main_names)
    query_keys = query.relative_names(query_names)
    distractor_keys = distractor.relative_names(distractor_names) if distractor is not None else []
    path = find_ground_truth(query.folders, ground_truth, getattr(query, "ground_truth", None))
    if path is not None:
        truth = read_ground_truth(path)
    else:
        truth = ground_truth_from_names(query_keys, main_keys)
        logger.warning("no %s in the query folder of %s: ground truth taken from the file names (<id>_<attack> is "
                       "a copy of <id>)", GROUND_TRUTH_FILE, query.name)
        if write_adapter and len(query.folders) == 1:
            target = Path(query.folders[0]) / GROUND_TRUTH_FILE
            try:
                write_ground_truth(target, truth.rows())
                truth.source = str(target)
                logger.warning("wrote that ground truth to %s: check it, it is what the next runs read", target)
            except OSError as exc:
                logger.warning("could not write %s (%s); pass --ground-truth FILE to fix the ground truth", target,
                               exc)
    references, attacks = match_queries(truth, query_keys, main_keys)
    main_tag = f"main:{main.store_key}:"
    db_identities = [main_tag + key for key in main_keys]
    if distractor is not None:
        db_identities += [f"distractor:{distractor.store_key}:{key}" for key in distractor_keys]
    query_identities = [main_tag + ref if ref is not None else None for ref in references]
    return CopyTruth(db_identities, query_identities, attacks, truth.source)


def dataset_labels(dataset, names, write_adapter=True):
    """The class (template) label of each of ``names`` (a store's images of ``dataset``).

    Each folder of the dataset may hold a ``labels.csv`` (``image,label``). A folder without one gets labels from
    an adapter, written there as ``labels.csv`` (with ``write_adapter``) so that they become data: folder-per-class
    when its images lie in sub-folders (``<class>/<image>``), else the meme convention (``<template>_<n>``
    belongs to ``<template>``; an image without ``_`` is its own template).

    Raises
    ------
    GroundTruthError
        When images are missing from a ``labels.csv``.
    """
    keys = dataset.relative_names(names)
    if not dataset.folders:
        return list(labels_from_names(keys).values())
    several = len(dataset.folders) > 1
    by_folder = {}
    for key in keys:
        head, _, rest = key.partition("/") if several else ("", "", key)
        by_folder.setdefault(head, []).append(rest)
    template_stems = set()
    if several:  # memes + templates: the templates name the classes of the memes
        for folder in dataset.folders:
            if "templat" in Path(folder).name.lower():
                template_stems |= {_stem(k) for k in by_folder.get(Path(folder).name, [])}
    labels = {}
    for folder in dataset.folders:
        head = Path(folder).name if several else ""
        members = by_folder.get(head, [])
        prefix = f"{head}/" if several else ""
        path = Path(folder) / LABELS_FILE
        if path.is_file():
            found = read_labels(path)
        else:
            if any("/" in key for key in members):
                found = labels_from_subfolders(members)
                how = "folder-per-class"
            else:
                found = labels_from_names(members, [k for k in members if _stem(k) in template_stems])
                how = "file names (<template>_<n>)"
            logger.warning("no %s in %s: labels taken from %s", LABELS_FILE, folder, how)
            if write_adapter and found:
                try:
                    write_labels(path, found)
                    logger.warning("wrote those labels to %s: check them, they are what the next runs read", path)
                except OSError as exc:
                    logger.warning("could not write %s (%s)", path, exc)
        missing = [key for key in members if key not in found]
        if missing:
            raise GroundTruthError(f"{len(missing)} images of {folder} have no label in {path} (e.g. "
                                   f"{missing[0]!r}); add them or delete the file to derive it again")
        labels.update({prefix + key: found[key] for key in members})
    return [labels[key] for key in keys]
