"""Optimizers of canned estimators: TF's names, FTRL against a numpy transcription, the combined optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_estimator.canned.optimizers import CombinedOptimizer, Ftrl, get_optimizer_factory


def np_ftrl(w, grads, lr, power=-0.5, initial=0.1, l1=0.0, l2=0.0):
    """tf.keras.optimizers.Ftrl's update (learning_rate_power, initial accumulator, l1, l2), in numpy."""
    n, z = np.full_like(w, initial), np.zeros_like(w)
    for g in grads:
        n_new = n + g * g
        sigma = (n_new ** -power - n ** -power) / lr
        z = z + g - sigma * w
        quadratic = n_new ** -power / lr + 2 * l2
        w = np.where(np.abs(z) > l1, (np.sign(z) * l1 - z) / quadratic, 0.0)
        n = n_new
    return w


@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.05, 0.0), (0.0, 0.3), (0.02, 0.1)])
def test_ftrl_matches_numpy(l1, l2):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=5)
    grads = rng.normal(size=(6, 5))
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = Ftrl([param], lr=0.3, l1_regularization_strength=l1, l2_regularization_strength=l2)
    for g in grads:
        param.grad = torch.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(param.detach().numpy(), np_ftrl(w0, grads, 0.3, l1=l1, l2=l2), rtol=1e-10)


def test_ftrl_l1_makes_exact_zeros():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = Ftrl([param], lr=0.1, l1_regularization_strength=1.0)
    param.grad = torch.tensor([0.5, -0.5, 3.0])
    optimizer.step()
    assert param[:2].tolist() == [0.0, 0.0] and param[2].item() < 0


def test_ftrl_state_round_trips():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = Ftrl([param], lr=0.1)
    param.grad = torch.ones(2)
    optimizer.step()
    other = Ftrl([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    other.load_state_dict(optimizer.state_dict())
    assert torch.equal(next(iter(other.state.values()))["accumulator"], torch.full((2,), 1.1))


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "`lr` must be > 0"),
    ({"learning_rate_power": 0.5}, "`learning_rate_power` must be <= 0"),
    ({"l1_regularization_strength": -1.0}, "`l1_regularization_strength` must be >= 0"),
])
def test_ftrl_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Ftrl([torch.nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.parametrize("name, cls, lr, settings", [
    ("Adagrad", torch.optim.Adagrad, 0.001, {"initial_accumulator_value": 0.1, "eps": 1e-7}),
    ("Adam", torch.optim.Adam, 0.001, {"eps": 1e-7}),
    ("Ftrl", Ftrl, 0.001, {"initial_accumulator_value": 0.1}),
    ("RMSProp", torch.optim.RMSprop, 0.001, {"alpha": 0.9, "eps": 1e-7}),
    ("SGD", torch.optim.SGD, 0.01, {}),
])
def test_names_build_keras_configured_optimizers(name, cls, lr, settings):
    optimizer = get_optimizer_factory(name)(torch.nn.Linear(2, 1).parameters())
    group = optimizer.param_groups[0]
    assert type(optimizer) is cls and group["lr"] == lr
    assert {k: group[k] for k in settings} == settings
    assert get_optimizer_factory(name, 0.2)(torch.nn.Linear(2, 1).parameters()).param_groups[0]["lr"] == 0.2


def test_factories_classes_and_instances_pass_through():
    factory = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
    assert get_optimizer_factory(factory) is factory
    instance = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    assert get_optimizer_factory(instance) is instance
    built = get_optimizer_factory(torch.optim.Adam, 0.03)(torch.nn.Linear(1, 1).parameters())
    assert isinstance(built, torch.optim.Adam) and built.param_groups[0]["lr"] == 0.03


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match=r"Unsupported optimizer name: 'adam'. Supported names are: \('Adagrad', 'Adam'"):
        get_optimizer_factory("adam")
    with pytest.raises(ValueError, match="`dnn_optimizer` must be one of the names"):
        get_optimizer_factory(3, argument="dnn_optimizer")


def test_combined_optimizer_steps_both_and_round_trips_its_state():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    combined = CombinedOptimizer({"a": Ftrl(a.parameters(), lr=0.1), "b": torch.optim.Adam(b.parameters(), lr=0.1)})
    assert len(combined.param_groups) == 2
    before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    combined.zero_grad()
    (a(torch.ones(1, 2)) + b(torch.ones(1, 2))).sum().backward()
    combined.step()
    after = [p.detach() for p in (*a.parameters(), *b.parameters())]
    assert all(not torch.equal(x, y) for x, y in zip(before, after))
    state = combined.state_dict()
    assert sorted(state) == ["a", "b"]
    fresh = CombinedOptimizer({"a": Ftrl(a.parameters(), lr=0.1), "b": torch.optim.Adam(b.parameters(), lr=0.1)})
    fresh.load_state_dict(state)
    assert fresh.optimizers["b"].state_dict()["state"][0]["step"] == 1


def test_combined_optimizer_names_its_groups_and_keeps_sharing_them_after_a_load():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    two_groups = torch.optim.SGD([{"params": [b.weight]}, {"params": [b.bias], "lr": 0.5}], lr=0.1)
    combined = CombinedOptimizer({"linear": torch.optim.SGD(a.parameters(), lr=0.2), "dnn": two_groups})
    assert [g["name"] for g in combined.param_groups] == ["linear", "dnn/0", "dnn/1"]
    state = combined.state_dict()
    for group in state["linear"]["param_groups"]:
        del group["name"]  # a checkpoint written before groups were named
    fresh = CombinedOptimizer({"linear": torch.optim.SGD(a.parameters(), lr=0.2),
                               "dnn": torch.optim.SGD([{"params": [b.weight]}, {"params": [b.bias]}], lr=0.1)})
    fresh.load_state_dict(state)
    assert [g["name"] for g in fresh.param_groups] == ["linear", "dnn/0", "dnn/1"]
    # A scheduler on the combined optimizer must reach the children's (new) groups.
    scheduler = torch.optim.lr_scheduler.StepLR(fresh, step_size=1, gamma=0.5)
    fresh.step()
    scheduler.step()
    assert fresh.optimizers["linear"].param_groups[0]["lr"] == pytest.approx(0.1)
    assert fresh.optimizers["dnn"].param_groups[1]["lr"] == pytest.approx(0.25)


def test_combined_optimizer_errors():
    layer = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="a parameter is updated by two optimizers"):
        CombinedOptimizer({"a": torch.optim.SGD(layer.parameters(), lr=1), "b": torch.optim.SGD(layer.parameters(), lr=1)})
    combined = CombinedOptimizer({"a": torch.optim.SGD(layer.parameters(), lr=1)})
    with pytest.raises(ValueError, match=r"state lacks the optimizers \['a'\]"):
        combined.load_state_dict({"b": {}})
