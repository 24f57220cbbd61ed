"""Parsed examples of TFRecord files kept in memory after their first read (``tfrecord_input_fn(cache=True)``).

A file enters the cache when it has been read to its end (a pass stopped half-way caches nothing of that file),
keyed by its path, inode, size and modification time: a file replaced or changed on disk is read again. Once
every file a pass needs is cached, :meth:`ExampleCache.joined` gives them as one set of columns, so that the
pass can move row numbers through sharding and shuffling and gather the rows themselves once, as
``numpy_input_fn`` gathers from its arrays. The arrays are read-only: batches are always copies.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.tfrecord")
    >>> open(path, "wb").close()
    >>> cache = ExampleCache()
    >>> key = cache.key(path)
    >>> _ = cache.put(path, key, [Rows(2, {"x": np.array([1, 2])}, {})], {})
    >>> joined, spans = cache.joined([path])
    >>> joined.columns["x"].tolist(), spans[path]
    ([1, 2], (0, 2))
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .row_shuffle import Rows

__all__ = ["ExampleCache"]

_Key = tuple[int, int, int, int]


def _read_only(rows: Rows) -> Rows:
    for value in rows.columns.values():
        for array in value if isinstance(value, tuple) else (value,):
            array.flags.writeable = False
    return rows


class ExampleCache:
    """Files' parsed rows by path; shared by the inputs one ``input_fn`` makes (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[_Key, Rows]] = {}
        self._joined: Rows | None = None
        self._spans: dict[str, tuple[int, int]] = {}  # path -> its first row in _joined, and its rows

    @staticmethod
    def key(path: str) -> _Key:
        """What identifies a file's content here: device, inode, size and modification time."""
        status = os.stat(path)
        return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns

    def get(self, path: str) -> Rows | None:
        """The rows of ``path`` when it is cached and unchanged on disk, else None."""
        with self._lock:
            entry = self._files.get(path)
        if entry is None:
            return None
        try:
            if entry[0] == self.key(path):
                return entry[1]
        except OSError:
            pass
        self._forget(path)
        return None

    def put(self, path: str, key: _Key, parts: Sequence[Rows], fills: Mapping[str, Any]) -> Rows:
        """Cache the rows of ``path`` (read whole while it had ``key``) as one compact, read-only copy."""
        parts = [part for part in parts if part.n]
        rows = _read_only(Rows.concat(parts)) if parts else Rows(0, {}, fills)
        with self._lock:
            self._files[path] = (key, rows)
            if path in self._spans:
                self._joined, self._spans = None, {}
        return rows

    def joined(self, paths: Sequence[str]) -> tuple[Rows, dict[str, tuple[int, int]]] | None:
        """Every cached file (``paths`` among them) as one set of columns, and each file's first row and rows.

        None when a file of ``paths`` is not cached (or changed on disk), or when the cached files' columns
        cannot be joined (no rows).
        """
        if any(self.get(path) is None for path in paths):
            return None
        with self._lock:
            if self._joined is not None and all(path in self._spans for path in paths):
                return self._joined, self._spans
            entries = sorted((path, entry) for path, entry in self._files.items() if entry[1].n)
            if not entries:
                return None
            joined = entries[0][1][1] if len(entries) == 1 else _read_only(Rows.concat([rows for _, (_, rows) in entries]))
            spans: dict[str, tuple[int, int]] = {}
            start = 0
            for path, (key, rows) in entries:
                spans[path] = (start, rows.n)
                self._files[path] = (key, joined.slice(start, start + rows.n))  # views: the data is held once
                start += rows.n
            for path in paths:
                spans.setdefault(path, (start, 0))  # a file without records
            self._joined, self._spans = joined, spans
            return joined, spans

    def _forget(self, path: str) -> None:
        with self._lock:
            self._files.pop(path, None)
            if path in self._spans:
                self._joined, self._spans = None, {}
