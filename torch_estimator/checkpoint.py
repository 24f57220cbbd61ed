"""Checkpoints: one safetensors file per save, a JSON index, TF's rotation, restore and warm start.

File ``model.ckpt-<step>.safetensors`` holds every tensor under a prefixed key (``model/…``,
``optimizer/…``, ``lr_scheduler/…``, ``grad_scaler/…``, ``rng/…``, ``input/…``); everything else (global
step, param groups, python and numpy RNG states, the format version) is JSON in the safetensors metadata,
with a content hash of all of it (``content_hash``) that every load checks. Loading never unpickles.

Both the file and the ``checkpoint`` index are written to a temporary file, flushed to disk (``fsync``) and
moved into place with ``os.replace`` (then the directory is flushed), so a crash at any moment leaves the
previous state intact; leftover temporary files are removed when the next writer starts. A damaged latest
checkpoint (truncated, zeroed, altered) is reported naming the file, and :func:`restore_latest` falls back
to the newest intact one; a checkpoint rotated away while a reader opens it is skipped the same way. A
missing or unreadable index is rebuilt from the files present.

Example:
    >>> import tempfile, torch
    >>> model_dir = tempfile.mkdtemp()
    >>> manager = CheckpointManager(model_dir, keep_checkpoint_max=2)
    >>> for step in (10, 20, 30):
    ...     _ = manager.save(step, model=torch.nn.Linear(2, 1))
    >>> [os.path.basename(p) for p in read_index(model_dir).paths]
    ['model.ckpt-20.safetensors', 'model.ckpt-30.safetensors']
    >>> restore_latest(model_dir, model=torch.nn.Linear(2, 1)).global_step
    30
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import operator
import os
import random
import re
import shutil
import stat
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from .protocols import SaverListenerLike, Stateful

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointManager",
    "CheckpointSaver",
    "CheckpointIndex",
    "WarmStartSettings",
    "check_model_dir",
    "checkpoint_identity",
    "checkpoint_path_for_step",
    "step_of",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "make_writable_model_dir",
    "non_finite_tensors",
    "training_state_tensors",
    "list_variables",
    "read_index",
    "read_checkpoint",
    "read_latest_checkpoint",
    "restore_checkpoint",
    "restore_latest",
    "verify_checkpoint",
    "warm_start",
    "write_checkpoint",
]

logger = logging.getLogger("torch_estimator")

CHECKPOINT_FORMAT = "torch_estimator.checkpoint/1"
INDEX_FORMAT = "torch_estimator.checkpoint_index/1"
INDEX_NAME = "checkpoint"
_FILE_RE = re.compile(r"^model\.ckpt-(\d+)\.safetensors$")


# ----------------------------------------------------------------------------------------------------------
# Nested state <-> (JSON, tensors), with no pickle.


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors and arrays in a nested structure by references into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, (str, int)) for k in value):
            return {"__items__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(
        f"Cannot checkpoint {key!r}: values of type {type(value).__name__} are not supported (tensors, "
        f"arrays, numbers, strings, lists, tuples and dicts are)."
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__ndarray__":
            return tensors[inner].numpy()
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "__items__":
            return {k: _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------------------
# Finite weights.


def training_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors (``model/<name>``) and the optimizer's slots (``optimizer/<param>/<slot>``), by name."""
    named = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for i, (_, slots) in enumerate(optimizer.state.items()):
            for slot, value in slots.items():
                if isinstance(value, torch.Tensor):
                    named[f"optimizer/{i}/{slot}"] = value
    return named


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity.

    One fused reduction per device and dtype (``torch._foreach_norm`` with ``ord=inf``: the largest
    magnitude, NaN or infinite exactly when some element is) and a single copy to the host: one wait for
    the device in all, meant for moments when the host waits anyway (a save).

    Example:
        >>> non_finite_tensors({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.arange(3)})
        ['b']
    """
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel() and not tensor.is_sparse:
            groups.setdefault((tensor.device, tensor.dtype), []).append((name, tensor.detach()))
    if not groups:
        return []
    names: list[str] = []
    flags: list[torch.Tensor] = []
    for members in groups.values():
        values = [t for _, t in members]
        try:
            norms: Sequence[torch.Tensor] = torch._foreach_norm(values, float("inf"))
        except (RuntimeError, TypeError, NotImplementedError):  # a backend without the fused kernel
            norms = [t.abs().amax() for t in values]
        flags.append(torch.isfinite(torch.stack(list(norms))))
        names.extend(n for n, _ in members)
    finite = torch.cat([f.to(flags[0].device) for f in flags]).tolist()  # the one wait
    return [name for name, ok in zip(names, finite) if not ok]


# ----------------------------------------------------------------------------------------------------------
# One checkpoint file.


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
    return os.path.join(model_dir, f"model.ckpt-{_check_step(step)}.safetensors")


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
    match = _FILE_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable (POSIX); a no-op where directories
    cannot be opened or synced."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory (EINVAL); the rename still happened
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _advice(error_number: int | None, path: str) -> str:
    """What to do about an error writing ``path``."""
    if error_number in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return "free disk space (or raise the quota)"
    if error_number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the directory writable (or remount it read-write)"
    if error_number == errno.EISDIR:
        return f"move the directory {path} away (it stands where a file belongs)"
    return "fix the cause above"


def _discard(tmp: str) -> str:
    """Remove a temporary file or directory; '' when done (or nothing was there), else why not.

    A failure here (the file system went read-only) must not replace the error that made us clean up.
    """
    try:
        _remove(tmp)
    except OSError as error:
        logger.error("Could not remove the temporary %s: %s.", tmp, error.strerror or error)
        return f" The temporary file {tmp} could not be removed ({error.strerror or error}); delete it."
    return ""


def _atomic_write(path: str, write: Any, what: str = "checkpoint", staged: bool = False) -> None:
    """``write(tmp)``, flush it to disk, then move it over ``path``: readers see the old or the new file.

    ``staged`` writes into a private directory ``<path>.tmp<pid>/`` instead of a temporary file ``<path>.tmp<pid>``,
    for writers that make temporary files of their own beside their target; either is removed by the next
    writer if a crash leaves it behind.

    Raises:
        OSError: Of the original kind and errno, with a message naming ``path``, saying that the previous
            files are unchanged and what to do (the temporary file is removed; if even that fails, the
            message says so and the original error still wins).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    target = os.path.join(tmp, os.path.basename(path)) if staged else tmp
    try:
        _remove(tmp)  # left by an earlier process with the same pid (containers reuse them)
        if staged:
            os.mkdir(tmp)
        write(target)
        if staged:
            os.chmod(target, stat.S_IMODE(os.stat(tmp).st_mode) & 0o666)  # the umask's choice, as open() makes
        _fsync_file(target)
        os.replace(target, path)
    except BaseException as error:
        leftover = _discard(tmp)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            message = (
                f"Could not write the {what} {path}: {reason}. The previous checkpoints and the index are "
                f"unchanged; {_advice(error.errno, path)}, then train again (training resumes from the latest "
                f"checkpoint).{leftover}"
            )
            raise (type(error)(error.errno, message) if error.errno is not None else OSError(message)) from error
        raise
    if staged:
        _discard(tmp)
    fsync_dir(os.path.dirname(path))


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
            view = _raw_bytes(tensors[key])
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


