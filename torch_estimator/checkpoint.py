"""Checkpoints: one safetensors file per save, a JSON index, TF's rotation, restore and warm start.

File ``model.ckpt-<step>.safetensors`` holds every tensor under a prefixed key (``model/…``,
``optimizer/…``, ``lr_scheduler/…``, ``grad_scaler/…``, ``rng/…``, ``input/…``); everything else (global
step, param groups, python and numpy RNG states, the format version) is JSON in the safetensors metadata.
Loading never unpickles. Both the file and the ``checkpoint`` index are written to a temporary file and
moved into place with ``os.replace``, so a crash leaves the previous state intact.

Example:
    >>> import tempfile, torch
    >>> model_dir = tempfile.mkdtemp()
    >>> manager = CheckpointManager(model_dir, keep_checkpoint_max=2)
    >>> for step in (10, 20, 30):
    ...     _ = manager.save(step, model=torch.nn.Linear(2, 1))
    >>> [os.path.basename(p) for p in read_index(model_dir).paths]
    ['model.ckpt-20.safetensors', 'model.ckpt-30.safetensors']
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointManager",
    "CheckpointSaver",
    "CheckpointIndex",
    "WarmStartSettings",
    "checkpoint_path_for_step",
    "latest_checkpoint",
    "list_variables",
    "read_index",
    "read_checkpoint",
    "restore_checkpoint",
    "warm_start",
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
    np.random.set_state(tuple(state["numpy"]))  # type: ignore[arg-type]
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------------------
# One checkpoint file.


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk: its path, global step, model tensors and the rest of its state."""

    path: str
    global_step: int
    model: dict[str, torch.Tensor]
    state: dict[str, Any]


def checkpoint_path_for_step(model_dir: str, step: int) -> str:
    """``<model_dir>/model.ckpt-<step>.safetensors``."""
    return os.path.join(model_dir, f"model.ckpt-{step}.safetensors")


