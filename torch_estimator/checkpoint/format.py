"""One checkpoint file: ``model.ckpt-<step>.safetensors``, written, read and verified.

The file holds every tensor under the name of its part (:mod:`.parts`): ``model/…``, ``optimizer/…``,
``lr_scheduler/…``, ``grad_scaler/…``, ``rng/…``, ``input/…``; everything else (global step, param groups, python and numpy RNG
states, the format version) is JSON in the safetensors metadata, with a content hash of all of it
(``content_hash``, see :mod:`.hashing`) that every load checks. Loading never unpickles.

Example:
    >>> import os, tempfile, torch
    >>> path = checkpoint_path_for_step(tempfile.mkdtemp(), 7)
    >>> write_checkpoint(path, 7, {"model": torch.nn.Linear(2, 1)})
    >>> checkpoint = read_checkpoint(path)
    >>> checkpoint.global_step, sorted(checkpoint.model), step_of(path)
    (7, ['bias', 'weight'], 7)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import operator
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open

from . import hashing
from .encoding import decode_state, encode_state, rng_state
from .files import atomic_write
from .parts import MODEL, RNG, Parts, check_parts, part_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FILE_RE",
    "Checkpoint",
    "CheckpointCorruptError",
    "check_step",
    "checkpoint_identity",
    "checkpoint_path_for_step",
    "list_variables",
    "open_regular",
    "read_checkpoint",
    "save_file",
    "step_of",
    "verify_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger("torch_estimator")

CHECKPOINT_FORMAT = "torch_estimator.checkpoint/1"
CHECKPOINT_FILE_RE = re.compile(r"^model\.ckpt-(\d+)\.safetensors$")


class CheckpointCorruptError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, zeroed, altered since it was written (its content
    hash differs), or not a torch_estimator checkpoint at all. ``path`` names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk: its path, global step, model tensors and the rest of its state.

    ``identity`` is the file's ``(absolute path, mtime_ns, size)`` when it was read (see
    :func:`checkpoint_identity`), so a caller can tell later whether the file on disk is still this one.
    """

    path: str
    global_step: int
    model: dict[str, torch.Tensor]
    state: dict[str, Any]
    identity: tuple[str, int, int] | None = None


def checkpoint_path_for_step(model_dir: str, step: int) -> str:
    """``<model_dir>/model.ckpt-<step>.safetensors``.

    Raises:
        ValueError: If ``step`` is not an int from 0 to 2**63 - 1.
    """
    return os.path.join(model_dir, f"model.ckpt-{check_step(step)}.safetensors")


