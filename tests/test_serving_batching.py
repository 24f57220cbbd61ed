"""serving/batching.py: concurrent small requests merged into batches, each answered with its own rows;
and the server with batching on gives the same answers as without."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest
import torch

from torch_estimator.serving import loader
from torch_estimator.serving.batching import Batcher, BatcherClosedError, batchable
from torch_estimator.serving.server import serve

from .export_support import data
from .serving_support import V2, Client, copy_version, exports


class Recorder:
    """A run function ``y = 2x`` that records the batch sizes it saw and fails on negative rows."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, inputs):
        self.sizes.append(inputs["x"].shape[0])
        time.sleep(self.delay)
        if bool((inputs["x"] < 0).any()):
            raise RuntimeError("negative input")
        return {"y": inputs["x"] * 2}


def _concurrently(run, rows, key=("m", "sig"), max_batch_size=4):
    """Submit each row as its own request, all at once, to a fresh batcher; return (results or errors, batcher)."""

    async def main():
        batcher = Batcher(max_batch_size=max_batch_size)

        async def submit(row):
            try:
                return (await batcher.run(key, run, {"x": torch.tensor([row], dtype=torch.float32)}))["y"]
            except Exception as error:
                return error

        results = await asyncio.gather(*[submit(row) for row in rows])
        batcher.close()
        return results, batcher

    return asyncio.run(main())


def test_requests_waiting_together_share_batches_and_get_their_own_rows():
    run = Recorder(delay=0.05)  # while the first runs, the others wait and then run together
    rows = [[float(i), float(-i)] for i in range(1, 9)]
    results, batcher = _concurrently(lambda inputs: run({"x": inputs["x"].abs()}), rows)
    for row, result in zip(rows, results):
        assert result.tolist() == [[abs(v) * 2 for v in row]]
    assert run.sizes[0] == 1  # the first request did not wait for companions
    assert len(run.sizes) < len(rows) and max(run.sizes) <= 4 and sum(run.sizes) == len(rows)
    assert batcher.batches_run >= 1


def test_a_request_that_breaks_the_batch_fails_alone():
    run = Recorder(delay=0.05)
    results, _ = _concurrently(run, [[1.0], [2.0], [-1.0], [3.0]])
    assert isinstance(results[2], RuntimeError) and str(results[2]) == "negative input"
    assert [r.tolist() for i, r in enumerate(results) if i != 2] == [[[2.0]], [[4.0]], [[6.0]]]
    assert 3 in run.sizes  # the batch of the last three ran, failed, then each ran alone


def test_outputs_without_the_batch_dimension_are_run_request_by_request():
    def total(inputs):
        time.sleep(0.05)
        return {"y": inputs["x"].sum().reshape(1)}

    results, _ = _concurrently(total, [[1.0], [2.0], [3.0]])
    assert [r.tolist() for r in results] == [[1.0], [2.0], [3.0]]


def test_requests_for_different_keys_are_not_mixed():
    seen = []

    def run(inputs):
        seen.append(inputs["x"].shape[0])
        time.sleep(0.02)
        return {"y": inputs["x"]}

    async def main():
        batcher = Batcher(max_batch_size=8)
        await asyncio.gather(*[batcher.run((k,), run, {"x": torch.ones(1, 2)}) for k in "abab"])

    asyncio.run(main())
    assert sum(seen) == 4 and max(seen) <= 2


def test_a_lone_request_runs_at_once():
    async def main():
        batcher = Batcher(max_batch_size=8)
        started = time.monotonic()
        await batcher.run(("k",), Recorder(), {"x": torch.ones(1, 1)})
        return time.monotonic() - started, batcher.batches_run

    elapsed, batches = asyncio.run(main())
    assert elapsed < 0.5 and batches == 0


def test_closing_fails_waiting_requests():
    gate = threading.Event()

    def held(inputs):
        gate.wait(10)
        return {"y": inputs["x"]}

    async def main():
        batcher = Batcher(max_batch_size=8)
        running = asyncio.ensure_future(batcher.run(("k",), held, {"x": torch.ones(1, 1)}))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.run(("k",), held, {"x": torch.ones(1, 1)}))
        await asyncio.sleep(0.05)
        batcher.close()
        with pytest.raises(BatcherClosedError, match="shutting down"):
            await waiting
        gate.set()
        assert (await running)["y"].tolist() == [[1.0]]  # a batch already running finishes
        with pytest.raises(BatcherClosedError, match="shutting down"):
            await batcher.run(("k",), held, {"x": torch.ones(1, 1)})

    asyncio.run(main())


@pytest.mark.parametrize("field, value, message", [
    ("max_batch_size", 0, "`max_batch_size` must be an integer >= 1; received 0"),
    ("max_batches", 1.5, "`max_batches` must be an integer >= 1; received 1.5"),
])
def test_batcher_checks_its_arguments(field, value, message):
    with pytest.raises(ValueError, match=message):
        Batcher(**{"max_batch_size": 4, field: value})


