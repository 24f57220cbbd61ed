"""Export directories made durable before they get their final name, and the ``temp-*`` directories of
exports that died removed by the next export.

An export is written into ``<base>/temp-<ts>/`` and renamed to ``<base>/<ts>/`` (TF's scheme). The export
claims the name by creating ``<base>/temp-<ts>.writer`` (exclusively, and holding an ``flock`` on it) before
it creates the directory, and removes that file only after the rename; the operating system releases the
lock when the process ends, however it ends. The lock file holds a line of JSON naming host, pid and start
time, for people. So at every instant of an export's life its ``temp-<ts>`` directory, if there is one, is
guarded by a locked ``temp-<ts>.writer``, and a ``.writer`` that someone else can lock belongs to a process
that is gone. Before claiming its own name, each export calls :func:`remove_dead_temp_dirs`, which removes:

* a ``temp-<ts>.writer`` it can lock (its exporter died: SIGKILL, OOM, power loss), with ``temp-<ts>/`` if
  that exists (a kill after the rename leaves the lock file alone);
* a ``temp-*`` directory without its ``.writer`` (one from an older torch_estimator, or a filesystem without
  ``flock``) once nothing in it changed for :data:`STALE_SECONDS`.

A live export's directory is never removed: its lock is held. Before the rename every file and directory
of the export is flushed to disk (``fsync``), and the base directory after it, as checkpoints are: after a
crash or power loss a version directory is complete or absent.

Example:
    >>> import os, tempfile
    >>> base = tempfile.mkdtemp()
    >>> writer = ExportWriter.claim(base, 1)
    >>> sorted(os.listdir(base))
    ['temp-1', 'temp-1.writer']
    >>> ExportWriter.claim(base, 1) is None  # taken
    True
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
           "WRITER_SUFFIX", "STALE_SECONDS"]

logger = logging.getLogger("torch_estimator")

TEMP_PREFIX = "temp-"
WRITER_SUFFIX = ".writer"
STALE_SECONDS = 3600.0  # a temp-* directory without a lock file, unchanged this long, is an abandoned export
_CHUNK = 1 << 20


def _lock(fd: int, *, wait: bool = False) -> bool:
    """Take an exclusive lock: True if taken, False if held elsewhere (without ``wait``) or no ``fcntl``.

    Raises:
        OSError: Where the filesystem does not support ``flock``.
    """
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a remover may have unlinked it meanwhile)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class ExportWriter:
    """One export's claim on ``<base>/temp-<ts>``: the locked ``temp-<ts>.writer`` and the directory itself.

    Made by :meth:`claim`; :meth:`publish` renames the directory to its final name, :meth:`abandon` removes
    it. Either releases the claim.
    """

    def __init__(self, base: str, stamp: int, fd: int) -> None:
        self.temp_dir = os.path.join(base, f"{TEMP_PREFIX}{stamp}")
        self.path = self.temp_dir + WRITER_SUFFIX
        self._fd: int | None = fd

    @classmethod
    def claim(cls, base: str, stamp: int) -> ExportWriter | None:
        """Create and lock ``<base>/temp-<stamp>.writer``, then create ``<base>/temp-<stamp>/``.

        Returns:
            The writer, or None if another export (live, or dead and not yet removed) has that name.

        Raises:
            OSError: If the base directory cannot be written.
        """
        path = os.path.join(base, f"{TEMP_PREFIX}{stamp}{WRITER_SUFFIX}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            return None
        writer = cls(base, stamp, fd)
        try:
            try:
                locked = _lock(fd, wait=True)  # waits only while a remover holds it, having found it unlocked
            except OSError as error:  # a filesystem without flock: the age rule protects the directory
                logger.debug("Export lock not available in %s (%s); relying on the age rule.", base, error)
                locked = False
            if locked and not _same_file(fd, path):  # removed as dead in the instant before the lock: not ours
                writer.close()
                return None
            try:
                os.mkdir(writer.temp_dir)
            except FileExistsError:  # an older exporter's directory, without a lock file
                writer.release()
                return None
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            try:
                os.write(fd, json.dumps(owner).encode("utf-8"))
            except OSError as error:  # a full disk: the record only names the owner; writing the export says why
                logger.debug("Could not record the owner of %s (%s).", path, error)
        except BaseException:
            writer.release()
            raise
        return writer

    def publish(self, export_dir: str) -> None:
        """Flush the directory tree, rename ``temp_dir`` to ``export_dir`` durably, then release the claim.

        Raises:
            OSError: If the rename fails (the caller then calls :meth:`abandon`).
        """
        for root, dirs, _ in os.walk(self.temp_dir, topdown=False):
            for name in dirs:
                fsync_dir(os.path.join(root, name))
        fsync_dir(self.temp_dir)
        os.rename(self.temp_dir, export_dir)
        fsync_dir(os.path.dirname(export_dir))
        self.release()

    def abandon(self) -> None:
        """Remove the temporary directory (whatever it holds), then release the claim (idempotent)."""
        if self._fd is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Remove the lock file and close it (idempotent); a kill before this leaves a lock file that the
        next export removes."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._fd, self.path):
                    os.unlink(self.path)
        self.close()

    def close(self) -> None:
        """Close the lock file, releasing the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def sync_and_record(directory: str) -> dict[str, dict[str, Any]]:
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
            if not os.path.isfile(path):
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
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
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
    """Remove the ``temp-*`` directories under ``base`` left by exports that died (see the module's rules),
    and their lock files.

    Returns:
        The directories removed. Failures to remove are logged, never raised: an export goes on.
    """
    removed: list[str] = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        if entry.name.endswith(WRITER_SUFFIX):
            if entry.is_file(follow_symlinks=False):
                removed += _remove_if_dead(entry.path)
        elif entry.is_dir(follow_symlinks=False) and not os.path.lexists(entry.path + WRITER_SUFFIX):
            age = (time.time() if now is None else now) - _newest_change(entry.path)
            if age >= STALE_SECONDS and _remove(entry.path, f"unchanged for {age / 3600:.1f} hours, no writer"):
                removed.append(entry.path)
    return removed


def _remove_if_dead(lock: str) -> list[str]:
    """Remove ``lock``'s directory and then ``lock`` itself if its exporter is gone."""
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return []
    try:
        if not _lock(fd) or not _same_file(fd, lock):  # live, or removed (and maybe claimed anew) meanwhile
            return []
        directory = lock[: -len(WRITER_SUFFIX)]
        removed = [directory] if os.path.isdir(directory) and _remove(directory, _describe(lock)) else []
        if os.path.lexists(directory):  # could not remove it: keep the lock file that explains it
            return removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        return removed
    except OSError:  # no flock here: the export may be live, leave it
        return []
    finally:
        os.close(fd)


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
