"""Every script is a thin argparse CLI: ``-h`` works and documents every flag, a wrong flag is an error."""
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ["extract_features.py", "find_duplicates.py", "build_index.py", "query.py", "search_experiment.py",
           "process.py", "explore_neighbors.py", "hierarchical.py", "DBSCAN.py", "kmeans.py", "finetune.py",
           "evaluate_finetuning.py", "demo.py", "train_adaptation.py", "nn_maker.py", "scan.py",
           "data_retrieval/generate_attacks.py", "data_retrieval/kaggle_splitter.py", "data_retrieval/build_memes.py",
           "data_retrieval/adapters.py", "SimCLRv1/download.py", "SimCLRv2/download.py"]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero_and_documents_flags(script):
    result = _run(script, "-h")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    flags = [token.strip("[],") for token in result.stdout.split() if token.startswith("--")]
    assert flags, "no flag documented"


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_is_a_short_error(script):
    result = _run(script, "--definitely-not-a-flag")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
