"""``scan.py``: data, split, runs and reports of SCAN (:mod:`clustering.scan`) against k-means."""
import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

from helpers.cli import add_common_arguments, resolved_config
from helpers.device import resolve_device
from helpers.experiment import start_experiment
from helpers.feature_store import load_features, model_identity
from helpers.log import get_logger, setup_logging
from helpers.paths import CLUSTERING_DIR, slugify
from helpers.results import write_json
from helpers.seeding import seed_everything

from . import scan
from .metrics import encode_labels

logger = get_logger(__name__)
METHODS = ("kmeans", "scan", "selflabel")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scan.py",
        description="SCAN clustering (seed 002, steps 2-3) on frozen features: mine each training image's nearest "
                    "neighbours, train clustering heads with the SCAN loss (neighbour consistency + entropy; the "
                    "head with the lowest loss is kept), then self-label (confident samples, strong feature-space "
                    "augmentation). Trains on the training split only and reports ACC (Hungarian), NMI and ARI on "
                    "the test split, mean +- std over --runs, next to k-means on the same features. 'scan.py "
                    "predict -h': apply trained checkpoints to a dataset's features (assignments and scores like "
                    "kmeans.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--features", nargs="+", required=True, metavar="STORE",
                      help="feature store folder(s) of the training images (or of all images, split by --test-split)")
    data.add_argument("--test-features", nargs="+", default=None, metavar="STORE",
                      help="feature store folder(s) of the test images; without it --test-split splits --features")
    data.add_argument("--labels", default="files", metavar="files|folder|CSV",
                      help="ground-truth classes (for the scores only): 'files' (the labels.csv of the images' "
                           "dataset folders, written from class folders or <template>_<n> names when missing; see "
                           "Datasets/README.md), 'folder' (the parent folder: folder-per-class datasets) or a CSV "
                           "with header image,label")
    data.add_argument("--test-split", type=float, default=0.25,
                      help="share of each class held out for the test when --test-features is not given")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (fixed over runs)")
    data.add_argument("--val-split", type=float, default=0.0,
                      help="tuning mode: hold out this share of each class of the training split as a validation "
                           "set, train on the rest and score on the validation set only (the test split is neither "
                           "used nor scored); choose hyper-parameters this way, then run without it for the test "
                           "scores (0 = off)")
    model = parser.add_argument_group("SCAN step")
    model.add_argument("--num-clusters", type=int, default=None,
                       help="clusters (default: the number of classes in the training labels)")
    model.add_argument("--num-neighbors", type=int, default=20, help="neighbours mined per training image")
    model.add_argument("--num-heads", type=int, default=5, help="heads trained; the lowest-loss one is kept")
    model.add_argument("--hidden", type=int, default=0, help="hidden ReLU layer before the heads (0 = linear heads)")
    model.add_argument("--entropy-weight", type=float, default=5.0, help="weight of the entropy term")
    model.add_argument("--epochs", type=int, default=200, help="SCAN epochs")
    model.add_argument("--batch-size", type=int, default=256, help="anchors per step")
    model.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the SCAN step")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay")
    selflabel = parser.add_argument_group("self-labelling step")
    selflabel.add_argument("--selflabel-epochs", type=int, default=50, help="self-labelling epochs (0 = skip it)")
    selflabel.add_argument("--selflabel-lr", type=float, default=1e-4, help="Adam learning rate of self-labelling")
    selflabel.add_argument("--confidence", type=float, default=0.99,
                           help="probability above which a prediction becomes a pseudo-label")
    selflabel.add_argument("--aug-dropout", type=float, default=0.3,
                           help="strong augmentation: share of feature dimensions dropped")
    selflabel.add_argument("--aug-noise", type=float, default=0.5,
                           help="strong augmentation: Gaussian noise, times the per-dimension standard deviation")
    run = parser.add_argument_group("runs and outputs")
    run.add_argument("--runs", type=int, default=5, help="runs (seeds --seed + i) reported as mean +- std")
    run.add_argument("--kmeans-init", type=int, default=10, help="k-means restarts")
    run.add_argument("-s", "--save-to", default=None, metavar="DIR",
                     help="experiment folder (default: Clustering_results/scan/<dataset>_<algorithm>)")
    add_common_arguments(parser)
    return parser


def store_labels(store):
    """Class label of each image of a feature store, from its dataset's ``labels.csv`` files
    (:func:`helpers.ground_truth.dataset_labels`: written from class folders or meme names when missing)."""
    from helpers.datasets import Dataset
    from helpers.ground_truth import dataset_labels
    from helpers.paths import REPO_ROOT

    folders = [Path(f) if Path(f).is_absolute() else REPO_ROOT / f for f in store.meta.get("dataset_folders") or []]
    if not folders:
        raise ValueError(f"{store.meta.get('name', 'the store')} does not record its dataset folders (a store made "
                         "by code): give --labels folder or a labels CSV")
    dataset = Dataset(store.meta.get("dataset", "dataset"), folders, key=store.meta.get("dataset_key", ""))
    return dataset_labels(dataset, store.names)


