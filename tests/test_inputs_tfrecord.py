"""tfrecord_input_fn, the TFRecord reader/writer and tf.Example parsing, against files TensorFlow wrote."""

from __future__ import annotations

import gc
import gzip
import itertools
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import canned
from torch_estimator.canned.feature_columns import fingerprint
from torch_estimator.inputs import InputContext
from torch_estimator.inputs_tfrecord import TFRecordInput, tfrecord_input_fn
from torch_estimator.tf_example import (
    FixedLenFeature,
    FixedLenSequenceFeature,
    ParseError,
    VarLenFeature,
    make_example,
    parse_example,
)
from torch_estimator.tfrecord import CorruptRecordError, read_records, write_records

RECORDS = Path(__file__).parent / "fixtures" / "tf" / "records"
SPEC = {
    "x": FixedLenFeature([3], torch.float32),
    "label": FixedLenFeature([], torch.int64),
    "name": FixedLenFeature([], str),
    "opt": FixedLenFeature([], torch.float32, default_value=-1.0),
    "ids": VarLenFeature(torch.int64),
    "tags": VarLenFeature(str),
    "seq": FixedLenSequenceFeature([2], torch.float32, allow_missing=True),
}


def tf_parsed() -> dict:
    return json.loads((RECORDS / "parsed.json").read_text(encoding="utf-8"))["parsed"]


def write_numbered(path: Path, n: int, start: int = 0, compression: str | None = None) -> Path:
    write_records(path, [make_example({"i": start + k, "x": [float(start + k), 0.5]}).SerializeToString()
                         for k in range(n)], compression)
    return path


NUMBERED = {"i": FixedLenFeature([], torch.int64), "x": FixedLenFeature([2], torch.float32)}


def ids(input_: TFRecordInput) -> list[list[int]]:
    return [batch["i"].tolist() for batch in input_]


# -- what TensorFlow read ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,compression", [("examples.tfrecord", None), ("examples.tfrecord.gz", "GZIP"),
                                              ("examples.tfrecord.zz", "ZLIB")])
def test_parse_example_reads_what_tensorflow_read(name, compression):
    records = [data for _, data in read_records(RECORDS / name, compression)]
    parsed, expected = parse_example(records, SPEC), tf_parsed()
    np.testing.assert_array_equal(parsed["x"], np.asarray(expected["x"], np.float32))
    assert parsed["label"].tolist() == expected["label"]
    assert parsed["name"].tolist() == expected["name"]  # including non-ASCII and empty strings
    assert parsed["opt"].tolist() == expected["opt"]  # the default where a record lacks it
    for key in ("ids", "tags"):
        assert parsed[key].tolist() == expected[key]["values"]
        assert parsed[f"{key}_length"].tolist() == expected[key]["lengths"]
    np.testing.assert_array_equal(parsed["seq"], np.asarray(expected["seq"], np.float32))


def test_written_records_are_byte_identical_to_tensorflows(tmp_path):
    records = [data for _, data in read_records(RECORDS / "examples.tfrecord")]
    write_records(tmp_path / "copy.tfrecord", records)
    assert (tmp_path / "copy.tfrecord").read_bytes() == (RECORDS / "examples.tfrecord").read_bytes()
    for compression in ("GZIP", "ZLIB"):
        path = tmp_path / f"copy.{compression}"
        write_records(path, records, compression)
        assert [d for _, d in read_records(path, compression)] == records


def test_input_fn_batches_like_tensorflow_with_strings_as_fingerprints():
    input_fn = tfrecord_input_fn(str(RECORDS / "examples.tfrecord"), SPEC, batch_size=5, num_epochs=1,
                                 shuffle=False, label_key="label")
    batches = list(input_fn())
    assert [len(labels) for _, labels in batches] == [5, 5, 2]
    features, labels = batches[0]
    expected = tf_parsed()
    assert labels.dtype == torch.int64 and labels.tolist() == expected["label"][:5]
    assert features["x"].dtype == torch.float32 and features["x"].shape == (5, 3)
    assert features["name"].tolist() == [fingerprint(s) if s else -1 for s in expected["name"][:5]]
    assert features["tags"].tolist()[2] == [fingerprint("alpha"), fingerprint("beta")]
    assert features["seq"].shape == (5, 2, 2)


