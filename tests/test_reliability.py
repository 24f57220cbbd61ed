"""Reliability: attacks on the checkpoint machinery through the public API.

* training killed with SIGKILL at random moments, resumed each time, ends bit-identical (slow);
* damaged checkpoints, a full disk or read-only ``model_dir`` while training;
* malicious pickle payloads planted wherever a file is read;
* a reader racing a trainer that rotates checkpoints;
* the bad-input catalogue of ``docs/bad_inputs.md``: one case per row, each proving its message and that
  nothing on disk changed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import torch_estimator as te
from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import files as ckpt_files
from torch_estimator.checkpoint import format as ckpt_format
from torch_estimator.checkpoint import hashing as ckpt_hashing
from torch_estimator.checkpoint import index as ckpt_index
from torch_estimator.inputs import numpy_input_fn
from torch_estimator.inputs_tfrecord import FixedLenFeature, tfrecord_input_fn
from torch_estimator.tf_checkpoint import TFCheckpoint, TFCheckpointError
from torch_estimator.tf_example import ParseError
from torch_estimator.tfrecord import CorruptRecordError

from .conftest import TinyNet, classifier_fn
from .reliability import train_to_step as tr

ROOT = Path(__file__).resolve().parents[1]

# The Estimator's side of these behaviours: it restores through ckpt.restore_latest, checks model_dir with
# ckpt.check_model_dir at construction, and creates its CheckpointManager when train() starts.


def _train_fn(data, **kwargs):
    x, y = data
    return numpy_input_fn({"x": x}, y, batch_size=10, num_epochs=None, shuffle=True, seed=3, **kwargs)


def _eval_fn(data):
    x, y = data
    return numpy_input_fn({"x": x}, y, batch_size=25, shuffle=False)


def _weights(est) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in est.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _damage(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[-5] ^= 0xFF
    Path(path).write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------------------
# Damaged checkpoints, disk trouble, concurrent readers: through the Estimator.


def test_an_explicit_damaged_checkpoint_is_refused_naming_the_file(make_estimator, data, tmp_path):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    path = ckpt.checkpoint_path_for_step(str(tmp_path / "model"), 10)
    _damage(path)
    est = make_estimator()
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path) + " is damaged: its content hash does not match"):
        est.evaluate(_eval_fn(data), checkpoint_path=path)
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path)):
        est.get_variable_value("hidden.weight")


@pytest.mark.parametrize("kind", ["flipped-byte", "truncated", "pickle"])
def test_training_falls_back_to_the_newest_intact_checkpoint(make_estimator, data, tmp_path, caplog, kind):
    model_dir = tmp_path / "model"
    reference = make_estimator(model_dir=tmp_path / "reference", save_checkpoints_steps=5)
    reference.train(_train_fn(data), steps=20)
    est = make_estimator(save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=15)
    latest = ckpt.checkpoint_path_for_step(str(model_dir), 15)
    if kind == "flipped-byte":
        _damage(latest)
    elif kind == "truncated":
        Path(latest).write_bytes(Path(latest).read_bytes()[:-1000])
    else:
        Path(latest).write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    resumed = make_estimator(save_checkpoints_steps=5)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        resumed.train(_train_fn(data), max_steps=20)
    assert re.search(re.escape(latest) + " (is damaged|could not be read)", caplog.text)
    assert "Using checkpoint" in caplog.text and "model.ckpt-10.safetensors" in caplog.text
    assert _same(_weights(resumed), _weights(reference))  # resumed at 10, exactly: the damage cost 5 steps
    assert ckpt.verify_checkpoint(latest) == 15  # the damaged file was replaced by a good one
    assert not (tmp_path / "pwned").exists()


def _full_disk_at(save_number: int):
    """A ``save_file`` that writes part of the file, then fails with ENOSPC on the given save."""
    calls = []

    def save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == save_number:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, filename, metadata=metadata)

    return save


def _train_into_a_full_disk(make_estimator, data, tmp_path, monkeypatch):
    reference = make_estimator(model_dir=tmp_path / "reference", save_checkpoints_steps=5)
    reference.train(_train_fn(data), steps=30)
    model_dir = tmp_path / "model"
    est = make_estimator(save_checkpoints_steps=5, keep_checkpoint_max=2)
    monkeypatch.setattr(ckpt_format, "save_file", _full_disk_at(4))  # saves at 0, 5, 10, then 15 fails
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model.ckpt-15.safetensors: No space left on "
                                      r"device. The previous checkpoints and the index are unchanged"):
        est.train(_train_fn(data), steps=30)
    assert sorted(n for n in os.listdir(model_dir) if "events" not in n) == [
        "checkpoint", "model.ckpt-10.safetensors", "model.ckpt-5.safetensors"]
    assert ckpt.step_of(ckpt.latest_checkpoint(str(model_dir))) == 10
    monkeypatch.undo()  # space was freed
    return est, _weights(reference)


def test_a_full_disk_during_training_is_a_clear_error_and_training_resumes_after(make_estimator, data, tmp_path, monkeypatch):
    _, expected = _train_into_a_full_disk(make_estimator, data, tmp_path, monkeypatch)
    restarted = make_estimator(save_checkpoints_steps=5, keep_checkpoint_max=2)  # a new process, say
    restarted.train(_train_fn(data), max_steps=30)
    assert _same(_weights(restarted), expected)


def test_after_a_failed_save_the_same_estimator_resumes_from_disk(make_estimator, data, tmp_path, monkeypatch):
    est, expected = _train_into_a_full_disk(make_estimator, data, tmp_path, monkeypatch)
    est.train(_train_fn(data), max_steps=30)  # memory is ahead of disk (step 15): it must restore step 10
    assert _same(_weights(est), expected)


def test_a_read_only_model_dir_during_a_save_is_a_clear_error(make_estimator, data, tmp_path, monkeypatch):
    est = make_estimator(save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=5)

    def read_only(tensors, filename, metadata=None):
        raise OSError(errno.EROFS, "Read-only file system", filename)

    before = sorted(os.listdir(tmp_path / "model"))
    monkeypatch.setattr(ckpt_format, "save_file", read_only)
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model.ckpt-10.safetensors: Read-only file system"):
        est.train(_train_fn(data), steps=5)
    assert sorted(os.listdir(tmp_path / "model")) == before


def test_evaluate_moves_to_the_next_newest_when_its_checkpoint_is_rotated_away(make_estimator, data, tmp_path, monkeypatch):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=15)
    read, deleted = ckpt.read_checkpoint, []

    def rotated_meanwhile(path, **kwargs):
        if not deleted:  # the trainer's rotation deletes the file the evaluator just chose
            os.remove(path)
            deleted.append(os.path.basename(path))
        return read(path, **kwargs)

    monkeypatch.setattr(ckpt_index, "read_checkpoint", rotated_meanwhile)
    result = make_estimator().evaluate(_eval_fn(data))
    assert deleted == ["model.ckpt-15.safetensors"] and result["global_step"] == 10


def test_leftover_temporary_files_are_removed_when_training_starts(make_estimator, data, tmp_path):
    make_estimator(save_checkpoints_steps=100).train(_train_fn(data), steps=3)
    leftover = tmp_path / "model" / "model.ckpt-4.safetensors.tmp4242"
    leftover.write_bytes(b"half a checkpoint")
    hooks_seen = []

    class Look(te.Hook):
        def after_restore(self, run_context):
            hooks_seen.append(leftover.exists())

    make_estimator(save_checkpoints_steps=100).train(_train_fn(data), steps=1, hooks=[Look()])
    assert hooks_seen == [False]


# ----------------------------------------------------------------------------------------------------------
# No checkpoint of non-finite weights.


class HiddenNaN(torch.nn.Module):
    """TinyNet plus a parameter seen only through ``where(p > 0, sqrt(p), 0)``: the loss stays finite while the
    gradient of the negative entry is NaN (0 * d sqrt(p)/dp), so one SGD step makes ``p`` NaN for good."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet()
        self.p = torch.nn.Parameter(torch.tensor([-1.0, 1.0]))

    def forward(self, x):
        return self.net(x) + torch.where(self.p > 0, torch.sqrt(self.p), torch.zeros_like(self.p)).sum() * 0.01


