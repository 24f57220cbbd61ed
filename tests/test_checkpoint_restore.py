"""Restoring into a model, optimizer and scheduler; falling back past damaged checkpoints."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import index as ckpt_index

from .checkpoint_support import flip_a_data_byte, save_steps, trained_parts, truncate
from .conftest import TinyNet


def test_round_trip_restores_every_part(tmp_path):
    model, optimizer, scheduler = trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler})
    torch.manual_seed(1)
    model2 = TinyNet()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=2)
    checkpoint = ckpt.restore_checkpoint(path, {"model": model2, "optimizer": optimizer2, "lr_scheduler": scheduler2})
    assert checkpoint.global_step == 2
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert optimizer2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert scheduler2.state_dict() == scheduler.state_dict()


def test_rng_state_round_trip(tmp_path):
    path = str(tmp_path / "model.ckpt-0.safetensors")
    ckpt.write_checkpoint(path, 0, {"model": TinyNet()})
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.manual_seed(123)
    np.random.seed(123)
    ckpt.apply_rng_state(ckpt.read_checkpoint(path))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


def test_a_checkpoint_of_another_model_lists_the_differences(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": torch.nn.Linear(4, 2)})
    with pytest.raises(ValueError, match=r"missing keys \['hidden.bias'.*unexpected keys \['bias', 'weight'\]"):
        ckpt.restore_checkpoint(path, {"model": TinyNet()})
    with pytest.raises(ValueError, match=r"mis-shaped \['bias: checkpoint \(2,\) vs model \(3,\)', 'weight: checkpoint \(2, 4\) vs model \(3, 4\)'"):
        ckpt.restore_checkpoint(path, {"model": torch.nn.Linear(4, 3)})


def test_restore_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    save_steps(tmp_path, [10, 20, 30])
    for step in (30, 20):
        flip_a_data_byte(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    torch.manual_seed(10)
    expected = TinyNet()
    model = TinyNet()
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        checkpoint = ckpt.restore_latest(str(tmp_path), {"model": model})
    assert checkpoint.global_step == 10 and checkpoint.identity == ckpt.checkpoint_identity(checkpoint.path)
    assert torch.equal(model.hidden.weight, expected.hidden.weight)
    assert "model.ckpt-30.safetensors is damaged" in caplog.text and "model.ckpt-20.safetensors is damaged" in caplog.text
    assert "Using checkpoint" in caplog.text and "['model.ckpt-30.safetensors', 'model.ckpt-20.safetensors']" in caplog.text
    assert ckpt.step_of(ckpt.latest_intact_checkpoint(str(tmp_path))) == 10


def test_when_every_checkpoint_is_damaged_the_error_lists_them(tmp_path):
    save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        truncate(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"Every checkpoint in .* is damaged: \['model.ckpt-2.safetensors', 'model.ckpt-1.safetensors'\]"):
        ckpt.restore_latest(str(tmp_path), {"model": TinyNet()})


def test_restore_latest_of_an_empty_or_missing_dir(tmp_path):
    assert ckpt.restore_latest(str(tmp_path), {"model": TinyNet()}) is None
    assert ckpt.restore_latest(str(tmp_path / "missing"), {"model": TinyNet()}) is None
    assert ckpt.latest_intact_checkpoint(None) is None


def test_restore_latest_does_not_fall_back_when_the_model_differs(tmp_path):
    save_steps(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="model.ckpt-2.safetensors does not match the model"):
        ckpt.restore_latest(str(tmp_path), {"model": torch.nn.Linear(4, 2)})


def test_a_checkpoint_rotated_away_while_being_read_is_skipped(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2, 3])
    read = ckpt.read_checkpoint
    deleted = []

    def rotate_then_read(path, **kwargs):  # the trainer deletes the file between listing and reading
        if not deleted:
            os.remove(path)
            deleted.append(path)
        return read(path, **kwargs)

    monkeypatch.setattr(ckpt_index, "read_checkpoint", rotate_then_read)
    checkpoint = ckpt.restore_latest(str(tmp_path), {"model": TinyNet()})
    assert [ckpt.step_of(p) for p in deleted] == [3] and checkpoint.global_step == 2


def test_a_reader_never_fails_while_a_writer_rotates(tmp_path):
    import threading

    model_dir = str(tmp_path)
    save_steps(model_dir, [0], keep=1)
    done, errors, seen = threading.Event(), [], []

    def writer():
        manager = ckpt.CheckpointManager(model_dir, keep_checkpoint_max=1)
        for step in range(1, 150):
            manager.save(step, {"model": TinyNet()})
        done.set()

    def reader():
        while not done.is_set():
            try:
                seen.append(ckpt.restore_latest(model_dir, {"model": TinyNet()}).global_step)
            except Exception as error:  # noqa: BLE001 - the test is that there are none
                errors.append(repr(error))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(seen) > 5
