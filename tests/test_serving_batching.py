"""serving/batching.py: concurrent small requests merged into batches, each answered with its own rows;
and the server with batching on gives the same answers as without."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from torch_estimator.serving import loader
from torch_estimator.serving.batching import Batcher, BatcherClosedError, batchable
from torch_estimator.serving.server import serve

from .test_export_support import data
from .test_serving_support import V2, Client, copy_version, exports


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


def _concurrently(batcher, run, rows, key=("m", "sig")):
    """Submit each row as its own request from its own thread, all at once; return results or errors."""
    results: list = [None] * len(rows)
    barrier = threading.Barrier(len(rows))

    def submit(i):
        barrier.wait()
        try:
            results[i] = batcher.run(key, run, {"x": torch.tensor([rows[i]], dtype=torch.float32)})["y"]
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.fixture
def batcher():
    batcher = Batcher(max_batch_size=4, timeout_s=0.2)
    yield batcher
    batcher.close()


def test_concurrent_requests_share_batches_and_get_their_own_rows(batcher):
    run = Recorder()
    rows = [[float(i), float(-i)] for i in range(1, 9)]
    run_positive = lambda inputs: run({"x": inputs["x"].abs()})  # noqa: E731
    results = _concurrently(batcher, run_positive, rows)
    for row, result in zip(rows, results):
        assert result.tolist() == [[abs(v) * 2 for v in row]]
    assert len(run.sizes) < len(rows) and max(run.sizes) <= 4 and sum(run.sizes) == len(rows)


def test_a_request_that_breaks_the_batch_fails_alone(batcher):
    run = Recorder()
    results = _concurrently(batcher, run, [[1.0], [-1.0], [2.0], [3.0]])
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "negative input"
    assert [r.tolist() for i, r in enumerate(results) if i != 1] == [[[2.0]], [[4.0]], [[6.0]]]


def test_outputs_without_the_batch_dimension_are_run_request_by_request(batcher):
    results = _concurrently(batcher, lambda inputs: {"y": inputs["x"].sum().reshape(1)}, [[1.0], [2.0], [3.0]])
    assert [r.tolist() for r in results] == [[1.0], [2.0], [3.0]]


def test_requests_for_different_keys_are_not_mixed(batcher):
    seen = []
    run = lambda inputs: (seen.append(inputs["x"].shape[0]), {"y": inputs["x"]})[1]  # noqa: E731
    threads = [threading.Thread(target=batcher.run, args=((k,), run, {"x": torch.ones(1, 2)})) for k in "abab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(seen) == 4 and max(seen) <= 2


def test_a_lone_request_waits_no_longer_than_the_timeout():
    batcher = Batcher(max_batch_size=8, timeout_s=0.05)
    try:
        started = time.monotonic()
        batcher.run(("k",), Recorder(), {"x": torch.ones(1, 1)})
        assert time.monotonic() - started < 1.0
    finally:
        batcher.close()


def test_a_request_does_not_wait_when_no_other_is_in_flight():
    batcher = Batcher(max_batch_size=8, timeout_s=5.0, in_flight=lambda: 1)  # the server handles this request only
    try:
        started = time.monotonic()
        batcher.run(("k",), Recorder(), {"x": torch.ones(1, 1)})
        assert time.monotonic() - started < 1.0
    finally:
        batcher.close()


def test_a_request_waits_while_others_are_in_flight():
    batcher = Batcher(max_batch_size=8, timeout_s=0.3, in_flight=lambda: 2)  # another request is on its way
    try:
        started = time.monotonic()
        batcher.run(("k",), Recorder(), {"x": torch.ones(1, 1)})
        assert 0.25 < time.monotonic() - started < 3.0
    finally:
        batcher.close()


def test_closing_fails_queued_requests():
    batcher = Batcher(max_batch_size=8, timeout_s=30)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(BatcherClosedError, batcher.run, ("k",), Recorder(), {"x": torch.ones(1, 1)})))
    thread.start()
    time.sleep(0.1)
    batcher.close()
    thread.join(10)
    assert len(outcome) == 1
    with pytest.raises(BatcherClosedError, match="shutting down"):
        batcher.run(("k",), Recorder(), {"x": torch.ones(1, 1)})


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

    with serve(base, "tiny", port=0, poll_secs=0, batching=True, max_batch_size=8, batch_timeout_ms=20, threads=8) as server:
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