def test_weights_made_nan_by_a_finite_loss_are_never_checkpointed(data, tmp_path):
    model_dir = tmp_path / "model"
    est = te.Estimator(classifier_fn, model_dir=str(model_dir), model=HiddenNaN(), optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=5, log_step_count_steps=1, save_summary_steps=None))
    losses = []

    class Losses(te.Hook):
        def before_run(self, run_context):
            return {"loss"}

        def after_run(self, run_context, run_values):
            losses.append(float(run_values["loss"]))

    with pytest.raises(te.NanLossDuringTrainingError, match=r"became NaN or infinite between global steps 1 and 5 \(they were "
                                                           r"finite at step 0\), while the loss stayed finite.*'model/p'"):
        est.train(_train_fn(data), steps=20, hooks=[Losses()])
    assert len(losses) == 5 and all(np.isfinite(losses))  # every loss was finite: only the weights tell
    assert sorted(n for n in os.listdir(model_dir) if n.startswith("model.ckpt")) == ["model.ckpt-0.safetensors"]
    saved = ckpt.read_checkpoint(str(model_dir / "model.ckpt-0.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in saved.model.values())
    with pytest.raises(te.NanLossDuringTrainingError, match="between global steps 1 and 5"):  # resumes at 0, fails again
        est.train(_train_fn(data), steps=20)


def test_non_finite_optimizer_state_is_named():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    parts = {"model": model, "optimizer": optimizer}
    assert ckpt.non_finite_tensors(ckpt.training_state_tensors(parts)) == []
    optimizer.state[model.bias]["exp_avg_sq"].fill_(float("inf"))
    assert ckpt.non_finite_tensors(ckpt.training_state_tensors(parts)) == ["optimizer/1/exp_avg_sq"]


class TwoOptimizers(te.Estimator):
    """An Estimator whose checkpoints hold a second optimizer part, ``"optimizer_b"`` (the one place a part is
    added), stepped with the first by the spec's ``train_op``."""

    def __init__(self, second: torch.optim.Optimizer, **kwargs):
        super().__init__(**kwargs)
        self.second = second

    def _checkpoint_parts(self):
        return {**super()._checkpoint_parts(), "optimizer_b": self.second}


class HugeGradient(torch.nn.Module):
    """TinyNet plus ``b``, starting at zero, whose loss term is ``1e25 * b`` once ``armed``: the gradient squared overflows
    Adam's second moment to infinity while ``b`` (update ``m / sqrt(inf)`` = 0) and the loss stay finite."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet()
        self.b = torch.nn.Parameter(torch.zeros(1))
        self.armed = False

    def forward(self, x):
        return self.net(x)

    def penalty(self):
        return self.b.sum() * (1e25 if self.armed else 0.0)


@pytest.mark.parametrize("holder", ["optimizer", "optimizer_b"])
def test_non_finite_state_of_any_optimizer_part_is_never_checkpointed(data, tmp_path, holder):
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    model = HugeGradient()
    # `holder` updates b (the one whose state becomes infinite); the other part updates the rest.
    b_params, net_params = [model.b], list(model.net.parameters())
    first = torch.optim.Adam(b_params if holder == "optimizer" else net_params, lr=0.01)
    second = torch.optim.Adam(net_params if holder == "optimizer" else b_params, lr=0.01)

    def model_fn(features, labels, mode, model):
        loss = torch.nn.functional.cross_entropy(model(features["x"]), labels) + model.penalty()

        def train_op(loss):
            first.zero_grad()
            second.zero_grad()
            loss.backward()
            first.step()
            second.step()

        return te.EstimatorSpec(mode, loss=loss, train_op=train_op)

    est = TwoOptimizers(second, model_fn=model_fn, model_dir=str(model_dir), model=model, optimizer=first,
                        config=te.RunConfig(device="cpu", save_checkpoints_steps=3, log_step_count_steps=None,
                                            save_summary_steps=None))
    est.train(_train_fn(data), steps=3)
    saved = ckpt.read_checkpoint(str(model_dir / "model.ckpt-3.safetensors"))
    assert "optimizer_b" in saved.state  # the second part is saved, so it must be checked
    before = {n: (model_dir / n).read_bytes() for n in os.listdir(model_dir)}
    model.armed = True
    with pytest.raises(te.NanLossDuringTrainingError, match=rf"became NaN or infinite between global steps 4 and 6 \(they "
                                                           rf"were finite at step 3\), while the loss stayed finite.*"
                                                           rf"Non-finite: \['{holder}/0/exp_avg_sq'\]"):
        est.train(_train_fn(data), steps=3)
    assert bool(torch.isfinite(model.b).all())  # only the optimizer state tells
    assert {n: (model_dir / n).read_bytes() for n in os.listdir(model_dir)} == before


# ----------------------------------------------------------------------------------------------------------
# One writer per model_dir.


def _wait_for(predicate, what, timeout=90.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_second_trainer_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(make_estimator, data, tmp_path):
    model_dir, events = tmp_path / "model", tmp_path / "events"
    with subprocess.Popen([sys.executable, str(KILL_SCRIPT), str(model_dir), "100000", str(events)],
                          env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as trainer:  # closes the pipe, waits
        try:
            _wait_for(lambda: any(e[0] == "A" and e[1] >= 2 for e in _events(events)) or trainer.poll() is not None, "the trainer")
            assert trainer.poll() is None, trainer.stderr.read().decode()[-3000:]
            trainer.send_signal(signal.SIGSTOP)  # alive and holding the lock, but no longer rotating files under the readers
            second = te.Estimator(tr.model_fn, model_dir=str(model_dir), model=tr.Net(), optimizer=lambda p: torch.optim.Adam(p),
                                  config=te.RunConfig(device="cpu", save_checkpoints_steps=2, log_step_count_steps=None))
            x = np.zeros((8, 32), "float32")
            y = np.zeros(8, "int64")
            before = {n: os.stat(model_dir / n).st_size for n in os.listdir(model_dir) if n.startswith("model.ckpt")}
            with pytest.raises(te.ModelDirLockedError, match=rf"`model_dir` .*model is being trained by process {trainer.pid} on "
                                                             rf"host {re.escape(socket.gethostname())} \(training since 20.*\): it holds "
                                                             rf"the lock .*train.lock"):
                second.train(numpy_input_fn(x, y, batch_size=8, num_epochs=None, shuffle=False), steps=5)
            assert {n: os.stat(model_dir / n).st_size for n in os.listdir(model_dir) if n.startswith("model.ckpt")} == before
            holder = te.lock.read_holder(str(model_dir / "train.lock"))
            assert holder["pid"] == trainer.pid
            # Readers never need the lock.
            assert second.evaluate(numpy_input_fn(x, y, batch_size=8, shuffle=False))["global_step"] >= 2
            assert len(list(second.predict(numpy_input_fn(x, batch_size=8, shuffle=False)))) == 8
        finally:
            trainer.kill()
            trainer.wait()
    # SIGKILL released the lock with the process: the next trainer takes it at once (and removes the file after).
    assert (model_dir / "train.lock").exists()
    second.train(numpy_input_fn(x, y, batch_size=8, num_epochs=None, shuffle=False), steps=5)
    assert not (model_dir / "train.lock").exists()


def test_training_without_checkpoints_and_reading_need_no_lock(make_estimator, data, tmp_path):
    (tmp_path / "model").mkdir()
    with te.lock.ModelDirLock(str(tmp_path / "model")):  # held by another trainer, here one in this process
        make_estimator(save_checkpoints_steps=None, save_checkpoints_secs=None, save_summary_steps=None).train(_train_fn(data), steps=2)
        with pytest.raises(te.ModelDirLockedError, match="being trained by process"):
            make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=2)
        make_estimator().evaluate(_eval_fn(data))


def test_train_and_evaluate_holds_the_lock_while_its_evaluations_read(make_estimator, data, tmp_path):
    est = make_estimator(save_checkpoints_steps=5)
    seen = []

    class Look(te.Hook):
        def begin(self):
            seen.append(te.lock.read_holder(str(tmp_path / "model" / "train.lock")).get("pid"))

    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=10),
                          te.EvalSpec(_eval_fn(data), steps=None, hooks=[Look()], throttle_secs=0))
    assert seen and all(pid == os.getpid() for pid in seen)
    assert not (tmp_path / "model" / "train.lock").exists()


# ----------------------------------------------------------------------------------------------------------
# Faults that must not stop the work: another optimizer, damaged newest checkpoints, special files, forged
# metadata, odd model_dirs.


def test_switching_optimizer_evaluates_and_predicts_and_train_says_how(data, tmp_path):
    model_dir = tmp_path / "model"
    config = te.RunConfig(device="cpu", save_checkpoints_steps=5, log_step_count_steps=None, save_summary_steps=None)
    te.Estimator(classifier_fn, model_dir=str(model_dir), model=TinyNet(), config=config,
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)).train(_train_fn(data), steps=10)
    trained = ckpt.read_checkpoint(str(model_dir / "model.ckpt-10.safetensors")).model
    adam = te.Estimator(classifier_fn, model_dir=str(model_dir), model=TinyNet(), config=config,
                        optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    assert int(adam.evaluate(_eval_fn(data))["global_step"]) == 10  # the weights are all evaluation needs
    assert len(list(adam.predict(numpy_input_fn({"x": data[0]}, batch_size=25, shuffle=False)))) == 100
    assert _same(_weights(adam), trained)
    before = _snapshot(model_dir)
    with pytest.raises(ValueError, match=r"model.ckpt-10.safetensors holds the state of a different optimizer than this "
                                         r"Estimator's Adam \(parameter group 0 lacks its settings \[.*'betas'.*\] and has "
                                         r"\[.*'momentum'.*\]\).*warm_start_from=<this model_dir>"):
        adam.train(_train_fn(data), steps=5)
    assert _snapshot(model_dir) == before and _same(_weights(adam), trained)  # nothing loaded, nothing written
    assert int(adam.evaluate(_eval_fn(data))["global_step"]) == 10
    # The fix the message gives: the weights into a new model_dir, Adam from scratch.
    switched = te.Estimator(classifier_fn, model_dir=str(tmp_path / "adam"), model=TinyNet(), config=config,
                            optimizer=lambda p: torch.optim.Adam(p, lr=0.01), warm_start_from=str(model_dir))
    switched.train(_train_fn(data), steps=5)
    assert ckpt.read_checkpoint(switched.latest_checkpoint()).global_step == 5


def test_run_evaluator_falls_back_past_a_damaged_newest_checkpoint(make_estimator, data, tmp_path, caplog):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    newest = tmp_path / "model" / "model.ckpt-10.safetensors"
    _damage(str(newest))
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        result, _ = te.run_evaluator(make_estimator(), te.EvalSpec(_eval_fn(data), throttle_secs=0, start_delay_secs=0), poll_secs=0.05, timeout_secs=0.5)
    assert int(result["global_step"]) == 5
    assert re.search(re.escape(str(newest)) + r" is damaged: .* The evaluator uses the newest intact checkpoint instead: "
                     r".*model.ckpt-5.safetensors", caplog.text)
    assert caplog.text.count("is damaged") <= 3  # said once (plus the fallback's own notes), not at every poll


def test_warm_start_from_a_directory_falls_back_past_a_damaged_newest_checkpoint(make_estimator, data, tmp_path, caplog):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    _damage(str(tmp_path / "model" / "model.ckpt-10.safetensors"))
    step5 = ckpt.read_checkpoint(str(tmp_path / "model" / "model.ckpt-5.safetensors")).model
    est = te.Estimator(classifier_fn, model_dir=str(tmp_path / "warm"), model=TinyNet(), warm_start_from=str(tmp_path / "model"),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None))
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        est.evaluate(_eval_fn(data))
    assert _same(_weights(est), step5)
    assert "model.ckpt-10.safetensors is damaged" in caplog.text and "Using checkpoint" in caplog.text


@pytest.fixture
def never_blocks():
    """Fail instead of hanging if a call blocks (on a FIFO, say): SIGALRM interrupts the blocked system call."""

    def expire(signum, frame):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_index_or_newest_checkpoint_never_blocks(make_estimator, data, tmp_path, caplog, never_blocks):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    model_dir = tmp_path / "model"
    os.remove(model_dir / "checkpoint")
    os.mkfifo(model_dir / "checkpoint")
    os.mkfifo(model_dir / "model.ckpt-99.safetensors")
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert int(make_estimator().evaluate(_eval_fn(data))["global_step"]) == 10
        assert "model.ckpt-99" in ckpt.latest_checkpoint(str(model_dir))  # the cheap look does not open it
        with pytest.raises(ckpt.CheckpointCorruptError, match=r"model.ckpt-99.safetensors is not a regular file \(a FIFO"):
            make_estimator().evaluate(_eval_fn(data), checkpoint_path=str(model_dir / "model.ckpt-99.safetensors"))
        with pytest.raises(ckpt.CheckpointCorruptError, match="is not a regular file"):
            ckpt.list_variables(str(model_dir / "model.ckpt-99.safetensors"))
        warm = te.Estimator(classifier_fn, model_dir=str(tmp_path / "warm"), model=TinyNet(), warm_start_from=str(model_dir),
                            config=te.RunConfig(device="cpu"))
        assert int(warm.evaluate(_eval_fn(data))["global_step"]) == 0  # warm-started from step 10, past the FIFOs
    assert "Checkpoint index" in caplog.text and "is unreadable (it is not a regular file)" in caplog.text
    assert "model.ckpt-99.safetensors is not a regular file" in caplog.text
    os.remove(model_dir / "model.ckpt-99.safetensors")
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=5)
    assert json.loads((model_dir / "checkpoint").read_text())["model_checkpoint_path"] == "model.ckpt-15.safetensors"


@pytest.mark.parametrize("kind", ["dev-zero", "one-gigabyte", "directory"])
def test_an_index_that_is_a_device_huge_or_a_directory_is_rebuilt(make_estimator, data, tmp_path, caplog, never_blocks, kind):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    index = tmp_path / "model" / "checkpoint"
    os.remove(index)
    if kind == "dev-zero":
        os.symlink("/dev/zero", index)
    elif kind == "one-gigabyte":
        with open(index, "wb") as handle:  # sparse: costs no disk, but reading it would cost a gigabyte
            handle.truncate(1 << 30)
    else:
        index.mkdir()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.latest_checkpoint(str(tmp_path / "model")).endswith("model.ckpt-10.safetensors")
        assert int(make_estimator().evaluate(_eval_fn(data))["global_step"]) == 10
    assert time.monotonic() - started < 20
    reason = {"dev-zero": "not a regular file", "one-gigabyte": "larger than 4194304 bytes", "directory": "a directory"}[kind]
    assert f"is unreadable (it is {reason}); rebuilding it from the files present" in caplog.text
    if kind != "directory":  # training replaces it with a real index
        make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=5)
        assert json.loads(index.read_text())["model_checkpoint_path"] == "model.ckpt-15.safetensors"
    else:  # a directory is the user's: training says what to do and leaves everything as it was
        before = _snapshot(tmp_path / "model")
        with pytest.raises(IsADirectoryError, match=r"Could not write the checkpoint index .*model/checkpoint: Is a directory. "
                                                    r"The previous checkpoints and the index are unchanged; move the directory"):
            make_estimator(save_checkpoints_steps=5, save_summary_steps=None).train(_train_fn(data), steps=5)
        assert _snapshot(tmp_path / "model") == before


def _rewrite_metadata(path: Path, target: Path, **changes: str) -> None:
    """A forger's copy: other metadata, with a content hash that matches it (so only the checks on values stop it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    metadata[ckpt.CONTENT_HASH_KEY] = ckpt_hashing.content_hash(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)


def test_forged_or_odd_checkpoint_metadata_is_refused(make_estimator, data, tmp_path, caplog):
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    model_dir = tmp_path / "model"
    five = model_dir / "model.ckpt-5.safetensors"
    # Step 5's file under the name of step 30: the metadata and the name disagree; resuming there would overwrite.
    (model_dir / "model.ckpt-30.safetensors").write_bytes(five.read_bytes())
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        est = make_estimator(save_checkpoints_steps=5)
        est.train(_train_fn(data), steps=5)
    assert re.search(r"model.ckpt-30.safetensors says it is global step 5, but its name says 30: it was renamed or altered",
                     caplog.text)
    assert ckpt.read_checkpoint(str(model_dir / "model.ckpt-15.safetensors")).global_step == 15  # resumed at 10
    for value in ("-3", str(10**30), "1e3", " 7"):
        forged = tmp_path / "forged" / f"{abs(hash(value))}" / "model.ckpt-5.safetensors"
        forged.parent.mkdir(parents=True)
        _rewrite_metadata(five, forged, global_step=value)
        with pytest.raises(ckpt.CheckpointCorruptError, match=r"has damaged metadata: .*is not an int from 0 to 2\*\*63 - 1"):
            ckpt.read_checkpoint(str(forged))
    for step in (-3, 2**63, 1.5, True):
        with pytest.raises(ValueError, match=r"global step must be an int from 0 to 2\*\*63 - 1; received"):
            ckpt.CheckpointManager(str(tmp_path / "neg")).save(step, {"model": TinyNet()})
    assert not any(n.startswith("model.ckpt-") for n in os.listdir(tmp_path / "neg"))


def test_a_checkpoint_without_content_hash_warns_and_one_with_a_damaged_hash_key_is_refused(tmp_path, caplog):
    plain = tmp_path / "model.ckpt-3.safetensors"
    ckpt.write_checkpoint(str(plain), 3, {"model": TinyNet()}, content_hash=False)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.read_checkpoint(str(plain)).global_step == 3
    assert "has no content hash (written with content_hash=False); loading it unchecked" in caplog.text
    hashed = tmp_path / "flipped" / "model.ckpt-3.safetensors"
    hashed.parent.mkdir()
    ckpt.write_checkpoint(str(hashed), 3, {"model": TinyNet()})
    data = hashed.read_bytes()
    assert data.count(b'"content_hash"') == 1
    hashed.write_bytes(data.replace(b'"content_hash"', b'"content_hasi"'))  # one flipped bit in the key's name
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"is damaged: it has no content hash but unknown metadata keys "
                                                          r"\['content_hasi'\]"):
        ckpt.read_checkpoint(str(hashed))


def test_tensors_of_another_dtype_are_cast_with_a_warning(make_estimator, data, tmp_path, caplog):
    double = TinyNet().double()
    ckpt.CheckpointManager(str(tmp_path / "model")).save(7, {"model": double})
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        est = make_estimator()
        assert int(est.evaluate(_eval_fn(data))["global_step"]) == 7
    assert re.search(r"model.ckpt-7.safetensors holds tensors of another dtype than the model's; they are cast: "
                     r"hidden.bias \(float64 -> float32\), hidden.weight \(float64 -> float32\)", caplog.text)
    caplog.clear()
    half = tmp_path / "half" / "model.ckpt-1.safetensors"
    half.parent.mkdir()
    ckpt.write_checkpoint(str(half), 1, {"model": TinyNet().half()})
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path / "warm"), model=TinyNet(), warm_start_from=str(half),
                     config=te.RunConfig(device="cpu")).evaluate(_eval_fn(data))
    assert "(float16 -> float32)" in caplog.text


