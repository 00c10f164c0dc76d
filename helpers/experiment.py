"""Experiment folders and their records.

An experiment writes into one folder (``Results/<name>/``, ``Clustering_results/...``, ``<log_dir>``...). The
folder holds:

- ``config.yml``: the full resolved configuration (every flag), re-runnable with ``--config config.yml``;
- ``experiment.yml``: the record: command line, config, start/end dates, status (``running`` or ``finished``),
  Python/torch/torchvision/faiss/numpy versions, device name, CPU count and git commit.

A finished experiment is never overwritten unless ``force=True`` (``--force``); an unfinished one (an
interrupted run) is resumed in place. One writer at a time: the folder's lock (:mod:`helpers.locking`) is held
from :func:`start_experiment` to :meth:`ExperimentRecord.finish` (or the end of the process), and a second run of the
same experiment stops at once with an error naming the process that holds it.
"""
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .paths import REPO_ROOT
from .results import to_jsonable

RECORD_NAME = "experiment.yml"
CONFIG_NAME = "config.yml"


class ExperimentExistsError(FileExistsError):
    """Raised when a finished experiment folder exists and ``--force`` was not given, or when another process is
    running the same experiment."""


def _now():
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit():
    """The repository's current commit (with ``-dirty`` when there are uncommitted changes), or ``None``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device=None):
    """Versions and hardware that a result depends on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    import numpy

    info["numpy"] = numpy.__version__
    for module in ("torch", "torchvision", "faiss", "sklearn", "PIL"):
        try:
            mod = __import__(module)
            info[module] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:
            info[module] = None
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_threads"] = torch.get_num_threads()
        if device is not None:
            from .device import device_description

            info["device"] = str(device)
            info["device_name"] = device_description(device)
        elif torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["git_commit"] = git_commit()
    return info


def _read_record(folder):
    path = Path(folder) / RECORD_NAME
    if not path.exists():
        return None
    with open(path, "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _plain(obj):
    """YAML-safe copy: NumPy values, paths and ``str`` subclasses (e.g. torch's version) to plain types."""
    obj = to_jsonable(obj)
    if isinstance(obj, dict):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    if isinstance(obj, str):
        return str(obj)
    return obj


def _write_yaml(path, data):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        yaml.safe_dump(_plain(data), handle, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def is_finished(folder):
    """True when ``folder`` holds the record of a finished experiment."""
    record = _read_record(folder)
    return bool(record) and record.get("status") == "finished"


class ExperimentRecord:
    """An experiment folder with its record (not to be confused with the seed's search facade
    :class:`fast_search.search.Experiment`). Use :func:`start_experiment` to create one."""

    def __init__(self, folder, config, device=None, argv=None):
        self.folder = Path(folder)
        self.config = dict(config)
        self.record = {
            "command_line": " ".join([Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv)),
            "status": "running",
            "started": _now(),
            "finished": None,
            "config": self.config,
            "environment": environment_info(device),
        }

    def path(self, *parts):
        """A path inside the experiment folder."""
        return self.folder.joinpath(*parts)

    def save_record(self):
        _write_yaml(self.folder / CONFIG_NAME, self.config)
        _write_yaml(self.folder / RECORD_NAME, self.record)

    def finish(self, **summary):
        """Mark the experiment finished (after its results are written), with optional summary values."""
        self.record["status"] = "finished"
        self.record["finished"] = _now()
        if summary:
            self.record["summary"] = summary
        self.save_record()
        if getattr(self, "lock", None) is not None:
            self.lock.release()


def start_experiment(folder, config, force=False, device=None, argv=None):
    """Create (or resume) an experiment folder and write its record.

    Parameters
    ----------
    folder : path
        The experiment folder, e.g. ``Results/<name>``.
    config : dict
        The resolved configuration (see :func:`helpers.cli.resolved_config`).
    force : bool
        Overwrite a finished experiment: its folder is emptied first.
    device : torch.device, optional
        Recorded with its name.

    Raises
    ------
    ExperimentExistsError
        If a finished experiment is in ``folder`` and ``force`` is False.
    """
    from .locking import FolderLock, LockBusyError

    folder = Path(folder)
    try:
        lock = FolderLock(folder).acquire(wait=False)
    except LockBusyError as exc:
        raise ExperimentExistsError(str(exc).replace(", or run without --no-wait to wait", "")) from None
    try:
        if folder.exists() and is_finished(folder):
            if not force:
                raise ExperimentExistsError(f"{folder} already holds a finished experiment; choose another name or "
                                            "pass --force to overwrite it")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        experiment = ExperimentRecord(folder, config, device=device, argv=argv)
        experiment.save_record()
    except BaseException:
        lock.release()
        raise
    experiment.lock = lock
    return experiment
