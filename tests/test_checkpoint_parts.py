"""The named parts of a checkpoint: one mapping through write, save and restore; any number of parts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from torch_estimator import checkpoint as ckpt

from .checkpoint_support import trained_parts
from .conftest import TinyNet

# Written by torch_estimator 0.1.0 before checkpoints took a mapping of parts, with its keyword API:
# write_checkpoint(path, 3, model=TinyNet(), optimizer=Adam(lr=0.01), lr_scheduler=StepLR(step_size=2),
# grad_scaler=GradScaler("cpu", init_scale=1024), input_state={"epoch": 1, "position": 6, "fingerprint": ...})
# after three steps, with a crc32-tree content hash.
OLD = Path(__file__).parent / "fixtures" / "checkpoint" / "model.ckpt-3.safetensors"


def _fresh():
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    return {"model": model, "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=2),
            "grad_scaler": torch.amp.GradScaler("cpu")}


def test_a_checkpoint_written_before_parts_restores_every_part_exactly():
    parts = _fresh()
    checkpoint = ckpt.restore_checkpoint(str(OLD), parts)
    with safe_open(str(OLD), framework="pt") as handle:
        saved = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
        state = json.loads(handle.metadata()["state"])
    for name, value in parts["model"].state_dict().items():
        assert torch.equal(value, saved[f"model/{name}"])
    for index, slots in enumerate(parts["optimizer"].state_dict()["state"].values()):
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(slots[slot], saved[f"optimizer/state/{index}/{slot}"])
    assert parts["optimizer"].param_groups[0]["lr"] == state["optimizer"]["param_groups"][0]["lr"]
    assert parts["lr_scheduler"].last_epoch == state["lr_scheduler"]["last_epoch"] == 3
    assert parts["grad_scaler"].get_scale() == state["grad_scaler"]["scale"] == 1024.0
    assert checkpoint.global_step == 3 and checkpoint.state["input"]["position"] == 6


def test_rewriting_an_old_checkpoint_gives_the_same_keys_and_state(tmp_path):
    parts = _fresh()
    checkpoint = ckpt.restore_checkpoint(str(OLD), parts)
    path = str(tmp_path / "model.ckpt-3.safetensors")
    ckpt.write_checkpoint(path, 3, {**parts, "input": checkpoint.state["input"]})
    with safe_open(str(OLD), framework="pt") as old, safe_open(path, framework="pt") as new:
        assert sorted(new.keys()) == sorted(old.keys())
        old_state, new_state = json.loads(old.metadata()["state"]), json.loads(new.metadata()["state"])
    assert sorted(new_state) == sorted(old_state)
    for name in ("optimizer", "lr_scheduler", "grad_scaler", "input"):
        assert new_state[name] == old_state[name]


def test_any_number_of_parts_round_trip(tmp_path):
    model, optimizer, scheduler = trained_parts()
    second = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    second.step()
    ema = torch.optim.swa_utils.AveragedModel(model)
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler,
                                    "second_optimizer": second, "ema": ema})
    torch.manual_seed(1)
    model2 = TinyNet()
    optimizer2, second2 = torch.optim.Adam(model2.parameters()), torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    ema2 = torch.optim.swa_utils.AveragedModel(model2)
    ckpt.restore_checkpoint(path, {"model": model2, "optimizer": optimizer2, "second_optimizer": second2, "ema": ema2})
    assert second2.param_groups[0]["lr"] == 0.1
    assert torch.equal(second2.state_dict()["state"][0]["momentum_buffer"], second.state_dict()["state"][0]["momentum_buffer"])
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)


def test_a_disabled_grad_scaler_and_a_none_part_are_left_out(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": TinyNet(), "optimizer": None,
                                    "grad_scaler": torch.amp.GradScaler("cpu", enabled=False)})
    assert set(ckpt.read_checkpoint(path).state) == {"rng"}


def test_a_second_optimizer_of_another_kind_is_refused_before_anything_loads(tmp_path):
    model = TinyNet()
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": model, "second": torch.optim.SGD(model.parameters(), lr=0.1)})
    other = TinyNet()
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError, match=r"holds the state of a different optimizer than this Estimator's Adam"):
        ckpt.restore_checkpoint(path, {"model": other, "second": torch.optim.Adam(other.parameters())})
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


def test_a_part_the_checkpoint_lacks_keeps_its_state_and_an_optimizer_says_so(tmp_path, caplog):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": TinyNet()})
    model = TinyNet()
    second = torch.optim.SGD(model.parameters(), lr=0.3)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        ckpt.restore_checkpoint(path, {"model": model, "second": second})
    assert "has no second state; the second starts fresh" in caplog.text and second.param_groups[0]["lr"] == 0.3


@pytest.mark.parametrize(
    ("parts", "error", "message"),
    [
        ({"optimizer": None}, ValueError, r"write_checkpoint `parts` must name the model: \{\"model\": <nn.Module>, \.\.\.\}; "
                                          r"received the names \['optimizer'\]"),
        ({"model": TinyNet(), "rng": {"a": 1}}, ValueError, r"may not name a part 'rng': a checkpoint stores the RNG states"),
        ({"model": TinyNet(), "": {"a": 1}}, ValueError, r"`parts` names must be non-empty strings; received ''"),
        ({"model": TinyNet(), "ema": 3}, TypeError, r"`parts\['ema'\]` must have state_dict\(\) and load_state_dict\(\) "
                                                    r"\(or be a mapping of state, saved only\); received int 3"),
        ({"model": "weights"}, TypeError, r"`parts\['model'\]` must be a torch.nn.Module; received str 'weights'"),
        ([("model", TinyNet())], TypeError, r"`parts` must be a mapping of part names to parts"),
    ],
    ids=["no-model", "rng", "empty-name", "not-stateful", "model-not-a-module", "not-a-mapping"],
)
def test_bad_parts_are_clear_errors(tmp_path, parts, error, message):
    with pytest.raises(error, match=message):
        ckpt.write_checkpoint(str(tmp_path / "model.ckpt-1.safetensors"), 1, parts)
    assert list(tmp_path.iterdir()) == []


def test_a_mapping_of_state_can_be_saved_but_not_restored_into(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": TinyNet(), "input": {"position": 4}})
    with pytest.raises(TypeError, match=r"restore_checkpoint `parts\['input'\]` must have load_state_dict\(\) to be "
                                        r"restored; received dict"):
        ckpt.restore_checkpoint(path, {"model": TinyNet(), "input": {"position": 0}})
