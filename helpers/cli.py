"""Command-line conventions shared by every script.

Every experiment script builds an ``argparse`` parser, adds the common flags with :func:`add_common_arguments`,
and parses with :func:`parse_args`, which also reads ``--config FILE`` (YAML). Values from the file become the
defaults, so flags given on the command line still win. The resolved configuration (every flag's final value)
is written next to the results by :mod:`helpers.experiment`, and that file can be passed back as ``--config`` to
re-run the experiment.
"""
import argparse
import logging
import os
import sys

import yaml


def passive_openmp_wait():
    """Make OpenMP threads sleep, not spin, while they wait: call it in a search script before FAISS is loaded.

    FAISS's OpenMP threads spin while they wait by default; on a machine shared with other jobs (or with more
    threads than free cores) each small search can then wait for a whole scheduler time slice (measured: 0.2 s
    instead of 0.2 ms for a 100 x 2000 binary search on 2 busy cores), while sleeping waits cost microseconds on an
    idle machine. Only the scripts set it; an ``OMP_WAIT_POLICY`` set by the user wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def str2bool(value):
    """Parse ``True/False`` style flag values (the seed's ``--save True``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "y", "on"}:
        return True
    if text in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def positive_int(text):
    """argparse type of a positive integer (``--k 10``), with the flag's own error message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_common_arguments(parser, device=True, seed=True, force=True):
    """Add ``--config``, ``--log-level`` and, on request, ``--device``, ``--seed`` and ``--force``."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML file of flag values (keys are flag names, with - or _); flags given on the "
                             "command line override it. Each experiment writes its resolved config.yml, which "
                             "can be passed back here to re-run it.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: %(default)s)")
    if device:
        parser.add_argument("--device", default="auto",
                            help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    if force:
        parser.add_argument("--force", action="store_true",
                            help="overwrite a finished experiment of the same name (refused otherwise)")
    return parser


def max_pixels_type(text):
    """argparse type of ``--max-pixels``: a positive pixel count; 0 or ``none`` = no limit (``None``)."""
    from .image_io import check_max_pixels

    try:
        return check_max_pixels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_max_pixels_argument(parser):
    """Add ``--max-pixels N`` (also spelled ``--max_pixels``): the decompression-bomb limit of every image read.

    Every script that decodes images has it, so the loader's refusal message ("raise --max-pixels to accept
    it") always names a flag that exists. The value arrives as ``args.max_pixels`` (``None`` = no limit).
    """
    from .image_io import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", "--max_pixels", dest="max_pixels", type=max_pixels_type,
                        default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse (skip and list) images of more than N pixels, a decompression-bomb guard; "
                             "0 = no limit (default: %(default)s)")
    return parser


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be used (missing, unreadable, not YAML, unsafe tag, not a mapping)."""


class CliError(SystemExit):
    """Exit code 2 after one ``error: ...`` line on stderr; the line is kept in ``.message`` (for tests)."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message


def config_error(message):
    """End the program as argparse does for a bad flag: one line ``error: ...`` on stderr, exit code 2.

    The message is put on one line (runs of whitespace, newlines included, become one space).
    """
    line = "error: " + " ".join(str(message).split())
    print(line, file=sys.stderr)
    raise CliError(line)


def load_config_file(path):
    """Read a YAML config file into a flat ``{dest: value}`` dict.

    A file written by :mod:`helpers.experiment` (``config.yml``) is flat; an ``experiment.yml`` record holds
    the config under its ``config`` key, which is accepted too.

    Raises
    ------
    ConfigFileError
        The file is missing, a folder, unreadable, not UTF-8, not valid YAML (a tag ``yaml.safe_load`` refuses,
        such as ``!!python/object``, included) or not a mapping. :func:`parse_args` turns it into one
        ``error: ...`` line and exit code 2.
    """
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigFileError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigFileError(f"config file {path} is a folder; give the YAML file (e.g. its config.yml)") from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"config file {path} is not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigFileError(f"config file {path} is not valid (safe) YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping of flag names to values, not a "
                              f"{type(data).__name__}")
    if "config" in data and isinstance(data["config"], dict) and "command_line" in data:
        data = data["config"]
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _config_value(action, value):
    """A value of the config file checked and converted as the flag's own value would be.

    Raises ``argparse.ArgumentError`` with argparse's own message (``argument --repeats: invalid int value:
    '[1, 2]'``), so a wrong-typed value in the file reads like the same mistake on the command line.
    """
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false: the file says true or false
        try:
            return str2bool(value) if not isinstance(value, (list, dict)) else str2bool(str(value))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(action, str(exc)) from None
    several = action.nargs in ("+", "*", argparse.REMAINDER) or isinstance(action.nargs, int)
    if several:
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise argparse.ArgumentError(action, "expected at least one argument")
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise argparse.ArgumentError(action, f"expected {action.nargs} arguments, got {len(items)}")
    else:
        items = [value]
    converted = []
    for item in items:
        if action.type is None:
            if isinstance(item, (list, dict)):
                raise argparse.ArgumentError(action, f"expected one value, got {item!r}")
            converted.append(item)
        else:  # a YAML number or list: argparse would see its text
            converted.append(_typed(action, item if isinstance(item, str) else str(item)))
    return converted if several else converted[0]