# The content hash: SHA-256 over the metadata (all but the hash itself) and, per tensor in key order, its
# name, dtype, shape and a digest of each 4 MiB chunk of its bytes: XXH3-128 (``xxh3-tree``, the default
# where the ``xxhash`` package is installed), else CRC-32 (``crc32-tree``); SHA-256 (``sha256-tree``) is read.
# All three catch truncation, zeroing and bit rot alike, and none resists a forger, who can rewrite any
# unkeyed hash stored beside the data; they differ in speed (benchmarks/checkpoint_hash.py: per 100 MB,
# about 25-37 ms for CRC-32, 60-110 ms for SHA-256, 4-13 ms for XXH3 on one core). Chunks of large
# checkpoints are hashed by a thread pool (the digests release the GIL), before the file is written: hashing
# while safetensors writes was tried and cost more on a 2-core machine. Loading accepts every kind.
CONTENT_HASH_KEY = "content_hash"
_CHUNK_DIGESTS: dict[str, Any] = {
    "crc32-tree": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "sha256-tree": lambda data: hashlib.sha256(data).digest(),
}
try:
    import xxhash  # type: ignore[import-not-found, unused-ignore]

    _CHUNK_DIGESTS["xxh3-tree"] = lambda data: xxhash.xxh3_128_digest(data)
except ImportError:  # optional: only needed to write, or check, xxh3-tree hashes
    pass
# What new checkpoints get: XXH3 where xxhash is installed (it keeps the hash under 10% of a save), else CRC-32.
_HASH_ALGORITHM = "xxh3-tree" if "xxh3-tree" in _CHUNK_DIGESTS else "crc32-tree"
_HASH_CHUNK = 4 << 20
_PARALLEL_HASH_BYTES = 16 << 20  # below this, threads cost more than they save
_MIN_HASH_THREADS = 4  # on 2 (virtual) cores, two hashing threads were slower than one


def _raw_bytes(tensor: torch.Tensor) -> Any:
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().data


