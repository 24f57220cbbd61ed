"""Feature columns: how raw tabular features become what a model reads (TF's ``tf.feature_column``).

A column only *describes* a transformation. The modules :class:`DenseFeatures` (the input layer of a DNN)
and :class:`LinearModel` (a linear model's weighted sum over columns) hold the tensors the columns need
(embedding tables, weights, vocabularies, bucket boundaries) and apply them to a dict of feature tensors.

Where strings go. A torch tensor cannot hold strings, so string features are turned into integers once, on
the host, before they become tensors (:mod:`.encoding`): :func:`encode_features` replaces every string by its
:func:`fingerprint` (a fixed 63-bit FNV-1a hash of its UTF-8 bytes; ``''`` and ``None`` become ``-1``,
"missing", TF's ignore value for sparse inputs). Everything else is a tensor operation inside the model, and
so inside an exported artifact: the vocabulary lookup compares fingerprints (or raw integers) with the
vocabulary's, a hash bucket is ``value mod hash_bucket_size``, a cross mixes the ids of its parts,
bucketizing, normalizing and missing-value defaults are tensor ops too, so an export carries its
vocabularies and hash buckets. The serving signature takes one input per raw feature
(:func:`make_feature_spec`): float32 for numeric columns, int64 for integer categorical ones, and dtype
``"string"`` (TF's ``DT_STRING``) for string ones: clients send the strings (``{"size": "medium"}``), and the
loader, the REST server and C++ clients turn them into the same fingerprints before the model runs (an
integer sent for a string input is taken as a fingerprint already). Categorical inputs have shape
``[batch]`` or ``[batch, k]`` (``k`` values per example, ``-1`` for none).

Example:
    >>> import numpy as np, torch
    >>> age = numeric_column("age")
    >>> color = categorical_column_with_vocabulary_list("color", ["red", "green", "blue"])
    >>> layer = DenseFeatures([bucketized_column(age, [18, 65]), indicator_column(color)])
    >>> raw = {"age": np.array([10.0, 30.0, 70.0]), "color": np.array(["blue", "red", ""])}
    >>> features = {k: torch.as_tensor(v) for k, v in encode_features(raw).items()}
    >>> layer(features)
    tensor([[1., 0., 0., 0., 0., 1.],
            [0., 1., 0., 1., 0., 0.],
            [0., 0., 1., 0., 0., 0.]])
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from .._checks import describe as _describe
from ..export.receivers import STRING, TensorSpec, fingerprint
from .encoding import MISSING, as_array, check_values, encode_strings

__all__ = [
    "FeatureColumn",
    "DenseColumn",
    "CategoricalColumn",
    "NumericColumn",
    "BucketizedColumn",
    "VocabularyListColumn",
    "IdentityColumn",
    "HashBucketColumn",
    "CrossedColumn",
    "IndicatorColumn",
    "EmbeddingColumn",
    "numeric_column",
    "bucketized_column",
    "categorical_column_with_vocabulary_list",
    "categorical_column_with_identity",
    "categorical_column_with_hash_bucket",
    "crossed_column",
    "indicator_column",
    "embedding_column",
    "DenseFeatures",
    "LinearModel",
    "fingerprint",
    "encode_features",
    "make_feature_spec",
]

# Crosses mix ids modulo a prime below 2**31, so that every product fits in int64 on every device.
_CROSS_PRIME, _CROSS_MODULUS, _CROSS_SEED = 1_000_003, 2_147_483_647, 1_469_598_103


def _check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} `key` must be a non-empty string; received {key!r}.")
    return key


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an int >= 1; received {value!r}.")
    return int(value)


def _safe_name(name: str) -> str:
    """A module attribute name for a column name (``nn.ModuleDict`` keys may not contain dots)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _feature(features: Mapping[str, torch.Tensor], key: str, column: str) -> torch.Tensor:
    if not isinstance(features, Mapping):
        raise TypeError(
            f"Feature columns read a dict of feature tensors keyed by feature name; received {_describe(features)}. "
            f"Return {{'{key}': tensor, ...}} from input_fn."
        )
    if key not in features:
        raise ValueError(
            f"Feature {key!r} (needed by column {column!r}) is not in the input features; received keys "
            f"{sorted(features)}."
        )
    value = features[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"Feature {key!r} must be a Tensor; received {_describe(value)}.")
    if value.dim() == 0:
        raise ValueError(f"Feature {key!r} needs a batch dimension; received a scalar.")
    return value


# ----------------------------------------------------------------------------------------------------------
# Column types.