def test_variable_length_nested_output():
    input_fn = tfrecord_input_fn(str(RECORDS / "examples.tfrecord"), {"ids": VarLenFeature(torch.int64, output="nested"),
                                 "label": FixedLenFeature([], torch.int64)}, batch_size=4, num_epochs=1, shuffle=False)
    features = next(iter(input_fn()))
    assert features["ids"].is_nested and features["ids"].size(0) == 4
    assert [t.tolist() for t in features["ids"].unbind()] == [[], [0], [0, 1], [0, 1, 2]]


def test_estimator_trains_from_tfrecords_and_checkpoints_the_position(tmp_path):
    write_numbered(tmp_path / "train.tfrecord", 20)
    columns = [canned.numeric_column("x", shape=[2])]
    spec = {**canned.make_parse_example_spec(columns), "i": FixedLenFeature([], torch.int64)}
    input_fn = tfrecord_input_fn(str(tmp_path / "*.tfrecord"), spec, batch_size=4, num_epochs=None, shuffle=True,
                                 seed=3, label_key="i", shuffle_buffer_size=8)
    estimator = te.LinearRegressor(feature_columns=columns, model_dir=str(tmp_path / "model"))
    estimator.train(lambda **kw: _float_labels(input_fn(**kw)), steps=3)
    state = te.checkpoint.read_latest_checkpoint(str(tmp_path / "model")).state["input"]
    assert state["epoch"] == 0 and state["offset"] == 12 and state["fingerprint"].startswith("tfrecord:")


def test_estimator_resumes_the_tfrecord_input_where_the_last_checkpoint_stopped(tmp_path):
    for k in range(2):
        write_numbered(tmp_path / f"part-{k}.tfrecord", 7, start=10 * k)
    seen: list[int] = []

    def model_fn(features, labels, mode, model):
        seen.extend(labels.tolist())
        return te.EstimatorSpec(mode, loss=(model(features["x"]).squeeze(1) - labels.float()).pow(2).mean())

    input_fn = tfrecord_input_fn(str(tmp_path / "part-*"), NUMBERED, batch_size=4, num_epochs=None, shuffle=True,
                                 seed=1, label_key="i", shuffle_buffer_size=4)
    make = lambda: te.Estimator(model_fn, model_dir=str(tmp_path / "model"), model=torch.nn.Linear(2, 1),  # noqa: E731
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.001),
                                config=te.RunConfig(random_seed=0))
    make().train(input_fn, steps=3)
    make().train(input_fn, steps=3)  # a new Estimator: the position comes from the checkpoint
    uninterrupted = [i for batch in itertools.islice(iter(input_fn()), 6) for i in batch[1].tolist()]
    assert seen == uninterrupted


class _float_labels:  # noqa: N801 (a thin wrapper that keeps the input's state protocol)
    def __init__(self, source: TFRecordInput) -> None:
        self.source, self.fingerprint = source, source.fingerprint

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)

    def __iter__(self):
        for features, labels in self.source:
            yield features, labels.float().unsqueeze(1)


# -- batching, epochs, shuffle, shards, resume ---------------------------------------------------------


def test_epochs_span_batches_and_only_the_last_is_partial(tmp_path):
    write_numbered(tmp_path / "a.tfrecord", 6)
    got = ids(tfrecord_input_fn(str(tmp_path / "a.tfrecord"), NUMBERED, batch_size=4, num_epochs=2, shuffle=False)())
    assert got == [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]
    got = ids(tfrecord_input_fn(str(tmp_path / "a.tfrecord"), NUMBERED, batch_size=5, num_epochs=1, shuffle=False)())
    assert got == [[0, 1, 2, 3, 4], [5]]


