"""The data checksums of a run of equal-length TFRecord records, checked with one CRC32C pass over their bytes.

A run is ``count`` records of ``length`` data bytes lying at a fixed ``stride`` (``length + 16``: each record's
data is followed by its 4-byte masked CRC32C and the next record's 12-byte header, identical within a run).
CRC32C is linear: ``crc(A + B) = shift(crc(A), len(B)) ^ crc(B)``, where ``shift(c, n)`` (``c`` advanced over
``n`` zero bytes) is a linear map of ``c``'s 32 bits. So when every stored checksum is right, the CRC of the
run's bytes from the first record's data to the end of the last one's equals a value computed from the stored
checksums alone; :func:`run_checksums_match` computes both, the first by one call of the C implementation at
memory speed, the second with array operations on 32-bit values (a linear map is four 256-entry tables).

A wrong byte anywhere in the records' data or checksums makes them differ exactly when checking that record
alone would have noticed (a record's error changes the run's CRC by an invertible map of its own); errors in
several records cancel only with the probability of a CRC32C collision (2**-32). The caller checks record by
record when the run does not match, to name the first bad record.

Example:
    >>> import google_crc32c, struct
    >>> from torch_estimator.tfrecord import masked_crc32c
    >>> records = [bytes([i]) * 5 for i in range(3)]
    >>> framed = b"".join(struct.pack("<QI", 5, masked_crc32c(struct.pack("<Q", 5))) + r
    ...                   + struct.pack("<I", masked_crc32c(r)) for r in records)
    >>> data = np.frombuffer(framed, dtype=np.uint8)
    >>> run_checksums_match(data, 12, 5, 21, 3)
    True
    >>> damaged = data.copy(); damaged[12 + 21 + 2] ^= 1
    >>> run_checksums_match(damaged, 12, 5, 21, 3)
    False
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run_checksums_match"]

_MASK_DELTA = 0xA282EAD8
_BYTES = np.arange(256, dtype=np.uint32)
_BITS = ((_BYTES[:, None] >> np.arange(8, dtype=np.uint32)) & 1).astype(bool)  # [byte, bit]


class _Linear:
    """A linear map of 32-bit values over GF(2), as four tables: one per byte of the input."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images.astype(np.uint32)  # the image of each input bit, 1 << j
        self.tables = [np.bitwise_xor.reduce(np.where(_BITS, self.images[8 * k : 8 * k + 8], np.uint32(0)), axis=1)
                       for k in range(4)]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        t0, t1, t2, t3 = self.tables
        return t0[values & 0xFF] ^ t1[(values >> 8) & 0xFF] ^ t2[(values >> 16) & 0xFF] ^ t3[values >> 24]

    def squared(self) -> _Linear:
        """This map applied twice."""
        return _Linear(self(self.images))


def _crc32c() -> tuple[Callable[[Any], int], Callable[[int, Any], int]]:
    """google-crc32c's ``value(data)`` and ``extend(crc, data)`` (the reader checked that it is installed)."""
    import google_crc32c

    return google_crc32c.value, google_crc32c.extend


@functools.lru_cache(maxsize=256)
def _shift(n: int) -> _Linear:
    """``c -> shift(c, n)``: the CRC state ``c`` advanced over ``n`` zero bytes, less the zeros' own CRC."""
    value, extend = _crc32c()
    zeros = bytes(n)
    base = value(zeros)
    return _Linear(np.array([extend(1 << j, zeros) ^ base for j in range(32)], dtype=np.uint64))


@functools.lru_cache(maxsize=1)
def _footer_map() -> _Linear:
    """``F -> crc(F + 12 zero bytes) ^ crc(16 zero bytes)``: the linear part of a footer's CRC before a header."""
    value, _ = _crc32c()
    base = value(bytes(16))
    return _Linear(np.array([value(struct.pack("<I", 1 << j) + bytes(12)) ^ base for j in range(32)],
                            dtype=np.uint64))


@functools.lru_cache(maxsize=64)
def _levels(stride: int, depth: int) -> list[_Linear]:
    """``shift(., stride * 2**j)`` for ``j < depth``."""
    levels = [_shift(stride)]
    while len(levels) < depth:
        levels.append(levels[-1].squared())
    return levels[:depth]


def _fold(values: np.ndarray, stride: int) -> int:
    """``XOR_i shift(values[i], (len(values) - 1 - i) * stride)``: the CRC of pieces ``stride`` bytes long."""
    size = 1 << max(len(values) - 1, 0).bit_length()
    folded = np.zeros(size, dtype=np.uint32)
    folded[size - len(values) :] = values  # leading zeros shift to zeros
    for level in _levels(stride, size.bit_length() - 1):
        folded = level(folded[0::2]) ^ folded[1::2]
    return int(folded[0])


def run_checksums_match(data: np.ndarray, start: int, length: int, stride: int, count: int) -> bool:
    """Whether every record of the run has the data checksum stored after it (see the module docstring).

    Args:
        data: The uint8 buffer holding the run.
        start: Where the first record's data begins in ``data``.
        length: Each record's data length.
        stride: ``length + 16``: from one record's data to the next one's.
        count: Records in the run (>= 1), all with the same 12-byte header (the caller checked).
    """
    value, _ = _crc32c()
    stored = np.ndarray((count,), dtype="<u4", buffer=data, offset=start + length, strides=(stride,)).astype(np.uint32)
    rotated = stored - np.uint32(_MASK_DELTA)  # unmask: subtract the constant, rotate left by 15 bits
    crcs = (rotated << np.uint32(15)) | (rotated >> np.uint32(17))
    end = start + (count - 1) * stride + length
    actual = value(data[start:end])
    if count == 1:
        return bool(actual == int(crcs[0]))
    header = data[start - 12 : start].tobytes() if start >= 12 else None
    if header is None or len(header) != 12:
        raise ValueError("run_checksums_match: the run's first record must follow its 12-byte header in `data`.")
    # The CRC of each piece "data, footer, next header" (16 + length bytes) from the stored values alone.
    constant = np.uint32(value(bytes(4) + header))
    pieces = _shift(16)(crcs[:-1]) ^ _footer_map()(stored[:-1]) ^ constant
    expected = int(_shift(length)(np.array([_fold(pieces, stride)], dtype=np.uint32))[0]) ^ int(crcs[-1])
    return bool(actual == expected)
