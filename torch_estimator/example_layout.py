"""Parse many ``tf.Example`` records at once, by their wire layout, with the same results as protobuf.

Records written by one program usually share one byte layout: the same feature keys in the same order, the
same number of values, the same widths of varints. :class:`ExampleLayouts` parses the first record of each
serialized length with protobuf (:func:`~torch_estimator.tf_example.parse_example`, the reference), derives
where each feature's values lie in it (packed float32 are fixed32 little-endian, int64 are varints, bytes are
length-delimited), and checks that slicing those ranges out of the record gives exactly what protobuf gave.
Then a record of the same length parses by that layout when every byte outside the value ranges equals the
template's and its varints have the template's continuation bits (so the same count and widths): a check and a
slice over a ``[records, length]`` array, no per-record Python. Every other record (another layout, unknown
fields, repeated or out-of-order fields, a record that does not parse) goes through protobuf, so the results
and the errors are protobuf's.

Example:
    >>> import torch
    >>> from torch_estimator.tf_example import FixedLenFeature, make_example
    >>> records = [make_example({"x": [float(i), 0.5], "y": i}).SerializeToString() for i in range(3)]
    >>> data = np.frombuffer(b"".join(records), dtype=np.uint8)
    >>> lengths = np.array([len(r) for r in records])
    >>> spec = {"x": FixedLenFeature([2], torch.float32), "y": FixedLenFeature([], torch.int64)}
    >>> parsed = parse_records(data, np.cumsum(lengths) - lengths, lengths, spec)
    >>> parsed["x"].tolist(), parsed["y"].tolist()
    ([[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]], [0, 1, 2])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .tf_example import (
    FeatureSpec,
    FixedLenFeature,
    FixedLenSequenceFeature,
    ParseError,
    VarLenFeature,
    check_spec,
    parse_example,
)

__all__ = ["ExampleLayouts", "parse_records", "finish_variable", "fill_value", "item_size"]

_TAG_LEN1, _TAG_LEN2 = 0x0A, 0x12  # field 1 / field 2, length-delimited
_KIND_TAGS = {"bytes_list": 0x0A, "float_list": 0x12, "int64_list": 0x1A}
_MIN_GROUP = 2  # records of one length below which protobuf parses them (a layout costs more than it saves)


class _Unsupported(Exception):
    """A record whose wire form is not the plain one a layout describes: protobuf parses it."""


def _varint(record: bytes, i: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= end or shift > 63:
            raise _Unsupported
        byte = record[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _length_delimited(record: bytes, i: int, end: int, tag: int) -> tuple[int, int]:
    """Expect ``tag`` and a length at ``i``; return the payload's (start, end)."""
    found, i = _varint(record, i, end)
    if found != tag:
        raise _Unsupported
    size, i = _varint(record, i, end)
    if i + size > end:
        raise _Unsupported
    return i, i + size


@dataclasses.dataclass
class _Values:
    """Where one feature's values lie in a template record."""

    kind: str  # "float_list", "int64_list", "bytes_list", or "" (absent or empty)
    count: int = 0
    start: int = 0  # float_list: the packed payload
    varints: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # int64_list: (start, width)
    items: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # bytes_list: (start, length)


def _walk(record: bytes, kinds: Mapping[str, str]) -> dict[str, _Values]:
    """Locate the values of the features in ``kinds`` (name -> the list kind its spec reads).

    Only the plain form is accepted: one ``features`` field, map entries of key then value, no duplicate keys,
    each Feature holding one list of the spec's kind, each list one packed field (or length-delimited items
    for bytes). Anything else raises :class:`_Unsupported`.
    """
    found = {name: _Values("") for name in kinds}
    end = len(record)
    if not end:
        return found
    i, stop = _length_delimited(record, 0, end, _TAG_LEN1)
    if stop != end:
        raise _Unsupported
    seen: set[bytes] = set()
    while i < end:
        i, entry_end = _length_delimited(record, i, end, _TAG_LEN1)
        key_start, key_end = _length_delimited(record, i, entry_end, _TAG_LEN1)
        value_start, value_end = _length_delimited(record, key_end, entry_end, _TAG_LEN2)
        key = record[key_start:key_end]
        if value_end != entry_end or key in seen:
            raise _Unsupported
        seen.add(key)
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Unsupported from error
        if name in kinds and value_start < value_end:
            found[name] = _feature(record, value_start, value_end, kinds[name])
        i = entry_end
    return found


