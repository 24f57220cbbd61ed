"""The index: rebuilt when missing or damaged, never pointing outside model_dir; the latest checkpoint."""

from __future__ import annotations

import json
import logging
import os

import pytest

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import index as ckpt_index

from .checkpoint_support import save_steps, zero
from .conftest import TinyNet


def test_a_missing_index_is_rebuilt_from_the_files(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path))
    for step in (3, 12):
        manager.save(step, {"model": TinyNet()})
    os.remove(tmp_path / "checkpoint")
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 12


def test_a_corrupt_index_is_rebuilt_with_a_warning(tmp_path, caplog):
    manager = ckpt.CheckpointManager(str(tmp_path))
    manager.save(4, {"model": TinyNet()})
    (tmp_path / "checkpoint").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 4
    assert "is unreadable" in caplog.text


def test_index_entries_whose_file_is_gone_are_dropped(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path))
    for step in (1, 2):
        manager.save(step, {"model": TinyNet()})
    os.remove(ckpt.checkpoint_path_for_step(str(tmp_path), 2))
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


def test_latest_checkpoint_of_nothing():
    assert ckpt.latest_checkpoint(None) is None
    assert ckpt.latest_checkpoint("/nonexistent/dir") is None


def test_restore_latest_tries_files_outside_the_index_last(tmp_path):
    save_steps(tmp_path, [1, 2, 3], keep=2)
    ckpt.write_checkpoint(str(tmp_path / "model.ckpt-0.safetensors"), 0, {"model": TinyNet()})  # kept forever, say
    for step in (2, 3):
        zero(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    assert ckpt.read_latest_checkpoint(str(tmp_path)).global_step == 0  # step 1 was rotated away


def test_when_everything_listed_disappears_the_list_is_read_again(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2], keep=2)
    read, calls = ckpt.read_checkpoint, []

    def writer_rotates_everything_once(path, **kwargs):
        calls.append(ckpt.step_of(path))
        if len(calls) == 1:  # the trainer saves 3 and 4 and rotates 1 and 2 away
            save_steps(tmp_path, [3, 4], keep=2)
        return read(path, **kwargs)

    monkeypatch.setattr(ckpt_index, "read_checkpoint", writer_rotates_everything_once)
    assert ckpt.read_latest_checkpoint(str(tmp_path)).global_step == 4
    assert calls == [2, 1, 4]


def test_a_checkpoint_written_but_not_indexed_is_found(tmp_path):
    save_steps(tmp_path, [1, 2])
    index = (tmp_path / "checkpoint").read_text()
    save_steps(tmp_path, [3])
    (tmp_path / "checkpoint").write_text(index)  # as if killed between the file and the index
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [1, 2, 3]
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 3


@pytest.mark.parametrize(
    "names",
    [["../outside/model.ckpt-1.safetensors"], ["/etc/passwd"], ["model.ckpt-1.safetensors/../../x"], [3]],
    ids=["relative", "absolute", "traversal", "not-a-string"],
)
def test_an_index_pointing_outside_model_dir_is_ignored_and_rotation_deletes_nothing_there(tmp_path, caplog, names):
    (tmp_path / "outside").mkdir()
    victim = tmp_path / "outside" / "model.ckpt-1.safetensors"
    victim.write_text("someone else's file")
    model_dir = tmp_path / "model"
    save_steps(model_dir, [5])
    (model_dir / "checkpoint").write_text(json.dumps(
        {"all_model_checkpoint_paths": names, "all_model_checkpoint_timestamps": [0.0] * len(names)}))
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert [ckpt.step_of(p) for p in ckpt.read_index(str(model_dir)).paths] == [5]
    assert "must list checkpoint file names" in caplog.text
    save_steps(model_dir, [6, 7], keep=1)
    assert victim.read_text() == "someone else's file"


def test_a_model_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`model_dir` .*file exists and is not a directory"):
        ckpt.CheckpointManager(str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"`model_dir` .*file/model cannot be created: .*file is a file"):
        ckpt.check_model_dir(str(tmp_path / "file" / "model"))
    assert ckpt.check_model_dir(str(tmp_path / "new" / "model")) == str(tmp_path / "new" / "model")
    assert os.listdir(tmp_path) == ["file"]