class FeatureColumn:
    """Base of all columns: a ``name`` (unique among the columns of a model) and the raw ``keys`` it reads."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def keys(self) -> tuple[str, ...]:
        """The raw feature keys this column reads."""
        raise NotImplementedError

    def _parents(self) -> tuple[FeatureColumn, ...]:
        return ()

    def _make_state(self) -> nn.Module | None:
        """A module holding the tensors the transformation needs (buffers, parameters), or None."""
        return None


class _KeyedColumn(FeatureColumn):
    """A column that reads the one raw feature named by its ``key`` field, and is named after it."""

    key: str

    @property
    def name(self) -> str:
        return self.key

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)


class DenseColumn(FeatureColumn):
    """A column that gives a dense ``[batch, dimension]`` float tensor: a DNN can read it.

    Subclasses have a ``dimension`` (an int attribute or property).
    """

    if TYPE_CHECKING:

        @property
        def dimension(self) -> int: ...

    def _dense(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        raise NotImplementedError


class CategoricalColumn(FeatureColumn):
    """A column that gives integer ids in ``[0, num_buckets)``, ``[batch, k]`` with ``-1`` for "no value".

    Subclasses have a ``num_buckets`` (an int attribute or property).
    """

    if TYPE_CHECKING:

        @property
        def num_buckets(self) -> int: ...

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        raise NotImplementedError


def _categorical_input(features: Mapping[str, torch.Tensor], key: str, column: str) -> torch.Tensor:
    """A raw categorical feature as int64 ``[batch, k]``."""
    value = _feature(features, key, column)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(
            f"Feature {key!r} of categorical column {column!r} must hold integers (ids, or the fingerprints "
            f"of strings made by encode_features); received dtype {value.dtype}."
        )
    value = value.to(torch.int64)
    return value.unsqueeze(1) if value.dim() == 1 else value.flatten(1)


def _state(states: Mapping[str, nn.Module], column: str, name: str) -> torch.Tensor:
    """The tensor ``name`` of a column's state module (a module's attributes are typed Tensor | Module)."""
    return cast(torch.Tensor, getattr(states[column], name))


class _Buffers(nn.Module):
    """Non-persistent buffers: derived from a column's definition, so not part of checkpoints."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor, persistent=False)


