"""Durable files: write to a temporary file, flush it to disk, move it into place; remove what a crash left.

Example:
    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> def write(tmp: str) -> None:
    ...     with open(tmp, "w") as handle:
    ...         _ = handle.write("hello")
    >>> atomic_write(os.path.join(directory, "greeting"), write, what="greeting")
    >>> os.listdir(directory)
    ['greeting']
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from typing import Any

__all__ = ["atomic_write", "discard", "fsync_dir", "remove"]

logger = logging.getLogger("torch_estimator")


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable (POSIX); a no-op where directories
    cannot be opened or synced."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory (EINVAL); the rename still happened
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _advice(error_number: int | None, path: str) -> str:
    """What to do about an error writing ``path``."""
    if error_number in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return "free disk space (or raise the quota)"
    if error_number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the directory writable (or remount it read-write)"
    if error_number == errno.EISDIR:
        return f"move the directory {path} away (it stands where a file belongs)"
    return "fix the cause above"


def discard(tmp: str) -> str:
    """Remove a temporary file or directory; '' when done (or nothing was there), else why not.

    A failure here (the file system went read-only) must not replace the error that made us clean up.
    """
    try:
        remove(tmp)
    except OSError as error:
        logger.error("Could not remove the temporary %s: %s.", tmp, error.strerror or error)
        return f" The temporary file {tmp} could not be removed ({error.strerror or error}); delete it."
    return ""


def atomic_write(path: str, write: Any, what: str = "checkpoint", staged: bool = False) -> None:
    """``write(tmp)``, flush it to disk, then move it over ``path``: readers see the old or the new file.

    ``staged`` writes into a private directory ``<path>.tmp<pid>/`` instead of a temporary file ``<path>.tmp<pid>``,
    for writers that make temporary files of their own beside their target; either is removed by the next
    writer if a crash leaves it behind.

    Raises:
        OSError: Of the original kind and errno, with a message naming ``path``, saying that the previous
            files are unchanged and what to do (the temporary file is removed; if even that fails, the
            message says so and the original error still wins).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    target = os.path.join(tmp, os.path.basename(path)) if staged else tmp
    try:
        remove(tmp)  # left by an earlier process with the same pid (containers reuse them)
        if staged:
            os.mkdir(tmp)
        write(target)
        if staged:
            os.chmod(target, stat.S_IMODE(os.stat(tmp).st_mode) & 0o666)  # the umask's choice, as open() makes
        _fsync_file(target)
        os.replace(target, path)
    except BaseException as error:
        leftover = discard(tmp)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            message = (
                f"Could not write the {what} {path}: {reason}. The previous checkpoints and the index are "
                f"unchanged; {_advice(error.errno, path)}, then train again (training resumes from the latest "
                f"checkpoint).{leftover}"
            )
            raise (type(error)(error.errno, message) if error.errno is not None else OSError(message)) from error
        raise
    if staged:
        discard(tmp)
    fsync_dir(os.path.dirname(path))


def remove(path: str) -> None:
    """Remove a file or a directory tree; nothing if it is not there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
