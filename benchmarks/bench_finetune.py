"""Does fine-tuning improve near-duplicate retrieval? BSDS500, a random-init ResNet18, a 2-core CPU, < 30 minutes.

Protocol (the acceptance test of the fine-tuning issue):

- training images: BSDS500 train + val (300 originals; nothing else: no attacked copies of them are given);
- validation (checkpoint selection): scikit-image's bundled photographs (disjoint from BSDS500) with random
  copy-detection edits, the 300 training originals as distractors;
- test: the 200 BSDS500 test originals' 58 seed attacks each (11,600 queries) searched among all 500 originals;
  exact cosine search, recall@1 (the seed's metric), also recall@10 and µAP;
- models: the starting model (random ResNet18: no pretrained weights can be downloaded offline) and the
  fine-tuned one, for the seed's plain SimCLR mode and for the copy-detection mode; the peer a user would pick
  instead of a neural model: perceptual hashes (Ahash, Dhash, Phash, Whash; Hamming distance) on the same queries.

Everything neural runs at a small input size (``--size``, whole images resized to size x size) so that a 2-core
CPU can afford it. The test attacks are generated once into ``--cache`` (outside git), with the decoded, resized
test images and their hashes; later runs reuse them. The whole run has a wall-clock budget (``--budget_minutes``,
28): each mode trains ``--epochs`` epochs (60) unless its share of the remaining time is smaller, in which case
the benchmark times a few training steps and trains the number of epochs that fits (the machine is shared: the
epochs actually trained are printed and saved). Results: ``benchmarks/results/bench_finetune.json``.

    .venv/bin/python benchmarks/bench_finetune.py            # full run (about 30 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_finetune.py --quick    # a smoke run (a few minutes)
"""
import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from helpers.ground_truth import read_ground_truth  # noqa: E402
from helpers.image_io import load_image, list_images  # noqa: E402
from helpers.results import write_json  # noqa: E402

HASHES = ("Ahash 64 bits", "Dhash 64 bits", "Phash 64 bits", "Whash 64 bits", "Phash 256 bits")
SEED_FAMILIES = {"gaussian_noise": "noise", "speckle_noise": "noise", "s&p_noise": "noise",
                 "gaussian_filter": "filter", "median_filter": "filter", "jpg_compression": "compression",
                 "scaling": "scaling", "cropping": "cropping", "rotation": "rotation", "shearing": "shearing",
                 "contrast_enhancement": "contrast", "color_enhancement": "color",
                 "brightness_enhancement": "brightness", "sharpness_enhancement": "sharpness", "text_length": "text"}
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
                  "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png", "color.png",
                  "cell.png", "clock_motion.png", "microaneurysms.png", "phantom.png")