def test_evaluate_on_a_read_only_model_dir_warns_that_summaries_were_not_written(make_estimator, data, tmp_path, caplog, small_disk):
    est = make_estimator(model_dir=small_disk / "model", save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=5)
    _remount(small_disk, "ro")
    reader = make_estimator(model_dir=small_disk / "model")
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        result = reader.evaluate(_eval_fn(data))
    assert int(result["global_step"]) == 5 and 0 <= result["accuracy"] <= 1
    assert re.search(r"The evaluation summaries could not be written \(the metrics are returned\): \[Errno 30\] Could not "
                     r"write TensorBoard events to .*model/eval: Read-only file system", caplog.text)
    assert len(list(reader.predict(numpy_input_fn({"x": data[0]}, batch_size=25, shuffle=False)))) == 100
    with pytest.raises(PermissionError, match=r"`model_dir` .*model is not writable; checkpoints cannot be saved there"):
        reader.train(_train_fn(data), steps=1)


# ----------------------------------------------------------------------------------------------------------
# A real full disk: a small tmpfs (needs root; skipped elsewhere).


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def _leave_free(mount: Path, nbytes: int) -> None:
    """Fill ``mount`` with a filler file until exactly ``nbytes`` (a multiple of the page size) stay free."""
    filler = mount / "filler"
    page = os.statvfs(mount).f_frsize
    with open(filler, "ab") as handle:
        while True:
            free = os.statvfs(mount).f_bavail * page
            if free == nbytes:
                return
            if free > nbytes:
                handle.write(b"\0" * min(free - nbytes, 1 << 20))
                handle.flush()
                os.fsync(handle.fileno())
            else:
                handle.truncate(max(0, os.fstat(handle.fileno()).st_size - (nbytes - free)))


def _files_and_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "filler"}


def _full_disk_estimator(model_dir: Path):
    torch.manual_seed(0)
    return te.Estimator(tr.model_fn, model_dir=str(model_dir), model=tr.Net(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-4),
                        config=te.RunConfig(device="cpu", save_checkpoints_steps=2, keep_checkpoint_max=2,
                                            log_step_count_steps=None, save_summary_steps=None, progress_bar=False))


def _net_input():
    rng = np.random.default_rng(0)
    return numpy_input_fn(rng.normal(size=(64, 32)).astype("float32"), np.zeros(64, "int64"), batch_size=16, num_epochs=None, shuffle=False)


def test_a_real_full_disk_inside_the_tensor_write_is_a_clear_oserror_and_nothing_is_lost(small_disk):
    model_dir = small_disk / "model"
    est = _full_disk_estimator(model_dir)
    est.train(_net_input(), steps=4)  # checkpoints 2 and 4, about 1 MB each with Adam's state
    size = os.stat(model_dir / "model.ckpt-4.safetensors").st_size
    before = _files_and_bytes(model_dir)
    _leave_free(small_disk, 64 << 10)  # room for the lock and a sliver of the next checkpoint
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model/model.ckpt-6.safetensors: No space left on "
                                      r"device. The previous checkpoints and the index are unchanged; free disk space") as caught:
        est.train(_net_input(), steps=4)
    assert caught.value.errno == errno.ENOSPC and size > (64 << 10)
    assert _files_and_bytes(model_dir) == before  # no partial file, no temporary file, index and checkpoints as they were
    os.remove(small_disk / "filler")
    est.train(_net_input(), steps=4)  # space is back: it resumes from step 4
    assert ckpt.step_of(ckpt.latest_checkpoint(str(model_dir))) == 8


