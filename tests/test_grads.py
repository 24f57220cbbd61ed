"""grads: clearing gradients as ``optimizer.zero_grad()`` does, without its wrapping unless a profiler records."""

from __future__ import annotations

import torch

from torch_estimator import grads
from torch_estimator.grads import grad_clearer


def _with_grads(*modules: torch.nn.Module) -> None:
    for module in modules:
        module(torch.ones(1, 2)).sum().backward()


def _zero_grad_ranges(run) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return [event.name for event in profile.events() if event.name.startswith("Optimizer.zero_grad")]


def test_clears_every_group_including_ones_added_later():
    first, second = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(first.parameters(), lr=0.1)
    clear = grad_clearer(optimizer)
    optimizer.add_param_group({"params": list(second.parameters()), "lr": 0.01})
    _with_grads(first, second)
    clear()
    assert [p.grad for p in [*first.parameters(), *second.parameters()]] == [None] * 4


def test_follows_param_groups_replaced_by_load_state_dict():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    clear = grad_clearer(optimizer)
    groups = optimizer.param_groups
    optimizer.load_state_dict(torch.optim.Adam(layer.parameters(), lr=0.5).state_dict())
    assert optimizer.param_groups is not groups  # what load_state_dict does: the clearer must read them anew
    _with_grads(layer)
    clear()
    assert [p.grad for p in layer.parameters()] == [None, None]


def test_leaves_the_optimizer_state_and_step_as_zero_grad_would():
    torch.manual_seed(0)
    mine, theirs = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    theirs.load_state_dict(mine.state_dict())
    mine_opt, their_opt = torch.optim.Adam(mine.parameters(), lr=0.1), torch.optim.Adam(theirs.parameters(), lr=0.1)
    clear = grad_clearer(mine_opt)
    for step in range(5):
        x = torch.full((1, 2), float(step))
        clear()
        mine(x).sum().backward()
        mine_opt.step()
        their_opt.zero_grad()
        theirs(x).sum().backward()
        their_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters()))


def test_an_optimizer_with_its_own_zero_grad_keeps_it():
    calls = []

    class Zeroing(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none=False)

    layer = torch.nn.Linear(2, 1)
    optimizer = Zeroing(layer.parameters(), lr=0.1)
    _with_grads(layer)
    grad_clearer(optimizer)()
    assert calls == [True] and all(torch.equal(p.grad, torch.zeros_like(p)) for p in layer.parameters())


def test_a_zero_grad_set_on_the_instance_is_kept():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    calls = []
    optimizer.zero_grad = lambda: calls.append("instance")  # type: ignore[method-assign]
    grad_clearer(optimizer)()
    assert calls == ["instance"]


def test_under_a_profiler_the_optimizer_call_runs_and_its_range_is_recorded():
    layer = torch.nn.Linear(2, 1)
    clear = grad_clearer(torch.optim.SGD(layer.parameters(), lr=0.1))
    _with_grads(layer)
    assert _zero_grad_ranges(clear) == ["Optimizer.zero_grad#SGD.zero_grad"]
    assert [p.grad for p in layer.parameters()] == [None, None]


def test_without_a_profiler_the_wrapping_is_skipped(monkeypatch):
    # The profiler is the only way to see the range; tell the clearer that none records, then record.
    monkeypatch.setattr(grads, "_profiling", lambda: False)
    layer = torch.nn.Linear(2, 1)
    clear = grad_clearer(torch.optim.SGD(layer.parameters(), lr=0.1))
    _with_grads(layer)
    assert _zero_grad_ranges(clear) == []
    assert [p.grad for p in layer.parameters()] == [None, None]


def test_a_torch_without_the_profiler_query_uses_the_optimizer_call(monkeypatch):
    monkeypatch.setattr(grads, "_profiling", None)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    assert grad_clearer(optimizer) == optimizer.zero_grad