def _typed(action, text):
    """``text`` converted by the flag's ``type`` as argparse converts a command-line value, with its messages."""
    try:
        return action.type(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentError(action, str(exc)) from None
    except (TypeError, ValueError):
        name = getattr(action.type, "__name__", repr(action.type))
        raise argparse.ArgumentError(action, f"invalid {name} value: {text!r}") from None


def _flags_of(parser):
    """``{dest: argparse.Action}`` of ``parser``'s flags and positionals.

    argparse has no public way to list a parser's arguments (``add_argument`` returns each Action, but the
    scripts build their parsers themselves); this read of ``parser._actions`` is the one private access. The
    Actions' attributes used here (``dest``, ``type``, ``choices``, ``nargs``, ``required``, ``default``,
    ``option_strings``) are argparse's documented ones.
    """
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def parse_args(parser, argv=None):
    """Parse ``argv`` with ``parser``, taking defaults from ``--config FILE`` when given.

    Unknown keys in the file, values outside a flag's choices and values the flag's type refuses are errors
    reported like argparse errors (one ``error: ...`` line, exit code 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = load_config_file(known.config)
        except ConfigFileError as exc:
            config_error(str(exc))
        values.pop("config", None)
        actions = _flags_of(parser)
        unknown = sorted(set(values) - set(actions))
        if unknown:
            parser.error(f"config file {known.config} has unknown keys: {', '.join(unknown)}")
        for dest, value in values.items():
            action = actions[dest]
            if action.choices is not None and value is not None:
                items = value if isinstance(value, list) else [value]
                bad = [item for item in items if item not in action.choices]
                if bad:
                    parser.error(f"config file {known.config}: {dest}={bad[0]!r} is not one of "
                                 f"{list(action.choices)}")
            try:
                value = _config_value(action, value)
            except argparse.ArgumentError as exc:
                parser.error(f"config file {known.config}: {exc}")
            # A value from the file satisfies a required flag or positional.
            action.required = False
            if not action.option_strings:
                action.nargs = "?" if action.nargs in (None, "?") else "*"
            action.default = value
    args = parser.parse_args(argv)
    return args


def resolved_config(args):
    """The final flag values as a plain dict (without ``--config`` itself), ready to be written as YAML."""
    config = {}
    for key, value in sorted(vars(args).items()):
        if key == "config":
            continue
        if isinstance(value, tuple):
            value = list(value)
        if hasattr(value, "__fspath__"):
            value = str(value)
        config[key] = value
    return config


def run_cli(parser, function, argv=None, errors=()):
    """The one way a script runs: parse ``argv``, set up logging, return ``function(args)``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser, with :func:`add_common_arguments` (``--config``, ``--log-level``).
    function : callable
        Called with the parsed ``argparse.Namespace``; its return value is returned.
    argv : list of str, optional
        The command line without the program name (default: ``sys.argv[1:]``).
    errors : tuple of exception types
        Expected failures of this script besides the toolkit's usual ones (``ValueError``,
        ``FileNotFoundError``, :class:`helpers.experiment.ExperimentExistsError`,
        :class:`helpers.feature_store.FeatureStoreError`), e.g. ``OSError`` for a script that writes files.

    Raises
    ------
    CliError
        (a ``SystemExit`` with code 2) after one ``error: ...`` line on stderr, for bad flags, a bad ``--config``
        file and the expected failures of ``function``: never a traceback. With ``--log-level DEBUG`` an
        expected failure is re-raised with its traceback instead.
    """
    from .experiment import ExperimentExistsError
    from .feature_store import FeatureStoreError
    from .log import setup_logging

    args = parse_args(parser, argv)
    level = getattr(args, "log_level", "INFO")
    setup_logging(level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    try:
        return function(args)
    except (ValueError, FileNotFoundError, ExperimentExistsError, FeatureStoreError, *errors) as exc:
        if level == "DEBUG":
            raise
        config_error(exc)


def keyword_flags(args):
    """The parsed flags as keyword arguments of the library function behind a script.

    Every flag but ``--config`` and ``--log-level`` (which :func:`run_cli` applies), plus ``config``: the resolved
    configuration (:func:`resolved_config`) the function records. The function must accept each of them, so a
    flag the function ignores is an error at once, never a silent no-op.
    """
    flags = {key: value for key, value in vars(args).items() if key not in ("config", "log_level")}
    flags["config"] = resolved_config(args)
    return flags
