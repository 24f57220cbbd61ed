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

import gzip
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

__all__ = [
    "CorruptRecordError",
    "COMPRESSION_TYPES",
    "masked_crc32c",
    "read_records",
    "write_records",
    "check_compression_type",
]

COMPRESSION_TYPES = ("", "GZIP", "ZLIB")
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_CHUNK = 1 << 20
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


def _crc32c() -> Callable[[bytes], int]:
    try:
        import google_crc32c
    except ImportError as error:
        raise ImportError(
            "Reading and writing TFRecord files needs the google-crc32c package: "
            "pip install 'torch-estimator[tfrecord]' (or pip install google-crc32c)."
        ) from error
    return google_crc32c.value


def masked_crc32c(data: bytes, crc32c: Callable[[bytes], int] | None = None) -> int:
    """TF's masked CRC32C of ``data``: the CRC rotated right by 15 bits plus a constant.

    Example:
        >>> hex(masked_crc32c(b""))
        '0xa282ead8'
    """
    crc = (crc32c or _crc32c())(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


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


def _open(path: str, compression_type: str) -> BinaryIO:
    if compression_type == "GZIP":  # gzip.open closes the file it opens (a GzipFile given one leaves it open)
        return gzip.open(path, "rb")  # type: ignore[return-value]
    raw = open(path, "rb", buffering=_CHUNK)  # noqa: SIM115 (closed by the caller)
    if compression_type == "ZLIB":
        return io.BufferedReader(_ZlibReader(raw), buffer_size=_CHUNK)
    return raw


def _hint(path: str, compression_type: str, head: bytes) -> str:
    if not compression_type and head.startswith(_GZIP_MAGIC):
        return " (the file starts with gzip's magic bytes: pass compression_type='GZIP')"
    if not compression_type and head[:1] == b"\x78":
        return " (the file looks zlib-compressed: pass compression_type='ZLIB')"
    return ""


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
    path = os.fspath(path)
    compression = check_compression_type(compression_type)
    crc32c = _crc32c()
    offset = 0  # of the current record in the (uncompressed) stream
    with _open(path, compression) as stream:
        reader = _Buffered(stream)
        try:
            while True:
                header = reader.take(_HEADER.size)
                if not header:
                    return
                length = 0
                if len(header) < _HEADER.size:
                    error = CorruptRecordError(path, offset, f"the file ends inside a record header ({len(header)} "
                                               f"of {_HEADER.size} bytes)", True)
                else:
                    length, length_crc = _HEADER.unpack(header)
                    if masked_crc32c(header[:8], crc32c) != length_crc:
                        error = CorruptRecordError(
                            path, offset, "the length's checksum does not match; this is not a TFRecord file of that "
                            "compression type or it is damaged" + _hint(path, compression, header), True)
                    else:
                        body = reader.take(length + _FOOTER.size)
                        if len(body) < length + _FOOTER.size:
                            error = CorruptRecordError(
                                path, offset, f"the file ends inside a record of {length} bytes (truncated file?)", True)
                        else:
                            data = body[:length]
                            if masked_crc32c(data, crc32c) == _FOOTER.unpack_from(body, length)[0]:
                                yield offset, data
                                offset += _HEADER.size + length + _FOOTER.size
                                continue
                            error = CorruptRecordError(path, offset, f"the data's checksum does not match ({length} "
                                                       "bytes)", False)
                if on_corrupt is None:
                    raise error
                on_corrupt(error)
                if error.rest_of_file:
                    return
                offset += _HEADER.size + length + _FOOTER.size
        except (OSError, EOFError, zlib.error) as failure:
            if isinstance(failure, FileNotFoundError):
                raise
            raise CorruptRecordError(path, offset, f"{compression or 'the file'} data does not decompress ({failure}); "
                                     f"check compression_type", True) from failure


class _Buffered:
    """Reads a stream in large chunks and hands out exact byte counts (fewer calls than one read per field)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self._buffer, self._pos = stream, b"", 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buffer):
            parts = [self._buffer[self._pos :]]
            have = len(parts[0])
            while have < n:
                chunk = self._stream.read(max(_CHUNK, n - have))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            self._buffer, self._pos, end = b"".join(parts), 0, min(n, have)
        data = self._buffer[self._pos : end]
        self._pos = end
        return data


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
                data = bytes(record)
                length = struct.pack("<Q", len(data))
                sink.write(length + _FOOTER.pack(masked_crc32c(length, crc32c)) + data
                           + _FOOTER.pack(masked_crc32c(data, crc32c)))
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
