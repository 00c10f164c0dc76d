"""``build_index.py`` and ``query.py``: save an index of a collection, append to it, query it."""
import argparse
import os
import time
from pathlib import Path

from helpers.cli import positive_int
from helpers.image_io import SkipReport, list_images
from helpers.log import get_logger
from helpers.results import write_json

from .find import DEFAULT_ALGO, _fraction, explicit_threshold

logger = get_logger(__name__)


def build_parser():
    from helpers.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="build_index.py",
        description="Save an index of a folder of images (FAISS index + feature store + index.json with the "
                    "model, preprocessing, metric and the threshold marking likely copies), or --append images "
                    "to a saved index without rebuilding it. Query it with query.py.")
    parser.add_argument("path", help="folder of images (searched recursively)")
    parser.add_argument("--index", required=True, metavar="NAME",
                        help="index name (Indexes/NAME) or folder path")
    parser.add_argument("--append", action="store_true",
                        help="add the images of PATH that are not indexed yet to the saved index (no rebuild)")
    parser.add_argument("--algo", default=DEFAULT_ALGO,
                        help="hash or model of the zoo, as for find_duplicates.py (default: %(default)s)")
    parser.add_argument("--weights", default="pretrained", help="model weights (default: %(default)s)")
    parser.add_argument("--factory", default="Flat",
                        help="FAISS factory string: Flat (exact), IVF1024,Flat, IVF1024,PQ32, HNSW32 ... (binary "
                             "forms for hashes: BFlat, BIVF1024, BHNSW32; float names are translated) "
                             "'auto' measures Flat / IVF / IVF-PQ / HNSW settings on your images and picks the "
                             "best copy-detection recall within --memory-budget and --latency-budget-ms "
                             "(default: %(default)s)")
    parser.add_argument("--memory-budget", default=None, metavar="SIZE",
                        help="with --factory auto: index memory allowed for --expected-size vectors (2GB, 512MiB)")
    parser.add_argument("--latency-budget-ms", type=float, default=None,
                        help="with --factory auto: milliseconds allowed per single-image search")
    parser.add_argument("--expected-size", type=positive_int, default=None,
                        help="with --factory auto: number of images the index will hold (default: this folder's)")
    parser.add_argument("--qdrant", default=None, metavar="LOCATION",
                        help="store the vectors in a Qdrant collection (named after the index) instead of a FAISS "
                             "file: a folder (embedded mode, no server) or http(s)://HOST:6333 (a server or "
                             "cluster; QDRANT_API_KEY from the environment)")
    parser.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists visited per query")
    parser.add_argument("--efsearch", type=positive_int, default=None, help="HNSW efSearch")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--max-distance", type=float, default=None,
                           help="likely copies: within this many bits (hashes)")
    threshold.add_argument("--min-similarity", type=float, default=None,
                           help="likely copies: at least this cosine similarity (models)")
    parser.add_argument("--precision", type=_fraction, default=0.99,
                        help="calibrated threshold of likely copies, as in find_duplicates.py (default: "
                             "%(default)s)")
    parser.add_argument("--calibration-sample", type=positive_int, default=100,
                        help="images edited for the calibration (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1),
                        help="hashing processes (default: %(default)s)")
    add_common_arguments(parser, force=True)
    return parser


