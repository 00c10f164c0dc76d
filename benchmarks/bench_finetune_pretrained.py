"""Does unsupervised fine-tuning improve a *pretrained* model at finding edited copies? 2-core CPU, < 45 minutes.

Protocol (issue 13, points 4 and 5):

- **photos and splits** (disjoint, listed in the JSON): training = the 200 BSDS500 train photos + the first
  ``100 - --val_photos`` BSDS500 val photos (sorted names), unlabelled (no copy of them is given); validation =
  the last ``--val_photos`` (50) BSDS500 val photos with ``--val_copies`` random edits each of the *training*
  families, the training photos as distractors (checkpoint selection and the KoLeo sweep only); test = the 200
  BSDS500 test photos + scikit-image's 22 bundled photos, never trained on, never used for a choice;
- **test queries**: one random edit of every family of :data:`data_retrieval.attacks.RANDOM_EDITS` (and one
  chain of 2-3 edits) per test photo, generated here, seeded, with their ground truth kept in explicit arrays
  (which original, which family); database: all test originals + the 300 other BSDS500 photos as distractors;
  **with negatives** (DISC21): the originals of a seeded half of the test photos are removed from the database,
  so half the queries have no original there;
- **leave-families-out**: ``--held_out`` families (flips, padding, background paste / screenshot frame, emoji
  overlays, text overlays, meme captions) are never used by the training augmentation (nor by the view's random
  flip, nor by the validation edits); they are reported apart from the trained families (chains mix both);
- **models**: the pretrained start (``--backbone``, GeM-pooled, L2-normalised: the network fine-tuning starts
  from), the fine-tuned model (copy-detection mode: NT-Xent at 0.05 + KoLeo, Adam at a modest rate, few epochs,
  frozen batch-norm statistics, the regulariser toward the start, the validation-best epoch), the same without
  the regulariser, and the best 64-bit perceptual hash, side by side per family; neural models at the training
  size and at the model's own size (``--eval_sizes``);
- **KoLeo weight**: swept over ``--koleo_sweep`` (0 / 1 / 10 / 30) with the regulariser; the value is picked by
  the validation µAP of each run's validation-best epoch, never by the test;
- **metrics** (:mod:`fast_search.metrics`, explicit identity arrays): recall@1 (for hashes: pessimistic, a tie at
  rank 1 with a wrong image is a miss, and its expectation under random tie-breaking beside it), µAP over each
  query's 10 nearest, µAP with negatives; per family and per group (trained / held-out / chain).

The test set (edits, hashes, resized pixels) is generated once into ``--cache`` (outside git). ``--reduced`` is a
development mode (48 test photos, 2 epochs, KoLeo 0 and 10, the training size only): its numbers are not the benchmark's.

    .venv/bin/python benchmarks/bench_finetune_pretrained.py            # the full run (< 45 min on 2 cores)
    .venv/bin/python benchmarks/bench_finetune_pretrained.py --reduced  # development (a few minutes)

Results: ``benchmarks/results/bench_finetune_pretrained.json`` (``..._reduced.json`` for ``--reduced``).
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from helpers.image_io import list_images, load_image  # noqa: E402
from helpers.results import write_json  # noqa: E402
from helpers.seeding import stable_seed  # noqa: E402

HASHES = ("Ahash 64 bits", "Dhash 64 bits", "Phash 64 bits", "Whash 64 bits")
HELD_OUT = ("flip", "padding", "paste", "overlay", "text", "meme")
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
                  "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png", "color.png",
                  "cell.png", "clock_motion.png", "microaneurysms.png", "phantom.png")
K = 10


def log(message):
    print(f"[bench_finetune_pretrained {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------------------- photos

def photo_splits(bsds, cache, val_photos, reduced):
    """``{"train": [...], "validation": [...], "test": [...], "distractors": [...]}`` of photo paths (disjoint)."""
    train, val, test = (list_images(bsds / split) for split in ("train", "val", "test"))
    if len(train) != 200 or len(val) != 100 or len(test) != 200:
        raise SystemExit(f"error: {bsds} must hold BSDS500's train/ (200), val/ (100) and test/ (200) photos")
    skimage = skimage_photos(cache)
    splits = {"train": train + val[:len(val) - val_photos], "validation": val[len(val) - val_photos:],
              "test": (test[:40] + skimage[:8]) if reduced else (test + skimage)}
    splits["distractors"] = train + val            # every other photo is in the test database
    names = {split: {Path(p).name for p in paths} for split, paths in splits.items() if split != "distractors"}
    assert not (names["train"] & names["validation"]) and not (names["test"] & (names["train"] | names["validation"]))
    return splits


def skimage_photos(cache):
    """scikit-image's bundled photographs, copied once as PNG (names ``skimage-<name>.png``)."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    target = cache / "skimage"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SKIMAGE_PHOTOS:
        path = target / f"skimage-{Path(name).stem.replace('_', '-')}.png"
        if not path.exists() and (source / name).exists():
            load_image(source / name).save(path)
        if path.exists():
            out.append(path)
    return out