def class_labels(names, source="files", stores=None):
    """Ground-truth class of each image: ``files`` (the datasets' ``labels.csv``, see :func:`store_labels`),
    ``folder`` (the parent folder: folder-per-class datasets) or a labels CSV (header ``image,label``, paths
    relative to the CSV's folder)."""
    if source == "files":
        return [label for store in stores for label in store_labels(store)]
    if source == "folder":
        return [Path(name).parent.name for name in names]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--labels must be 'files', 'folder' or a CSV file; {source} is none of them")
    from adaptation.pairs import NameMatcher
    from helpers.ground_truth import read_labels

    table = read_labels(path)
    matcher = NameMatcher(list(table), roots=[path.resolve().parent])
    keys = list(table)
    labels, missing = [], []
    for name in names:
        row = matcher.row(name)
        if row is None:
            row = matcher.row(str(Path(name).resolve()))
        if row is None:
            missing.append(name)
            labels.append(None)
        else:
            labels.append(table[keys[row]])
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no label in {path} (e.g. {missing[:3]})")
    return labels


def _load(stores):
    """``(features, names, meta of the first store, the stores)``."""
    sets = [load_features(store) for store in stores]
    if any(s.binary for s in sets):
        raise ValueError("SCAN works on float features, not binary hashes")
    if len({s.features.shape[1] for s in sets}) != 1 or len({model_identity(s.meta)[0] for s in sets}) != 1:
        raise ValueError(f"the stores {', '.join(s.name for s in sets)} come from different models or "
                         "post-processing; give stores of one algorithm")
    features = np.concatenate([np.asarray(s.features, dtype=np.float32) for s in sets])
    if not np.isfinite(features).all():
        raise ValueError("the features hold NaN or infinite values; re-extract them")
    return features, [n for s in sets for n in s.names], sets[0].meta, sets


