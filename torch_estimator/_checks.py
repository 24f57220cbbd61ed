"""What error messages say about a received value, and the check of a dict of named values.

One home for both, so that every message describes what it received the same way: a tensor or array by
its shape and dtype (never its values), a dict entry by entry, anything else by its type and a short repr.

Example:
    >>> import torch
    >>> describe(torch.zeros(3, 4))
    'Tensor(shape=(3, 4), dtype=torch.float32)'
    >>> describe({"x": torch.zeros(2)})
    "dict {'x': Tensor(shape=(2,), dtype=torch.float32)}"
    >>> describe("a" * 100)
    "str 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."
    >>> check_named({"x": 1.0}, float, what="`scales`", expected="a float")
    {'x': 1.0}
    >>> check_named({"": 1.0}, float, what="`scales`", expected="a float")
    Traceback (most recent call last):
    ...
    ValueError: `scales` names must be non-empty strings; received ''.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["describe", "check_named"]

T = TypeVar("T")

REPR_LIMIT = 80  # characters of a repr a message shows
DICT_LIMIT = 8  # entries of a dict a message describes


def describe(value: Any) -> str:
    """A short description of a received value for an error message.

    Args:
        value: Anything a user passed.

    Returns:
        ``Tensor(shape=(2, 3), dtype=torch.float32)`` for a tensor (``ndarray(...)`` for a numpy array),
        ``dict {'key': <description>, ...}`` for a mapping (its first entries), else the type's name and the
        repr, cut at 80 characters.
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, Mapping):
        items = [f"{key!r}: {describe(item)}" for key, item in list(value.items())[:DICT_LIMIT]]
        more = ", ..." if len(value) > DICT_LIMIT else ""
        return "dict {" + ", ".join(items) + more + "}"
    text = repr(value)
    return f"{type(value).__name__} {text[:REPR_LIMIT] + '...' if len(text) > REPR_LIMIT else text}"


def check_named(
    values: Mapping[Any, Any],
    kind: type[T] | tuple[type[T], ...],
    *,
    what: str,
    expected: str,
    entry: str = "{what}[{name!r}]",
    name_error: type[Exception] = ValueError,
) -> dict[str, T]:
    """A dict of named values, checked: every name a non-empty string, every value a ``kind``.

    Args:
        values: The mapping a user passed (the caller has checked that it is one).
        kind: The type (or types) every value must have.
        what: How messages name the argument, e.g. ``"`receiver_tensors`"``.
        expected: What a value must be, for the message, e.g. ``"a TensorSpec"``.
        entry: How messages name one entry: a format string of ``what`` and ``name``.
        name_error: The exception a bad name raises (TF raised ValueError in some places, TypeError in
            others; each caller keeps its own).

    Returns:
        The entries, in order, as a new dict.

    Raises:
        ValueError: (or ``name_error``) If a name is not a non-empty string; the message shows it.
        TypeError: If a value is not a ``kind``; the message names the entry and describes the value.
    """
    checked: dict[str, T] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise name_error(f"{what} names must be non-empty strings; received {name!r}.")
        if not isinstance(value, kind):
            raise TypeError(f"{entry.format(what=what, name=name)} must be {expected}; received {describe(value)}.")
        checked[name] = value
    return checked
