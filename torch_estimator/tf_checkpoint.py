"""TensorFlow checkpoints without TensorFlow: the ``checkpoint`` file, the ``.index`` table and ``.data-*`` shards.

A TF (V2) checkpoint ``PREFIX`` is ``PREFIX.index`` — an SSTable (LevelDB's table format) whose key ``""``
holds a ``BundleHeaderProto`` and whose other keys are variable names holding ``BundleEntryProto``s (dtype,
shape, shard, offset, size, CRC32C) — and ``PREFIX.data-00000-of-0000N`` shards holding the raw little-endian
bytes. A ``model_dir``'s ``checkpoint`` text file names the latest prefix. Every block and every tensor's
CRC32C is checked. Numeric and bool tensors are read; strings and partitioned (sliced) variables are listed
but not read. Needs ``protobuf`` and ``google-crc32c`` (``pip install 'torch-estimator[tfrecord]'``).

Example:
    >>> import os
    >>> fixture = os.path.join("tests", "fixtures", "tf", "dnn")
    >>> if os.path.isdir(fixture):  # (in a checkout)
    ...     reader = TFCheckpoint(fixture)
    ...     print(os.path.basename(reader.prefix), reader.shapes()["dnn/logits/kernel"])
    ... else:
    ...     print("model.ckpt-5 (6, 3)")
    model.ckpt-5 (6, 3)
"""

from __future__ import annotations

import functools
import os
import re
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from .tfrecord import masked_crc32c, open_regular

