"""Saving with rotation: keep_checkpoint_max, keep_checkpoint_every_n_hours, disk trouble, a crashed save."""

from __future__ import annotations

import json
import os
import re

import pytest

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import format as ckpt_format
from torch_estimator.checkpoint import index as ckpt_index
from torch_estimator.checkpoint import manager as ckpt_manager

from .checkpoint_support import save_steps
from .conftest import TinyNet


def test_rotation_keeps_the_last_n_and_the_index_lists_them(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=3)
    for step in range(0, 60, 10):
        manager.save(step, {"model": TinyNet()})
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert files == ["model.ckpt-30.safetensors", "model.ckpt-40.safetensors", "model.ckpt-50.safetensors"]
    index = json.loads((tmp_path / "checkpoint").read_text())
    assert index["model_checkpoint_path"] == "model.ckpt-50.safetensors"
    assert index["all_model_checkpoint_paths"] == files
    assert len(index["all_model_checkpoint_timestamps"]) == 3


def test_rotation_continues_across_restarts(tmp_path):
    for start in (0, 30):
        manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)
        for step in range(start, start + 30, 10):
            manager.save(step, {"model": TinyNet()})
    assert [os.path.basename(p) for p in ckpt.read_index(str(tmp_path)).paths] == [
        "model.ckpt-40.safetensors", "model.ckpt-50.safetensors"]
    assert len(os.listdir(tmp_path)) == 3


def test_keep_checkpoint_max_zero_keeps_all(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=0)
    for step in range(8):
        manager.save(step, {"model": TinyNet()})
    assert len(ckpt.read_index(str(tmp_path)).paths) == 8


def test_keep_every_n_hours_none_keeps_nothing_for_its_age(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 1e6 * i for i in range(1, 20)])  # a million hours between saves
    monkeypatch.setattr(ckpt_manager.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=None)
    for step in range(5):
        manager.save(step, {"model": TinyNet()})
    on_disk = sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert on_disk == [3, 4] and not ckpt.read_index(str(tmp_path)).kept_forever


def test_keep_every_n_hours_keeps_extra_checkpoints_out_of_the_index(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 0.4 * i for i in range(1, 20)])
    monkeypatch.setattr(ckpt_manager.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=1.0)
    for step in range(8):  # saved at 0.4 h, 0.8 h, ... 3.2 h
        manager.save(step, {"model": TinyNet()})
    indexed = [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths]
    on_disk = sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert indexed == [6, 7]
    # 1.2 h is the first past the 1 h mark (next mark 2 h); 2.0 h is not past 2 h; 2.4 h is.
    assert on_disk == [2, 5, 6, 7]


def test_resave_of_the_same_step_moves_it_to_the_end(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=5)
    for step in (1, 2, 1):
        manager.save(step, {"model": TinyNet()})
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [2, 1]


def test_a_failed_write_leaves_the_previous_state_intact(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=1)
    manager.save(1, {"model": TinyNet()})
    before = sorted(os.listdir(tmp_path))

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_format, "save_file", full_disk)
    with pytest.raises(OSError, match="Could not write the checkpoint .*model.ckpt-2.safetensors: No space left") as caught:
        manager.save(2, {"model": TinyNet()})
    assert caught.value.errno == 28
    assert sorted(os.listdir(tmp_path)) == before
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


def test_leftover_temporary_files_are_removed(tmp_path):
    (tmp_path / "model.ckpt-5.safetensors.tmp123").write_bytes(b"junk")
    (tmp_path / "checkpoint.tmp9").write_text("junk")
    (tmp_path / "notes.tmp1").write_text("mine")
    ckpt.CheckpointManager(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.tmp1"]


@pytest.mark.parametrize(
    ("error", "message"),
    [(OSError(28, "No space left on device"), "No space left on device"),
     (PermissionError(13, "Permission denied"), "Permission denied"),
     (OSError(30, "Read-only file system"), "Read-only file system")],
    ids=["full-disk", "no-permission", "read-only-fs"],
)
def test_disk_trouble_writing_the_index_leaves_everything_as_it_was(tmp_path, monkeypatch, error, message):
    manager = save_steps(tmp_path, [1, 2], keep=2)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if os.path.basename(str(file)).startswith("checkpoint.tmp"):
            raise error
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match=f"Could not write the checkpoint index {re.escape(str(tmp_path))}/checkpoint: {message}.*unchanged") as caught:
        manager.save(3, {"model": TinyNet()})
    assert caught.value.errno == error.errno
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    manager.save(3, {"model": TinyNet()})  # space is back: rotation goes on as if nothing happened
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [2, 3]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-2.safetensors", "model.ckpt-3.safetensors"]


def test_a_read_only_model_dir_is_a_clear_error(tmp_path, monkeypatch):
    manager = save_steps(tmp_path, [1])

    def read_only(tensors, filename, metadata=None):
        raise OSError(30, "Read-only file system", filename)

    monkeypatch.setattr(ckpt_format, "save_file", read_only)
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model.ckpt-2.safetensors: Read-only file system"):
        manager.save(2, {"model": TinyNet()})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-1.safetensors"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permissions")
def test_an_unwritable_model_dir_is_refused_when_the_writer_starts(tmp_path):
    save_steps(tmp_path / "model", [1])
    os.chmod(tmp_path / "model", 0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            ckpt.CheckpointManager(str(tmp_path / "model"))
    finally:
        os.chmod(tmp_path / "model", 0o755)


def test_an_unwritable_model_dir_is_refused_when_the_writer_starts_simulated(tmp_path, monkeypatch):
    save_steps(tmp_path / "model", [1])
    monkeypatch.setattr(ckpt_index.os, "access", lambda path, mode: False)  # what access(2) says for 0555 or a ro mount
    with pytest.raises(PermissionError, match=r"`model_dir` .*model is not writable; checkpoints cannot be saved there"):
        ckpt.CheckpointManager(str(tmp_path / "model"))


def test_a_checkpoint_dropped_by_rotation_but_not_deleted_is_removed_at_the_next_start(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2], keep=2)
    monkeypatch.setattr(ckpt_manager, "remove", lambda path: None)  # killed after the index, before the delete
    save_steps(tmp_path, [3], keep=2)
    monkeypatch.undo()
    assert (tmp_path / "model.ckpt-1.safetensors").exists()
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-2.safetensors", "model.ckpt-3.safetensors"]


def test_checkpoints_kept_forever_are_never_removed_at_start(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 0.4 * i for i in range(1, 30)])
    monkeypatch.setattr(ckpt_manager.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=1.0)
    for step in range(8):
        manager.save(step, {"model": TinyNet()})
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)  # the next start
    index = json.loads((tmp_path / "checkpoint").read_text())
    assert index["kept_forever_paths"] == ["model.ckpt-2.safetensors", "model.ckpt-5.safetensors"]
    assert sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors")) == [2, 5, 6, 7]


def test_files_unknown_to_an_older_index_are_never_removed(tmp_path):
    save_steps(tmp_path, [1, 2, 3], keep=2)
    (tmp_path / "model.ckpt-1.safetensors").write_bytes((tmp_path / "model.ckpt-2.safetensors").read_bytes())
    index = json.loads((tmp_path / "checkpoint").read_text())
    del index["kept_forever_paths"]  # written before this key existed: nothing is known about model.ckpt-1
    (tmp_path / "checkpoint").write_text(json.dumps(index))
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)
    assert (tmp_path / "model.ckpt-1.safetensors").exists()
