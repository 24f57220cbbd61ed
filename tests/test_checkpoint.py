"""Checkpoint format (golden layout), atomic writes, index, rotation, restore and warm start."""

from __future__ import annotations

import json
import logging
import os
import pickle

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
    assert set(metadata) == {"format", "global_step", "state", "torch_version"}
    assert metadata["format"] == "torch_estimator.checkpoint/1" and metadata["global_step"] == "2"
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


def test_keep_every_n_hours_keeps_extra_checkpoints_out_of_the_index(tmp_path, monkeypatch):
    clock = iter([0.0] + [3600.0 * 0.4 * i for i in range(1, 20)])
    monkeypatch.setattr(ckpt.time, "time", lambda: next(clock))
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=2, keep_checkpoint_every_n_hours=1.0)
    for step in range(8):  # saved at 0.4 h, 0.8 h, ... 3.2 h
        manager.save(step, model=TinyNet())
    indexed = [ckpt._step_of(p) for p in ckpt.read_index(str(tmp_path)).paths]
    on_disk = sorted(ckpt._step_of(f) for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert indexed == [6, 7]
    # 1.2 h is the first past the 1 h mark (next mark 2 h); 2.0 h is not past 2 h; 2.4 h is.
    assert on_disk == [2, 5, 6, 7]


def test_resave_of_the_same_step_moves_it_to_the_end(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=5)
    for step in (1, 2, 1):
        manager.save(step, model=TinyNet())
    assert [ckpt._step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [2, 1]


def test_a_failed_write_leaves_the_previous_state_intact(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_checkpoint_max=1)
    manager.save(1, model=TinyNet())
    before = sorted(os.listdir(tmp_path))

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        manager.save(2, model=TinyNet())
    assert sorted(os.listdir(tmp_path)) == before
    assert ckpt._step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


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
    assert ckpt._step_of(ckpt.latest_checkpoint(str(tmp_path))) == 12


def test_a_corrupt_index_is_rebuilt_with_a_warning(tmp_path, caplog):
    manager = ckpt.CheckpointManager(str(tmp_path))
    manager.save(4, model=TinyNet())
    (tmp_path / "checkpoint").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt._step_of(ckpt.latest_checkpoint(str(tmp_path))) == 4
    assert "is unreadable" in caplog.text


def test_index_entries_whose_file_is_gone_are_dropped(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path))
    for step in (1, 2):
        manager.save(step, model=TinyNet())
    os.remove(ckpt.checkpoint_path_for_step(str(tmp_path), 2))
    assert ckpt._step_of(ckpt.latest_checkpoint(str(tmp_path))) == 1


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
