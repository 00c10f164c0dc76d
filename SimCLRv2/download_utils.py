"""Resumable HTTP downloads with progress bars, using only ``urllib`` (no extra dependency).

A file is written to ``<name>.part`` and renamed when complete, so an interrupted download never leaves a
truncated file under the final name; the next run resumes it with an HTTP ``Range`` request. Network failures
raise :class:`NetworkError` (the caller turns them into one clear "offline" message); a server that answers
but refuses the file raises :class:`RemoteFileError`.
"""
import os
import socket
from pathlib import Path
from urllib import request
from urllib.error import HTTPError, URLError

from tqdm import tqdm

CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60


class NetworkError(OSError):
    """The server could not be reached, or the connection broke (the ``.part`` file is kept for resuming)."""

    def __init__(self, url, reason):
        super().__init__(f"cannot download {url}: {reason}")
        self.url, self.reason = url, reason


class RemoteFileError(RuntimeError):
    """The server answered with an HTTP error (e.g. 404: no such model / category)."""


def _open(url, offset, timeout):
    headers = {"User-Agent": "simclr-downloader"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return request.urlopen(request.Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # the partial file is already as long as the remote one (or longer): start over
        raise RemoteFileError(f"{url}: HTTP {exc.code} {exc.reason} (check the model and category names)") from None
    except (URLError, socket.timeout, ConnectionError) as exc:
        raise NetworkError(url, getattr(exc, "reason", exc)) from None


def _chunks(response, url, chunk_size):
    while True:
        try:
            chunk = response.read(chunk_size)
        except (URLError, socket.timeout, ConnectionError) as exc:
            raise NetworkError(url, f"connection lost ({exc}); rerun to resume") from None
        if not chunk:
            return
        yield chunk


def download_file(url, destination, progress=True, timeout=TIMEOUT_S, chunk_size=CHUNK_SIZE):
    """Download ``url`` to ``destination`` unless it already exists, resuming a previous ``.part`` file.

    Returns
    -------
    Path
        ``destination``.
    """
    destination = Path(destination)
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset, timeout)
    if response is None:
        part.unlink()
        offset = 0
        response = _open(url, 0, timeout)
    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored the Range header and sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as handle, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=destination.name, disable=not progress) as bar:
            for chunk in _chunks(response, url, chunk_size):
                handle.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise NetworkError(url, f"incomplete download ({part.stat().st_size} of {total} bytes); rerun to resume")
    os.replace(part, destination)
    return destination


def download_files(base_url, names, folder, progress=True):
    """Download ``base_url + name`` for each name into ``folder`` (files already there are kept)."""
    return [download_file(base_url + name, Path(folder) / name, progress=progress) for name in names]