def test_shuffle_is_seeded_complete_and_differs_per_epoch(tmp_path):
    for k in range(3):
        write_numbered(tmp_path / f"part-{k}.tfrecord", 10, start=10 * k)
    make = lambda seed: tfrecord_input_fn(str(tmp_path / "part-*"), NUMBERED, batch_size=30, num_epochs=2,  # noqa: E731
                                          shuffle=True, seed=seed, shuffle_buffer_size=8)()
    first, second = ids(make(1))
    assert sorted(first) == sorted(second) == list(range(30))
    assert first != list(range(30)) and first != second
    assert ids(make(1)) == [first, second]
    assert ids(make(2)) != [first, second]


def test_shards_by_file_then_by_record(tmp_path):
    for k in range(2):
        write_numbered(tmp_path / f"part-{k}.tfrecord", 5, start=10 * k)
    pattern = str(tmp_path / "part-*")
    by_file = [sum(ids(tfrecord_input_fn(pattern, NUMBERED, batch_size=3, num_epochs=1, shuffle=False)(
        mode="train", input_context=InputContext(2, rank, 2))), []) for rank in range(2)]
    assert by_file == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]
    by_record = [sum(ids(tfrecord_input_fn(pattern, NUMBERED, batch_size=3, num_epochs=1, shuffle=False)(
        mode="eval", input_context=InputContext(4, rank, 4))), []) for rank in range(4)]
    assert by_record == [[0, 4, 13], [1, 10, 14], [2, 11], [3, 12]]  # evaluation: each example once
    predict = ids(tfrecord_input_fn(pattern, NUMBERED, batch_size=10, num_epochs=1, shuffle=False)(
        mode="infer", input_context=InputContext(2, 1, 2)))
    assert predict == [[0, 1, 2, 3, 4, 10, 11, 12, 13, 14]]


def test_resumes_exactly_where_it_stopped(tmp_path):
    for k in range(2):
        write_numbered(tmp_path / f"part-{k}.tfrecord", 7, start=10 * k)
    input_fn = tfrecord_input_fn(str(tmp_path / "part-*"), NUMBERED, batch_size=4, num_epochs=3, shuffle=True,
                                 seed=5, shuffle_buffer_size=5)
    uninterrupted = ids(input_fn())
    first = input_fn()
    iterator = iter(first)
    head = [next(iterator)["i"].tolist() for _ in range(5)]  # into the second epoch
    state = first.state_dict()
    resumed = input_fn()
    resumed.load_state_dict(state)
    assert head + ids(resumed) == uninterrupted
    other = tfrecord_input_fn(str(tmp_path / "part-*"), NUMBERED, batch_size=3, num_epochs=3, shuffle=True, seed=5)()
    with pytest.raises(ValueError, match="input state is for"):
        other.load_state_dict(state)


# -- bad files and bad specs ---------------------------------------------------------------------------


def test_corrupt_record_names_file_and_offset_or_is_skipped_and_counted(tmp_path, caplog):
    path = write_numbered(tmp_path / "a.tfrecord", 4)
    data = bytearray(path.read_bytes())
    record = len(data) // 4
    data[record + 20] ^= 0xFF  # inside the second record's data
    path.write_bytes(bytes(data))
    input_fn = tfrecord_input_fn(str(path), NUMBERED, batch_size=10, num_epochs=1, shuffle=False)
    with pytest.raises(CorruptRecordError, match=rf"a\.tfrecord at offset {record}: the data's checksum"):
        list(input_fn())
    skipping = tfrecord_input_fn(str(path), NUMBERED, batch_size=10, num_epochs=1, shuffle=False, on_corrupt="skip")()
    assert ids(skipping) == [[0, 2, 3]] and skipping.skipped_records == 1
    assert "Skipping a corrupt record" in caplog.text


def test_truncated_file_and_wrong_compression_get_clear_errors(tmp_path):
    path = write_numbered(tmp_path / "a.tfrecord", 3)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptRecordError, match="ends inside a record"):
        list(read_records(path))
    gz = tmp_path / "b.tfrecord.gz"
    shutil.copy(RECORDS / "examples.tfrecord.gz", gz)
    with pytest.raises(CorruptRecordError, match="compression_type='GZIP'"):
        list(read_records(gz))
    with pytest.raises(CorruptRecordError, match="does not decompress"):
        list(read_records(RECORDS / "examples.tfrecord", "GZIP"))
    assert sorted(os.listdir(tmp_path)) == ["a.tfrecord", "b.tfrecord.gz"]  # reading wrote nothing


