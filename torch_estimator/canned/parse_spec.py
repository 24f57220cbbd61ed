"""``make_parse_example_spec``: the ``tf.Example`` parsing spec that feature columns need, as TF's.

Numeric columns read a :class:`~torch_estimator.tf_example.FixedLenFeature` of their shape; categorical ones a
:class:`~torch_estimator.tf_example.VarLenFeature` (``str`` or int64, padded with ``""`` / -1, i.e. "no
value"); bucketized, indicator, embedding and crossed columns what their sources read. Give the result to
:func:`~torch_estimator.inputs_tfrecord.tfrecord_input_fn` (with the label's spec added).

Example:
    >>> from torch_estimator import canned
    >>> spec = make_parse_example_spec([canned.numeric_column("age"),
    ...                                 canned.categorical_column_with_vocabulary_list("color", ["red", "blue"])])
    >>> spec["age"]
    FixedLenFeature(shape=(1,), dtype=torch.float32, default_value=None)
    >>> spec["color"].dtype
    <class 'str'>
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tf_example import FeatureSpec, FixedLenFeature, VarLenFeature
from .feature_columns import (
    CrossedColumn,
    FeatureColumn,
    HashBucketColumn,
    IdentityColumn,
    NumericColumn,
    VocabularyListColumn,
    _all_columns,
    _check_columns,
)

__all__ = ["make_parse_example_spec"]


def _categorical(dtype: type) -> VarLenFeature:
    return VarLenFeature(str) if dtype is str else VarLenFeature(torch.int64, padding_value=-1)


def make_parse_example_spec(feature_columns: Sequence[FeatureColumn]) -> dict[str, FeatureSpec]:
    """Feature name -> parsing spec for every raw feature that ``feature_columns`` read (TF's function).

    Raises:
        ValueError: If ``feature_columns`` is not a list of columns, or one feature is read two ways.
    """
    columns = _all_columns(_check_columns(feature_columns, "make_parse_example_spec", unique=False), unique_names=False)
    spec: dict[str, FeatureSpec] = {}

    def put(key: str, value: FeatureSpec, column: FeatureColumn) -> None:
        if key in spec and spec[key] != value:
            raise ValueError(f"make_parse_example_spec: feature {key!r} is read as {spec[key]!r} and, by column "
                             f"{column.name!r}, as {value!r}.")
        spec[key] = value

    for column in columns:
        if isinstance(column, NumericColumn):
            put(column.key, FixedLenFeature(column.shape, column.dtype, column.default_value), column)
        elif isinstance(column, (VocabularyListColumn, HashBucketColumn)):
            put(column.key, _categorical(column.dtype), column)
        elif isinstance(column, IdentityColumn):
            put(column.key, _categorical(int), column)
        elif isinstance(column, CrossedColumn):
            for part in column.parts:
                if isinstance(part, str) and part not in spec:
                    put(part, VarLenFeature(str), column)
    return dict(sorted(spec.items()))