def checkpoint_identity(path: str) -> tuple[str, int, int] | None:
    """``(absolute path, mtime_ns, size)`` of a checkpoint file, or None if it does not exist (any more).

    Every save replaces the file, so a changed identity means different content.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def step_of(path: str) -> int | None:
    """The step in a checkpoint file's name (``model.ckpt-<step>.safetensors``), or None for another name.

    Example:
        >>> step_of("/runs/model.ckpt-120.safetensors"), step_of("/runs/notes.txt")
        (120, None)
    """
    match = CHECKPOINT_FILE_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


# safetensors' names of torch dtypes.
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
    **{getattr(torch, name): tag for name, tag in [
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e4m3fnuz", "F8_E4M3FNUZ"), ("float8_e5m2", "F8_E5M2"),
        ("float8_e5m2fnuz", "F8_E5M2FNUZ"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")]
       if hasattr(torch, name)},
}
_WRITE_CHUNK = 64 << 20


def save_file(tensors: Mapping[str, torch.Tensor], filename: str, metadata: Mapping[str, str] | None = None) -> None:
    """Write CPU, contiguous tensors as a safetensors file (the format of ``safetensors.torch.save_file``).

    Written here with plain ``os.write`` rather than by safetensors so that a failing write (a full disk)
    surfaces as the ``OSError`` the kernel gave, with its errno, and so that nothing but ``filename`` is
    created. Tensors are laid out by decreasing element size, then name, so every tensor stays aligned.

    Raises:
        OSError: From the file system.
        TypeError: For a dtype safetensors cannot store.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    order = sorted(tensors, key=lambda key: (-tensors[key].element_size(), key))
    offset = 0
    for key in order:
        tensor = tensors[key]
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"Cannot checkpoint {key!r}: safetensors cannot store dtype {tensor.dtype}.")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        _write_all(fd, len(encoded).to_bytes(8, "little") + encoded)
        for key in order:
            view = hashing.raw_bytes(tensors[key])
            for at in range(0, len(view), _WRITE_CHUNK):
                _write_all(fd, view[at:at + _WRITE_CHUNK])
    finally:
        os.close(fd)


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unshared_on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared tensors (safetensors refuses tensors that share storage, e.g. tied weights)."""
    storages: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu")
        storage = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or (tensor.numel() and storage in storages):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            storage = tensor.untyped_storage().data_ptr()
        storages.add(storage)
        out[key] = tensor
    return out


def write_checkpoint(path: str, global_step: int, parts: Parts, *, content_hash: bool = True) -> None:
    """Write one checkpoint file atomically and durably (temporary file, ``fsync``, ``os.replace``).

    Args:
        path: The file, ``model.ckpt-<global_step>.safetensors``.
        global_step: An int from 0 to 2**63 - 1.
        parts: The named parts to save (see :mod:`.parts`): ``{"model": model, "optimizer": optimizer, ...}``.
            A part that is None, or whose state is empty (a disabled grad scaler), is left out; the RNG states
            are added as ``"rng"``.
        content_hash: Store the content hash that every load checks. False only for benchmarks: such a
            file loads without verification.

    Raises:
        OSError: If the file cannot be written (full disk, read-only directory): the message names the
            path; the previous files are untouched.
        TypeError: If some state cannot be represented without pickle, or a part has the wrong type.
        ValueError: If ``parts`` lacks ``"model"`` or names a part ``"rng"``.
    """
    check_step(global_step)
    model = check_parts(parts, "write_checkpoint")
    tensors = {f"{MODEL}/{k}": v for k, v in model.state_dict().items()}
    state: dict[str, Any] = {}
    for name, part in parts.items():
        if name == MODEL or part is None:
            continue
        value = part_state(part)
        if value:  # an empty state (a disabled grad scaler) has nothing to restore
            state[name] = encode_state(value, name, tensors)
    state[RNG] = encode_state(rng_state(), RNG, tensors)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "global_step": str(int(global_step)),
        "state": json.dumps(state),
        "torch_version": torch.__version__,
    }
    host = _unshared_on_cpu(tensors)
    if content_hash:
        metadata[hashing.CONTENT_HASH_KEY] = hashing.content_hash(host, metadata)
    atomic_write(path, lambda tmp: save_file(host, tmp, metadata=metadata))


def _verify(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    stored = metadata.get(hashing.CONTENT_HASH_KEY)
    if stored is None:  # written before content hashes, or with content_hash=False
        return
    algorithm = stored.partition(":")[0]
    if algorithm == "xxh3-tree" and algorithm not in hashing.CHUNK_DIGESTS:  # a good file: never a reason to fall back
        logger.warning("Checkpoint %s has an xxh3-tree content hash, which needs the `xxhash` package to be checked "
                       "(pip install xxhash); loading it unchecked.", path)
        return
    if algorithm not in hashing.CHUNK_DIGESTS:
        raise CheckpointCorruptError(path, f"Checkpoint {path} has a content hash of unknown kind {stored[:40]!r}: "
                                           f"it was written by a newer version, or altered.")
    actual = hashing.content_hash(tensors, metadata, algorithm)
    if actual != stored:
        at = len(algorithm) + 1
        raise CheckpointCorruptError(
            path,
            f"Checkpoint {path} is damaged: its content hash does not match (stored {stored[at:at + 16]}…, "
            f"computed {actual[at:at + 16]}…). It was altered or partly overwritten after it was written; "
            f"use an older checkpoint.",
        )


_MAX_STEP = 2**63 - 1
_KNOWN_METADATA = frozenset({"format", "global_step", "state", "torch_version", hashing.CONTENT_HASH_KEY})


def check_step(global_step: Any) -> int:
    try:
        step = operator.index(global_step) if not isinstance(global_step, bool) else None
    except TypeError:
        step = None
    if step is None or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"A checkpoint's global step must be an int from 0 to 2**63 - 1; received {global_step!r}.")
    return int(step)


def open_regular(path: str) -> int:
    """Open ``path`` for reading, refusing anything but a regular file without blocking (a FIFO would block
    ``open`` and every read forever; a device never ends).

    Raises:
        FileNotFoundError: If it does not exist.
        CheckpointCorruptError: If it is a directory, FIFO, socket or device.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise CheckpointCorruptError(
            path, f"Checkpoint path {path} is a directory, not a checkpoint file; give a file "
                  f"model.ckpt-<step>.safetensors (the newest one in a directory: checkpoint.latest_checkpoint(dir)).")
    raise CheckpointCorruptError(path, f"Checkpoint path {path} is not a regular file (a FIFO, socket or device); "
                                       f"it cannot be a checkpoint. Move it away.")


