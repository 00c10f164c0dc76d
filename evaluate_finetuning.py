"""Evaluate the checkpoints of a fine-tuning run, epoch by epoch, against the starting model.

Example (from the repository root)::

    python3 evaluate_finetuning.py --checkpoints Finetuning/bsds_cd_models/2024-05-01_10-00-00 \\
        --dataset BSDS500_original BSDS500_attacks --out Results/finetuning_bsds_cd

Per model (the starting model, then each epoch): the seed's cluster statistics of the dataset's identities
(an original and its attacked copies form a cluster) and its two signal-to-noise ratios per cluster (diameter /
separation, dispersion / mean centroid-to-centroid distance; lower is better) as violin plots, two global ratios
per epoch, and recall@1 per epoch when the dataset holds originals and attacked copies. Writes finetuning_evaluation.json and the plots.
"""
import argparse
import sys

from helpers.cli import add_common_arguments, add_max_pixels_argument, resolved_config, run_cli


def build_parser():
    parser = argparse.ArgumentParser(description="Evaluate fine-tuning checkpoints epoch by epoch against the "
                                                 "starting model: cluster statistics (violin plots) and recall@1.")
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoint files and/or run folders (<log_dir>_models/<timestamp>, expanded to "
                             "their epoch_<n>.pth files)")
    parser.add_argument("--dataset", nargs="+", required=True,
                        help="datasets (names or folders) whose images are grouped by identity, e.g. "
                             "BSDS500_original BSDS500_attacks")
    parser.add_argument("--out", required=True, help="output folder (JSON, plots, stored descriptors)")
    parser.add_argument("--baseline", default=None,
                        help="the starting model: a registry name ('SimCLR v2 ResNet50 2x', 'ResNet18 1x') or a "
                             "checkpoint file; default: rebuilt exactly from the first checkpoint's training "
                             "configuration (same weights source and seed)")
    parser.add_argument("--baseline_weights", default="random",
                        help="weights of a --baseline registry model: random, pretrained or a file "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=None,
                        help="images resized to size x size (default: the training size of the checkpoints)")
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                        help="distance of the cluster statistics and of the search (default: %(default)s)")
    parser.add_argument("--min_cluster_size", type=int, default=2,
                        help="identities with fewer images are not clusters (they count as outside points) "
                             "(default: %(default)s)")
    add_max_pixels_argument(parser)
    add_common_arguments(parser)
    return parser


def main(argv=None):
    """``evaluate_finetuning.py``: one ``error:`` line and exit code 2 on bad input (:func:`helpers.cli.run_cli`)."""
    return run_cli(build_parser(), run, argv)


def run(args):
    from finetuning.evaluate import evaluate_finetuning
    from helpers.device import resolve_device
    from helpers.experiment import start_experiment

    device = resolve_device(args.device)
    experiment = start_experiment(args.out, resolved_config(args), force=args.force, device=device)
    summary = evaluate_finetuning(args.checkpoints, args.dataset, args.out, baseline=args.baseline,
                                  baseline_weights=args.baseline_weights, seed=args.seed, size=args.size,
                                  metric=args.metric, min_cluster_size=args.min_cluster_size, device=device,
                                  max_pixels=args.max_pixels)
    experiment.finish(**{k: v for k, v in summary.items() if k == "best_epoch"})
    # the seed's per-cluster ratios (medians over the clusters; lower = better), then the global ones
    print(f"{'model':<28}{'recall@1':>10}{'diam/sep':>10}{'disp/spc':>10}{'ratio1':>9}{'ratio2':>9}")
    for model in summary["models"]:
        recall = model.get("recall@1")
        shown = f"{recall:>10.4f}" if recall is not None else f"{'-':>10}"
        medians = [model["per_cluster_ratios"][key]["median"]
                   for key in ("diameter_over_separation", "dispersion_over_spacing")]
        medians = "".join(f"{m:>10.3f}" if m is not None else f"{'-':>10}" for m in medians)
        print(f"{model['label']:<28}{shown}{medians}{model['sn_ratio1']:>9.3f}{model['sn_ratio2']:>9.3f}")
    print(f"results in {args.out}/finetuning_evaluation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
