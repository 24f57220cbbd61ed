"""``tfrecord_input_fn``: an ``input_fn`` over TFRecord files of ``tf.Example`` records, without TensorFlow.

It does what a TF input_fn did with ``tf.data.TFRecordDataset`` + ``shuffle`` + ``repeat`` + ``batch`` +
``tf.io.parse_example``, with :func:`~torch_estimator.inputs.numpy_input_fn`'s rules: ``shuffle`` must be given,
batches span epoch boundaries and only the very last one may be partial, the input resumes exactly from a
checkpoint, and several processes each read their own shard (by file when there are at least as many files as
processes, else every n-th record, as tf.data's auto-sharding). In training the shards are made equal in every
epoch (``uneven_shards``: the short ones repeat records, or the long ones drop some), so that every process
takes the same number of steps and resumes from the same position. Strings (``dtype=str``) become their
:func:`~torch_estimator.canned.fingerprint` in int64 tensors (``""`` -> -1), as canned feature columns expect.
Needs ``protobuf`` and ``google-crc32c`` (``pip install 'torch-estimator[tfrecord]'``).

Example:
    >>> import os, tempfile, torch
    >>> from torch_estimator.tfrecord import write_records
    >>> from torch_estimator.tf_example import make_example
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tfrecord")
    >>> write_records(path, [make_example({"x": [float(i)], "y": i % 2}).SerializeToString() for i in range(5)])
    5
    >>> input_fn = tfrecord_input_fn(path, {"x": FixedLenFeature([], torch.float32),
    ...                                      "y": FixedLenFeature([], torch.int64)},
    ...                              batch_size=2, num_epochs=1, shuffle=False, label_key="y")
    >>> [(features["x"].tolist(), labels.tolist()) for features, labels in input_fn()]
    [([0.0, 1.0], [0, 1]), ([2.0, 3.0], [0, 1]), ([4.0], [0])]
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from .canned.feature_columns import MISSING, fingerprint
from .inputs import InputContext
from .tf_example import (
    FeatureSpec,
    FixedLenFeature,
    FixedLenSequenceFeature,
    VarLenFeature,
    check_spec,
    parse_example,
)
from .tfrecord import CorruptRecordError, check_compression_type, read_records

__all__ = ["TFRecordInput", "tfrecord_input_fn", "FixedLenFeature", "VarLenFeature", "FixedLenSequenceFeature"]

logger = logging.getLogger(__name__)

_ON_CORRUPT = ("error", "skip")
_UNEVEN_SHARDS = ("pad", "drop")


def list_files(file_patterns: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The files matching ``file_patterns`` (glob patterns or paths), sorted and without duplicates.

    Raises:
        ValueError: If a pattern matches no file, or a match is a directory.
    """
    patterns = [file_patterns] if isinstance(file_patterns, (str, os.PathLike)) else list(file_patterns)
    if not patterns:
        raise ValueError("tfrecord_input_fn `file_patterns` is empty; give a path or a glob pattern.")
    files: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, (str, os.PathLike)):
            raise TypeError(f"tfrecord_input_fn `file_patterns` must be paths or glob patterns; received {pattern!r}.")
        matches = glob.glob(os.fspath(pattern), recursive=True)
        if not matches:
            raise ValueError(f"tfrecord_input_fn: no file matches {os.fspath(pattern)!r}.")
        for match in matches:
            if os.path.isdir(match):
                raise ValueError(f"tfrecord_input_fn: {match!r} is a directory; give files or a pattern such as "
                                 f"{os.path.join(match, '*.tfrecord')!r}.")
            files.add(os.path.abspath(match))
    return sorted(files)


