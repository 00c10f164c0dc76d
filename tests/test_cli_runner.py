"""helpers.cli.run_cli, the one runner of every script: parse (with --config), call, one error line and exit 2."""
import argparse

import pytest

from helpers.cli import CliError, add_common_arguments, keyword_flags, run_cli
from helpers.experiment import ExperimentExistsError
from helpers.feature_store import FeatureStoreError


def _parser():
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("name")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--metric", choices=["L2", "cosine"], default="L2")
    return add_common_arguments(parser)


def test_returns_what_the_function_returns_and_gives_it_the_parsed_flags():
    seen = []
    assert run_cli(_parser(), lambda args: seen.append(args) or "done", ["exp", "--k", "3"]) == "done"
    assert seen[0].name == "exp" and seen[0].k == 3 and seen[0].metric == "L2" and seen[0].seed == 0


@pytest.mark.parametrize("error", [ValueError("bad --k:\n  must be positive"), FileNotFoundError("no file x.npy"),
                                   ExperimentExistsError("exp is finished; pass --force"),
                                   FeatureStoreError("run extract_features.py first")])
def test_expected_errors_end_as_one_line_and_exit_code_2(capsys, error):
    def fail(args):
        raise error

    with pytest.raises(SystemExit) as info:
        run_cli(_parser(), fail, ["exp"])
    assert info.value.code == 2 and isinstance(info.value, CliError)
    err = capsys.readouterr().err
    expected = "error: " + " ".join(str(error).split())
    assert err == expected + "\n" and info.value.message == expected


def test_extra_errors_of_a_script_and_unexpected_ones():
    def fail(args):
        raise MemoryError("too many pairs; choose a smaller eps")

    with pytest.raises(CliError) as info:
        run_cli(_parser(), fail, ["exp"], errors=(MemoryError,))
    assert info.value.message == "error: too many pairs; choose a smaller eps"
    with pytest.raises(MemoryError):  # not an expected failure of this script: a bug keeps its traceback
        run_cli(_parser(), fail, ["exp"])


def test_debug_log_level_keeps_the_traceback():
    def fail(args):
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        run_cli(_parser(), fail, ["exp", "--log-level", "DEBUG"])


def test_bad_flag_is_argparses_error_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(_parser(), lambda args: pytest.fail("must not run"), ["exp", "--k", "x"])
    assert info.value.code == 2 and "toy: error: argument --k: invalid int value: 'x'" in capsys.readouterr().err


def test_command_line_flags_win_over_the_config_file(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("name: from_file\nk: 7\nmetric: cosine\n")
    args = run_cli(_parser(), lambda a: a, ["--config", str(config), "--k", "2"])
    assert (args.name, args.k, args.metric) == ("from_file", 2, "cosine")  # k from the command line, rest from file
    args = run_cli(_parser(), lambda a: a, ["--config", str(config), "other"])
    assert (args.name, args.k) == ("other", 7)


def test_unknown_key_in_the_config_file_is_one_error_line(tmp_path, capsys):
    config = tmp_path / "c.yml"
    config.write_text("name: exp\nkk: 7\n")
    with pytest.raises(SystemExit) as info:
        run_cli(_parser(), lambda args: pytest.fail("must not run"), ["--config", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"toy: error: config file {config} has unknown keys: kk"


def test_keyword_flags_pass_every_flag_but_config_and_log_level():
    args = _parser().parse_args(["exp", "--k", "4"])
    flags = keyword_flags(args)
    assert set(flags) == {"name", "k", "metric", "device", "seed", "force", "config"}
    assert flags["k"] == 4 and flags["config"]["k"] == 4 and "config" not in flags["config"]
