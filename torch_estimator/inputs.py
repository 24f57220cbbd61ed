"""Inputs: calling ``input_fn``, checking its batches, moving them to the device, and ``numpy_input_fn``.

An ``input_fn`` may declare any of ``mode``, ``params``, ``config`` and ``input_context`` by name and returns
an iterable (list, generator, ``DataLoader``, ...) whose items are ``(features, labels)`` pairs (a tuple or a
list of two, as a ``DataLoader`` over a ``TensorDataset`` yields) or features alone. Features and labels are
a Tensor, a list/tuple of Tensors or a dict of Tensors; numpy arrays are converted.

Example:
    >>> import numpy as np
    >>> input_fn = numpy_input_fn({"x": np.arange(10.0)}, np.arange(10), batch_size=4, shuffle=False)
    >>> [labels.tolist() for _, labels in input_fn()]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch

from ._checks import describe as _describe

__all__ = ["InputContext", "numpy_input_fn", "call_input_fn", "iterate_batches", "to_device", "batch_size_of"]

_INPUT_FN_ARGS = ("mode", "params", "config", "input_context")


@dataclasses.dataclass(frozen=True)
class InputContext:
    """Which shard of the input this process reads, for ``input_fn``s that declare ``input_context``.

    Batch sizes in this library are per replica (per process), as with a ``DataLoader`` and a
    ``DistributedSampler``: the global batch is ``batch_size * num_replicas_in_sync``.

    Args:
        num_input_pipelines: How many processes read input (the world size under torchrun).
        input_pipeline_id: This process's index among them (its rank).
        num_replicas_in_sync: How many replicas train in sync (the world size).

    Example:
        >>> InputContext(2, 1, 2).get_per_replica_batch_size(100)
        50
    """

    num_input_pipelines: int = 1
    input_pipeline_id: int = 0
    num_replicas_in_sync: int = 1

    def get_per_replica_batch_size(self, global_batch_size: int) -> int:
        """``global_batch_size`` split evenly over the replicas.

        Raises:
            ValueError: If it does not divide evenly.
        """
        if global_batch_size % self.num_replicas_in_sync:
            raise ValueError(
                f"The global batch size {global_batch_size} does not divide evenly over "
                f"{self.num_replicas_in_sync} replicas."
            )
        return global_batch_size // self.num_replicas_in_sync


def call_input_fn(input_fn: Callable[..., Any], **available: Any) -> Any:
    """Call ``input_fn`` with the subset of ``mode``/``params``/``config``/``input_context`` it declares.

    Raises:
        TypeError: If ``input_fn`` is not callable.
        ValueError: If it declares a required argument the Estimator cannot provide.
    """
    if not callable(input_fn):
        raise TypeError(f"`input_fn` must be a callable returning batches; received {_describe(input_fn)}.")
    try:
        parameters = inspect.signature(input_fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: call with nothing
        return input_fn()
    kwargs = {}
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in _INPUT_FN_ARGS:
            kwargs[name] = available.get(name)
        elif parameter.default is parameter.empty:
            raise ValueError(
                f"`input_fn` has an argument {name!r} the Estimator cannot provide; it may declare only "
                f"{list(_INPUT_FN_ARGS)} (use functools.partial to bind others)."
            )
    return input_fn(**kwargs)


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS":
            raise TypeError(f"{where} must be numeric; received a numpy array of dtype {value.dtype}.")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{where} must be a Tensor or numpy array; received {_describe(value)}.")


def _convert(structure: Any, where: str) -> Any:
    """Tensor / numpy array, list or tuple of them, or dict of them -> the same shape with Tensors."""
    if isinstance(structure, (torch.Tensor, np.ndarray)):
        return _as_tensor(structure, where)
    if isinstance(structure, Mapping):
        return {key: _as_tensor(value, f"{where}[{key!r}]") for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_as_tensor(value, f"{where}[{i}]") for i, value in enumerate(structure))
    raise TypeError(
        f"{where} must be a Tensor, a list/tuple of Tensors or a dict of Tensors (numpy arrays are "
        f"converted); received {_describe(structure)}."
    )


def _leaves(structure: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(structure, torch.Tensor):
        yield name, structure
    elif isinstance(structure, Mapping):
        for key, value in structure.items():
            yield f"{name}[{key!r}]", value
    elif structure is not None:
        for i, value in enumerate(structure):
            yield f"{name}[{i}]", value


def batch_size_of(features: Any, labels: Any = None) -> int:
    """The common first dimension of every tensor in ``features`` and ``labels``.

    Raises:
        ValueError: If a tensor is 0-dimensional or the first dimensions differ (the message lists them).
    """
    if isinstance(features, torch.Tensor) and features.dim() and (
        labels is None or (isinstance(labels, torch.Tensor) and labels.dim() and labels.shape[0] == features.shape[0])
    ):
        return features.shape[0]  # the common case, without building the table below
    sizes: dict[str, int] = {}
    for name, tensor in (*_leaves(features, "features"), *_leaves(labels, "labels")):
        if tensor.dim() == 0:
            raise ValueError(f"input_fn batch: {name} is a 0-dimensional tensor; every input needs a batch dimension.")
        sizes[name] = tensor.shape[0]
    if not sizes:
        raise ValueError("input_fn batch: features are empty; yield at least one tensor.")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"input_fn batch: tensors have different batch sizes (first dimensions): {sizes}.")
    return next(iter(sizes.values()))


def iterate_batches(
    source: Any, device: torch.device | None = None, channels_last: bool = False
) -> Iterator[tuple[Any, Any, int]]:
    """Yield ``(features, labels, batch_size)`` from what ``input_fn`` returned, converted and checked, and
    placed on ``device`` when one is given (see :func:`to_device`).

    Raises:
        TypeError: If ``source`` is not iterable or an item has the wrong type.
        ValueError: If an item is a tuple of the wrong length or its batch sizes differ.
    """
    if isinstance(source, (torch.Tensor, np.ndarray, Mapping)) or not isinstance(source, Iterable):
        raise TypeError(
            f"`input_fn` must return an iterable of batches (a list, generator or DataLoader yielding "
            f"(features, labels) or features); received {_describe(source)}."
        )
    place = device is not None and (device.type != "cpu" or channels_last)
    check_cpu = device is not None and not place  # on the CPU, only tensors elsewhere move
    tensor = torch.Tensor
    for item in source:
        if item.__class__ is tuple and len(item) == 2:
            # The usual batch, a pair of host tensors, checked with a few attribute reads.
            features, labels = item
            if (features.__class__ is tensor and labels.__class__ is tensor
                    and (not check_cpu or (features.is_cpu and labels.is_cpu))):
                try:
                    size = features.shape[0]
                    same = size == labels.shape[0]
                except IndexError:  # a 0-d tensor: the general path below names it
                    same = False
                if same:
                    if place:
                        features, labels = to_device(features, device, channels_last), to_device(labels, device, channels_last)  # type: ignore[arg-type]
                    yield features, labels, size
                    continue
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(
                    f"input_fn yielded a {type(item).__name__} of {len(item)} items; yield (features, labels) "
                    f"or features alone (wrap a tuple of feature tensors: ((a, b), labels))."
                )
            features, labels = item
            labels = None if labels is None else _convert(labels, "labels")
        else:
            features, labels = item, None
        features = _convert(features, "features")
        size = batch_size_of(features, labels)
        if device is not None:
            features, labels = to_device(features, device, channels_last), to_device(labels, device, channels_last)
        yield features, labels, size


def _all_on_cpu(structure: Any) -> bool:
    if isinstance(structure, torch.Tensor):
        return structure.device.type == "cpu"
    if structure is None:
        return True
    values = structure.values() if isinstance(structure, Mapping) else structure
    return all(value.device.type == "cpu" for value in values)


def to_device(structure: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a Tensor / list / tuple / dict of Tensors to ``device`` without blocking the host.

    On CUDA, host tensors are pinned first so that the copy is truly asynchronous. With ``channels_last``,
    4-D tensors (image batches) are laid out channels-last.
    """
    if device.type == "cpu" and not channels_last and _all_on_cpu(structure):
        return structure  # the common CPU case: nothing to move
    pin = device.type == "cuda"

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if pin and tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        if channels_last and tensor.dim() == 4:
            return tensor.to(device, non_blocking=True, memory_format=torch.channels_last)
        return tensor.to(device, non_blocking=True)

    if isinstance(structure, torch.Tensor):
        return move(structure)
    if structure is None:
        return None
    if isinstance(structure, Mapping):
        return {key: move(value) for key, value in structure.items()}
    return type(structure)(move(value) for value in structure)


