"""``tf.Example`` without TensorFlow: the protobuf messages, TF's parsing specs and ``parse_example``.

The messages (``Example``, ``Features``, ``Feature``, ``BytesList``, ``FloatList``, ``Int64List``) are built at
run time from their descriptors (the same field numbers as TF's ``example.proto`` and ``feature.proto``) in a
private descriptor pool, so they never clash with TensorFlow's own when both are imported; the ``protobuf``
package decodes them. Specs are TF's: :class:`FixedLenFeature`, :class:`VarLenFeature` and
:class:`FixedLenSequenceFeature`, with a torch dtype (floating -> ``float_list``, integer or bool ->
``int64_list``) or ``str`` (``bytes_list``, decoded as UTF-8).

Example:
    >>> import torch
    >>> record = make_example({"age": [42.0], "tags": ["a", "b"]}).SerializeToString()
    >>> parsed = parse_example([record], {"age": FixedLenFeature([], torch.float32),
    ...                                   "tags": VarLenFeature(str)})
    >>> parsed["age"].tolist(), parsed["tags"].tolist(), parsed["tags_length"].tolist()
    ([42.0], [['a', 'b']], [2])
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "FixedLenFeature",
    "VarLenFeature",
    "FixedLenSequenceFeature",
    "FeatureSpec",
    "ParseError",
    "example_classes",
    "make_example",
    "parse_example",
    "check_spec",
]

_PADDED, _NESTED = "padded", "nested"
_BYTES = [bytes([i]) for i in range(128)]
_SMALL_ROW = 64  # values per row below which rows are gathered into one list before numpy converts them


class ParseError(ValueError):
    """A record that does not parse as a ``tf.Example`` or does not match the spec."""


def _check_dtype(dtype: Any, owner: str) -> Any:
    if dtype is str or (isinstance(dtype, torch.dtype) and not dtype.is_complex):
        return dtype
    raise TypeError(
        f"{owner} `dtype` must be a torch dtype (floating -> float_list, integer or bool -> int64_list) or str "
        f"(bytes_list decoded as UTF-8); received {dtype!r}."
    )


def _check_shape(shape: Any, owner: str) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = [shape]
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise ValueError(f"{owner} `shape` must be a list of non-negative ints (e.g. [] or [28, 28]); received {shape!r}.")
    return dims


def _check_default(default: Any, shape: Sequence[int], dtype: Any, owner: str) -> Any:
    if default is None:
        return None
    try:
        array = np.asarray(default, dtype=object if dtype is str else _numpy_dtype(dtype))
        return np.broadcast_to(array, shape).copy()
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{owner} `default_value` {default!r} does not fit shape {list(shape)} and dtype {dtype!r}: {error}."
        ) from error


@dataclasses.dataclass(frozen=True)
class FixedLenFeature:
    """A feature with a fixed number of values, as TF's ``tf.io.FixedLenFeature``.

    Args:
        shape: The shape of one example's value (``[]`` for a scalar); the record holds ``prod(shape)`` values.
        dtype: A torch dtype, or ``str`` for a bytes feature decoded as UTF-8.
        default_value: Used when a record lacks the feature (broadcast to ``shape``); None makes it required.

    Raises:
        ValueError: For a bad shape or a default that does not fit.
        TypeError: For a bad dtype.
    """

    shape: Sequence[int]
    dtype: Any
    default_value: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "FixedLenFeature"))
        object.__setattr__(self, "shape", _check_shape(self.shape, "FixedLenFeature"))
        object.__setattr__(self, "default_value", _check_default(self.default_value, self.shape, self.dtype, "FixedLenFeature"))

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __hash__(self) -> int:
        return hash(repr(self))


@dataclasses.dataclass(frozen=True)
class VarLenFeature:
    """A feature with any number of values per example, as TF's ``tf.io.VarLenFeature``.

    TF returns a ``SparseTensor``; here ``output="padded"`` (the default) gives a ``[batch, max_len]`` tensor
    padded with ``padding_value`` under the feature's name and the lengths (int64 ``[batch]``) under
    ``<name>_length``; ``output="nested"`` gives a jagged ``torch.nested`` tensor instead.

    Args:
        dtype: A torch dtype, or ``str`` for a bytes feature decoded as UTF-8.
        output: ``"padded"`` or ``"nested"``.
        padding_value: What pads short rows (default 0, or ``""`` for strings).

    Raises:
        ValueError: For a bad ``output``.
        TypeError: For a bad dtype.
    """

    dtype: Any
    output: str = _PADDED
    padding_value: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "VarLenFeature"))
        if self.output not in (_PADDED, _NESTED):
            raise ValueError(f"VarLenFeature `output` must be 'padded' or 'nested'; received {self.output!r}.")
        if self.output == _NESTED and self.dtype is str:
            raise ValueError("VarLenFeature(str, output='nested') is not supported: strings become fingerprints "
                             "in padded tensors; use output='padded'.")
        object.__setattr__(self, "padding_value", _check_default(self.padding_value, (), self.dtype, "VarLenFeature"))

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __hash__(self) -> int:
        return hash(repr(self))


@dataclasses.dataclass(frozen=True)
class FixedLenSequenceFeature:
    """A sequence of fixed-shape items, as TF's ``tf.io.FixedLenSequenceFeature`` in ``parse_example``.

    The record holds ``k * prod(shape)`` values; the batch is ``[batch, max_k, *shape]``, short rows padded
    with ``default_value`` (0 or ``""`` when None). As TF, ``allow_missing=True`` is required.

    Raises:
        ValueError: For a bad shape, ``allow_missing=False`` or a default that does not fit.
        TypeError: For a bad dtype.
    """

    shape: Sequence[int]
    dtype: Any
    allow_missing: bool = False
    default_value: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "FixedLenSequenceFeature"))
        object.__setattr__(self, "shape", _check_shape(self.shape, "FixedLenSequenceFeature"))
        if self.allow_missing is not True:
            raise ValueError("FixedLenSequenceFeature in a tf.Example needs allow_missing=True (as TF's parse_example).")
        object.__setattr__(self, "default_value", _check_default(self.default_value, (), self.dtype, "FixedLenSequenceFeature"))

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __hash__(self) -> int:
        return hash(repr(self))


FeatureSpec = FixedLenFeature | VarLenFeature | FixedLenSequenceFeature


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return NotImplemented
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if x is None or y is None or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _numpy_dtype(dtype: Any) -> Any:
    if dtype is str:
        return object
    return np.float32 if dtype.is_floating_point else np.int64


def _kind(dtype: Any) -> str:
    if dtype is str:
        return "bytes_list"
    return "float_list" if dtype.is_floating_point else "int64_list"


def check_spec(features: Any, owner: str = "features") -> dict[str, FeatureSpec]:
    """A dict of feature name -> spec, checked.

    Raises:
        TypeError: If it is not a non-empty dict of spec objects.
    """
    if not isinstance(features, Mapping) or not features:
        raise TypeError(f"`{owner}` must be a non-empty dict of name -> FixedLenFeature / VarLenFeature / "
                        f"FixedLenSequenceFeature; received {features!r}.")
    for name, spec in features.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"`{owner}` keys must be non-empty strings; received {name!r}.")
        if not isinstance(spec, (FixedLenFeature, VarLenFeature, FixedLenSequenceFeature)):
            raise TypeError(f"`{owner}[{name!r}]` must be a FixedLenFeature, VarLenFeature or FixedLenSequenceFeature; "
                            f"received {spec!r}.")
        if isinstance(spec, VarLenFeature) and spec.output == _PADDED and f"{name}_length" in features:
            raise ValueError(f"`{owner}`: {name!r} is a padded VarLenFeature whose lengths go to {name + '_length'!r}, "
                             f"which is also a feature; rename one.")
    return dict(features)


# ------------------------------------------------------------------------------------------------------
# The messages.


@functools.lru_cache(maxsize=1)
def example_classes() -> dict[str, Any]:
    """The ``tf.Example`` message classes by name: Example, Features, Feature, BytesList, FloatList, Int64List,
    and ``ExampleBatch`` (``repeated Example example = 1``, which parses many records in one call).

    Raises:
        ImportError: If protobuf is not installed.
    """
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as error:
        raise ImportError("Parsing tf.Example needs protobuf: pip install 'torch-estimator[tfrecord]'.") from error
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="torch_estimator/example.proto", package="tensorflow", syntax="proto3")

    def message(name: str) -> Any:
        return proto.message_type.add(name=name)

    def add(owner: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False,
            oneof: int | None = None) -> Any:
        label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
        entry = owner.field.add(name=name, number=number, label=label, type=kind)
        if type_name:
            entry.type_name = type_name
        if oneof is not None:
            entry.oneof_index = oneof
        return entry

    add(message("BytesList"), "value", 1, field.TYPE_BYTES, repeated=True)
    add(message("FloatList"), "value", 1, field.TYPE_FLOAT, repeated=True).options.packed = True
    add(message("Int64List"), "value", 1, field.TYPE_INT64, repeated=True).options.packed = True
    feature = message("Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                                ("int64_list", "Int64List")), start=1):
        add(feature, name, number, field.TYPE_MESSAGE, f".tensorflow.{type_name}", oneof=0)
    features = message("Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, field.TYPE_STRING)
    add(entry, "value", 2, field.TYPE_MESSAGE, ".tensorflow.Feature")
    add(features, "feature", 1, field.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry", repeated=True)
    add(message("Example"), "features", 1, field.TYPE_MESSAGE, ".tensorflow.Features")
    add(message("ExampleBatch"), "example", 1, field.TYPE_MESSAGE, ".tensorflow.Example", repeated=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List", "ExampleBatch")
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}")) for name in names}


def make_example(values: Mapping[str, Any]) -> Any:
    """A ``tf.Example`` message from a dict: floats -> ``float_list``, ints/bools -> ``int64_list``, str/bytes
    -> ``bytes_list`` (str encoded as UTF-8). Each value is a scalar or a sequence/array (flattened).

    Raises:
        TypeError: For values of another type.

    Example:
        >>> make_example({"label": 3}).features.feature["label"].int64_list.value[:]
        [3]
    """
    example = example_classes()["Example"]()
    for name, value in values.items():
        items = np.asarray(value, dtype=object).ravel().tolist() if not isinstance(value, (str, bytes)) else [value]
        feature = example.features.feature[name]
        if all(isinstance(v, (str, bytes)) for v in items) and items:
            feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in items)
        elif all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in items) and items:
            feature.int64_list.value.extend(int(v) for v in items)
        elif all(isinstance(v, (float, int, np.floating, np.integer)) for v in items):
            feature.float_list.value.extend(float(v) for v in items)
        else:
            raise TypeError(f"make_example: feature {name!r} must hold numbers or strings; received {value!r}.")
    return example


# ------------------------------------------------------------------------------------------------------
# Parsing.


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTES[n]
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _where(sources: Sequence[tuple[str, int]] | None, i: int) -> str:
    if sources is None:
        return f"record {i}"
    path, offset = sources[i]
    return f"the record at offset {offset} of {path}"


def _decode(values: Sequence[bytes], name: str, where: str) -> list[str]:
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError as error:
        raise ParseError(f"Feature {name!r} in {where} is not valid UTF-8 ({error}); read it with dtype=str only "
                         f"if it holds text.") from error


def _examples(serialized: Sequence[bytes], sources: Sequence[tuple[str, int]] | None) -> Any:
    """Parse all records in one protobuf call (an ExampleBatch around them); on failure find the bad one."""
    classes = example_classes()
    blob = b"".join(b"\x0a" + _varint(len(record)) + record for record in serialized)
    try:
        return classes["ExampleBatch"].FromString(blob).example
    except Exception:  # protobuf's DecodeError: name the record
        for i, record in enumerate(serialized):
            try:
                classes["Example"].FromString(record)
            except Exception as error:
                raise ParseError(f"{_where(sources, i)} is not a tf.Example ({error}).") from error
        raise


def parse_example(
    serialized: Sequence[bytes],
    features: Mapping[str, FeatureSpec],
    sources: Sequence[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """Parse serialized ``tf.Example`` records with TF's specs, as ``tf.io.parse_example``.

    Args:
        serialized: The records.
        features: Feature name -> :class:`FixedLenFeature` / :class:`VarLenFeature` / :class:`FixedLenSequenceFeature`.
        sources: ``(path, offset)`` of each record, for error messages.

    Returns:
        Numpy arrays: float32 for floating dtypes, int64 for integer ones, object arrays of str for ``str``;
        ``[n, *shape]`` for fixed-length features, ``[n, max_len(, *shape)]`` padded (and ``<name>_length``) for
        variable-length ones, or a list of arrays for ``VarLenFeature(output="nested")``.

    Raises:
        ParseError: A record that is not a tf.Example, a required feature that is missing, a feature of the
            wrong kind or with the wrong number of values (the message names the feature and the record).
    """
    specs = check_spec(features)
    fmaps = [example.features.feature for example in _examples(serialized, sources)]
    n = len(serialized)
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        kind = _kind(spec.dtype)
        rows: list[Any] = []
        for i, fmap in enumerate(fmaps):
            feature = fmap.get(name)
            if feature is None:
                rows.append(None)
                continue
            values = getattr(feature, kind).value
            if not values:  # empty, or another kind: only then is the kind looked up
                which = feature.WhichOneof("kind")
                if which is not None and which != kind:
                    raise ParseError(
                        f"Feature {name!r} in {_where(sources, i)} is {_a(which)}, but the spec's dtype "
                        f"{_dtype_name(spec.dtype)} reads {_a(kind)}; give a matching dtype ({_dtype_hint(which)})."
                    )
            rows.append(values)
        if isinstance(spec, FixedLenFeature):
            out[name] = _fixed(name, spec, rows, n, sources)
        else:
            _variable(out, name, spec, rows, n, sources)
    return out


def _dtype_name(dtype: Any) -> str:
    return "str" if dtype is str else str(dtype)


def _a(kind: str) -> str:
    """``kind`` with its article: "an int64_list", "a float_list"."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _dtype_hint(which: str) -> str:
    return {"bytes_list": "str", "float_list": "e.g. torch.float32", "int64_list": "e.g. torch.int64"}[which]


