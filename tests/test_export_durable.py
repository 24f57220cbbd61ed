"""export/durable.py: the writer's lock, removal of dead exports' temporary directories (never a live
one: a real second process holds it), the age rule, and the flush before the rename."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from torch_estimator.export import builder, durable

from .export_support import raw_receiver_fn, train_estimator

ROOT = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent("""
    import os, sys, time
    from torch_estimator.export import durable
    writer = durable.ExportWriter.claim(sys.argv[1], 100)
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A real second process that is exporting into ``<base>/temp-100``: it holds the writer's lock."""
    base = tmp_path / "exports"
    base.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(base)], env=env, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.skipif(durable.fcntl is None, reason="flock is POSIX")
def test_a_live_exports_directory_is_kept_and_a_dead_ones_removed(holder, caplog):
    base, process = holder
    owner = json.loads((base / "temp-100.writer").read_text())
    assert owner["pid"] == process.pid and owner["host"]
    assert durable.remove_dead_temp_dirs(str(base)) == []
    assert (base / "temp-100").is_dir()
    assert durable.ExportWriter.claim(str(base), 100) is None  # the name is taken
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert durable.remove_dead_temp_dirs(str(base)) == [str(base / "temp-100")]
    assert os.listdir(base) == []  # the directory and its lock file
    assert f"Removed {base / 'temp-100'}, the temporary directory of pid {process.pid} on" in caplog.text


@pytest.mark.skipif(durable.fcntl is None, reason="flock is POSIX")
def test_an_export_beside_a_live_one_leaves_it_alone_and_removes_dead_ones(holder, tmp_path):
    base, _ = holder
    (base / "temp-50").mkdir()  # an export killed before it locked: old enough to be abandoned
    (base / "temp-50" / "model.pt").write_bytes(b"partial")
    old = time.time() - durable.STALE_SECONDS - 60
    for path in (base / "temp-50" / "model.pt", base / "temp-50"):
        os.utime(path, (old, old))
    (base / "temp-60").mkdir()  # the same, but recent: it may be an export that is just starting
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(base, raw_receiver_fn())
    assert sorted(os.listdir(base)) == sorted([os.path.basename(path), "temp-100", "temp-100.writer", "temp-60"])
    assert os.listdir(path) and not any(name.endswith(".writer") for name in os.listdir(path))


def test_a_temp_dir_without_a_writer_is_removed_only_when_old(tmp_path):
    (tmp_path / "temp-1" / "sub").mkdir(parents=True)
    (tmp_path / "temp-1" / "sub" / "f").write_bytes(b"x")
    (tmp_path / "not-temp").mkdir()
    now = time.time()
    assert durable.remove_dead_temp_dirs(str(tmp_path), now=now) == []
    assert durable.remove_dead_temp_dirs(str(tmp_path), now=now + durable.STALE_SECONDS - 5) == []  # f was touched
    assert durable.remove_dead_temp_dirs(str(tmp_path), now=now + durable.STALE_SECONDS + 5) == [str(tmp_path / "temp-1")]
    assert os.listdir(tmp_path) == ["not-temp"]


@pytest.mark.skipif(durable.fcntl is None, reason="flock is POSIX")
def test_a_lock_file_left_after_the_rename_or_before_the_directory_is_removed(tmp_path):
    """The two instants of an export's life where a kill leaves only ``temp-<ts>.writer``: just after it was
    created (no directory yet) and just after the rename (the version is whole). The next export removes it."""
    (tmp_path / "temp-7.writer").write_text("")
    (tmp_path / "7").mkdir()
    (tmp_path / "temp-8.writer").write_text('{"pid": 1')  # a kill during the write of its JSON
    assert durable.remove_dead_temp_dirs(str(tmp_path)) == []
    assert os.listdir(tmp_path) == ["7"]


@pytest.mark.skipif(durable.fcntl is None, reason="flock is POSIX")
def test_a_claim_removed_as_dead_before_it_was_locked_is_given_up(tmp_path, monkeypatch):
    """The instant between creating the lock file and locking it: a remover that locks it first deletes it,
    and the claimer, once it gets the lock, sees its file is gone and tries the next second."""
    real_lock = durable._lock

    def remover_first(fd, *, wait=False):
        if wait:
            assert durable.remove_dead_temp_dirs(str(tmp_path)) == []  # found unlocked: removed as dead
        return real_lock(fd, wait=wait)

    monkeypatch.setattr(durable, "_lock", remover_first)
    assert durable.ExportWriter.claim(str(tmp_path), 5) is None
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(durable, "_lock", real_lock)
    writer = durable.ExportWriter.claim(str(tmp_path), 5)
    assert sorted(os.listdir(tmp_path)) == ["temp-5", "temp-5.writer"]
    writer.abandon()
    assert os.listdir(tmp_path) == []


def test_a_claim_beside_an_older_exporters_directory_is_given_up(tmp_path):
    (tmp_path / "temp-9").mkdir()  # no lock file: an older torch_estimator's, or one on a filesystem without flock
    assert durable.ExportWriter.claim(str(tmp_path), 9) is None
    assert os.listdir(tmp_path) == ["temp-9"]


def test_files_and_directories_are_flushed_before_the_rename(tmp_path, monkeypatch):
    """The order a crash cannot undo: every file and directory synced, then the rename, then the base synced."""
    est = train_estimator(tmp_path / "model")
    (tmp_path / "vocab.txt").write_text("a\n")
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(source, target):
        calls.append(("rename", os.fspath(target)))
        return real_rename(source, target)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name synced descriptors")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="all",
                                  assets_extra={"data/vocab.txt": str(tmp_path / "vocab.txt")})
    renamed = calls.index(("rename", path))
    temp = os.path.join(os.path.dirname(path), "temp-" + os.path.basename(path))
    synced_before = {os.path.relpath(p, temp) for kind, p in calls[:renamed] if kind == "fsync"}
    assert {"model.pt", "model.pt2", "signature.json", "assets.extra/data/vocab.txt", "assets.extra/data", "assets.extra",
            "."} <= synced_before
    assert ("fsync", os.path.dirname(path)) in calls[renamed:]


def test_a_failed_export_removes_its_directory_and_releases_its_lock(tmp_path, monkeypatch):
    est = train_estimator(tmp_path / "model")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builder, "_copy_assets", fail)
    with pytest.raises(OSError, match="No space left"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    assert os.listdir(tmp_path / "exports") == []  # neither the directory nor its lock file
