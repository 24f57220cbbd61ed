"""Checkpoint format (golden layout), atomic writes, index, rotation, restore and warm start."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from torch_estimator import checkpoint as ckpt

from .conftest import TinyNet


def _trained_parts():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_golden_key_layout(tmp_path):
    model, optimizer, scheduler = _trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, model=model, optimizer=optimizer, lr_scheduler=scheduler, input_state={"position": 6})
    with safe_open(path, framework="pt") as handle:
        keys = sorted(handle.keys())
        metadata = handle.metadata()
    params = ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    expected = [f"model/{name}" for name in params]
    for index in range(4):
        expected += [f"optimizer/state/{index}/{slot}" for slot in ("exp_avg", "exp_avg_sq", "step")]
    expected += ["rng/numpy/1", "rng/torch"]
    assert keys == sorted(expected)
    assert set(metadata) == {"format", "global_step", "state", "torch_version", "content_hash"}
    assert metadata["format"] == "torch_estimator.checkpoint/1" and metadata["global_step"] == "2"
    assert re.fullmatch(r"(crc32|xxh3|sha256)-tree:[0-9a-f]{64}", metadata["content_hash"])
    state = json.loads(metadata["state"])
    assert set(state) == {"optimizer", "lr_scheduler", "rng", "input"}
    assert state["input"] == {"position": 6}
    assert state["optimizer"]["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert state["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    assert state["rng"]["torch"] == {"__tensor__": "rng/torch"}


def test_round_trip_restores_every_part(tmp_path):
    model, optimizer, scheduler = _trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    torch.manual_seed(1)
    model2 = TinyNet()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=2)
    checkpoint = ckpt.restore_checkpoint(path, model=model2, optimizer=optimizer2, lr_scheduler=scheduler2)
    assert checkpoint.global_step == 2
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert optimizer2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert scheduler2.state_dict() == scheduler.state_dict()


def test_rng_state_round_trip(tmp_path):
    path = str(tmp_path / "model.ckpt-0.safetensors")
    ckpt.write_checkpoint(path, 0, model=TinyNet())
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.manual_seed(123)
    np.random.seed(123)
    ckpt.apply_rng_state(ckpt.read_checkpoint(path))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


def test_tied_weights_are_saved(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    model = Tied()
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, model=model)
    other = Tied()
    ckpt.restore_checkpoint(path, model=other)
    assert torch.equal(other.b.weight, model.a.weight)


@pytest.mark.parametrize(
    "value",
    [
        {"a": (1, 2.5, None), "b": [True, "x"], 3: {"nested": float("inf")}},
        {"__tricky": 1},
        [np.arange(3), torch.ones(2, dtype=torch.bfloat16)],
    ],
)
def test_encode_decode_round_trip(value):
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.loads(json.dumps(ckpt._encode(value, "x", tensors)))
    decoded = ckpt._decode(encoded, tensors)
    if isinstance(value, list):
        assert np.array_equal(decoded[0], value[0]) and torch.equal(decoded[1], value[1])
    else:
        assert decoded == value


def test_unsupported_state_is_a_clear_error():
    with pytest.raises(TypeError, match="Cannot checkpoint 'x/f': values of type function"):
        ckpt._encode({"f": lambda: 0}, "x", {})


def test_a_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "model.ckpt-1.safetensors"

    class Boom:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="could not be read"):
        ckpt.read_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "model.ckpt-1.safetensors")
    save_file({"w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="is not a torch_estimator checkpoint"):
        ckpt.read_checkpoint(path)


def test_a_checkpoint_of_another_model_lists_the_differences(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, model=torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"missing keys \['hidden.bias'.*unexpected keys \['bias', 'weight'\]"):
        ckpt.restore_checkpoint(path, model=TinyNet())
    with pytest.raises(ValueError, match=r"mis-shaped \['bias: checkpoint \(2,\) vs model \(3,\)', 'weight: checkpoint \(2, 4\) vs model \(3, 4\)'"):
        ckpt.restore_checkpoint(path, model=torch.nn.Linear(4, 3))


def test_rotation_keeps_the_last_n_and_the_index_lists_them(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=3)
    for step in range(0, 60, 10):
        manager.save(step, model=TinyNet())
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
            manager.save(step, model=TinyNet())
    assert [os.path.basename(p) for p in ckpt.read_index(str(tmp_path)).paths] == [
        "model.ckpt-40.safetensors", "model.ckpt-50.safetensors"]
    assert len(os.listdir(tmp_path)) == 3


def test_keep_checkpoint_max_zero_keeps_all(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=0)
    for step in range(8):
        manager.save(step, model=TinyNet())
    assert len(ckpt.read_index(str(tmp_path)).paths) == 8


def test_keep_every_n_hours_none_keeps_nothing_for_its_age(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 1e6 * i for i in range(1, 20)])  # a million hours between saves
    monkeypatch.setattr(ckpt.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=None)
    for step in range(5):
        manager.save(step, model=TinyNet())
    on_disk = sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert on_disk == [3, 4] and not ckpt.read_index(str(tmp_path)).kept_forever


def test_keep_every_n_hours_keeps_extra_checkpoints_out_of_the_index(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 0.4 * i for i in range(1, 20)])
    monkeypatch.setattr(ckpt.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=1.0)
    for step in range(8):  # saved at 0.4 h, 0.8 h, ... 3.2 h
        manager.save(step, model=TinyNet())
    indexed = [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths]
    on_disk = sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert indexed == [6, 7]
    # 1.2 h is the first past the 1 h mark (next mark 2 h); 2.0 h is not past 2 h; 2.4 h is.
    assert on_disk == [2, 5, 6, 7]


def test_resave_of_the_same_step_moves_it_to_the_end(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=5)
    for step in (1, 2, 1):
        manager.save(step, model=TinyNet())
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [2, 1]


def test_a_failed_write_leaves_the_previous_state_intact(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=1)
    manager.save(1, model=TinyNet())
    before = sorted(os.listdir(tmp_path))

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match="Could not write the checkpoint .*model.ckpt-2.safetensors: No space left") as caught:
        manager.save(2, model=TinyNet())
    assert caught.value.errno == 28
    assert sorted(os.listdir(tmp_path)) == before
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


def test_leftover_temporary_files_are_removed(tmp_path):
    (tmp_path / "model.ckpt-5.safetensors.tmp123").write_bytes(b"junk")
    (tmp_path / "checkpoint.tmp9").write_text("junk")
    (tmp_path / "notes.tmp1").write_text("mine")
    ckpt.CheckpointManager(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.tmp1"]


def test_a_missing_index_is_rebuilt_from_the_files(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path))
    for step in (3, 12):
        manager.save(step, model=TinyNet())
    os.remove(tmp_path / "checkpoint")
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 12


def test_a_corrupt_index_is_rebuilt_with_a_warning(tmp_path, caplog):
    manager = ckpt.CheckpointManager(str(tmp_path))
    manager.save(4, model=TinyNet())
    (tmp_path / "checkpoint").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 4
    assert "is unreadable" in caplog.text


def test_index_entries_whose_file_is_gone_are_dropped(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path))
    for step in (1, 2):
        manager.save(step, model=TinyNet())
    os.remove(ckpt.checkpoint_path_for_step(str(tmp_path), 2))
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


def test_latest_checkpoint_of_nothing():
    assert ckpt.latest_checkpoint(None) is None
    assert ckpt.latest_checkpoint("/nonexistent/dir") is None


def test_list_variables(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, model=torch.nn.Linear(4, 2))
    assert ckpt.list_variables(path) == {"global_step": (), "model/bias": (2,), "model/weight": (2, 4), "rng/numpy/1": (624,), "rng/torch": (5056,)}


# ----------------------------------------------------------------------------------------------------------
# Warm start.


@pytest.fixture
def source(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path / "source"))
    torch.manual_seed(5)
    model = TinyNet()
    manager.save(7, model=model)
    return model, str(tmp_path / "source")


def test_warm_start_selected_tensors(source):
    model, path = source
    torch.manual_seed(6)
    target = TinyNet()
    out_before = target.out.weight.detach().clone()
    assert ckpt.warm_start(target, ckpt.WarmStartSettings(path, vars_to_warm_start=["hidden\\..*"])) == ["hidden.weight", "hidden.bias"]
    assert torch.equal(target.hidden.weight, model.hidden.weight)
    assert torch.equal(target.out.weight, out_before)


def test_warm_start_with_renamed_tensors(source):
    model, path = source

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(4, 8)

    target = Renamed()
    settings = ckpt.WarmStartSettings(path, "first\\..*", {"first.weight": "hidden.weight", "first.bias": "hidden.bias"})
    ckpt.warm_start(target, settings)
    assert torch.equal(target.first.weight, model.hidden.weight)


@pytest.mark.parametrize(
    ("settings", "model", "message"),
    [
        (lambda p: ckpt.WarmStartSettings(p, "nothing"), TinyNet, "no model tensor matches"),
        (lambda p: ckpt.WarmStartSettings(p), lambda: torch.nn.Linear(4, 8), "weight \\(as 'weight'\\) is not in the checkpoint"),
        (lambda p: ckpt.WarmStartSettings(p, "hidden.weight", {"hidden.weight": "out.weight"}), TinyNet, "checkpoint \\(2, 8\\) vs model \\(8, 4\\)"),
        (lambda p: ckpt.WarmStartSettings(p + "/missing"), TinyNet, "does not exist"),
    ],
)
def test_warm_start_errors(source, settings, model, message):
    with pytest.raises(ValueError, match=message):
        ckpt.warm_start(model(), settings(source[1]))


def test_warm_start_from_an_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint"):
        ckpt.warm_start(TinyNet(), ckpt.WarmStartSettings(str(tmp_path)))


@pytest.mark.parametrize(("kwargs", "message"), [({"ckpt_to_initialize_from": ""}, "must be a non-empty path"),
                                                 ({"ckpt_to_initialize_from": "x", "vars_to_warm_start": "("}, "invalid regex")])
def test_warm_start_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ckpt.WarmStartSettings(**kwargs)


def test_checkpoint_saver_timing_and_listeners():
    saved, calls = [], []

    class Listener:
        def begin(self):
            calls.append("begin")

        def before_save(self, step):
            calls.append(("before", step))

        def after_save(self, step):
            calls.append(("after", step))
            return step == 20

        def end(self, step):
            calls.append(("end", step))

    saver = ckpt.CheckpointSaver(lambda step: saved.append(step) or f"ckpt-{step}", every_steps=10, listeners=[Listener()])
    assert saver.begin(0, already_saved=False) is False
    stops = [step for step in range(1, 26) if saver.should_save(step) and saver.save(step)]
    saver.end(25)
    assert saved == [0, 10, 20, 25] and stops == [20]
    assert calls[-1] == ("end", 25)


# ----------------------------------------------------------------------------------------------------------
# Integrity: the content hash, damaged files, falling back, durability, disk trouble.


def _save_steps(model_dir, steps, keep=5, **kwargs):
    manager = ckpt.CheckpointManager(str(model_dir), keep_checkpoint_max=keep)
    for step in steps:
        torch.manual_seed(step)
        manager.save(step, model=TinyNet(), **kwargs)
    return manager


def _reference_hash(path: str, algorithm: str = "sha256-tree") -> str:
    """The content hash as documented, computed independently from the file (pins the algorithm)."""
    import hashlib
    import zlib

    if algorithm == "xxh3-tree":
        import xxhash

        chunk_digest = xxhash.xxh3_128_digest
    else:
        chunk_digest = {"sha256-tree": lambda b: hashlib.sha256(b).digest(), "crc32-tree": lambda b: zlib.crc32(b).to_bytes(4, "big")}[algorithm]

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    total = hashlib.sha256()
    for name in sorted(metadata):
        if name != "content_hash":
            total.update(json.dumps(["meta", name, metadata[name]]).encode() + b"\n")
    for key in sorted(tensors):
        tensor = tensors[key]
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        total.update(json.dumps(["tensor", key, str(tensor.dtype), list(tensor.shape), len(data)]).encode() + b"\n")
        for at in range(0, len(data), 4 << 20):
            total.update(chunk_digest(data[at:at + (4 << 20)]))
    return f"{algorithm}:" + total.hexdigest()


ALGORITHMS = ["crc32-tree", "sha256-tree", pytest.param("xxh3-tree", marks=pytest.mark.skipif(
    "xxh3-tree" not in ckpt._CHUNK_DIGESTS, reason="the optional xxhash package is not installed"))]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_content_hash_matches_its_specification(tmp_path, monkeypatch, algorithm):
    monkeypatch.setattr(ckpt, "_HASH_ALGORITHM", algorithm)
    model, optimizer, scheduler = _trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata()["content_hash"] == _reference_hash(path, algorithm)
    monkeypatch.undo()  # a reader of the other default still verifies it
    ckpt.verify_checkpoint(path)
    _flip_a_data_byte(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match="content hash does not match"):
        ckpt.verify_checkpoint(path)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_hash_computed_on_threads_is_the_same(tmp_path, monkeypatch, algorithm):
    monkeypatch.setattr(ckpt, "_HASH_ALGORITHM", algorithm)
    class Big(torch.nn.Module):  # 5 MiB: more than one 4 MiB chunk, and a 0-d and an empty tensor
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1310720))
            self.register_buffer("scalar", torch.tensor(3, dtype=torch.int64))
            self.register_buffer("empty", torch.zeros(0, 4, dtype=torch.bfloat16))

    model = Big()
    (tmp_path / "parallel").mkdir()
    serial, parallel = str(tmp_path / "model.ckpt-1.safetensors"), str(tmp_path / "parallel" / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(serial, 1, model=model)
    monkeypatch.setattr(ckpt, "_PARALLEL_HASH_BYTES", 0)
    monkeypatch.setattr(ckpt.os, "cpu_count", lambda: 4)
    ckpt.write_checkpoint(parallel, 1, model=model)
    for path in (serial, parallel):
        with safe_open(path, framework="pt") as handle:
            assert handle.metadata()["content_hash"] == _reference_hash(path, algorithm)
        assert torch.equal(ckpt.read_checkpoint(path).model["w"], model.w.detach())  # verified on the pool too


def _truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 7])


def _zero(path):
    Path(path).write_bytes(bytes(os.path.getsize(path)))


def _flip_a_data_byte(path):
    data = bytearray(Path(path).read_bytes())
    data[-3] ^= 0x01
    Path(path).write_bytes(bytes(data))


def _alter_the_step(path):  # same length, so only the hash can tell
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(b'"global_step":"12"', b'"global_step":"13"', 1))


def _empty(path):
    Path(path).write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "could not be read: .*incomplete metadata"),
        (_zero, "could not be read"),
        (_empty, "could not be read"),
        (_flip_a_data_byte, "is damaged: its content hash does not match"),
        (_alter_the_step, "is damaged: its content hash does not match"),
    ],
    ids=["truncated", "zeroed", "empty", "flipped-bit", "altered-metadata"],
)
def test_a_damaged_checkpoint_is_detected_naming_the_file(tmp_path, damage, message):
    _save_steps(tmp_path, [12])
    path = ckpt.checkpoint_path_for_step(str(tmp_path), 12)
    damage(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path) + ".*" + message) as caught:
        ckpt.restore_checkpoint(path, model=TinyNet())
    assert caught.value.path == path
    with pytest.raises(ckpt.CheckpointCorruptError):
        ckpt.verify_checkpoint(path)


def test_a_hash_of_an_unknown_kind_is_refused(tmp_path):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    ckpt.write_checkpoint(path, 3, model=TinyNet())
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(ckpt._HASH_ALGORITHM.encode(), b"x" * len(ckpt._HASH_ALGORITHM), 1))
    with pytest.raises(ckpt.CheckpointCorruptError, match="has a content hash of unknown kind 'xxxxx"):
        ckpt.read_checkpoint(path)


def test_an_xxh3_hash_without_xxhash_loads_unchecked_and_says_what_to_install(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    monkeypatch.setattr(ckpt, "_HASH_ALGORITHM", "crc32-tree")
    ckpt.write_checkpoint(path, 3, model=TinyNet())
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(b'"crc32-tree:', b' "xxh3-tree:', 1))  # same length: JSON allows the space
    monkeypatch.delitem(ckpt._CHUNK_DIGESTS, "xxh3-tree", raising=False)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.read_checkpoint(path).global_step == 3  # a good file must never make training fall back
    assert "needs the `xxhash` package to be checked (pip install xxhash); loading it unchecked" in caplog.text


def test_a_checkpoint_without_a_hash_still_loads(tmp_path):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    ckpt.write_checkpoint(path, 3, model=TinyNet(), content_hash=False)
    with safe_open(path, framework="pt") as handle:
        assert "content_hash" not in handle.metadata()
    assert ckpt.read_checkpoint(path).global_step == 3


def test_restore_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    _save_steps(tmp_path, [10, 20, 30])
    for step in (30, 20):
        _flip_a_data_byte(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    torch.manual_seed(10)
    expected = TinyNet()
    model = TinyNet()
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        checkpoint = ckpt.restore_latest(str(tmp_path), model=model)
    assert checkpoint.global_step == 10 and checkpoint.identity == ckpt.checkpoint_identity(checkpoint.path)
    assert torch.equal(model.hidden.weight, expected.hidden.weight)
    assert "model.ckpt-30.safetensors is damaged" in caplog.text and "model.ckpt-20.safetensors is damaged" in caplog.text
    assert "Using checkpoint" in caplog.text and "['model.ckpt-30.safetensors', 'model.ckpt-20.safetensors']" in caplog.text
    assert ckpt.step_of(ckpt.latest_intact_checkpoint(str(tmp_path))) == 10


def test_restore_latest_tries_files_outside_the_index_last(tmp_path):
    _save_steps(tmp_path, [1, 2, 3], keep=2)
    ckpt.write_checkpoint(str(tmp_path / "model.ckpt-0.safetensors"), 0, model=TinyNet())  # kept forever, say
    for step in (2, 3):
        _zero(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    assert ckpt.read_latest_checkpoint(str(tmp_path)).global_step == 0  # step 1 was rotated away


def test_when_every_checkpoint_is_damaged_the_error_lists_them(tmp_path):
    _save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        _truncate(ckpt.checkpoint_path_for_step(str(tmp_path), step))
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"Every checkpoint in .* is damaged: \['model.ckpt-2.safetensors', 'model.ckpt-1.safetensors'\]"):
        ckpt.restore_latest(str(tmp_path), model=TinyNet())


def test_restore_latest_of_an_empty_or_missing_dir(tmp_path):
    assert ckpt.restore_latest(str(tmp_path), model=TinyNet()) is None
    assert ckpt.restore_latest(str(tmp_path / "missing"), model=TinyNet()) is None
    assert ckpt.latest_intact_checkpoint(None) is None


def test_restore_latest_does_not_fall_back_when_the_model_differs(tmp_path):
    _save_steps(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="model.ckpt-2.safetensors does not match the model"):
        ckpt.restore_latest(str(tmp_path), model=torch.nn.Linear(4, 2))


def test_a_checkpoint_rotated_away_while_being_read_is_skipped(tmp_path, monkeypatch):
    _save_steps(tmp_path, [1, 2, 3])
    read = ckpt.read_checkpoint
    deleted = []

    def rotate_then_read(path, **kwargs):  # the trainer deletes the file between listing and reading
        if not deleted:
            os.remove(path)
            deleted.append(path)
        return read(path, **kwargs)

    monkeypatch.setattr(ckpt, "read_checkpoint", rotate_then_read)
    checkpoint = ckpt.restore_latest(str(tmp_path), model=TinyNet())
    assert [ckpt.step_of(p) for p in deleted] == [3] and checkpoint.global_step == 2


def test_when_everything_listed_disappears_the_list_is_read_again(tmp_path, monkeypatch):
    _save_steps(tmp_path, [1, 2], keep=2)
    read, calls = ckpt.read_checkpoint, []

    def writer_rotates_everything_once(path, **kwargs):
        calls.append(ckpt.step_of(path))
        if len(calls) == 1:  # the trainer saves 3 and 4 and rotates 1 and 2 away
            _save_steps(tmp_path, [3, 4], keep=2)
        return read(path, **kwargs)

    monkeypatch.setattr(ckpt, "read_checkpoint", writer_rotates_everything_once)
    assert ckpt.read_latest_checkpoint(str(tmp_path)).global_step == 4
    assert calls == [2, 1, 4]


def test_a_reader_never_fails_while_a_writer_rotates(tmp_path):
    import threading

    model_dir = str(tmp_path)
    _save_steps(model_dir, [0], keep=1)
    done, errors, seen = threading.Event(), [], []

    def writer():
        manager = ckpt.CheckpointManager(model_dir, keep_checkpoint_max=1)
        for step in range(1, 150):
            manager.save(step, model=TinyNet())
        done.set()

    def reader():
        while not done.is_set():
            try:
                seen.append(ckpt.restore_latest(model_dir, model=TinyNet()).global_step)
            except Exception as error:  # noqa: BLE001 - the test is that there are none
                errors.append(repr(error))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(seen) > 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_saves_are_flushed_to_disk_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    ckpt.CheckpointManager(str(tmp_path)).save(5, model=TinyNet())
    path, pid = str(tmp_path / "model.ckpt-5.safetensors"), os.getpid()
    assert synced == [f"{path}.tmp{pid}", str(tmp_path), f"{tmp_path}/checkpoint.tmp{pid}", str(tmp_path)]


def test_checkpoint_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        ckpt.CheckpointManager(str(tmp_path)).save(5, model=TinyNet())
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
    ckpt.write_checkpoint(str(tmp_path / "model.ckpt-7.safetensors"), 7, model=TinyNet())
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt-7.safetensors"]


@pytest.mark.parametrize(
    ("error", "message"),
    [(OSError(28, "No space left on device"), "No space left on device"),
     (PermissionError(13, "Permission denied"), "Permission denied"),
     (OSError(30, "Read-only file system"), "Read-only file system")],
    ids=["full-disk", "no-permission", "read-only-fs"],
)
def test_disk_trouble_writing_the_index_leaves_everything_as_it_was(tmp_path, monkeypatch, error, message):
    manager = _save_steps(tmp_path, [1, 2], keep=2)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if os.path.basename(str(file)).startswith("checkpoint.tmp"):
            raise error
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match=f"Could not write the checkpoint index {re.escape(str(tmp_path))}/checkpoint: {message}.*unchanged") as caught:
        manager.save(3, model=TinyNet())
    assert caught.value.errno == error.errno
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    manager.save(3, model=TinyNet())  # space is back: rotation goes on as if nothing happened
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [2, 3]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-2.safetensors", "model.ckpt-3.safetensors"]


def test_a_read_only_model_dir_is_a_clear_error(tmp_path, monkeypatch):
    manager = _save_steps(tmp_path, [1])

    def read_only(tensors, filename, metadata=None):
        raise OSError(30, "Read-only file system", filename)

    monkeypatch.setattr(ckpt, "save_file", read_only)
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*model.ckpt-2.safetensors: Read-only file system"):
        manager.save(2, model=TinyNet())
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-1.safetensors"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permissions")
def test_an_unwritable_model_dir_is_refused_when_the_writer_starts(tmp_path):
    _save_steps(tmp_path / "model", [1])
    os.chmod(tmp_path / "model", 0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            ckpt.CheckpointManager(str(tmp_path / "model"))
    finally:
        os.chmod(tmp_path / "model", 0o755)


def test_an_unwritable_model_dir_is_refused_when_the_writer_starts_simulated(tmp_path, monkeypatch):
    _save_steps(tmp_path / "model", [1])
    monkeypatch.setattr(ckpt.os, "access", lambda path, mode: False)  # what access(2) says for 0555 or a ro mount
    with pytest.raises(PermissionError, match=r"`model_dir` .*model is not writable; checkpoints cannot be saved there"):
        ckpt.CheckpointManager(str(tmp_path / "model"))


def test_a_model_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`model_dir` .*file exists and is not a directory"):
        ckpt.CheckpointManager(str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"`model_dir` .*file/model cannot be created: .*file is a file"):
        ckpt.check_model_dir(str(tmp_path / "file" / "model"))
    assert ckpt.check_model_dir(str(tmp_path / "new" / "model")) == str(tmp_path / "new" / "model")
    assert os.listdir(tmp_path) == ["file"]


def test_list_variables_of_a_damaged_file_names_it(tmp_path):
    _save_steps(tmp_path, [1])
    path = ckpt.checkpoint_path_for_step(str(tmp_path), 1)
    _zero(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path)):
        ckpt.list_variables(path)


def test_a_checkpoint_written_but_not_indexed_is_found(tmp_path):
    _save_steps(tmp_path, [1, 2])
    index = (tmp_path / "checkpoint").read_text()
    _save_steps(tmp_path, [3])
    (tmp_path / "checkpoint").write_text(index)  # as if killed between the file and the index
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [1, 2, 3]
    assert ckpt.step_of(ckpt.latest_checkpoint(str(tmp_path))) == 3


def test_a_checkpoint_dropped_by_rotation_but_not_deleted_is_removed_at_the_next_start(tmp_path, monkeypatch):
    _save_steps(tmp_path, [1, 2], keep=2)
    monkeypatch.setattr(ckpt, "_remove", lambda path: None)  # killed after the index, before the delete
    _save_steps(tmp_path, [3], keep=2)
    monkeypatch.undo()
    assert (tmp_path / "model.ckpt-1.safetensors").exists()
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-2.safetensors", "model.ckpt-3.safetensors"]


def test_checkpoints_kept_forever_are_never_removed_at_start(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 0.4 * i for i in range(1, 30)])
    monkeypatch.setattr(ckpt.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=1.0)
    for step in range(8):
        manager.save(step, model=TinyNet())
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)  # the next start
    index = json.loads((tmp_path / "checkpoint").read_text())
    assert index["kept_forever_paths"] == ["model.ckpt-2.safetensors", "model.ckpt-5.safetensors"]
    assert sorted(ckpt.step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors")) == [2, 5, 6, 7]


def test_files_unknown_to_an_older_index_are_never_removed(tmp_path):
    _save_steps(tmp_path, [1, 2, 3], keep=2)
    (tmp_path / "model.ckpt-1.safetensors").write_bytes((tmp_path / "model.ckpt-2.safetensors").read_bytes())
    index = json.loads((tmp_path / "checkpoint").read_text())
    del index["kept_forever_paths"]  # written before this key existed: nothing is known about model.ckpt-1
    (tmp_path / "checkpoint").write_text(json.dumps(index))
    ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2)
    assert (tmp_path / "model.ckpt-1.safetensors").exists()


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
    _save_steps(model_dir, [5])
    (model_dir / "checkpoint").write_text(json.dumps(
        {"all_model_checkpoint_paths": names, "all_model_checkpoint_timestamps": [0.0] * len(names)}))
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert [ckpt.step_of(p) for p in ckpt.read_index(str(model_dir)).paths] == [5]
    assert "must list checkpoint file names" in caplog.text
    _save_steps(model_dir, [6, 7], keep=1)
    assert victim.read_text() == "someone else's file"