def test_spec_mismatches_name_the_feature_and_the_record(tmp_path):
    path = write_numbered(tmp_path / "a.tfrecord", 2)
    records = [d for _, d in read_records(path)]
    sources = [(str(path), 0), (str(path), 99)]
    with pytest.raises(ParseError, match=r"'i' in the record at offset 0 of .*a\.tfrecord is an int64_list.*dtype torch.float32"):
        parse_example(records, {"i": FixedLenFeature([], torch.float32)}, sources)
    with pytest.raises(ParseError, match="'x' in record 0 has 2 values; FixedLenFeature shape \\[3\\] needs 3"):
        parse_example(records, {"x": FixedLenFeature([3], torch.float32)})
    with pytest.raises(ParseError, match="'y' is required but missing in record 0; give the spec a default_value"):
        parse_example(records, {"y": FixedLenFeature([], torch.float32)})
    with pytest.raises(ParseError, match="record 0 is not a tf.Example"):
        parse_example([b"\xff\xff\xff"], NUMBERED)
    with pytest.raises(ParseError, match="not a multiple of FixedLenSequenceFeature shape \\[3\\]"):
        parse_example(records, {"x": FixedLenSequenceFeature([3], torch.float32, allow_missing=True)})


def test_bad_arguments_are_rejected(tmp_path):
    path = str(write_numbered(tmp_path / "a.tfrecord", 2))
    with pytest.raises(ValueError, match="`shuffle` must be given explicitly"):
        tfrecord_input_fn(path, NUMBERED)
    with pytest.raises(ValueError, match="no file matches"):
        tfrecord_input_fn(str(tmp_path / "missing-*"), NUMBERED, shuffle=False)
    with pytest.raises(ValueError, match="is a directory"):
        tfrecord_input_fn(str(tmp_path), NUMBERED, shuffle=False)
    with pytest.raises(ValueError, match="`label_key` 'y' is not in `features`"):
        tfrecord_input_fn(path, NUMBERED, shuffle=False, label_key="y")
    with pytest.raises(ValueError, match="`compression_type` must be None, '', 'GZIP' or 'ZLIB'"):
        tfrecord_input_fn(path, NUMBERED, shuffle=False, compression_type="snappy")
    with pytest.raises(ValueError, match="`on_corrupt` must be 'error' or 'skip'"):
        tfrecord_input_fn(path, NUMBERED, shuffle=False, on_corrupt="ignore")
    with pytest.raises(ValueError, match="`batch_size` must be an int > 0"):
        tfrecord_input_fn(path, NUMBERED, batch_size=0, shuffle=False)
    with pytest.raises(TypeError, match="must be a FixedLenFeature, VarLenFeature or FixedLenSequenceFeature"):
        tfrecord_input_fn(path, {"i": torch.int64}, shuffle=False)
    with pytest.raises(TypeError, match="`dtype` must be a torch dtype .* or str"):
        FixedLenFeature([], "float")
    with pytest.raises(ValueError, match="`shape` must be a list of non-negative ints"):
        FixedLenFeature([-1], torch.float32)
    with pytest.raises(ValueError, match="needs allow_missing=True"):
        FixedLenSequenceFeature([2], torch.float32)
    with pytest.raises(ValueError, match="several processes needs the same shuffle"):
        tfrecord_input_fn(path, NUMBERED, shuffle=True)(input_context=InputContext(2, 0, 2))


def test_make_parse_example_spec_from_feature_columns():
    age = canned.numeric_column("age", default_value=30.0)
    columns = [age, canned.bucketized_column(age, [18, 65]),
               canned.indicator_column(canned.categorical_column_with_vocabulary_list("color", ["red", "blue"])),
               canned.categorical_column_with_identity("day", 7)]
    spec = canned.make_parse_example_spec(columns)
    assert spec == {"age": FixedLenFeature([1], torch.float32, 30.0), "color": VarLenFeature(str),
                    "day": VarLenFeature(torch.int64, padding_value=-1)}


