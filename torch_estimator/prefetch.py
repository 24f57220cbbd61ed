"""Input prefetching: the next batches are made on a background thread while the current step runs.

:class:`Prefetcher` wraps the batch iterator of a ``train``/``evaluate``/``predict`` call. A background
thread pulls up to ``depth`` batches ahead: ``input_fn``'s Python, numpy indexing, conversion and, on CUDA,
pinning and the copy to the device on a side stream (the step's stream waits for that copy's event, and the
allocator is told the step's stream uses the memory). Errors of the input reach the loop at the batch that
raised them. What the loop checkpoints as the input's position is the position after the batches it
*consumed*, snapshotted by the thread with each batch, so resuming is exact however far ahead it read.

With ``depth=None`` ("auto"), the prefetcher first runs inline for a few batches and measures the time spent
making batches against the time between them: it starts the thread only when making batches takes a
noticeable share (on CUDA it always does), so a cheap input (a list of tensors) pays nothing.

**Memory of the thread.** glibc's malloc serves a new thread from an arena of its own and gives the top of a
thread arena back to the kernel (``madvise(MADV_DONTNEED)``) whenever more than the trim threshold lies free
there. Its thresholds adapt to the largest block freed so far, and an input whose operations allocate and
free blocks of a few MB to tens of MB (a batch of images through a convolution: a 20 MB work buffer, then
40 MB free at the top) lands just above them: every operation then faults its memory in again, tens of
thousands of page faults per batch, which doubled the CPU time of such an input on the thread (while the
same input inline, in the main arena, stayed below the threshold). When it starts its first thread, the
prefetcher therefore fixes the thresholds at the ceiling glibc's own heuristic reaches (blocks under 32 MB
come from the heap, up to 64 MB may stay free at its top), unless the environment configures malloc
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` tunable),
or another allocator is in use.

Example:
    >>> batches = ((i, None, 1) for i in range(5))
    >>> with Prefetcher(batches, depth=2) as prefetched:
    ...     [features for features, _, _ in prefetched]
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["Prefetcher", "settle_malloc"]

logger = logging.getLogger(__name__)

_MEASURED = 6  # batches timed inline before "auto" decides (after one of warm-up)
_WORTH_IT = 0.15  # "auto" prefetches when making a batch takes at least this share of the time between two
_MIN_SECONDS = 50e-6  # ... and at least this long (handing a batch over between threads costs some µs)
_END = object()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its adaptive mmap threshold on 64-bit
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD  # the adaptive trim threshold is twice the mmap threshold
_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_malloc_settled = False


def _should_tune_malloc(environ: Mapping[str, str], libc: str) -> bool:
    """Whether to fix glibc's malloc thresholds: only under glibc, and only where the environment does not
    configure them itself.

    Example:
        >>> _should_tune_malloc({}, "glibc"), _should_tune_malloc({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc")
        (True, False)
        >>> _should_tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc")
        False
        >>> _should_tune_malloc({}, "musl")
        False
    """
    if libc != "glibc" or any(name in environ for name in _MALLOC_ENVIRONMENT):
        return False
    return "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")


def settle_malloc() -> None:
    """Fix glibc's malloc thresholds once per process (see the module docstring)."""
    global _malloc_settled
    if _malloc_settled:
        return
    _malloc_settled = True
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return
    if not _should_tune_malloc(os.environ, libc.split(" ")[0]):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # an allocator without mallopt
        return
    done = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    logger.debug("malloc thresholds for the prefetching thread: %s", "set" if done else "refused")


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _indexed(device: torch.device) -> torch.device:
    """``device`` with its index: ``cuda`` alone means the current device of the thread building the
    prefetcher, which the prefetching thread (starting on device 0) must be told by number."""
    return device if device.index is not None else torch.device(device.type, torch.cuda.current_device())


def _tensors(structure: Any) -> Iterator[torch.Tensor]:
    if isinstance(structure, torch.Tensor):
        yield structure
    elif isinstance(structure, Mapping):
        for value in structure.values():
            yield from _tensors(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from _tensors(value)


class Prefetcher:
    """Iterates ``batches`` ahead of the loop on a background thread (see the module docstring).

    Args:
        batches: An iterator of ``(features, labels, size)`` (or anything: items are passed through).
        depth: How many batches may wait ahead of the loop, > 0; None decides by measuring (see above).
        state: ``state() -> position`` of the input after the batch just made (e.g. ``source.state_dict``),
            snapshotted with each batch; :meth:`state_dict` returns the one of the last batch consumed.
        limit: Pull at most this many batches (the steps left, when known), so that no batch an input shares
            with later calls is read ahead in vain.
        device: On CUDA, the batches' copies run on a side stream that the consumer's stream waits for.

    Raises:
        ValueError: If ``depth`` or ``limit`` is not a positive int (or None).
    """

    def __init__(
        self,
        batches: Iterator[Any],
        depth: int | None = None,
        *,
        state: Callable[[], Any] | None = None,
        limit: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        for name, value in (("depth", depth), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"Prefetcher `{name}` must be an int > 0 or None; received {value!r}.")
        self._batches, self._state, self._limit = batches, state, limit
        if device is not None and device.type == "cuda":
            device = _indexed(device)
        self._cuda = device is not None and device.type == "cuda"
        self._device = device
        self._depth = depth if depth is not None else (2 if self._cuda else None)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._producer_waiting = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._consumed = state() if state is not None else None  # the position before any batch
        self._pulled = 0
        self.threaded = False  # whether batches are being made on the thread (after "auto" decided)

    # -- the consumer's side ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._depth is None:
            # "auto": the measured batches, then the rest. When it decides against a thread, the rest is the
            # batch iterator itself, which chain pulls from directly: no generator layer per batch.
            return itertools.chain.from_iterable(self._phases())
        return self._iterate()

    def _phases(self) -> Iterator[Iterator[Any]]:
        yield self._measure()
        yield self._batches if self._depth is None else self._iterate()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def state_dict(self) -> Any:
        """The input's position after the last batch the loop consumed (not the last one made)."""
        if self._state is not None and not self.threaded:
            return self._state()
        return self._consumed

    def _iterate(self) -> Iterator[Any]:
        """The batches the thread makes (started at the first one)."""
        self._start()
        items, cond, cuda = self._items, self._cond, self._cuda
        while True:
            try:
                item = items.popleft()
            except IndexError:
                with cond:
                    while not items:
                        if self._producer_waiting:
                            cond.notify_all()
                        cond.wait()
                    item = items.popleft()
            if self._producer_waiting:
                with cond:
                    cond.notify_all()
            if item is _END:
                return
            if item.__class__ is _Failure:
                raise item.error
            batch, self._consumed, event = item
            if cuda:
                self._wait_for_copy(batch, event)
            yield batch

    def _measure(self) -> Iterator[Any]:
        """Run inline for a few batches, timing the making of each against the time between two."""
        clock, making, between, last = time.perf_counter, 0.0, 0.0, None
        for i in range(_MEASURED + 1):
            start = clock()
            if last is not None and i > 1:
                between += start - last
            batch = next(self._batches, _END)
            if batch is _END:
                return
            self._pulled += 1
            made = clock()
            if i > 1:
                making += made - start
            last = made
            yield batch
        if making >= _WORTH_IT * between and making >= _MIN_SECONDS * (_MEASURED - 1):
            self._depth = 2

    def _wait_for_copy(self, batch: Any, event: Any) -> None:
        stream = torch.cuda.current_stream(self._device)
        stream.wait_event(event)
        for tensor in _tensors(batch):
            if tensor.is_cuda:
                tensor.record_stream(stream)  # the side stream allocated it; this stream uses it

    # -- the producer's side ------------------------------------------------------------------------

    def _start(self) -> None:
        self.threaded = True
        if self._state is not None:
            self._consumed = self._state()
        if self._limit is not None and self._pulled >= self._limit:
            self._items.append(_END)
            return
        settle_malloc()
        side_stream = torch.cuda.Stream(self._device) if self._cuda else None
        self._thread = threading.Thread(target=self._produce, args=(side_stream,), name="torch_estimator-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, side_stream: Any) -> None:
        items, cond, depth, state, limit = self._items, self._cond, self._depth, self._state, self._limit
        try:
            if side_stream is not None:
                torch.cuda.set_device(self._device)  # a new thread starts on the default device
            while True:
                with cond:  # room first, then the batch: at most `depth` batches wait made
                    while len(items) >= depth and not self._stopping:  # type: ignore[operator]
                        self._producer_waiting = True
                        cond.wait()
                    self._producer_waiting = False
                if self._stopping or (limit is not None and self._pulled >= limit):
                    break
                if side_stream is not None:
                    with torch.cuda.stream(side_stream):
                        batch = next(self._batches, _END)
                        event = torch.cuda.Event() if batch is not _END else None
                        if event is not None:
                            event.record(side_stream)
                else:
                    batch, event = next(self._batches, _END), None
                if batch is _END:
                    break
                self._pulled += 1
                item: Any = (batch, state() if state is not None else None, event)
                with cond:
                    items.append(item)
                    cond.notify_all()
            item = _END
        except BaseException as error:  # handed to the loop, raised at the batch that failed
            item = _Failure(error)
        with cond:
            items.append(item)
            cond.notify_all()

    def close(self) -> None:
        """Stop the thread (after the batch it is making, if any) and drop what it made ahead."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join()
        self._thread = None
        self._items.clear()