@contextlib.contextmanager
def _safe_open(path: str) -> Any:
    """``safe_open`` on a regular file only, through the descriptor that was checked (no swap in between)."""
    fd = open_regular(path)
    try:
        through = f"/proc/self/fd/{fd}"
        with safe_open(through if os.path.exists(through) else path, framework="pt", device="cpu") as handle:
            yield handle, os.fstat(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint file written by :func:`write_checkpoint` (tensors on the CPU), checking its hash.

    Only a regular file is opened. The metadata's global step must be an int from 0 to 2**63 - 1 and, for a
    file named ``model.ckpt-<step>.safetensors``, equal that step. A file without a content hash (written with
    ``content_hash=False``) loads with a warning, unless its metadata has a key this version does not know
    (a damaged ``content_hash`` key): then it is refused as damaged.

    Args:
        verify: Check the content hash.

    Raises:
        FileNotFoundError: If the file does not exist (for example, rotated away meanwhile).
        CheckpointCorruptError: A ``ValueError``: the file is truncated, zeroed, altered, not a regular file
            or not a torch_estimator checkpoint; the message names the file.
    """
    try:
        with _safe_open(path) as (handle, status):
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    except (FileNotFoundError, CheckpointCorruptError):
        raise
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise CheckpointCorruptError(
            path, f"Checkpoint {path} could not be read: {error}. It is truncated or damaged; use an older checkpoint."
        ) from error
    identity = (os.path.abspath(path), status.st_mtime_ns, status.st_size)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointCorruptError(
            path,
            f"{path} is not a torch_estimator checkpoint (format {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}).",
        )
    if verify:
        if hashing.CONTENT_HASH_KEY not in metadata:
            unknown = sorted(set(metadata) - _KNOWN_METADATA)
            if unknown:
                raise CheckpointCorruptError(
                    path, f"Checkpoint {path} is damaged: it has no content hash but unknown metadata keys {unknown} "
                          f"(a damaged content_hash key?); use an older checkpoint.")
            logger.warning("Checkpoint %s has no content hash (written with content_hash=False); loading it unchecked.", path)
        _verify(path, tensors, metadata)
    try:
        state = decode_state(json.loads(metadata["state"]), tensors)
        raw_step = metadata["global_step"]
        if not re.fullmatch(r"\d{1,19}", raw_step) or int(raw_step) > _MAX_STEP:
            raise ValueError(f"global step {raw_step[:40]!r} is not an int from 0 to 2**63 - 1")
        global_step = int(raw_step)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointCorruptError(path, f"Checkpoint {path} has damaged metadata: {error!r}.") from error
    named = step_of(path)
    if named is not None and named != global_step:
        raise CheckpointCorruptError(
            path, f"Checkpoint {path} says it is global step {global_step}, but its name says {named}: it was renamed "
                  f"or altered. Rename it back to model.ckpt-{global_step}.safetensors, or use another checkpoint.")
    model = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    return Checkpoint(path=path, global_step=global_step, model=model, state=state, identity=identity)


def verify_checkpoint(path: str) -> int:
    """Read ``path`` completely and check its content hash.

    Returns:
        Its global step.

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointCorruptError: If it is damaged (the message names the file).
    """
    return read_checkpoint(path).global_step


def list_variables(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in a checkpoint file, plus ``global_step``, without loading data.

    Raises:
        CheckpointCorruptError: If the file's header is damaged.
    """
    try:
        with _safe_open(path) as (handle, _):
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    except (FileNotFoundError, CheckpointCorruptError):
        raise
    except Exception as error:
        raise CheckpointCorruptError(path, f"Checkpoint {path} could not be read: {error}.") from error
    shapes["global_step"] = ()
    return dict(sorted(shapes.items()))
