"""tfrecord_input_fn's shards in training: equal in every epoch (padded or cut), resumable from any process's state.

The same with real processes and an Estimator: tests/test_distribute.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from torch_estimator.inputs import InputContext
from torch_estimator.inputs_tfrecord import TFRecordInput, tfrecord_input_fn
from torch_estimator.tf_example import FixedLenFeature, make_example
from torch_estimator.tfrecord import write_records

SPEC = {"i": FixedLenFeature([], torch.int64)}
SIZES = (7, 3, 5, 9, 4)  # records per file: 28, unevenly spread


def write_files(directory: Path, sizes: tuple[int, ...] = SIZES) -> str:
    start = 0
    for k, size in enumerate(sizes):
        write_records(directory / f"part-{k}.tfrecord",
                      [make_example({"i": start + n}).SerializeToString() for n in range(size)])
        start += size
    return str(directory / "part-*.tfrecord")


def read(input_: TFRecordInput) -> list[int]:
    return [i for batch in input_ for i in batch["i"].tolist()]


def shards(pattern: str, count: int, mode: str = "train", **kwargs) -> list[TFRecordInput]:
    input_fn = tfrecord_input_fn(pattern, SPEC, **{"batch_size": 4, "num_epochs": 1, "shuffle": False, **kwargs})
    return [input_fn(mode=mode, input_context=InputContext(count, rank, count)) for rank in range(count)]


def test_by_record_the_last_round_is_padded_with_each_shards_first_record_or_dropped(tmp_path):
    pattern = write_files(tmp_path, (10,))
    assert [read(s) for s in shards(pattern, 4)] == [[0, 4, 8], [1, 5, 9], [2, 6, 2], [3, 7, 3]]
    assert [read(s) for s in shards(pattern, 4, uneven_shards="drop")] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert [read(s) for s in shards(pattern, 4, mode="eval")] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]


@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_by_file_every_shard_has_the_same_size_in_every_shuffled_epoch(tmp_path, uneven):
    pattern = write_files(tmp_path)
    sizes = set()
    for seed in range(6):  # a file order per seed: as many ways to split the files in two
        first, second = (Counter(read(s)) for s in shards(pattern, 2, shuffle=True, seed=seed, shuffle_buffer_size=3,
                                                          uneven_shards=uneven))
        assert first.total() == second.total()
        assert not set(first) & set(second)  # disjoint: a padded shard repeats its own records
        if uneven == "pad":
            assert set(first) | set(second) == set(range(sum(SIZES)))  # every record, at least once
            assert max(len(first), len(second)) == first.total()  # the larger shard as it is
        else:
            assert all(n == 1 for part in (first, second) for n in part.values())  # none twice
            assert min(len(first), len(second)) == first.total()  # the smaller shard whole
        sizes.add(first.total())
    assert len(sizes) > 1  # the split changes with the order of the files
    several = [read(s) for s in shards(pattern, 2, num_epochs=3, shuffle=True, seed=0, uneven_shards=uneven)]
    assert len(several[0]) == len(several[1])


def test_equal_shards_resume_every_process_from_any_ones_state(tmp_path):
    pattern = write_files(tmp_path)
    ranks = shards(pattern, 2, num_epochs=2, shuffle=True, seed=1, shuffle_buffer_size=4)
    uninterrupted = [read(rank) for rank in ranks]
    assert ranks[0].fingerprint == ranks[1].fingerprint
    again = shards(pattern, 2, num_epochs=2, shuffle=True, seed=1, shuffle_buffer_size=4)
    iterator = iter(again[0])
    head = [i for _ in range(6) for i in next(iterator)["i"].tolist()]  # into the second epoch
    state = again[0].state_dict()  # what the chief's checkpoint holds
    resumed = shards(pattern, 2, num_epochs=2, shuffle=True, seed=1, shuffle_buffer_size=4)
    for rank in resumed:
        rank.load_state_dict(state)
    assert head + read(resumed[0]) == uninterrupted[0]
    assert uninterrupted[1][:len(head)] + read(resumed[1]) == uninterrupted[1]
    evaluation = shards(pattern, 2, mode="eval")
    assert evaluation[0].fingerprint != evaluation[1].fingerprint  # uneven shards: each its own position


def test_a_skipped_corrupt_record_is_not_counted_so_shards_stay_equal(tmp_path):
    pattern = write_files(tmp_path, (6, 6))
    path = tmp_path / "part-0.tfrecord"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 20] ^= 0xFF  # a record's data in the middle of the first file
    path.write_bytes(bytes(data))
    first, second = shards(pattern, 2, uneven_shards="drop", on_corrupt="skip")
    assert len(read(first)) == len(read(second)) == 5 and first.skipped_records == 1
    first, second = shards(pattern, 2, on_corrupt="skip")
    assert len(read(first)) == len(read(second)) == 6  # the first file's first record again


def test_a_shard_of_empty_files_cannot_be_padded(tmp_path):
    pattern = write_files(tmp_path, (4, 0))
    first, second = shards(pattern, 2)
    assert read(first) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"shard 1 of 2 has no records to repeat up to the 4 of the largest shard "
                                         r"\(its files are empty\); remove empty files or pass uneven_shards='drop'"):
        read(second)


def test_uneven_shards_must_be_pad_or_drop(tmp_path):
    with pytest.raises(ValueError, match=r"`uneven_shards` must be 'pad' \(repeat records of the shorter shards\) or "
                                         r"'drop' \(cut the longer ones\); received 'even'"):
        tfrecord_input_fn(write_files(tmp_path), SPEC, shuffle=False, uneven_shards="even")
