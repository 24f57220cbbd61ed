"""A run's checksums checked at once agree with checking every record alone, for intact and damaged runs."""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np
import pytest

from torch_estimator.crc_runs import run_checksums_match
from torch_estimator.tfrecord import masked_crc32c


def framed(records: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(r)) + struct.pack("<I", masked_crc32c(struct.pack("<Q", len(r)))) + r
                    + struct.pack("<I", masked_crc32c(r)) for r in records)


def record_by_record(data: np.ndarray, start: int, length: int, stride: int, count: int) -> bool:
    for i in range(count):
        begin = start + i * stride
        stored = struct.unpack_from("<I", data, begin + length)[0]
        if masked_crc32c(data[begin : begin + length].tobytes()) != stored:
            return False
    return True


@pytest.mark.parametrize("seed", range(60))
def test_intact_runs_match_and_any_damage_is_found_as_record_by_record_finds_it(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.choice([0, 1, 3, 4, 12, 16, 17, 100, 785, 3200]))
    count = int(rng.integers(1, 300))
    records = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(count)]
    data = np.frombuffer(framed(records), dtype=np.uint8).copy()
    stride = length + 16
    assert run_checksums_match(data, 12, length, stride, count)
    for _ in range(20):  # damage in the records' data or stored checksums (the headers are the caller's to compare)
        damaged = data.copy()
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, count))
            offset = int(rng.integers(0, length + 4))
            damaged[12 + i * stride + offset] ^= np.uint8(rng.integers(1, 256))
        assert run_checksums_match(damaged, 12, length, stride, count) == record_by_record(
            damaged, 12, length, stride, count)


def test_every_single_bit_flip_of_a_small_run_is_found():
    records = [bytes([i, 255 - i, 7]) for i in range(9)]
    data = np.frombuffer(framed(records), dtype=np.uint8).copy()
    stride = 3 + 16
    for i in range(9):
        for offset in range(3 + 4):  # the data and the stored checksum
            for bit in range(8):
                damaged = data.copy()
                damaged[12 + i * stride + offset] ^= np.uint8(1 << bit)
                assert not run_checksums_match(damaged, 12, 3, stride, 9), (i, offset, bit)


def test_the_same_damage_in_two_records_does_not_cancel():
    records = [bytes(50) for _ in range(64)]
    data = np.frombuffer(framed(records), dtype=np.uint8).copy()
    stride = 50 + 16
    for a, b in [(0, 1), (3, 40), (0, 63)]:
        damaged = data.copy()
        damaged[12 + a * stride + 10] ^= 0x20
        damaged[12 + b * stride + 10] ^= 0x20
        assert not run_checksums_match(damaged, 12, 50, stride, 64)


def test_a_run_must_follow_its_header():
    data = np.frombuffer(framed([b"ab", b"cd"]), dtype=np.uint8)
    with pytest.raises(ValueError, match="must follow its 12-byte header"):
        run_checksums_match(data[12:], 0, 2, 18, 2)


def test_the_c_implementation_is_used():
    assert google_crc32c.implementation == "c"