def log(message):
    print(f"[bench_finetune {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------- the data

def ensure_attacks(bsds, cache, workers):
    """The 58 seed attacks of every test original (generated once; generate_attacks resumes)."""
    from data_retrieval.generate_attacks import generate_attacks

    out = cache / "test_attacks"
    expected = 58 * len(list_images(bsds / "test"))
    if out.is_dir() and len(list_images(out)) >= expected:
        return out, 0.0
    started = time.time()
    log(f"generating the seed's 58 attacks of the {expected // 58} test images into {out} (once)")
    generate_attacks(bsds / "test", out, workers=workers, seed=0, progress=False)
    return out, time.time() - started


def _decode(task):
    """Decode one image: its perceptual hashes (full resolution) and its size x size pixels."""
    from extractor.hashing import compute_hashes
    from finetuning.augment import eval_resize

    path, size = task
    image = load_image(path)
    return np.concatenate(compute_hashes(image, HASHES)), np.asarray(eval_resize(image, size), dtype=np.uint8)


def build_eval_cache(bsds, attacks, cache, size, workers):
    """Database (500 originals) and queries (11,600 attacks): names, packed hashes, resized pixels (cached)."""
    target = cache / f"eval_{size}px.npz"
    db_paths = [p for split in ("train", "val", "test") for p in list_images(bsds / split)]
    query_paths = [p for p in list_images(attacks)]
    if target.is_file():
        with np.load(target, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if len(arrays["db_names"]) == len(db_paths) and len(arrays["query_names"]) == len(query_paths) and \
                "query_ids" in arrays:
            return arrays, 0.0
    started = time.time()
    log(f"decoding {len(db_paths)} originals and {len(query_paths)} queries once ({size} px, {len(HASHES)} hashes)")
    tasks = [(str(p), size) for p in db_paths + query_paths]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_decode, tasks, chunksize=64)
    hashes = np.stack([r[0] for r in results])
    pixels = np.stack([r[1] for r in results])
    n_db = len(db_paths)
    truth = read_ground_truth(attacks / "ground_truth.csv")  # written by generate_attacks: data, not names
    query_keys = [p.relative_to(attacks).as_posix() for p in query_paths]
    arrays = {"db_names": np.array([p.name for p in db_paths]), "query_names": np.array([p.name for p in query_paths]),
              "db_ids": np.array([p.relative_to(bsds).as_posix() for p in db_paths]),
              "query_ids": np.array([f"test/{truth.references[key]}" for key in query_keys]),
              "query_attacks": np.array([truth.attacks[key] or "" for key in query_keys]),
              "db_hashes": hashes[:n_db], "query_hashes": hashes[n_db:], "db_pixels": pixels[:n_db],
              "query_pixels": pixels[n_db:]}
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, target)
    return arrays, time.time() - started


def validation_photos(cache):
    """scikit-image's photographs (disjoint from BSDS500), copied once as PNG: the validation originals."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    target = cache / "val_skimage"
    target.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        out = target / (Path(name).stem.replace("_", "-") + ".png")
        if not out.exists() and (source / name).exists():
            load_image(source / name).save(out)
    return target


# ------------------------------------------------------------------------------------------- evaluation

def hash_offsets():
    from extractor.hashing import get_hash_spec

    offsets, start = {}, 0
    for name in HASHES:
        nbytes = get_hash_spec(name).nbytes
        offsets[name] = (start, start + nbytes)
        start += nbytes
    return offsets


def family_recall(metrics):
    """recall@1 per seed attack family (mean over the family's attack variants, weighted by queries)."""
    per_attack = metrics["per_attack"]["1"]
    totals = {}
    for attack, value in per_attack.items():
        family = next((fam for prefix, fam in SEED_FAMILIES.items() if attack.startswith(prefix)), "other")
        hits, n = totals.get(family, (0.0, 0))
        totals[family] = (hits + value["recall"] * value["n"], n + value["n"])
    return {family: hits / n for family, (hits, n) in sorted(totals.items()) if n}


def summarize(metrics):
    return {"recall@1": metrics["recall@1"], "recall@10": metrics["recall@10"], "muap": metrics["muap"],
            "per_family_recall@1": family_recall(metrics)}


def eval_truth(arrays):
    """``(db identities, query identities, query attacks)``: each database photo is ``<split>/<file>``, each query
    the test photo its ``ground_truth.csv`` row names (the train and val photos are non-matching images)."""
    return list(arrays["db_ids"]), list(arrays["query_ids"]), [a or None for a in arrays["query_attacks"]]


def evaluate_hashes(arrays):
    from fast_search.evaluate import retrieval_metrics

    out = {}
    for name, (lo, hi) in hash_offsets().items():
        metrics = retrieval_metrics(arrays["db_hashes"][:, lo:hi], eval_truth(arrays)[0],
                                    arrays["query_hashes"][:, lo:hi], *eval_truth(arrays)[1:],
                                    metric="hamming", ks=(1, 10))
        out[name] = summarize(metrics)
        log(f"{name:>16}: recall@1 {metrics['recall@1']:.4f}  (nq={len(arrays['query_names'])}, n=500, hamming)")
    return out


@torch.no_grad()
def embed_pixels(model, pixels, batch_size=256):
    """Descriptors of uint8 ``[N, H, W, 3]`` images through a :class:`finetuning.models.TrainingModel`."""
    model.eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start:start + batch_size]).permute(0, 3, 1, 2).float().div_(255)
        chunks.append(model.descriptor(batch.contiguous()).float())
    return torch.cat(chunks).numpy()


