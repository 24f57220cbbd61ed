"""``pandas_input_fn``: an ``input_fn`` over a pandas DataFrame, with TF's rules (needs pandas).

It is :func:`~torch_estimator.inputs.numpy_input_fn` over the DataFrame's columns. Tensors hold no strings, so
string (object) columns become their fingerprints, as :func:`~torch_estimator.canned.encode_features` makes them
(what canned feature columns expect); labels must be numbers (map string labels with
:func:`~torch_estimator.canned.encode_labels` first).

Example:
    >>> import pytest
    >>> pd = pytest.importorskip("pandas")  # (this example is skipped where pandas is not installed)
    >>> from torch_estimator.canned import fingerprint
    >>> frame = pd.DataFrame({"age": [30.0, 40.0, 50.0], "color": ["red", "blue", None]})
    >>> features, labels = next(iter(pandas_input_fn(frame, pd.Series([0, 1, 1]), batch_size=2, shuffle=False)()))
    >>> sorted(features), labels.tolist(), int(features["color"][0]) == fingerprint("red")
    (['age', 'color'], [0, 1], True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .canned.encoding import encode_strings
from .inputs import NumpyInput, _array_input_fn

__all__ = ["pandas_input_fn"]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as error:
        raise TypeError("pandas_input_fn should not be called without pandas installed (pip install pandas).") from error
    return pandas


def _labels(y: Any) -> Any:
    if isinstance(y, _pandas().DataFrame):
        return {name: _labels(y[name]) for name in y.columns}
    values = y.to_numpy()
    if values.dtype.kind in "OUS":
        raise ValueError(
            f"pandas_input_fn labels {y.name!r} are strings; map them to class ids first with "
            f"torch_estimator.canned.encode_labels(labels, label_vocabulary)."
        )
    return values


def pandas_input_fn(
    x: Any,
    y: Any = None,
    batch_size: int = 128,
    num_epochs: int | None = 1,
    shuffle: bool | None = None,
    queue_capacity: int = 1000,
    num_threads: int = 1,
    target_column: str = "target",
    *,
    seed: int | None = None,
) -> Callable[..., NumpyInput]:
    """An ``input_fn`` over a DataFrame ``x`` and labels ``y`` (a Series or DataFrame), as TF's.

    Args:
        x: A pandas DataFrame of features; its index is not a feature.
        y: None, a Series (labels are a tensor) or a DataFrame (labels are a dict), indexed as ``x``; its
            columns may have the names of columns of ``x``.
        batch_size, num_epochs, shuffle, seed: As for :func:`~torch_estimator.inputs.numpy_input_fn`;
            ``shuffle`` must be given.
        queue_capacity, num_threads: Accepted for TF compatibility; there is no queue here.
        target_column: The name TF gave a Series ``y`` inside its queue; it must not be a column of ``x``.

    Returns:
        An ``input_fn`` yielding ``(features, labels)`` batches (features only without ``y``).

    Raises:
        TypeError: If pandas is not installed, or ``x`` is not a DataFrame.
        ValueError: If ``shuffle`` is not a bool, ``x`` and ``y`` have different indexes, ``target_column``
            is a column of ``x``, or labels are strings.
    """
    pandas = _pandas()
    if not isinstance(shuffle, bool):
        raise ValueError(
            "shuffle must be provided and explicitly set as boolean (it is recommended to set it as True for "
            f"training); got {shuffle!r}"
        )
    if not isinstance(x, pandas.DataFrame):
        raise TypeError(f"pandas_input_fn `x` must be a pandas DataFrame; received {type(x).__name__}.")
    del queue_capacity, num_threads  # TF's queue settings: nothing to configure without a queue
    labels = None
    if y is not None:
        if not isinstance(y, (pandas.Series, pandas.DataFrame)):
            raise TypeError(f"pandas_input_fn `y` must be a pandas Series or DataFrame; received {type(y).__name__}.")
        if target_column in x.columns:
            raise ValueError(
                f"Cannot use name {target_column} for target column: DataFrame already has a column with that "
                f"name: {list(x.columns)}"
            )
        if not np.array_equal(x.index, y.index):
            raise ValueError(f"Index for x and y are mismatched.\nIndex for x: {x.index}\nIndex for y: {y.index}\n")
        labels = _labels(y)
    # Label columns may share names with feature columns (TF's): features and labels are separate dicts.
    return _array_input_fn(encode_strings(x), labels, batch_size, num_epochs, shuffle, seed, shared_keys=True)