def _feature(record: bytes, i: int, end: int, kind: str) -> _Values:
    start, stop = _length_delimited(record, i, end, _KIND_TAGS[kind])
    if stop != end:
        raise _Unsupported
    if start == stop:
        return _Values("")
    if kind == "bytes_list":
        items = []
        while start < stop:
            item_start, start = _length_delimited(record, start, stop, _TAG_LEN1)
            items.append((item_start, start - item_start))
        return _Values(kind, len(items), items=items)
    payload, payload_end = _length_delimited(record, start, stop, _TAG_LEN1)
    if payload_end != stop:
        raise _Unsupported
    if kind == "float_list":
        if (payload_end - payload) % 4:
            raise _Unsupported
        return _Values(kind, (payload_end - payload) // 4, start=payload)
    varints = []
    while payload < payload_end:
        _, after = _varint(record, payload, payload_end)
        if after - payload > 10:
            raise _Unsupported
        varints.append((payload, after - payload))
        payload = after
    return _Values(kind, len(varints), varints=varints)


class _Layout:
    """One template: the bytes that must match, and how to slice each feature's values out of a record."""

    def __init__(self, record: bytes, values: dict[str, _Values]) -> None:
        template = np.frombuffer(record, dtype=np.uint8)
        fixed = np.ones(len(record), dtype=bool)
        varint_bytes: list[int] = []
        for value in values.values():
            if value.kind == "float_list":
                fixed[value.start : value.start + 4 * value.count] = False
            for start, width in value.varints:
                # A 10-byte varint's last byte (0x01 for a negative int64) stays fixed: protobuf may reject others.
                varint_bytes.extend(range(start, start + min(width, 9)))
            for start, length in value.items:
                fixed[start : start + length] = False
        fixed[varint_bytes] = False
        self.values = values
        self.varint_bytes = np.asarray(varint_bytes, dtype=np.int64)
        # What a matching record has: the fixed bytes, and the continuation bit of each varint byte; checked
        # as masked little-endian words of up to 8 bytes (one comparison per word and record, no reductions).
        mask = np.where(fixed, 0xFF, 0).astype(np.uint8)
        mask[self.varint_bytes] = 0x80
        self.words: list[tuple[int, np.dtype[Any], Any, Any]] = []
        position, length = 0, len(record)
        while position < length:
            if not mask[position]:
                position += 1
                continue
            size = next(size for size in (8, 4, 2, 1) if size <= length - position)
            dtype = np.dtype(f"<u{size}")
            word_mask = mask[position : position + size].view(dtype)[0]
            expected = (template[position : position + size] & mask[position : position + size]).view(dtype)[0]
            full = word_mask == np.iinfo(dtype).max
            self.words.append((position, dtype, None if full else word_mask, expected))
            position += size

    def matches(self, rows: np.ndarray) -> np.ndarray:
        """Which rows (a ``[n, length]`` uint8 array) have this layout."""
        same = np.ones(len(rows), dtype=bool)
        for start, dtype, mask, expected in self.words:
            words = rows[:, start : start + dtype.itemsize].view(dtype)[:, 0]
            same &= (words if mask is None else words & mask) == expected
        return same

    def extract(self, rows: np.ndarray) -> dict[str, Any]:
        """Feature name -> a ``[n, count]`` array of its values (bytes features: lists of bytes) in ``rows``."""
        out: dict[str, Any] = {}
        n = len(rows)
        for name, value in self.values.items():
            if value.kind == "float_list":
                out[name] = rows[:, value.start : value.start + 4 * value.count].view("<f4")
            elif value.kind == "int64_list" and _one_byte_run(value.varints):
                start = value.varints[0][0]
                out[name] = rows[:, start : start + value.count]  # one-byte varints are their own value: a view
            elif value.kind == "int64_list":
                out[name] = _decode_varints(rows, value.varints)
            elif value.kind == "bytes_list":
                out[name] = [[row[start : start + length].tobytes() for start, length in value.items] for row in rows]
            else:
                out[name] = np.empty((n, 0), dtype=np.float32)
        return out


def _one_byte_run(varints: list[tuple[int, int]]) -> bool:
    return all(width == 1 and start == varints[0][0] + k for k, (start, width) in enumerate(varints))


def _decode_varints(rows: np.ndarray, varints: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros((len(rows), len(varints)), dtype=np.uint64)
    by_width: dict[int, list[int]] = {}
    for column, (_, width) in enumerate(varints):
        by_width.setdefault(width, []).append(column)
    for width, columns in by_width.items():
        starts = np.asarray([varints[c][0] for c in columns], dtype=np.int64)
        value = np.zeros((len(rows), len(columns)), dtype=np.uint64)
        for k in range(width):
            value |= (rows[:, starts + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        out[:, columns] = value
    return out.view(np.int64)


def _kind(dtype: Any) -> str:
    if dtype is str:
        return "bytes_list"
    return "float_list" if dtype.is_floating_point else "int64_list"


class ExampleLayouts:
    """The layouts seen so far for one spec, by serialized length (a cache shared across calls).

    Args:
        features: The spec (feature name -> FixedLenFeature / VarLenFeature / FixedLenSequenceFeature).
        per_length: Layouts kept per serialized length; records of a length whose layouts all differ go to protobuf.
        limit: Layouts kept in all.
    """

    def __init__(self, features: Mapping[str, FeatureSpec], per_length: int = 4, limit: int = 1024) -> None:
        self.specs = check_spec(features)
        self._kinds = {name: _kind(spec.dtype) for name, spec in self.specs.items()}
        self._by_length: dict[int, list[_Layout]] = {}
        self._tries: dict[int, int] = {}
        self._per_length, self._limit, self._count = per_length, limit, 0

    def layouts(self, length: int) -> list[_Layout]:
        """The layouts known for records of ``length`` bytes."""
        return self._by_length.get(length, [])

    def learn(self, record: bytes) -> _Layout | None:
        """Derive the layout of ``record`` and keep it if slicing by it gives what protobuf gives; else None."""
        length = len(record)
        tries = self._tries.get(length, 0)
        if tries >= self._per_length or self._count >= self._limit:
            return None
        self._tries[length] = tries + 1
        try:
            expected = parse_example([record], self.specs)
            layout = _Layout(record, _walk(record, self._kinds))
        except (ParseError, _Unsupported):
            return None
        rows = np.frombuffer(record, dtype=np.uint8)[None, :]
        try:
            got = _assemble(self.specs, 1, [(np.zeros(1, dtype=np.int64), layout.extract(rows))], None)
        except ParseError:
            return None
        if not _same_parsed(got, expected):
            return None
        self._by_length.setdefault(length, []).append(layout)
        self._count += 1
        return layout


def _same_parsed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if isinstance(x, list):
            if not isinstance(y, list) or len(x) != len(y) or not all(_same_array(u, v) for u, v in zip(x, y)):
                return False
        elif not _same_array(x, y):
            return False
    return True


def _same_array(x: Any, y: Any) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype == object:
        return bool(x.tolist() == y.tolist())
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))


def parse_records(
    data: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    features: Mapping[str, FeatureSpec],
    sources: Sequence[tuple[str, int]] | None = None,
    layouts: ExampleLayouts | None = None,
    stride: int = 0,
    padded: bool = False,
) -> dict[str, Any]:
    """Parse the records ``data[starts[i] : starts[i] + lengths[i]]`` as :func:`parse_example` would.

    Args:
        data: A uint8 array holding the records.
        starts, lengths: Each record's position and length in ``data``.
        features: The spec.
        sources: ``(path, offset)`` of each record, for error messages.
        layouts: The layouts cache to use and extend (one per spec); None makes a fresh one.
        stride: When > 0, the records lie at this fixed stride (``starts[i] = starts[0] + i * stride``), so
            they are viewed rather than copied.
        padded: Give every variable-length feature as a pair: a ``[n, width * item]`` array padded with its
            :func:`fill_value`, and the items per record; :func:`finish_variable` makes its output from a batch
            of those rows. Integer features of one-byte varints may then stay uint8 views of ``data``.

    Returns:
        What :func:`parse_example` returns for these records (arrays may be read-only views of ``data``).

    Raises:
        ParseError: As :func:`parse_example`, for the records that do not parse.
    """
    layouts = layouts if layouts is not None else ExampleLayouts(features)
    specs = layouts.specs
    n = len(starts)
    pieces: list[tuple[np.ndarray, dict[str, Any]]] = []
    rest: list[np.ndarray] = []
    if n:
        if stride and np.all(lengths == lengths[0]):
            groups = [(int(lengths[0]), np.arange(n, dtype=np.int64))]
        else:
            order = np.argsort(lengths, kind="stable")
            bounds = np.flatnonzero(np.diff(lengths[order])) + 1
            groups = [(int(lengths[g[0]]), g) for g in np.split(order, bounds)]
        for length, index in groups:
            if len(index) < _MIN_GROUP:
                rest.append(index)
                continue
            rows = _rows(data, starts, index, length, stride if len(index) == n else 0)
            left = index
            for layout in [*layouts.layouts(length), None]:
                if layout is None:
                    first = int(starts[left[0]])
                    layout = layouts.learn(data[first : first + length].tobytes())
                    if layout is None:
                        break
                match = layout.matches(rows)
                if match.all():
                    pieces.append((left, layout.extract(rows)))
                    left = left[:0]
                    break
                if match.any():
                    pieces.append((left[match], layout.extract(rows[match])))
                    left, rows = left[~match], rows[~match]
            if len(left):
                rest.append(left)
    if rest:
        index = np.sort(np.concatenate(rest))
        records = [data[int(starts[i]) : int(starts[i] + lengths[i])].tobytes() for i in index]
        parsed = parse_example(records, _counting(specs), None if sources is None else [sources[int(i)] for i in index])
        pieces.append((index, {name: (parsed[name].reshape(len(index), -1), parsed.get(f"{name}_length"))
                               for name in specs}))
    return _assemble(specs, n, pieces, sources, padded)


def _counting(specs: Mapping[str, FeatureSpec]) -> dict[str, FeatureSpec]:
    """The spec with variable-length features read as padded VarLen (values and counts) for :func:`_assemble`."""
    out: dict[str, FeatureSpec] = {}
    for name, spec in specs.items():
        if isinstance(spec, VarLenFeature):
            out[name] = VarLenFeature(spec.dtype, "padded", spec.padding_value)
        elif isinstance(spec, FixedLenSequenceFeature):
            out[name] = VarLenFeature(spec.dtype, "padded", spec.default_value)
        else:
            out[name] = spec
    return out


def _rows(data: np.ndarray, starts: np.ndarray, index: np.ndarray, length: int, stride: int) -> np.ndarray:
    if stride:
        return np.lib.stride_tricks.as_strided(data[int(starts[0]) :], shape=(len(index), length),
                                               strides=(stride, 1), writeable=False)
    return data[starts[index][:, None] + np.arange(length, dtype=np.int64)]


def _where(sources: Sequence[tuple[str, int]] | None, i: int) -> str:
    if sources is None:
        return f"record {i}"
    path, offset = sources[i]
    return f"the record at offset {offset} of {path}"


def _assemble(specs: Mapping[str, FeatureSpec], n: int, pieces: list[tuple[np.ndarray, dict[str, Any]]],
              sources: Sequence[tuple[str, int]] | None, padded: bool = False) -> dict[str, Any]:
    """Put the pieces' values in record order, in parse_example's shapes.

    Each piece is (record indices, name -> values): a ``[k, count]`` array (or lists of bytes) with ``count``
    values in every record, or from protobuf a ``([k, width], counts or None)`` pair.
    """
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        dtype = object if spec.dtype is str else (np.float32 if spec.dtype.is_floating_point else np.int64)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        for rows, values in pieces:
            value = values[name]
            if isinstance(value, tuple):
                parts.append((rows, value[0], value[1]))
            elif isinstance(value, list):
                parts.append((rows, _decode(value, name, rows, sources), None))
            else:
                parts.append((rows, value, None))
        if isinstance(spec, FixedLenFeature):
            out[name] = _fixed(spec, n, parts, dtype, padded)
        else:
            _variable(out, name, spec, n, parts, dtype, sources, padded)
    return out


def _decode(values: list[list[bytes]], name: str, rows: np.ndarray, sources: Any) -> np.ndarray:
    out = np.empty((len(values), len(values[0]) if values else 0), dtype=object)
    for i, row in enumerate(values):
        try:
            out[i] = [v.decode("utf-8") for v in row]
        except UnicodeDecodeError as error:
            raise ParseError(f"Feature {name!r} in {_where(sources, int(rows[i]))} is not valid UTF-8 ({error}); read "
                             f"it with dtype=str only if it holds text.") from error
    return out


def _in_order(parts: list[Any], n: int) -> bool:
    return len(parts) == 1 and len(parts[0][0]) == n and bool(np.all(parts[0][0] == np.arange(n)))


def _fixed(spec: FixedLenFeature, n: int, parts: list[Any], dtype: Any, narrow: bool = False) -> np.ndarray:
    size = math.prod(spec.shape)
    full = [values if values.shape[1] == size else np.broadcast_to(spec.default_value.reshape(1, -1), (len(rows), size))
            for rows, values, _ in parts]
    if _in_order(parts, n):
        if narrow and full[0].dtype == np.uint8 and dtype == np.int64:  # one-byte varints, widened when batched
            return full[0].reshape((n, *spec.shape))
        return np.asarray(full[0], dtype=dtype).reshape((n, *spec.shape))
    array = np.empty((n, size), dtype=dtype)
    for (rows, _, _), values in zip(parts, full):
        array[rows] = values
    return array.reshape((n, *spec.shape))


def fill_value(spec: FeatureSpec) -> Any:
    """What pads a variable-length feature's short rows (its padding or default value, else 0 or "")."""
    fill = getattr(spec, "padding_value", None) if isinstance(spec, VarLenFeature) else spec.default_value
    if fill is None:
        fill = "" if spec.dtype is str else 0
    return fill


def item_size(spec: FeatureSpec) -> int:
    """Values per item of a variable-length feature (``prod(shape)`` for a FixedLenSequenceFeature, else 1)."""
    return math.prod(spec.shape) if isinstance(spec, FixedLenSequenceFeature) else 1


def finish_variable(out: dict[str, Any], name: str, spec: FeatureSpec, array: np.ndarray, lengths: np.ndarray) -> None:
    """Put a variable-length feature's padded rows in ``out`` as :func:`parse_example` gives them.

    ``array`` is ``[n, >= max(lengths) * item]`` padded with :func:`fill_value`; ``lengths`` counts items.
    """
    n, item = len(lengths), item_size(spec)
    width = int(lengths.max()) if n else 0
    array = array[:, : width * item]
    if isinstance(spec, FixedLenSequenceFeature):
        out[name] = array.reshape((n, width, *spec.shape))
    elif isinstance(spec, VarLenFeature) and spec.output == "nested":
        out[name] = [array[i, : lengths[i]] for i in range(n)]
    else:
        out[name] = array
        out[f"{name}_length"] = lengths


def _variable(out: dict[str, Any], name: str, spec: Any, n: int, parts: list[Any], dtype: Any,
              sources: Sequence[tuple[str, int]] | None, padded: bool) -> None:
    item = math.prod(spec.shape) if isinstance(spec, FixedLenSequenceFeature) else 1
    counts = np.zeros(n, dtype=np.int64)
    for rows, values, part_counts in parts:
        counts[rows] = values.shape[1] if part_counts is None else part_counts
    bad = np.flatnonzero(counts % item != 0) if item else np.flatnonzero(counts)
    if len(bad):
        i = int(bad[0])
        raise ParseError(f"Feature {name!r} in {_where(sources, i)} has {int(counts[i])} values, not a multiple of "
                         f"FixedLenSequenceFeature shape {list(spec.shape)} ({item} values each).")
    lengths = counts // item if item else counts
    width = int(lengths.max()) if n else 0
    if _in_order(parts, n) and parts[0][2] is None and parts[0][1].shape[1] == width * item:
        array = np.asarray(parts[0][1], dtype=dtype)
    else:
        array = np.empty((n, width * item), dtype=dtype)
        array[...] = fill_value(spec)
        for rows, values, _ in parts:
            array[rows, : values.shape[1]] = values
    if padded:
        out[name] = (array, lengths)
    else:
        finish_variable(out, name, spec, array, lengths)
