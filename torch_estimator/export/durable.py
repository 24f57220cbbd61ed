"""Export directories made durable before they get their final name, and the ``temp-*`` directories of
exports that died removed by the next export.

An export is written into ``<base>/temp-<ts>/`` and renamed to ``<base>/<ts>/`` (TF's scheme). While it
writes, the exporter holds an exclusive ``flock`` on ``temp-<ts>/.writer`` (a small JSON file naming host,
pid and start time, for people); the operating system releases that lock when the process ends, however
it ends. ``.writer`` is created under a private name, locked, then renamed into place, so a ``.writer``
that can be locked by someone else belongs to a process that is gone. Before claiming its own directory,
each export calls :func:`remove_dead_temp_dirs`, which removes:

* a ``temp-*`` directory whose ``.writer`` it can lock (its exporter died: SIGKILL, OOM, power loss);
* a ``temp-*`` directory without ``.writer`` (an exporter killed between creating the directory and its
  lock, one from an older torch_estimator, or a filesystem without ``flock``) once nothing in it changed for
  :data:`STALE_SECONDS`.

A live export's directory is never removed: its lock is held. Before the rename every file and directory
of the export is flushed to disk (``fsync``), and the base directory after it, as checkpoints are: after a
crash or power loss a version directory is complete or absent.

Example:
    >>> import os, tempfile
    >>> base = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(base, "temp-1"))
    >>> writer = ExportWriter(os.path.join(base, "temp-1"))
    >>> remove_dead_temp_dirs(base)  # the writer is alive: its directory stays
    []
    >>> writer.publish(os.path.join(base, "1")); sorted(os.listdir(base)), os.listdir(os.path.join(base, "1"))
    (['1'], [])
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from typing import Any

from ..checkpoint import fsync_dir

try:
    import fcntl
except ImportError:  # not POSIX: only the age rule applies
    fcntl = None  # type: ignore[assignment]

__all__ = ["ExportWriter", "remove_dead_temp_dirs", "sync_and_record", "fsync_dir", "write_file", "TEMP_PREFIX",
           "WRITER_FILE", "STALE_SECONDS"]

logger = logging.getLogger("torch_estimator")

TEMP_PREFIX = "temp-"
WRITER_FILE = ".writer"
STALE_SECONDS = 3600.0  # a temp-* directory without a lock file, unchanged this long, is an abandoned export
_CHUNK = 1 << 20


def _lock(fd: int) -> bool:
    """Take an exclusive lock without waiting: True if taken, False if held elsewhere (or no ``fcntl``).

    Raises:
        OSError: Where the filesystem does not support ``flock``.
    """
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class ExportWriter:
    """Holds ``<temp_dir>/.writer`` locked while an export writes into ``temp_dir`` (which must exist).

    Args:
        temp_dir: The export's temporary directory, just created by this process.
    """

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.path = os.path.join(temp_dir, WRITER_FILE)
        self._fd: int | None = None
        if fcntl is None:
            return
        staging = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if not _lock(fd):  # nobody else knows this name: only a filesystem without flock gets here
                raise OSError("flock refused")
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            os.write(fd, json.dumps(owner).encode("utf-8"))
            os.rename(staging, self.path)  # visible only once locked
        except OSError as error:  # a filesystem without flock: the age rule protects the directory
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(staging)
            logger.debug("Export lock not available in %s (%s); relying on the age rule.", temp_dir, error)
            return
        self._fd = fd

    def publish(self, export_dir: str) -> None:
        """Flush the directory tree, drop the lock file and rename ``temp_dir`` to ``export_dir`` durably.

        Raises:
            OSError: If the rename fails (the caller removes the temporary directory).
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for root, dirs, _ in os.walk(self.temp_dir, topdown=False):
            for name in dirs:
                fsync_dir(os.path.join(root, name))
        fsync_dir(self.temp_dir)
        os.rename(self.temp_dir, export_dir)
        fsync_dir(os.path.dirname(export_dir))
        self.close()

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def sync_and_record(directory: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``fsync`` every regular file under ``directory`` and return its record for ``signature.json``:
    relative path (``/``-separated) -> ``{"bytes": size, "sha256": hex digest}``, in path order.

    Example:
        >>> import os, tempfile
        >>> directory = tempfile.mkdtemp()
        >>> with open(os.path.join(directory, "a.txt"), "wb") as file:
        ...     _ = file.write(b"abc")
        >>> sync_and_record(directory)["a.txt"]["bytes"]
        3
    """
    records = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if relative in skip or not os.path.isfile(path):
                continue
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as file:
                while chunk := file.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                os.fsync(file.fileno())
            records[relative] = {"bytes": size, "sha256": digest.hexdigest()}
    return dict(sorted(records.items()))


def _describe(path: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as file:
            owner = json.loads(file.read(4096))
        return f"pid {owner['pid']} on {owner['host']}, started {time.ctime(owner['started'])}"
    return "an export that died"


def _newest_change(directory: str) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files, "."]:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def remove_dead_temp_dirs(base: str, *, now: float | None = None) -> list[str]:
    """Remove the ``temp-*`` directories under ``base`` left by exports that died (see the module's rules).

    Returns:
        The directories removed. Failures to remove are logged, never raised: an export goes on.
    """
    removed: list[str] = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        lock = os.path.join(entry.path, WRITER_FILE)
        try:
            fd = os.open(lock, os.O_RDWR | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:  # no lock file: abandoned once old enough
            age = (time.time() if now is None else now) - _newest_change(entry.path)
            if age >= STALE_SECONDS and _remove(entry.path, f"unchanged for {age / 3600:.1f} hours, no writer"):
                removed.append(entry.path)
            continue
        except OSError:
            continue
        try:
            if _lock(fd) and _remove(entry.path, _describe(lock)):
                removed.append(entry.path)
        except OSError:  # no flock here: the directory may be live, leave it
            pass
        finally:
            os.close(fd)
    return removed


def _remove(path: str, why: str) -> bool:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return False  # another export removed it first
    except OSError as error:
        logger.warning("Could not remove %s, left by %s: %s.", path, why, error)
        return False
    logger.warning("Removed %s, the temporary directory of %s (it never completed).", path, why)
    return True


def write_file(path: str, data: bytes | memoryview) -> None:
    """Write an artifact serialized in memory with plain ``os.write``: torch's own file writers abort the
    process on a full disk (an exception thrown in a destructor), this raises.

    Raises:
        OSError: With the errno, naming ``path`` and saying what to do.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_CHUNK]):]
        finally:
            os.close(fd)
    except OSError as error:
        advice = "free disk space" if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else "make the export directory writable"
        message = (f"Could not write the export file {path}: {error.strerror or error}. No new export version "
                   f"appeared (its temporary directory is removed); {advice}, then export again.")
        raise type(error)(error.errno, message) if error.errno is not None else OSError(message) from error
