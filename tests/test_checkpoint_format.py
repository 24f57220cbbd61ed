"""One checkpoint file: the golden key layout, reading, verifying, damaged and foreign files."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import hashing as ckpt_hashing

from .checkpoint_support import flip_a_data_byte, save_steps, trained_parts, truncate, zero
from .conftest import TinyNet


def test_golden_key_layout(tmp_path):
    model, optimizer, scheduler = trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler, "input": {"position": 6}})
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


def test_tied_weights_are_saved(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    model = Tied()
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": model})
    other = Tied()
    ckpt.restore_checkpoint(path, {"model": other})
    assert torch.equal(other.b.weight, model.a.weight)


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


def test_list_variables(tmp_path):
    path = str(tmp_path / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(path, 1, {"model": torch.nn.Linear(4, 2)})
    assert ckpt.list_variables(path) == {"global_step": (), "model/bias": (2,), "model/weight": (2, 4), "rng/numpy/1": (624,), "rng/torch": (5056,)}


def _alter_the_step(path):  # same length, so only the hash can tell
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(b'"global_step":"12"', b'"global_step":"13"', 1))


def _empty(path):
    Path(path).write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "could not be read: .*incomplete metadata"),
        (zero, "could not be read"),
        (_empty, "could not be read"),
        (flip_a_data_byte, "is damaged: its content hash does not match"),
        (_alter_the_step, "is damaged: its content hash does not match"),
    ],
    ids=["truncated", "zeroed", "empty", "flipped-bit", "altered-metadata"],
)
def test_a_damaged_checkpoint_is_detected_naming_the_file(tmp_path, damage, message):
    save_steps(tmp_path, [12])
    path = ckpt.checkpoint_path_for_step(str(tmp_path), 12)
    damage(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path) + ".*" + message) as caught:
        ckpt.restore_checkpoint(path, {"model": TinyNet()})
    assert caught.value.path == path
    with pytest.raises(ckpt.CheckpointCorruptError):
        ckpt.verify_checkpoint(path)


def test_a_hash_of_an_unknown_kind_is_refused(tmp_path):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    ckpt.write_checkpoint(path, 3, {"model": TinyNet()})
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(ckpt_hashing._HASH_ALGORITHM.encode(), b"x" * len(ckpt_hashing._HASH_ALGORITHM), 1))
    with pytest.raises(ckpt.CheckpointCorruptError, match="has a content hash of unknown kind 'xxxxx"):
        ckpt.read_checkpoint(path)


def test_an_xxh3_hash_without_xxhash_loads_unchecked_and_says_what_to_install(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    monkeypatch.setattr(ckpt_hashing, "_HASH_ALGORITHM", "crc32-tree")
    ckpt.write_checkpoint(path, 3, {"model": TinyNet()})
    data = Path(path).read_bytes()
    Path(path).write_bytes(data.replace(b'"crc32-tree:', b' "xxh3-tree:', 1))  # same length: JSON allows the space
    monkeypatch.delitem(ckpt_hashing.CHUNK_DIGESTS, "xxh3-tree", raising=False)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert ckpt.read_checkpoint(path).global_step == 3  # a good file must never make training fall back
    assert "needs the `xxhash` package to be checked (pip install xxhash); loading it unchecked" in caplog.text


def test_a_checkpoint_without_a_hash_still_loads(tmp_path):
    path = str(tmp_path / "model.ckpt-3.safetensors")
    ckpt.write_checkpoint(path, 3, {"model": TinyNet()}, content_hash=False)
    with safe_open(path, framework="pt") as handle:
        assert "content_hash" not in handle.metadata()
    assert ckpt.read_checkpoint(path).global_step == 3


def test_list_variables_of_a_damaged_file_names_it(tmp_path):
    save_steps(tmp_path, [1])
    path = ckpt.checkpoint_path_for_step(str(tmp_path), 1)
    zero(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match=re.escape(path)):
        ckpt.list_variables(path)