def link_folder(paths, folder):
    """A folder of symbolic links to ``paths`` (the trainer reads folders)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for path in paths:
        (folder / Path(path).name).symlink_to(Path(path).resolve())
    return folder


# ---------------------------------------------------------------------------------------------- test set

def identity(path):
    """The ground-truth identity of a photo of this benchmark: its file stem (the benchmark made every query, so
    query -> original is known without parsing names; this is only the original's own label)."""
    return Path(path).stem


def _prepare(task):
    """One photo: its hashes and pixels at every size; with ``families``, the same for one seeded edit each."""
    from data_retrieval.attacks import random_edit
    from extractor.hashing import compute_hashes
    from finetuning.augment import eval_resize

    path, families, seed, sizes = task
    image = load_image(path)
    images = [image]
    for family in families:
        rng = np.random.default_rng(stable_seed("bench-finetune-pretrained-test", seed, identity(path), family))
        if family == "chain":
            edited, _ = random_edit(image, rng, chain_probability=1.0)
        else:
            edited, _ = random_edit(image, rng, families=[family])
        images.append(edited.convert("RGB"))
    hashes = np.stack([np.concatenate(compute_hashes(im, HASHES)) for im in images])
    pixels = {size: np.stack([np.asarray(eval_resize(im, size), dtype=np.uint8) for im in images]) for size in sizes}
    return hashes, pixels


def build_test_set(splits, families, seed, sizes, cache, workers):
    """Database and queries as arrays (cached): hashes, pixels per size, explicit identities and families.

    Database rows: the distractors first (so that a stable sort breaks exact ties against the originals), then
    the test originals. Query ``j`` is an edit of test photo ``query_original[j]`` by family ``query_family[j]``.
    """
    test, distractors = splits["test"], splits["distractors"]
    key = hashlib.sha256(json.dumps([[str(p) for p in test], [str(p) for p in distractors], list(families), seed,
                                     list(sizes), HASHES]).encode()).hexdigest()[:12]
    folder = cache / f"testset_{key}"
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        started = time.time()
        log(f"generating {len(test) * len(families)} test queries ({len(test)} photos x {len(families)} families) "
            f"and decoding {len(distractors)} distractors (once, into {folder})")
        tasks = [(str(p), (), seed, tuple(sizes)) for p in distractors]
        tasks += [(str(p), tuple(families), seed, tuple(sizes)) for p in test]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_prepare, tasks, chunksize=4)
        folder.mkdir(parents=True, exist_ok=True)
        n_d = len(distractors)
        db_hashes = np.concatenate([r[0][:1] for r in results])
        query_hashes = np.concatenate([r[0][1:] for r in results[n_d:]])
        np.save(folder / "db_hashes.npy", db_hashes)
        np.save(folder / "query_hashes.npy", query_hashes)
        for size in sizes:
            np.save(folder / f"db_pixels_{size}.npy", np.concatenate([r[1][size][:1] for r in results]))
            np.save(folder / f"query_pixels_{size}.npy", np.concatenate([r[1][size][1:] for r in results[n_d:]]))
        meta = {"db_identities": [identity(p) for p in distractors] + [identity(p) for p in test],
                "n_distractors": n_d,
                "query_identities": [identity(p) for p in test for _ in families],
                "query_families": [family for _ in test for family in families],
                "seconds": time.time() - started}
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    data = {"db_identities": np.array(meta["db_identities"]), "query_identities": np.array(meta["query_identities"]),
            "query_families": np.array(meta["query_families"]), "n_distractors": meta["n_distractors"],
            "db_hashes": np.load(folder / "db_hashes.npy", allow_pickle=False),
            "query_hashes": np.load(folder / "query_hashes.npy", allow_pickle=False),
            "seconds": meta["seconds"], "folder": str(folder)}
    for size in sizes:
        data[f"db_pixels_{size}"] = np.load(folder / f"db_pixels_{size}.npy", mmap_mode="r", allow_pickle=False)
        data[f"query_pixels_{size}"] = np.load(folder / f"query_pixels_{size}.npy", mmap_mode="r", allow_pickle=False)
    return data