def _fixed(name: str, spec: FixedLenFeature, rows: list[Any], n: int, sources: Any) -> np.ndarray:
    size = math.prod(spec.shape)
    array = np.empty((n, size), dtype=_numpy_dtype(spec.dtype))
    for i, values in enumerate(rows):
        if not values:
            if spec.default_value is None:
                raise ParseError(f"Feature {name!r} is required but missing in {_where(sources, i)}; give the spec a "
                                 f"default_value, or use VarLenFeature.")
            array[i] = spec.default_value.ravel()
            continue
        if len(values) != size:
            raise ParseError(f"Feature {name!r} in {_where(sources, i)} has {len(values)} values; FixedLenFeature "
                             f"shape {list(spec.shape)} needs {size}.")
    if spec.dtype is str:
        for i, values in enumerate(rows):
            if values:
                array[i] = _decode(values, name, _where(sources, i))
    elif size <= _SMALL_ROW and all(rows):
        # Short rows: one list and one conversion beat numpy's per-row assignment (a fixed cost of ~10 us each).
        flat: list[Any] = []
        for values in rows:
            flat.extend(values)
        array = np.asarray(flat, dtype=array.dtype).reshape(n, size)
    else:
        for i, values in enumerate(rows):
            if values:
                array[i] = values
    return array.reshape((n, *spec.shape))


