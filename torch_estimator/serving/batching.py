"""Server-side batching: concurrent small requests for the same model and signature run as one batch.

TF Serving's ``--enable_batching`` in miniature. A request's checked inputs wait in a queue keyed by
(model, signature, per-input dtype and non-batch shape); a worker thread takes the oldest queue, waits until
it holds ``max_batch_size`` rows or its first request has waited ``timeout_s``, concatenates the inputs along
dimension 0, runs the model once and hands each request its rows of every output. Given ``in_flight`` (how
many requests the server is handling), it does not wait when every one of them is already queued or running:
no other request could join, so a lone request pays no batching delay.

Only requests that can be split back are batched: every declared input and output has a free batch
dimension (``-1`` first) and every input of the request has the same number of rows, fewer than
``max_batch_size``. Others run on their own. If a batch fails (one request's values may break the model) or
its outputs do not keep the batch dimension, each request in it runs again alone, so an error belongs to the
request that caused it.

Example:
    >>> import torch
    >>> batcher = Batcher(max_batch_size=8, timeout_s=0.001)
    >>> double = lambda inputs: {"y": inputs["x"] * 2}
    >>> batcher.run(("demo",), double, {"x": torch.tensor([[1.0], [2.0]])})["y"].tolist()
    [[2.0], [4.0]]
    >>> batcher.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

__all__ = ["Batcher", "batchable", "BatcherClosedError"]

logger = logging.getLogger("torch_estimator.serving")

RunFn = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


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
    __slots__ = ("run", "inputs", "rows", "arrival", "done", "result", "error")

    def __init__(self, run: RunFn, inputs: dict[str, torch.Tensor]) -> None:
        self.run, self.inputs = run, inputs
        self.rows = next(iter(inputs.values())).shape[0]
        self.arrival = time.monotonic()
        self.done = threading.Event()
        self.result: Mapping[str, torch.Tensor] | None = None
        self.error: BaseException | None = None

    def finish(self, result: Mapping[str, torch.Tensor] | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """Queues and worker threads that batch requests.

    Args:
        max_batch_size: The most rows in one batch.
        timeout_s: How long the first request of a batch may wait for others.
        num_threads: Worker threads (batches that run at the same time).
        in_flight: Returns how many requests the server is handling (None: always wait up to ``timeout_s``).
    """

    def __init__(self, max_batch_size: int, timeout_s: float, num_threads: int = 1,
                 in_flight: Callable[[], int] | None = None) -> None:
        self.max_batch_size, self.timeout_s, self._in_flight = max_batch_size, timeout_s, in_flight
        self._queues: dict[Hashable, list[_Item]] = {}
        self._running = 0  # requests in batches being run
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"torch_estimator-batcher-{i}", daemon=True)
            for i in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()
        self.batches_run = 0  # how many batches of more than one request ran (for tests and stats)

    def run(self, key: Hashable, run: RunFn, inputs: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Run ``run(inputs)`` as part of a batch of requests with the same ``key``; block until done.

        ``key`` must identify the model and signature; the inputs' dtypes and non-batch shapes are added.

        Raises:
            BatcherClosedError: If the batcher closes first.
            Exception: Whatever ``run`` raised for this request alone.
        """
        item = _Item(run, inputs)
        full_key = (key, tuple((name, t.dtype, tuple(t.shape[1:])) for name, t in sorted(inputs.items())))
        with self._cond:
            if self._closed:
                raise BatcherClosedError("The server is shutting down.")
            self._queues.setdefault(full_key, []).append(item)
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def close(self) -> None:
        """Stop the workers; requests still queued fail with :class:`BatcherClosedError`."""
        with self._cond:
            self._closed = True
            pending = [item for queue in self._queues.values() for item in queue]
            self._queues.clear()
            self._cond.notify_all()
        for item in pending:
            item.finish(error=BatcherClosedError("The server is shutting down."))
        for thread in self._threads:
            thread.join(timeout=5)

    # -- workers ------------------------------------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        """The next batch (None when closed): the oldest queue, once full or its first item has waited enough."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queues:
                    self._cond.wait()
                    continue
                key = min(self._queues, key=lambda k: self._queues[k][0].arrival)
                queue = self._queues[key]
                wait = queue[0].arrival + self.timeout_s - time.monotonic()
                if sum(item.rows for item in queue) < self.max_batch_size and wait > 0 and self._others_may_come():
                    self._cond.wait(min(wait, 0.001) if self._in_flight else wait)  # woken by a new item
                    continue
                batch, rows = [], 0
                while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
                    rows += queue[0].rows
                    batch.append(queue.pop(0))
                if not queue:
                    del self._queues[key]
                self._running += len(batch)
                return batch

    def _others_may_come(self) -> bool:
        """Whether a request not yet queued is in flight (so waiting may fill the batch). Holds the lock."""
        if self._in_flight is None:
            return True
        queued = sum(len(queue) for queue in self._queues.values())
        return self._in_flight() > queued + self._running

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if len(batch) == 1:
                    self._run_alone(batch[0])
                else:
                    self._run_batch(batch)
            finally:
                with self._cond:
                    self._running -= len(batch)

    @staticmethod
    def _run_alone(item: _Item) -> None:
        try:
            item.finish(result=item.run(item.inputs))
        except BaseException as error:  # handed to the request's thread, which answers for it
            item.finish(error=error)

    def _run_batch(self, batch: list[_Item]) -> None:
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
            for item in batch:
                self._run_alone(item)
            return
        self.batches_run += 1
        for i, item in enumerate(batch):
            item.finish(result={name: pieces[i] for name, pieces in parts.items()})