def negative_columns(data, seed):
    """Database columns kept in the *with negatives* setting: the originals of a seeded half of the test photos are
    removed (their queries then have no original in the database, as half the DISC21 queries)."""
    originals = np.arange(data["n_distractors"], len(data["db_identities"]))
    rng = np.random.default_rng(stable_seed("bench-finetune-pretrained-negatives", seed))
    removed = set(rng.choice(originals, size=len(originals) // 2, replace=False).tolist())
    return np.array([c for c in range(len(data["db_identities"])) if c not in removed])


# ------------------------------------------------------------------------------------------------ metrics

def scores(distances, db_identities, query_identities):
    """recall@1 (pessimistic about ties, and expected under random tie-breaking), recall@10 (pessimistic) and µAP
    of a ``[nq, ndb]`` distance matrix, with the shared tie-aware metrics of :mod:`fast_search.metrics`."""
    from fast_search import metrics as M

    neighbors = np.argsort(distances, axis=1, kind="stable")  # every column: the tie groups are complete
    nearest = np.take_along_axis(distances, neighbors, axis=1)
    positive = M.has_original(db_identities, query_identities)
    n_db = distances.shape[1]
    hits1, expected1, _, _ = M.tie_aware_hits(nearest, neighbors, db_identities, query_identities, 1, n_db)
    hits10 = M.tie_aware_hits(nearest, neighbors, db_identities, query_identities, min(10, n_db), n_db)[0]
    pairs = M.candidate_pairs(nearest, neighbors, db_identities, query_identities, k=min(K, n_db))
    mean = (lambda values: float(values[positive].mean())) if positive.any() else (lambda values: float("nan"))
    return {"recall@1": mean(hits1), "recall@1_expected": mean(expected1), "recall@10": mean(hits10),
            "muap": M.micro_average_precision(*pairs), "nq": int(len(query_identities))}


def family_groups(families, held_out):
    """``{"trained": [...], "held_out": [...], "chain": ["chain"]}``."""
    return {"trained": [f for f in families if f not in held_out and f != "chain"],
            "held_out": [f for f in families if f in held_out], "chain": [f for f in families if f == "chain"]}


def evaluate_distances(distances, data, keep_columns, groups):
    """Overall, per group and per family: scores without negatives, and µAP with negatives."""
    db_ids, q_ids, q_fam = data["db_identities"], data["query_identities"], data["query_families"]
    neg_distances, neg_db = distances[:, keep_columns], db_ids[keep_columns]

    def both(rows):
        out = scores(distances[rows], db_ids, q_ids[rows])
        negatives = scores(neg_distances[rows], neg_db, q_ids[rows])
        out["muap_with_negatives"] = negatives["muap"]
        out["negative_fraction"] = float(1 - np.isin(q_ids[rows], neg_db).mean())
        return out

    out = {"overall": both(np.arange(len(q_ids)))}
    out["groups"] = {name: both(np.flatnonzero(np.isin(q_fam, members))) for name, members in groups.items()
                     if members}
    out["families"] = {family: both(np.flatnonzero(q_fam == family)) for family in dict.fromkeys(q_fam.tolist())}
    return out


def hamming_distances(query_bytes, db_bytes):
    q = np.unpackbits(query_bytes, axis=1).astype(np.float32)
    d = np.unpackbits(db_bytes, axis=1).astype(np.float32)
    return q @ (1 - d).T + (1 - q) @ d.T


def evaluate_hashes(data, keep_columns, groups):
    from extractor.hashing import get_hash_spec

    out, start = {}, 0
    for name in HASHES:
        stop = start + get_hash_spec(name).nbytes
        distances = hamming_distances(data["query_hashes"][:, start:stop], data["db_hashes"][:, start:stop])
        out[name] = evaluate_distances(distances, data, keep_columns, groups)
        start = stop
        o = out[name]["overall"]
        log(f"{name:>14}: recall@1 {o['recall@1']:.4f} (expected under ties {o['recall@1_expected']:.4f}), "
            f"µAP {o['muap']:.4f}, with negatives {o['muap_with_negatives']:.4f}")
    return out


@torch.no_grad()
def embed_pixels(model, pixels, batch_size=64):
    """L2-normalised descriptors of uint8 ``[N, H, W, 3]`` images through a :class:`TrainingModel`."""
    model.eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.array(pixels[start:start + batch_size])).permute(0, 3, 1, 2)
        chunks.append(torch.nn.functional.normalize(model.descriptor(batch.float().div_(255)).float(), dim=1))
    return torch.cat(chunks).numpy()


def evaluate_model(model, data, sizes, keep_columns, groups, label):
    out = {}
    for size in sizes:
        started = time.time()
        db = embed_pixels(model, data[f"db_pixels_{size}"])
        queries = embed_pixels(model, data[f"query_pixels_{size}"])
        out[str(size)] = evaluate_distances(1.0 - queries @ db.T, data, keep_columns, groups)
        out[str(size)]["embed_seconds"] = time.time() - started
        o = out[str(size)]
        log(f"{label} at {size} px: recall@1 {o['overall']['recall@1']:.4f}, µAP {o['overall']['muap']:.4f}, "
            f"with negatives {o['overall']['muap_with_negatives']:.4f}; held-out families recall@1 "
            f"{o['groups']['held_out']['recall@1']:.4f} ({o['embed_seconds']:.0f} s, load {load_average()})")
    return out


# ----------------------------------------------------------------------------------------------- training

def simclr_config(args, folders, epochs, log_dir):
    """The seed's SimCLR recipe (projection head, SimCLR augmentations, LARS with the automatic rate, temperature
    0.1, no KoLeo, no regulariser), from the same pretrained start, budget, validation set and selection."""
    from finetuning.config import FinetuneConfig

    return FinetuneConfig(
        train_dataset=[str(folders["train"])], val_dataset=str(folders["validation"]), log_dir=str(log_dir),
        backbone=args.backbone, model=args.weights, mode="simclr", size=args.size, epochs=epochs,
        batch_size=args.batch_size, val_copies=args.val_copies, val_every=1, select_metric="muap",
        edit_families=[f for f in args.families if f not in args.held_out], workers=args.workers, device="cpu",
        seed=args.seed, force=True, keep_checkpoints="best_last", log_every=5, log_level="WARNING")


def training_config(args, folders, koleo, regularised, epochs, log_dir):
    from finetuning.config import FinetuneConfig

    if koleo == "simclr":
        return simclr_config(args, folders, epochs, log_dir)
    trained = [f for f in args.families if f not in args.held_out]            # includes "chain" (of trained ones)
    return FinetuneConfig(
        train_dataset=[str(folders["train"])], val_dataset=str(folders["validation"]), log_dir=str(log_dir),
        backbone=args.backbone, model=args.weights, mode="copy_detection", size=args.size, epochs=epochs,
        batch_size=args.batch_size, optimizer="adam", lr=args.lr, weight_decay=0.0, temperature=args.temperature,
        koleo_weight=koleo, jitter=args.jitter, crop_scale=args.crop_scale, crop_prob=args.crop_prob,
        edit_prob=args.edit_prob, edit_families=trained, freeze_bn=bool(args.freeze_bn),
        l2sp_weight=args.l2sp_weight if regularised else 0.0,
        distill_weight=args.distill_weight if regularised else 0.0, warmup_epochs=args.warmup_epochs,
        val_copies=args.val_copies, val_every=1, select_metric="muap", workers=args.workers, device="cpu",
        seed=args.seed, force=True, keep_checkpoints="best_last", log_every=5, log_level="WARNING")


def starting_model(config):
    from finetuning.models import TrainingModel, build_networks

    net, head, _ = build_networks(config)
    return TrainingModel(net, head)


def reusable_run(config):
    """The ``best_epoch.json`` summary of a finished run of exactly this configuration (``--reuse``), else None."""
    import yaml

    from finetuning.trainer import BEST_FILE
    from helpers.experiment import CONFIG_NAME, is_finished

    folder = Path(config.log_dir)
    best, saved = folder / BEST_FILE, folder / CONFIG_NAME
    if not (best.is_file() and saved.is_file()):
        return None
    summary = json.loads(best.read_text())
    # a finished run, or one the time budget stopped (recorded as such); never one killed half-way
    if not (is_finished(folder) or summary.get("stopped_early")):
        return None
    previous = yaml.safe_load(saved.read_text()) or {}
    wanted = config.to_dict()
    if any(previous.get(key) != value for key, value in wanted.items() if key != "max_minutes"):
        return None
    if summary["best_checkpoint"] and not Path(summary["best_checkpoint"]).is_file():
        return None
    summary["train_seconds"] = sum(r.get("epoch_seconds", 0.0) + r.get("val_seconds", 0.0)
                                   for r in summary["history"])
    return summary


def train(args, folders, koleo, regularised, minutes, tag):
    """One fine-tuning run; returns its summary (validation history, selected epoch) and the selected model."""
    from finetuning.models import TrainingModel, load_descriptor_net
    from finetuning.trainer import run_finetuning

    config = training_config(args, folders, koleo, regularised, args.epochs, args.work / tag)
    summary = reusable_run(config) if args.reuse else None
    started = time.time()
    if summary is None:
        config.max_minutes = minutes
        summary = run_finetuning(config)
        seconds = time.time() - started
    else:
        seconds = summary.get("train_seconds")
        log(f"{tag}: reusing the finished run in {config.log_dir} (same configuration)")
    history = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in summary["history"]]
    record = {"mode": config.mode, "koleo_weight": koleo if koleo != "simclr" else 0.0, "regularised": regularised, "train_seconds": seconds,
              "epochs_trained": summary["last_epoch"], "best_epoch": summary["best_epoch"],
              "validation_best_muap": summary["best_value"], "history": history,
              "stopped_early": summary.get("stopped_early"), "load_average_after": load_average()}
    if summary["best_epoch"]:
        net, _ = load_descriptor_net(summary["best_checkpoint"])
        model = TrainingModel(net)
    else:
        model = None                       # no epoch beat the start on validation: the start is kept
    start_val = history[0].get("val_muap") if history else None
    log(f"{tag}: {summary['last_epoch']} epochs in {(seconds or 0) / 60:.1f} min; validation µAP start {start_val:.4f} -> "
        f"best epoch {summary['best_epoch']}: {summary['best_value']:.4f} (load {load_average()})")
    return record, model


