"""Well-known folders of the repository, all relative to the repository root."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_ROOT / "Datasets"
FEATURES_DIR = REPO_ROOT / "Features"
RESULTS_DIR = REPO_ROOT / "Results"
NEIGHBORS_DIR = REPO_ROOT / "Neighbors"
CLUSTERING_DIR = REPO_ROOT / "Clustering_results"


def slugify(name):
    """Turn a display name into a file-system friendly, case-insensitive slug.

    ``'Dhash 64 bits'`` -> ``'dhash_64_bits'``, ``'SimCLR v2 ResNet50 2x'`` -> ``'simclr_v2_resnet50_2x'``.
    """
    out = []
    for ch in str(name).strip().lower():
        out.append(ch if ch.isalnum() or ch in ".-" else "_")
    slug = "".join(out)
    while "__" in slug:
        slug = slug.replace("__", "_")
    return slug.strip("_")
