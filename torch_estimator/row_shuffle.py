"""Blocks of parsed rows, and tf.data's seeded shuffle buffer run over whole blocks with array operations.

:class:`Rows` holds one block of examples column by column: fixed-size columns ``[n, ...]``, and padded
variable-length columns (a ``[n, width]`` array and the items per row). :func:`shuffle_rows` emits the rows in
the order of tf.data's shuffle (fill a buffer of ``size``, then for each new row emit a random buffered one and
put the new one in its place; at the end emit the rest in a random order) -- exactly the order of the
one-row-at-a-time loop, with the same draws from the generator -- but moves only row numbers one at a time
and the rows themselves a block at a time.

Example:
    >>> rows = Rows(5, {"i": np.arange(5)}, {})
    >>> [block.columns["i"].tolist() for block in shuffle_rows(iter([rows]), 3, np.random.default_rng(0))]
    [[1, 0], [3, 2, 4]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Rows", "shuffle_rows", "shuffle_order"]

_DRAWS = 4096  # uniform draws taken from the generator at a time (part of the order's definition)
_POP = 2048  # rows emitted at a time: fewer numpy calls per row, yet output arrays small enough to reuse memory


@dataclasses.dataclass
class Rows:
    """``n`` examples: name -> ``[n, ...]`` array, or for a padded column (its name in ``fills``) a pair of a
    ``[n, width]`` array padded with ``fills[name]`` and the items per row."""

    n: int
    columns: dict[str, Any]
    fills: Mapping[str, Any]

    def take(self, index: np.ndarray) -> Rows:
        """The rows at ``index`` (a copy)."""
        return Rows(len(index), {name: (_take(value[0], index), _take(value[1], index)) if name in self.fills
                                 else _take(value, index) for name, value in self.columns.items()}, self.fills)

    def slice(self, start: int, stop: int) -> Rows:
        """Rows ``start:stop`` (a view)."""
        return Rows(stop - start, {name: (value[0][start:stop], value[1][start:stop]) if name in self.fills
                                   else value[start:stop] for name, value in self.columns.items()}, self.fills)

    @staticmethod
    def scatter(n: int, parts: Sequence[tuple[np.ndarray, Rows]]) -> Rows:
        """``n`` rows, the rows of each part at its positions (which together cover ``0..n-1`` once)."""
        first = parts[0][1]
        columns: dict[str, Any] = {}
        for name, value in first.columns.items():
            if name in first.fills:
                width = max(part.columns[name][0].shape[1] for _, part in parts)
                array = np.empty((n, width), dtype=np.result_type(*(part.columns[name][0] for _, part in parts)))
                lengths = np.empty(n, dtype=value[1].dtype)
                for positions, part in parts:
                    array[positions] = _widen(part.columns[name][0], width, first.fills[name])
                    lengths[positions] = part.columns[name][1]
                columns[name] = (array, lengths)
            else:
                array = np.empty((n, *value.shape[1:]), dtype=np.result_type(*(part.columns[name] for _, part in parts)))
                for positions, part in parts:
                    array[positions] = part.columns[name]
                columns[name] = array
        return Rows(n, columns, first.fills)

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts`` one after another (a copy; padded columns widened to the widest)."""
        first = parts[0]
        columns: dict[str, Any] = {}
        for name in first.columns:
            if name in first.fills:
                width = max(part.columns[name][0].shape[1] for part in parts)
                arrays = [_widen(part.columns[name][0], width, first.fills[name]) for part in parts]
                columns[name] = (np.concatenate(arrays), np.concatenate([part.columns[name][1] for part in parts]))
            else:
                columns[name] = np.concatenate([part.columns[name] for part in parts])
        return Rows(sum(part.n for part in parts), columns, first.fills)


def _take(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]``: ``np.take`` gathers rows of a contiguous array several times faster than fancy indexing,
    but copies a strided one whole first (a view of records in a file buffer), which fancy indexing does not."""
    return np.take(array, index, axis=0) if array.flags.c_contiguous else array[index]


def _widen(array: np.ndarray, width: int, fill: Any) -> np.ndarray:
    if array.shape[1] == width:
        return array
    out = np.empty((len(array), width), dtype=array.dtype)
    out[:, : array.shape[1]] = array
    out[:, array.shape[1] :] = fill
    return out


def _root(array: Any) -> Any:
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


def _continued(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a`` and ``b`` as one view when ``b`` is the continuation of ``a`` in the same buffer, else None."""
    if (a.dtype != b.dtype or a.shape[1:] != b.shape[1:] or a.strides != b.strides or not a.strides or not len(a)
            or a.strides[0] <= 0 or _root(a) is not _root(b)):
        return None
    if b.__array_interface__["data"][0] != a.__array_interface__["data"][0] + len(a) * a.strides[0]:
        return None
    return np.lib.stride_tricks.as_strided(a, shape=(len(a) + len(b), *a.shape[1:]), strides=a.strides,
                                           writeable=False)