def _step_of(path: str) -> int | None:
    match = _FILE_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def _atomic_write(path: str, write: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def write_checkpoint(
    path: str,
    global_step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    grad_scaler: Any = None,
    input_state: Mapping[str, Any] | None = None,
) -> None:
    """Write one checkpoint file atomically.

    Raises:
        OSError: If the file cannot be written (the previous files are untouched).
        TypeError: If some state cannot be represented without pickle.
    """
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
    host = _to_host(tensors)
    _atomic_write(path, lambda tmp: save_file(host, tmp, metadata=metadata))


def read_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint file written by :func:`write_checkpoint` (tensors on the CPU).

    Raises:
        ValueError: If the file is not a torch_estimator checkpoint or is damaged.
    """
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise ValueError(f"Checkpoint {path} could not be read: {error}") from error
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a torch_estimator checkpoint (format {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})."
        )
    state = _decode(json.loads(metadata["state"]), tensors)
    model = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    return Checkpoint(path=path, global_step=int(metadata["global_step"]), model=model, state=state)


def list_variables(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in a checkpoint file, plus ``global_step``, without loading data."""
    with safe_open(path, framework="pt", device="cpu") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
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
    model.load_state_dict(tensors)


def restore_checkpoint(
    path: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    grad_scaler: Any = None,
) -> Checkpoint:
    """Load a checkpoint into the given objects (RNG and input state are returned, not applied).

    Raises:
        ValueError: If the checkpoint is unreadable or does not match the model.
    """
    checkpoint = read_checkpoint(path)
    _load_model(model, checkpoint.model, path)
    state = checkpoint.state
    if optimizer is not None:
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:
            logger.warning("Checkpoint %s has no optimizer state; the optimizer starts fresh.", path)
    if lr_scheduler is not None and "lr_scheduler" in state:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if grad_scaler is not None and state.get("grad_scaler"):
        grad_scaler.load_state_dict(state["grad_scaler"])
    return checkpoint


def apply_rng_state(checkpoint: Checkpoint) -> None:
    """Restore the python, numpy, torch and CUDA RNG states saved in ``checkpoint``."""
    if "rng" in checkpoint.state:
        _set_rng_state(checkpoint.state["rng"])


# ----------------------------------------------------------------------------------------------------------
# The index and rotation.


@dataclasses.dataclass(frozen=True)
class CheckpointIndex:
    """The ``checkpoint`` index: kept checkpoints (absolute paths), oldest first, with their save times."""

    paths: tuple[str, ...]
    timestamps: tuple[float, ...]

    @property
    def latest(self) -> str | None:
        return self.paths[-1] if self.paths else None


def _scan(model_dir: str) -> CheckpointIndex:
    found = []
    for path in glob.glob(os.path.join(glob.escape(model_dir), "model.ckpt-*.safetensors")):
        step = _step_of(path)
        if step is not None:
            found.append((step, path, os.path.getmtime(path)))
    found.sort()
    return CheckpointIndex(tuple(p for _, p, _ in found), tuple(t for _, _, t in found))


def read_index(model_dir: str) -> CheckpointIndex:
    """Read ``model_dir/checkpoint``; rebuilt from the files present if it is missing or unreadable.

    Entries whose file is gone are dropped.
    """
    index_path = os.path.join(model_dir, INDEX_NAME)
    try:
        with open(index_path, encoding="utf-8") as handle:
            data = json.load(handle)
        paths = [os.path.join(model_dir, p) for p in data["all_model_checkpoint_paths"]]
        stamps = [float(t) for t in data["all_model_checkpoint_timestamps"]]
        if len(paths) != len(stamps):
            raise ValueError("paths and timestamps differ in length")
    except FileNotFoundError:
        return _scan(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Checkpoint index %s is unreadable (%s); rebuilding it from the files present.", index_path, error)
        return _scan(model_dir)
    kept = [(p, t) for p, t in zip(paths, stamps) if os.path.exists(p)]
    return CheckpointIndex(tuple(p for p, _ in kept), tuple(t for _, t in kept))


def _write_index(model_dir: str, index: CheckpointIndex) -> None:
    data = {
        "format": INDEX_FORMAT,
        "model_checkpoint_path": os.path.basename(index.latest) if index.latest else None,
        "all_model_checkpoint_paths": [os.path.basename(p) for p in index.paths],
        "all_model_checkpoint_timestamps": list(index.timestamps),
    }

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(os.path.join(model_dir, INDEX_NAME), write)


def latest_checkpoint(model_dir: str | None) -> str | None:
    """The path of the newest checkpoint in ``model_dir``, or None."""
    if not model_dir or not os.path.isdir(model_dir):
        return None
    return read_index(model_dir).latest


class CheckpointManager:
    """Saves checkpoints into one ``model_dir`` and rotates them as TF's Saver did.

    ``keep_checkpoint_max`` newest checkpoints are kept (0 or None keeps all); one checkpoint per
    ``keep_checkpoint_every_n_hours`` is kept forever and leaves the index. Rotation state is recovered
    from the index, so it continues across restarts. Leftover temporary files of a crashed save are
    removed when the manager is created.
    """

    def __init__(self, model_dir: str, keep_checkpoint_max: int | None = 5, keep_checkpoint_every_n_hours: float = 10000.0) -> None:
        self.model_dir = model_dir
        self._max = keep_checkpoint_max or 0
        self._every_secs = keep_checkpoint_every_n_hours * 3600.0
        self._next_keep_time = time.time() + self._every_secs
        os.makedirs(model_dir, exist_ok=True)
        for leftover in glob.glob(os.path.join(glob.escape(model_dir), "*.tmp*")):
            if os.path.basename(leftover).startswith(("model.ckpt-", INDEX_NAME)):
                os.remove(leftover)
        index = read_index(model_dir)
        self._kept: list[tuple[str, float]] = list(zip(index.paths, index.timestamps))

    def save(
        self,
        global_step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        grad_scaler: Any = None,
        input_state: Mapping[str, Any] | None = None,
    ) -> str:
        """Write ``model.ckpt-<global_step>.safetensors``, then the index, then delete what rotation drops.

        Returns:
            The checkpoint's path.
        """
        path = checkpoint_path_for_step(self.model_dir, global_step)
        write_checkpoint(
            path, global_step, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
            grad_scaler=grad_scaler, input_state=input_state,
        )
        self._kept = [(p, t) for p, t in self._kept if p != path] + [(path, time.time())]
        dropped = []
        while self._max and len(self._kept) > self._max:
            old, stamp = self._kept.pop(0)
            if stamp > self._next_keep_time:
                self._next_keep_time += self._every_secs  # kept forever, no longer tracked
            else:
                dropped.append(old)
        _write_index(self.model_dir, CheckpointIndex(tuple(p for p, _ in self._kept), tuple(t for _, t in self._kept)))
        for old in dropped:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
        return path


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

    Returns:
        The names that were initialised.

    Raises:
        ValueError: If nothing matches, a selected name is missing from the checkpoint, or shapes differ.
    """
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
        listeners: Sequence[Any] = (),
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
