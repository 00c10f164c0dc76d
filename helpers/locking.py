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


#: locks this process holds: lock path -> [open handle, holders]. The lock is between processes; inside one
#: process (a resumed run after an exception whose traceback still references the first holder) it is shared.
_HELD = {}


class FolderLock:
    """The exclusive lock of a folder, held from :meth:`acquire` to :meth:`release` (or the process's end)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self._handle = None

    def acquire(self, wait=True, poll=0.5):
        """Take the lock; wait for another process holding it (``wait``) or raise :class:`LockBusyError` at
        once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self._handle, self._key = _HELD[key][0], key
            return self
        handle = open(self.path, "a+", encoding="utf-8")
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if not wait:
                    handle.close()
                    raise LockBusyError(f"{self.folder} is being written by {holder} (lock {self.path}); wait for "
                                        "it to finish, or run without --no-wait to wait") from None
                if not told:
                    logger.warning("%s is being written by %s; waiting for it to finish", self.folder, holder)
                    told = True
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle, self._key = handle, key
        _HELD[key] = [handle, 1]
        return self

    def release(self):
        """Give the lock back (closing the descriptor releases the flock) once its last holder in this process
        releases it."""
        if self._handle is None:
            return
        entry = _HELD.get(self._key)
        self._handle = None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _HELD[self._key]


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
    lock = FolderLock(folder).acquire(wait=wait, poll=poll)
    try:
        yield lock.path
    finally:
        lock.release()
