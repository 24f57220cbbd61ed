"""TFRecord files: reading and writing TF's record framing, without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked CRC32C of the length | data | uint32 masked CRC32C of the data

optionally compressed as a whole (``compression_type="GZIP"`` or ``"ZLIB"``, as TF). Both checksums are
checked; a corrupt record raises :class:`CorruptRecordError` naming the file and the record's offset (in the
uncompressed stream), or is skipped when the caller passes ``on_corrupt``. Needs the ``google-crc32c``
package (``pip install 'torch-estimator[tfrecord]'``).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "data.tfrecord")
    >>> write_records(path, [b"first", b"second"])
    2
    >>> [(offset, data) for offset, data in read_records(path)]
    [(0, b'first'), (21, b'second')]
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np

from .crc_runs import run_checksums_match

__all__ = [
    "CorruptRecordError",
    "COMPRESSION_TYPES",
    "frame_record",
    "masked_crc32c",
    "read_records",
    "read_record_blocks",
    "RecordBlock",
    "write_records",
    "check_compression_type",
]

COMPRESSION_TYPES = ("", "GZIP", "ZLIB")
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_CHUNK = 1 << 22
_BLOCK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"


class CorruptRecordError(ValueError):
    """A record whose framing or checksum is wrong (TF's ``DataLossError``).

    Attributes:
        path: The file.
        offset: The byte offset of the record's header in the (uncompressed) stream.
        reason: What was wrong.
        rest_of_file: True when the rest of the file cannot be read either (a bad length or a truncated file).
    """

    def __init__(self, path: str, offset: int, reason: str, rest_of_file: bool) -> None:
        self.path, self.offset, self.reason, self.rest_of_file = path, offset, reason, rest_of_file
        super().__init__(f"Corrupt TFRecord in {path} at offset {offset}: {reason}.")


def _crc32c() -> Callable[[Any], int]:
    try:
        import google_crc32c
    except ImportError as error:
        raise ImportError(
            "Reading and writing TFRecord files needs the google-crc32c package: "
            "pip install 'torch-estimator[tfrecord]' (or pip install google-crc32c)."
        ) from error
    return google_crc32c.value


def masked_crc32c(data: bytes | np.ndarray, crc32c: Callable[[Any], int] | None = None) -> int:
    """TF's masked CRC32C of ``data``: the CRC rotated right by 15 bits plus a constant.

    Example:
        >>> hex(masked_crc32c(b""))
        '0xa282ead8'
    """
    crc = (crc32c or _crc32c())(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes, crc32c: Callable[[Any], int] | None = None) -> bytes:
    """``data`` framed as one TFRecord: its length, the length's masked CRC, the data, the data's masked CRC.

    Example:
        >>> len(frame_record(b"abc"))
        19
    """
    crc32c = crc32c or _crc32c()
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length, crc32c)) + data + _FOOTER.pack(masked_crc32c(data, crc32c))


def check_compression_type(compression_type: str | None, where: str = "`compression_type`") -> str:
    """``None``/``""``/``"GZIP"``/``"ZLIB"`` (any case) -> the canonical name.

    Raises:
        ValueError: For anything else.
    """
    if compression_type is None:
        return ""
    if isinstance(compression_type, str) and compression_type.upper() in COMPRESSION_TYPES:
        return compression_type.upper()
    raise ValueError(f"{where} must be None, '', 'GZIP' or 'ZLIB' (as TF); received {compression_type!r}.")


class _ZlibReader(io.RawIOBase):
    """A readable stream over a zlib-compressed file (TF's ``ZLIB``: a zlib header and trailer)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._inflate, self._buffer = raw, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = self._raw.read(_CHUNK)
            if not chunk:
                self._buffer = self._inflate.flush()
                if not self._buffer:
                    return 0
                break
            self._buffer = self._inflate.decompress(chunk)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _GzipReader(gzip.GzipFile):
    """A GzipFile that closes the file it reads (one given a file object leaves it open)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_regular(path: str, what: str = "a TFRecord file") -> BinaryIO:
    """``path`` opened for reading, refusing anything but a regular file without blocking: opening a FIFO
    blocks until a writer comes, and a device never ends. ``what`` the file should be, for the message.

    Raises:
        FileNotFoundError: If it does not exist.
        ValueError: If it is a directory, FIFO, socket or device.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise ValueError(f"{path} is not a regular file ({kind}); {what} must be a regular file.")
        return os.fdopen(fd, "rb", buffering=_CHUNK)  # O_NONBLOCK does nothing to a regular file's reads
    except BaseException:
        os.close(fd)
        raise


def _open(path: str, compression_type: str) -> BinaryIO:
    raw = open_regular(path)
    if compression_type == "GZIP":
        return _GzipReader(raw)  # type: ignore[return-value]
    if compression_type == "ZLIB":
        return io.BufferedReader(_ZlibReader(raw), buffer_size=_CHUNK)
    return raw


def _hint(compression_type: str, head: bytes) -> str:
    if not compression_type and head.startswith(_GZIP_MAGIC):
        return " (the file starts with gzip's magic bytes: pass compression_type='GZIP')"
    if not compression_type and head[:1] == b"\x78":
        return " (the file looks zlib-compressed: pass compression_type='ZLIB')"
    return ""


@dataclasses.dataclass(frozen=True)
class RecordBlock:
    """Consecutive checked records of one file, located in a byte buffer (no per-record objects).

    Attributes:
        path: The file.
        data: A read-only uint8 array holding the records (a view of the file, or of decompressed bytes).
        starts: Where each record's data begins in ``data`` (int64).
        lengths: Each record's length in bytes (int64).
        offsets: The byte offset of each record's header in the (uncompressed) stream (int64).
        stride: When > 0, record ``i`` starts at ``starts[0] + i * stride`` (all records of the block have the
            same length), so :meth:`rows` views them without copying.
    """

    path: str
    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    stride: int

    def __len__(self) -> int:
        return len(self.starts)

    def record(self, i: int) -> bytes:
        """The data of record ``i``."""
        start = int(self.starts[i])
        return self.data[start : start + int(self.lengths[i])].tobytes()

    def rows(self) -> np.ndarray:
        """The records as a read-only ``[len, length]`` uint8 view (only when ``stride`` > 0).

        Raises:
            ValueError: If the records are not at a fixed stride.
        """
        if not self.stride or not len(self):
            raise ValueError("RecordBlock.rows() needs records at a fixed stride (stride > 0).")
        return np.lib.stride_tricks.as_strided(self.data[int(self.starts[0]) :], shape=(len(self), int(self.lengths[0])),
                                               strides=(self.stride, 1), writeable=False)


def read_records(
    path: str | os.PathLike[str],
    compression_type: str | None = None,
    on_corrupt: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)`` for each record of one TFRecord file.

    Args:
        path: The file.
        compression_type: None or ``""`` (uncompressed), ``"GZIP"`` or ``"ZLIB"``.
        on_corrupt: Called with the :class:`CorruptRecordError` of a corrupt record, which is then skipped
            (with the rest of the file when its length cannot be trusted); None raises it.

    Raises:
        CorruptRecordError: A bad checksum or a truncated record, when ``on_corrupt`` is None.
        FileNotFoundError: If the file does not exist.
        ValueError: For a bad ``compression_type``, or compressed data that does not decompress.
    """
    for block in read_record_blocks(path, compression_type, on_corrupt):
        for i, offset in enumerate(block.offsets.tolist()):
            yield offset, block.record(i)


def read_record_blocks(
    path: str | os.PathLike[str],
    compression_type: str | None = None,
    on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    block_bytes: int = _BLOCK,
) -> Iterator[RecordBlock]:
    """Yield the records of one TFRecord file in :class:`RecordBlock` s of about ``block_bytes`` each.

    Every length and data checksum is checked, as :func:`read_records` (which reads through this). Runs of
    records of one length are framed and checked with array operations: one CRC pass over the run's bytes
    checks every record's data checksum (:mod:`~torch_estimator.crc_runs`; a mismatch is then looked for record
    by record, to name it), and one CRC call the run's identical headers. Files are read, never memory-mapped: a file truncated or rewritten in
    place while it is read gives a clear error or the bytes that were checked, not a SIGBUS. The records
    before a corrupt one are yielded before its error is raised (or passed to ``on_corrupt``).

    Raises:
        CorruptRecordError: A bad checksum or a truncated record, when ``on_corrupt`` is None.
        FileNotFoundError: If the file does not exist.
        ValueError: For a bad ``compression_type``, or a path that is not a regular file (a FIFO would block).
    """
    path = os.fspath(path)
    compression = check_compression_type(compression_type)
    framer = _Framer(path, compression, _crc32c(), on_corrupt, max(int(block_bytes), 1))
    base = 0  # stream offset of the buffer's first byte
    left = np.empty(0, dtype=np.uint8)  # the end of the last buffer, not framed yet (a record's beginning)
    try:
        with _open(path, compression) as stream:
            while True:
                # A fresh buffer each time (blocks handed out keep theirs); the file is read straight into it.
                buffer = np.empty(len(left) + max(_CHUNK, len(left)), dtype=np.uint8)
                buffer[: len(left)] = left
                read = _read_into(stream, buffer[len(left) :].data)
                final = not read
                filled = buffer[: len(left) + read]
                filled.flags.writeable = False
                yield from framer.frame(filled.data, base, final)
                if framer.stopped or final:
                    return
                left, base = filled[framer.consumed :], base + framer.consumed
    except (OSError, EOFError, zlib.error) as failure:
        if isinstance(failure, FileNotFoundError) or not compression:  # a read error of a plain file is its own
            raise
        raise CorruptRecordError(path, base + framer.consumed, f"{compression} data does not decompress ({failure}); "
                                 f"check compression_type", True) from failure


def _read_into(stream: BinaryIO, target: memoryview) -> int:
    """Fill ``target`` from ``stream`` as far as the stream goes; the bytes read (0 at its end)."""
    done = 0
    while done < len(target):
        got = stream.readinto(target[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done


class _Framer:
    """Splits a buffer of TFRecord framing into checked :class:`RecordBlock` s (see ``read_record_blocks``)."""

    def __init__(self, path: str, compression: str, crc32c: Callable[[Any], int],
                 on_corrupt: Callable[[CorruptRecordError], None] | None, block_bytes: int) -> None:
        self._path, self._compression, self._crc32c, self._on_corrupt = path, compression, crc32c, on_corrupt
        self._block_bytes = block_bytes
        self.consumed = 0  # bytes of the last buffer framed (the rest waits for more data)
        self.stopped = False  # the rest of the file is unreadable

    def frame(self, buffer: Any, base: int, final: bool) -> Iterator[RecordBlock]:
        """Frame ``buffer`` (whose first byte is at stream offset ``base``); ``final`` when no data follows."""
        data = np.frombuffer(buffer, dtype=np.uint8)
        end, pos = len(data), 0
        self.consumed = 0
        runs: list[tuple[int, int, int]] = []  # (header position, count, stride)
        pending_bytes = 0
        while True:
            error: CorruptRecordError | None = None
            skip = 0
            if end - pos < _HEADER.size:
                if end == pos or not final:
                    break
                error = CorruptRecordError(self._path, base + pos, f"the file ends inside a record header "
                                           f"({end - pos} of {_HEADER.size} bytes)", True)
            else:
                length, length_crc = _HEADER.unpack_from(buffer, pos)
                stride = length + _HEADER.size + _FOOTER.size
                if masked_crc32c(data[pos : pos + 8], self._crc32c) != length_crc:
                    error = CorruptRecordError(
                        self._path, base + pos, "the length's checksum does not match; this is not a TFRecord file of "
                        "that compression type or it is damaged" + _hint(self._compression, bytes(buffer[pos : pos + 12])),
                        True)
                elif end - pos < stride:
                    if not final:
                        break
                    error = CorruptRecordError(self._path, base + pos, f"the file ends inside a record of {length} "
                                               f"bytes (truncated file?)", True)
                else:
                    count = self._run(data, buffer, pos, stride, (end - pos) // stride)
                    good = self._check_data(data, buffer, pos, length, stride, count)
                    if good:
                        runs.append((pos, good, stride))
                        pending_bytes += good * stride
                        pos += good * stride
                    if good < count:
                        error = CorruptRecordError(self._path, base + pos, f"the data's checksum does not match "
                                                   f"({length} bytes)", False)
                        skip = stride
            if runs and (error is not None or pending_bytes >= self._block_bytes):
                yield self._block(data, base, runs)
                runs, pending_bytes = [], 0
            if error is not None:
                self.consumed = pos
                if self._on_corrupt is None:
                    raise error
                self._on_corrupt(error)
                if error.rest_of_file:
                    self.stopped = True
                    return
                pos += skip
        if runs:
            yield self._block(data, base, runs)
        self.consumed = pos

    def _run(self, data: np.ndarray, buffer: Any, pos: int, stride: int, fit: int) -> int:
        """How many records from ``pos`` (at most ``fit``, and about a block's bytes) have this record's header."""
        fit = min(fit, max(1, self._block_bytes // stride))
        if fit < 2 or buffer[pos : pos + 12] != buffer[pos + stride : pos + stride + 12]:
            return 1
        headers = np.lib.stride_tricks.as_strided(data[pos:], shape=(fit, 12), strides=(stride, 1), writeable=False)
        lengths, crcs = headers[:, :8].view("<u8")[:, 0], headers[:, 8:].view("<u4")[:, 0]
        differs = (lengths != lengths[0]) | (crcs != crcs[0])
        first = int(differs.argmax())
        return first if differs[first] else fit

    def _check_data(self, data: np.ndarray, buffer: Any, pos: int, length: int, stride: int, count: int) -> int:
        """The number of leading records of the run whose data checksum matches."""
        start = pos + _HEADER.size
        if count > 1 and run_checksums_match(data, start, length, stride, count):
            return count  # every record's checksum, checked in one pass (see crc_runs); else find the bad one
        if count == 1:
            crc = masked_crc32c(data[start : start + length], self._crc32c)
            return int(crc == _FOOTER.unpack_from(buffer, start + length)[0])
        rows = np.lib.stride_tricks.as_strided(data[start:], shape=(count, length), strides=(stride, 1),
                                               writeable=False)
        crcs = np.fromiter(map(self._crc32c, rows), dtype=np.uint64, count=count)
        masked = (((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)
        stored = np.ndarray((count,), dtype="<u4", buffer=data, offset=start + length, strides=(stride,))
        bad = masked != stored
        first = int(bad.argmax())
        return first if bad[first] else count

    def _block(self, data: np.ndarray, base: int, runs: list[tuple[int, int, int]]) -> RecordBlock:
        positions, counts, strides = (np.asarray(column, dtype=np.int64) for column in zip(*runs))
        first = np.cumsum(counts) - counts  # index of each run's first record
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
        step = np.repeat(strides, counts)
        headers = np.repeat(positions, counts) + within * step
        lengths = step - (_HEADER.size + _FOOTER.size)
        stride = int(strides[0])
        fixed = bool(np.all(strides == stride) and np.all(np.diff(positions) == counts[:-1] * stride))
        return RecordBlock(self._path, data, headers + _HEADER.size, lengths, headers + base, stride if fixed else 0)


def write_records(
    path: str | os.PathLike[str], records: Iterable[bytes], compression_type: str | None = None
) -> int:
    """Write ``records`` to a TFRecord file atomically (a temporary file, then a rename); return their count.

    Raises:
        TypeError: If a record is not bytes.
        ValueError: For a bad ``compression_type``.
    """
    path = os.fspath(path)
    compression = check_compression_type(compression_type)
    crc32c = _crc32c()
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".tfrecord", dir=directory)
    count = 0
    try:
        with os.fdopen(handle, "wb") as raw:
            sink: Any = raw
            if compression == "GZIP":
                sink = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
            elif compression == "ZLIB":
                sink = _ZlibWriter(raw)
            for record in records:
                if not isinstance(record, (bytes, bytearray, memoryview)):
                    raise TypeError(f"write_records: record {count} must be bytes; received {type(record).__name__}.")
                sink.write(frame_record(bytes(record), crc32c))
                count += 1
            if sink is not raw:
                sink.close()
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return count


class _ZlibWriter:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._deflate = raw, zlib.compressobj()

    def write(self, data: bytes) -> None:
        self._raw.write(self._deflate.compress(data))

    def close(self) -> None:
        self._raw.write(self._deflate.flush())