@dataclasses.dataclass(frozen=True)
class NumericColumn(_KeyedColumn, DenseColumn):
    """Real values of shape ``shape`` per example (``numeric_column``)."""

    key: str
    shape: tuple[int, ...] = (1,)
    default_value: float | None = None
    dtype: torch.dtype = torch.float32
    normalizer_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def dimension(self) -> int:
        return math.prod(self.shape)

    def _values(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        value = _feature(features, self.key, self.name)
        flat = value.reshape(value.shape[0], -1)
        if flat.shape[1] != self.dimension:
            raise ValueError(
                f"Feature {self.key!r} of numeric column {self.name!r} (shape {list(self.shape)}) must have "
                f"{self.dimension} value(s) per example; received shape {list(value.shape)}."
            )
        flat = flat.to(self.dtype)
        if self.default_value is not None:
            flat = torch.where(torch.isnan(flat), torch.full_like(flat, self.default_value), flat)
        if self.normalizer_fn is not None:
            flat = self.normalizer_fn(flat)
        return flat

    def _dense(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        return self._values(features).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class BucketizedColumn(DenseColumn, CategoricalColumn):
    """A numeric column cut into ranges ``(-inf, b0), [b0, b1), ..., [bn, inf)`` (``bucketized_column``).

    Dense, it is the one-hot bucket of each value; categorical, element ``i`` of the source falls in id
    ``i * (len(boundaries) + 1) + bucket``.
    """

    source_column: NumericColumn
    boundaries: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{self.source_column.name}_bucketized"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.source_column.keys

    @property
    def num_buckets(self) -> int:
        return (len(self.boundaries) + 1) * self.source_column.dimension

    @property
    def dimension(self) -> int:
        return self.num_buckets

    def _parents(self) -> tuple[FeatureColumn, ...]:
        return (self.source_column,)

    def _make_state(self) -> nn.Module:
        return _Buffers(boundaries=torch.tensor(self.boundaries, dtype=torch.float32))

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        values = self.source_column._values(features)
        boundaries = _state(states, self.name, "boundaries")
        buckets = torch.bucketize(values.to(boundaries.dtype), boundaries, right=True)
        offsets = torch.arange(values.shape[1], device=values.device) * (len(self.boundaries) + 1)
        return buckets + offsets

    def _dense(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        return _multi_hot(self._ids(features, states), self.num_buckets)


@dataclasses.dataclass(frozen=True)
class VocabularyListColumn(_KeyedColumn, CategoricalColumn):
    """Values looked up in a vocabulary (``categorical_column_with_vocabulary_list``).

    Id ``i`` is ``vocabulary_list[i]``; a value outside it gets ``default_value`` (``-1``: no value), or with
    ``num_oov_buckets`` one of the ids ``len(vocabulary_list) + (value mod num_oov_buckets)``. String
    vocabularies are matched by fingerprint (see :func:`encode_features`).
    """

    key: str
    vocabulary_list: tuple[Any, ...]
    dtype: type = str
    default_value: int = MISSING
    num_oov_buckets: int = 0

    @property
    def num_buckets(self) -> int:
        return len(self.vocabulary_list) + self.num_oov_buckets

    def encoded_vocabulary(self) -> list[int]:
        """The vocabulary as the integers the model compares with: fingerprints of strings, or the ints."""
        if self.dtype is str:
            return [fingerprint(v) for v in self.vocabulary_list]
        return [int(v) for v in self.vocabulary_list]

    def _make_state(self) -> nn.Module:
        values = torch.tensor(self.encoded_vocabulary(), dtype=torch.int64)
        ordered, order = torch.sort(values)
        return _Buffers(sorted_values=ordered, order=order)

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        values = _categorical_input(features, self.key, self.name)
        ordered, order = _state(states, self.name, "sorted_values"), _state(states, self.name, "order")
        position = torch.searchsorted(ordered, values).clamp(max=ordered.numel() - 1)
        found = ordered[position] == values
        missing = values == MISSING
        if self.num_oov_buckets:
            fallback = len(self.vocabulary_list) + torch.remainder(values, self.num_oov_buckets)
        else:
            fallback = torch.full_like(values, self.default_value)
        return torch.where(missing, torch.full_like(values, MISSING), torch.where(found, order[position], fallback))


@dataclasses.dataclass(frozen=True)
class IdentityColumn(_KeyedColumn, CategoricalColumn):
    """Integer ids used as they are (``categorical_column_with_identity``).

    Ids must be in ``[0, num_buckets)`` (or ``-1``, no value); others get ``default_value`` when it is
    given, else they are an error.
    """

    key: str
    num_buckets: int
    default_value: int | None = None

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        values = _categorical_input(features, self.key, self.name)
        valid = (values >= 0) & (values < self.num_buckets)
        missing = values == MISSING
        if self.default_value is None:
            check_values(valid | missing, lambda: (
                f"Column {self.name!r}: ids must be in [0, {self.num_buckets}) (or -1 for no value); received "
                f"{sorted(set(values[~(valid | missing)].tolist()))[:10]}. Give default_value= to map them to "
                f"one id instead."
            ))
            fallback = torch.full_like(values, MISSING)  # reached only in a traced export
        else:
            fallback = torch.full_like(values, self.default_value)
        return torch.where(valid, values, torch.where(missing, torch.full_like(values, MISSING), fallback))


@dataclasses.dataclass(frozen=True)
class HashBucketColumn(_KeyedColumn, CategoricalColumn):
    """Values spread over ``hash_bucket_size`` ids (``categorical_column_with_hash_bucket``).

    The id is ``value mod hash_bucket_size``, where a string's value is its :func:`fingerprint` (TF hashed
    strings with FarmHash; integer features here are used as their own hash).
    """

    key: str
    hash_bucket_size: int
    dtype: type = str

    @property
    def num_buckets(self) -> int:
        return self.hash_bucket_size

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        values = _categorical_input(features, self.key, self.name)
        return torch.where(values == MISSING, values, torch.remainder(values, self.hash_bucket_size))


@dataclasses.dataclass(frozen=True)
class CrossedColumn(CategoricalColumn):
    """Every combination of the values of several categorical features, hashed (``crossed_column``).

    ``keys`` are raw feature names (their values, fingerprints for strings) or categorical columns (their
    ids). Multi-valued inputs cross every combination; an example missing a part has no value.
    """

    parts: tuple[str | CategoricalColumn, ...]
    hash_bucket_size: int
    hash_key: int | None = None

    @property
    def name(self) -> str:
        return "_X_".join(sorted(p if isinstance(p, str) else p.name for p in self.parts))

    @property
    def keys(self) -> tuple[str, ...]:
        keys: list[str] = []
        for part in self.parts:
            for key in (part,) if isinstance(part, str) else part.keys:
                if key not in keys:
                    keys.append(key)
        return tuple(keys)

    @property
    def num_buckets(self) -> int:
        return self.hash_bucket_size

    def _parents(self) -> tuple[FeatureColumn, ...]:
        return tuple(p for p in self.parts if not isinstance(p, str))

    def _ids(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        seed = _CROSS_SEED if self.hash_key is None else self.hash_key % _CROSS_MODULUS
        ids = [_categorical_input(features, part, self.name) if isinstance(part, str) else part._ids(features, states)
               for part in self.parts]  # crossed_column checks there are >= 2 parts
        crossed = torch.remainder(seed * _CROSS_PRIME + torch.remainder(ids[0], _CROSS_MODULUS), _CROSS_MODULUS)
        missing = ids[0] == MISSING
        for values in ids[1:]:
            # Every combination: [batch, a] x [batch, b] -> [batch, a * b].
            left, right = crossed.unsqueeze(2), torch.remainder(values, _CROSS_MODULUS).unsqueeze(1)
            crossed = torch.remainder(left * _CROSS_PRIME + right, _CROSS_MODULUS).flatten(1)
            missing = (missing.unsqueeze(2) | (values == MISSING).unsqueeze(1)).flatten(1)
        return torch.where(missing, torch.full_like(crossed, MISSING), torch.remainder(crossed, self.hash_bucket_size))


def _multi_hot(ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """``[batch, k]`` ids (``-1``: none) -> ``[batch, num_buckets]`` counts, as TF's indicator column."""
    valid = (ids >= 0) & (ids < num_buckets)
    one_hot = nn.functional.one_hot(torch.where(valid, ids, torch.zeros_like(ids)), num_buckets)
    return (one_hot * valid.unsqueeze(-1)).sum(1).to(torch.float32)


def _combine(rows: torch.Tensor, ids: torch.Tensor, num_buckets: int, combiner: str) -> torch.Tensor:
    """Rows of a table for ``[batch, k]`` ids, combined over ``k`` by ``combiner``; no ids give zeros."""
    valid = (ids >= 0) & (ids < num_buckets)
    gathered = nn.functional.embedding(torch.where(valid, ids, torch.zeros_like(ids)), rows)
    weights = valid.to(gathered.dtype).unsqueeze(-1)
    total = (gathered * weights).sum(1)
    if combiner == "sum":
        return total
    count = weights.sum(1)
    if combiner == "mean":
        return total / count.clamp(min=1.0)
    return total / count.sqrt().clamp(min=1.0)  # sqrtn


@dataclasses.dataclass(frozen=True)
class IndicatorColumn(DenseColumn):
    """A categorical column as a multi-hot vector of ``num_buckets`` counts (``indicator_column``)."""

    categorical_column: CategoricalColumn

    @property
    def name(self) -> str:
        return f"{self.categorical_column.name}_indicator"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.categorical_column.keys

    @property
    def dimension(self) -> int:
        return self.categorical_column.num_buckets

    def _parents(self) -> tuple[FeatureColumn, ...]:
        return (self.categorical_column,)

    def _dense(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        return _multi_hot(self.categorical_column._ids(features, states), self.categorical_column.num_buckets)


class _EmbeddingTable(nn.Module):
    def __init__(self, num_buckets: int, dimension: int, trainable: bool) -> None:
        super().__init__()
        weight = torch.empty(num_buckets, dimension)
        # TF's default: truncated normal with stddev 1/sqrt(dimension).
        nn.init.trunc_normal_(weight, std=1.0 / math.sqrt(dimension), a=-2.0 / math.sqrt(dimension), b=2.0 / math.sqrt(dimension))
        self.weight = nn.Parameter(weight, requires_grad=trainable)


@dataclasses.dataclass(frozen=True)
class EmbeddingColumn(DenseColumn):
    """A categorical column as a learned ``dimension``-vector, combined over several values
    (``embedding_column``): ``combiner`` ``"mean"`` (default), ``"sum"`` or ``"sqrtn"``."""

    categorical_column: CategoricalColumn
    dimension: int
    combiner: str = "mean"
    max_norm: float | None = None
    trainable: bool = True

    @property
    def name(self) -> str:
        return f"{self.categorical_column.name}_embedding"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.categorical_column.keys

    def _parents(self) -> tuple[FeatureColumn, ...]:
        return (self.categorical_column,)

    def _make_state(self) -> nn.Module:
        return _EmbeddingTable(self.categorical_column.num_buckets, self.dimension, self.trainable)

    def _dense(self, features: Mapping[str, torch.Tensor], states: Mapping[str, nn.Module]) -> torch.Tensor:
        rows = _state(states, self.name, "weight")
        if self.max_norm is not None:
            rows = rows * (self.max_norm / rows.norm(dim=1, keepdim=True).clamp(min=self.max_norm))
        ids = self.categorical_column._ids(features, states)
        return _combine(rows, ids, self.categorical_column.num_buckets, self.combiner)


# ----------------------------------------------------------------------------------------------------------
# Constructors (TF's names and arguments).


def numeric_column(
    key: str,
    shape: int | Sequence[int] = (1,),
    default_value: float | None = None,
    dtype: torch.dtype = torch.float32,
    normalizer_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> NumericColumn:
    """Real-valued feature ``key`` with ``shape`` values per example.

    Args:
        key: The feature's name in the features dict.
        shape: Values per example (an int or a shape); the input is ``[batch, *shape]`` (``[batch]`` for 1).
        default_value: Replaces NaN (missing) values.
        dtype: A floating dtype the values are cast to.
        normalizer_fn: A tensor function applied to the ``[batch, prod(shape)]`` values, inside the model (so
            it must be made of torch operations to be exported), e.g. ``lambda x: (x - 3.0) / 2.0``.

    Raises:
        ValueError: For a bad key, shape, default value, dtype or normalizer.

    Example:
        >>> numeric_column("price", shape=2).dimension
        2
    """
    _check_key(key, "numeric_column")
    dims = (shape,) if isinstance(shape, numbers.Integral) else tuple(cast(Sequence[int], shape))
    if not dims:
        raise ValueError(f"numeric_column {key!r}: `shape` must have at least one dimension; received {dims!r}.")
    shape = tuple(_check_positive_int(d, f"numeric_column {key!r} `shape` entries") for d in dims)
    if default_value is not None and (isinstance(default_value, bool) or not isinstance(default_value, numbers.Real)):
        raise ValueError(f"numeric_column {key!r}: `default_value` must be a number or None; received {default_value!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"numeric_column {key!r}: `dtype` must be a floating torch.dtype; received {dtype!r}.")
    if normalizer_fn is not None and not callable(normalizer_fn):
        raise ValueError(f"numeric_column {key!r}: `normalizer_fn` must be callable; received {_describe(normalizer_fn)}.")
    return NumericColumn(key, shape, None if default_value is None else float(default_value), dtype, normalizer_fn)


def bucketized_column(source_column: NumericColumn, boundaries: Sequence[float]) -> BucketizedColumn:
    """``source_column`` cut at ``boundaries`` (sorted, increasing): ``len(boundaries) + 1`` buckets.

    Raises:
        ValueError: If the source is not a numeric column or the boundaries are not increasing.

    Example:
        >>> column = bucketized_column(numeric_column("age"), [18, 65])
        >>> column.name, column.num_buckets
        ('age_bucketized', 3)
    """
    if not isinstance(source_column, NumericColumn):
        raise ValueError(
            f"bucketized_column `source_column` must be a numeric_column; received {_describe(source_column)}."
        )
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Iterable):
        raise ValueError(f"bucketized_column `boundaries` must be a sorted list of numbers; received {boundaries!r}.")
    values = tuple(float(b) for b in boundaries)
    if not values or any(b >= c for b, c in zip(values, values[1:])):
        raise ValueError(
            f"bucketized_column `boundaries` must be a non-empty, strictly increasing list; received {list(boundaries)!r}."
        )
    return BucketizedColumn(source_column, values)


def categorical_column_with_vocabulary_list(
    key: str,
    vocabulary_list: Sequence[Any],
    dtype: type | None = None,
    default_value: int = MISSING,
    num_oov_buckets: int = 0,
) -> VocabularyListColumn:
    """Feature ``key`` looked up in ``vocabulary_list`` (strings or ints): id ``i`` is its ``i``-th entry.

    Args:
        key: The feature's name.
        vocabulary_list: Distinct strings, or distinct ints.
        dtype: ``str`` or ``int``; inferred from the vocabulary when None.
        default_value: The id of values outside the vocabulary (``-1``: no value); not with
            ``num_oov_buckets``.
        num_oov_buckets: Spread values outside the vocabulary over this many extra ids.

    Raises:
        ValueError: For an empty vocabulary, duplicates, mixed types, or a bad default/OOV setting.

    Example:
        >>> categorical_column_with_vocabulary_list("color", ["red", "green"], num_oov_buckets=2).num_buckets
        4
    """
    _check_key(key, "categorical_column_with_vocabulary_list")
    if isinstance(vocabulary_list, (str, bytes)) or not isinstance(vocabulary_list, Iterable):
        raise ValueError(f"Column {key!r}: `vocabulary_list` must be a list of strings or ints; received {vocabulary_list!r}.")
    vocabulary = tuple(vocabulary_list)
    if not vocabulary:
        raise ValueError(f"Column {key!r}: `vocabulary_list` must not be empty.")
    kinds = {str if isinstance(v, str) else int if isinstance(v, numbers.Integral) and not isinstance(v, bool) else None
             for v in vocabulary}
    if None in kinds or len(kinds) > 1:
        raise ValueError(f"Column {key!r}: `vocabulary_list` must be all strings or all ints; received {list(vocabulary)!r}.")
    inferred = cast(type, kinds.pop())  # str or int: None was refused above
    if dtype is not None and dtype is not inferred:
        raise ValueError(f"Column {key!r}: `dtype` {dtype!r} does not match the vocabulary's type {inferred.__name__}.")
    if inferred is int:
        vocabulary = tuple(int(v) for v in vocabulary)
    duplicates = sorted({str(v) for v in vocabulary if vocabulary.count(v) > 1})
    if duplicates:
        raise ValueError(f"Column {key!r}: duplicate keys in `vocabulary_list`: {duplicates}.")
    if inferred is str:
        hashes = [fingerprint(v) for v in vocabulary]
        if len(set(hashes)) != len(hashes):  # astronomically unlikely, but it would silently merge two values
            raise ValueError(f"Column {key!r}: two vocabulary entries share a fingerprint; rename one.")
    if isinstance(num_oov_buckets, bool) or not isinstance(num_oov_buckets, numbers.Integral) or num_oov_buckets < 0:
        raise ValueError(f"Column {key!r}: `num_oov_buckets` must be an int >= 0; received {num_oov_buckets!r}.")
    if isinstance(default_value, bool) or not isinstance(default_value, numbers.Integral):
        raise ValueError(f"Column {key!r}: `default_value` must be an int; received {default_value!r}.")
    if num_oov_buckets and default_value != MISSING:
        raise ValueError(f"Column {key!r}: give `default_value` or `num_oov_buckets`, not both.")
    if not (default_value == MISSING or 0 <= default_value < len(vocabulary)):
        raise ValueError(
            f"Column {key!r}: `default_value` must be -1 or an id in [0, {len(vocabulary)}); received {default_value}."
        )
    return VocabularyListColumn(key, vocabulary, inferred, int(default_value), int(num_oov_buckets))


def categorical_column_with_identity(key: str, num_buckets: int, default_value: int | None = None) -> IdentityColumn:
    """Integer feature ``key`` whose values are the ids, in ``[0, num_buckets)``.

    Raises:
        ValueError: For a bad ``num_buckets`` or a ``default_value`` outside ``[0, num_buckets)``.

    Example:
        >>> categorical_column_with_identity("weekday", 7).num_buckets
        7
    """
    _check_key(key, "categorical_column_with_identity")
    num_buckets = _check_positive_int(num_buckets, f"Column {key!r}: `num_buckets`")
    if default_value is not None and (
        isinstance(default_value, bool) or not isinstance(default_value, numbers.Integral) or not 0 <= default_value < num_buckets
    ):
        raise ValueError(
            f"Column {key!r}: `default_value` must be None or an id in [0, {num_buckets}); received {default_value!r}."
        )
    return IdentityColumn(key, num_buckets, None if default_value is None else int(default_value))


def categorical_column_with_hash_bucket(key: str, hash_bucket_size: int, dtype: type = str) -> HashBucketColumn:
    """Feature ``key`` (strings or ints) hashed into ``hash_bucket_size`` ids.

    Raises:
        ValueError: For ``hash_bucket_size < 2`` or a dtype other than ``str``/``int``.

    Example:
        >>> categorical_column_with_hash_bucket("city", 100).num_buckets
        100
    """
    _check_key(key, "categorical_column_with_hash_bucket")
    if isinstance(hash_bucket_size, bool) or not isinstance(hash_bucket_size, numbers.Integral) or hash_bucket_size < 2:
        raise ValueError(f"Column {key!r}: `hash_bucket_size` must be an int >= 2; received {hash_bucket_size!r}.")
    if dtype not in (str, int):
        raise ValueError(f"Column {key!r}: `dtype` must be str or int; received {dtype!r}.")
    return HashBucketColumn(key, int(hash_bucket_size), dtype)


def crossed_column(keys: Sequence[str | CategoricalColumn], hash_bucket_size: int, hash_key: int | None = None) -> CrossedColumn:
    """The cross of two or more raw features (by name) or categorical columns, hashed into
    ``hash_bucket_size`` ids. Best used in a linear model (or wrapped in an indicator/embedding column).

    Raises:
        ValueError: For fewer than 2 keys, a hashed column among them (cross its raw key instead, as TF
            requires), or a bad ``hash_bucket_size``.

    Example:
        >>> crossed_column(["color", bucketized_column(numeric_column("age"), [30])], 50).name
        'age_bucketized_X_color'
    """
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise ValueError(f"crossed_column `keys` must be a list of feature names or categorical columns; received {keys!r}.")
    parts = tuple(keys)
    if len(parts) < 2:
        raise ValueError(f"crossed_column needs at least 2 keys to cross; received {list(parts)!r}.")
    for part in parts:
        if isinstance(part, HashBucketColumn):
            raise ValueError(
                f"crossed_column: column {part.name!r} is a hash-bucket column; cross its raw key {part.key!r} instead."
            )
        if not isinstance(part, (str, CategoricalColumn)):
            raise ValueError(f"crossed_column keys must be strings or categorical columns; received {_describe(part)}.")
    if isinstance(hash_bucket_size, bool) or not isinstance(hash_bucket_size, numbers.Integral) or hash_bucket_size < 2:
        raise ValueError(f"crossed_column `hash_bucket_size` must be an int >= 2; received {hash_bucket_size!r}.")
    return CrossedColumn(parts, int(hash_bucket_size), hash_key)


def indicator_column(categorical_column: CategoricalColumn) -> IndicatorColumn:
    """A categorical column as multi-hot counts, for a DNN.

    Raises:
        ValueError: If the argument is not a categorical column.
    """
    if not isinstance(categorical_column, CategoricalColumn):
        raise ValueError(f"indicator_column needs a categorical column; received {_describe(categorical_column)}.")
    return IndicatorColumn(categorical_column)


_COMBINERS = ("mean", "sum", "sqrtn")


def embedding_column(
    categorical_column: CategoricalColumn,
    dimension: int,
    combiner: str = "mean",
    max_norm: float | None = None,
    trainable: bool = True,
) -> EmbeddingColumn:
    """A categorical column as a learned dense vector of ``dimension`` values, for a DNN.

    Raises:
        ValueError: For a non-categorical column, a bad dimension, combiner or max_norm.

    Example:
        >>> embedding_column(categorical_column_with_identity("item", 1000), 8).dimension
        8
    """
    if not isinstance(categorical_column, CategoricalColumn):
        raise ValueError(f"embedding_column needs a categorical column; received {_describe(categorical_column)}.")
    dimension = _check_positive_int(dimension, "embedding_column `dimension`")
    if combiner not in _COMBINERS:
        raise ValueError(f"embedding_column `combiner` must be one of {_COMBINERS}; received {combiner!r}.")
    if max_norm is not None and not (isinstance(max_norm, numbers.Real) and max_norm > 0):
        raise ValueError(f"embedding_column `max_norm` must be a number > 0 or None; received {max_norm!r}.")
    return EmbeddingColumn(categorical_column, dimension, combiner, max_norm, bool(trainable))


# ----------------------------------------------------------------------------------------------------------
# Modules.


def _check_columns(feature_columns: Any, owner: str, unique: bool = True) -> list[FeatureColumn]:
    if isinstance(feature_columns, FeatureColumn):
        feature_columns = [feature_columns]
    if isinstance(feature_columns, (str, bytes, Mapping)) or not isinstance(feature_columns, Iterable):
        raise ValueError(f"{owner}: `feature_columns` must be a list of feature columns; received {feature_columns!r}.")
    columns = list(feature_columns)
    if not columns:
        raise ValueError(f"{owner}: `feature_columns` must not be empty.")
    for column in columns:
        if not isinstance(column, FeatureColumn):
            raise ValueError(
                f"{owner}: items of `feature_columns` must be feature columns (numeric_column(...), ...); "
                f"received {_describe(column)}."
            )
    names = [c.name for c in columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates and unique:
        raise ValueError(f"{owner}: duplicate feature column names {duplicates}; each column may appear once.")
    return sorted(columns, key=lambda c: c.name)  # TF orders columns by name


def _all_columns(columns: Iterable[FeatureColumn], unique_names: bool = True) -> list[FeatureColumn]:
    """The columns and, recursively, the columns they are built on (equal columns once)."""
    found: list[FeatureColumn] = []
    stack = list(columns)
    while stack:
        column = stack.pop()
        same_name = [c for c in found if c.name == column.name]
        if any(c == column for c in same_name):
            continue
        if same_name and unique_names:
            raise ValueError(f"Two different feature columns are both named {column.name!r}; rename one.")
        found.append(column)
        stack.extend(column._parents())
    return sorted(found, key=lambda c: c.name)


class _ColumnStates(nn.Module):
    """The tensors of every column (and of the columns they are built on), by column name."""

    def __init__(self, columns: Iterable[FeatureColumn]) -> None:
        super().__init__()
        self.names: dict[str, str] = {}
        states: dict[str, nn.Module] = {}
        owners: dict[str, FeatureColumn] = {}
        for column in _all_columns(columns, unique_names=False):
            state = column._make_state()
            if state is None:
                continue
            attribute = _safe_name(column.name)
            if attribute in states:
                raise ValueError(
                    f"Feature columns {owners[attribute]!r} and {column!r} both need tensors under the name "
                    f"{column.name!r}; give them different keys."
                )
            states[attribute], owners[attribute] = state, column
            self.names[column.name] = attribute
        self.states = nn.ModuleDict(states)

    def by_name(self) -> dict[str, nn.Module]:
        return {name: self.states[attribute] for name, attribute in self.names.items()}


class DenseFeatures(nn.Module):
    """The input layer of a DNN: a dict of feature tensors -> ``[batch, output_dim]`` float, the dense
    columns concatenated in order of their names (TF's ``DenseFeatures`` / ``input_layer``).

    Args:
        feature_columns: Dense columns: numeric, bucketized, indicator, embedding.

    Raises:
        ValueError: If a column is categorical (wrap it in indicator_column or embedding_column), or names repeat.

    Example:
        >>> layer = DenseFeatures([numeric_column("x", shape=2), numeric_column("y")])
        >>> layer({"x": torch.tensor([[1.0, 2.0]]), "y": torch.tensor([3.0])})
        tensor([[1., 2., 3.]])
    """

    def __init__(self, feature_columns: Sequence[FeatureColumn]) -> None:  # dense ones: checked
        super().__init__()
        columns = _check_columns(feature_columns, "DenseFeatures")
        for column in columns:
            if not isinstance(column, DenseColumn):
                raise ValueError(
                    f"Items of feature_columns must be dense columns; {column.name!r} is categorical. Wrap it: "
                    f"embedding_column({column.name!r} column, dimension) or indicator_column(...)."
                )
        self.columns: list[DenseColumn] = columns  # type: ignore[assignment]
        self.column_states = _ColumnStates(columns)
        self.output_dim = sum(c.dimension for c in self.columns)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        states = self.column_states.by_name()
        return torch.cat([column._dense(features, states) for column in self.columns], dim=1)


_SPARSE_COMBINERS = ("sum", "mean", "sqrtn")


class LinearModel(nn.Module):
    """A linear model over columns: ``bias + sum over columns of (weights · column)``, ``[batch, units]``.

    Categorical columns (including bucketized and crossed) add the weight rows of their ids, combined by
    ``sparse_combiner`` (``"sum"``, TF's default, ``"mean"`` or ``"sqrtn"``); dense columns add a matrix
    product. Weights and bias start at zero, as TF's.

    Raises:
        ValueError: For bad columns, ``units`` or ``sparse_combiner``.

    Example:
        >>> model = LinearModel([categorical_column_with_identity("id", 3), numeric_column("x")], units=1)
        >>> model({"id": torch.tensor([2]), "x": torch.tensor([1.5])})
        tensor([[0.]], grad_fn=<AddBackward0>)
    """

    def __init__(self, feature_columns: Sequence[FeatureColumn], units: int = 1, sparse_combiner: str = "sum") -> None:
        super().__init__()
        columns = _check_columns(feature_columns, "LinearModel")
        self.units = _check_positive_int(units, "LinearModel `units`")
        if sparse_combiner not in _SPARSE_COMBINERS:
            raise ValueError(f"`sparse_combiner` must be one of {_SPARSE_COMBINERS}; received {sparse_combiner!r}.")
        self.sparse_combiner = sparse_combiner
        self.columns = columns
        self.column_states = _ColumnStates(columns)
        self._weight_names = {c.name: _safe_name(c.name) for c in columns}
        if len(set(self._weight_names.values())) != len(columns):
            raise ValueError(f"LinearModel: feature column names {sorted(self._weight_names)} collide once made attribute names.")
        self.weights = nn.ParameterDict({
            self._weight_names[c.name]: nn.Parameter(torch.zeros(
                c.num_buckets if isinstance(c, CategoricalColumn) else c.dimension, self.units))  # type: ignore[attr-defined]
            for c in columns
        })
        self.bias = nn.Parameter(torch.zeros(self.units))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        states = self.column_states.by_name()
        total: torch.Tensor | None = None
        for column in self.columns:
            weight = self.weights[self._weight_names[column.name]]
            if isinstance(column, CategoricalColumn):
                part = _combine(weight, column._ids(features, states), column.num_buckets, self.sparse_combiner)
            else:
                part = column._dense(features, states) @ weight  # type: ignore[attr-defined]
            total = part if total is None else total + part
        assert total is not None  # _check_columns rejects an empty list
        return total + self.bias


# ----------------------------------------------------------------------------------------------------------
# Host-side encoding (checked against the columns) and the serving signature.


def encode_features(features: Mapping[str, Any], feature_columns: Sequence[FeatureColumn] | None = None) -> dict[str, np.ndarray]:
    """Features as numeric numpy arrays, ready for ``numpy_input_fn``: string values become their
    :func:`fingerprint` (``''``, ``None`` and NaN become ``-1``, no value); numeric arrays are kept.

    Args:
        features: A dict of arrays (lists, numpy arrays, tensors, pandas Series) or a pandas DataFrame.
        feature_columns: When given, checks that every key they read is present, that numeric columns get
            numbers and categorical columns integers or strings.

    Returns:
        A dict of numpy arrays with the same keys.

    Raises:
        ValueError: If a needed feature is missing or a column gets values of the wrong kind.

    Example:
        >>> encode_features({"color": ["red", ""], "x": [1.5, 2.0]})["color"].tolist()
        [714311032125047324, -1]
    """
    encoded = encode_strings(features)
    if feature_columns is not None:
        _check_encoded(encoded, _check_columns(feature_columns, "encode_features", unique=False), features)
    return encoded


def _check_encoded(encoded: Mapping[str, np.ndarray], columns: list[FeatureColumn], raw: Any) -> None:
    for column in _all_columns(columns, unique_names=False):
        for key in column.keys if not isinstance(column, CrossedColumn) else [p for p in column.parts if isinstance(p, str)]:
            if key not in encoded:
                raise ValueError(
                    f"Feature {key!r} (needed by column {column.name!r}) is not in the features; received keys "
                    f"{sorted(encoded)}."
                )
            kind = as_array(raw[key], key).dtype.kind
            if isinstance(column, NumericColumn) and kind not in "biuf":
                raise ValueError(f"Feature {key!r} of numeric column {column.name!r} must be numbers; received dtype {kind!r} values.")
            if isinstance(column, (VocabularyListColumn, HashBucketColumn, IdentityColumn)) and kind == "f":
                raise ValueError(
                    f"Feature {key!r} of categorical column {column.name!r} must be integers or strings; received floats."
                )


def make_feature_spec(feature_columns: Sequence[FeatureColumn]) -> dict[str, TensorSpec]:
    """The serving inputs for ``feature_columns``: one :class:`~torch_estimator.export.TensorSpec` per raw
    feature (TF's ``make_parse_example_spec``), for ``build_raw_serving_input_receiver_fn``.

    Numeric features are float32 ``[batch]`` (``[batch, *shape]`` when a column has a shape); integer
    categorical ones int64 ``[batch]``; string ones (a vocabulary of strings, or hash buckets of strings)
    dtype ``"string"`` ``[batch]``, which clients send as strings; so are the raw keys of a ``crossed_column``
    (as TF parsed them) unless another column reads them as integers. An integer sent for a string input is
    taken as its fingerprint, so integer features crossed by name still serve. Each comes with valid example
    values for export's self-check.

    Raises:
        ValueError: If one raw feature is read both as numbers and as categories.

    Example:
        >>> spec = make_feature_spec([numeric_column("age"), categorical_column_with_identity("day", 7)])
        >>> spec["age"], spec["day"]
        (TensorSpec(shape=[None], dtype=torch.float32), TensorSpec(shape=[None], dtype=torch.int64, low=0, high=7))
        >>> make_feature_spec([categorical_column_with_vocabulary_list("size", ["small", "large"])])["size"]
        TensorSpec(shape=[None], dtype='string', example=<[2]>)
    """
    columns = _all_columns(_check_columns(feature_columns, "make_feature_spec", unique=False), unique_names=False)
    specs: dict[str, tuple[str, int, TensorSpec]] = {}
    for column in columns:
        for key, kind, rank, spec in _raw_specs(column):
            previous = specs.get(key)
            if previous is not None and previous[0] != kind:
                raise ValueError(f"Feature {key!r} is read both as numbers and as categories by different columns.")
            if previous is not None and kind == "numeric" and previous[2].shape != spec.shape:
                raise ValueError(f"Feature {key!r} is read with shapes {previous[2].shape} and {spec.shape}.")
            if previous is None or rank > previous[1]:
                specs[key] = (kind, rank, spec)
    return {key: spec for key, (_, _, spec) in sorted(specs.items())}


def _raw_specs(column: FeatureColumn) -> list[tuple[str, str, int, TensorSpec]]:
    """``(key, kind, rank, spec)`` for the raw features a column reads itself; the more specific spec (higher
    rank: valid examples > a valid range > any small ints) wins when columns share a feature."""
    generic = TensorSpec([None], torch.int64, low=0, high=1000)
    if isinstance(column, NumericColumn):
        shape = [None] if column.shape == (1,) else [None, *column.shape]
        return [(column.key, "numeric", 0, TensorSpec(shape, torch.float32))]
    if isinstance(column, VocabularyListColumn):
        example = torch.tensor(column.encoded_vocabulary(), dtype=torch.int64)
        dtype = STRING if column.dtype is str else torch.int64
        return [(column.key, "categorical", 2, TensorSpec([None], dtype, example=example))]
    if isinstance(column, IdentityColumn):
        return [(column.key, "categorical", 1, TensorSpec([None], torch.int64, low=0, high=column.num_buckets))]
    if isinstance(column, HashBucketColumn):
        if column.dtype is str:
            return [(column.key, "categorical", 1, TensorSpec([None], STRING, low=0, high=1000))]
        return [(column.key, "categorical", 0, generic)]
    if isinstance(column, CrossedColumn):  # raw keys are strings, as TF parses them; any other column's spec wins
        raw = TensorSpec([None], STRING, low=0, high=1000)
        return [(part, "categorical", -1, raw) for part in column.parts if isinstance(part, str)]
    return []  # built on other columns, which are listed themselves
