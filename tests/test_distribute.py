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
