"""Distributed training with real processes (gloo on CPU) and the launcher's environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torch_estimator import checkpoint as ckpt
from torch_estimator import distribute

WORKER = Path(__file__).parent / "distributed" / "worker.py"
TFRECORD_WORKER = Path(__file__).parent / "distributed" / "tfrecord_worker.py"


def test_context_from_env_defaults_to_one_process():
    context = distribute.context_from_env({})
    assert (context.rank, context.world_size, context.local_rank, context.is_chief) == (0, 1, 0, True)


def test_context_from_env_reads_the_launcher():
    context = distribute.context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.local_rank, context.is_chief) == (3, 4, 1, False)


@pytest.mark.parametrize(
    ("environ", "message"),
    [({"RANK": "x"}, "RANK must be an integer; received 'x'"), ({"RANK": "2", "WORLD_SIZE": "2"}, "Inconsistent launcher environment")],
)
def test_bad_launcher_environment(environ, message):
    with pytest.raises(ValueError, match=message):
        distribute.context_from_env(environ)


def test_single_process_collectives_are_no_ops():
    import torch

    tensor = torch.ones(2)
    assert distribute.all_reduce_sum(tensor) is tensor
    distribute.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _results(model_dir: Path, nproc: int) -> list[dict]:
    return [json.loads((model_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run1 = _torchrun(1, str(WORKER), "train", str(one), "100")
    assert run1.returncode == 0, run1.stderr[-3000:]
    run2 = _torchrun(2, str(WORKER), "train", str(two), "50")
    assert run2.returncode == 0, run2.stderr[-3000:]
    [single] = _results(one, 1)
    chief, other = _results(two, 2)
    for a, b, c in zip(single["weights"], chief["weights"], other["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b, c)  # the replicas stay identical
    assert single["global_step"] == chief["global_step"] == other["global_step"] == 12
    assert chief["config"] == {"rank": 0, "world_size": 2, "is_chief": True}
    assert other["config"] == {"rank": 1, "world_size": 2, "is_chief": False}
    # Sharded evaluation: the metrics' sufficient statistics are summed, so they equal one process's.
    assert chief["eval"]["accuracy"] == pytest.approx(single["eval"]["accuracy"], abs=1e-9)
    assert chief["eval"]["n"] == pytest.approx(single["eval"]["n"], abs=1e-9)
    assert chief["eval"] == other["eval"]
    # Only the chief wrote: one events file, checkpoints at 0, 5, 10, 12.
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(two)).paths] == [0, 5, 10, 12]
    assert len([f for f in os.listdir(two) if f.startswith("events.out.tfevents")]) == 1


@pytest.mark.slow
def test_a_stop_requested_by_one_process_is_agreed_by_all(tmp_path):
    run = _torchrun(2, str(WORKER), "stop", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [r["global_step"] for r in _results(tmp_path, 2)]
    assert steps == [8, 8]  # requested at 6 on rank 1, agreed at the next check (every 4 steps)


@pytest.mark.slow
def test_train_and_evaluate_evaluates_and_exports_on_the_chief(tmp_path):
    run = _torchrun(2, str(WORKER), "train_and_evaluate", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    chief, other = _results(tmp_path, 2)
    assert chief["global_step"] == other["global_step"] == 12
    assert chief["result"]["global_step"] == 12 and other["result"] is None
    assert sorted(os.listdir(tmp_path / "export" / "latest"))  # exports written by the chief
    assert all(path is not None for path in chief["exports"]) and other["exports"] == []
    assert sorted(ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths)[-1] == 12


@pytest.mark.slow
def test_a_dead_process_makes_the_others_fail_instead_of_hanging(tmp_path):
    run = _torchrun(2, "--max-restarts=0", str(WORKER), "kill", str(tmp_path), timeout=180)
    assert run.returncode != 0
    survivor = json.loads((tmp_path / "rank0.json").read_text()) if (tmp_path / "rank0.json").exists() else None
    if survivor is not None:
        assert "error" in survivor
    latest = ckpt.latest_checkpoint(str(tmp_path))
    assert latest is not None and ckpt.read_checkpoint(latest).global_step <= 8


@pytest.mark.slow
def test_the_mnist_example_runs_under_torchrun(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "mnist.py"
    run = _torchrun(2, str(example), "--synthetic", "--steps", "30", "--learning-rate", "0.05",
                    "--model-dir", str(tmp_path), "--predict", "2", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths][-1] == 30
    assert len([f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]) == 1  # the chief's
    assert run.stdout.count("'global_step': 30}") == 2  # both processes evaluated (sharded) step 30


# -- training from TFRecord files: one shard per process, equal shards, exact resume ------------------------

SIZES = (7, 3, 5, 9, 4)  # records per file: 28, split by file as 16 (files 0, 2, 4) and 12 (files 1, 3)


def _tfrecords(directory: Path) -> str:
    from torch_estimator.tf_example import make_example
    from torch_estimator.tfrecord import write_records

    directory.mkdir()
    first = 0
    for k, size in enumerate(SIZES):
        write_records(directory / f"part-{k}.tfrecord", [
            make_example({"x": [float(i), -float(i)], "y": i % 2, "i": i}).SerializeToString()
            for i in range(first, first + size)])
        first += size
    return str(directory / "part-*.tfrecord")


def _seen(model_dir: Path, rank: int) -> list[tuple[int, list[int]]]:
    lines = (model_dir / f"seen-rank{rank}.jsonl").read_text().splitlines()
    return [(step, ids) for step, ids in map(json.loads, lines)]


def _listing(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_tfrecord_shards_are_disjoint_equal_and_train_finite_epochs_without_hanging(tmp_path, uneven):
    pattern = _tfrecords(tmp_path / "data")
    before = _listing(tmp_path / "data")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    run = _torchrun(2, str(TFRECORD_WORKER), str(model_dir), pattern, uneven, "in-order", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    shard0 = [*range(0, 7), *range(10, 15), *range(24, 28)]  # files 0, 2, 4: 16 records
    shard1 = [*range(7, 10), *range(15, 24)]  # files 1, 3: 12 records
    if uneven == "pad":  # the shorter shard repeats its first records: every record at least once per epoch
        shard1 = shard1 + shard1[:4]
    else:  # the longer shard stops at the shorter one's size: no record twice
        shard0 = shard0[:12]
    epoch = len(shard0)
    assert len(shard1) == epoch
    for rank, shard in enumerate((shard0, shard1)):
        seen = _seen(model_dir, rank)
        assert [step for step, _ in seen] == list(range(1, len(seen) + 1))
        assert sum((ids for _, ids in seen), []) == shard + shard  # two epochs, batches across them
        assert len(seen) == -(-2 * epoch // 3)  # the same number of steps on both, the last batch partial
    chief, other = _results(model_dir, 2)
    assert chief["global_step"] == other["global_step"] == -(-2 * epoch // 3)
    # Evaluation is not evened out: each record once (the mean of 0..27), the shards summed.
    assert chief["eval"]["mean_id"] == other["eval"]["mean_id"] == pytest.approx(13.5)
    assert _listing(tmp_path / "data") == before  # the source files are only read


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tfrecord", "numpy"])
def test_a_killed_run_resumes_every_process_at_its_checkpointed_position(tmp_path, source):
    pattern = _tfrecords(tmp_path / "data") if source == "tfrecord" else f"numpy:{sum(SIZES)}"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    args = (pattern, "pad", "shuffle", "3")
    run = _torchrun(2, str(TFRECORD_WORKER), str(whole), *args)
    assert run.returncode == 0, run.stderr[-3000:]
    run = _torchrun(2, "--max-restarts=0", str(TFRECORD_WORKER), str(killed), *args, "11")
    assert run.returncode != 0  # both processes ended at step 11, after the checkpoint of step 8
    before = [_seen(killed, rank) for rank in range(2)]
    assert [len(seen) for seen in before] == [11, 11]
    resumed_from = ckpt.read_checkpoint(ckpt.latest_checkpoint(str(killed))).global_step
    assert 4 <= resumed_from < 11
    run = _torchrun(2, str(TFRECORD_WORKER), str(killed), *args)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in range(2):
        uninterrupted = _seen(whole, rank)
        seen = _seen(killed, rank)
        assert seen[:11] == uninterrupted[:11]  # the same run, until the kill
        # Resumed: steps after the checkpoint again, each process at its own shard's position, to the same end.
        assert seen[11:] == uninterrupted[resumed_from:]
    assert _results(killed, 2)[0]["global_step"] == _results(whole, 2)[0]["global_step"]
