"""The named parts of a checkpoint: one mapping, as ``torch.distributed.checkpoint`` and torchtitan take them.

A checkpoint holds ``{"model": module, "optimizer": ..., "lr_scheduler": ..., "grad_scaler": ..., "input": ...}``
or any other names (EMA weights, a second optimizer): adding a part adds an entry, nothing else. ``"model"`` is
required: its ``state_dict()`` tensors are stored flat (``model/<name>``) and restored strictly. Every other part
is a :class:`~torch_estimator.protocols.Stateful` (its ``state_dict()`` is saved under its name and
``load_state_dict`` restores it) or, to be saved only, a mapping of state (the input's position). ``"rng"`` is the
checkpoint's own: the RNG states.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> check_parts({"model": model, "optimizer": None}, "write_checkpoint") is model
    True
    >>> check_parts({"optimizer": None}, "write_checkpoint")
    Traceback (most recent call last):
    ...
    ValueError: write_checkpoint `parts` must name the model: {"model": <nn.Module>, ...}; received the names ['optimizer'].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._checks import describe

__all__ = ["MODEL", "RNG", "Parts", "check_parts", "part_state"]

MODEL = "model"
RNG = "rng"

Parts = Mapping[str, Any]
"""Part name -> a ``torch.nn.Module`` (``"model"``), a ``Stateful``, a mapping of state, or None (left out)."""


def check_parts(parts: Parts, what: str, *, restoring: bool = False) -> torch.nn.Module:
    """Check a mapping of named parts and return its model.

    Args:
        parts: The parts (see the module docstring).
        what: The function checking them, for the message.
        restoring: Every part other than the model must have ``load_state_dict`` (a mapping of state can only
            be saved).

    Raises:
        TypeError: If ``parts`` is not a mapping, or a part has the wrong type.
        ValueError: If a name is not a non-empty string, the model is missing, or a part is named ``"rng"``.
    """
    if not isinstance(parts, Mapping):
        raise TypeError(f"{what} `parts` must be a mapping of part names to parts, e.g. {{\"model\": model, "
                        f"\"optimizer\": optimizer}}; received {describe(parts)}.")
    for name, part in parts.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} `parts` names must be non-empty strings; received {name!r}.")
        if name == RNG:
            raise ValueError(f"{what} `parts` may not name a part {RNG!r}: a checkpoint stores the RNG states under "
                             f"that name itself. Rename the part.")
        if part is None or name == MODEL:
            continue
        loads = callable(getattr(part, "load_state_dict", None))
        if restoring and not loads:
            raise TypeError(f"{what} `parts[{name!r}]` must have load_state_dict() to be restored; received "
                            f"{describe(part)}.")
        if not callable(getattr(part, "state_dict", None)) and not isinstance(part, Mapping):
            raise TypeError(f"{what} `parts[{name!r}]` must have state_dict() and load_state_dict() (or be a mapping "
                            f"of state, saved only); received {describe(part)}.")
    model = parts.get(MODEL)
    if model is None:
        raise ValueError(f"{what} `parts` must name the model: {{\"model\": <nn.Module>, ...}}; received the names "
                         f"{sorted(parts)}.")
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"{what} `parts['model']` must be a torch.nn.Module; received {describe(model)}.")
    return model


def part_state(part: Any) -> Any:
    """What a checkpoint saves of a part: its ``state_dict()``, or the mapping itself."""
    return part.state_dict() if callable(getattr(part, "state_dict", None)) else dict(part)
