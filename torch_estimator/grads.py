"""Clearing the gradients before a training step: ``Optimizer.zero_grad()``'s effect, without its wrapping.

``torch.optim.Optimizer.zero_grad()`` (``set_to_none=True``, its default) sets every parameter's ``grad``
to None. It does so inside a wrapper that disables TorchDynamo for the call and inside a profiler range
(``Optimizer.zero_grad#SGD.zero_grad``), which together cost about 60k CPU instructions per call (torch
2.14, one thread): more than all of the Estimator's own work in a step. :func:`grad_clearer` returns a
function with the same effect that skips both while no profiler records, and the optimizer's own call
while one does, so that traces keep their range. An optimizer class that defines its own ``zero_grad``
(or an instance given one) keeps it: the function is then that method.

This module sits at the bottom of the package: it imports nothing from ``torch_estimator``.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    >>> layer(torch.ones(1, 2)).sum().backward()
    >>> clear = grad_clearer(optimizer)
    >>> clear()
    >>> [parameter.grad for parameter in layer.parameters()]
    [None, None]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["grad_clearer"]

_ZERO_GRAD = torch.optim.Optimizer.zero_grad
# True while any profiler records (torch.profiler, emit_nvtx, emit_itt): then the optimizer's own
# zero_grad runs, with its range. Without the function (a torch that lacks it) the optimizer's call always runs.
_profiling: Callable[[], bool] | None = getattr(torch.autograd, "_profiler_enabled", None)


def grad_clearer(optimizer: Any) -> Callable[[], None]:
    """A function that clears the gradients of every parameter ``optimizer`` updates, as
    ``optimizer.zero_grad()`` does.

    Args:
        optimizer: The optimizer whose parameters' gradients to clear: a ``torch.optim.Optimizer`` or any
            object with a ``zero_grad()`` method.

    Returns:
        ``optimizer.zero_grad`` itself when the optimizer defines its own (or is not a
        ``torch.optim.Optimizer``, or torch cannot tell whether a profiler records); else a function that
        sets ``grad = None`` on the parameters of ``optimizer.param_groups`` (read at each call, so groups
        added later or a ``load_state_dict`` are followed), calling ``optimizer.zero_grad()`` instead
        whenever a profiler records.
    """
    method = optimizer.zero_grad
    profiling = _profiling
    if profiling is None or getattr(method, "__func__", None) is not _ZERO_GRAD or method.__self__ is not optimizer:
        return method

    def clear() -> None:
        if profiling():
            method()
            return
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    return clear