def _extend(last: Rows, rows: Rows) -> Rows | None:
    """``last`` followed by ``rows`` without copying, when every column of ``rows`` continues ``last``'s views."""
    columns: dict[str, Any] = {}
    for name, value in last.columns.items():
        if name in last.fills:
            return None
        merged = _continued(value, rows.columns[name])
        if merged is None:
            return None
        columns[name] = merged
    return Rows(last.n + rows.n, columns, last.fills)


class _Draws:
    """Uniform draws taken from ``rng`` ``_DRAWS`` at a time, only when one more is needed (as the reference loop)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng, self._pool, self._used = rng, rng.random(_DRAWS), 0

    def take(self, k: int) -> np.ndarray:
        parts = []
        while k:
            if self._used == len(self._pool):
                self._pool, self._used = self._rng.random(_DRAWS), 0
            got = min(k, len(self._pool) - self._used)
            parts.append(self._pool[self._used : self._used + got])
            self._used += got
            k -= got
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


def shuffle_order(incoming: np.ndarray, buffer: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """One stretch of the shuffle: for each incoming id, the id emitted (in place of ``buffer``'s slot
    ``floor(draw * len(buffer))``, which the incoming id then takes). Updates ``buffer``.

    Example:
        >>> buffer = np.array([0, 1])
        >>> shuffle_order(np.array([2, 3, 4]), buffer, np.array([0.1, 0.2, 0.9])).tolist(), buffer.tolist()
        ([0, 2, 1], [3, 4])
    """
    slots = (draws * len(buffer)).astype(np.int64)
    # A stable sort of small integers is a radix sort (several times faster than sorting int64).
    order = np.argsort(slots.astype(np.uint16) if len(buffer) <= 1 << 16 else slots, kind="stable")
    ordered = slots[order]
    same = ordered[1:] == ordered[:-1]
    previous = np.full(len(slots), -1, dtype=np.int64)  # the last earlier incoming id put in the same slot
    previous[order[1:]] = np.where(same, order[:-1], -1)
    emitted = np.where(previous >= 0, incoming[np.maximum(previous, 0)], buffer[slots])
    last = np.ones(len(slots), dtype=bool)
    last[:-1] = ~same
    buffer[ordered[last]] = incoming[order[last]]
    return emitted


class _Store:
    """The blocks whose rows are still buffered, by the id of their first row; a block goes when all its rows did."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: list[Rows | None] = []
        self._left: list[int] = []
        self.next_id = 0

    def add(self, rows: Rows) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + rows.n, dtype=np.int64)
        last = self._blocks[-1] if self._blocks else None
        if last is not None and (merged := _extend(last, rows)) is not None:
            self._blocks[-1] = merged  # the new rows continue the last block's views: one block, one gather
            self._left[-1] += rows.n
            self.next_id += rows.n
            return ids
        self._starts.append(self.next_id)
        self._blocks.append(rows)
        self._left.append(rows.n)
        self.next_id += rows.n
        return ids

    def pop(self, ids: np.ndarray) -> Rows:
        """The rows of ``ids``, in that order, forgetting them."""
        which = np.searchsorted(np.asarray(self._starts), ids, side="right") - 1
        first, last = int(which.min()), int(which.max())
        if first == last:
            return self._take(first, ids)
        order = np.argsort(which, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(which[order])) + 1)
        parts = [self._take(int(which[group[0]]), ids[group]) for group in groups]
        return Rows.scatter(len(ids), list(zip(groups, parts)))

    def _take(self, block: int, ids: np.ndarray) -> Rows:
        rows = self._blocks[block]
        assert rows is not None
        taken = rows.take(ids - self._starts[block])
        self._left[block] -= len(ids)
        if not self._left[block]:
            self._blocks[block] = None
        return taken


def shuffle_rows(blocks: Iterator[Rows], size: int, rng: np.random.Generator, pop: int | None = None
                 ) -> Iterator[Rows]:
    """The rows of ``blocks`` in the order of tf.data's shuffle buffer of ``size`` seeded by ``rng``.

    Rows stay in their blocks until emitted (a block is dropped once all its rows are), so memory holds the
    blocks with buffered rows rather than a copy of each row. ``pop``: rows emitted at a time (at most; the
    order does not depend on it), default 2048.
    """
    pop = pop or _POP
    store = _Store()
    buffer = np.empty(0, dtype=np.int64)
    draws: _Draws | None = None
    for block in blocks:
        if not block.n:
            continue
        ids = store.add(block)
        if draws is None:
            room = size - len(buffer)
            buffer, ids = np.concatenate([buffer, ids[:room]]), ids[room:]
            if len(buffer) < size:
                continue
            draws = _Draws(rng)
        for start in range(0, len(ids), pop):
            piece = ids[start : start + pop]
            yield store.pop(shuffle_order(piece, buffer, draws.take(len(piece))))
    if draws is None:
        draws = _Draws(rng)
    rest = buffer[rng.permutation(len(buffer))]
    for start in range(0, len(rest), pop):
        yield store.pop(rest[start : start + pop])
