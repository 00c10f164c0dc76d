"""Experiment folders (overwrite refusal, resume, records), config files and the JSON writer."""
import argparse
import math

import numpy as np
import pytest
import yaml

from helpers.cli import add_common_arguments, parse_args, resolved_config, str2bool
from helpers.experiment import ExperimentExistsError, is_finished, start_experiment
from helpers.results import read_json, write_json


def _parser():
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("name")
    parser.add_argument("--algo", nargs="+", required=True)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--metric", choices=["L2", "cosine"], default="L2")
    parser.add_argument("--save", type=str2bool, default=True)
    return add_common_arguments(parser)


def test_refuses_to_overwrite_finished_experiment(tmp_path):
    folder = tmp_path / "Results" / "exp"
    experiment = start_experiment(folder, {"a": 1})
    (folder / "results.json").write_text("{}")
    experiment.finish(recall=0.5)
    assert is_finished(folder)
    with pytest.raises(ExperimentExistsError, match="--force"):
        start_experiment(folder, {"a": 2})
    assert (folder / "results.json").exists()
    start_experiment(folder, {"a": 2}, force=True)
    assert not (folder / "results.json").exists()
    assert yaml.safe_load((folder / "config.yml").read_text()) == {"a": 2}


def test_unfinished_experiment_is_resumed_in_place(tmp_path):
    folder = tmp_path / "exp"
    start_experiment(folder, {"a": 1})
    (folder / "partial.npy").write_bytes(b"x")
    start_experiment(folder, {"a": 1})  # no error: an interrupted run resumes
    assert (folder / "partial.npy").exists()


def test_record_contents(tmp_path):
    experiment = start_experiment(tmp_path / "exp", {"metric": "L2"}, argv=["exp", "--metric", "L2"])
    experiment.finish()
    record = yaml.safe_load((tmp_path / "exp" / "experiment.yml").read_text())
    assert record["status"] == "finished" and record["config"] == {"metric": "L2"}
    assert record["command_line"].endswith("exp --metric L2")
    env = record["environment"]
    for key in ("python", "numpy", "torch", "torchvision", "faiss", "cpu_count", "git_commit"):
        assert key in env
    assert env["cpu_count"] >= 1 and env["numpy"] == np.__version__


def test_config_file_gives_defaults_and_command_line_wins(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("name: from_file\nalgo: [Dhash 64 bits]\nks: [1, 10]\nmetric: cosine\nsave: false\n")
    args = parse_args(_parser(), ["--config", str(config), "--metric", "L2"])
    assert args.name == "from_file" and args.algo == ["Dhash 64 bits"] and args.ks == [1, 10]
    assert args.metric == "L2" and args.save is False


def test_resolved_config_round_trips(tmp_path):
    args = parse_args(_parser(), ["exp1", "--algo", "A", "B", "--ks", "3"])
    config = resolved_config(args)
    assert "config" not in config and config["algo"] == ["A", "B"]
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    again = parse_args(_parser(), ["--config", str(path)])
    assert resolved_config(again) == config


@pytest.mark.parametrize("content,message", [("bogus_key: 1\n", "unknown keys: bogus_key"),
                                             ("metric: manhattan\n", "not one of")])
def test_bad_config_values_are_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yml"
    path.write_text("name: x\nalgo: [a]\n" + content)
    with pytest.raises(SystemExit) as info:
        parse_args(_parser(), ["--config", str(path)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _config_problems(tmp_path):
    folder = tmp_path / "folder.yml"
    folder.mkdir()
    files = {"missing": (tmp_path / "none.yml", "config file not found"),
             "folder": (folder, "is a folder"),
             "list": (tmp_path / "list.yml", "must hold a mapping"),
             "scalar": (tmp_path / "scalar.yml", "must hold a mapping"),
             "unsafe tag": (tmp_path / "unsafe.yml", "not valid (safe) YAML"),
             "broken yaml": (tmp_path / "broken.yml", "not valid (safe) YAML"),
             "binary": (tmp_path / "binary.yml", "not a UTF-8 text file")}
    files["list"][0].write_text("- name\n- x\n")
    files["scalar"][0].write_text("just words\n")
    files["unsafe tag"][0].write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    files["broken yaml"][0].write_text("name: [unclosed\n")
    files["binary"][0].write_bytes(b"\xff\xfe\x00name")
    return files


@pytest.mark.parametrize("problem", ["missing", "folder", "list", "scalar", "unsafe tag", "broken yaml", "binary"])
def test_config_file_problems_are_one_line_exit_2(tmp_path, capsys, monkeypatch, problem):
    monkeypatch.chdir(tmp_path)
    path, message = _config_problems(tmp_path)[problem]
    with pytest.raises(SystemExit) as info:
        parse_args(_parser(), ["--config", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content,flag", [("ks: [1, [2]]\n", ["--ks", "1", "[2]"]), ("ks: [one]\n", ["--ks", "one"]),
                                          ("save: [1, 2]\n", ["--save", "[1, 2]"]), ("name: [a, b]\n", None)])
def test_wrong_typed_config_value_gives_the_flags_error(tmp_path, capsys, content, flag):
    path = tmp_path / "c.yml"
    path.write_text("algo: [a]\n" + content)
    with pytest.raises(SystemExit) as info:
        parse_args(_parser(), ["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's usage, then the one error line
    assert info.value.code == 2 and err.startswith(f"toy: error: config file {path}: argument ")
    if flag is not None:  # the same message as the same mistake on the command line
        with pytest.raises(SystemExit):
            parse_args(_parser(), ["x", "--algo", "a"] + flag)
        flag_err = capsys.readouterr().err.strip().splitlines()[-1]
        assert flag_err.split("error: ", 1)[1] in err


def test_config_values_are_converted_like_flags(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("name: x\nalgo: [a]\nks: ['1', 5]\nsave: 'yes'\n")
    args = parse_args(_parser(), ["--config", str(path)])
    assert args.ks == [1, 5] and args.save is True


def test_str2bool():
    assert str2bool("True") is True and str2bool("false") is False
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_write_json_converts_numpy_and_nan(tmp_path):
    path = write_json(tmp_path / "r" / "results.json",
                      {"recall": np.float32(0.5), "ids": np.arange(3), "bad": math.nan, "k": np.int64(4)})
    assert read_json(path) == {"recall": 0.5, "ids": [0, 1, 2], "bad": None, "k": 4}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
