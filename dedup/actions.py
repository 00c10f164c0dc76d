"""What to keep, and what to do with the rest: never a deletion, a dry run unless asked, an undo log.

The keep rule (:func:`keep_order`): in each group the image kept is the one with the **largest pixel count**,
then the **largest file**, then the **oldest** (modification time), then the first path in sorted order (so the
choice is deterministic). In ``--reference`` mode the reference image is always kept.

Actions (:func:`apply_actions`) on the files that are not kept:

- ``move``: each file is moved under ``DIR``, keeping its path relative to its collection root (a file that
  would overwrite one already there is left in place and reported);
- ``symlink``: a symbolic link to each file is made under ``DIR`` (for review; the collection is not touched);
- the list of those files is written by :func:`write_list`.

Every move or link is appended to an undo log (``undo.jsonl``, one JSON object per line, flushed after each
action, so an interrupted run can be undone too). :func:`undo` moves every file back and removes the links it
made (only links, and only when they still point where the log says); it never deletes a file.
"""
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers.log import get_logger

logger = get_logger(__name__)

ACTIONS = ("move", "symlink")
UNDO_LOG = "undo.jsonl"


@dataclass(frozen=True)
class FileInfo:
    path: str
    width: int
    height: int
    bytes: int
    mtime: float

    @property
    def pixels(self):
        return self.width * self.height


def file_info(path):
    """Size in pixels (from the header), in bytes, and modification time of an image file."""
    from PIL import Image

    stat = os.stat(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError):
        width = height = 0
    return FileInfo(str(path), int(width), int(height), int(stat.st_size), float(stat.st_mtime))


def keep_key(info):
    """Sort key of the keep rule: best first."""
    return (-info.pixels, -info.bytes, info.mtime, info.path)


def keep_order(infos):
    """Row numbers of ``infos`` sorted by the keep rule, best first."""
    return sorted(range(len(infos)), key=lambda row: keep_key(infos[row]))


def to_remove(groups):
    """The rows that are not kept: every member of a group after its first (the kept one)."""
    return [row for group in groups for row in group[1:]]


def relative_target(path, roots, folder):
    """``folder / <path relative to the first root that holds it>`` (a collection subfolder per root when there
    are several roots)."""
    path = Path(path).resolve()
    for number, root in enumerate(roots):
        root = Path(root).resolve()
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        prefix = Path(f"collection{number}") if len(roots) > 1 else Path()
        return Path(folder) / prefix / relative
    return Path(folder) / path.name


def write_list(paths, target):
    """Write the files to remove, one path per line."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        for path in paths:
            handle.write(f"{path}\n")
    return target


def plan_actions(paths, action, folder, roots):
    """``[(source, destination)]`` of each file for ``action`` ('move' or 'symlink') into ``folder``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return [(str(Path(path).resolve()), str(relative_target(path, roots, folder))) for path in paths]


def apply_actions(plan, action, log_path, dry_run=True):
    """Carry out ``plan`` (see :func:`plan_actions`); with ``dry_run`` only report what would happen.

    Returns
    -------
    done : list of (source, destination)
    refused : list of (source, destination, reason)
    """
    done, refused = [], []
    if dry_run:
        for source, target in plan:
            logger.debug("dry run: would %s %s -> %s", action, source, target)
        return list(plan), refused
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        for source, target in plan:
            target_path = Path(target)
            if target_path.exists() or target_path.is_symlink():
                refused.append((source, target, "destination exists"))
                continue
            if not Path(source).is_file():
                refused.append((source, target, "source is gone"))
                continue
            target_path.parent.mkdir(parents=True, exist_ok=True)
            if action == "move":
                shutil.move(source, target)
            else:
                os.symlink(source, target)
            log.write(json.dumps({"action": action, "source": source, "target": target}) + "\n")
            log.flush()
            done.append((source, target))
    return done, refused


def read_log(log_path):
    log_path = Path(log_path)
    if not log_path.is_file():
        raise FileNotFoundError(f"undo log not found: {log_path} (find_duplicates.py writes OUTPUT/{UNDO_LOG} "
                                "when it moves or links files)")
    entries = []
    with open(log_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    entries.append((entry["action"], entry["source"], entry["target"]))
                except (ValueError, KeyError):
                    raise ValueError(f"{log_path}:{number} is not an undo log entry") from None
    return entries


def undo(log_path):
    """Reverse every action of an undo log, last first; the log is renamed ``*.undone`` when all went back.

    Returns
    -------
    restored : int
    problems : list of str
        Entries that could not be reversed (left as they are, never deleted).
    """
    entries = read_log(log_path)
    restored, problems = 0, []
    for action, source, target in reversed(entries):
        source_path, target_path = Path(source), Path(target)
        if action == "move":
            if source_path.exists():
                problems.append(f"{source} exists again: {target} left where it is")
            elif not target_path.exists():
                problems.append(f"{target} is gone: cannot move it back to {source}")
            else:
                source_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(target, source)
                restored += 1
        elif action == "symlink":
            if target_path.is_symlink() and os.readlink(target) == source:
                target_path.unlink()  # a link this tool made, never a file
                restored += 1
            elif target_path.exists() or target_path.is_symlink():
                problems.append(f"{target} is no longer the link made to {source}: left where it is")
        else:
            problems.append(f"unknown action {action!r} in the log")
    if not problems:
        os.replace(log_path, f"{log_path}.undone")
    return restored, problems
