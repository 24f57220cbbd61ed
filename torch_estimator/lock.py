"""One writer per ``model_dir``: an OS lock the training chief holds while it trains.

The lock is ``fcntl.flock`` on ``<model_dir>/train.lock``. The operating system releases it when the
process ends in any way (a crash or SIGKILL included), so a killed trainer never leaves a stale lock; the file
itself may stay behind and means nothing unless a live process holds its lock. The holder writes who it is
(host, pid, since when) into the file, and a second trainer is refused with an error that names it.
Readers (evaluate, predict, the evaluator, export) never take the lock.

Where ``fcntl`` does not exist (Windows), the lock is a no-op.

Example:
    >>> import tempfile
    >>> model_dir = tempfile.mkdtemp()
    >>> with ModelDirLock(model_dir):
    ...     try:
    ...         ModelDirLock(model_dir).acquire()
    ...     except ModelDirLockedError as error:
    ...         print("refused:", error.holder["pid"] == os.getpid())
    refused: True
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import stat
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "ModelDirLock", "ModelDirLockedError", "read_holder"]

LOCK_NAME = "train.lock"
_MAX_HOLDER_BYTES = 4096


class ModelDirLockedError(RuntimeError):
    """Another process is training into the same ``model_dir``. ``holder`` is what it wrote about itself
    (``host``, ``pid``, ``since``; empty when it had not written it yet)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def read_holder(path: str) -> dict[str, Any]:
    """What the lock file at ``path`` says about its holder; ``{}`` when it says nothing readable.

    Reads at most a few kilobytes, and only from a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = os.read(fd, _MAX_HOLDER_BYTES)
    finally:
        os.close(fd)
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} (training since {holder.get('since', '?')})"


class ModelDirLock:
    """The training lock of one ``model_dir``: ``acquire()``/``release()``, or a ``with`` block.

    Raises:
        ModelDirLockedError: From ``acquire``, if another process (or another Estimator in this process)
            holds it; the message names the holder and what to do.
        OSError: From ``acquire``, if the lock file cannot be created (read-only ``model_dir``).
    """

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> ModelDirLock:
        if self._fd is not None or fcntl is None:
            return self
        for _ in range(10):  # the file can be removed by a releasing holder between our open and our lock
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = read_holder(self.path)
                raise ModelDirLockedError(
                    f"`model_dir` {self.model_dir} is being trained by {_describe(holder)}: it holds the lock "
                    f"{self.path}. Two trainers in one model_dir would overwrite each other's checkpoints. Wait "
                    f"for it to finish, stop it, or train into another model_dir (evaluate, predict and export "
                    f"may read this one meanwhile).",
                    holder,
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file its holder had just removed: take the current one
        else:  # pragma: no cover - ten releases racing one acquire
            raise ModelDirLockedError(f"`model_dir` {self.model_dir}: could not take the lock {self.path}.", {})
        self._fd = fd
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
        except OSError:  # a full disk: the lock holds all the same; only its description is missing
            pass
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            raise type(error)(
                error.errno,
                f"Could not create the training lock {self.path}: {error.strerror}. Training needs a writable "
                f"`model_dir`; make it writable, or train into another directory.",
            ) from error
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"The training lock {self.path} is not a regular file; move it away.")
        return fd

    def release(self) -> None:
        """Remove the lock file and release the lock (removing first, while it is held, is what makes the
        inode check in :meth:`acquire` safe). Errors while removing are ignored: the lock is released anyway."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        os.close(fd)

    def __enter__(self) -> ModelDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
