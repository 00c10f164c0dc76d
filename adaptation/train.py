"""Training the adaptation function: N runs (seeds and held-out splits), TensorBoard logs, a checkpoint per run,
and the seed's top-k accuracy on the held-out pairs before adaptation, with PCA alone and after adaptation.

Entry point of ``train_adaptation.py`` (:func:`build_parser`, :func:`run`).
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from extractor.postprocess import PCA
from helpers.cli import add_common_arguments, resolved_config
from helpers.datasets import resolve_dataset
from helpers.device import resolve_device
from helpers.experiment import start_experiment
from helpers.feature_store import load_features
from helpers.log import get_logger, setup_logging
from helpers.paths import RESULTS_DIR, slugify
from helpers.results import write_json
from helpers.seeding import seed_everything

from .losses import symmetric_info_nce
from .metrics import pair_topk_accuracy
from .models import MODEL_KINDS, AdaptationModule, save_adaptation
from .pairs import match_pairs, read_pairs, split_pairs

logger = get_logger(__name__)
METHODS = ("before", "pca", "adapted")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train_adaptation.py",
        description="Learn an adaptation function (seed 001) on frozen features: a small module trained with a "
                    "symmetric InfoNCE loss so that the images of each similar pair become nearest neighbours. "
                    "Reports the seed's top-k accuracy on held-out pairs (no test image is in a training pair) "
                    "before adaptation, with PCA alone and after adaptation, as mean +- std over --runs runs. "
                    "Writes TensorBoard logs and run_<i>/adaptation.pt per run (apply one with "
                    "extract_features.py --adapt CHECKPOINT).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--features", nargs="+", required=True, metavar="STORE",
                        help="feature store folder(s) (Features/<dataset>/<algorithm>) holding both images of every "
                             "pair; several stores of one algorithm are concatenated (e.g. memes and templates)")
    parser.add_argument("--pairs", required=True, metavar="CSV",
                        help="pairs: a CSV with header left,right, or a ground-truth CSV with header "
                             "query,reference (rows without reference skipped); paths as in names.txt or relative "
                             "to the CSV, the repository or the dataset folder")
    parser.add_argument("--model", default="original", choices=MODEL_KINDS,
                        help="original: ReLU(W x), the seed's; linear: W x; mlp: one hidden layer")
    parser.add_argument("--out-dim", type=int, default=1024, help="output (and hidden) size of the module")
    parser.add_argument("-e", "--epochs", type=int, default=150, help="training epochs")
    parser.add_argument("-r", "--runs", type=int, default=1,
                        help="runs, each with its own seed (--seed + i) and train/test split")
    parser.add_argument("-t", "--temperature", type=float, default=1 / 15,
                        help="InfoNCE temperature: logits = cosine / temperature (the seed's -t 15 multiplies the "
                             "cosine by 15, i.e. temperature 1/15)")
    parser.add_argument("--test-split", type=float, default=0.25, help="share of pairs held out for the test")
    parser.add_argument("-k", "--topk", nargs="+", type=int, default=[1, 3, 5], help="k of the top-k accuracies")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-5, help="Adam weight decay")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="pairs per step; 0 = every training pair in one batch (the seed's full batch)")
    parser.add_argument("--pca-dim", type=int, default=256,
                        help="components of the PCA baseline (fitted on the training images; capped by their "
                             "number and the feature size)")
    parser.add_argument("--input-pca", action="store_true",
                        help="train the module on that PCA's output, as the seed does (PCA 256 first); the PCA is "
                             "saved in the checkpoint, so --adapt still takes the raw features")
    parser.add_argument("-s", "--save-to", default=None, metavar="DIR",
                        help="experiment folder (default: Results/adaptation/<store>_<model>)")
    add_common_arguments(parser)
    return parser


def _dataset_roots(meta):
    """The image folders of a store's dataset: the folders it records (folder datasets are named by their folder's
    name only, which does not resolve), else its registered name's."""
    from helpers.paths import REPO_ROOT

    folders = [Path(f) if Path(f).is_absolute() else REPO_ROOT / f for f in meta.get("dataset_folders") or []]
    if folders:
        return folders
    try:
        return list(resolve_dataset(meta.get("dataset", "")).folders)
    except ValueError:
        return []


