"""Feature values on their way to tensors: strings become integers on the host, values are checked on the device.

A torch tensor cannot hold strings, so string features are turned into integers once, on the host:
:func:`encode_strings` replaces every string by its :func:`~torch_estimator.export.receivers.fingerprint` (a fixed
63-bit FNV-1a hash of its UTF-8 bytes; ``''``, ``None`` and NaN become :data:`MISSING`, ``-1``). Once they are
tensors, :func:`check_values` checks data-dependent conditions (an id in range, a label in ``[0, 1]``) without
stalling an accelerator. Feature columns, heads and ``pandas_input_fn`` use both; neither knows a column.

Example:
    >>> encode_strings({"color": ["red", None], "x": [1.5, 2.0]})["color"].tolist()
    [714311032125047324, -1]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .._checks import describe as _describe
from ..export.receivers import fingerprint

__all__ = ["MISSING", "check_values", "as_array", "encode_strings"]

MISSING = -1  # the id of "no value" in categorical inputs (TF's ignore value for integer sparse inputs)


def check_values(condition: torch.Tensor, message: Callable[[], str]) -> None:
    """Check a data-dependent condition without stalling an accelerator.

    On the CPU the check is immediate and raises ``ValueError(message())``; on an accelerator it is queued
    on the device (``torch._assert_async``), so no step waits for it; while tracing for export it is skipped
    (the traced model treats invalid values as missing instead).
    """
    if torch.jit.is_tracing():
        return
    if condition.device.type == "cpu":
        if not bool(condition.all()):
            raise ValueError(message())
    else:
        torch._assert_async(condition.all(), "torch_estimator: invalid feature or label values")


def as_array(value: Any, key: str) -> np.ndarray:
    """Feature ``key``'s values (a list, numpy array, tensor or pandas Series) as a numpy array with a batch dimension."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    to_numpy = getattr(value, "to_numpy", None)  # pandas Series
    array = to_numpy() if callable(to_numpy) else np.asarray(value)
    if array.ndim == 0:
        raise ValueError(f"Feature {key!r} needs a batch dimension; received a scalar {value!r}.")
    return array


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _fingerprints(array: np.ndarray, key: str) -> np.ndarray:
    codes = np.empty(array.size, dtype=np.int64)
    cache: dict[Any, int] = {}
    for i, value in enumerate(array.astype(object).ravel()):
        if _is_missing(value):
            codes[i] = MISSING
            continue
        code = cache.get(value)
        if code is None:
            if isinstance(value, bytes):
                code = fingerprint(value.decode("utf-8"))
            elif isinstance(value, str):
                code = fingerprint(value)
            else:
                raise ValueError(
                    f"Feature {key!r} mixes strings with {type(value).__name__} values ({value!r}); give strings only "
                    f"(None, NaN and '' mean no value)."
                )
            cache[value] = code
        codes[i] = code
    return codes.reshape(array.shape)


def encode_strings(features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Features as numeric numpy arrays: string values become their fingerprints (``''``, ``None`` and NaN
    become ``-1``, no value); numeric arrays are kept.

    Args:
        features: A dict of arrays (lists, numpy arrays, tensors, pandas Series) or a pandas DataFrame.

    Returns:
        A dict of numpy arrays with the same keys.

    Raises:
        TypeError: If ``features`` is neither a dict nor a DataFrame.
        ValueError: If a feature is a scalar or mixes strings with other values.
    """
    if not isinstance(features, Mapping) and not hasattr(features, "columns"):
        raise TypeError(f"`features` must be a dict of arrays or a pandas DataFrame; received {_describe(features)}.")
    keys = list(features.columns) if hasattr(features, "columns") and not isinstance(features, Mapping) else list(features)
    encoded: dict[str, np.ndarray] = {}
    for key in keys:
        array = as_array(features[key], key)
        if array.dtype.kind in "OUS":
            array = _fingerprints(array, key)
        encoded[key] = array
    return encoded
