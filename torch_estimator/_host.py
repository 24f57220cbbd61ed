"""Values brought to the host as numpy, the way TF's ``session.run`` returned them.

One home for what hooks are handed (``run_values``) and what evaluation returns: a tensor becomes a numpy
array (a 0-dim one a numpy scalar), half precision becomes float32 (numpy has no bfloat16), and the array is
a copy, so an in-place update on the device side (an optimizer step on a fetched parameter, a metric's reset)
never changes a value already handed out. Dicts, lists and tuples are converted item by item; anything else
is returned as it is.

Example:
    >>> import torch
    >>> to_numpy({"loss": torch.tensor(0.5, dtype=torch.bfloat16), "ids": [torch.tensor([1, 2])], "step": 3})
    {'loss': np.float32(0.5), 'ids': [array([1, 2])], 'step': 3}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["to_numpy"]


def to_numpy(value: Any) -> Any:
    """``value`` with every tensor in it as numpy (0-dim tensors as numpy scalars, half precision as float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        array = value.cpu().numpy()
        return array[()] if array.ndim == 0 else array.copy()
    if isinstance(value, Mapping):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(item) for item in value)
    return value