@pytest.mark.parametrize("inputs, outputs, request_rows, expected", [
    ({"x": [-1, 2]}, {"y": [-1, 2]}, {"x": 3}, True),
    ({"x": [-1, 2]}, {"y": [-1, 2]}, {"x": 8}, False),  # as large as a batch: runs alone
    ({"x": [4, 2]}, {"y": [-1, 2]}, {"x": 4}, False),  # no free batch dimension
    ({"x": [-1, 2]}, {"y": [1]}, {"x": 3}, False),  # an output that does not follow the batch
    ({"a": [-1], "b": [-1]}, {"y": [-1]}, {"a": 2, "b": 3}, False),  # columnar inputs of different sizes
])
def test_batchable(inputs, outputs, request_rows, expected):
    signature = {"inputs": {n: {"shape": s} for n, s in inputs.items()}, "outputs": {n: {"shape": s} for n, s in outputs.items()}}
    tensors = {n: torch.zeros(rows, *[max(d, 1) for d in inputs[n][1:]]) for n, rows in request_rows.items()}
    assert batchable(signature, tensors, max_batch_size=8) is expected


# ----------------------------------------------------------------------------------------------------------
# Over HTTP


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("batching_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    return base


def test_batched_answers_equal_unbatched_ones(base):
    x = data(24, seed=41)[0]
    expected = loader.load(base / str(V2))({"x": x})["probabilities"].numpy()
    answers: dict[int, np.ndarray] = {}

    def client_loop(offset):
        client = Client(server.port)
        for i in range(offset, len(x), 8):
            body = client.post("/v1/models/tiny:predict", {"instances": [x[i].tolist()]})[1]
            answers[i] = np.asarray(body["predictions"][0]["probabilities"], dtype=np.float32)

    with serve(base, "tiny", port=0, poll_secs=0, batching=True, max_batch_size=8, threads=8) as server:
        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        batches = server._batcher.batches_run
    assert sorted(answers) == list(range(len(x)))
    np.testing.assert_allclose(np.stack([answers[i] for i in range(len(x))]), expected, rtol=1e-5, atol=1e-6)
    assert batches >= 1


def test_with_batching_on_large_and_columnar_requests_still_work(base):
    x = data(40, seed=42)[0]
    model = loader.load(base / str(V2))
    with serve(base, "tiny", port=0, poll_secs=0, batching=True, max_batch_size=8) as server:
        client = Client(server.port)
        body = client.post("/v1/models/tiny:predict", {"inputs": {"x": x.tolist()}})[1]
        assert body["outputs"]["classes"] == model({"x": x})["classes"].tolist()
        status, body, _ = client.post("/v1/models/tiny:classify", {"signature_name": "classification", "examples": [{"x": x[0].tolist()}]})
        assert status == 200 and len(body["results"][0]) == 3


def _held_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed ``sock`` (nothing to read, and no end of stream)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # returns data (an answer) or b"" (closed)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_half_open_connections_do_not_slow_a_lone_client(base):
    """Requests whose bodies never finish arriving are not waited for: only fully arrived requests batch, so a
    lone client's requests each run at once, alone, while three half-open uploads are held open."""
    # The uploads are never reaped by the body timeout during the test, however slow the machine.
    with serve(base, "tiny", port=0, poll_secs=0, batching=True, max_batch_size=8, request_timeout_secs=600) as server:
        client = Client(server.port, timeout=120)  # a hang guard: waiting for the uploads would never end
        body = {"instances": [[0.1, 0.2, 0.3, 0.4]]}
        assert client.post("/v1/models/tiny:predict", body)[0] == 200  # the batcher exists once a request ran
        batcher = server._batcher
        waiting: list[int] = []  # requests left queued in the batcher after each dispatch: waiting for companions
        dispatch = batcher._dispatch

        def watched_dispatch():
            dispatch()
            waiting.append(sum(len(queue) for queue in batcher._queues.values()))

        batcher._dispatch = watched_dispatch
        half_open = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(3)]
        try:
            for sock in half_open:
                sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            deadline = time.monotonic() + 60  # a hang guard
            while server.in_flight < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.in_flight == 3
            for _ in range(20):
                assert client.post("/v1/models/tiny:predict", body)[0] == 200
                assert all(_held_open(sock) for sock in half_open)  # answered while the uploads are still pending
        finally:
            client.close()
            for sock in half_open:
                sock.close()
        assert len(waiting) >= 20 and not any(waiting), waiting  # each request ran as it arrived, none queued
        assert batcher.batches_run == 0  # and alone: the half-open ones never entered the batcher