class NumpyInput:
    """The iterable a ``numpy_input_fn`` returns: batches of numpy arrays, resumable at any position.

    ``state_dict()`` / ``load_state_dict()`` save and restore the number of examples consumed, and
    ``fingerprint`` identifies the data layout, so a checkpoint can resume the input exactly.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        num_epochs: int | None,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int] = (0, 1),
        pad: bool = True,
    ) -> None:
        self._x, self._y = x, y
        self._total_n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        self._batch_size, self._num_epochs, self._shuffle, self._seed = batch_size, num_epochs, shuffle, seed
        self._shard, self._pad = shard, pad
        index, count = shard
        # Each shard reads every count-th example of each epoch's order. Training pads the short shards by
        # wrapping around (as DistributedSampler does) so every process takes the same number of steps;
        # evaluation does not, so that no example is counted twice.
        self._n = -(-self._total_n // count) if pad else len(range(index, self._total_n, count))
        self._position = 0
        self._cached_epoch, self._cached_order = -1, np.arange(0)

    @property
    def fingerprint(self) -> str:
        """Sizes, batch size, epochs, shuffle and seed: resuming is exact only when these match."""
        seed = self._seed if self._shuffle else None  # without a shuffle the seed changes nothing
        index, count = self._shard
        # Padded shards are at the same position on every process: any process's state resumes them all.
        shard = f"*/{count}" if self._pad and count > 1 else f"{index}/{count}"
        return (
            f"numpy:n={self._total_n},batch_size={self._batch_size},num_epochs={self._num_epochs},"
            f"shuffle={self._shuffle},seed={seed},shard={shard}"
        )

    def state_dict(self) -> dict[str, Any]:
        """The resumable position: examples consumed so far, and the fingerprint."""
        return {"position": self._position, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state['position']``; a finished input starts a new pass, as TF re-read its input.

        Raises:
            ValueError: If the fingerprint differs (a different data set or batching).
        """
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"numpy input state is for {state.get('fingerprint')!r}, not {self.fingerprint!r}."
            )
        position = int(state["position"])
        finished = self._num_epochs is not None and position >= self._n * self._num_epochs
        self._position = 0 if finished else position

    def _slice(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Indices ``start:stop`` of this shard's order in the given epoch (one permutation per epoch)."""
        index, count = self._shard
        if not self._shuffle and count == 1:
            return np.arange(start, stop)
        if self._cached_epoch != epoch:
            self._cached_epoch = epoch
            order = np.random.default_rng([self._seed, epoch]).permutation(self._total_n) if self._shuffle else np.arange(self._total_n)
            if self._pad:
                order = np.concatenate([order, order[: self._n * count - self._total_n]])
            self._cached_order = order[index::count]
        return self._cached_order[start:stop]

    def _indices(self) -> Iterator[np.ndarray]:
        n, size = self._n, self._batch_size
        total = None if self._num_epochs is None else n * self._num_epochs
        while total is None or self._position < total:
            want = size if total is None else min(size, total - self._position)
            parts, position = [], self._position
            while want:
                epoch, offset = divmod(position, n)
                take = min(want, n - offset)
                parts.append(self._slice(epoch, offset, offset + take))
                position, want = position + take, want - take
            self._position = position
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __iter__(self) -> Iterator[Any]:
        take = lambda data, idx: {k: v[idx] for k, v in data.items()} if isinstance(data, dict) else data[idx]  # noqa: E731
        for idx in self._indices():
            features = take(self._x, idx)
            yield features if self._y is None else (features, take(self._y, idx))

    def __len__(self) -> int:
        if self._num_epochs is None:
            raise TypeError("a numpy input with num_epochs=None repeats forever and has no length.")
        return -(-(self._n * self._num_epochs - self._position) // self._batch_size)


def _check_array(name: str, data: Any, kind: str = "a numpy array") -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.numpy(force=True)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"numpy_input_fn `{name}` must be {kind}; received {_describe(data)}.")
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(f"numpy_input_fn `{name}` must have at least one example; received shape {data.shape}.")
    if data.size == 0:  # examples without values, e.g. np.array([[], []])
        raise ValueError(
            f"numpy_input_fn: {name} cannot be an empty array; received shape {data.shape}: every example "
            f"needs at least one value."
        )
    return data


def _check_arrays(name: str, data: Any) -> dict[str, np.ndarray] | np.ndarray:
    """An array, or a flat dict of arrays (nested dicts are rejected, naming the key)."""
    if not isinstance(data, dict):
        if isinstance(data, Mapping):
            data = dict(data)
        else:
            return _check_array(name, data, "a numpy array or a dict of them")
    if not data:
        raise ValueError(f"numpy_input_fn `{name}` is an empty dict; give at least one array.")
    return {key: _check_array(f"{name}[{key!r}]", value) for key, value in data.items()}


def _lengths(name: str, data: Any) -> dict[str, int]:
    if data is None:
        return {}
    if isinstance(data, dict):
        return {f"{name}[{key!r}]": len(value) for key, value in data.items()}
    return {name: len(data)}


def numpy_input_fn(
    x: Any,
    y: Any = None,
    batch_size: int = 128,
    num_epochs: int | None = 1,
    shuffle: bool | None = None,
    *,
    seed: int | None = None,
) -> Callable[..., NumpyInput]:
    """An ``input_fn`` over in-memory numpy arrays, with TF's rules.

    Batches span epoch boundaries and only the very last batch may be partial; ``num_epochs=None`` repeats
    forever with full batches. Unlike TF's queue, the shuffle is a full permutation per epoch, seeded by
    ``seed``, else ``RunConfig.random_seed``, else fresh entropy. The returned input resumes exactly from a
    checkpoint (see :class:`NumpyInput`).

    With several processes (``input_context``), each reads a disjoint slice of every epoch's order,
    ``batch_size`` examples per process per step; in training short slices are padded by wrapping around so
    that every process takes the same number of steps, in evaluation they are not, so no example counts twice.

    Args:
        x: A numpy array (features are a tensor) or a dict of arrays (features are a dict).
        y: Labels: None, an array or a dict of arrays; the same number of examples as ``x``.
        batch_size: Examples per batch, > 0.
        num_epochs: Passes over the data, > 0; None repeats forever.
        shuffle: Must be given explicitly, as TF requires (True recommended for training).
        seed: Seed of the shuffle.

    Returns:
        An ``input_fn(mode=None, config=None, input_context=None)`` returning a :class:`NumpyInput`.

    Raises:
        ValueError: If ``shuffle`` is not a bool, sizes disagree, keys collide or counts are not positive.
        TypeError: If ``x`` or ``y`` is not an array or a dict of arrays.
    """
    return _array_input_fn(x, y, batch_size, num_epochs, shuffle, seed, shared_keys=False)


def _array_input_fn(x: Any, y: Any, batch_size: int, num_epochs: int | None, shuffle: bool | None,
                    seed: int | None, *, shared_keys: bool) -> Callable[..., NumpyInput]:
    """:func:`numpy_input_fn`; ``shared_keys`` lets label keys repeat feature keys (a DataFrame's labels
    may be named as its features: they are separate dicts)."""
    if not isinstance(shuffle, bool):
        raise ValueError(
            f"numpy_input_fn `shuffle` must be given explicitly as True or False (True is recommended for "
            f"training); received {shuffle!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"numpy_input_fn `batch_size` must be an int > 0; received {batch_size!r}.")
    if num_epochs is not None and (isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs <= 0):
        raise ValueError(f"numpy_input_fn `num_epochs` must be an int > 0 or None; received {num_epochs!r}.")
    x = _check_arrays("x", x)
    y = None if y is None else _check_arrays("y", y)
    lengths = {**_lengths("x", x), **_lengths("y", y)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"numpy_input_fn: x and y must have the same number of examples; received {lengths}.")
    if not shared_keys and isinstance(x, dict) and isinstance(y, dict) and set(x) & set(y):
        raise ValueError(f"numpy_input_fn: x and y have duplicate keys {sorted(set(x) & set(y))}.")

    def input_fn(mode: str | None = None, config: Any = None, input_context: InputContext | None = None) -> NumpyInput:
        chosen = seed
        if chosen is None and config is not None:
            chosen = getattr(config, "random_seed", None)
        if chosen is None:
            if input_context is not None and input_context.num_input_pipelines > 1:
                raise ValueError(
                    "numpy_input_fn with several processes needs the same shuffle on every one: give `seed` "
                    "or RunConfig(random_seed=...)."
                )
            chosen = int(cast(int, np.random.SeedSequence().entropy) % (2**63))  # an int when drawn, not given
        shard = (0, 1) if input_context is None else (input_context.input_pipeline_id, input_context.num_input_pipelines)
        # Predictions are not sharded: every process predicts what it is given.
        if mode == "infer":
            shard = (0, 1)
        return NumpyInput(x, y, batch_size, num_epochs, shuffle, chosen, shard=shard, pad=mode != "eval")

    return input_fn


# TFRecord input and TF's parsing specs live in inputs_tfrecord (which builds on this module); they are
# reachable here as te.inputs.<name>, as TF users expect, and imported on first use.
_TFRECORD_NAMES = ("tfrecord_input_fn", "TFRecordInput", "FixedLenFeature", "VarLenFeature", "FixedLenSequenceFeature")


def __getattr__(name: str) -> Any:
    if name in _TFRECORD_NAMES:
        from . import inputs_tfrecord

        return getattr(inputs_tfrecord, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
