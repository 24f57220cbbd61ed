"""Nested checkpoint state <-> (JSON, tensors), with no pickle; the RNG states a checkpoint carries.

Example:
    >>> import json, torch
    >>> tensors = {}
    >>> encoded = encode_state({"step": 3, "moments": (torch.ones(2), [1.5])}, "optimizer", tensors)
    >>> sorted(tensors), json.dumps(encoded)
    (['optimizer/moments/0'], '{"step": 3, "moments": {"__tuple__": [{"__tensor__": "optimizer/moments/0"}, [1.5]]}}')
    >>> decode_state(encoded, tensors)["moments"][1]
    [1.5]
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["encode_state", "decode_state", "rng_state", "set_rng_state"]


_PLAIN = frozenset({bool, int, float, str, type(None)})  # what JSON holds as it is


def encode_state(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors and arrays in a nested structure by references into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        # A sequence of plain values (Python's RNG state: 625 ints) is its own encoding: no call per item.
        items = list(value) if _PLAIN.issuperset(map(type, value)) else [
            encode_state(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode_state(v, f"{key}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, (str, int)) for k in value):
            return {"__items__": [[k, encode_state(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(
        f"Cannot checkpoint {key!r}: values of type {type(value).__name__} are not supported (tensors, "
        f"arrays, numbers, strings, lists, tuples and dicts are)."
    )


def decode_state(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The nested structure :func:`encode_state` encoded, its tensors taken from ``tensors``."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__ndarray__":
            return tensors[inner].numpy()
        if tag == "__tuple__":
            return tuple(decode_state(v, tensors) for v in inner)
        if tag == "__items__":
            return {k: decode_state(v, tensors) for k, v in inner}
    return {k: decode_state(v, tensors) for k, v in value.items()}


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch and (where initialised) CUDA RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states :func:`rng_state` gave (CUDA's only with as many devices as when saved)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