def _content_hash(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], algorithm: str | None = None) -> str:
    """The content hash of a checkpoint's tensors and metadata (chunks on a thread pool when large)."""
    algorithm = algorithm or _HASH_ALGORITHM
    keys = sorted(tensors)
    views = {key: _raw_bytes(tensors[key]) for key in keys}
    chunks = [(key, view[at:at + _HASH_CHUNK]) for key in keys for view in [views[key]]
              for at in range(0, len(view), _HASH_CHUNK)]
    workers = min(8, os.cpu_count() or 1)
    if sum(len(view) for view in views.values()) >= _PARALLEL_HASH_BYTES and workers >= _MIN_HASH_THREADS:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="checkpoint-hash") as pool:
            digests = list(pool.map(_CHUNK_DIGESTS[algorithm], [c for _, c in chunks]))
    else:
        digests = [_CHUNK_DIGESTS[algorithm](c) for _, c in chunks]
    by_key: dict[str, list[bytes]] = {key: [] for key in keys}
    for (key, _), digest in zip(chunks, digests):
        by_key[key].append(digest)
    total = hashlib.sha256()
    for name in sorted(metadata):
        if name != CONTENT_HASH_KEY:
            total.update(json.dumps(["meta", name, metadata[name]]).encode() + b"\n")
    for key in keys:
        tensor = tensors[key]
        total.update(json.dumps(["tensor", key, str(tensor.dtype), list(tensor.shape), len(views[key])]).encode() + b"\n")
        total.update(b"".join(by_key[key]))
    return f"{algorithm}:{total.hexdigest()}"


def write_checkpoint(
    path: str,
    global_step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Stateful | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    input_state: Mapping[str, Any] | None = None,
    content_hash: bool = True,
) -> None:
    """Write one checkpoint file atomically and durably (temporary file, ``fsync``, ``os.replace``).

    Args:
        content_hash: Store the content hash that every load checks. False only for benchmarks: such a
            file loads without verification.

    Raises:
        OSError: If the file cannot be written (full disk, read-only directory): the message names the
            path; the previous files are untouched.
        TypeError: If some state cannot be represented without pickle.
    """
    _check_step(global_step)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    state: dict[str, Any] = {}
    parts = {
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None and grad_scaler.is_enabled() else None,
        "rng": _rng_state(),
        "input": dict(input_state) if input_state is not None else None,
    }
    for name, part in parts.items():
        if part is not None:
            state[name] = _encode(part, name, tensors)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "global_step": str(int(global_step)),
        "state": json.dumps(state),
        "torch_version": torch.__version__,
    }
    host = _unshared_on_cpu(tensors)
    if content_hash:
        metadata[CONTENT_HASH_KEY] = _content_hash(host, metadata)
    _atomic_write(path, lambda tmp: save_file(host, tmp, metadata=metadata))


def _verify(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    stored = metadata.get(CONTENT_HASH_KEY)
    if stored is None:  # written before content hashes, or with content_hash=False
        return
    algorithm = stored.partition(":")[0]
    if algorithm == "xxh3-tree" and algorithm not in _CHUNK_DIGESTS:  # a good file: never a reason to fall back
        logger.warning("Checkpoint %s has an xxh3-tree content hash, which needs the `xxhash` package to be checked "
                       "(pip install xxhash); loading it unchecked.", path)
        return
    if algorithm not in _CHUNK_DIGESTS:
        raise CheckpointCorruptError(path, f"Checkpoint {path} has a content hash of unknown kind {stored[:40]!r}: "
                                           f"it was written by a newer version, or altered.")
    actual = _content_hash(tensors, metadata, algorithm)
    if actual != stored:
        at = len(algorithm) + 1
        raise CheckpointCorruptError(
            path,
            f"Checkpoint {path} is damaged: its content hash does not match (stored {stored[at:at + 16]}…, "
            f"computed {actual[at:at + 16]}…). It was altered or partly overwritten after it was written; "
            f"use an older checkpoint.",
        )


_MAX_STEP = 2**63 - 1
_KNOWN_METADATA = frozenset({"format", "global_step", "state", "torch_version", CONTENT_HASH_KEY})


def _check_step(global_step: Any) -> int:
    try:
        step = operator.index(global_step) if not isinstance(global_step, bool) else None
    except TypeError:
        step = None
    if step is None or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"A checkpoint's global step must be an int from 0 to 2**63 - 1; received {global_step!r}.")
    return int(step)


def _open_regular(path: str) -> int:
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
    fd = _open_regular(path)
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
        if CONTENT_HASH_KEY not in metadata:
            unknown = sorted(set(metadata) - _KNOWN_METADATA)
            if unknown:
                raise CheckpointCorruptError(
                    path, f"Checkpoint {path} is damaged: it has no content hash but unknown metadata keys {unknown} "
                          f"(a damaged content_hash key?); use an older checkpoint.")
            logger.warning("Checkpoint %s has no content hash (written with content_hash=False); loading it unchecked.", path)
        _verify(path, tensors, metadata)
    try:
        state = _decode(json.loads(metadata["state"]), tensors)
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


