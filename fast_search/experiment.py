"""``search_experiment.py`` as a function: run a search experiment for one or more algorithms and write
``Results/<name>/results.json`` with the experiment record.

Layout of ``results.json``::

    {
      "name": ..., "experiment": "k", "complete": true, "config": {...},
      "main_dataset": ..., "query_dataset": ..., "distractor_dataset": ...,
      "algorithms": {
        "<algorithm>": {
          "algorithm", "slug", "binary", "matching", "n", "d", "nq", "n_queries_with_original", ...,
          "runs": {"<factory>--<metric>": run record (fast_search.search.execute_run)}
        }
      }
    }

Each run record keeps the seed's keys (``recall``, ``training_time``, ``searching_time``, ``k``, ``nprobe``) next
to the full ``points``. The file is rewritten after every run, so an interrupted experiment resumes where it
stopped (same name, same configuration).
"""
import datetime as _dt
import re
from pathlib import Path

import numpy as np

from helpers.device import resolve_device
from helpers.experiment import ExperimentExistsError, is_finished, start_experiment
from helpers.log import get_logger
from helpers.paths import FEATURES_DIR, RESULTS_DIR
from helpers.results import read_json, write_json

from .search import Experiment, plan_runs, run_plan

logger = get_logger(__name__)

EXPERIMENTS = ("metrics", "k", "nprobe", "efsearch", "index")
RESULTS_FILE = "results.json"
# configuration keys that do not change what an experiment computes (ignored when resuming)
_NOT_RESULT_KEYS = {"force", "log_level", "config", "results_root", "features_root", "name"}


def _comparable(config):
    return {key: value for key, value in config.items() if key not in _NOT_RESULT_KEYS}


def set_threads(count):
    """Use ``count`` threads in FAISS (OpenMP) and PyTorch; None leaves the defaults (all cores)."""
    if count:
        import faiss
        import torch

        faiss.omp_set_num_threads(int(count))
        torch.set_num_threads(int(count))


