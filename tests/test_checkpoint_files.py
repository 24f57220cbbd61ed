"""Durable writes: flushed to disk, the umask's permissions, staging left by a crash."""

from __future__ import annotations

import os
import sys

import pytest

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import files as ckpt_files

from .conftest import TinyNet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_saves_are_flushed_to_disk_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt_files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    ckpt.CheckpointManager(str(tmp_path)).save(5, {"model": TinyNet()})
    path, pid = str(tmp_path / "model.ckpt-5.safetensors"), os.getpid()
    assert synced == [f"{path}.tmp{pid}", str(tmp_path), f"{tmp_path}/checkpoint.tmp{pid}", str(tmp_path)]


def test_checkpoint_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        ckpt.CheckpointManager(str(tmp_path)).save(5, {"model": TinyNet()})
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "model.ckpt-5.safetensors").st_mode & 0o777) == oct(0o640)  # not safetensors' 0600


def test_a_staging_directory_left_by_a_crash_is_removed(tmp_path):
    staging = tmp_path / f"model.ckpt-7.safetensors.tmp{os.getpid()}"  # same pid: a restarted container
    staging.mkdir()
    (staging / ".tmpAbC123").write_bytes(b"half written by safetensors")
    (tmp_path / "model.ckpt-8.safetensors.tmp99").mkdir()
    ckpt.CheckpointManager(str(tmp_path))
    assert os.listdir(tmp_path) == []
    staging.mkdir()
    (staging / "junk").write_text("x")
    ckpt.write_checkpoint(str(tmp_path / "model.ckpt-7.safetensors"), 7, {"model": TinyNet()})
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt-7.safetensors"]