# --------------------------------------------------------------------------------------------------- report

def comparison(start, finetuned, groups):
    """The issue's target, per evaluation size: overall and held-out gains, and the worst family's recall@1 loss."""
    out = {}
    for size in finetuned:
        s, f = start[size], finetuned[size]
        losses = {fam: f["families"][fam]["recall@1"] - s["families"][fam]["recall@1"] for fam in s["families"]}
        worst = min(losses, key=losses.get)
        out[size] = {
            "overall_muap_gain": f["overall"]["muap"] - s["overall"]["muap"],
            "overall_recall@1_gain": f["overall"]["recall@1"] - s["overall"]["recall@1"],
            "held_out_muap_gain": f["groups"]["held_out"]["muap"] - s["groups"]["held_out"]["muap"],
            "held_out_recall@1_gain": f["groups"]["held_out"]["recall@1"] - s["groups"]["held_out"]["recall@1"],
            "worst_family": worst, "worst_family_recall@1_change": losses[worst]}
        g = out[size]
        g["target_met"] = bool(g["overall_muap_gain"] > 0 and g["overall_recall@1_gain"] > 0 and
                               g["held_out_muap_gain"] > 0 and g["held_out_recall@1_gain"] > 0 and
                               g["worst_family_recall@1_change"] >= -0.01)
    return out