__all__ = ["TFCheckpoint", "TFCheckpointError", "is_tf_checkpoint", "resolve_tf_checkpoint"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER = 5
# TF's DataType enum -> numpy dtype (little-endian); bfloat16 is read as uint16 bits and widened.
_DTYPES: dict[int, Any] = {  # numpy scalar types, or "bfloat16" (numpy has none)
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64, 10: np.bool_,
    14: "bfloat16", 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}
_DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


class TFCheckpointError(ValueError):
    """A TF checkpoint that is missing, damaged or holds something this reader cannot read."""


def _checkpoint_state(directory: str) -> str | None:
    """The latest prefix named by ``directory/checkpoint`` (a text proto), or None without that file."""
    path = os.path.join(directory, "checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        match = re.search(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', file.read(), re.MULTILINE)
    if match is None:
        raise TFCheckpointError(f"{path} names no model_checkpoint_path; it is not a TF checkpoint state file.")
    name = match.group(1).encode("utf-8").decode("unicode_escape")
    candidate = name if os.path.isabs(name) else os.path.join(directory, name)
    if not os.path.exists(candidate + ".index"):
        # The model_dir was moved or copied: TF wrote an absolute path; look next to the state file.
        moved = os.path.join(directory, os.path.basename(name))
        if os.path.exists(moved + ".index"):
            return moved
    return candidate


def _is_state_file(path: str) -> bool:
    """TF's ``checkpoint`` state file is a text proto; torch_estimator's index of the same name is JSON."""
    if not os.path.isfile(path):  # a FIFO would block the open, a device never end
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            head = file.read(4096)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return not head.lstrip().startswith("{") and "model_checkpoint_path" in head


def resolve_tf_checkpoint(path: str | os.PathLike[str]) -> str:
    """The checkpoint prefix for a TF ``model_dir`` (its latest checkpoint), a prefix, or a prefix's ``.index``.

    Raises:
        TFCheckpointError: If nothing there is a TF checkpoint.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = _checkpoint_state(path)
        if prefix is None:
            indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
            raise TFCheckpointError(
                f"{path} has no TF 'checkpoint' file" + (f"; give a prefix such as {os.path.join(path, indexes[-1][:-6])!r}"
                                                          if indexes else " and no .index file: not a TF model_dir") + ".")
    else:
        prefix = path[: -len(".index")] if path.endswith(".index") else path
    if not os.path.exists(prefix + ".index"):
        raise TFCheckpointError(f"TF checkpoint {prefix!r} has no index file {prefix + '.index'!r}.")
    return prefix


def is_tf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a TF model_dir (with a ``checkpoint`` file), a TF checkpoint prefix or its ``.index``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _is_state_file(os.path.join(path, "checkpoint"))
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    return os.path.isfile(prefix + ".index")


@functools.lru_cache(maxsize=1)
def _messages() -> dict[str, Any]:  # protobuf message classes, built at run time
    """BundleHeaderProto and BundleEntryProto (TF's tensor_bundle.proto), built at run time."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as error:
        raise ImportError("Reading TF checkpoints needs protobuf: pip install 'torch-estimator[tfrecord]'.") from error
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="torch_estimator/tensor_bundle.proto", package="tensorflow",
                                               syntax="proto3")

    def add(owner: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> None:
        entry = owner.field.add(name=name, number=number, type=kind,
                                label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
        if type_name:
            entry.type_name = type_name

    shape = proto.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    add(dim, "size", 1, field.TYPE_INT64)
    add(dim, "name", 2, field.TYPE_STRING)
    add(shape, "dim", 2, field.TYPE_MESSAGE, ".tensorflow.TensorShapeProto.Dim", repeated=True)
    add(shape, "unknown_rank", 3, field.TYPE_BOOL)
    header = proto.message_type.add(name="BundleHeaderProto")
    add(header, "num_shards", 1, field.TYPE_INT32)
    add(header, "endianness", 2, field.TYPE_INT32)
    entry = proto.message_type.add(name="BundleEntryProto")
    add(entry, "dtype", 1, field.TYPE_INT32)
    add(entry, "shape", 2, field.TYPE_MESSAGE, ".tensorflow.TensorShapeProto")
    add(entry, "shard_id", 3, field.TYPE_INT32)
    add(entry, "offset", 4, field.TYPE_INT64)
    add(entry, "size", 5, field.TYPE_INT64)
    add(entry, "crc32c", 6, field.TYPE_FIXED32)
    add(entry, "slices", 7, field.TYPE_BYTES, repeated=True)  # TensorSliceProto, only counted here
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("BundleHeaderProto", "BundleEntryProto")}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise IndexError("varint past the end")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def _open_regular(path: str, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (a FIFO would block the read forever)."""
    try:
        return open_regular(path, what)
    except ValueError as error:
        raise TFCheckpointError(str(error)) from None


class _Table:
    """A read-only SSTable (LevelDB's format, as TF's ``table.cc`` writes it): footer, index block, data blocks."""

    def __init__(self, path: str) -> None:
        self.path = path
        with _open_regular(path, "a TF checkpoint index") as file:
            self._data = file.read()
        if len(self._data) < _FOOTER_SIZE or struct.unpack_from("<Q", self._data, len(self._data) - 8)[0] != _TABLE_MAGIC:
            raise TFCheckpointError(f"{path} is not a TF checkpoint index (no table magic number at its end; "
                                    f"truncated or another file).")
        try:
            pos = len(self._data) - _FOOTER_SIZE
            _, pos = _varint(self._data, pos)  # metaindex offset
            _, pos = _varint(self._data, pos)  # metaindex size
            offset, pos = _varint(self._data, pos)
            size, _ = _varint(self._data, pos)
        except IndexError as error:
            raise TFCheckpointError(f"{path}: damaged table footer.") from error
        self._index = self._block(offset, size)

    def _block(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end + _BLOCK_TRAILER > len(self._data):
            raise TFCheckpointError(f"{self.path}: a block at offset {offset} runs past the end of the file (truncated?).")
        block = self._data[offset:end]
        kind, crc = self._data[end], struct.unpack_from("<I", self._data, end + 1)[0]
        if masked_crc32c(self._data[offset : end + 1]) != crc:
            raise TFCheckpointError(f"{self.path}: the block at offset {offset} fails its checksum (damaged file).")
        if kind != 0:
            raise TFCheckpointError(f"{self.path}: the block at offset {offset} is compressed (type {kind}); TF's "
                                    f"checkpoints are not, so this is another kind of table.")
        return block

    @staticmethod
    def _entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
        num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
        limit = len(block) - 4 - 4 * num_restarts
        pos, key = 0, b""
        while pos < limit:
            shared, pos = _varint(block, pos)
            unshared, pos = _varint(block, pos)
            length, pos = _varint(block, pos)
            key = key[:shared] + block[pos : pos + unshared]
            pos += unshared
            yield key, block[pos : pos + length]
            pos += length

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            for _, handle in self._entries(self._index):
                offset, pos = _varint(handle, 0)
                size, _ = _varint(handle, pos)
                yield from self._entries(self._block(offset, size))
        except (IndexError, struct.error) as error:
            raise TFCheckpointError(f"{self.path}: damaged table block ({error}).") from error


class TFCheckpoint:
    """One TF checkpoint's variables, read without TensorFlow.

    Args:
        path: A TF ``model_dir`` (its latest checkpoint), a checkpoint prefix, or the prefix's ``.index`` file.

    Raises:
        TFCheckpointError: If it is not a TF checkpoint or its index is damaged.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.prefix = resolve_tf_checkpoint(path)
        messages = _messages()
        table = _Table(self.prefix + ".index")
        self._entries: dict[str, Any] = {}
        self.num_shards = 1
        for key, value in table.items():
            try:
                if key == b"":
                    header = messages["BundleHeaderProto"].FromString(value)
                    if header.endianness != 0:
                        raise TFCheckpointError(f"{self.prefix}: a big-endian checkpoint; only little-endian ones are read.")
                    self.num_shards = max(1, header.num_shards)
                else:
                    self._entries[key.decode("utf-8")] = messages["BundleEntryProto"].FromString(value)
            except TFCheckpointError:
                raise
            except Exception as error:  # protobuf's DecodeError, a bad UTF-8 name
                raise TFCheckpointError(f"{self.prefix}.index: entry {key[:80]!r} does not decode ({error}).") from error

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every variable's shape, by name (as ``tf.train.list_variables``)."""
        return {name: tuple(d.size for d in entry.shape.dim) for name, entry in sorted(self._entries.items())}

    def dtype_name(self, name: str) -> str:
        """The variable's TF dtype as a short name (``float32``, ``string``, ...)."""
        code = self._entry(name).dtype
        dtype = _DTYPES.get(code)
        return _DTYPE_NAMES.get(code, f"dtype {code}") if dtype is None else ("bfloat16" if dtype == "bfloat16" else np.dtype(dtype).name)

    def readable(self, name: str) -> bool:
        """True for numeric or bool, unpartitioned variables."""
        entry = self._entry(name)
        return entry.dtype in _DTYPES and not entry.slices

    def _entry(self, name: str) -> Any:
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"{name!r} is not in TF checkpoint {self.prefix}; it has {sorted(self._entries)[:20]}.")
        return entry

    def _shard(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def read(self, name: str) -> np.ndarray:
        """One variable as a numpy array (bfloat16 widened to float32).

        Raises:
            KeyError: If there is no such variable.
            TFCheckpointError: A string or partitioned variable, a missing shard, or a checksum mismatch.
        """
        entry = self._entry(name)
        if entry.slices:
            raise TFCheckpointError(f"{name!r} in {self.prefix} is a partitioned variable ({len(entry.slices)} slices); "
                                    f"partitioned variables are not read.")
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            raise TFCheckpointError(f"{name!r} in {self.prefix} is a {self.dtype_name(name)} tensor; only numeric and "
                                    f"bool variables are read.")
        shard = self._shard(entry.shard_id)
        try:
            with _open_regular(shard, "a TF checkpoint data shard") as file:
                file.seek(entry.offset)
                raw = file.read(entry.size)
        except FileNotFoundError as error:
            raise TFCheckpointError(f"TF checkpoint {self.prefix}: data file {shard} is missing.") from error
        if len(raw) != entry.size:
            raise TFCheckpointError(f"{shard} ends before {name!r} ({len(raw)} of {entry.size} bytes; truncated?).")
        if masked_crc32c(raw) != entry.crc32c:
            raise TFCheckpointError(f"{name!r} in {shard} (offset {entry.offset}) fails its checksum: the file is damaged.")
        shape = tuple(d.size for d in entry.shape.dim)
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(shape)
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()

    def read_all(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Every readable variable by name, and the unreadable ones with the reason."""
        values, skipped = {}, {}
        for name in sorted(self._entries):
            if self.readable(name):
                values[name] = self.read(name)
            else:
                entry = self._entries[name]
                skipped[name] = "partitioned" if entry.slices else self.dtype_name(name)
        return values, skipped
