"""Finite weights: the tensors of a training state by name, and which of them hold a NaN or an infinity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["training_state_tensors", "non_finite_tensors"]


def training_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors (``model/<name>``) and the optimizer's slots (``optimizer/<param>/<slot>``), by name."""
    named = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for i, (_, slots) in enumerate(optimizer.state.items()):
            for slot, value in slots.items():
                if isinstance(value, torch.Tensor):
                    named[f"optimizer/{i}/{slot}"] = value
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
