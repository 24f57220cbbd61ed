"""The ``checkpoint`` index of a ``model_dir``, and finding its latest (intact) checkpoint.

The index is JSON, written atomically (see :mod:`.files`). A missing or unreadable index is rebuilt from
the files present; a damaged latest checkpoint is skipped, naming it, for the newest intact one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
from typing import Any

from .files import atomic_write
from .format import CHECKPOINT_FILE_RE, Checkpoint, CheckpointCorruptError, open_regular, read_checkpoint, step_of

__all__ = [
    "INDEX_FORMAT",
    "INDEX_NAME",
    "CheckpointIndex",
    "check_model_dir",
    "checkpoint_files",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "make_writable_model_dir",
    "read_index",
    "read_latest_checkpoint",
    "write_index",
]

logger = logging.getLogger("torch_estimator")

INDEX_FORMAT = "torch_estimator.checkpoint_index/1"
INDEX_NAME = "checkpoint"


@dataclasses.dataclass(frozen=True)
class CheckpointIndex:
    """The ``checkpoint`` index: kept checkpoints (absolute paths), oldest first, with their save times.

    ``kept_forever`` lists the checkpoints ``keep_checkpoint_every_n_hours`` took out of rotation; None when
    unknown (no index, one rebuilt from the files, or one written by an older version).
    """

    paths: tuple[str, ...]
    timestamps: tuple[float, ...]
    kept_forever: tuple[str, ...] | None = None

    @property
    def latest(self) -> str | None:
        return self.paths[-1] if self.paths else None


def checkpoint_files(model_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint file in ``model_dir``, by step."""
    try:
        names = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((int(m.group(1)), os.path.join(model_dir, name)) for name in names for m in [CHECKPOINT_FILE_RE.match(name)] if m)


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return None


def _scan(model_dir: str) -> CheckpointIndex:
    found = [(p, t) for _, p in checkpoint_files(model_dir) for t in [_mtime(p)] if t is not None]
    return CheckpointIndex(tuple(p for p, _ in found), tuple(t for _, t in found))


def _index_names(data: Any, key: str) -> list[str]:
    names = data[key]
    if not isinstance(names, list) or not all(isinstance(n, str) and CHECKPOINT_FILE_RE.match(n) for n in names):
        # Only bare checkpoint file names: an index must not point readers, or rotation's deletes, elsewhere.
        raise ValueError(f"{key!r} must list checkpoint file names (model.ckpt-<step>.safetensors)")
    return names


_MAX_INDEX_BYTES = 4 << 20  # an index lists a few file names: 4 MiB is thousands of checkpoints


def _read_small(path: str, limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (never blocks on a FIFO, never reads a device).

    Raises:
        FileNotFoundError: If it does not exist.
        ValueError: If it is not a regular file, or is larger than ``limit``.
    """
    try:
        fd = open_regular(path)
    except CheckpointCorruptError as error:
        raise ValueError("it is " + ("a directory" if "is a directory" in str(error) else "not a regular file")) from None
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"it is larger than {limit} bytes")
    return b"".join(chunks)


def read_index(model_dir: str) -> CheckpointIndex:
    """Read ``model_dir/checkpoint``; rebuilt from the files present if it is missing or unreadable.

    Entries whose file is gone are dropped. Checkpoint files newer than the index's latest (a crash between
    writing a checkpoint and the index) are added: a file under its final name is always complete.
    """
    index_path = os.path.join(model_dir, INDEX_NAME)
    try:
        data = json.loads(_read_small(index_path, _MAX_INDEX_BYTES).decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = _index_names(data, "all_model_checkpoint_paths")
        stamps = [float(t) for t in data["all_model_checkpoint_timestamps"]]
        if len(names) != len(stamps):
            raise ValueError("paths and timestamps differ in length")
        forever = _index_names(data, "kept_forever_paths") if "kept_forever_paths" in data else None
    except FileNotFoundError:
        return _scan(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError too
        logger.warning("Checkpoint index %s is unreadable (%s); rebuilding it from the files present.", index_path, error)
        return _scan(model_dir)
    kept = [(os.path.join(model_dir, n), t) for n, t in zip(names, stamps)]
    kept = [(p, t) for p, t in kept if os.path.exists(p)]
    newest = max((s for p, _ in kept if (s := step_of(p)) is not None), default=-1)
    listed = {p for p, _ in kept}
    for step, path in checkpoint_files(model_dir):
        stamp = _mtime(path)
        if step > newest and path not in listed and stamp is not None:
            logger.info("Checkpoint %s is not in the index (a save was interrupted); adding it.", path)
            kept.append((path, stamp))
    if forever is not None:
        forever = [os.path.join(model_dir, n) for n in forever]
        forever = [p for p in forever if os.path.exists(p)]
    return CheckpointIndex(
        tuple(p for p, _ in kept), tuple(t for _, t in kept), None if forever is None else tuple(forever)
    )


def write_index(model_dir: str, index: CheckpointIndex) -> None:
    data = {
        "format": INDEX_FORMAT,
        "model_checkpoint_path": os.path.basename(index.latest) if index.latest else None,
        "all_model_checkpoint_paths": [os.path.basename(p) for p in index.paths],
        "all_model_checkpoint_timestamps": list(index.timestamps),
        "kept_forever_paths": [os.path.basename(p) for p in index.kept_forever or ()],
    }

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)

    atomic_write(os.path.join(model_dir, INDEX_NAME), write, what="checkpoint index")


def latest_checkpoint(model_dir: str | None) -> str | None:
    """The path of the newest checkpoint in ``model_dir``, or None (cheap: the file is not read).

    See :func:`restore_latest` and :func:`latest_intact_checkpoint` for one whose content is checked.
    """
    if not model_dir or not os.path.isdir(model_dir):
        return None
    return read_index(model_dir).latest


def _candidates(model_dir: str) -> list[str]:
    """Checkpoints to try, newest first: the index's, then any other file (kept forever, left over) by step."""
    listed = list(reversed(read_index(model_dir).paths))
    known = set(listed)
    return listed + [p for _, p in reversed(checkpoint_files(model_dir)) if p not in known]