def load_pair_features(stores, pairs_path):
    """The features of every image in the pairs and the pairs as row indices into them.

    Returns
    -------
    features : ndarray float32 ``[m, d]`` (only the rows the pairs use)
    rows : ndarray int64 ``[n_pairs, 2]`` into ``features``
    names : list of str ``[m]``
    meta : dict (the first store's)
    """
    sets = [load_features(store) for store in stores]
    if any(s.binary for s in sets):
        raise ValueError("the adaptation function learns on float features, not binary hashes")
    if len({s.features.shape[1] for s in sets}) != 1:
        raise ValueError(f"the stores have different widths {[s.features.shape[1] for s in sets]}; give stores of "
                         "one algorithm")
    names = [name for s in sets for name in s.names]
    roots = [Path(pairs_path).resolve().parent] + [root for s in sets for root in _dataset_roots(s.meta)]
    rows = match_pairs(read_pairs(pairs_path), names, roots)
    used = np.unique(rows)
    offsets = np.cumsum([0] + [len(s) for s in sets])
    parts = []
    for index, s in enumerate(sets):
        local = used[(used >= offsets[index]) & (used < offsets[index + 1])] - offsets[index]
        parts.append(np.asarray(s.features[local], dtype=np.float32))
    features = np.concatenate(parts, axis=0)
    if not np.isfinite(features).all():
        raise ValueError("the features hold NaN or infinite values; re-extract them")
    remap = np.full(offsets[-1], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return features, remap[rows], [names[i] for i in used], sets[0].meta


def _topk(left, right, ks):
    acc = pair_topk_accuracy(left, right, ks)
    return {f"top{k}": acc[k] for k in ks}


def train_module(features, train_rows, test_rows, args, device, writer=None, pca=None):
    """Train one module on the training pairs; log the loss and the test top-k per epoch.

    With ``pca`` (fitted on the training images), the module's first step is that PCA: the trained part sees the
    reduced features, computed once here."""
    module = AdaptationModule(features.shape[1], args.model, args.out_dim,
                              None if pca is None else pca.components_.shape[0])
    if pca is not None:
        module.set_pca(pca.mean_, pca.components_)
        features = pca.transform(features)
    module = module.to(device)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    x = torch.from_numpy(features).to(device)
    n = len(train_rows)
    batch = n if args.batch_size <= 0 else min(args.batch_size, n)
    history = []
    for epoch in range(1, args.epochs + 1):
        module.train()
        order = torch.randperm(n) if batch < n else torch.arange(n)
        losses = []
        for start in range(0, n - batch + 1, batch):  # a last partial batch would have fewer negatives: dropped
            pick = torch.from_numpy(train_rows[order[start:start + batch].numpy()]).to(device)
            loss = symmetric_info_nce(module.head(x[pick[:, 0]]), module.head(x[pick[:, 1]]), args.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        module.eval()
        with torch.no_grad():
            test = torch.from_numpy(test_rows).to(device)
            out_l, out_r = module.head(x[test[:, 0]]), module.head(x[test[:, 1]])
            test_loss = symmetric_info_nce(out_l, out_r, args.temperature).item()
            top = _topk(out_l.cpu().numpy(), out_r.cpu().numpy(), args.topk)
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)), "test_loss": test_loss, **top}
        history.append(entry)
        if writer is not None:
            writer.add_scalar("Train/Loss", entry["train_loss"], epoch)
            writer.add_scalar("Test/Loss", test_loss, epoch)
            for k in args.topk:
                writer.add_scalar(f"Test/top {k}", top[f"top{k}"], epoch)
    return module.cpu().eval(), history


def pca_baseline(features, train_rows, test_rows, n_components, ks):
    """Top-k of the test pairs after a PCA fitted on the training images (no test image in the fit)."""
    train_images = np.unique(train_rows)
    k = int(min(n_components, len(train_images) - 1, features.shape[1]))
    pca = PCA(k).fit(features[train_images])
    reduced = pca.transform(features)
    return _topk(reduced[test_rows[:, 0]], reduced[test_rows[:, 1]], ks), pca


def _summary(runs):
    out = {}
    for method in METHODS:
        for key in runs[0][method]:
            values = np.array([r[method][key] for r in runs], dtype=np.float64)
            out.setdefault(method, {})[key] = {"mean": float(values.mean()), "std": float(values.std()),
                                               "values": values.tolist()}
    return out


def _check(args):
    if args.epochs <= 0 or args.runs <= 0 or args.out_dim <= 0 or args.pca_dim <= 0:
        raise ValueError("--epochs, --runs, --out-dim and --pca-dim must be positive")
    if any(k <= 0 for k in args.topk):
        raise ValueError("-k values must be positive")
    if args.temperature <= 0 or args.lr <= 0:
        raise ValueError("--temperature and --lr must be positive")