def print_table(models, hashes, best_hash, size, families, groups):
    columns = [("start", models["start"][size]), ("fine-tuned", models["finetuned"][size])]
    if "finetuned_no_regulariser" in models:
        columns.append(("no reg.", models["finetuned_no_regulariser"][size]))
    if "simclr" in models:
        columns.append(("SimCLR (seed)", models["simclr"][size]))
    print(f"\nrecall@1 (µAP) at {size} px; best hash {best_hash}: recall@1 pessimistic / expected under ties")
    header = f"{'':<22}" + "".join(f"{name:>20}" for name, _ in columns) + f"{'best hash':>22}"
    print(header)

    def row(label, pick):
        cells = "".join(f"{pick(c)['recall@1']:>11.4f} ({pick(c)['muap']:.4f})" for _, c in columns)
        h = pick(hashes[best_hash])
        print(f"{label:<22}{cells}{h['recall@1']:>12.4f} / {h['recall@1_expected']:.4f}")

    row("overall", lambda c: c["overall"])
    print(f"{'  µAP with negatives':<22}" + "".join(f"{c['overall']['muap_with_negatives']:>20.4f}"
                                                    for _, c in columns)
          + f"{hashes[best_hash]['overall']['muap_with_negatives']:>22.4f}")
    for name in groups:
        if groups[name]:
            row(f"[{name}]", lambda c, n=name: c["groups"][n])
    for family in families:
        tag = " (held out)" if family in groups["held_out"] else ""
        row(f"  {family}{tag}", lambda c, f=family: c["families"][f])


