"""The bad-input audit: a corpus of bad and odd inputs run through every entry point of the toolkit.

``python -m tests.audit`` runs every case and prints ``N passed, N failed``; ``tests/test_audit.py`` runs the same
cases as part of the test suite (one test per case). The corpus is generated (:mod:`tests.audit.corpus`); the
cases (:mod:`tests.audit.cases`) call the scripts' ``main(argv)`` in this process, except where the behaviour
needs a process of its own (a ``kill -9``, a non-root user).

What every case checks is the toolkit's bad-input contract (README, "Bad input"):

- bad input ends with one ``error: ...`` line and exit code 2, never a traceback, and nothing marked finished;
- a file that cannot be used is skipped and listed with its reason in the run's ``skipped.txt``, never dropped
  silently and never kept half decoded;
- no payload ever runs (pickled ``.npy``, torch checkpoints, YAML tags, shell metacharacters in names).
"""
import contextlib
import io
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


class NotApplicable(Exception):
    """A case that this machine cannot run (e.g. no user to drop root privileges to); reported, not counted."""


@dataclass
class Result:
    """What an entry point did: exit code, standard output and standard error."""

    code: int
    out: str
    err: str

    def error_line(self):
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def call(main, argv):
    """Run ``main(argv)`` in this process as the script would run; returns its :class:`Result`.

    ``SystemExit`` becomes the exit code; any other exception propagates (a traceback is an audit failure).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returned = main([str(a) for a in argv])
            code = returned if isinstance(returned, int) and not isinstance(returned, bool) else 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # SystemExit("message") prints the message and exits with 1
                print(exc.code, file=sys.stderr)
                code = 1
    return Result(code, out.getvalue(), err.getvalue())


def expect_error(result, *patterns):
    """Bad input: exit code 2, no traceback, the last line of stderr an ``error:`` line containing ``patterns``."""
    line = result.error_line()
    assert result.code == 2, f"exit code {result.code}, expected 2; stderr: {result.err[-2000:]}"
    assert "Traceback" not in result.err, result.err[-3000:]
    assert "error: " in line, f"last stderr line is not an error line: {line!r}"
    for pattern in patterns:
        assert pattern in line, f"{pattern!r} not in {line!r}"
    return line


def expect_ok(result):
    assert result.code == 0, f"exit code {result.code}; stderr: {result.err[-3000:]}"
    return result


@dataclass
class Case:
    """One audit case: an input of the corpus through one entry point. ``row`` is the issue-12 row it pins (or
    ``None`` for a behaviour that passed the first audit)."""

    name: str
    entry_point: str
    row: object
    function: object

    def run(self, folder):
        self.function(Path(folder))


CASES = []


def case(name, entry_point, row=None):
    """Register an audit case (a function of a fresh, empty folder)."""
    def register(function):
        CASES.append(Case(name, entry_point, row, function))
        return function
    return register


def run_all(cases=None, stream=None):
    """Run ``cases`` (default: all), each in its own temporary folder; print a line per failure and the tally."""
    from helpers.log import setup_logging

    from . import cases as _  # noqa: F401 (registers the cases)

    setup_logging("WARNING")
    stream = stream or sys.stdout
    cases = CASES if cases is None else cases
    passed, failed, not_applicable = 0, [], []
    started = time.perf_counter()
    for item in cases:
        with tempfile.TemporaryDirectory(prefix="audit-") as folder:
            try:
                item.run(folder)
                passed += 1
            except NotApplicable as exc:
                not_applicable.append(item)
                print(f"not applicable here: {item.name}: {exc}", file=stream)
            except Exception:  # noqa: BLE001 (a failure of the case, whatever it is, is reported and counted)
                failed.append(item)
                print(f"FAILED {item.name} [{item.entry_point}]\n{traceback.format_exc(limit=3)}", file=stream)
    print(f"{passed} passed, {len(failed)} failed ({len(cases)} cases, {len(not_applicable)} not applicable here, "
          f"{time.perf_counter() - started:.0f} s)", file=stream)
    return passed, failed
