"""The bad-input audit (tests/audit/) as part of the test suite: one test per case of the corpus.

``python -m tests.audit`` runs the same cases outside pytest and prints ``N passed, N failed``; here pytest's own
tally (``pytest tests/test_audit.py``) is that line. A case this machine cannot run (e.g. reading a file as a
non-root user when 'nobody' cannot start this Python) is reported as skipped with its reason.
"""
import pytest

from tests.audit import CASES, NotApplicable, cases  # noqa: F401 (registers the cases)


@pytest.mark.parametrize("audit_case", CASES, ids=[c.name for c in CASES])
def test_audit_case(audit_case, tmp_path):
    try:
        audit_case.run(tmp_path)
    except NotApplicable as exc:  # this machine cannot run it (e.g. no non-root user to read a file as)
        pytest.skip(str(exc))


def test_every_row_of_the_issue_and_every_script_is_covered():
    rows = {c.row for c in CASES if c.row is not None}
    assert rows == set(range(1, 21)) - {5}  # row 5 (same name in two folders) belongs to the ground-truth work
    scripts = {"extract_features.py", "search_experiment.py", "explore_neighbors.py", "process.py",
               "hierarchical.py", "DBSCAN.py", "kmeans.py", "finetune.py", "evaluate_finetuning.py",
               "data_retrieval/generate_attacks.py", "data_retrieval/build_memes.py",
               "data_retrieval/kaggle_splitter.py", "demo.py"}
    covered = {part.strip() for c in CASES for part in c.entry_point.split(",")}
    assert scripts <= covered, scripts - covered
