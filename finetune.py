"""Fine-tune an image-similarity model: the seed's SimCLR fine-tuning, copy-detection (SSCD-like) and triplet modes.

Examples (from the repository root)::

    # the seed's command: SimCLR v2 ResNet50 2x (converted pretrained weights), NT-Xent + LARS
    python3 finetune.py --train_dataset Datasets/Cartoons --log_dir Finetuning/cartoons --epochs 100

    # offline, random start, copy-detection mode with a validation set for checkpoint selection
    python3 finetune.py --train_dataset Datasets/BSDS500/train --val_dataset Datasets/BSDS500/val \\
        --log_dir Finetuning/bsds_cd --mode copy_detection --backbone "ResNet18 1x" --model random --size 96

    # several GPUs on one machine, or many machines through torchrun
    torchrun --nproc_per_node 4 finetune.py --train_dataset ... --log_dir ... --batch_size 256

Writes TensorBoard events, config.yml/experiment.yml and best_epoch.json to --log_dir, and one checkpoint per
epoch to <log_dir>_models/<timestamp>/epoch_<n>.pth (``extract_features.py --checkpoint PATH`` reads it).
"""
import argparse
import sys

from helpers.cli import add_common_arguments, run_cli


def build_parser():
    from finetuning.config import add_finetune_arguments

    parser = argparse.ArgumentParser(
        description="Fine-tune a model for near-duplicate retrieval (SimCLR, copy detection or triplet loss), on "
                    "one or several GPUs/CPU processes, resumable, with per-epoch validation recall@1.")
    add_finetune_arguments(parser)
    add_common_arguments(parser)
    return parser


def main(argv=None):
    """``finetune.py``: one ``error:`` line and exit code 2 on bad input (:func:`helpers.cli.run_cli`)."""
    return run_cli(build_parser(), run, argv)


def run(args):
    from finetuning.config import config_from_args
    from finetuning.trainer import run_finetuning

    summary = run_finetuning(config_from_args(args))
    if summary and summary.get("best_epoch") is not None:
        value = summary.get("best_value")
        shown = f", {summary.get('metric')} {value:.4f}" if isinstance(value, float) else ""
        print(f"best epoch: {summary['best_epoch']}{shown} -> {summary.get('best_checkpoint')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
