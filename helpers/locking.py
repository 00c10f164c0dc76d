"""One writer at a time: an exclusive lock per feature store and per experiment folder.

The lock is an OS file lock (``fcntl.flock``) on ``.<folder-name>.lock`` next to the folder, so it is released
by the kernel when its process dies (a kill -9 never leaves a stale lock) and it works between processes of one
machine. A second writer waits (with a log line naming the holder) or, with ``wait=False`` (``--no-wait``),
stops at once with :class:`LockBusyError`. Shared network file systems (NFS) may not honour ``flock``: run one
writer per store there.
"""
import contextlib
import fcntl
import os
import time
from pathlib import Path

from .log import get_logger

logger = get_logger(__name__)


class LockBusyError(RuntimeError):
    """Another process holds the lock and the caller asked not to wait."""


def lock_path(folder):
    """The lock file of ``folder``: ``.<name>.lock`` beside it."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock")


@contextlib.contextmanager
def exclusive(folder, wait=True, poll=0.5):
    """Hold the exclusive lock of ``folder`` for the ``with`` block.

    Parameters
    ----------
    folder : path
        The store or experiment folder (it need not exist yet; its parent is created).
    wait : bool
        Wait for another holder to finish (True) or raise :class:`LockBusyError` at once (False).
    poll : float
        Seconds between attempts while waiting.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if not wait:
                    raise LockBusyError(f"{folder} is being written by {holder} (lock {path}); wait for it to "
                                        "finish, or run without --no-wait to wait") from None
                if not told:
                    logger.warning("%s is being written by %s; waiting for it to finish", folder, holder)
                    told = True
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the descriptor releases the flock