def test_te_inputs_exposes_the_tfrecord_names():
    assert te.inputs.tfrecord_input_fn is tfrecord_input_fn and te.inputs.FixedLenFeature is FixedLenFeature
    assert te.tfrecord_input_fn is tfrecord_input_fn
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        te.inputs.nope  # noqa: B018


def test_gzip_written_file_is_standard_gzip(tmp_path):
    path = write_numbered(tmp_path / "a.tfrecord.gz", 3, compression="GZIP")
    with gzip.open(path, "rb") as file:
        assert len(file.read()) > 0
    assert ids(tfrecord_input_fn(str(path), NUMBERED, batch_size=3, shuffle=False, compression_type="gzip")()) == [[0, 1, 2]]


def test_reading_a_gzip_file_closes_it(tmp_path):
    path = write_numbered(tmp_path / "a.tfrecord.gz", 3, compression="GZIP")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(read_records(str(path), "GZIP"))
        gc.collect()
    assert len(records) == 3
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_mnist_example_reads_its_data_from_tfrecords(tmp_path, capsys):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("examples_mnist_tfrecord", Path(__file__).parent.parent / "examples" / "mnist.py")
    mnist = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mnist
    spec.loader.exec_module(mnist)
    mnist.main(["--synthetic", "--write-tfrecords", str(tmp_path / "records")])
    assert "wrote 2000 examples" in capsys.readouterr().out
    results = mnist.main(["--data", f"tfrecord:{tmp_path}/records/{{split}}-*.tfrecord", "--steps", "3",
                          "--batch-size", "50", "--predict", "2", "--model-dir", str(tmp_path / "model")])
    assert results["global_step"] == 3 and 0.0 <= results["accuracy"] <= 1.0
    assert "image 1: predicted" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        mnist.main(["--data", f"tfrecord:{tmp_path}/records/train-*.tfrecord"])
    assert exit_.value.code == 2 and "with {split} in the pattern" in capsys.readouterr().err


# -- framing in blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block_bytes", [1, 100, 1 << 22])
@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_blocks_frame_fixed_and_mixed_lengths_and_stop_at_a_corrupt_record(tmp_path, block_bytes, compression):
    from torch_estimator.tfrecord import read_record_blocks

    records = [b"a" * 10] * 7 + [b"bb", b"ccc"] + [b"d" * 5] * 4
    path = tmp_path / "a.tfrecord"
    write_records(path, records, compression)
    blocks = list(read_record_blocks(path, compression, block_bytes=block_bytes))
    assert [block.record(i) for block in blocks for i in range(len(block))] == records
    offsets = np.concatenate([block.offsets for block in blocks]).tolist()
    assert offsets == [offset for offset, _ in read_records(path, compression)]
    for block in blocks:
        if block.stride:
            assert [bytes(row) for row in block.rows()] == [block.record(i) for i in range(len(block))]
    if compression:
        return
    data = bytearray(path.read_bytes())
    data[offsets[5] + 12] ^= 1  # the data of record 5, inside the run of equal records
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(CorruptRecordError, match=rf"at offset {offsets[5]}: the data's checksum"):
        for block in read_record_blocks(path, block_bytes=block_bytes):
            seen.extend(block.record(i) for i in range(len(block)))
    assert seen == records[:5]  # the records before it came first
    skipped = []
    kept = [d for _, d in read_records(path, on_corrupt=skipped.append)]
    assert kept == records[:5] + records[6:] and len(skipped) == 1