def _load_model(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(tensors)
        if tensors[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"Checkpoint {path} does not match the model: missing keys {missing}, unexpected keys "
            f"{unexpected}, mis-shaped {mis_shaped}. Was it written by a different model?"
        )
    _warn_about_casts(tensors, own, path)
    model.load_state_dict(tensors)


def _warn_about_casts(tensors: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: str) -> None:
    """Warn when floating-point tensors are loaded into a model of another floating-point dtype (load_state_dict
    casts silently: float64 loses precision, float16 range)."""
    cast = sorted(f"{k} ({str(tensors[k].dtype).replace('torch.', '')} -> {str(own[k].dtype).replace('torch.', '')})"
                  for k in tensors if k in own and tensors[k].dtype != own[k].dtype
                  and tensors[k].is_floating_point() and own[k].is_floating_point())
    if cast:
        logger.warning("Checkpoint %s holds tensors of another dtype than the model's; they are cast: %s%s.",
                       path, ", ".join(cast[:8]), " …" if len(cast) > 8 else "")


def _apply(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Stateful | None,
    grad_scaler: torch.amp.GradScaler | None,
) -> Checkpoint:
    state = checkpoint.state
    if optimizer is not None and "optimizer" in state:
        _check_optimizer(optimizer, state["optimizer"], checkpoint.path)
    _load_model(model, checkpoint.model, checkpoint.path)
    if optimizer is not None:
        if "optimizer" in state:
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (KeyError, ValueError, TypeError, RuntimeError) as error:
                raise ValueError(_optimizer_mismatch(optimizer, checkpoint.path, f"loading its state failed: {error!r}")) from error
        else:
            logger.warning("Checkpoint %s has no optimizer state; the optimizer starts fresh.", checkpoint.path)
    if lr_scheduler is not None and "lr_scheduler" in state:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if grad_scaler is not None and state.get("grad_scaler"):
        grad_scaler.load_state_dict(state["grad_scaler"])
    return checkpoint


def _optimizer_mismatch(optimizer: torch.optim.Optimizer, path: str, detail: str) -> str:
    return (
        f"Checkpoint {path} holds the state of a different optimizer than this Estimator's "
        f"{type(optimizer).__name__} ({detail}). To continue this model_dir, use the optimizer it was trained "
        f"with; to switch optimizers, train into a new model_dir with warm_start_from=<this model_dir> (the "
        f"weights only). evaluate and predict need only the weights and work as they are."
    )


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: Any, path: str) -> None:
    """Refuse optimizer state written by another kind of optimizer, before anything is loaded: torch would
    load it and fail later (``KeyError: 'step'``) or run with the other optimizer's settings."""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    ours = optimizer.state_dict().get("param_groups")
    if not isinstance(groups, list) or not isinstance(ours, list):  # an optimizer with a state of its own kind
        return
    if len(groups) != len(ours):
        raise ValueError(_optimizer_mismatch(optimizer, path, f"{len(groups)} parameter groups saved, {len(ours)} expected"))
    for index, (group, theirs) in enumerate(zip(ours, groups)):
        expected = set(group) - {"params"}
        found = set(theirs) - {"params"} if isinstance(theirs, Mapping) else set()
        if expected - found:  # extra saved settings may be a scheduler's (initial_lr); missing ones never fit
            raise ValueError(_optimizer_mismatch(
                optimizer, path, f"parameter group {index} lacks its settings {sorted(expected - found)} and has "
                                 f"{sorted(found - expected)}"))