def run_build(path, index, append=False, algo=DEFAULT_ALGO, weights="pretrained", factory="Flat", nprobe=None,
              efsearch=None, qdrant=None, memory_budget=None, latency_budget_ms=None, expected_size=None, max_distance=None, min_similarity=None, precision=0.99, calibration_sample=100,
              workers=1, device="auto", seed=0, force=False, config=None, argv=None, echo=print):
    from .calibrate import calibrate
    from .features import Featurizer
    from .index import SavedIndex, append_to_index, build_from_features, index_folder

    folder = index_folder(index)
    report = SkipReport()
    paths = [str(p) for p in list_images(path, report=report)]
    if not paths:
        raise ValueError(f"no image found in {path}")
    started = time.perf_counter()
    if append:
        saved = SavedIndex(folder)
        featurizer = saved.featurizer(device=device, workers=workers, engine="torch")  # batches: torch
        before = saved.ntotal
        saved.close()
        added = append_to_index(folder, paths, featurizer, report)
        report.warn(logger)
        echo(f"appended {added} images to {folder} ({before} -> {before + added} rows, no rebuild) in "
             f"{time.perf_counter() - started:.1f} s")
        return {"added": added}
    featurizer = Featurizer(algo, weights=weights, device=device, workers=workers)
    paths, features = featurizer.files(paths, report)
    report.warn(logger)
    if not paths:
        raise ValueError("no readable image to index")
    threshold = explicit_threshold(featurizer, max_distance, min_similarity)
    calibration = None
    if threshold is None and len(paths) >= 2:
        result = calibrate(featurizer, paths, features, precision=precision, sample_size=calibration_sample,
                           seed=seed)
        threshold, calibration = result.threshold, result.as_dict()
    if (Path(folder) / "index.json").exists() and not force:
        raise ValueError(f"{folder} already holds an index; use --append to add images, or --force to rebuild")
    choice = None
    if factory == "auto":
        from .budget import choose_for_collection, format_table, parse_bytes

        budget = parse_bytes(memory_budget) if memory_budget else None
        chosen, results = choose_for_collection(featurizer, paths, features, n_total=expected_size or len(paths),
                                                memory_budget=budget, latency_budget_ms=latency_budget_ms,
                                                seed=seed)
        echo(format_table(results, chosen, expected_size or len(paths)))
        if chosen is None:
            raise ValueError("no index fits the budgets (see the table); raise --memory-budget or "
                             "--latency-budget-ms")
        echo(f"chosen: {chosen.label}: recall@1 {chosen.recall_at_1:.3f} on edited copies of your images, "
             f"{chosen.latency_ms:.2f} ms per query, {chosen.bytes_per_vector:.1f} bytes per vector")
        factory, nprobe, efsearch = chosen.factory, chosen.nprobe or nprobe, chosen.efsearch or efsearch
        choice = {"chosen": chosen.as_dict(), "candidates": [c.as_dict() for c in results],
                  "memory_budget": budget, "latency_budget_ms": latency_budget_ms}
    info = build_from_features(folder, paths, features, featurizer, factory=factory, nprobe=nprobe,
                               efsearch=efsearch, threshold=threshold, calibration=calibration, qdrant=qdrant)
    if choice:
        info["index_choice"] = choice
        write_json(Path(folder) / "index.json", info)
    score = info["threshold_score"]
    echo(f"indexed {info['n']} images of {path} with {featurizer.name} ({info['factory']}) in {folder} in "
         f"{time.perf_counter() - started:.1f} s; likely copies: "
         + ("none (no threshold)" if score is None else
            (f"<= {score:g} bits" if featurizer.binary else f"cosine >= {score:.4f}"))
         + (" (calibrated)" if calibration else " (explicit)"))
    return info


def query_parser():
    from helpers.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="query.py",
        description="Query a saved index (build_index.py) with one or more images: the k nearest indexed "
                    "images with their scores, as a table and JSON; likely copies (within the index's "
                    "calibrated threshold) are marked. --serve keeps the index and the model loaded and answers "
                    "one query per line of standard input.")
    parser.add_argument("images", nargs="*", help="query image files (or folders)")
    parser.add_argument("--index", required=True, metavar="NAME", help="index name (Indexes/NAME) or folder")
    parser.add_argument("-k", type=positive_int, default=10, help="neighbours per query (default: %(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--nprobe", type=positive_int, default=None, help="override the index's IVF nprobe")
    parser.add_argument("--efsearch", type=positive_int, default=None, help="override the index's HNSW efSearch")
    parser.add_argument("--serve", action="store_true",
                        help="load once, then read image paths from standard input (one per line; several "
                             "separated by tabs form one batch) and answer each line; with --json, one JSON object "
                             "per line goes to standard output instead of the table. Ends at end of input")
    parser.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                        help="how a model embeds the queries: auto uses the ONNX export saved with the index "
                             "(ONNX Runtime, no torch import: a fresh process answers in about a second) on "
                             "--device cpu/auto, torch otherwise (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="search and model (ONNX Runtime / torch) threads (default: all cores)")
    add_common_arguments(parser, seed=False, force=False)
    return parser


def _print_rows(rows, score, echo):
    current = None
    for row in rows:
        if row["query"] != current:
            current = row["query"]
            echo(f"query: {current}")
            echo(f"  {'rank':>4}  {score:>10}  {'copy?':5}  neighbour")
        echo(f"  {row['rank']:>4}  {row[score]:>10.4f}  {'yes' if row['likely_copy'] else '':5}  {row['neighbour']}")