def test_resuming_does_not_count_skipped_records_twice(tmp_path):
    path = write_numbered(tmp_path / "a.tfrecord", 30)
    offsets = [offset for offset, _ in read_records(path)]
    data = bytearray(path.read_bytes())
    data[offsets[15] + 14] ^= 0xFF  # the data of record 15
    path.write_bytes(bytes(data))
    input_fn = tfrecord_input_fn(str(path), NUMBERED, batch_size=4, num_epochs=2, shuffle=True, seed=1,
                                 shuffle_buffer_size=6, on_corrupt="skip")
    whole = input_fn()
    uninterrupted = ids(whole)
    first = input_fn()
    iterator = iter(first)
    head = [next(iterator)["i"].tolist() for _ in range(9)]  # into the second epoch
    resumed = input_fn()
    resumed.load_state_dict(first.state_dict())
    assert head + ids(resumed) == uninterrupted
    assert resumed.skipped_records == whole.skipped_records == 2


def reference_deal(items, index, count, uneven):
    """Sharding by record one item at a time (the definition the block version must match)."""
    if uneven is None:
        return items[index::count]
    out, first, mine, seen = [], None, None, 0
    for seen, item in enumerate(items, 1):
        if (seen - 1) % count == index:
            mine = item
            first = item if first is None else first
        if seen % count == 0:
            out.append(mine)
    if seen % count and uneven == "pad" and first is not None:
        out.append(mine if index < seen % count else first)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_sharding_blocks_by_record_and_fitting_them_match_the_one_row_definitions(seed):
    from torch_estimator.inputs_tfrecord import _deal, _fit
    from torch_estimator.row_shuffle import Rows

    rng = np.random.default_rng(seed)
    n, count = int(rng.integers(0, 40)), int(rng.integers(1, 6))
    bounds = [0, *sorted(rng.integers(0, n + 1, int(rng.integers(0, 5))).tolist()), n]
    blocks = lambda: iter([Rows(b - a, {"i": np.arange(a, b)}, {}) for a, b in zip(bounds, bounds[1:])])  # noqa: E731
    flat = lambda stream: [i for rows in stream for i in rows.columns["i"].tolist()]  # noqa: E731
    for index in range(count):
        for uneven in (None, "pad", "drop"):
            assert flat(_deal(blocks(), index, count, uneven)) == reference_deal(list(range(n)), index, count, uneven)
    target = int(rng.integers(0, 3 * n + 2))
    if n:
        assert flat(_fit(blocks(), blocks, target, "0 of 1")) == [k % n for k in range(target)]
    elif target:
        with pytest.raises(ValueError, match="has no records to repeat"):
            flat(_fit(blocks(), blocks, target, "0 of 1"))


def test_a_file_truncated_in_place_while_it_is_read_is_a_clear_error_not_a_crash(tmp_path):
    """Files are read, not memory-mapped: a mapped file cut short under the reader would kill it with SIGBUS."""
    path = tmp_path / "big.tfrecord"
    record = bytes(range(256)) * 40  # 10 KB records: the file spans several read chunks
    write_records(path, [record] * 1000)
    records = read_records(path)
    assert next(records)[1] == record
    os.truncate(path, 100_003)  # after the first chunk was read: inside a record further on
    with pytest.raises(CorruptRecordError, match=r"big\.tfrecord at offset \d+: the file ends inside a record"):
        for _, data in records:
            assert data == record


def test_a_fifo_is_refused_at_once_not_read_forever(tmp_path):
    """Opening a FIFO blocks until a writer comes: a pattern matching one, or reading one, is a clear error."""
    write_numbered(tmp_path / "a.tfrecord", 3)
    os.mkfifo(tmp_path / "b.tfrecord")
    with pytest.raises(ValueError, match=r"'.*b\.tfrecord' is not a regular file \(a FIFO, socket or device\)"):
        tfrecord_input_fn(str(tmp_path / "*.tfrecord"), NUMBERED, shuffle=False)
    with pytest.raises(ValueError, match=r"b\.tfrecord is not a regular file \(a FIFO, socket or device\)"):
        list(read_records(tmp_path / "b.tfrecord"))
    with pytest.raises(ValueError, match=r"is not a regular file \(a directory\)"):
        list(read_records(tmp_path))
    assert [offset for offset, _ in read_records(tmp_path / "a.tfrecord", compression_type=None)] == [0, 49, 98]