def run(args):
    """Train ``args.runs`` modules and write ``results.json``; returns the results."""
    from finetuning.trainer import summary_writer

    setup_logging(args.log_level)
    _check(args)
    device = resolve_device(args.device)
    features, rows, names, meta = load_pair_features(args.features, args.pairs)
    store_name = meta.get("name", "features")
    save_to = Path(args.save_to) if args.save_to else RESULTS_DIR / "adaptation" / slugify(
        f"{meta.get('dataset', 'data')} {store_name} {args.model}")
    experiment = start_experiment(save_to, resolved_config(args), force=args.force, device=device)
    started = time.perf_counter()
    runs = []
    for index in range(args.runs):
        seed = args.seed + index
        seed_everything(seed)
        train_idx, test_idx = split_pairs(rows, args.test_split, seed=seed)
        if len(test_idx) < 2 or len(train_idx) < 2:
            raise ValueError(f"{len(rows)} pairs give {len(train_idx)} training and {len(test_idx)} test pairs; "
                             "give more pairs or another --test-split")
        train_rows, test_rows = rows[train_idx], rows[test_idx]
        run_dir = save_to / f"run_{index}"
        writer = summary_writer(run_dir)
        writer.add_text("Config", str(resolved_config(args)))
        before = _topk(features[test_rows[:, 0]], features[test_rows[:, 1]], args.topk)
        pca, fitted = pca_baseline(features, train_rows, test_rows, args.pca_dim, args.topk)
        pca_k = int(fitted.components_.shape[0])
        module, history = train_module(features, train_rows, test_rows, args, device, writer,
                                       pca=fitted if args.input_pca else None)
        writer.close()
        after = {key: history[-1][key] for key in before}
        checkpoint = save_adaptation(
            run_dir / "adaptation.pt", module, source_name=store_name, source_dataset=meta.get("dataset"),
            source_stores=[str(s) for s in args.features], in_dim=int(features.shape[1]), seed=seed,
            epochs=args.epochs, temperature=args.temperature, input_pca=bool(args.input_pca), test_top=after)
        write_json(run_dir / "history.json", history)
        write_json(run_dir / "split.json", {"train": [[names[a], names[b]] for a, b in train_rows],
                                            "test": [[names[a], names[b]] for a, b in test_rows]})
        runs.append({"run": index, "seed": seed, "n_train_pairs": int(len(train_rows)),
                     "n_test_pairs": int(len(test_rows)), "pca_components": pca_k, "before": before, "pca": pca,
                     "adapted": after, "final_train_loss": history[-1]["train_loss"],
                     "final_test_loss": history[-1]["test_loss"], "checkpoint": str(checkpoint)})
        logger.info("run %d: %s", index, "  ".join(
            f"{m} " + " ".join(f"{k}={v:.3f}" for k, v in runs[-1][m].items()) for m in METHODS))
    results = {"features": [str(s) for s in args.features], "store_name": store_name, "pairs": str(args.pairs),
               "n_pairs": int(len(rows)), "dim": int(features.shape[1]), "model": args.model, "runs": runs,
               "summary": _summary(runs), "seconds": time.perf_counter() - started, "device": str(device)}
    write_json(save_to / "results.json", results)
    experiment.finish(**{f"{m}_top{k}": results["summary"][m][f"top{k}"]["mean"] for m in METHODS
                         for k in args.topk})
    print_summary(results, save_to)
    return results


def print_summary(results, folder):
    summary = results["summary"]
    keys = list(summary["before"])
    print(f"\n{results['store_name']}: {results['n_pairs']} pairs, {len(results['runs'])} run(s), held-out "
          f"{results['runs'][0]['n_test_pairs']} test pairs -> {folder}")
    print(f"{'':10}" + "".join(f"{key:>18}" for key in keys))
    for method in METHODS:
        cells = "".join(f"{summary[method][k]['mean']:>10.3f} +- {summary[method][k]['std']:.3f}" for k in keys)
        print(f"{method:10}{cells}")


def main(argv=None):
    """``train_adaptation.py``: parse, run, one ``error:`` line and exit code 2 on bad input
    (:func:`helpers.cli.run_cli`)."""
    from helpers.cli import run_cli

    run_cli(build_parser(), run, argv)
    return 0