def evaluate_model(model, arrays):
    from fast_search.evaluate import retrieval_metrics

    started = time.time()
    db = embed_pixels(model, arrays["db_pixels"])
    queries = embed_pixels(model, arrays["query_pixels"])
    db_identities, query_identities, attacks = eval_truth(arrays)
    metrics = retrieval_metrics(db, db_identities, queries, query_identities, attacks, metric="cosine", ks=(1, 10))
    out = summarize(metrics)
    out["dim"] = int(db.shape[1])
    out["eval_seconds"] = time.time() - started
    return out


# --------------------------------------------------------------------------------------------- training

def training_config(mode, args, log_dir, val_dir, epochs):
    from finetuning.config import FinetuneConfig

    common = dict(train_dataset=[str(args.bsds / "train"), str(args.bsds / "val")], log_dir=str(log_dir),
                  val_dataset=str(val_dir), backbone="ResNet18 1x", model="random", size=args.size,
                  epochs=epochs, batch_size=args.batch_size, workers=args.workers, device="cpu", seed=args.seed,
                  force=True, val_copies=args.val_copies, val_every=args.val_every, log_every=5, log_level="WARNING",
                  keep_checkpoints="best_last")
    if mode == "simclr":
        # The seed's recipe: SimCLR augmentations, projection head, NT-Xent at 0.1, LARS with the sqrt rule.
        return FinetuneConfig(mode="simclr", optimizer="lars", jitter=1.0, **common)
    return FinetuneConfig(mode="copy_detection", optimizer=args.cd_optimizer, lr=args.cd_lr,
                          weight_decay=args.cd_weight_decay, temperature=args.cd_temperature,
                          koleo_weight=args.koleo_weight, jitter=args.cd_jitter, crop_scale=args.crop_scale,
                          edit_prob=args.edit_prob, embedding_dim=args.embedding_dim, **common)


def starting_model(config):
    from finetuning.models import TrainingModel, build_networks

    net, head, _ = build_networks(config)
    return TrainingModel(net, head)