def test_a_real_full_disk_at_the_index_removes_the_new_checkpoint(small_disk):
    model_dir = small_disk / "model"
    est = _full_disk_estimator(model_dir)
    est.train(_net_input(), steps=4)
    page = os.statvfs(small_disk).f_frsize
    size = os.stat(model_dir / "model.ckpt-4.safetensors").st_size
    before = _files_and_bytes(model_dir)
    _leave_free(small_disk, (-(-size // page) + 1) * page)  # the checkpoint fits, with one page for the lock; not the index
    with pytest.raises(OSError, match=r"Could not write the checkpoint index .*model/checkpoint: No space left on device. The "
                                      r"previous checkpoints and the index are unchanged; free disk space") as caught:
        est.train(_net_input(), steps=2)
    assert caught.value.errno == errno.ENOSPC
    assert _files_and_bytes(model_dir) == before


def test_when_cleanup_fails_too_the_original_error_wins(small_disk, monkeypatch):
    model_dir = small_disk / "model"
    est = _full_disk_estimator(model_dir)
    est.train(_net_input(), steps=2)
    _leave_free(small_disk, 64 << 10)
    real_remove, real_save, failed = ckpt_files.remove, ckpt_format.save_file, []

    def save(tensors, filename, metadata=None):
        try:
            return real_save(tensors, filename, metadata=metadata)  # the disk fills, for real
        except OSError:
            failed.append(filename)
            raise

    def read_only_by_now(path):
        # Then the file system turns read-only (as ext4's errors=remount-ro does). Simulated: a real
        # `mount -o remount,ro` is refused (EBUSY) while the trainer holds files open for writing.
        if failed:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_remove(path)

    monkeypatch.setattr(ckpt_format, "save_file", save)
    monkeypatch.setattr(ckpt_files, "remove", read_only_by_now)
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model.ckpt-4.safetensors: No space left on device\..*"
                                      r"The temporary file .*model.ckpt-4.safetensors.tmp\d+ could not be removed "
                                      r"\(Read-only file system\); delete it.") as caught:
        est.train(_net_input(), steps=2)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # tensorboard's writer thread dies
def test_events_on_a_real_full_disk_are_a_clear_oserror(small_disk):
    _leave_free(small_disk, 0)
    logdir = small_disk / "events"
    with pytest.raises(OSError, match=r"Could not write TensorBoard events to .*events: No space left on device. Checkpoints "
                                      r"are written separately and are unaffected; free disk space") as caught:
        for step in range(50):
            te.summary.write_summaries(str(logdir), {"loss": 0.5, "weights": np.arange(1000.0)}, step)
            te.summary.flush_all()
    assert caught.value.errno == errno.ENOSPC
    os.remove(small_disk / "filler")
    te.summary.write_summaries(str(logdir), {"loss": 0.25}, 100)  # a new writer once there is room again
    te.summary.flush_all()
    assert te.summary.read_scalars(str(logdir))[100] == {"loss": 0.25}



def test_scalars_on_a_real_full_disk_are_a_clear_oserror_at_once(small_disk):
    logdir = small_disk / "scalars"
    te.summary.write_summaries(str(logdir), {"loss": 1.0}, 0)  # the event file exists
    te.summary.flush_all()
    _leave_free(small_disk, 0)
    with pytest.raises(OSError, match=r"Could not write TensorBoard events to .*scalars: No space left on device. Checkpoints "
                                      r"are written separately and are unaffected; free disk space") as caught:
        for step in range(1, 2000):  # scalars alone: written in this thread, so the first failing write raises
            te.summary.write_summaries(str(logdir), {"loss": 0.5, "lr": 0.1}, step)
    assert caught.value.errno == errno.ENOSPC
    os.remove(small_disk / "filler")
    te.summary.write_summaries(str(logdir), {"loss": 0.25}, 5000)
    te.summary.flush_all()
    scalars = te.summary.read_scalars(str(logdir))  # every record before the failure reads back whole
    assert scalars[0] == {"loss": 1.0} and scalars[5000] == {"loss": 0.25}

@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_an_export_onto_a_real_full_disk_is_a_clear_oserror_not_an_abort(make_estimator, data, tmp_path, small_disk, fmt):
    est = make_estimator(save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=5)
    receiver = te.build_raw_serving_input_receiver_fn({"x": torch.zeros(1, 4)})
    base = small_disk / "export"
    base.mkdir()
    _leave_free(small_disk, 0)  # torch's own writers abort the process here (an exception in a destructor)
    with pytest.raises(OSError, match=r"Could not write the export file .*export/temp-\d+/model.pt2?: No space left on "
                                      r"device. No new export version appeared .*; free disk space, then export again") as caught:
        est.export_saved_model(str(base), receiver, format=fmt)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(base) == []  # no version, no temporary directory
    os.remove(small_disk / "filler")
    assert os.path.basename(est.export_saved_model(str(base), receiver, format=fmt)).isdigit()


# ----------------------------------------------------------------------------------------------------------
# No pickle anywhere.


class _Payload:
    """Unpickling this creates ``marker``: the proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_everywhere(model_dir: Path, marker: Path) -> list[str]:
    """A checkpoint in every form that could smuggle a pickle; returns their paths."""
    payload = pickle.dumps(_Payload(marker))
    planted = []
    as_file = model_dir / "model.ckpt-100.safetensors"  # a bare pickle under a checkpoint's name
    as_file.write_bytes(payload)
    planted.append(str(as_file))
    torch_save = model_dir / "model.ckpt-101.safetensors"  # what torch.save writes: a zip with data.pkl
    torch.save({"x": _Payload(marker)}, torch_save)
    planted.append(str(torch_save))
    in_tensor = model_dir / "model.ckpt-102.safetensors"  # a well-formed file whose tensor bytes are a pickle
    save_file({"model/hidden.weight": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, str(in_tensor),
              metadata={"format": ckpt.CHECKPOINT_FORMAT, "global_step": "102", "state": "{}"})
    planted.append(str(in_tensor))
    in_metadata = model_dir / "model.ckpt-103.safetensors"  # the pickle where the JSON state belongs
    save_file({"model/hidden.weight": torch.zeros(1)}, str(in_metadata),
              metadata={"format": ckpt.CHECKPOINT_FORMAT, "global_step": "103", "state": payload.decode("latin-1")})
    planted.append(str(in_metadata))
    return planted


def test_pickles_planted_as_checkpoints_are_refused_without_running(make_estimator, data, tmp_path):
    marker = tmp_path / "pwned"
    est = make_estimator(save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=5)
    for path in _plant_everywhere(tmp_path / "model", marker):
        with pytest.raises(ValueError, match=re.escape(path)):
            est.evaluate(_eval_fn(data), checkpoint_path=path)
        if ckpt.step_of(path) == 102:  # well-formed: the pickle is only bytes, handed back as bytes
            data_bytes = ckpt.read_checkpoint(path).model["hidden.weight"].numpy().tobytes()
            assert data_bytes == pickle.dumps(_Payload(marker))
        else:
            with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path)):
                ckpt.read_checkpoint(path)
        with pytest.raises(ValueError):
            te.Estimator(classifier_fn, model_dir=str(tmp_path / f"warm{ckpt.step_of(path)}"), model=TinyNet(),
                         warm_start_from=path, config=te.RunConfig(device="cpu")).evaluate(_eval_fn(data))
    assert not marker.exists()


def test_a_pickle_planted_as_the_index_is_refused_and_the_index_rebuilt(make_estimator, data, tmp_path, caplog):
    marker = tmp_path / "pwned"
    make_estimator(save_checkpoints_steps=5).train(_train_fn(data), steps=10)
    (tmp_path / "model" / "checkpoint").write_bytes(pickle.dumps(_Payload(marker)))
    est = make_estimator()
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert int(est.evaluate(_eval_fn(data))["global_step"]) == 10
        est.train(_train_fn(data), steps=5)
    assert "is unreadable" in caplog.text and not marker.exists()
    assert json.loads((tmp_path / "model" / "checkpoint").read_text())["model_checkpoint_path"] == "model.ckpt-15.safetensors"


# Exports: every reader (the loader, `torch-estimator show` and `run`, the server's version poll) refuses a
# damaged or forged export, naming the file, and runs nothing from it.


def _export_all(make_estimator, data, base: Path) -> Path:
    est = make_estimator(save_checkpoints_steps=5)
    est.train(_train_fn(data), steps=5)
    receiver_fn = te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 4], torch.float32)})
    return Path(est.export_saved_model(base, receiver_fn, format="all"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "torch_estimator.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _assert_every_reader_refuses(version: Path, format: str, expected: str) -> None:
    from torch_estimator.serving import loader, versions

    with pytest.raises(ValueError, match=expected):
        loader.load(version, format=format)
    for args in (["show", "--dir", str(version), "--all", "--format", format],
                 ["run", "--dir", str(version), "--format", format, "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]"]):
        result = _cli(*args)
        assert result.returncode == 1 and re.search(expected, result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr and "Result for output" not in result.stdout
    manager = versions.VersionManager(str(version.parent), "m", load_fn=lambda path: loader.load(path, format=format))
    manager.poll()
    assert manager.latest is None
    (status,) = manager.statuses()
    assert status.state == "END" and re.search(expected, status.error_message), status


@pytest.mark.parametrize("name,format", [("model.pt", "torchscript"), ("model.pt2", "pt2")])
def test_a_flipped_byte_in_an_exported_weight_is_refused_everywhere(make_estimator, data, tmp_path, name, format):
    import zipfile

    version = _export_all(make_estimator, data, tmp_path / "exports")
    archive = version / name
    with zipfile.ZipFile(archive) as zipped:  # the first tensor record: hidden.weight's bytes
        info = next(i for i in zipped.infolist() if re.search(r"/data/(weights/weight_)?\d+$", i.filename))
    raw = bytearray(archive.read_bytes())
    name_length, extra_length = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length  # the local header's lengths (torch pads its extra)
    raw[start + 2] ^= 0x40
    archive.write_bytes(bytes(raw))
    _assert_every_reader_refuses(version, format, re.escape(str(archive)) + " is damaged or was altered after export")


def test_a_pickle_planted_in_model_pt2_runs_nowhere(make_estimator, data, tmp_path):
    import zipfile

    from torch_estimator.serving import loader

    marker = tmp_path / "pwned"
    version = _export_all(make_estimator, data, tmp_path / "exports")
    archive = version / "model.pt2"
    with zipfile.ZipFile(archive) as zipped:
        members = {info.filename: zipped.read(info) for info in zipped.infolist()}
    with zipfile.ZipFile(archive, "w") as zipped:
        for member, content in members.items():
            planted = member.endswith("/data/sample_inputs/model.pt")
            zipped.writestr(member, pickle.dumps(_Payload(marker)) if planted else content)
    signature = json.loads((version / "signature.json").read_text())  # a forger rewrites the recorded hash too
    signature["files"]["model.pt2"] = loader.file_record(archive.read_bytes())
    (version / "signature.json").write_text(json.dumps(signature))
    _assert_every_reader_refuses(version, "pt2", r"model.pt2 holds sample inputs for program 'model'")
    assert not marker.exists()


def test_a_signature_json_edited_beside_the_model_is_refused_by_show_load_and_serve(make_estimator, data, tmp_path):
    version = _export_all(make_estimator, data, tmp_path / "exports")
    signature = json.loads((version / "signature.json").read_text())
    signature["signatures"]["serving_default"]["inputs"]["x"]["shape"] = [-1, 5]
    (version / "signature.json").write_text(json.dumps(signature))
    for format in ("torchscript", "pt2"):
        _assert_every_reader_refuses(version, format, "signature.json disagrees with the copy embedded in")


def test_the_package_never_calls_pickle():
    """No module imports pickle, and torch.load / numpy.load only ever run with pickles disabled."""
    offenders = []
    for path in sorted((ROOT / "torch_estimator").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bimport (c?pickle|dill|joblib|shelve|marshal)\b|\bfrom (c?pickle|dill|joblib) import", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"\b(np|numpy)\.load\(", code) and "allow_pickle=False" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


# ----------------------------------------------------------------------------------------------------------
# Kill at any moment (slow: about 55 subprocesses, each importing torch; 3 to 6 minutes on 2 idle cores).

KILL_SCRIPT = ROOT / "tests" / "reliability" / "train_to_step.py"
KILL_MAX_STEPS = 200
KILLS = 50


def _events(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a SIGKILL can cut nothing short: each line is one write(2)
            out.append((parts[0], int(parts[1]), float(parts[2])))
    return out


def _start(model_dir: Path, events: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(KILL_SCRIPT), str(model_dir), str(KILL_MAX_STEPS), str(events)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _temp_files(model_dir: Path) -> set[str]:
    return {n for n in os.listdir(model_dir) if ".tmp" in n} if model_dir.exists() else set()


def _complete_steps(model_dir: Path, verified: list[str]) -> list[int]:
    """Steps of every file under a checkpoint's final name, each of which must be complete and intact."""
    steps = []
    for name in sorted(os.listdir(model_dir)) if model_dir.exists() else []:
        if ckpt.step_of(name) is not None:
            steps.append(ckpt.verify_checkpoint(str(model_dir / name)))  # raises on a partial file
            verified.append(name)
    return sorted(steps)


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_exactly(tmp_path):
    rng = random.Random(20240607)
    reference_dir, model_dir = tmp_path / "reference", tmp_path / "model"
    reference = _start(reference_dir, tmp_path / "reference.events")  # runs alongside the kills
    kills = {"startup": 0, "training": 0, "saving": 0}
    expected_resume, pending_temps, pace, cycles, verified, cleaned = 0, set(), None, 0, [], 0
    while True:
        cycles += 1
        events_path = tmp_path / f"events.{cycles}"
        process = _start(model_dir, events_path)
        killed = kills["training"] + kills["saving"] < KILLS  # startup kills come on top
        if killed:
            if rng.random() < 0.15:  # during startup: imports, restore, temp-file cleanup
                time.sleep(rng.uniform(0.0, 2.0))
            else:  # during training: at a random step after it resumed, spread so that the run lasts (counted in
                # steps, not seconds: a machine whose load changes makes any pace estimate wrong), then a moment
                # later, in a step or in a save
                deadline = time.time() + 120
                while not any(e[0] == "R" for e in _events(events_path)) and process.poll() is None:
                    assert time.time() < deadline, "the training subprocess never started"
                    time.sleep(0.005)
                done = max((e[1] for e in _events(events_path)), default=0)
                remaining_kills = max(1, KILLS - kills["training"] - kills["saving"])
                span = max(1, (KILL_MAX_STEPS - done) // (remaining_kills + 2))
                target = done + rng.randint(1, 2 * span)
                while max((e[1] for e in _events(events_path)), default=0) < target and process.poll() is None:
                    assert time.time() < deadline, "the training subprocess stopped making progress"
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 1.0 / (pace or 100.0)))
            process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        events = _events(events_path)
        if killed and process.returncode == -signal.SIGKILL:
            starts = [e for e in events if e[0] == "R"]
            if not starts:
                kills["startup"] += 1
            elif events[-1][0] == "B":
                kills["saving"] += 1
            else:
                kills["training"] += 1
        else:
            assert process.returncode == 0, stderr.decode()[-3000:]
        resumes = [e for e in events if e[0] == "R"]
        if resumes:  # every restart finds the last complete checkpoint
            assert resumes[0][1] == expected_resume, (cycles, resumes[0], expected_resume)
            saves = [e for e in events if e[0] in "BA"]
            if len(saves) >= 2 and saves[-1][1] > resumes[0][1]:
                pace = (saves[-1][1] - resumes[0][1]) / max(1e-3, saves[-1][2] - resumes[0][2])
        if resumes and any(e[0] == "A" and e[1] > resumes[0][1] for e in events):
            # This process saved (not just the notice of the resumed step), so it cleaned up what earlier kills left.
            assert not pending_temps & _temp_files(model_dir), (cycles, pending_temps)
            cleaned, pending_temps = cleaned + len(pending_temps), set()
        # No partial file under a final name; the index (or the files, should the index be behind) leads to
        # the newest complete checkpoint, which is where the next start must resume.
        steps = _complete_steps(model_dir, verified)
        latest = ckpt.latest_checkpoint(str(model_dir))
        assert (ckpt.step_of(latest) if latest else None) == (steps[-1] if steps else None)
        expected_resume = steps[-1] if steps else 0
        pending_temps |= _temp_files(model_dir)
        if process.returncode == 0:
            break
    _, reference_stderr = reference.communicate(timeout=300)  # also closes its pipe
    assert reference.returncode == 0, reference_stderr.decode()[-3000:]
    assert kills["training"] + kills["saving"] >= KILLS, kills
    assert events[-1][:2] == ("E", KILL_MAX_STEPS)
    assert _temp_files(model_dir) == set()
    # Bit-identical to the run that was never interrupted: every tensor, every JSON state, hence the hash.
    final = ckpt.read_checkpoint(str(model_dir / f"model.ckpt-{KILL_MAX_STEPS}.safetensors"))
    expected = ckpt.read_checkpoint(str(reference_dir / f"model.ckpt-{KILL_MAX_STEPS}.safetensors"))
    assert _same(final.model, expected.model), "model weights differ from the uninterrupted run"
    assert _same_state(final.state, expected.state), "optimizer, scheduler, RNG or input state differs"
    print(f"\nkill test: {sum(kills.values())} kills {kills} in {cycles} starts; {len(verified)} checkpoint files "
          f"verified; {cleaned} leftover temporary files cleaned up; final weights bit-identical")


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


# ----------------------------------------------------------------------------------------------------------
# The bad-input catalogue (docs/bad_inputs.md): one case per row. Each runs against a model_dir that holds a
# checkpoint (so training resumes and writes nothing before its first save) and proves the error message and
# that nothing under tmp_path changed: no file created, removed, resized or touched.


class CommandFailed(Exception):
    """A command line's failure: its exit status and what it printed to stderr."""


TF_FIXTURES = ROOT / "tests" / "fixtures" / "tf"


def make_tiny_net() -> torch.nn.Module:  # the --model callable of the convert-checkpoint cases
    return TinyNet()


def _set_tf_dtype(index: Path, name: str, dtype: int) -> None:
    """Rewrite ``name``'s dtype in a TF checkpoint index (a one-byte varint for another), and its block's checksum."""
    from torch_estimator.tf_checkpoint import _messages, _Table, _varint
    from torch_estimator.tfrecord import masked_crc32c

    table = _Table(str(index))
    entry = _messages()["BundleEntryProto"].FromString(dict(table.items())[name.encode()])
    before = entry.SerializeToString()
    entry.dtype = dtype
    after = entry.SerializeToString()
    raw = bytearray(index.read_bytes())
    at = raw.find(before)
    assert len(before) == len(after) and at >= 0 and raw.find(before, at + 1) < 0
    raw[at:at + len(after)] = after
    for _, handle in table._entries(table._index):  # the data block holding the entry: its checksum again
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        if offset <= at < offset + size:
            raw[offset + size + 1:offset + size + 5] = masked_crc32c(bytes(raw[offset:offset + size + 1])).to_bytes(4, "little")
    index.write_bytes(bytes(raw))


class Env:
    """What a case may use: ``dir`` holds a trained TinyNet checkpoint at step 5; ``x``/``y`` fit it."""

    def __init__(self, tmp_path: Path, data) -> None:
        self.tmp, self.dir = tmp_path, tmp_path / "model"
        self.x, self.y = data
        self.quiet = te.RunConfig(device="cpu", log_step_count_steps=None, save_summary_steps=None, save_checkpoints_steps=100)
        self.foreign = tmp_path / "other" / "model.ckpt-1.safetensors"  # safetensors, but not a checkpoint
        self.truncated = tmp_path / "other" / "model.ckpt-5.safetensors"

    def prepare(self) -> Env:
        self.foreign.parent.mkdir()
        save_file({"w": torch.zeros(2)}, str(self.foreign))
        self.truncated.write_bytes((self.dir / "model.ckpt-5.safetensors").read_bytes()[:-40])
        self.renamed = self.tmp / "other" / "model.ckpt-9.safetensors"  # step 5's file under step 9's name
        self.renamed.write_bytes((self.dir / "model.ckpt-5.safetensors").read_bytes())
        self.dir_index = self.tmp / "dir_index"  # the trained model_dir, with a directory where the index belongs
        shutil.copytree(self.dir, self.dir_index)
        os.remove(self.dir_index / "checkpoint")
        (self.dir_index / "checkpoint").mkdir()
        self.dangling = self.tmp / "dangling"
        os.symlink(self.tmp / "nowhere", self.dangling)
        self._prepare_tf()
        return self

    def _prepare_tf(self) -> None:
        """TFRecord files of 4 examples that fit TinyNet (``records/``), and TF 2.15's canned DNN model_dir
        (``tf/dnn``) with one file missing, damaged or altered in each copy beside it."""
        from torch_estimator.tf_example import make_example
        from torch_estimator.tfrecord import write_records

        records = self.tmp / "records"
        records.mkdir()
        examples = [make_example({"x": [float(v) for v in self.x[i]], "y": int(self.y[i])}).SerializeToString()
                    for i in range(4)]
        write_records(records / "good.tfrecord", examples)
        write_records(records / "good.tfrecord.gz", examples, "GZIP")
        raw = (records / "good.tfrecord").read_bytes()
        self.record_size = len(raw) // 4  # the records have the same size: the second starts here
        for name, position in (("bad-data", self.record_size + 20), ("bad-length", self.record_size + 9)):
            damaged = bytearray(raw)
            damaged[position] ^= 0xFF  # inside the second record's data, or its length's checksum
            (records / f"{name}.tfrecord").write_bytes(bytes(damaged))
        (records / "truncated.tfrecord").write_bytes(raw[:-7])
        tf = self.tmp / "tf"
        for variant in ("dnn", "no-index", "no-data", "bad-data", "string-variable"):
            shutil.copytree(TF_FIXTURES / "dnn", tf / variant)
        prefix = "model.ckpt-5"
        (tf / "no-index" / f"{prefix}.index").unlink()
        (tf / "no-data" / f"{prefix}.data-00000-of-00001").unlink()
        data = tf / "bad-data" / f"{prefix}.data-00000-of-00001"
        damaged = bytearray(data.read_bytes())
        damaged[40] ^= 0xFF
        data.write_bytes(bytes(damaged))
        _set_tf_dtype(tf / "string-variable" / f"{prefix}.index", "dnn/logits/bias", 7)  # DT_STRING

    def records(self, name: str, **kwargs):
        spec = {"x": FixedLenFeature([4], torch.float32), "y": FixedLenFeature([], torch.int64), **kwargs.pop("spec", {})}
        options = {"batch_size": 4, "num_epochs": None, "shuffle": False, "label_key": "y", **kwargs}
        return tfrecord_input_fn(str(self.tmp / "records" / name), spec, **options)

    def warm_from_tf(self, variant: str, **kwargs):
        settings = te.WarmStartSettings(str(self.tmp / "tf" / variant), **kwargs)
        return self.est(model_dir=self.tmp / "fresh", warm_start_from=settings).train(self.train_fn(), steps=1)

    def convert(self, *args: str) -> None:
        """``torch-estimator convert-checkpoint ARGS``; its error line (exit status 1) raised as CommandFailed."""
        from torch_estimator import cli

        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            status = cli.main(["convert-checkpoint", *args])
        if status:
            raise CommandFailed(f"exit status {status}: {stderr.getvalue().strip()}")


    def est(self, model_fn=classifier_fn, model=None, model_dir=None, config=None, **kwargs):
        config = config or te.RunConfig(device="cpu", log_step_count_steps=None, save_checkpoints_steps=100)
        return te.Estimator(model_fn, model_dir=str(model_dir or self.dir), model=model if model is not None else TinyNet(),
                            optimizer=kwargs.pop("optimizer", lambda p: torch.optim.SGD(p, lr=0.1)), config=config, **kwargs)

    def train_fn(self, **kwargs):
        return numpy_input_fn({"x": self.x}, self.y, batch_size=10, num_epochs=None, shuffle=True, seed=3, **kwargs)

    def eval_fn(self):
        return numpy_input_fn({"x": self.x}, self.y, batch_size=25, shuffle=False)

    def batches(self, features, labels=None):
        return lambda: [(features, labels)] if labels is not None else [features]

    def train(self, input_fn=None, model_fn=classifier_fn, **kwargs):
        return self.est(model_fn).train(input_fn or self.train_fn(), steps=kwargs.pop("steps", 3), **kwargs)

    def predict(self, model_fn=classifier_fn, **kwargs):
        return list(self.est(model_fn).predict(numpy_input_fn({"x": self.x}, batch_size=25, shuffle=False), **kwargs))


def _spec_fn(make_spec):
    """A model_fn that returns ``make_spec(features, labels, mode, logits)``."""

    def model_fn(features, labels, mode, model):
        return make_spec(features, labels, mode, model(features["x"]))

    return model_fn


def _loss(labels, logits):
    return torch.nn.functional.cross_entropy(logits, labels)


class Wider(torch.nn.Module):  # TinyNet plus one layer
    def __init__(self):
        super().__init__()
        self.hidden, self.extra, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.extra(torch.relu(self.hidden(x))))


