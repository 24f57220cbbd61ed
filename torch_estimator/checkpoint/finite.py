"""Finite weights: the tensors of a training state by name, and which of them hold a NaN or an infinity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .parts import Parts

__all__ = ["training_state_tensors", "non_finite_tensors"]


def training_state_tensors(parts: Parts) -> dict[str, torch.Tensor]:
    """The weights and optimizer state among a checkpoint's parts (see :mod:`.parts`), by name.

    Every ``torch.nn.Module`` part (the model, EMA weights) gives ``<part>/<name>`` for each tensor of its
    ``state_dict()``; every ``torch.optim.Optimizer`` part (the optimizer, a second optimizer) gives
    ``<part>/<i>/<slot>`` for the ``i``-th parameter's state. Other parts (a scheduler, a gradient scaler, a
    mapping of state) are not weights: an infinity there can be meant (a best-so-far of ``-inf``).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> second = torch.optim.Adam(model.parameters())
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> second.step()
        >>> sorted(training_state_tensors({"model": model, "optimizer": None, "optimizer_b": second}))
        ['model/bias', 'model/weight', 'optimizer_b/0/exp_avg', 'optimizer_b/0/exp_avg_sq', 'optimizer_b/0/step', 'optimizer_b/1/exp_avg', 'optimizer_b/1/exp_avg_sq', 'optimizer_b/1/step']
    """
    named: dict[str, torch.Tensor] = {}
    for part, value in parts.items():
        if isinstance(value, torch.nn.Module):
            named.update((f"{part}/{k}", v) for k, v in value.state_dict().items())
        elif isinstance(value, torch.optim.Optimizer):
            for i, slots in enumerate(value.state.values()):
                named.update((f"{part}/{i}/{slot}", v) for slot, v in slots.items() if isinstance(v, torch.Tensor))
    return named


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity.

    One fused reduction per device and dtype (``torch._foreach_norm`` with ``ord=inf``: the largest
    magnitude, NaN or infinite exactly when some element is) and a single copy to the host: one wait for
    the device in all, meant for moments when the host waits anyway (a save).

    Example:
        >>> non_finite_tensors({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.arange(3)})
        ['b']
    """
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel() and not tensor.is_sparse:
            groups.setdefault((tensor.device, tensor.dtype), []).append((name, tensor.detach()))
    if not groups:
        return []
    names: list[str] = []
    flags: list[torch.Tensor] = []
    for members in groups.values():
        values = [t for _, t in members]
        try:
            norms: Sequence[torch.Tensor] = torch._foreach_norm(values, float("inf"))
        except (RuntimeError, TypeError, NotImplementedError):  # a backend without the fused kernel
            norms = [t.abs().amax() for t in values]
        flags.append(torch.isfinite(torch.stack(list(norms))))
        names.extend(n for n, _ in members)
    finite = torch.cat([f.to(flags[0].device) for f in flags]).tolist()  # the one wait
    return [name for name, ok in zip(names, finite) if not ok]