def restore_checkpoint(
    path: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Stateful | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> Checkpoint:
    """Load a checkpoint into the given objects (RNG and input state are returned, not applied).

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointCorruptError: If the file is damaged (a ``ValueError``; nothing is loaded).
        ValueError: If the checkpoint does not match the model (nothing is loaded).
    """
    return _apply(read_checkpoint(path), model, optimizer, lr_scheduler, grad_scaler)


def apply_rng_state(checkpoint: Checkpoint) -> None:
    """Restore the python, numpy, torch and CUDA RNG states saved in ``checkpoint``."""
    if "rng" in checkpoint.state:
        _set_rng_state(checkpoint.state["rng"])


# ----------------------------------------------------------------------------------------------------------
# The index and rotation.


@dataclasses.dataclass(frozen=True)
class CheckpointIndex:
    """The ``checkpoint`` index: kept checkpoints (absolute paths), oldest first, with their save times.

    ``kept_forever`` lists the checkpoints ``keep_checkpoint_every_n_hours`` took out of rotation; None when
    unknown (no index, one rebuilt from the files, or one written by an older version).
    """

    paths: tuple[str, ...]
    timestamps: tuple[float, ...]
    kept_forever: tuple[str, ...] | None = None

    @property
    def latest(self) -> str | None:
        return self.paths[-1] if self.paths else None


def _files(model_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint file in ``model_dir``, by step."""
    try:
        names = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((int(m.group(1)), os.path.join(model_dir, name)) for name in names for m in [_FILE_RE.match(name)] if m)


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return None


def _scan(model_dir: str) -> CheckpointIndex:
    found = [(p, t) for _, p in _files(model_dir) for t in [_mtime(p)] if t is not None]
    return CheckpointIndex(tuple(p for p, _ in found), tuple(t for _, t in found))


def _index_names(data: Any, key: str) -> list[str]:
    names = data[key]
    if not isinstance(names, list) or not all(isinstance(n, str) and _FILE_RE.match(n) for n in names):
        # Only bare checkpoint file names: an index must not point readers, or rotation's deletes, elsewhere.
        raise ValueError(f"{key!r} must list checkpoint file names (model.ckpt-<step>.safetensors)")
    return names


_MAX_INDEX_BYTES = 4 << 20  # an index lists a few file names: 4 MiB is thousands of checkpoints


def _read_small(path: str, limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (never blocks on a FIFO, never reads a device).

    Raises:
        FileNotFoundError: If it does not exist.
        ValueError: If it is not a regular file, or is larger than ``limit``.
    """
    try:
        fd = _open_regular(path)
    except CheckpointCorruptError as error:
        raise ValueError("it is " + ("a directory" if "is a directory" in str(error) else "not a regular file")) from None
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"it is larger than {limit} bytes")
    return b"".join(chunks)


def read_index(model_dir: str) -> CheckpointIndex:
    """Read ``model_dir/checkpoint``; rebuilt from the files present if it is missing or unreadable.

    Entries whose file is gone are dropped. Checkpoint files newer than the index's latest (a crash between
    writing a checkpoint and the index) are added: a file under its final name is always complete.
    """
    index_path = os.path.join(model_dir, INDEX_NAME)
    try:
        data = json.loads(_read_small(index_path, _MAX_INDEX_BYTES).decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = _index_names(data, "all_model_checkpoint_paths")
        stamps = [float(t) for t in data["all_model_checkpoint_timestamps"]]
        if len(names) != len(stamps):
            raise ValueError("paths and timestamps differ in length")
        forever = _index_names(data, "kept_forever_paths") if "kept_forever_paths" in data else None
    except FileNotFoundError:
        return _scan(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError too
        logger.warning("Checkpoint index %s is unreadable (%s); rebuilding it from the files present.", index_path, error)
        return _scan(model_dir)
    kept = [(os.path.join(model_dir, n), t) for n, t in zip(names, stamps)]
    kept = [(p, t) for p, t in kept if os.path.exists(p)]
    newest = max((s for p, _ in kept if (s := step_of(p)) is not None), default=-1)
    listed = {p for p, _ in kept}
    for step, path in _files(model_dir):
        stamp = _mtime(path)
        if step > newest and path not in listed and stamp is not None:
            logger.info("Checkpoint %s is not in the index (a save was interrupted); adding it.", path)
            kept.append((path, stamp))
    if forever is not None:
        forever = [os.path.join(model_dir, n) for n in forever]
        forever = [p for p in forever if os.path.exists(p)]
    return CheckpointIndex(
        tuple(p for p, _ in kept), tuple(t for _, t in kept), None if forever is None else tuple(forever)
    )


def _write_index(model_dir: str, index: CheckpointIndex) -> None:
    data = {
        "format": INDEX_FORMAT,
        "model_checkpoint_path": os.path.basename(index.latest) if index.latest else None,
        "all_model_checkpoint_paths": [os.path.basename(p) for p in index.paths],
        "all_model_checkpoint_timestamps": list(index.timestamps),
        "kept_forever_paths": [os.path.basename(p) for p in index.kept_forever or ()],
    }

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)

    _atomic_write(os.path.join(model_dir, INDEX_NAME), write, what="checkpoint index")


def latest_checkpoint(model_dir: str | None) -> str | None:
    """The path of the newest checkpoint in ``model_dir``, or None (cheap: the file is not read).

    See :func:`restore_latest` and :func:`latest_intact_checkpoint` for one whose content is checked.
    """
    if not model_dir or not os.path.isdir(model_dir):
        return None
    return read_index(model_dir).latest


def _candidates(model_dir: str) -> list[str]:
    """Checkpoints to try, newest first: the index's, then any other file (kept forever, left over) by step."""
    listed = list(reversed(read_index(model_dir).paths))
    known = set(listed)
    return listed + [p for _, p in reversed(_files(model_dir)) if p not in known]


def read_latest_checkpoint(model_dir: str | None, *, verify: bool = True) -> Checkpoint | None:
    """Read the newest intact checkpoint in ``model_dir``, or None if it holds no checkpoint.

    A damaged checkpoint is skipped with a warning that names it; one that disappears while it is being
    opened (a trainer rotating it away) is skipped too, and the list is read again if all are gone.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged (the message lists them).
    """
    if not model_dir or not os.path.isdir(model_dir):
        return None
    damaged: list[str] = []
    for _ in range(5):  # re-list while a concurrent trainer rotates away what was listed
        damaged, vanished = [], False
        for path in _candidates(model_dir):
            try:
                checkpoint = read_checkpoint(path, verify=verify)
            except FileNotFoundError:
                logger.info("Checkpoint %s disappeared while being read (rotated away); trying the next newest.", path)
                vanished = True
                continue
            except CheckpointCorruptError as error:
                logger.warning("%s Falling back to the next newest checkpoint.", error)
                damaged.append(path)
                continue
            if damaged:
                logger.warning("Using checkpoint %s: the newer %s are damaged.", path, [os.path.basename(p) for p in damaged])
            return checkpoint
        if not vanished:
            break
    if damaged:
        raise CheckpointCorruptError(
            damaged[0],
            f"Every checkpoint in {model_dir} is damaged: {[os.path.basename(p) for p in damaged]}. Move them "
            f"away to start afresh, or restore them from a backup.",
        )
    return None


def latest_intact_checkpoint(model_dir: str | None) -> str | None:
    """The path of the newest checkpoint in ``model_dir`` whose content hash checks out, or None.

    Reads each candidate completely; prefer :func:`restore_latest` when the content is needed anyway.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged.
    """
    checkpoint = read_latest_checkpoint(model_dir)
    return None if checkpoint is None else checkpoint.path


def restore_latest(
    model_dir: str | None,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Stateful | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> Checkpoint | None:
    """Load the newest intact checkpoint of ``model_dir`` into the given objects; None if there is none.

    Falls back past damaged checkpoints (with a warning naming each) and past ones rotated away while being
    read, as :func:`read_latest_checkpoint`. RNG and input state are returned, not applied.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged.
        ValueError: If the checkpoint does not match the model (nothing is loaded; no fallback).
    """
    checkpoint = read_latest_checkpoint(model_dir)
    if checkpoint is None:
        return None
    return _apply(checkpoint, model, optimizer, lr_scheduler, grad_scaler)


def check_model_dir(model_dir: str) -> str:
    """Check that ``model_dir`` is, or can become, a directory: not a file, not inside a file.

    Writability is checked only when writing (see :class:`CheckpointManager`): reading a read-only
    ``model_dir`` (evaluate, predict, export) is fine.

    Returns:
        ``model_dir``.

    Raises:
        ValueError: If ``model_dir`` or one of its parents exists and is not a directory.
    """
    path = os.path.abspath(model_dir)
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(
            f"`model_dir` {model_dir} is a symbolic link to {os.readlink(path)}, which does not exist; create the "
            f"target directory or give another model_dir."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`model_dir` {model_dir} exists and is not a directory; give a directory path.")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise ValueError(f"`model_dir` {model_dir} cannot be created: {parent} is a file, not a directory.")
    return model_dir


def make_writable_model_dir(model_dir: str) -> str:
    """Create ``model_dir`` if needed and check that files can be written there.

    Returns:
        ``model_dir``.

    Raises:
        ValueError: If ``model_dir`` or one of its parents is a file.
        PermissionError: If ``model_dir`` is not writable.
        OSError: If it cannot be created.
    """
    check_model_dir(model_dir)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise type(error)(error.errno, f"Could not create `model_dir` {model_dir}: {error.strerror}.") from error
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"`model_dir` {model_dir} is not writable; checkpoints cannot be saved there.")
    return model_dir


_TEMP_RE = re.compile(r"^(model\.ckpt-\d+\.safetensors|" + re.escape(INDEX_NAME) + r")\.tmp\d+$")


class CheckpointManager:
    """Saves checkpoints into one ``model_dir`` and rotates them as TF's Saver did.

    ``keep_checkpoint_max`` newest checkpoints are kept (0 or None keeps all); one checkpoint per
    ``keep_checkpoint_every_n_hours`` is kept forever and leaves rotation (the index lists it under
    ``kept_forever_paths``). Rotation state is recovered from the index, so it continues across restarts.
    When the manager is created (one writer per ``model_dir``), what a crashed save left behind is cleaned
    up: temporary files, and a checkpoint that rotation had dropped from the index but not yet deleted.

    Raises:
        ValueError: If ``model_dir`` is a file (or inside one).
        PermissionError: If ``model_dir`` is not writable.
    """

    def __init__(self, model_dir: str, keep_checkpoint_max: int | None = 5,
                 keep_checkpoint_every_n_hours: float | None = 10000.0) -> None:
        self.model_dir = check_model_dir(model_dir)
        self._max = keep_checkpoint_max or 0
        hours = math.inf if keep_checkpoint_every_n_hours is None else keep_checkpoint_every_n_hours  # None: never
        self._every_secs = hours * 3600.0
        self._next_keep_time = time.time() + self._every_secs
        make_writable_model_dir(model_dir)
        for name in os.listdir(model_dir):
            if _TEMP_RE.match(name):  # a file, or a staging directory (see _atomic_write)
                logger.info("Removing %s, left over by an interrupted save.", name)
                _remove(os.path.join(model_dir, name))
        index = read_index(model_dir)
        self._kept: list[tuple[str, float]] = list(zip(index.paths, index.timestamps))
        self._forever: list[str] = list(index.kept_forever or ())
        if index.kept_forever is not None and self._kept:
            oldest = min(s for p, _ in self._kept if (s := step_of(p)) is not None)
            known = {p for p, _ in self._kept} | set(self._forever)
            for step, path in _files(model_dir):
                if step < oldest and path not in known:
                    logger.info("Removing %s: rotation dropped it before a save was interrupted.", path)
                    _remove(path)

    def save(
        self,
        global_step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Stateful | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        input_state: Mapping[str, Any] | None = None,
    ) -> str:
        """Write ``model.ckpt-<global_step>.safetensors``, then the index, then delete what rotation drops.

        Returns:
            The checkpoint's path.

        Raises:
            OSError: If the disk is full or the directory read-only: the message names the path, and the
                previous checkpoints and the index are unchanged (a new checkpoint file is removed again
                when the index cannot be written).
        """
        path = checkpoint_path_for_step(self.model_dir, global_step)
        existed = os.path.exists(path)
        write_checkpoint(
            path, global_step, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
            grad_scaler=grad_scaler, input_state=input_state,
        )
        kept = [(p, t) for p, t in self._kept if p != path] + [(path, time.time())]
        forever, next_keep_time, dropped = list(self._forever), self._next_keep_time, []
        while self._max and len(kept) > self._max:
            old, stamp = kept.pop(0)
            if stamp > next_keep_time:
                next_keep_time += self._every_secs  # kept forever, no longer rotated
                forever.append(old)
            else:
                dropped.append(old)
        try:
            _write_index(self.model_dir, CheckpointIndex(tuple(p for p, _ in kept), tuple(t for _, t in kept), tuple(forever)))
        except BaseException as error:
            if not existed:  # leave the directory as it was before this save
                leftover = _discard(path)
                if leftover and isinstance(error, OSError):  # the original error wins, and says what is left
                    raise type(error)(error.errno, f"{error.strerror}{leftover}") from error
            raise
        self._kept, self._forever, self._next_keep_time = kept, forever, next_keep_time
        for old in dropped:
            _remove(old)
        return path


def _remove(path: str) -> None:
    """Remove a file or a directory tree; nothing if it is not there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------------------------------------
# Warm start.


@dataclasses.dataclass(frozen=True)
class WarmStartSettings:
    """Which model tensors to initialise from which checkpoint (applied only to a fresh ``model_dir``).

    Args:
        ckpt_to_initialize_from: A checkpoint file, or a directory whose latest checkpoint is used.
        vars_to_warm_start: A regex (or list of regexes) matched in full against the model's
            ``state_dict()`` names; ``".*"`` takes everything.
        var_name_to_prev_var_name: Names in the model mapped to different names in the checkpoint.

    Raises:
        ValueError: If the path is empty or a regex is invalid.
    """

    ckpt_to_initialize_from: str
    vars_to_warm_start: str | Sequence[str] = ".*"
    var_name_to_prev_var_name: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        path = os.fspath(self.ckpt_to_initialize_from) if self.ckpt_to_initialize_from is not None else ""
        if not path:
            raise ValueError("WarmStartSettings `ckpt_to_initialize_from` must be a non-empty path.")
        object.__setattr__(self, "ckpt_to_initialize_from", path)
        patterns = [self.vars_to_warm_start] if isinstance(self.vars_to_warm_start, str) else list(self.vars_to_warm_start)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ValueError(f"WarmStartSettings `vars_to_warm_start` has an invalid regex {pattern!r}: {error}.") from error

    def resolve_path(self) -> str:
        """The checkpoint file to read.

        Raises:
            ValueError: If the path does not exist or a directory holds no checkpoint.
        """
        path = self.ckpt_to_initialize_from
        if os.path.isdir(path):
            latest = latest_checkpoint(path)
            if latest is None:
                raise ValueError(f"warm_start_from: directory {path} holds no checkpoint.")
            return latest
        if not os.path.exists(path):
            raise ValueError(f"warm_start_from: {path} does not exist; give a checkpoint file or a model_dir.")
        return path


def warm_start(model: torch.nn.Module, settings: WarmStartSettings) -> list[str]:
    """Copy the selected tensors from ``settings``' checkpoint into ``model``.

    A TensorFlow ``model_dir`` or checkpoint prefix is read and mapped by :mod:`.tf_convert`.

    Returns:
        The names that were initialised.

    Raises:
        ValueError: If nothing matches, a selected name is missing from the checkpoint, or shapes differ.
    """
    from . import tf_checkpoint, tf_convert

    if tf_checkpoint.is_tf_checkpoint(settings.ckpt_to_initialize_from):  # a TensorFlow model_dir or prefix
        return tf_convert.warm_start_from_tf(model, settings)
    if os.path.isdir(settings.ckpt_to_initialize_from):  # its newest intact checkpoint, past damaged ones
        checkpoint = read_latest_checkpoint(settings.ckpt_to_initialize_from)
        if checkpoint is None:
            raise ValueError(f"warm_start_from: directory {settings.ckpt_to_initialize_from} holds no checkpoint.")
        path = checkpoint.path
    else:
        path = settings.resolve_path()
        checkpoint = read_checkpoint(path)
    patterns = [settings.vars_to_warm_start] if isinstance(settings.vars_to_warm_start, str) else list(settings.vars_to_warm_start)
    own = model.state_dict()
    selected = [name for name in own if any(re.fullmatch(p, name) for p in patterns)]
    if not selected:
        raise ValueError(f"warm_start_from: no model tensor matches {patterns}; model tensors are {sorted(own)}.")
    values, problems = {}, []
    for name in selected:
        source = settings.var_name_to_prev_var_name.get(name, name)
        if source not in checkpoint.model:
            problems.append(f"{name} (as {source!r}) is not in the checkpoint")
        elif checkpoint.model[source].shape != own[name].shape:
            problems.append(f"{name}: checkpoint {tuple(checkpoint.model[source].shape)} vs model {tuple(own[name].shape)}")
        else:
            values[name] = checkpoint.model[source]
    if problems:
        raise ValueError(f"warm_start_from {path}: " + "; ".join(problems) + ".")
    _warn_about_casts(values, own, path)
    model.load_state_dict(values, strict=False)
    logger.info("Warm-started %d tensors from %s.", len(values), path)
    return selected


# ----------------------------------------------------------------------------------------------------------
# When to save during one ``train`` call.


class CheckpointSaver:
    """Saves at TF's moments: at the start of training, every N steps or seconds, and at the end.

    The start save is skipped when ``already_saved`` (the step is already on disk, unchanged); listeners
    are told about it all the same. ``save`` and ``begin`` return True when a listener asked to stop.

    Args:
        save_fn: ``save_fn(global_step) -> path`` writes one checkpoint.
        every_steps: Save when the global step has advanced this much since the last save.
        every_secs: Save when this many seconds have passed since the last save.
        listeners: Objects with ``begin``, ``before_save``, ``after_save`` and ``end``.
    """

    def __init__(
        self,
        save_fn: Any,
        every_steps: int | None = None,
        every_secs: float | None = None,
        listeners: Sequence[SaverListenerLike] = (),
    ) -> None:
        self._save_fn, self._every_steps, self._every_secs = save_fn, every_steps, every_secs
        self._listeners = list(listeners)
        self._last_step = -1
        self._last_time = 0.0

    def begin(self, global_step: int, already_saved: bool) -> bool:
        for listener in self._listeners:
            listener.begin()
        if already_saved:
            self._last_step, self._last_time = global_step, time.monotonic()
            return self._notify(global_step, wrote=False)
        return self.save(global_step)

    def next_save(self) -> tuple[float, float]:
        """When ``should_save`` next turns true: ``(global step, time.monotonic() deadline)``, the other one
        infinite; lets a loop check one number per step instead of calling ``should_save``."""
        if self._every_steps is not None:
            return self._last_step + self._every_steps, math.inf
        return math.inf, self._last_time + self._every_secs  # type: ignore[operator]

    def should_save(self, global_step: int) -> bool:
        if self._every_steps is not None:
            return global_step >= self._last_step + self._every_steps
        return time.monotonic() >= self._last_time + self._every_secs  # type: ignore[operator]

    def save(self, global_step: int) -> bool:
        for listener in self._listeners:
            listener.before_save(global_step)
        path = self._save_fn(global_step)
        logger.info("Saving checkpoints for %d into %s.", global_step, path)
        self._last_step, self._last_time = global_step, time.monotonic()
        return self._notify(global_step, wrote=True)

    def _notify(self, global_step: int, wrote: bool) -> bool:
        stop = False
        for listener in self._listeners:
            if not wrote:
                listener.before_save(global_step)
            if listener.after_save(global_step):
                stop = True
        return stop

    def end(self, global_step: int, save: bool = True) -> None:
        """Save the final step unless it is saved already (or ``save`` is False), then end the listeners."""
        if save and global_step != self._last_step:
            self.save(global_step)
        for listener in self._listeners:
            listener.end(global_step)