def _variable(out: dict[str, Any], name: str, spec: Any, rows: list[Any], n: int, sources: Any) -> None:
    item = math.prod(spec.shape) if isinstance(spec, FixedLenSequenceFeature) else 1
    dtype = _numpy_dtype(spec.dtype)
    counts = []
    for i, values in enumerate(rows):
        count = 0 if values is None else len(values)
        if item and count % item or (not item and count):
            raise ParseError(f"Feature {name!r} in {_where(sources, i)} has {count} values, not a multiple of "
                             f"FixedLenSequenceFeature shape {list(spec.shape)} ({item} values each).")
        counts.append(count // item if item else 0)
    lengths = np.asarray(counts, dtype=np.int64)
    if isinstance(spec, VarLenFeature) and spec.output == _NESTED:
        out[name] = [np.asarray(values if values is not None else [], dtype=dtype) for values in rows]
        return
    fill = getattr(spec, "padding_value", None) if isinstance(spec, VarLenFeature) else spec.default_value
    if fill is None:
        fill = "" if spec.dtype is str else 0
    width = int(lengths.max()) if n else 0
    array = np.empty((n, width * item), dtype=dtype)
    array[...] = fill
    for i, values in enumerate(rows):
        if values:
            array[i, : len(values)] = _decode(values, name, _where(sources, i)) if spec.dtype is str else values
    if isinstance(spec, FixedLenSequenceFeature):
        out[name] = array.reshape((n, width, *spec.shape))
    else:
        out[name] = array
        out[f"{name}_length"] = lengths
