"""The bad-input audit (tests/audit/) as part of the test suite: one test per case of the corpus.

``python -m tests.audit`` runs the same cases outside pytest and prints ``N passed, N failed``; here pytest's own
tally is that line, and a summary line ``audit: N passed, N failed`` is printed at the end of the module.
"""
import pytest

from tests.audit import CASES, NotApplicable, cases  # noqa: F401 (registers the cases)

_TALLY = {"passed": 0, "failed": 0}


@pytest.fixture(scope="module", autouse=True)
def audit_summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and sum(_TALLY.values()):
        reporter.write_line(f"audit: {_TALLY['passed']} passed, {_TALLY['failed']} failed")


@pytest.mark.parametrize("audit_case", CASES, ids=[c.name for c in CASES])
def test_audit_case(audit_case, tmp_path):
    try:
        audit_case.run(tmp_path)
    except NotApplicable as exc:  # this machine cannot run it (e.g. no non-root user to read a file as)
        pytest.skip(str(exc))
    except BaseException:
        _TALLY["failed"] += 1
        raise
    _TALLY["passed"] += 1


def test_every_row_of_the_issue_and_every_script_is_covered():
    rows = {c.row for c in CASES if c.row is not None}
    assert rows == set(range(1, 21)) - {5}  # row 5 (same name in two folders) belongs to the ground-truth work
    scripts = {"extract_features.py", "search_experiment.py", "explore_neighbors.py", "process.py",
               "hierarchical.py", "DBSCAN.py", "kmeans.py", "finetune.py", "evaluate_finetuning.py",
               "data_retrieval/generate_attacks.py", "data_retrieval/build_memes.py",
               "data_retrieval/kaggle_splitter.py", "demo.py"}
    covered = {part.strip() for c in CASES for part in c.entry_point.split(",")}
    assert scripts <= covered, scripts - covered