def seconds_per_epoch(config, n_images, n_val_images, steps=3):
    """Time a few real training steps (augmentation included) and the validation forward passes."""
    from finetuning.data import TwoViewDataset, ImageBank
    from finetuning.lars import LARS, lars_param_groups
    from finetuning.trainer import LossSpec, compute_loss, make_transform

    model = starting_model(config).train()
    paths = list_images(Path(config.train_dataset[0]))[:config.batch_size]
    dataset = TwoViewDataset(ImageBank(paths, short_side=config.bank_side), make_transform(config))
    optimizer = LARS(lars_param_groups(model, 1e-6), lr=1e-4)
    spec = LossSpec(config.mode, config.loss_temperature, config.koleo)
    timings = []
    for step in range(steps + 1):
        started = time.time()
        items = [dataset[i] for i in range(len(dataset))]
        batch = [torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])]
        loss, _ = compute_loss(model, batch, spec)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:                       # the first step warms up allocators and caches
            timings.append(time.time() - started)
    step_time = float(np.median(timings))
    with torch.no_grad():
        model.eval()
        started = time.time()
        model.descriptor(torch.rand(128, 3, config.size, config.size))
        forward_time = (time.time() - started) / 128
    return (n_images // config.batch_size) * step_time + n_val_images * forward_time


def plan_epochs(per_epoch, seconds, args):
    """Epochs that fit in ``seconds`` (at most ``--epochs``, at least ``--min_epochs``)."""
    return int(max(args.min_epochs, min(args.epochs, seconds // max(per_epoch, 1e-3))))


def run_mode(mode, args, arrays, val_dir, n_val_images, start, seconds):
    """Fine-tune in ``mode`` within about ``seconds`` (training + validation), evaluate the result on the test."""
    from finetuning.models import TrainingModel, load_descriptor_net
    from finetuning.trainer import run_finetuning

    log_dir = args.work / mode
    probe = training_config(mode, args, log_dir, val_dir, epochs=1)
    per_epoch = seconds_per_epoch(probe, 300, n_val_images / args.val_every)
    epochs = plan_epochs(per_epoch, seconds, args)
    log(f"{mode}: about {per_epoch:.1f} s per epoch (training + validation) -> {epochs} epochs "
        f"(budget {seconds / 60:.1f} min, at most --epochs {args.epochs})")
    config = training_config(mode, args, log_dir, val_dir, epochs)
    config.max_minutes = seconds / 60          # a loaded machine must not push the benchmark over its budget
    started = time.time()
    summary = run_finetuning(config)
    train_seconds = time.time() - started
    best_epoch, last_epoch = summary["best_epoch"], summary["last_epoch"]
    results = {"start": start, "epochs": last_epoch, "planned_epochs": epochs, "train_seconds": train_seconds, "best_epoch": best_epoch,
               "validation_recall@1": {str(r["epoch"]): r.get("recall@1") for r in summary["history"]
                                       if r.get("recall@1") is not None},
               "config": {k: v for k, v in config.to_dict().items() if k not in ("log_dir", "train_dataset")}}
    net, _ = load_descriptor_net(Path(summary["run_dir"]) / f"epoch_{last_epoch}.pth")
    results["last"] = evaluate_model(TrainingModel(net), arrays)
    if best_epoch == last_epoch:
        results["selected"] = results["last"]
    elif best_epoch:
        net, _ = load_descriptor_net(summary["best_checkpoint"])
        results["selected"] = evaluate_model(TrainingModel(net), arrays)
    else:
        results["selected"] = start         # no epoch beat the starting model on the validation set
    log(f"{mode}: trained {last_epoch} of {epochs} epochs in {train_seconds / 60:.1f} min; test recall@1: start "
        f"{start['recall@1']:.4f} -> last epoch {results['last']['recall@1']:.4f}, validation-selected epoch "
        f"{best_epoch}: {results['selected']['recall@1']:.4f}")
    return results


# ------------------------------------------------------------------------------------------------- main

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bsds", type=Path, default=REPO.parent / "shared" / "datasets" / "BSDS500",
                        help="BSDS500 folder with train/ val/ test/ (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_finetune_cache"),
                        help="cache of the generated attacks and decoded test images, outside git "
                             "(default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_finetune_runs"),
                        help="log dirs and checkpoints of the training runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_finetune.json")
    parser.add_argument("--modes", nargs="+", default=["copy_detection", "simclr"],
                        choices=["copy_detection", "simclr"])
    parser.add_argument("--size", type=int, default=64, help="input size of the neural models (default: %(default)s)")
    parser.add_argument("--budget_minutes", type=float, default=28.0,
                        help="wall-clock budget of the whole benchmark; the training of each mode gets an equal "
                             "share of what the data preparation and the evaluations leave (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=60,
                        help="epochs per mode when the budget allows (default: %(default)s)")
    parser.add_argument("--min_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--val_copies", type=int, default=16)
    parser.add_argument("--val_every", type=int, default=5)
    parser.add_argument("--cd_optimizer", default="adam", choices=["adam", "lars"])
    parser.add_argument("--cd_lr", type=float, default=1e-3)
    parser.add_argument("--cd_weight_decay", type=float, default=1e-6)
    parser.add_argument("--cd_temperature", type=float, default=0.05)
    parser.add_argument("--koleo_weight", type=float, default=1.0)
    parser.add_argument("--cd_jitter", type=float, default=1.0)
    parser.add_argument("--crop_scale", type=float, default=0.4)
    parser.add_argument("--edit_prob", type=float, default=0.9)
    parser.add_argument("--embedding_dim", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs per mode")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.epochs, args.min_epochs = 2, 1
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.time()
    deadline = started + args.budget_minutes * 60
    args.cache.mkdir(parents=True, exist_ok=True)
    attacks, gen_seconds = ensure_attacks(args.bsds, args.cache, workers=args.threads)
    arrays, decode_seconds = build_eval_cache(args.bsds, attacks, args.cache, args.size, workers=args.threads)
    n_q, n_db = len(arrays["query_names"]), len(arrays["db_names"])
    log(f"test set: {n_q} queries (seed attacks of the test originals), database {n_db} originals")
    hashes = evaluate_hashes(arrays)
    best_hash = max(hashes, key=lambda name: hashes[name]["recall@1"])
    val_dir = validation_photos(args.cache)
    n_val = len(list_images(val_dir)) * (1 + args.val_copies) + 300     # originals, copies, distractors
    starts = {}
    for mode in args.modes:
        starts[mode] = evaluate_model(starting_model(training_config(mode, args, args.work / mode, val_dir, 1)),
                                      arrays)
        log(f"{mode}: starting model (random ResNet18) test recall@1 {starts[mode]['recall@1']:.4f} "
            f"({starts[mode]['eval_seconds']:.0f} s to embed {n_q + n_db} images)")
    eval_cost = max(s["eval_seconds"] for s in starts.values())
    results = {}
    for index, mode in enumerate(args.modes):
        left = len(args.modes) - index
        remaining = deadline - time.time() - left * (2 * eval_cost + 30)
        results[mode] = run_mode(mode, args, arrays, val_dir, n_val, starts[mode], max(0.0, remaining / left))
    total = time.time() - started
    hash_r1 = hashes[best_hash]["recall@1"]
    print()
    print(f"BSDS500: n={n_db} database originals, nq={n_q} queries (58 seed attacks x 200 test images), k=1, "
          f"metric cosine (neural) / hamming (hashes), threads={args.threads}, device cpu, size {args.size} px")
    print(f"{'model':<46}{'recall@1':>9}{'recall@10':>10}{'muAP':>8}{'vs best hash':>14}")
    print(f"{'best perceptual hash: ' + best_hash:<46}{hash_r1:>9.4f}{hashes[best_hash]['recall@10']:>10.4f}"
          f"{hashes[best_hash]['muap']:>8.4f}{1.0:>13.3f}x")
    for mode, res in results.items():
        for label, key in (("start (random ResNet18)", "start"), (f"fine-tuned, {res['epochs']} epochs", "last"),
                           (f"validation-selected (epoch {res['best_epoch']})", "selected")):
            r = res[key]
            print(f"{mode + ': ' + label:<46}{r['recall@1']:>9.4f}{r['recall@10']:>10.4f}{r['muap']:>8.4f}"
                  f"{r['recall@1'] / hash_r1:>13.3f}x")
    print(f"total {total / 60:.1f} min (attack generation {gen_seconds / 60:.1f} min, decoding "
          f"{decode_seconds / 60:.1f} min, both cached for later runs)")
    record = {"protocol": {"database": n_db, "queries": n_q, "size": args.size, "threads": args.threads,
                           "device": "cpu", "cpu_count": os.cpu_count(), "metric_neural": "cosine",
                           "metric_hash": "hamming", "train_images": 300, "validation": str(val_dir)},
              "hashes": hashes, "best_hash": best_hash, "modes": results, "total_seconds": total,
              "attack_generation_seconds": gen_seconds, "decode_seconds": decode_seconds,
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    write_json(args.out, record)
    log(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
