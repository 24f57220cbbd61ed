"""Parsing by wire layout gives exactly what protobuf gives, on randomized records and corrupted bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_estimator.example_layout import ExampleLayouts, parse_records
from torch_estimator.tf_example import (
    FixedLenFeature,
    FixedLenSequenceFeature,
    ParseError,
    VarLenFeature,
    make_example,
    parse_example,
)

SPEC = {
    "x": FixedLenFeature([3], torch.float32),
    "label": FixedLenFeature([], torch.int64),
    "opt": FixedLenFeature([2], torch.float32, default_value=[-1.0, -2.0]),
    "ids": VarLenFeature(torch.int64),
    "tags": VarLenFeature(str),
    "nested": VarLenFeature(torch.float32, output="nested"),
    "seq": FixedLenSequenceFeature([2], torch.int64, allow_missing=True),
    "name": FixedLenFeature([], str, default_value="none"),
}
INT_WIDTHS = [0, 1, 127, 128, 300, 2**21, 2**35, 2**62, -1, -(2**40)]  # varints of 1 to 10 bytes


def random_example(rng: np.random.Generator, layout: int) -> dict:
    """One of a few layouts (so several records share each), with random values of random varint widths."""
    values: dict = {"x": rng.normal(size=3).astype(np.float32), "label": int(rng.choice(INT_WIDTHS[:4]))}
    if layout % 2:
        values["opt"] = rng.normal(size=2).astype(np.float32)
    if layout % 4:
        values["ids"] = [int(v) for v in rng.choice(INT_WIDTHS, size=layout % 4)]
    if layout % 4:
        values["tags"] = ["a" * int(rng.integers(0, 3)) + "é" * (layout % 2) for _ in range(layout % 3)] or ["x"]
    if layout % 5:
        values["nested"] = rng.normal(size=layout % 3).astype(np.float32)
    values["seq"] = [int(rng.choice(INT_WIDTHS[:3])) for _ in range(2 * (layout % 3))] or [1, 2]
    if layout % 2 == 0:
        values["name"] = "n" * (layout % 3)
    values["other"] = [1.0] * (layout % 2)  # a feature not in the spec
    return values


def serialize(values: dict, reverse: bool = False) -> bytes:
    example = make_example(dict(reversed(values.items())) if reverse else values)
    return example.SerializeToString(deterministic=True)


def same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, list):
            assert len(got[name]) == len(value)
            for a, b in zip(got[name], value):
                np.testing.assert_array_equal(a, b)
                assert np.asarray(a).dtype == np.asarray(b).dtype
        else:
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
            if value.dtype == object:
                assert got[name].tolist() == value.tolist(), name
            else:
                np.testing.assert_array_equal(got[name], value)


def parse_fast(records: list[bytes], spec: dict, layouts: ExampleLayouts | None = None, stride: bool = False) -> dict:
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    if stride:  # lay the records out at a fixed stride, with framing bytes between them
        gap = 7
        data = np.frombuffer(b"".join(r + b"\xee" * gap for r in records), dtype=np.uint8)
        starts = np.arange(len(records), dtype=np.int64) * (int(lengths[0]) + gap)
        return parse_records(data, starts, lengths, spec, layouts=layouts, stride=int(lengths[0]) + gap)
    data = np.frombuffer(b"".join(records), dtype=np.uint8)
    return parse_records(data, np.cumsum(lengths) - lengths, lengths, spec, layouts=layouts)


@pytest.mark.parametrize("seed", range(12))
def test_randomized_records_parse_as_protobuf_parses_them(seed):
    rng = np.random.default_rng(seed)
    records = [serialize(random_example(rng, int(rng.integers(0, 6))), reverse=bool(rng.random() < 0.2))
               for _ in range(300)]
    layouts = ExampleLayouts(SPEC)
    same(parse_fast(records, SPEC, layouts), parse_example(records, SPEC))
    assert any(layouts.layouts(n) for n in {len(r) for r in records})  # the fast path was taken
    same(parse_fast(records, SPEC, layouts), parse_example(records, SPEC))  # again, with the layouts known


def test_fixed_stride_records_are_viewed_and_parse_the_same():
    rng = np.random.default_rng(0)
    records = [serialize({"x": rng.normal(size=3).astype(np.float32), "label": 5, "seq": [1, 2]}) for _ in range(50)]
    spec = {name: SPEC[name] for name in ("x", "label", "opt", "seq", "ids")}
    got = parse_fast(records, spec, stride=True)
    same(got, parse_example(records, spec))
    assert not got["x"].flags.owndata  # a view of the buffer, not a copy


@pytest.mark.parametrize("seed", range(6))
def test_corrupted_bytes_parse_or_fail_as_protobuf_does(seed):
    rng = np.random.default_rng(100 + seed)
    base = [serialize(random_example(rng, 1)) for _ in range(40)]
    layouts = ExampleLayouts(SPEC)
    parse_fast(base, SPEC, layouts)  # learn the layout from good records
    for _ in range(40):
        records = list(base)
        for i in rng.choice(len(records), size=3, replace=False):
            damaged = bytearray(records[i])
            for at in rng.choice(len(damaged), size=int(rng.integers(1, 3)), replace=False):
                damaged[at] = int(rng.integers(0, 256))
            records[i] = bytes(damaged)
        try:
            expected = parse_example(records, SPEC)
        except ParseError as error:
            with pytest.raises(ParseError) as raised:
                parse_fast(records, SPEC, layouts)
            assert type(raised.value) is type(error)
            continue
        same(parse_fast(records, SPEC, layouts), expected)


def test_unusual_wire_forms_go_through_protobuf():
    plain = make_example({"x": [1.0, 2.0, 3.0], "label": 4})
    raw = plain.SerializeToString()
    # Features twice (protobuf merges them), an unknown field, and the same key twice (the last wins).
    doubled = raw + make_example({"label": 9}).SerializeToString()
    unknown = raw + b"\x10\x01"
    entries = plain.features.SerializeToString() + make_example({"label": 7}).features.SerializeToString()
    assert len(entries) < 128
    twice = b"\x0a" + bytes([len(entries)]) + entries
    records = [raw, raw, doubled, doubled, unknown, unknown]
    spec = {"x": FixedLenFeature([3], torch.float32, default_value=[0.0] * 3), "label": FixedLenFeature([], torch.int64)}
    same(parse_fast(records, spec), parse_example(records, spec))
    same(parse_fast([twice, twice], spec), parse_example([twice, twice], spec))


def test_errors_name_the_record_as_protobuf_parsing_does():
    good = serialize({"x": [1.0, 2.0, 3.0], "label": 1})
    missing = serialize({"x": [1.0, 2.0, 3.0]})
    spec = {"x": SPEC["x"], "label": SPEC["label"]}
    sources = [("a.tfrecord", 0), ("a.tfrecord", 40), ("a.tfrecord", 80)]
    lengths = np.array([len(good), len(good), len(missing)])
    data = np.frombuffer(good + good + missing, dtype=np.uint8)
    with pytest.raises(ParseError, match="'label' is required but missing in the record at offset 80 of a.tfrecord"):
        parse_records(data, np.cumsum(lengths) - lengths, lengths, spec, sources)
    bad_text = serialize({"x": [1.0, 2.0, 3.0], "label": 1, "t": [b"\xff"]})
    with pytest.raises(ParseError, match="'t' in record 1 is not valid UTF-8"):
        parse_fast([serialize({"x": [1.0, 2.0, 3.0], "label": 1, "t": [b"o"]}), bad_text],
                   {"t": VarLenFeature(str)})