class Smaller(torch.nn.Module):  # TinyNet without its hidden layer
    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.out(x)


class Narrower(torch.nn.Module):  # TinyNet with 3 hidden units
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


class AskFor(te.Hook):
    def __init__(self, name):
        self.name = name

    def before_run(self, run_context):
        return {self.name}


def _read_only_fs(tensors, filename, metadata=None):
    raise OSError(errno.EROFS, "Read-only file system", filename)


def _while_locked(e):
    with te.lock.ModelDirLock(str(e.dir)):  # another trainer holds model_dir (here, in this process)
        e.est().train(e.train_fn(), steps=1)


def _hidden_nan_fn(features, labels, mode, model):
    """A finite loss with a NaN gradient: where() selects 0, but sqrt's gradient of a negative number is NaN."""
    logits = model(features["x"])
    shifted = model.out.bias[0] - 10.0
    penalty = torch.where(shifted > 0, torch.sqrt(shifted), torch.zeros_like(shifted))
    return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels) + penalty)


def _cfg(**kwargs):
    return lambda env: te.RunConfig(**kwargs)


def _needs_diff(*args, **kwargs):
    return pytest.param(*args, **kwargs, marks=())


F32 = np.float32
CASES = [
    # --- input_fn ---------------------------------------------------------------------------------------
    pytest.param(lambda e: e.train(input_fn=[1, 2]), TypeError, r"`input_fn` must be a callable returning batches; received list", id="input_fn-not-callable"),
    pytest.param(lambda e: e.train(input_fn=lambda batch_size: []), ValueError, r"`input_fn` has an argument 'batch_size' the Estimator cannot provide", id="input_fn-unknown-argument"),
    pytest.param(lambda e: e.train(input_fn=lambda: torch.zeros(3, 4)), TypeError, r"`input_fn` must return an iterable of batches .* received Tensor", id="input_fn-returns-a-tensor"),
    pytest.param(lambda e: e.train(input_fn=lambda: {"x": e.x}), TypeError, r"`input_fn` must return an iterable of batches .* received dict", id="input_fn-returns-a-dict"),
    pytest.param(lambda e: e.train(input_fn=lambda: [({"x": e.x}, e.y, e.y)]), ValueError, r"input_fn yielded a tuple of 3 items; yield \(features, labels\)", id="input_fn-yields-3-tuples"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": e.x[:10]}, e.y[:9])), ValueError, r"different batch sizes .*\{\"features\['x'\]\": 10, 'labels': 9\}", id="batch-sizes-differ"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": e.x[:10], "w": e.x[:8]}, e.y[:10])), ValueError, r"different batch sizes .*\"features\['w'\]\": 8", id="feature-batch-sizes-differ"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": torch.tensor(1.0)}, e.y[:1])), ValueError, r"features\['x'\] is a 0-dimensional tensor; every input needs a batch dimension", id="feature-without-batch-dim"),
    pytest.param(lambda e: e.train(input_fn=e.batches("some text", e.y[:1])), TypeError, r"features must be a Tensor, a list/tuple of Tensors or a dict of Tensors .* received str", id="features-a-string"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": [[1.0, 2.0, 3.0, 4.0]]}, e.y[:1])), TypeError, r"features\['x'\] must be a Tensor or numpy array; received list", id="feature-a-python-list"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": np.array(["a", "b"])}, e.y[:2])), TypeError, r"features\['x'\] must be numeric; received a numpy array of dtype <U1", id="feature-of-strings"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": e.x[:10]}, e.y[:10].astype(F32))), RuntimeError, r"expected target dtype to be Long or Byte, but got Float", id="labels-wrong-dtype"),
    pytest.param(lambda e: e.train(input_fn=e.batches({"x": e.x[:10]}, e.y[:10, None])), RuntimeError, r"0D or 1D target tensor expected, multi-target not supported", id="labels-wrong-shape"),
    pytest.param(lambda e: e.est().evaluate(lambda: []), ValueError, r"evaluate: input_fn yielded no batches", id="evaluate-empty-input"),
    pytest.param(lambda e: e.train(model_fn=lambda features, mode, model: None), ValueError, r"model_fn does not declare `labels`, but input_fn returns labels", id="labels-not-declared"),
    # --- numpy_input_fn ---------------------------------------------------------------------------------
    pytest.param(lambda e: numpy_input_fn(e.x, e.y), ValueError, r"numpy_input_fn `shuffle` must be given explicitly as True or False", id="numpy-shuffle-not-given"),
    pytest.param(lambda e: numpy_input_fn(e.x, e.y, batch_size=0, shuffle=False), ValueError, r"numpy_input_fn `batch_size` must be an int > 0; received 0", id="numpy-batch-size-0"),
    pytest.param(lambda e: numpy_input_fn(e.x, e.y, num_epochs=0, shuffle=False), ValueError, r"numpy_input_fn `num_epochs` must be an int > 0 or None; received 0", id="numpy-num-epochs-0"),
    pytest.param(lambda e: numpy_input_fn(e.x, e.y[:50], shuffle=False), ValueError, r"x and y must have the same number of examples; received \{'x': 100, 'y': 50\}", id="numpy-x-y-lengths-differ"),
    pytest.param(lambda e: numpy_input_fn([[1.0]], shuffle=False), TypeError, r"numpy_input_fn `x` must be a numpy array or a dict of them; received list", id="numpy-x-a-list"),
    pytest.param(lambda e: numpy_input_fn(np.zeros((0, 4)), shuffle=False), ValueError, r"numpy_input_fn `x` must have at least one example; received shape \(0, 4\)", id="numpy-x-empty"),
    pytest.param(lambda e: numpy_input_fn({"x": e.x}, {"x": e.y}, shuffle=False), ValueError, r"x and y have duplicate keys \['x'\]", id="numpy-duplicate-keys"),
    pytest.param(lambda e: numpy_input_fn({}, shuffle=False), ValueError, r"numpy_input_fn `x` is an empty dict", id="numpy-x-empty-dict"),
    pytest.param(lambda e: numpy_input_fn(np.zeros((100, 0)), e.y, shuffle=False), ValueError, r"numpy_input_fn: x cannot be an empty array; received shape \(100, 0\)", id="numpy-x-no-values"),
    # --- model_fn and EstimatorSpec ---------------------------------------------------------------------
    pytest.param(lambda e: e.est(model_fn=None), ValueError, r"`model_fn` must be a callable returning an EstimatorSpec; received None", id="model_fn-not-callable"),
    pytest.param(lambda e: e.est(model_fn=lambda features, labels, mode, extra: None), ValueError, r"has an unexpected argument 'extra'; it may declare only", id="model_fn-unknown-argument"),
    pytest.param(lambda e: e.est(model_fn=lambda labels, mode: None), ValueError, r"must declare a `features` argument", id="model_fn-without-features"),
    pytest.param(lambda e: e.est(params={"lr": 0.1}), ValueError, r"`params` were given to the Estimator \(\{'lr': 0.1\}\) but model_fn does not declare `params`", id="params-not-declared"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: {"loss": _loss(l, logits)})), TypeError, r"model_fn must return an EstimatorSpec; it returned dict", id="model_fn-returns-a-dict"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: None)), TypeError, r"model_fn must return an EstimatorSpec; it returned NoneType", id="model_fn-returns-None"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(te.ModeKeys.EVAL, loss=_loss(l, logits)))), ValueError, r"model_fn was called in mode 'train' but returned an EstimatorSpec for 'eval'", id="spec-for-another-mode"),
    pytest.param(lambda e: e.predict(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, predictions=logits, export_outputs={"serving_default": logits}))), TypeError, r"EstimatorSpec `export_outputs\['serving_default'\]` must be an ExportOutput", id="spec-export-output-a-tensor"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, loss=torch.nn.functional.cross_entropy(logits, l, reduction="none")))), ValueError, r"EstimatorSpec `loss` must be a scalar \(shape \[\] or \[1\]\); received shape \[10\]. Reduce it, e.g. loss.mean\(\)", id="loss-not-scalar"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, loss=0.5))), TypeError, r"EstimatorSpec `loss` must be a scalar Tensor; received float 0.5", id="loss-a-float"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, predictions=logits))), ValueError, r"EstimatorSpec\(mode='train'\) needs `loss`", id="train-spec-without-loss"),
    pytest.param(lambda e: e.predict(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m))), ValueError, r"EstimatorSpec\(mode='infer'\) needs `predictions`", id="predict-spec-without-predictions"),
    pytest.param(lambda e: e.predict(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, predictions={"logits": logits, "first": logits[:1]}))), ValueError, r"Predictions must share their batch length .*\{'logits': 25, 'first': 1\}", id="predictions-of-different-lengths"),
    pytest.param(lambda e: e.predict(predict_keys=["classes", "logits"]), ValueError, r"`predict_keys` \['logits'\] are not among the predictions \['classes', 'probabilities'\]", id="predict_keys-missing"),
    pytest.param(lambda e: e.predict(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, predictions=logits)), predict_keys="logits"), ValueError, r"`predict_keys` only applies to dict predictions; model_fn returned a Tensor", id="predict_keys-with-tensor-predictions"),
    pytest.param(lambda e: e.predict(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, predictions={"classes": logits.argmax(1).tolist()}))), TypeError, r"EstimatorSpec `predictions\['classes'\]` must be a Tensor; received list", id="prediction-not-a-tensor"),
    pytest.param(lambda e: e.est(_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, loss=_loss(l, logits), eval_metric_ops={"loss": te.metrics.mean(_loss(l, logits))}))).evaluate(e.eval_fn()), ValueError, r"eval_metric_ops may not be named 'loss'", id="metric-named-loss"),
    pytest.param(lambda e: e.est(_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, loss=_loss(l, logits), eval_metric_ops={"acc": 0.5}))).evaluate(e.eval_fn()), TypeError, r"EstimatorSpec `eval_metric_ops\['acc'\]` must be a metric", id="metric-not-a-metric"),
    pytest.param(lambda e: e.est(optimizer=None).train(e.train_fn(), steps=1), ValueError, r"TRAIN needs a way to step: give the Estimator an `optimizer`", id="no-optimizer-no-train_op"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec(m, loss=_loss(l, logits), train_op="sgd"))), TypeError, r"EstimatorSpec `train_op` must be a callable train_op\(loss\)", id="train_op-not-callable"),
    pytest.param(lambda e: e.train(model_fn=_spec_fn(lambda f, l, m, logits: te.EstimatorSpec("training", loss=_loss(l, logits)))), ValueError, r"EstimatorSpec `mode` must be one of ModeKeys.TRAIN/EVAL/PREDICT", id="spec-unknown-mode"),
    pytest.param(lambda e: e.train(hooks=[AskFor("logits")]), ValueError, r"A hook requested 'logits', which this step \(train\) does not have; available: \[", id="hook-asks-for-a-missing-tensor"),
    # --- Estimator, train, evaluate arguments -----------------------------------------------------------
    pytest.param(lambda e: e.est().train(e.train_fn(), steps=5, max_steps=10), ValueError, r"Give `steps` or `max_steps`, not both; received steps=5, max_steps=10", id="steps-and-max_steps"),
    pytest.param(lambda e: e.est().train(e.train_fn(), steps=0), ValueError, r"`steps` must be an int > 0 or None; received 0", id="steps-0"),
    pytest.param(lambda e: e.est().train(e.train_fn(), max_steps=-3), ValueError, r"`max_steps` must be an int > 0 or None; received -3", id="max_steps-negative"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), steps=0), ValueError, r"`steps` must be an int > 0 or None; received 0", id="evaluate-steps-0"),
    pytest.param(lambda e: te.Estimator(classifier_fn, model_dir=str(e.dir), model=TinyNet(), config={"device": "cpu"}), ValueError, r"`config` must be a torch_estimator.RunConfig; received dict", id="config-a-dict"),
    pytest.param(lambda e: e.est(model="TinyNet"), TypeError, r"`model` must be an nn.Module or a factory params -> nn.Module; received 'TinyNet'", id="model-a-string"),
    pytest.param(lambda e: e.est(model=lambda params: "net"), TypeError, r"The `model` factory must return an nn.Module; it returned str", id="model-factory-returns-a-string"),
    pytest.param(lambda e: e.est(optimizer="sgd"), TypeError, r"`optimizer` must be an Optimizer or a factory parameters -> Optimizer; received 'sgd'", id="optimizer-a-string"),
    pytest.param(lambda e: e.est(optimizer=torch.optim.SGD(TinyNet().parameters(), lr=0.1)), ValueError, r"`optimizer` updates 4 tensors that are not parameters of `model`; pass a factory instead", id="optimizer-of-another-model"),
    pytest.param(lambda e: e.est(optimizer=None, lr_scheduler=lambda o: None), ValueError, r"`lr_scheduler` needs an `optimizer`", id="lr_scheduler-without-optimizer"),
    pytest.param(lambda e: e.est(config=te.RunConfig(device="cpu", model_dir=str(e.tmp / "elsewhere"))), ValueError, r"`model_dir` is set both in the constructor .* and in RunConfig .* with different values", id="model_dir-conflict"),
    pytest.param(lambda e: te.Estimator(classifier_fn, model_dir="", model=TinyNet()), ValueError, r"`model_dir` must be a non-empty path; received ''", id="model_dir-empty"),
    pytest.param(lambda e: e.est().train(e.train_fn(), steps=1, hooks=AskFor("loss")), TypeError, r"`hooks` must be a list of hooks; received AskFor", id="hooks-not-a-list"),
    pytest.param(lambda e: e.est().train(e.train_fn(), steps=1, hooks=[print]), TypeError, r"`hooks` must contain torch_estimator.Hook instances; received builtin_function_or_method", id="hook-not-a-hook"),
    pytest.param(lambda e: e.est().train(e.train_fn(), steps=1, saving_listeners=[object()]), TypeError, r"`saving_listeners` must contain CheckpointSaverListener instances", id="listener-not-a-listener"),
    pytest.param(lambda e: e.est(config=te.RunConfig(device="cpu", save_checkpoints_steps=None, save_checkpoints_secs=None)).train(e.train_fn(), steps=1, saving_listeners=[te.CheckpointSaverListener()]), ValueError, r"`saving_listeners` need checkpoints: set RunConfig.save_checkpoints_steps or save_checkpoints_secs", id="listeners-without-checkpoints"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), name=3), ValueError, r"`name` must be a string or None; received 3", id="evaluate-name-not-a-string"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), checkpoint_path=str(e.dir / "model.ckpt-99.safetensors")), ValueError, r"`checkpoint_path` .*model.ckpt-99.safetensors does not exist", id="checkpoint_path-missing"),
    # --- RunConfig ----------------------------------------------------------------------------------------
    pytest.param(lambda e: te.RunConfig(save_checkpoints_steps=10, save_checkpoints_secs=60), ValueError, r"RunConfig `save_checkpoints_steps` \(10\) and `save_checkpoints_secs` \(60\) cannot both be set", id="config-both-save-frequencies"),
    pytest.param(lambda e: te.RunConfig(save_checkpoints_steps=0), ValueError, r"RunConfig `save_checkpoints_steps` must be an int >= 1 or None; received 0", id="config-save_checkpoints_steps-0"),
    pytest.param(lambda e: te.RunConfig(save_checkpoints_secs=-1), ValueError, r"RunConfig `save_checkpoints_secs` must be a number > 0 or None; received -1", id="config-save_checkpoints_secs-negative"),
    pytest.param(lambda e: te.RunConfig(keep_checkpoint_max=-1), ValueError, r"RunConfig `keep_checkpoint_max` must be an int >= 0 or None; received -1", id="config-keep_checkpoint_max-negative"),
    pytest.param(lambda e: te.RunConfig(keep_checkpoint_every_n_hours=0), ValueError, r"RunConfig `keep_checkpoint_every_n_hours` must be a number > 0 or None; received 0", id="config-keep_every_n_hours-0"),
    pytest.param(lambda e: te.RunConfig(precision="fp8"), ValueError, r"RunConfig `precision` must be one of \('32', 'bf16', 'fp16'\); received 'fp8'", id="config-precision-unknown"),
    pytest.param(lambda e: te.RunConfig(random_seed=-1), ValueError, r"RunConfig `random_seed` must be an int >= 0 or None; received -1", id="config-random_seed-negative"),
    pytest.param(lambda e: te.RunConfig(random_seed=2**70), ValueError, r"RunConfig `random_seed` must be < 2\*\*64; received 1180591620717411303424", id="config-random_seed-too-large"),
    pytest.param(lambda e: te.RunConfig(gradient_clip_norm=float("nan")), ValueError, r"RunConfig `gradient_clip_norm` must be a finite number > 0 or None; received nan", id="config-gradient_clip_norm-nan"),
    pytest.param(lambda e: te.RunConfig(device="meta"), ValueError, r"RunConfig `device` 'meta' holds no data \(meta tensors have shapes only\); training, evaluation and prediction need a real device", id="config-device-meta"),
    pytest.param(lambda e: te.RunConfig(log_step_count_steps=0), ValueError, r"RunConfig `log_step_count_steps` must be an int >= 1 or None; received 0", id="config-log_step_count_steps-0"),
    pytest.param(lambda e: te.RunConfig(model_dir=3), TypeError, r"RunConfig `model_dir` must be a path \(str or os.PathLike\) or None; received 3", id="config-model_dir-not-a-path"),
    pytest.param(lambda e: te.RunConfig(save_checkpoints_steps=10.0), TypeError, r"RunConfig `save_checkpoints_steps` must be an int >= 1 or None; received 10.0", id="config-save_checkpoints_steps-a-float"),
    pytest.param(lambda e: te.RunConfig().replace(save_steps=3), ValueError, r"RunConfig.replace: cannot replace \['save_steps'\]; allowed fields are", id="config-replace-unknown-field"),
    pytest.param(lambda e: e.est(config=te.RunConfig(device="tpu")), ValueError, r"RunConfig `device` 'tpu' is not a valid device", id="config-device-unknown"),
    pytest.param(lambda e: e.est(config=te.RunConfig(device="cuda:0")), ValueError, r"RunConfig `device` is 'cuda:0' but CUDA is not available; use 'auto' or 'cpu'", id="config-device-cuda-unavailable",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    pytest.param(lambda e: te.RunConfig(prefetch_batches=-1), ValueError, r"RunConfig `prefetch_batches` must be an int >= 0 or None; received -1", id="config-prefetch_batches-negative"),
    pytest.param(lambda e: te.RunConfig(compile="fast"), ValueError, r"RunConfig `compile` must be True, False or one of torch.compile's modes \('default', 'reduce-overhead'.*received 'fast'", id="config-compile-unknown-mode"),
    # --- model_dir ------------------------------------------------------------------------------------------
    _needs_diff(lambda e: e.est(model_dir=e.dir / "model.ckpt-5.safetensors"), ValueError, r"`model_dir` .*model.ckpt-5.safetensors exists and is not a directory; give a directory path", id="model_dir-is-a-file"),
    pytest.param(lambda e: e.est(model_dir=e.dir / "model.ckpt-5.safetensors").train(e.train_fn(), steps=1), ValueError, r"`model_dir` .*model.ckpt-5.safetensors exists and is not a directory; give a directory path", id="model_dir-is-a-file-train"),
    pytest.param(lambda e: e.est(model_dir=e.dir / "checkpoint" / "run1").train(e.train_fn(), steps=1), ValueError, r"`model_dir` .*checkpoint/run1 cannot be created: .*checkpoint is a file, not a directory", id="model_dir-inside-a-file-train"),
    _needs_diff(lambda e: e.est(model_dir=e.dir / "checkpoint" / "run1"), ValueError, r"`model_dir` .*checkpoint/run1 cannot be created: .*checkpoint is a file, not a directory", id="model_dir-inside-a-file"),
    pytest.param(lambda e: (setattr(ckpt_format, "save_file", _read_only_fs), e.est(config=e.quiet).train(e.train_fn(), steps=100)), OSError, r"Could not write the checkpoint .*model.ckpt-105.safetensors: Read-only file system. The previous checkpoints and the index are unchanged", id="model_dir-read-only"),
    pytest.param(_while_locked, te.ModelDirLockedError, rf"`model_dir` .*model is being trained by process {os.getpid()} on host .* \(training since 20.*\): it holds the lock .*model/train.lock. Two trainers in one model_dir would overwrite", id="model_dir-locked-by-another-trainer"),
    pytest.param(lambda e: e.est(_hidden_nan_fn, config=e.quiet).train(e.train_fn(), steps=1), te.NanLossDuringTrainingError, r"The weights or optimizer state became NaN or infinite at global step 6, while the loss stayed finite.*Non-finite: \['model/out.bias'\]\. Training stopped and no checkpoint of them was written", id="weights-nan-with-a-finite-loss"),
    pytest.param(lambda e: e.est(model_dir=e.dangling), ValueError, r"`model_dir` .*dangling is a symbolic link to .*nowhere, which does not exist; create the target directory or give another model_dir", id="model_dir-dangling-symlink"),
    pytest.param(lambda e: e.est(model_dir=e.dir_index, config=e.quiet).train(e.train_fn(), steps=1), IsADirectoryError, r"\[Errno 21\] Could not write the checkpoint index .*dir_index/checkpoint: Is a directory. The previous checkpoints and the index are unchanged; move the directory .*dir_index/checkpoint away", id="index-is-a-directory-train"),
    pytest.param(lambda e: e.est(optimizer=lambda p: torch.optim.Adam(p)).train(e.train_fn(), steps=1), ValueError, r"model.ckpt-5.safetensors holds the state of a different optimizer than this Estimator's Adam \(parameter group 0 lacks its settings \[.*'betas'.*\] and has \[.*'momentum'.*\]\). To continue this model_dir, use the optimizer it was trained with; to switch optimizers, train into a new model_dir with warm_start_from=<this model_dir>", id="optimizer-switched-train"),
    # --- a checkpoint of another model, or not a checkpoint ------------------------------------------------
    pytest.param(lambda e: e.est(model=Wider()).train(e.train_fn(), steps=1), ValueError, r"model.ckpt-5.safetensors does not match the model: missing keys \['extra.bias', 'extra.weight'\], unexpected keys \[\], mis-shaped \[\]", id="checkpoint-missing-keys"),
    pytest.param(lambda e: e.est(model=Smaller()).evaluate(e.eval_fn()), ValueError, r"does not match the model: missing keys \[\], unexpected keys \['hidden.bias', 'hidden.weight'\], mis-shaped \['out.weight: checkpoint \(2, 8\) vs model \(2, 4\)'\]", id="checkpoint-unexpected-keys"),
    pytest.param(lambda e: list(e.est(model=Narrower()).predict(e.eval_fn())), ValueError, r"mis-shaped \['hidden.bias: checkpoint \(8,\) vs model \(3,\)', 'hidden.weight: checkpoint \(8, 4\) vs model \(3, 4\)', 'out.weight: checkpoint \(2, 8\) vs model \(2, 3\)'\]. Was it written by a different model\?", id="checkpoint-mis-shaped"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), checkpoint_path=str(e.foreign)), ckpt.CheckpointCorruptError, r"model.ckpt-1.safetensors is not a torch_estimator checkpoint \(format None, expected 'torch_estimator.checkpoint/1'\)", id="checkpoint-foreign-safetensors"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), checkpoint_path=str(e.dir)), ckpt.CheckpointCorruptError, r"Checkpoint path .*model is a directory, not a checkpoint file; give a file model.ckpt-<step>.safetensors", id="checkpoint_path-is-a-directory"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), checkpoint_path=str(e.renamed)), ckpt.CheckpointCorruptError, r"Checkpoint .*other/model.ckpt-9.safetensors says it is global step 5, but its name says 9: it was renamed or altered", id="checkpoint-step-differs-from-its-name"),
    pytest.param(lambda e: e.est().evaluate(e.eval_fn(), checkpoint_path=str(e.truncated)), ckpt.CheckpointCorruptError, r"Checkpoint .*other/model.ckpt-5.safetensors could not be read: .*incomplete metadata, file not fully covered. It is truncated or damaged", id="checkpoint-truncated"),
    # --- warm start (into a fresh model_dir) ------------------------------------------------------------------
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=str(e.tmp / "nothing")).train(e.train_fn(), steps=1), ValueError, r"warm_start_from: .*nothing does not exist; give a checkpoint file or a model_dir", id="warm_start-path-missing"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=str(e.tmp)).train(e.train_fn(), steps=1), ValueError, r"warm_start_from: directory .* holds no checkpoint", id="warm_start-dir-without-checkpoint"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=te.WarmStartSettings(str(e.dir), "encoder\\..*")).train(e.train_fn(), steps=1), ValueError, r"warm_start_from: no model tensor matches \['encoder\\\\..\*'\]; model tensors are \['hidden.bias'", id="warm_start-regex-matches-nothing"),
    pytest.param(lambda e: e.est(model=Narrower(), model_dir=e.tmp / "fresh", warm_start_from=str(e.dir)).train(e.train_fn(), steps=1), ValueError, r"warm_start_from .*model.ckpt-5.safetensors: hidden.weight: checkpoint \(8, 4\) vs model \(3, 4\); hidden.bias", id="warm_start-shape-mismatch"),
    pytest.param(lambda e: e.est(model=Wider(), model_dir=e.tmp / "fresh", warm_start_from=str(e.dir)).train(e.train_fn(), steps=1), ValueError, r"extra.weight \(as 'extra.weight'\) is not in the checkpoint", id="warm_start-name-missing"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=te.WarmStartSettings(str(e.dir), "hidden.weight", {"hidden.weight": "encoder.w"})).train(e.train_fn(), steps=1), ValueError, r"hidden.weight \(as 'encoder.w'\) is not in the checkpoint", id="warm_start-renamed-name-missing"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=5), ValueError, r"`warm_start_from` must be a checkpoint path, a model_dir or WarmStartSettings; received 5", id="warm_start-an-int"),
    pytest.param(lambda e: te.WarmStartSettings(str(e.dir), vars_to_warm_start="hidden.(weight"), ValueError, r"WarmStartSettings `vars_to_warm_start` has an invalid regex 'hidden.\(weight'", id="warm_start-bad-regex"),
    pytest.param(lambda e: te.WarmStartSettings(""), ValueError, r"WarmStartSettings `ckpt_to_initialize_from` must be a non-empty path", id="warm_start-empty-path"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=te.WarmStartSettings(str(e.dir), rename=[(r"encoder\.(.*)", r"\1")])).train(e.train_fn(), steps=1), ValueError, r"warm_start_from .*model.ckpt-5.safetensors: rename pattern 'encoder\\\\.\(\.\*\)' matches no name in the checkpoint; it has \['hidden.bias', 'hidden.weight', 'out.bias', 'out.weight'\]", id="warm_start-rename-matches-nothing"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=te.WarmStartSettings(str(e.dir), rename=[(r"(hidden|out)\.bias", "out.bias")])).train(e.train_fn(), steps=1), ValueError, r"model tensor 'out.bias' is renamed from two checkpoint names, 'hidden.bias' and 'out.bias'; make each rename give one name once", id="warm_start-rename-maps-twice"),
    pytest.param(lambda e: e.est(model_dir=e.tmp / "fresh", warm_start_from=te.WarmStartSettings(str(e.dir), "out.bias", rename=[(r"hidden\.bias", "out.bias")])).train(e.train_fn(), steps=1), ValueError, r"warm_start_from .*model.ckpt-5.safetensors: out.bias \(as 'hidden.bias'\): checkpoint \(8,\) vs model \(2,\)", id="warm_start-rename-shape-mismatch"),
    pytest.param(lambda e: te.WarmStartSettings(str(e.dir), rename=("a", "b")), TypeError, r"WarmStartSettings `rename` must be a list of \(regex, replacement\) pairs, .*; received tuple \('a', 'b'\)", id="warm_start-rename-not-pairs"),
    # --- TFRecord input (tfrecord_input_fn; the files are only read) -------------------------------------------
    pytest.param(lambda e: e.train(input_fn=e.records("bad-data.tfrecord")), CorruptRecordError, r"Corrupt TFRecord in .*records/bad-data.tfrecord at offset 57: the data's checksum does not match \(41 bytes\)", id="tfrecord-data-checksum"),
    pytest.param(lambda e: e.train(input_fn=e.records("bad-length.tfrecord")), CorruptRecordError, r"Corrupt TFRecord in .*records/bad-length.tfrecord at offset 57: the length's checksum does not match; this is not a TFRecord file of that compression type or it is damaged", id="tfrecord-length-checksum"),
    pytest.param(lambda e: e.train(input_fn=e.records("truncated.tfrecord")), CorruptRecordError, r"Corrupt TFRecord in .*records/truncated.tfrecord at offset 171: the file ends inside a record of 41 bytes \(truncated file\?\)", id="tfrecord-truncated"),
    pytest.param(lambda e: e.train(input_fn=e.records("good.tfrecord.gz")), CorruptRecordError, r"good.tfrecord.gz at offset 0: the length's checksum does not match; .* \(the file starts with gzip's magic bytes: pass compression_type='GZIP'\)", id="tfrecord-gzip-read-uncompressed"),
    pytest.param(lambda e: e.train(input_fn=e.records("good.tfrecord", compression_type="GZIP")), CorruptRecordError, r"good.tfrecord at offset 0: GZIP data does not decompress \(Not a gzipped file .*\); check compression_type", id="tfrecord-uncompressed-read-as-gzip"),
    pytest.param(lambda e: e.records("good.tfrecord", compression_type="SNAPPY"), ValueError, r"tfrecord_input_fn `compression_type` must be None, '', 'GZIP' or 'ZLIB' \(as TF\); received 'SNAPPY'", id="tfrecord-unknown-compression"),
    pytest.param(lambda e: e.records("train-*.tfrecord"), ValueError, r"tfrecord_input_fn: no file matches '.*records/train-\*.tfrecord'", id="tfrecord-no-file-matches"),
    pytest.param(lambda e: e.train(input_fn=e.records("good.tfrecord", spec={"x": FixedLenFeature([4], torch.int64)})), ParseError, r"Feature 'x' in the record at offset 0 of .*good.tfrecord is a float_list, but the spec's dtype torch.int64 reads an int64_list; give a matching dtype \(e.g. torch.float32\)", id="tfrecord-spec-dtype-mismatch"),
    pytest.param(lambda e: e.train(input_fn=e.records("good.tfrecord", spec={"x": FixedLenFeature([3], torch.float32)})), ParseError, r"Feature 'x' in the record at offset 0 of .*good.tfrecord has 4 values; FixedLenFeature shape \[3\] needs 3", id="tfrecord-spec-shape-mismatch"),
    pytest.param(lambda e: e.train(input_fn=e.records("good.tfrecord", spec={"w": FixedLenFeature([], torch.float32)})), ParseError, r"Feature 'w' is required but missing in the record at offset 0 of .*good.tfrecord; give the spec a default_value, or use VarLenFeature", id="tfrecord-feature-missing-without-default"),
    pytest.param(lambda e: e.records("good.tfrecord", uneven_shards="even"), ValueError, r"tfrecord_input_fn `uneven_shards` must be 'pad' \(repeat records of the shorter shards\) or 'drop' \(cut the longer ones\); received 'even'", id="tfrecord-uneven_shards-unknown"),
    pytest.param(lambda e: e.records("good.tfrecord", cache="memory"), ValueError, r"tfrecord_input_fn `cache` must be True or False; received 'memory'", id="tfrecord-cache-not-a-bool"),
    # --- TF checkpoints (warm_start_from a TF model_dir into a fresh model_dir; convert-checkpoint) ------------
    pytest.param(lambda e: e.warm_from_tf("no-index"), TFCheckpointError, r"TF checkpoint '.*tf/no-index/model.ckpt-5' has no index file '.*tf/no-index/model.ckpt-5.index'", id="tf-checkpoint-index-missing"),
    pytest.param(lambda e: e.warm_from_tf("no-data"), TFCheckpointError, r"TF checkpoint .*tf/no-data/model.ckpt-5: data file .*tf/no-data/model.ckpt-5.data-00000-of-00001 is missing", id="tf-checkpoint-data-shard-missing"),
    pytest.param(lambda e: e.warm_from_tf("bad-data"), TFCheckpointError, r"'dnn/hiddenlayer_0/kernel' in .*tf/bad-data/model.ckpt-5.data-00000-of-00001 \(offset 32\) fails its checksum: the file is damaged", id="tf-checkpoint-data-damaged"),
    pytest.param(lambda e: e.warm_from_tf("dnn"), ValueError, r"warm_start_from TF checkpoint .*tf/dnn/model.ckpt-5: no TF variable matches a model tensor; TF has \['dnn/hiddenlayer_0/bias', .*\], the model \['hidden.bias', 'hidden.weight', 'out.bias', 'out.weight'\]. Give WarmStartSettings\(var_name_to_prev_var_name=...\)", id="tf-checkpoint-nothing-matches"),
    pytest.param(lambda e: TFCheckpoint(e.tmp / "tf" / "string-variable").read("dnn/logits/bias"), TFCheckpointError, r"'dnn/logits/bias' in .*tf/string-variable/model.ckpt-5 is a string tensor; only numeric and bool variables are read", id="tf-checkpoint-string-variable-read"),
    pytest.param(lambda e: e.warm_from_tf("string-variable", var_name_to_prev_var_name={"out.bias": "dnn/logits/bias"}), ValueError, r"var_name_to_prev_var_name: 'dnn/logits/bias' \(for 'out.bias'\) is a string variable, which is not read \(only numeric and bool variables, unpartitioned, are\); leave 'out.bias' out of the mapping", id="tf-checkpoint-string-variable-mapped"),
    pytest.param(lambda e: e.convert("--tf_checkpoint", str(e.tmp / "tf" / "dnn"), "--output", str(e.tmp / "out.safetensors"), "--model", "tests.test_reliability:make_tiny_net"), CommandFailed, r"exit status 1: torch-estimator: error: no TF variable matches a model tensor; give --map or --rename. TF: \['dnn/hiddenlayer_0/bias', .*\]; model: \['hidden.bias', 'hidden.weight', 'out.bias', 'out.weight'\]", id="convert-checkpoint-nothing-matches"),
    pytest.param(lambda e: e.convert("--tf_checkpoint", str(e.tmp / "tf" / "dnn"), "--output", str(e.tmp / "out.safetensors"), "--model", "tests.test_reliability:make_tiny_net", "--map", "out.bias=dnn/logits/bia"), CommandFailed, r"exit status 1: torch-estimator: error: --map 'out.bias=dnn/logits/bia': 'dnn/logits/bia' is not in the TF checkpoint; it has \['dnn/hiddenlayer_0/bias', .*\]\. Give --map MODEL_NAME=TF_NAME with one of those TF names\.", id="convert-checkpoint-map-names-a-missing-variable"),
    pytest.param(lambda e: e.convert("--tf_checkpoint", str(e.tmp / "tf" / "no-data"), "--output", str(e.tmp / "out.safetensors")), CommandFailed, r"exit status 1: torch-estimator: error: TF checkpoint .*tf/no-data/model.ckpt-5: data file .*model.ckpt-5.data-00000-of-00001 is missing", id="convert-checkpoint-data-shard-missing"),
    pytest.param(lambda e: e.convert("--tf_checkpoint", str(e.tmp / "tf" / "dnn"), "--output", str(e.foreign)), CommandFailed, r"exit status 1: torch-estimator: error: Output file .*other/model.ckpt-1.safetensors already exists; pass --overwrite to replace it", id="convert-checkpoint-output-exists"),
    # --- exports (loading: loader.load, which show, run and the server use; see _export_variants) ------------------
    pytest.param(lambda e: _load(e, "flipped"), ValueError, r"exports/flipped/1/model.pt is damaged or was altered after export: its SHA-256 is [0-9a-f]{64}, .*signature.json records [0-9a-f]{64}", id="export-weight-byte-flipped"),
    pytest.param(lambda e: _load(e, "truncated"), ValueError, r"exports/truncated/1/model.pt is damaged or was altered after export: it is \d+ bytes, .*signature.json records \d+", id="export-truncated"),
    pytest.param(lambda e: _load(e, "pickled", "pt2"), ValueError, r"model.pt2 holds sample inputs for program 'model' \(data/sample_inputs/model.pt\), which torch would unpickle", id="export-pt2-pickled-member"),
    pytest.param(lambda e: _load(e, "edited"), ValueError, r"exports/edited/1/signature.json disagrees with the copy embedded in .*model.pt \(differing keys: \['signatures'\]\)", id="export-signature-json-edited"),
    pytest.param(lambda e: _load(e, "unhashed"), ValueError, r"signature.json records no content hash for model.pt .*cannot be verified and is refused", id="export-no-recorded-hash"),
    pytest.param(lambda e: _load(e, "bare"), ValueError, r"No signature.json beside the model in .*exports/bare/1'.*cannot be verified and is refused", id="export-signature-json-missing"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every file and directory under ``root``: size and mtime of files, the mark of directories."""
    out: dict[str, tuple[int, int] | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            out[os.path.relpath(os.path.join(directory, name), root)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    x = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    model_dir = tmp_path_factory.mktemp("trained") / "model"
    torch.manual_seed(0)
    est = te.Estimator(classifier_fn, model_dir=str(model_dir), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None, save_summary_steps=None))
    est.train(numpy_input_fn({"x": x}, y, batch_size=10, num_epochs=None, shuffle=True, seed=3), steps=5)
    return model_dir


def _load(env: Env, variant: str, format: str | None = None):
    from torch_estimator.serving import loader

    return loader.load(env.tmp / "exports" / variant / "1", format=format)


@pytest.fixture(scope="module")
def export_variants(trained_dir, tmp_path_factory) -> Path:
    """An export of ``trained_dir`` (both formats) under ``<variant>/1``: ``good``, and each damage a case loads."""
    import shutil
    import zipfile

    from torch_estimator.serving import loader

    base = tmp_path_factory.mktemp("exports")
    est = te.Estimator(classifier_fn, model_dir=str(trained_dir), model=TinyNet(), config=te.RunConfig(device="cpu"))
    receiver_fn = te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 4], torch.float32)})
    good = Path(est.export_saved_model(base / "good", receiver_fn, format="all"))
    good.rename(base / "good" / "1")
    good = base / "good" / "1"
    for variant in ("flipped", "truncated", "pickled", "edited", "unhashed", "bare"):
        shutil.copytree(good, base / variant / "1")
    flipped = base / "flipped" / "1" / "model.pt"
    with zipfile.ZipFile(flipped) as zipped:
        info = next(i for i in zipped.infolist() if re.search(r"/data/\d+$", i.filename))
    raw = bytearray(flipped.read_bytes())
    raw[info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
        + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")] ^= 0x01
    flipped.write_bytes(bytes(raw))
    truncated = base / "truncated" / "1" / "model.pt"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    pickled = base / "pickled" / "1" / "model.pt2"
    with zipfile.ZipFile(pickled) as zipped:
        members = {i.filename: zipped.read(i) for i in zipped.infolist()}
    with zipfile.ZipFile(pickled, "w") as zipped:
        for name, content in members.items():
            zipped.writestr(name, pickle.dumps(_Payload(base / "pwned")) if name.endswith("sample_inputs/model.pt") else content)
    for variant, change in (
        ("pickled", lambda d: d["files"].update({"model.pt2": loader.file_record(pickled.read_bytes())})),
        ("edited", lambda d: d["signatures"]["serving_default"].update({"method_name": "tensorflow/serving/regress"})),
        ("unhashed", lambda d: d["files"].pop("model.pt")),
    ):
        path = base / variant / "1" / "signature.json"
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))
    (base / "bare" / "1" / "signature.json").unlink()
    return base


@pytest.mark.parametrize(("call", "error", "message"), CASES)
def test_bad_input_catalogue(trained_dir, export_variants, data, tmp_path, monkeypatch, call, error, message):
    import shutil

    shutil.copytree(trained_dir, tmp_path / "model")
    shutil.copytree(export_variants, tmp_path / "exports")
    monkeypatch.setattr(ckpt_format, "save_file", ckpt_format.save_file)  # a case may replace it; undone afterwards
    env = Env(tmp_path, data).prepare()
    before = _snapshot(tmp_path)
    with pytest.raises(error, match=message):
        call(env)
    assert _snapshot(tmp_path) == before


def test_bad_input_catalogue_is_documented():
    documented = (ROOT / "docs" / "bad_inputs.md").read_text()
    missing = [case.id for case in CASES if f"`{case.id}`" not in documented]
    assert missing == [] and len(CASES) >= 40


# ----------------------------------------------------------------------------------------------------------
# Exports killed at any moment (slow: about 20 subprocesses, each importing torch and exporting; 2 to 4 minutes
# on 2 cores): a version directory is whole or absent, and a later export removes what killed ones left.

EXPORT_SCRIPT = ROOT / "tests" / "reliability" / "export_loop.py"
EXPORT_KILLS = 15


def _temp_dirs(base: Path) -> set[str]:
    return {n for n in os.listdir(base) if n.startswith("temp-")} if base.exists() else set()


@pytest.mark.slow
def test_exports_killed_at_random_moments_leave_no_half_version_and_no_stale_temp_dir(tmp_path):
    from torch_estimator.serving import loader

    rng = random.Random(20261207)
    model_dir, base = tmp_path / "model", tmp_path / "exports"
    subprocess.run([sys.executable, str(KILL_SCRIPT), str(model_dir), "4", str(tmp_path / "train.events")],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    kills, in_export, cycles, duration, verified, pending, left, cleaned = 0, 0, 0, 3.0, set(), set(), 0, 0
    while True:
        cycles += 1
        events_path = tmp_path / f"export.{cycles}"
        final = kills >= EXPORT_KILLS
        process = subprocess.Popen([sys.executable, str(EXPORT_SCRIPT), str(model_dir), str(base), "1" if final else "3",
                                    str(events_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not final:
            deadline = time.time() + 120
            while not any(e[0] == "B" for e in _events_any(events_path)) and process.poll() is None:
                assert time.time() < deadline, "the export subprocess never started"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.2 * duration))
            process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
        events = _events_any(events_path)
        if final or process.returncode == 0:  # the exports can all finish before a late kill: not a kill
            assert process.returncode == 0, stderr.decode()[-3000:]
        else:
            assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
            kills += 1
            in_export += events[-1][0] == "B"
        starts = {e[1]: e[2] for e in events if e[0] == "B"}
        ends = [e for e in events if e[0] == "A"]
        if ends:
            duration = ends[0][2] - starts["1"]
            # An export completed in this process, so it removed what the earlier kills left.
            assert not pending & _temp_dirs(base), (cycles, pending)
            cleaned, pending = cleaned + len(pending), set()
        # Every version directory under its final name is whole: both artifacts verify and load.
        for version, path in sorted(_version_dirs(base).items()):
            if version not in verified:
                for format in ("torchscript", "pt2"):
                    loader.load(path, format=format)
                verified.add(version)
        new = _temp_dirs(base) - pending
        left += len(new)
        pending |= new
        if final:
            break
    assert _temp_dirs(base) == set(), "a temporary directory of a killed export survived a later export"
    assert in_export >= EXPORT_KILLS // 2 and left >= 1, (in_export, left)
    print(f"\nexport kill test: {kills} kills ({in_export} during an export) in {cycles} starts; {len(verified)} "
          f"versions verified whole; {left} temporary directories left by kills, all removed by later exports")


def _events_any(path: Path) -> list[tuple[str, str, float]]:
    if not path.exists():
        return []
    return [(p[0], p[1], float(p[2])) for p in (line.split() for line in path.read_text().splitlines()) if len(p) == 3]


def _version_dirs(base: Path) -> dict[int, str]:
    from torch_estimator.serving import versions

    return versions.list_version_dirs(str(base))