def stratified_split(labels, test_split, seed):
    """Train/test row indices holding out ``test_split`` of each class (classes of one image stay in train)."""
    if not 0 < test_split < 1:
        raise ValueError(f"--test-split must be between 0 and 1 (exclusive), got {test_split}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    test = []
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        take = int(round(test_split * len(rows))) if len(rows) > 1 else 0
        test.extend(rows[:min(take, len(rows) - 1)])
    test = np.sort(np.asarray(test, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), test), test


def load_data(args):
    """``(train, evaluation, meta, evaluated_on)``; each set is ``(features, labels, names)``. The evaluation set
    is the test split, or with ``--val-split`` a validation set carved out of the training split (disjoint from
    the test split, which is then not loaded or scored)."""
    features, names, meta, stores = _load(args.features)
    labels = class_labels(names, args.labels, stores)
    train, test = load_train_test(args, features, names, labels, stores)
    if not args.val_split:
        return train, test, meta, "test"
    x, y, n = train
    # another seed than the test split's, so the validation rows are not the test split's pattern again
    kept, val = stratified_split(y, args.val_split, args.split_seed + 1)
    pick = lambda rows: (x[rows], y[rows], [n[i] for i in rows])  # noqa: E731
    return pick(kept), pick(val), meta, "validation"


def load_train_test(args, features, names, labels, stores):
    """The training and test sets (``(features, labels, names)`` each): ``--test-features``, or a stratified
    ``--test-split`` of ``--features``. With ``--val-split`` the test set is not loaded (``None``)."""
    if args.test_features and args.val_split:
        return (features, np.asarray(labels), names), None
    if args.test_features:
        test_features, test_names, test_meta, test_stores = _load(args.test_features)
        if model_identity(test_meta)[0] != model_identity(stores[0].meta)[0]:
            raise ValueError(f"--features ({stores[0].name}) and --test-features ({test_meta.get('name')}) come "
                             "from different models or post-processing; give stores of one algorithm")
        test_labels = class_labels(test_names, args.labels, test_stores)
        return (features, np.asarray(labels), names), (test_features, np.asarray(test_labels), test_names)
    train, test = stratified_split(labels, args.test_split, args.split_seed)
    labels = np.asarray(labels)
    pick = lambda rows: (features[rows], labels[rows], [names[i] for i in rows])  # noqa: E731
    return pick(train), pick(test)


def _summary(runs):
    out = {}
    for method in METHODS:
        present = [r[method] for r in runs if method in r]
        if not present:
            continue
        for key in present[0]:
            values = np.array([p[key] for p in present], dtype=np.float64)
            out.setdefault(method, {})[key] = {"mean": float(values.mean()), "std": float(values.std()),
                                               "values": values.tolist()}
    return out


def _check(args):
    positive = {"--num-neighbors": args.num_neighbors, "--num-heads": args.num_heads, "--epochs": args.epochs,
                "--batch-size": args.batch_size, "--runs": args.runs, "--kmeans-init": args.kmeans_init}
    bad = [flag for flag, value in positive.items() if value <= 0]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be positive")
    if args.selflabel_epochs < 0 or not 0 < args.confidence < 1 or not 0 <= args.aug_dropout < 1:
        raise ValueError("--selflabel-epochs must be >= 0, --confidence in (0, 1), --aug-dropout in [0, 1)")
    if not 0 <= args.val_split < 1:
        raise ValueError(f"--val-split must be in [0, 1) (0 = no validation set), got {args.val_split}")


def run(args):
    """All runs; writes ``results.json`` and returns it."""
    from finetuning.trainer import summary_writer

    setup_logging(args.log_level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    _check(args)
    device = resolve_device(args.device)
    (x_train, y_train, train_names), (x_test, y_test, test_names), meta, evaluated_on = load_data(args)
    classes = int(np.unique(y_train).size)
    clusters = args.num_clusters or classes
    if clusters < 2 or clusters > len(x_train):
        raise ValueError(f"cannot make {clusters} clusters of {len(x_train)} training images")
    if len(x_test) == 0:
        flag = "--val-split" if args.val_split else "--test-split (or --test-features)"
        raise ValueError(f"the {evaluated_on} set is empty; give a larger {flag}")
    record = scan.features_record(meta, args.features[0])
    save_to = Path(args.save_to) if args.save_to else CLUSTERING_DIR / "scan" / slugify(
        f"{meta.get('dataset', 'data')} {meta.get('name', 'features')}")
    experiment = start_experiment(save_to, resolved_config(args), force=args.force, device=device)
    started = time.perf_counter()
    neighbors = scan.mine_neighbors(x_train, args.num_neighbors, device=device)
    y_train_codes, y_test_codes = encode_labels(y_train), encode_labels(y_test)
    neighbor_purity = float((y_train_codes[neighbors] == y_train_codes[:, None]).mean())
    np.save(save_to / "neighbors.npy", neighbors, allow_pickle=False)
    write_json(save_to / "split.json", {"train": train_names, evaluated_on: test_names})
    runs = []
    for index in range(args.runs):
        seed = args.seed + index
        seed_everything(seed)
        run_dir = save_to / f"run_{index}"
        writer = summary_writer(run_dir)
        log = lambda tag, value, step: writer.add_scalar(tag, value, step)  # noqa: E731
        entry = {"run": index, "seed": seed}
        entry["kmeans"] = scan.scores(y_test_codes, scan.kmeans_baseline(x_train, x_test, clusters, seed,
                                                                         args.kmeans_init))
        model, info = scan.train_scan(x_train, neighbors, clusters, num_heads=args.num_heads, hidden=args.hidden,
                                      entropy_weight=args.entropy_weight, epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                      seed=seed, device=device, log=log)
        predicted, _ = scan.predict(model, x_test)
        entry["scan"] = scan.scores(y_test_codes, predicted)
        entry["scan_head"], entry["scan_head_losses"] = info["head"], info["losses"]
        scan.save_heads(run_dir / "scan.pt", model, record, step="scan", source_name=meta.get("name"), seed=seed,
                        head=info["head"])
        np.save(run_dir / f"assignment_{evaluated_on}_scan.npy", predicted, allow_pickle=False)
        if args.selflabel_epochs:
            model, sl_info = scan.train_selflabel(model, x_train, epochs=args.selflabel_epochs,
                                                  batch_size=args.batch_size, lr=args.selflabel_lr,
                                                  weight_decay=args.weight_decay, confidence=args.confidence,
                                                  dropout=args.aug_dropout, noise=args.aug_noise, seed=seed,
                                                  device=device, log=log)
            predicted, _ = scan.predict(model, x_test)
            entry["selflabel"] = scan.scores(y_test_codes, predicted)
            entry["confident_share"] = sl_info["history"][-1]["confident"]
            scan.save_heads(run_dir / "selflabel.pt", model, record, step="selflabel", source_name=meta.get("name"),
                            seed=seed)
            np.save(run_dir / f"assignment_{evaluated_on}_selflabel.npy", predicted, allow_pickle=False)
        writer.close()
        runs.append(entry)
        logger.info("run %d: %s", index, "  ".join(
            f"{m} acc={entry[m]['acc']:.3f} nmi={entry[m]['nmi']:.3f} ari={entry[m]['ari']:.3f}"
            for m in METHODS if m in entry))
    results = {"features": [str(s) for s in args.features], "store_name": meta.get("name"),
               "evaluated_on": evaluated_on, "n_train": len(x_train),
               "n_test": None if args.val_split else len(x_test), "n_val": len(x_test) if args.val_split else 0,
               "n_classes_train": classes, f"n_classes_{evaluated_on}": int(np.unique(y_test).size),
               "num_clusters": clusters, "features_identity": record["identity"],
               "neighbor_purity": neighbor_purity, "runs": runs, "summary": _summary(runs),
               "seconds": time.perf_counter() - started, "device": str(device)}
    write_json(save_to / "results.json", results)
    summary = results["summary"]
    experiment.finish(**{f"{m}_{k}": summary[m][k]["mean"] for m in summary for k in ("acc", "nmi", "ari")})
    print(f"\n{results['store_name']}: {len(x_train)} training / {len(x_test)} {evaluated_on} images, "
          f"{clusters} clusters, "
          f"{args.runs} run(s), neighbour purity {neighbor_purity:.3f} -> {save_to}")
    print(f"{'':10}" + "".join(f"{key.upper():>18}" for key in ("acc", "nmi", "ari")))
    for method in summary:
        print(f"{method:10}" + "".join(f"{summary[method][k]['mean']:>10.3f} +- {summary[method][k]['std']:.3f}"
                                       for k in ("acc", "nmi", "ari")))
    return results


# ----------------------------------------------------------------------------------------------------------------
# scan.py predict: a trained checkpoint applied to a dataset's features, reported like kmeans.py / hierarchical.py
# ----------------------------------------------------------------------------------------------------------------

def checkpoint_label(path):
    """``<experiment>_<run>_<step>`` of ``<experiment>/run_<i>/<step>.pt`` (scan.py's layout), slugified."""
    from helpers.paths import slugify

    path = Path(path)
    return slugify(" ".join(p for p in (path.parent.parent.name, path.parent.name, path.stem) if p))


def build_predict_parser():
    from .pipeline import add_clustering_arguments

    parser = argparse.ArgumentParser(
        prog="scan.py predict",
        description="Apply SCAN checkpoints (scan.py's run_<i>/scan.pt or selflabel.pt) to the features of a "
                    "dataset, like kmeans.py / hierarchical.py: one run per checkpoint with its assignment "
                    "(argmax of the head's cluster probabilities) and the same external scores (ACC = "
                    "'accuracy' with Hungarian matching, NMI, ARI, V-measure, AMI; mean +- std over the "
                    "checkpoints in results.json) when the dataset has labels. A checkpoint refuses features of "
                    "another model or post-processing than the one it was trained on. Results: "
                    "Clustering_results/<partition>/<metric>_scan_<algo>/<N>-clusters_scan-<checkpoint>/.")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PT",
                        help="SCAN checkpoints (scan.py writes <save-to>/run_<i>/scan.pt and selflabel.pt)")
    add_clustering_arguments(parser, metric_default="cosine")
    return parser


def run_predict(args):
    """``scan.py predict``: one run per checkpoint; returns the results dict."""
    from . import layout
    from .pipeline import finalize, finished_run, record_run, setup

    checkpoints = [Path(p) for p in args.checkpoint]
    labels = [checkpoint_label(p) for p in checkpoints]
    if len(set(labels)) != len(labels):
        raise ValueError("two checkpoints would get the same run name; give each once")
    loaded = [scan.load_heads(path, with_features=True) for path in checkpoints]  # unreadable files fail first
    st = setup(args, "scan")
    for path, (_, _, record) in zip(checkpoints, loaded):  # every checkpoint checked before any run
        scan.check_features(path, record, st.data.meta)
    runs = []
    for path, label, (model, info, record) in zip(checkpoints, labels, loaded):
        previous = finished_run(st, layout.scan_run_name("*", label))
        if previous is not None:
            runs.append(previous)
            continue
        probabilities = scan.predict_proba(model, st.data.features)
        assignment = probabilities.argmax(axis=1).astype(np.int64)
        used = int(np.unique(assignment).size)
        runs.append(record_run(st, layout.scan_run_name(used, label), assignment, {
            "checkpoint": str(path), "step": info.get("step"), "num_clusters": model.num_clusters,
            "mean_confidence": float(probabilities.max(axis=1).mean()),
            "trained_on": record.get("store_name"), "trained_on_dataset": record.get("dataset")}))
    summary = {}
    for key in ("accuracy", "nmi", "ari"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return finalize(st, runs, extra={"summary": summary, "checkpoints": [str(p) for p in checkpoints]})


def main(argv=None):
    """``scan.py``: parse, run, one ``error:`` line and exit code 2 on bad input (:func:`helpers.cli.run_cli`)."""
    from helpers.cli import run_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"]:
        run_cli(build_predict_parser(), run_predict, argv[1:])
    else:
        run_cli(build_parser(), run, argv)
    return 0