class TFRecordInput:
    """The iterable a ``tfrecord_input_fn`` returns: batches of tensors, resumable at any position.

    ``state_dict()`` / ``load_state_dict()`` save and restore the epoch and the number of records consumed in
    it; ``fingerprint`` identifies the files (paths and sizes), the spec and the batching, so a checkpoint
    resumes the input exactly. Resuming re-reads the current epoch's records up to the position without
    parsing them. ``skipped_records`` counts corrupt records skipped (with ``on_corrupt="skip"``).
    """

    def __init__(
        self,
        files: Sequence[str],
        features: Mapping[str, FeatureSpec],
        label_key: str | Sequence[str] | None,
        batch_size: int,
        num_epochs: int | None,
        shuffle: bool,
        seed: int,
        shuffle_buffer_size: int = 10_000,
        compression_type: str = "",
        shard: tuple[int, int] = (0, 1),
        on_corrupt: str = "error",
        uneven_shards: str | None = None,
        file_counts: dict[str, int] | None = None,
    ) -> None:
        self._files, self._specs, self._label_key = list(files), dict(features), label_key
        self._batch_size, self._num_epochs, self._shuffle, self._seed = batch_size, num_epochs, shuffle, seed
        self._buffer_size, self._compression, self._shard, self._on_corrupt = shuffle_buffer_size, compression_type, shard, on_corrupt
        # Equal shards ("pad"/"drop") with several processes; None: each shard as it comes (evaluation).
        self._uneven = uneven_shards if shard[1] > 1 else None
        self._file_counts = {} if file_counts is None else file_counts  # records per file, counted once
        self._epoch, self._offset = 0, 0
        self.skipped_records = 0
        self._replaying = False
        self._strings: dict[str, int] = {}
        sizes = "\n".join(f"{path}:{os.path.getsize(path)}" for path in self._files)
        self._files_digest = hashlib.sha256(sizes.encode()).hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """Files, spec, labels, batching, shuffle, seed and shard: resuming is exact only when these match."""
        spec = hashlib.sha256(repr(sorted(self._specs.items())).encode()).hexdigest()[:16]
        seed = self._seed if self._shuffle else None
        # Equal shards are at the same position on every process: any process's state resumes them all.
        shard = f"*/{self._shard[1]},{self._uneven}" if self._uneven else f"{self._shard[0]}/{self._shard[1]}"
        return (
            f"tfrecord:files={self._files_digest},n_files={len(self._files)},spec={spec},labels={self._label_key!r},"
            f"batch_size={self._batch_size},num_epochs={self._num_epochs},shuffle={self._shuffle},seed={seed},"
            f"buffer={self._buffer_size if self._shuffle else None},compression={self._compression or None},"
            f"shard={shard}"
        )

    def state_dict(self) -> dict[str, Any]:
        """The resumable position: the epoch, records consumed in it, corrupt records skipped, the fingerprint."""
        return {"epoch": self._epoch, "offset": self._offset, "skipped": self.skipped_records,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``'s position; a finished input starts a new pass, as TF re-read its input.

        Raises:
            ValueError: If the fingerprint differs (other files, spec or batching).
        """
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(f"TFRecord input state is for {state.get('fingerprint')!r}, not {self.fingerprint!r}.")
        epoch, offset = int(state["epoch"]), int(state["offset"])
        finished = self._num_epochs is not None and epoch >= self._num_epochs
        self._epoch, self._offset = (0, 0) if finished else (epoch, offset)
        self.skipped_records = int(state.get("skipped", 0))

    # -- reading ---------------------------------------------------------------------------------------

    def _corrupt(self, error: CorruptRecordError) -> None:
        if self._replaying:
            return  # counted before the checkpoint
        self.skipped_records += 1
        logger.warning("Skipping a corrupt record (%d so far)%s: %s", self.skipped_records,
                       " and the rest of its file" if error.rest_of_file else "", error)

    def _records(self, epoch: int) -> Iterator[tuple[bytes, tuple[str, int]]]:
        """This shard's records of one epoch, in order: files (shuffled per epoch), shard, shuffle buffer."""
        files = self._files
        if self._shuffle:
            files = [files[i] for i in np.random.default_rng([self._seed, epoch]).permutation(len(files))]
        index, count = self._shard
        on_corrupt = self._corrupt if self._on_corrupt == "skip" else None
        stream: Iterator[tuple[bytes, tuple[str, int]]]
        if count > 1 and len(files) >= count:  # by file
            stream = self._read(files[index::count], on_corrupt)
            if self._uneven is not None:
                sizes = [sum(self._count(path) for path in files[shard::count]) for shard in range(count)]
                target = max(sizes) if self._uneven == "pad" else min(sizes)
                stream = _fit(stream, lambda: self._read(files[index::count], _ignore), target, f"{index} of {count}")
        else:
            stream = self._read(files, on_corrupt)
            if count > 1:  # by record
                stream = _deal(stream, index, count, self._uneven)
        if self._shuffle:
            stream = _shuffle_buffer(stream, self._buffer_size, np.random.default_rng([self._seed, epoch, 1]))
        return stream

    def _read(self, files: Sequence[str], on_corrupt: Callable[[CorruptRecordError], None] | None
              ) -> Iterator[tuple[bytes, tuple[str, int]]]:
        return ((data, (path, offset)) for path in files for offset, data in read_records(path, self._compression, on_corrupt))

    def _count(self, path: str) -> int:
        """Records in ``path`` (corrupt ones skipped with ``on_corrupt="skip"``): read once, without parsing."""
        status = os.stat(path)
        key = f"{path}:{status.st_size}:{status.st_mtime_ns}"  # a rewritten file is counted again
        if key not in self._file_counts:
            on_corrupt = _ignore if self._on_corrupt == "skip" else None
            self._file_counts[key] = sum(1 for _ in read_records(path, self._compression, on_corrupt))
        return self._file_counts[key]

    def _batches(self) -> Iterator[list[tuple[bytes, tuple[str, int]]]]:
        epoch, skip = self._epoch, self._offset
        batch: list[tuple[bytes, tuple[str, int]]] = []
        while self._num_epochs is None or epoch < self._num_epochs:
            consumed = 0
            self._replaying = skip > 0
            for record in self._records(epoch):
                consumed += 1
                if skip:
                    skip -= 1
                    self._replaying = skip > 0
                    continue
                batch.append(record)
                if len(batch) == self._batch_size:
                    self._epoch, self._offset = epoch, consumed
                    yield batch
                    batch = []
            if consumed == 0:
                index, count = self._shard
                raise ValueError(f"tfrecord_input_fn: no records to read in {len(self._files)} file(s) "
                                 f"{self._files[:3]}{'...' if len(self._files) > 3 else ''}"
                                 + (f" for shard {index} of {count}" if count > 1 else "") + ".")
            skip = 0
            epoch += 1
            if not batch:
                self._epoch, self._offset = epoch, 0
        if batch:
            self._epoch, self._offset = epoch, 0
            yield batch

    def _to_tensors(self, parsed: dict[str, Any]) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, value in parsed.items():
            spec = self._specs.get(name)
            dtype = torch.int64 if spec is None else spec.dtype  # None: a padded VarLenFeature's lengths
            if isinstance(value, list):  # VarLenFeature(output="nested")
                tensors[name] = torch.nested.nested_tensor([torch.from_numpy(v).to(dtype) for v in value],
                                                           layout=torch.jagged)
            elif dtype is str:
                tensors[name] = torch.from_numpy(self._fingerprints(value))
            else:
                tensors[name] = torch.from_numpy(value).to(dtype)
        return tensors

    def _fingerprints(self, strings: np.ndarray) -> np.ndarray:
        cache = self._strings
        if len(cache) > 100_000:
            cache.clear()
        out = np.empty(strings.shape, dtype=np.int64)
        flat = out.reshape(-1)
        for i, text in enumerate(strings.reshape(-1).tolist()):
            code = cache.get(text)
            if code is None:
                code = cache[text] = fingerprint(text) if text else MISSING
            flat[i] = code
        return out

    def __iter__(self) -> Iterator[Any]:
        label_keys = [self._label_key] if isinstance(self._label_key, str) else list(self._label_key or [])
        for batch in self._batches():
            records = [data for data, _ in batch]
            features = self._to_tensors(parse_example(records, self._specs, [where for _, where in batch]))
            if not label_keys:
                yield features
            elif isinstance(self._label_key, str):
                yield features, features.pop(self._label_key)
            else:
                yield features, {key: features.pop(key) for key in label_keys}


def _ignore(error: CorruptRecordError) -> None:
    """Skip a corrupt record silently (a second read of it: it was reported, and counted, the first time)."""


def _fit(stream: Iterator[Any], again: Callable[[], Iterator[Any]], target: int, shard: str) -> Iterator[Any]:
    """``stream`` cut to ``target`` items, or lengthened to it by repeating it from the start (``again()``)."""
    have = 0
    for item in itertools.islice(stream, target):
        have += 1
        yield item
    while have < target:
        repeated = 0
        for item in itertools.islice(again(), target - have):
            repeated += 1
            yield item
        if repeated == 0:
            raise ValueError(f"tfrecord_input_fn: shard {shard} has no records to repeat up to the {target} of the "
                             f"largest shard (its files are empty); remove empty files or pass uneven_shards='drop'.")
        have += repeated


def _deal(stream: Iterator[Any], index: int, count: int, uneven: str | None) -> Iterator[Any]:
    """Shard ``index`` of ``count``'s items of ``stream``: every count-th, as tf.data's sharding by record.

    With ``uneven="pad"`` the last, incomplete round gives the shards left out their own first item again; with
    ``"drop"`` it is dropped, so every shard gets the same number of items; None: as they come.
    """
    if uneven is None:
        yield from itertools.islice(stream, index, None, count)
        return
    first = mine = None
    seen = 0
    for seen, item in enumerate(stream, 1):
        if (seen - 1) % count == index:
            mine = item
            first = item if first is None else first
        if seen % count == 0:  # a complete round: every shard has its item
            yield mine
    if seen % count and uneven == "pad" and first is not None:
        yield mine if index < seen % count else first


def _shuffle_buffer(stream: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """tf.data's shuffle: fill a buffer, then emit a random element and put the next one in its place."""
    buffer: list[Any] = list(itertools.islice(stream, size))
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


def _check_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"tfrecord_input_fn `{name}` must be an int > 0{' or None' if allow_none else ''}; "
                         f"received {value!r}.")


def tfrecord_input_fn(
    file_patterns: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    features: Mapping[str, FeatureSpec],
    batch_size: int = 128,
    num_epochs: int | None = 1,
    shuffle: bool | None = None,
    *,
    label_key: str | Sequence[str] | None = None,
    seed: int | None = None,
    shuffle_buffer_size: int = 10_000,
    compression_type: str | None = None,
    on_corrupt: str = "error",
    uneven_shards: str = "pad",
) -> Callable[..., TFRecordInput]:
    """An ``input_fn`` over TFRecord files of ``tf.Example`` records (TF's ``TFRecordDataset`` + ``parse_example``).

    Args:
        file_patterns: A path or glob pattern, or a list of them; matched when this is called.
        features: Feature name -> :class:`FixedLenFeature` / :class:`VarLenFeature` /
            :class:`FixedLenSequenceFeature` (``te.canned.make_parse_example_spec`` makes it from feature columns).
        batch_size: Examples per batch, > 0.
        num_epochs: Passes over the files, > 0; None repeats forever.
        shuffle: Must be given explicitly, as TF requires. True shuffles the file order every epoch and the
            records through a buffer of ``shuffle_buffer_size``, as tf.data.
        label_key: The feature (or list of features) yielded as labels; None yields features alone.
        seed: Seed of the shuffle; else ``RunConfig.random_seed``; else fresh entropy.
        shuffle_buffer_size: Records held in the shuffle buffer (larger: better mixed, more memory).
        compression_type: None or ``""``, ``"GZIP"`` or ``"ZLIB"``, as TF.
        on_corrupt: ``"error"`` (a corrupt record raises, naming the file and offset) or ``"skip"`` (it is
            skipped, logged and counted in ``TFRecordInput.skipped_records``).
        uneven_shards: How training with several processes evens out the shards' sizes in every epoch, so
            that every process takes the same number of steps (one that runs out first would leave the others
            waiting in an all-reduce) and all resume from the same position: ``"pad"`` (as
            ``numpy_input_fn``) repeats a shorter shard's first records up to the largest shard's size, every
            record is read at least once per epoch; ``"drop"`` cuts every shard to the smallest one's size,
            no record is read twice. Sharding by file needs every file's record count: each process reads all
            files once (without parsing) at its first epoch. Evaluation is not evened out (no example counts
            twice); predictions are not sharded.

    Returns:
        An ``input_fn(mode=None, config=None, input_context=None)`` returning a :class:`TFRecordInput`.

    Raises:
        ValueError: If ``shuffle`` is not a bool, a count is not positive, no file matches, a label key is
            not in ``features`` or an option is unknown.
        TypeError: If ``features`` is not a dict of specs.
    """
    if not isinstance(shuffle, bool):
        raise ValueError(f"tfrecord_input_fn `shuffle` must be given explicitly as True or False (True is recommended "
                         f"for training); received {shuffle!r}.")
    _check_int("batch_size", batch_size)
    _check_int("num_epochs", num_epochs, allow_none=True)
    _check_int("shuffle_buffer_size", shuffle_buffer_size)
    specs = check_spec(features, "tfrecord_input_fn `features`")
    compression = check_compression_type(compression_type, "tfrecord_input_fn `compression_type`")
    if on_corrupt not in _ON_CORRUPT:
        raise ValueError(f"tfrecord_input_fn `on_corrupt` must be 'error' or 'skip'; received {on_corrupt!r}.")
    if uneven_shards not in _UNEVEN_SHARDS:
        raise ValueError(f"tfrecord_input_fn `uneven_shards` must be 'pad' (repeat records of the shorter shards) or "
                         f"'drop' (cut the longer ones); received {uneven_shards!r}.")
    label_keys = [label_key] if isinstance(label_key, str) else list(label_key or [])
    for key in label_keys:
        if key not in specs:
            raise ValueError(f"tfrecord_input_fn `label_key` {key!r} is not in `features` {sorted(specs)}.")
        label_spec = specs[key]
        if isinstance(label_spec, VarLenFeature) and label_spec.output == "padded":
            raise ValueError(f"tfrecord_input_fn `label_key` {key!r} is a padded VarLenFeature; labels must be one "
                             f"tensor: use FixedLenFeature.")
    if len(label_keys) == len(specs):
        raise ValueError("tfrecord_input_fn: every feature is a label; leave at least one feature.")
    files = list_files(file_patterns)
    counts: dict[str, int] = {}  # records per file, shared by the inputs this makes (the files are read once)

    def input_fn(mode: str | None = None, config: Any = None, input_context: InputContext | None = None) -> TFRecordInput:
        chosen = seed
        if chosen is None and config is not None:
            chosen = getattr(config, "random_seed", None)
        if chosen is None:
            if shuffle and input_context is not None and input_context.num_input_pipelines > 1:
                raise ValueError("tfrecord_input_fn with several processes needs the same shuffle on every one: give "
                                 "`seed` or RunConfig(random_seed=...).")
            chosen = int(cast(int, np.random.SeedSequence().entropy) % (2**63))  # an int when drawn, not given
        shard = (0, 1) if input_context is None else (input_context.input_pipeline_id, input_context.num_input_pipelines)
        if mode == "infer":  # predictions are not sharded: every process predicts what it is given
            shard = (0, 1)
        # Training evens out the shards (every process takes the same steps); evaluation counts each example once.
        uneven = None if mode == "eval" else uneven_shards
        return TFRecordInput(files, specs, label_key, batch_size, num_epochs, shuffle, chosen, shuffle_buffer_size,
                             compression, shard, on_corrupt, uneven, counts)

    return input_fn