def run_experiment(name, algo, main_dataset, query_dataset, distractor_dataset=None, experiment="k", metrics=None,
                   ks=None, nprobes=None, efsearch=None, index=None, device="auto", backend="auto", repeats=3,
                   batch_size=None, train_size=None, threads=None, results_root=RESULTS_DIR,
                   features_root=FEATURES_DIR, ground_truth=None, score_norm_dataset=None, score_norm_k=1,
                   score_norm_beta=1.0, save_neighbors=False, seed=0,
                   force=False, config=None, argv=None):
    """Run a search experiment (the function behind ``search_experiment.py``) and return its results dict.

    Parameters
    ----------
    name : str
        Experiment name; results go to ``results_root/name/``.
    algo : str or list of str
        One or more algorithms (one section each in ``results.json``).
    experiment : str
        ``metrics`` (Flat, each metric), ``k`` (Flat, k sweep), ``nprobe`` (IVF sweep vs Flat), ``efsearch``
        (HNSW sweep vs Flat) or ``index`` (the factory strings of ``index``); see
        :func:`fast_search.search.plan_runs`.
    metrics, ks, nprobes, efsearch, index : lists, optional
        The sweep values and factory strings (defaults depend on ``experiment``).
    device, backend : str
        ``--device auto|cpu|cuda[:N]``, ``--backend auto|faiss|torch``.
    repeats : int
        Each search is timed this many times; the best time is kept.
    batch_size, train_size, threads : int, optional
        Queries per search batch; rows IVF/PQ indexes are trained on; CPU threads.
    seed : int
        Seed of the random draw of the ``train_size`` training rows (``--seed``; the only randomness of a search
        experiment, so it changes IVF/PQ results only when ``train_size`` is below the database size).
    ground_truth : path, optional
        Ground-truth file (default: ``ground_truth.csv`` in the query folder; :mod:`helpers.ground_truth`).
    score_norm_dataset, score_norm_k, score_norm_beta : optional
        SSCD's score normalisation for ``muap_sn`` (see :class:`fast_search.search.Experiment`).
    save_neighbors : bool
        Write each query's neighbours of every run and point to ``neighbors/*.csv.gz``
        (:mod:`fast_search.neighbor_table`).
    config : dict, optional
        The resolved configuration to record (built from the arguments when None).

    Raises
    ------
    helpers.experiment.ExperimentExistsError
        When ``name`` holds a finished experiment and ``force`` is False.
    ValueError, helpers.feature_store.FeatureStoreError
        On a bad argument or missing features (before anything is written).
    """
    algos = [algo] if isinstance(algo, str) else list(algo)
    if not algos:
        raise ValueError("give at least one --algo")
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of {', '.join(EXPERIMENTS)}")
    if int(repeats) < 1:
        raise ValueError("--repeats must be at least 1")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"experiment name {name!r} must be a plain folder name (no path separators)")
    folder = Path(results_root) / name
    if is_finished(folder) and not force:
        raise ExperimentExistsError(f"{folder} already holds a finished experiment; choose another name or pass "
                                    "--force to overwrite it")
    if config is None:
        config = {"name": name, "algo": algos, "main_dataset": main_dataset, "query_dataset": query_dataset,
                  "distractor_dataset": distractor_dataset, "experiment": experiment, "metrics": metrics,
                  "ks": ks, "nprobes": nprobes, "efsearch": efsearch, "index": index, "device": device,
                  "backend": backend, "repeats": repeats, "batch_size": batch_size, "train_size": train_size,
                  "threads": threads, "ground_truth": ground_truth, "score_norm_dataset": score_norm_dataset,
                  "score_norm_k": score_norm_k, "score_norm_beta": score_norm_beta, "save_neighbors": save_neighbors,
                  "seed": seed, "results_root": str(results_root), "features_root": str(features_root), "force": force}
    torch_device = resolve_device(device)
    set_threads(threads)

    # load and plan everything first: a typo fails before any folder is written
    loaded = []
    for algorithm in algos:
        exp = Experiment(algorithm, main_dataset, query_dataset, distractor_dataset, features_root=features_root,
                         device=torch_device, backend=backend, batch_size=batch_size, train_size=train_size,
                         ground_truth=ground_truth, score_norm_dataset=score_norm_dataset,
                         score_norm_k=score_norm_k, score_norm_beta=score_norm_beta, seed=seed)
        exp.neighbors_dir = folder / "neighbors" if save_neighbors else None
        specs = plan_runs(exp, experiment, metrics=metrics, ks=ks, nprobes=nprobes, efsearch=efsearch,
                          indexes=index)
        check_searchable(exp, specs, train_size)
        loaded.append((exp, specs))

    previous = None if force else _resumable(folder, config)
    record = start_experiment(folder, config, force=force, device=torch_device, argv=argv)
    results = {"name": name, "experiment": experiment, "complete": False, "config": config,
               "main_dataset": main_dataset, "query_dataset": query_dataset,
               "distractor_dataset": distractor_dataset,
               "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "algorithms": {}}
    target = folder / RESULTS_FILE
    for exp, specs in loaded:
        section = exp.describe()
        done = (previous or {}).get("algorithms", {}).get(exp.algorithm, {}).get("runs", {})
        section["runs"] = {key: run for key, run in done.items() if key in {spec.key for spec in specs}}
        results["algorithms"][exp.algorithm] = section

        def save(key, run, section=section):
            section["runs"][key] = run
            write_json(target, results)

        try:
            run_plan(exp, specs, repeats=repeats, done=section["runs"], on_run=save)
        finally:
            exp.close()
        # keep the planned order (resumed runs included)
        section["runs"] = {spec.key: section["runs"][spec.key] for spec in specs}
    results["complete"] = True
    results["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    write_json(target, results)
    record.finish(**_summary(results))
    print(format_results_table(results))
    print(f"\nresults: {target}")
    return results


def check_searchable(exp, specs, train_size=None):
    """Refuse, before anything is written, an experiment whose results could only be ``nan`` or a FAISS crash.

    Raises
    ------
    ValueError
        No query or database row; no query with its original in the database (recall undefined); an IVF index
        with more inverted lists than training rows (the message gives the most this database allows).
    """
    where = f"{exp.algorithm!r} features of {exp.query_dataset} vs {exp.main_dataset}"
    if exp.nq == 0:
        raise ValueError(f"the query set {exp.query_dataset} has 0 rows ({where}); re-extract it from a folder "
                         f"with readable images")
    if exp.n == 0:
        raise ValueError(f"the database {exp.main_dataset} has 0 rows ({where}); re-extract it")
    if not np.asarray(exp.has_original).any():
        raise ValueError(f"none of the {exp.nq} queries of {exp.query_dataset} has its original in "
                         f"{exp.main_dataset} ({where}): recall would be undefined; check --main-dataset and "
                         f"--query-dataset")
    rows = min(exp.n, int(train_size)) if train_size else exp.n
    for spec in specs:
        match = re.match(r"B?IVF(\d+)", spec.factory)
        if match and int(match.group(1)) > rows:
            raise ValueError(f"index {spec.factory}: {match.group(1)} inverted lists need at least as many training "
                             f"rows, and {exp.algorithm!r} has {rows} database rows to train on; use at most "
                             f"IVF{rows}")


def same_config(folder, config):
    """True when ``folder/config.yml`` (an earlier, interrupted run) records the same configuration, apart from
    keys that do not change the result (``force``, ``log_level``, roots)."""
    from helpers.cli import load_config_file
    from helpers.experiment import CONFIG_NAME

    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        return False
    try:
        previous = load_config_file(path)
    except ValueError:  # helpers.cli.ConfigFileError: a damaged record is not the same configuration
        return False
    return _comparable(previous) == _comparable(config)


def _resumable(folder, config):
    """The results of an interrupted run of the same configuration, to resume from (None otherwise)."""
    path = folder / RESULTS_FILE
    if not path.exists() or is_finished(folder):
        return None
    if not same_config(folder, config):
        logger.info("%s holds an interrupted experiment with another configuration; starting afresh", folder)
        return None
    try:
        previous = read_json(path)
    except (OSError, ValueError):
        return None
    logger.info("resuming the interrupted experiment in %s", folder)
    return previous


def _summary(results):
    summary = {}
    for algorithm, section in results["algorithms"].items():
        for key, run in section["runs"].items():
            first = run["points"][0]
            summary[f"{algorithm} {key} recall@{first['k']}"] = round(first[f"recall@{first['k']}"], 6) \
                if first[f"recall@{first['k']}"] is not None else None
    return summary


def sections(results):
    """``{algorithm: section}`` of a results dict; the seed's flat layout (``{"Flat--L2": {...}}``) becomes one
    unnamed algorithm."""
    if "algorithms" in results:
        return results["algorithms"]
    return {"": {"runs": results}}


def run_points(run):
    """The points of a run record; a seed record (``recall``/``searching_time`` scalars or lists, no ``points``)
    is converted."""
    if "points" in run:
        return run["points"]
    recall = run["recall"] if isinstance(run["recall"], list) else [run["recall"]]
    times = run["searching_time"] if isinstance(run["searching_time"], list) else [run["searching_time"]]
    ks = run["k"] if isinstance(run["k"], list) else [run["k"]] * len(recall)
    probes = run.get("nprobe") if isinstance(run.get("nprobe"), list) else [run.get("nprobe")] * len(recall)
    return [{"k": k, "nprobe": p, "efsearch": None, f"recall@{k}": r, "search_time": t}
            for k, p, r, t in zip(ks, probes, recall, times)]


def _rows(results):
    """Yield ``(algorithm, key, run, point)`` for every point of a results dict (also the seed's flat layout)."""
    for algorithm, section in sections(results).items():
        for key, run in section.get("runs", {}).items():
            for point in run_points(run):
                yield algorithm, key, run, point


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_results_table(results):
    """A plain-text table of a results dict: one row per (algorithm, index, metric, point) with recall@k, µAP,
    recall at 90% precision, ANN recall, search time and queries per second."""
    header = ["algorithm", "index", "metric", "k", "nprobe/ef", "recall@k", "expected", "uAP", "R@P90",
              "ANN rec.", "search s", "queries/s"]
    rows = []
    for algorithm, key, run, point in _rows(results):
        factory, _, metric = key.rpartition("--")
        param = point.get("nprobe") if point.get("nprobe") is not None else point.get("efsearch")
        k = point["k"]
        rows.append([algorithm, factory, metric, str(k), _fmt(param), _fmt(point.get(f"recall@{k}")),
                     _fmt(point.get(f"recall@{k}_expected")), _fmt(point.get("muap")), _fmt(point.get("recall@P90")),
                     _fmt(point.get("ann_recall")),
                     _fmt(point.get("search_time"), 3), _fmt(point.get("qps"), 0)])
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
              for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(line))
             for line in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("recall@k and uAP count ties at the cut-off as misses (pessimistic, DISC21); 'expected' is recall@k "
                 "under random tie-breaking")
    for algorithm, info in (results.get("algorithms") or {}).items():
        weights = info.get("weights") if isinstance(info, dict) else None
        if isinstance(weights, str) and weights.startswith("random"):
            lines.append(f"NOTE: {algorithm} uses {weights.upper()} weights: a random-feature baseline, not the "
                         "pretrained model")
    return "\n".join(lines)


format_recall_table = format_results_table
