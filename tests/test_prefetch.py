"""Tests for torch_estimator.prefetch: order, errors, the consumed position, stopping, "auto", and exact resume
through the Estimator while batches are made ahead."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator.inputs import numpy_input_fn
from torch_estimator.prefetch import Prefetcher

from .conftest import TinyNet, classifier_fn


class Counting:
    """A resumable input that records how many batches it has made."""

    def __init__(self, count, delay=0.0, fail_at=None):
        self.made, self.count, self.delay, self.fail_at = 0, count, delay, fail_at

    def __iter__(self):
        while self.made < self.count:
            if self.delay:
                time.sleep(self.delay)
            if self.made == self.fail_at:
                raise ValueError(f"bad record at batch {self.made}")
            self.made += 1
            yield self.made - 1

    def state_dict(self):
        return {"made": self.made}


def test_batches_arrive_in_order_from_the_thread():
    with Prefetcher(iter(range(50)), depth=3) as prefetched:
        assert list(prefetched) == list(range(50))
        assert prefetched.threaded


def test_depth_and_limit_are_checked():
    with pytest.raises(ValueError, match=r"Prefetcher `depth` must be an int > 0 or None; received 0"):
        Prefetcher(iter(()), depth=0)
    with pytest.raises(ValueError, match=r"Prefetcher `limit` must be an int > 0 or None; received -1"):
        Prefetcher(iter(()), depth=2, limit=-1)


def test_an_input_error_reaches_the_loop_at_the_batch_that_failed():
    source = Counting(10, fail_at=4)
    seen = []
    with Prefetcher(iter(source), depth=2) as prefetched, pytest.raises(ValueError, match="bad record at batch 4"):
        for item in prefetched:
            seen.append(item)
    assert seen == [0, 1, 2, 3]


def test_the_position_counts_batches_consumed_not_made():
    source = Counting(100)
    with Prefetcher(iter(source), depth=4, state=source.state_dict) as prefetched:
        assert prefetched.state_dict() == {"made": 0}
        iterator = iter(prefetched)
        assert [next(iterator) for _ in range(3)] == [0, 1, 2]
        deadline = time.monotonic() + 10
        while source.made < 7 and time.monotonic() < deadline:  # the thread fills its buffer ahead
            time.sleep(0.01)
        assert source.made == 7  # 3 consumed + 4 waiting
        assert prefetched.state_dict() == {"made": 3}


def test_the_limit_bounds_what_is_made_ahead():
    source = Counting(100)
    with Prefetcher(iter(source), depth=8, limit=5) as prefetched:
        assert list(prefetched) == [0, 1, 2, 3, 4]
    assert source.made == 5


def test_close_stops_a_thread_waiting_on_a_full_buffer():
    prefetched = Prefetcher(iter(Counting(10_000)), depth=2)
    iterator = iter(prefetched)
    next(iterator)
    thread = prefetched._thread
    prefetched.close()
    assert thread is not None and not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "torch_estimator-prefetch"]


def test_auto_keeps_a_cheap_input_inline_and_threads_an_expensive_one():
    cheap = Prefetcher(iter(range(40)))
    assert list(cheap) == list(range(40)) and not cheap.threaded

    def consume(prefetched):
        for _ in prefetched:
            time.sleep(0.002)  # the "step"

    slow = Prefetcher(iter(Counting(30, delay=0.004)))
    consume(slow)
    slow.close()
    assert slow.threaded


def _resumable(model_dir, prefetch):
    return te.Estimator(
        classifier_fn,
        model_dir=str(model_dir),
        model=lambda params: TinyNet(),
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
        config=te.RunConfig(device="cpu", save_checkpoints_steps=4, log_step_count_steps=None, random_seed=5,
                            prefetch_batches=prefetch),
    )


class StopAt(te.Hook):
    def __init__(self, step):
        self.step = step

    def after_run(self, run_context, run_values):
        if run_context.global_step >= self.step:
            run_context.request_stop()


def _train_fn(data):
    return numpy_input_fn({"x": data[0]}, data[1], batch_size=7, num_epochs=None, shuffle=True, seed=3)


def test_resume_is_exact_while_batches_are_made_ahead(data, tmp_path):
    """Training stopped by a hook (batches made ahead are dropped), then resumed by a new Estimator, ends
    bit for bit where a run without prefetching and without a stop ends."""
    straight = _resumable(tmp_path / "a", prefetch=0)
    straight.train(_train_fn(data), steps=25)
    first = _resumable(tmp_path / "b", prefetch=3)
    first.train(_train_fn(data), steps=20, hooks=[StopAt(9)])
    assert first.get_variable_value("global_step") == 9
    del first
    torch.manual_seed(999)
    np.random.seed(999)
    resumed = _resumable(tmp_path / "b", prefetch=3)
    resumed.train(_train_fn(data), steps=16)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_prefetched_evaluate_and_predict_match_the_inline_ones(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=10)
    eval_fn = numpy_input_fn({"x": data[0]}, data[1], batch_size=9, shuffle=False)
    inline = make_estimator(est.model_dir, prefetch_batches=0)
    ahead = make_estimator(est.model_dir, prefetch_batches=2)
    assert inline.evaluate(eval_fn) == ahead.evaluate(eval_fn)
    assert inline.evaluate(eval_fn, steps=3) == ahead.evaluate(eval_fn, steps=3)
    predict_fn = numpy_input_fn({"x": data[0][:30]}, batch_size=4, shuffle=False)
    expected = [p["classes"] for p in inline.predict(predict_fn)]
    assert [p["classes"] for p in ahead.predict(predict_fn)] == expected
    partial = ahead.predict(predict_fn)
    next(partial)
    partial.close()  # stopping early stops the thread
    assert not [t for t in threading.enumerate() if t.name == "torch_estimator-prefetch"]


def test_an_input_error_in_training_is_raised_with_prefetching(make_estimator):
    def bad_input():
        yield {"x": torch.ones(4, 4)}, torch.zeros(4, dtype=torch.long)
        yield {"x": torch.ones(4, 4)}, torch.zeros(3, dtype=torch.long)

    with pytest.raises(ValueError, match="different batch sizes"):
        make_estimator(prefetch_batches=2).train(bad_input, steps=5)
    assert not [t for t in threading.enumerate() if t.name == "torch_estimator-prefetch"]


def test_run_config_checks_prefetch_batches():
    with pytest.raises(ValueError, match=r"RunConfig `prefetch_batches` must be an int >= 0 or None; received -1"):
        te.RunConfig(prefetch_batches=-1)
    assert te.RunConfig().prefetch_batches is None


_THREAD_FAULTS = """
import resource
import torch
import torch.nn.functional as F
from torch_estimator.prefetch import Prefetcher