# ----------------------------------------------------------------------------------------------------- main

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bsds", type=Path, default=REPO.parent / "shared" / "datasets" / "BSDS500",
                        help="BSDS500 folder with train/ val/ test/ (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_finetune_pretrained_cache"),
                        help="generated test set and split folders, outside git (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_finetune_pretrained_runs"),
                        help="log dirs and checkpoints of the training runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: benchmarks/results/bench_finetune_pretrained[_reduced].json)")
    parser.add_argument("--backbone", default="EfficientNet-Lite0", help="registry model (default: %(default)s)")
    parser.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                        help="starting weights; random only to develop without the pretrained files "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="training size (default: %(default)s)")
    parser.add_argument("--eval_sizes", type=int, nargs="+", default=None,
                        help="evaluation sizes (default: the training size and 224)")
    parser.add_argument("--held_out", nargs="+", default=list(HELD_OUT),
                        help="edit families never used in training (default: %(default)s)")
    parser.add_argument("--koleo_sweep", type=float, nargs="+", default=[0.0, 1.0, 10.0, 30.0])
    parser.add_argument("--l2sp_weight", type=float, default=0.0, help="(default: %(default)s)")
    parser.add_argument("--distill_weight", type=float, default=1.0, help="(default: %(default)s)")
    parser.add_argument("--no_unregularised", action="store_true",
                        help="skip the run without the regulariser (with/without comparison)")
    parser.add_argument("--no_simclr", action="store_true",
                        help="skip the seed's SimCLR-mode run shown beside copy-detection mode")
    parser.add_argument("--freeze_bn", type=int, default=1, choices=[0, 1], help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--warmup_epochs", type=float, default=0.5, help="(default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.05, help="(default: %(default)s)")
    parser.add_argument("--jitter", type=float, default=0.5, help="(default: %(default)s)")
    parser.add_argument("--crop_scale", type=float, default=0.4, help="(default: %(default)s)")
    parser.add_argument("--crop_prob", type=float, default=0.5, help="(default: %(default)s)")
    parser.add_argument("--edit_prob", type=float, default=0.9, help="(default: %(default)s)")
    parser.add_argument("--val_photos", type=int, default=50,
                        help="BSDS500 val photos kept for validation; the others train (default: %(default)s)")
    parser.add_argument("--val_copies", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--budget_minutes", type=float, default=44.0,
                        help="wall-clock budget; each training run gets a share of what is left (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished training runs of the same configuration found under --work (to add "
                             "evaluation sizes without retraining); their recorded training time is reported")
    parser.add_argument("--reduced", action="store_true",
                        help="development mode: 48 test photos, 2 epochs, KoLeo 0 and 10, evaluated at the "
                             "training size only")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.reduced:
        args.epochs, args.koleo_sweep, args.val_copies = 2, [0.0, 10.0], 4
        args.eval_sizes = args.eval_sizes or [args.size]
    from data_retrieval.attacks import RANDOM_EDITS

    args.families = list(RANDOM_EDITS) + ["chain"]
    unknown = [f for f in args.held_out if f not in RANDOM_EDITS]
    if unknown:
        raise SystemExit(f"error: unknown --held_out families {unknown}; choose from {', '.join(RANDOM_EDITS)}")
    sizes = args.eval_sizes or sorted({args.size, 224})
    out_path = args.out or REPO / "benchmarks" / "results" / (
        "bench_finetune_pretrained_reduced.json" if args.reduced else "bench_finetune_pretrained.json")
    torch.set_num_threads(args.threads)
    started = time.time()
    deadline = started + args.budget_minutes * 60
    args.cache.mkdir(parents=True, exist_ok=True)
    splits = photo_splits(args.bsds, args.cache, args.val_photos, args.reduced)
    folders = {name: link_folder(splits[name], args.cache / "splits" / name) for name in ("train", "validation")}
    log(f"photos: {len(splits['train'])} train, {len(splits['validation'])} validation, {len(splits['test'])} test, "
        f"{len(splits['distractors'])} distractors in the test database; load {load_average()}")
    data = build_test_set(splits, args.families, args.seed, sizes, args.cache, workers=args.threads)
    keep = negative_columns(data, args.seed)
    groups = family_groups(args.families, args.held_out)
    log(f"test: {len(data['query_identities'])} queries, database {len(data['db_identities'])} "
        f"({len(splits['test'])} originals + {data['n_distractors']} distractors); with negatives: database "
        f"{len(keep)}")
    hashes = evaluate_hashes(data, keep, groups)
    best_hash = max(hashes, key=lambda name: (hashes[name]["overall"]["recall@1"], hashes[name]["overall"]["muap"]))

    probe = training_config(args, folders, 0.0, True, 1, args.work / "probe")
    models = {"start": evaluate_model(starting_model(probe), data, sizes, keep, groups, "start")}
    eval_seconds = sum(models["start"][str(s)]["embed_seconds"] for s in sizes)
    runs = len(args.koleo_sweep) + (0 if args.no_unregularised else 1) + (0 if args.no_simclr else 1)
    sweep, sweep_models = {}, {}
    for index, koleo in enumerate(args.koleo_sweep):
        left = deadline - time.time() - (2 * eval_seconds + 60)
        minutes = max(1.0, left / (runs - index) / 60)
        record, model = train(args, folders, koleo, True, minutes, f"koleo_{koleo:g}")
        sweep[f"{koleo:g}"], sweep_models[f"{koleo:g}"] = record, model
    chosen = max(sweep, key=lambda k: (sweep[k]["validation_best_muap"], -float(k)))
    shown = ", ".join(f"{k}: {v['validation_best_muap']:.4f}" for k, v in sweep.items())
    log(f"KoLeo weight chosen on validation: {chosen} (validation µAP {shown})")
    chosen_model = sweep_models[chosen]
    models["finetuned"] = (evaluate_model(chosen_model, data, sizes, keep, groups, f"fine-tuned (KoLeo {chosen})")
                           if chosen_model is not None else models["start"])
    unregularised = None
    if not args.no_unregularised:
        left = deadline - time.time() - (eval_seconds + 30)
        left = left / (2 if not args.no_simclr else 1)
        unregularised, model = train(args, folders, float(chosen), False, max(1.0, left / 60),
                                     f"koleo_{chosen}_no_regulariser")
        models["finetuned_no_regulariser"] = (
            evaluate_model(model, data, sizes, keep, groups, "fine-tuned without regulariser")
            if model is not None else models["start"])
    simclr = None
    if not args.no_simclr:
        left = deadline - time.time() - (eval_seconds + 30)
        simclr, model = train(args, folders, "simclr", False, max(1.0, left / 60), "simclr_seed_recipe")
        models["simclr"] = (evaluate_model(model, data, sizes, keep, groups, "SimCLR mode (seed recipe)")
                            if model is not None else models["start"])
    total = time.time() - started
    for size in sizes:
        print_table(models, hashes, best_hash, str(size), args.families, groups)
    target = comparison(models["start"], models["finetuned"], groups)
    for size, g in target.items():
        print(f"{size} px: target {'MET' if g['target_met'] else 'NOT met'}: overall µAP {g['overall_muap_gain']:+.4f}"
              f", recall@1 {g['overall_recall@1_gain']:+.4f}; held-out µAP {g['held_out_muap_gain']:+.4f}, recall@1 "
              f"{g['held_out_recall@1_gain']:+.4f}; worst family {g['worst_family']} "
              f"{g['worst_family_recall@1_change']:+.4f}")
    print(f"total {total / 60:.1f} min, load average {load_average()}, {args.threads} threads, cpu_count "
          f"{os.cpu_count()}{' (REDUCED development mode)' if args.reduced else ''}")
    record = {
        "mode": "reduced (development)" if args.reduced else "full",
        "protocol": {
            "backbone": args.backbone, "weights": args.weights, "train_size": args.size, "eval_sizes": sizes,
            "database": len(data["db_identities"]), "database_with_negatives": int(len(keep)),
            "queries": int(len(data["query_identities"])), "k": K, "metric_neural": "cosine",
            "metric_hash": "hamming", "families": args.families, "groups": groups, "threads": args.threads,
            "device": "cpu", "cpu_count": os.cpu_count(),
            "photos": {name: [Path(p).name for p in paths] for name, paths in splits.items()}},
        "recipe": {k: v for k, v in training_config(args, folders, float(chosen), True, args.epochs,
                                                     args.work / "x").to_dict().items()
                   if k not in ("log_dir", "train_dataset", "val_dataset")},
        "koleo_sweep": sweep, "koleo_chosen_on_validation": float(chosen), "unregularised_run": unregularised,
        "simclr_run": simclr,
        "hashes": hashes, "best_hash": best_hash, "models": models, "target": target,
        "test_set_seconds": data["seconds"], "total_seconds": total, "load_average_end": load_average(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    write_json(out_path, record)
    log(f"saved {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
