"""Server-side batching: requests for the same model and signature that are waiting at the same time run as
one batch.

A request enters the batcher only once its body has fully arrived and its inputs have been checked, so a
slow or half-open connection never holds a batch back. There is no batching delay: when a batch slot is
free (``max_batches`` batches may run at once), the waiting requests of the oldest queue run at once, so a
lone request runs as soon as it arrives. Batches form only under load, from the requests that arrived while
the slots were busy: the busier the server, the larger the batches, up to ``max_batch_size`` rows.

A queue is keyed by (model, signature, per-input dtype and non-batch shape). A batch concatenates its
requests' inputs along dimension 0, runs the model once in a worker thread (off the event loop) and hands
each request its rows of every output. Only requests that can be split back are batched (:func:`batchable`:
every declared input and output has a free batch dimension, ``-1`` first, and every input of the request has
the same number of rows, fewer than ``max_batch_size``); others run on their own. If a batch fails (one
request's values may break the model) or its outputs do not keep the batch dimension, each request in it runs
again alone, so an error belongs to the request that caused it.

**Results and batch companions.** A request's rows go through the same model code whatever else is in its
batch, and no row reads another's values, so its results are the same as when it runs alone except for float
rounding: matrix kernels pick their blocking and summation order by batch size, so the last bits of a float32
result may differ (observed: a few units in the last place, relative differences around 1e-7). A model whose
rows do interact (batch normalization in training mode, anything that reduces over the batch) must not be
served with batching; its outputs' batch dimension alone cannot reveal that.

Example:
    >>> import asyncio, torch
    >>> async def demo():
    ...     batcher = Batcher(max_batch_size=8)
    ...     double = lambda inputs: {"y": inputs["x"] * 2}
    ...     answers = await asyncio.gather(*[batcher.run("m", double, {"x": torch.tensor([[float(i)]])})
    ...                                      for i in range(3)])
    ...     batcher.close()
    ...     return [a["y"].item() for a in answers]
    >>> asyncio.run(demo())
    [0.0, 2.0, 4.0]
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

import torch

__all__ = ["Batcher", "batchable", "BatcherClosedError"]

logger = logging.getLogger("torch_estimator.serving")

RunFn = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]
T = TypeVar("T")
Execute = Callable[[Callable[[], Any]], Awaitable[Any]]


class BatcherClosedError(RuntimeError):
    """The batcher was closed before the request ran (the server is stopping)."""


def batchable(signature: Mapping[str, Any], inputs: Mapping[str, torch.Tensor], max_batch_size: int) -> bool:
    """Whether a request with these (checked) inputs may share a batch with others."""
    declared = list(signature["inputs"].values()) + list(signature["outputs"].values())
    if not declared or any(not info["shape"] or info["shape"][0] != -1 for info in declared):
        return False
    rows = {tensor.shape[0] if tensor.dim() else -1 for tensor in inputs.values()}
    return len(rows) == 1 and 0 < next(iter(rows)) < max_batch_size


class _Item:
    __slots__ = ("run", "inputs", "rows", "arrival", "future")

    def __init__(self, run: RunFn, inputs: dict[str, torch.Tensor], future: asyncio.Future[Any]) -> None:
        self.run, self.inputs, self.future = run, inputs, future
        self.rows = next(iter(inputs.values())).shape[0]
        self.arrival = time.monotonic()


async def _in_default_executor(function: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, function)


class Batcher:
    """Queues of waiting requests, run as batches in worker threads. Use it from one event loop.

    Args:
        max_batch_size: The most rows in one batch.
        max_batches: How many batches may run at once.
        execute: Runs a blocking function off the event loop and returns its result (default: the loop's
            default executor); the server passes its inference thread pool.
    """

    def __init__(self, max_batch_size: int, max_batches: int = 1, execute: Execute | None = None) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"Batcher `max_batch_size` must be an integer >= 1; received {max_batch_size!r}.")
        if not isinstance(max_batches, int) or max_batches < 1:
            raise ValueError(f"Batcher `max_batches` must be an integer >= 1; received {max_batches!r}.")
        self.max_batch_size, self.max_batches = max_batch_size, max_batches
        self._execute = execute or _in_default_executor
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches_run = 0  # how many batches of more than one request ran (for tests and stats)

    async def run(self, key: Hashable, run: RunFn, inputs: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``run(inputs)``, possibly as part of a batch of requests with the same ``key``.

        ``key`` must identify the model and signature; the inputs' dtypes and non-batch shapes are added.

        Raises:
            BatcherClosedError: If the batcher closes first.
            Exception: Whatever ``run`` raised for this request alone.
        """
        if self._closed:
            raise BatcherClosedError("The server is shutting down.")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        full_key = (key, tuple((name, t.dtype, tuple(t.shape[1:])) for name, t in sorted(inputs.items())))
        self._queues.setdefault(full_key, deque()).append(_Item(run, inputs, future))
        self._dispatch()
        return await future

    def close(self) -> None:
        """Refuse new requests; requests still waiting fail with :class:`BatcherClosedError` (batches
        already running finish)."""
        self._closed = True
        pending = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("The server is shutting down."))

    def _dispatch(self) -> None:
        """Start batches while slots are free: the oldest queue first, as many of its requests as fit."""
        while self._running < self.max_batches and self._queues:
            key = min(self._queues, key=lambda k: self._queues[k][0].arrival)
            queue = self._queues[key]
            batch: list[_Item] = []
            rows = 0
            while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
                item = queue.popleft()
                if item.future.cancelled():  # the client went away while it waited
                    continue
                rows += item.rows
                batch.append(item)
            if not queue:
                del self._queues[key]
            if not batch:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            outcomes = await self._execute(functools.partial(self._compute, batch))
        except BaseException as error:  # the executor itself failed (shut down): every request fails with it
            outcomes = [(None, error)] * len(batch)
        finally:
            self._running -= 1
        for item, (result, failure) in zip(batch, outcomes):
            if item.future.done():
                continue
            if failure is not None:
                item.future.set_exception(failure)
            else:
                item.future.set_result(result)
        if not self._closed:
            self._dispatch()

    def _compute(self, batch: list[_Item]) -> list[tuple[Mapping[str, torch.Tensor] | None, BaseException | None]]:
        """In a worker thread: the batch's results, one ``(result, error)`` per request."""
        if len(batch) > 1:
            names = list(batch[0].inputs)
            total = sum(item.rows for item in batch)
            try:
                inputs = {name: torch.cat([item.inputs[name] for item in batch]) for name in names}
                outputs = batch[0].run(inputs)
                if any(t.dim() == 0 or t.shape[0] != total for t in outputs.values()):
                    raise ValueError("an output does not keep the batch dimension")
                parts = {name: torch.split(t, [item.rows for item in batch]) for name, t in outputs.items()}
            except Exception as error:
                logger.debug("A batch of %d requests failed (%s); running them one by one.", len(batch), error)
            else:
                self.batches_run += 1
                return [({name: pieces[i] for name, pieces in parts.items()}, None) for i in range(len(batch))]
        outcomes: list[tuple[Mapping[str, torch.Tensor] | None, BaseException | None]] = []
        for item in batch:
            try:
                outcomes.append((item.run(item.inputs), None))
            except Exception as error:  # handed to the request, which answers for it
                outcomes.append((None, error))
        return outcomes