def _expand(images):
    files = []
    for item in images:
        files.extend(str(p) for p in list_images(item)) if Path(item).is_dir() else files.append(str(item))
    return files


class QuerySession:
    """A saved index and its algorithm loaded once, answering queries (``query.py``, and ``--serve``)."""

    def __init__(self, index, nprobe=None, efsearch=None, device="auto", engine="auto", threads=None):
        from .index import SavedIndex, index_folder, set_search_params

        self.timings = {}
        tick = time.perf_counter()
        # memory-mapped: a query touches the pages it needs, the 512 MB of a 100K x 1280 Flat index are not read
        # up front (they come from the page cache after the first search)
        self.saved = SavedIndex(index_folder(index), mmap=True)
        if self.saved.index is not None:
            set_search_params(self.saved.index, nprobe, efsearch)
        if threads is not None and self.saved.index is not None:
            import faiss

            faiss.omp_set_num_threads(int(threads))
        self.timings["load_index_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        self.featurizer = self.saved.featurizer(device=device, engine=engine, threads=threads)
        if threads is not None and self.featurizer.engine == "torch":
            import torch

            torch.set_num_threads(int(threads))
        self.timings["load_model_s"] = time.perf_counter() - tick
        self.score = self.saved.info["score"]

    def query(self, files, k, echo=print):
        """Ranked neighbours (list of dicts) of image files; unreadable ones are reported and skipped."""
        from .index import query_index

        tick = time.perf_counter()
        report = SkipReport()
        kept, vectors = self.featurizer.files(files, report)
        for path, reason in report.items:
            echo(f"skipped {path}: {reason}")
        if not kept:
            reasons = "".join(f"; {path}: {reason}" for path, reason in report.items)
            raise ValueError(f"no readable query image{reasons}")
        self.timings["features_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        rows = query_index(self.saved, vectors, kept, k)
        self.timings["search_s"] = time.perf_counter() - tick
        return rows

    def result(self, rows):
        return {"index": str(self.saved.folder), "algorithm": self.saved.info["name"], "score": self.score,
                "threshold": self.saved.info.get("threshold_score"), "engine": self.featurizer.engine,
                "timings": dict(self.timings), "results": rows}

    def close(self):
        self.saved.close()


def run_query(images, index, k=10, json=None, nprobe=None, efsearch=None, serve=False, engine="auto", threads=None,
              device="auto", log_level="INFO", config=None, argv=None, echo=print, stdin=None):
    if not images and not serve:
        raise ValueError("give query images, or --serve to read them from standard input")
    session = QuerySession(index, nprobe=nprobe, efsearch=efsearch, device=device, engine=engine, threads=threads)
    try:
        if serve:
            return _serve(session, images, k, json, echo, stdin)
        files = _expand(images)
        rows = session.query(files, k, echo)
    finally:
        session.close()
    _print_rows(rows, session.score, echo)
    result = session.result(rows)
    if json:
        write_json(json, result)
    return result


def _serve(session, images, k, as_json, echo, stdin):
    """Answer each line of ``stdin`` (tab-separated paths = one batch); returns the number of lines answered."""
    import json as jsonlib
    import sys

    stdin = sys.stdin if stdin is None else stdin
    echo(f"# ready: {session.saved.info['name']} index {session.saved.folder} ({session.saved.ntotal} images, "
         f"engine {session.featurizer.engine}); one image path per line, end of input to stop")
    answered = 0
    lines = (["\t".join(images)] if images else [])
    for line in _chain(lines, stdin):
        paths = [part for part in line.rstrip("\n").split("\t") if part.strip()]
        if not paths:
            continue
        tick = time.perf_counter()
        try:
            rows = session.query(_expand(paths), k, echo)
        except (ValueError, OSError) as exc:  # one bad line does not end the session
            rows, error = [], " ".join(str(exc).split())
        else:
            error = None
        elapsed = time.perf_counter() - tick
        if as_json:
            record = session.result(rows)
            record.update({"seconds": elapsed, "error": error})
            echo(jsonlib.dumps(record))
        else:
            _print_rows(rows, session.score, echo)
            echo(f"# error: {error}" if error else f"# {elapsed:.3f} s")
        answered += 1
    return {"answered": answered}


def _chain(first, rest):
    yield from first
    yield from rest