def read_latest_checkpoint(model_dir: str | None, *, verify: bool = True) -> Checkpoint | None:
    """Read the newest intact checkpoint in ``model_dir``, or None if it holds no checkpoint.

    A damaged checkpoint is skipped with a warning that names it; one that disappears while it is being
    opened (a trainer rotating it away) is skipped too, and the list is read again if all are gone.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged (the message lists them).
    """
    if not model_dir or not os.path.isdir(model_dir):
        return None
    damaged: list[str] = []
    for _ in range(5):  # re-list while a concurrent trainer rotates away what was listed
        damaged, vanished = [], False
        for path in _candidates(model_dir):
            try:
                checkpoint = read_checkpoint(path, verify=verify)
            except FileNotFoundError:
                logger.info("Checkpoint %s disappeared while being read (rotated away); trying the next newest.", path)
                vanished = True
                continue
            except CheckpointCorruptError as error:
                logger.warning("%s Falling back to the next newest checkpoint.", error)
                damaged.append(path)
                continue
            if damaged:
                logger.warning("Using checkpoint %s: the newer %s are damaged.", path, [os.path.basename(p) for p in damaged])
            return checkpoint
        if not vanished:
            break
    if damaged:
        raise CheckpointCorruptError(
            damaged[0],
            f"Every checkpoint in {model_dir} is damaged: {[os.path.basename(p) for p in damaged]}. Move them "
            f"away to start afresh, or restore them from a backup.",
        )
    return None


def latest_intact_checkpoint(model_dir: str | None) -> str | None:
    """The path of the newest checkpoint in ``model_dir`` whose content hash checks out, or None.

    Reads each candidate completely; prefer :func:`restore_latest` when the content is needed anyway.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged.
    """
    checkpoint = read_latest_checkpoint(model_dir)
    return None if checkpoint is None else checkpoint.path


def check_model_dir(model_dir: str) -> str:
    """Check that ``model_dir`` is, or can become, a directory: not a file, not inside a file.

    Writability is checked only when writing (see :class:`CheckpointManager`): reading a read-only
    ``model_dir`` (evaluate, predict, export) is fine.

    Returns:
        ``model_dir``.

    Raises:
        ValueError: If ``model_dir`` or one of its parents exists and is not a directory.
    """
    path = os.path.abspath(model_dir)
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(
            f"`model_dir` {model_dir} is a symbolic link to {os.readlink(path)}, which does not exist; create the "
            f"target directory or give another model_dir."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`model_dir` {model_dir} exists and is not a directory; give a directory path.")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise ValueError(f"`model_dir` {model_dir} cannot be created: {parent} is a file, not a directory.")
    return model_dir


def make_writable_model_dir(model_dir: str) -> str:
    """Create ``model_dir`` if needed and check that files can be written there.

    Returns:
        ``model_dir``.

    Raises:
        ValueError: If ``model_dir`` or one of its parents is a file.
        PermissionError: If ``model_dir`` is not writable.
        OSError: If it cannot be created.
    """
    check_model_dir(model_dir)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise type(error)(error.errno, f"Could not create `model_dir` {model_dir}: {error.strerror}.") from error
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"`model_dir` {model_dir} is not writable; checkpoints cannot be saved there.")
    return model_dir
