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


class Wrapped(torch.nn.Module):
    """TinyNet's layers under other names: ``backbone.hidden``, ``head``."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.hidden = torch.nn.Linear(4, width)
        self.head = torch.nn.Linear(width, 2)


def test_warm_start_with_regex_renames(source):
    model, path = source
    target = Wrapped()
    settings = ckpt.WarmStartSettings(path, rename=[(r"hidden\.(weight|bias)", r"backbone.hidden.\1"), (r"out\.(.*)", r"head.\1")])
    assert sorted(ckpt.warm_start(target, settings)) == ["backbone.hidden.bias", "backbone.hidden.weight", "head.bias", "head.weight"]
    assert torch.equal(target.backbone.hidden.weight, model.hidden.weight) and torch.equal(target.head.bias, model.out.bias)


def test_var_name_to_prev_var_name_wins_over_a_rename(tmp_path):
    source = torch.nn.Module()
    source.a, source.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ckpt.CheckpointManager(str(tmp_path)).save(1, {"model": source})
    target = torch.nn.Module()
    target.x = torch.nn.Linear(2, 2)
    settings = ckpt.WarmStartSettings(str(tmp_path), var_name_to_prev_var_name={"x.weight": "b.weight"},
                                      rename=[(r"a\.(.*)", r"x.\1")])
    assert sorted(ckpt.warm_start(target, settings)) == ["x.bias", "x.weight"]
    assert torch.equal(target.x.weight, source.b.weight) and torch.equal(target.x.bias, source.a.bias)


@pytest.mark.parametrize(
    ("rename", "model", "error", "message"),
    [
        ([(r"encoder\.(.*)", r"backbone.\1")], Wrapped, ValueError,
         r"warm_start_from .*model.ckpt-7.safetensors: rename pattern 'encoder\\\\.\(\.\*\)' matches no name in the "
         r"checkpoint; it has \['hidden.bias', 'hidden.weight', 'out.bias', 'out.weight'\]"),
        ([(r"out\.(.*)", r"tail.\1")], Wrapped, ValueError,
         r"rename \('out\\\\.\(\.\*\)', 'tail.\\\\1'\) gives \['tail.bias', 'tail.weight'\], none of them a model "
         r"tensor; the model has \['backbone.hidden.bias', 'backbone.hidden.weight', 'head.bias', 'head.weight'\]"),
        ([(r"(hidden|out)\.bias", r"head.bias")], Wrapped, ValueError,
         r"model tensor 'head.bias' is renamed from two checkpoint names, 'hidden.bias' and 'out.bias'; make each "
         r"rename give one name once"),
        ([(r"hidden\.(.*)", r"backbone.hidden.\2")], Wrapped, ValueError,
         r"rename replacement 'backbone.hidden.\\\\2' \(for 'hidden\\\\.\(\.\*\)'\) is invalid: invalid group reference 2"),
        ([(r"hidden\.(.*)", r"backbone.hidden.\1"), (r"out\.(.*)", r"head.\1")], lambda: Wrapped(width=3), ValueError,
         r"backbone.hidden.weight \(as 'hidden.weight'\): checkpoint \(8, 4\) vs model \(3, 4\); backbone.hidden.bias "
         r"\(as 'hidden.bias'\): checkpoint \(8,\) vs model \(3,\)"),
    ],
    ids=["matches-nothing", "gives-no-model-name", "mapped-twice", "bad-group", "shape-mismatch"],
)
def test_bad_renames_are_clear_errors(source, rename, model, error, message):
    target = model()
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(error, match=message):
        ckpt.warm_start(target, ckpt.WarmStartSettings(source[1], rename=rename))
    assert all(torch.equal(value, before[name]) for name, value in target.state_dict().items())  # nothing loaded


@pytest.mark.parametrize(
    ("rename", "error", "message"),
    [
        (("a", "b"), TypeError, r"WarmStartSettings `rename` must be a list of \(regex, replacement\) pairs, .*; received tuple"),
        ("a=b", TypeError, r"WarmStartSettings `rename` must be a list of \(regex, replacement\) pairs"),
        ([("a", "b", "c")], TypeError, r"WarmStartSettings `rename` entries must be \(regex, replacement\) pairs of strings; received tuple"),
        ([("hidden.(weight", "x")], ValueError, r"WarmStartSettings `rename` has an invalid regex 'hidden.\(weight': missing \)"),
    ],
    ids=["a-lone-pair", "a-string", "a-triple", "bad-regex"],
)
def test_rename_settings_are_checked(rename, error, message):
    with pytest.raises(error, match=message):
        ckpt.WarmStartSettings("/runs/old", rename=rename)
