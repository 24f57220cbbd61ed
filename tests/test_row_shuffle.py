"""The block-at-a-time shuffle emits exactly what tf.data's one-row-at-a-time shuffle loop emits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from torch_estimator.row_shuffle import Rows, shuffle_rows


def reference(stream, size, rng):
    """tf.data's shuffle, one row at a time: fill a buffer, emit a random one and put the next in its place."""
    buffer = list(itertools.islice(stream, size))
    draws, used = rng.random(4096), 0
    for item in stream:
        if used == len(draws):
            draws, used = rng.random(4096), 0
        j = int(draws[used] * len(buffer))
        used += 1
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def blocks_of(n: int, cuts: list[int]) -> list[Rows]:
    bounds = [0, *sorted(cuts), n]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        ids = np.arange(a, b)
        width = 1 + a % 3  # padded columns of different widths in different blocks
        padded = np.tile(ids[:, None], (1, width))
        out.append(Rows(b - a, {"i": ids, "v": (padded, np.full(b - a, width))}, {"v": -1}))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_same_order_as_the_one_row_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 9000 if seed % 8 == 0 else 300))
    size = int(rng.integers(1, 12000 if seed % 3 == 0 else 40))
    blocks = blocks_of(n, rng.integers(0, n + 1, int(rng.integers(0, 6))).tolist())
    pop = [None, 1, 7, 100_000][seed % 4]  # rows emitted at a time: the order must not depend on it
    emitted = list(shuffle_rows(iter(blocks), size, np.random.default_rng(seed), pop=pop))
    got = [i for rows in emitted for i in rows.columns["i"].tolist()]
    assert got == list(reference(iter(range(n)), size, np.random.default_rng(seed)))
    assert all(rows.n <= (pop or 2048) for rows in emitted)
    for rows in emitted:  # each row's padded values travel with it, padded to the block's widest
        values, lengths = rows.columns["v"]
        for i, row, length in zip(rows.columns["i"].tolist(), values.tolist(), lengths.tolist()):
            assert row[:length] == [i] * length and set(row[length:]) <= {-1}


def test_blocks_viewing_one_file_merge_and_shuffle_their_rows(tmp_path):
    import torch

    from torch_estimator.example_layout import parse_records
    from torch_estimator.tf_example import FixedLenFeature, make_example
    from torch_estimator.tfrecord import read_record_blocks, write_records

    n = 500
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    write_records(tmp_path / "a.tfrecord", [make_example({"x": row, "i": i % 100}).SerializeToString()
                                            for i, row in enumerate(x)])
    spec = {"x": FixedLenFeature([3], torch.float32), "i": FixedLenFeature([], torch.int64)}
    blocks = [Rows(len(block), parse_records(block.data, block.starts, block.lengths, spec, stride=block.stride,
                                             padded=True), {})
              for block in read_record_blocks(tmp_path / "a.tfrecord", block_bytes=1000)]
    assert len(blocks) > 10 and blocks[0].columns["i"].dtype == np.uint8  # one-byte varints: views
    emitted = list(shuffle_rows(iter(blocks), 64, np.random.default_rng(3)))
    order = list(reference(iter(range(n)), 64, np.random.default_rng(3)))
    np.testing.assert_array_equal(np.concatenate([rows.columns["x"] for rows in emitted]), x[order])
    assert np.concatenate([rows.columns["i"] for rows in emitted]).tolist() == [i % 100 for i in order]


def test_a_buffer_larger_than_65536_rows_keeps_the_order():
    """Slot numbers are sorted as 16-bit integers when they fit; a larger buffer sorts them as they are."""
    n, size = 90_000, 70_000
    blocks = blocks_of(n, [30_000, 60_000])
    got = np.concatenate([rows.columns["i"] for rows in shuffle_rows(iter(blocks), size, np.random.default_rng(5))])
    assert got.tolist() == list(reference(iter(range(n)), size, np.random.default_rng(5)))
