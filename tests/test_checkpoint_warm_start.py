"""Warm start from a torch_estimator checkpoint: selection, renames, errors."""

from __future__ import annotations

import pytest
import torch

from torch_estimator import checkpoint as ckpt

from .conftest import TinyNet


@pytest.fixture
def source(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path / "source"))
    torch.manual_seed(5)
    model = TinyNet()
    manager.save(7, {"model": model})
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