torch.set_num_threads(1)
kernel = torch.full((1, 1, 5, 5), 1 / 25)

def batches():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        x = torch.rand(100, 1, 56, 56)
        for _ in range(4):
            x = F.conv2d(x, kernel, padding=2)  # allocates and frees a work buffer of ~20 MB
        yield resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

with Prefetcher(batches(), depth=1) as prefetched:
    print(sorted(prefetched)[4])
"""


def _median_thread_faults(environment):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(te.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run([sys.executable, "-c", _THREAD_FAULTS], env={**env, **environment}, capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(resource, "RUSAGE_THREAD"),
                    reason="glibc's malloc and per-thread page-fault counts")
def test_the_thread_keeps_its_freed_memory_instead_of_faulting_it_in_again():
    """Without fixed thresholds (the control: a glibc.malloc tunable in the environment makes the prefetcher
    leave malloc alone), the thread's arena hands each freed work buffer back to the kernel and faults it in
    again at the next operation; with them, a batch costs no page faults."""
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        pytest.skip("not glibc")
    control = _median_thread_faults({"GLIBC_TUNABLES": "glibc.malloc.perturb=0"})
    if control < 1000:
        pytest.skip(f"this glibc does not trim the thread's arena here ({control} faults per batch)")
    assert _median_thread_faults({}) < 200


def test_malloc_is_left_alone_where_the_environment_configures_it():
    from torch_estimator.prefetch import _should_tune_malloc

    assert _should_tune_malloc({"PATH": "/bin"}, "glibc")
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        assert not _should_tune_malloc({name: "1"}, "glibc")
    assert not _should_tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}, "glibc")
    assert _should_tune_malloc({"GLIBC_TUNABLES": "glibc.rtld.nns=4"}, "glibc")
    assert not _should_tune_malloc({}, "")


def test_a_cuda_device_without_an_index_is_the_current_one(monkeypatch):
    """The thread must be given its device by number (torch.cuda.set_device refuses a bare "cuda")."""
    from torch_estimator.prefetch import _indexed

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _indexed(torch.device("cuda")) == torch.device("cuda", 1)
    assert _indexed(torch.device("cuda", 0)) == torch.device("cuda", 0)
