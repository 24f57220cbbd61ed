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
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Sequence as SequenceABC
from typing import Any, cast

import numpy as np
import torch

from .canned.feature_columns import MISSING, fingerprint
from .example_cache import ExampleCache
from .example_layout import ExampleLayouts, fill_value, finish_variable, parse_records
from .inputs import InputContext
from .prefetch import settle_malloc
from .row_shuffle import Rows, shuffle_rows
from .tf_example import (
    FeatureSpec,
    FixedLenFeature,
    FixedLenSequenceFeature,
    VarLenFeature,
    check_spec,
)
from .tfrecord import CorruptRecordError, RecordBlock, check_compression_type, read_record_blocks

__all__ = ["TFRecordInput", "tfrecord_input_fn", "FixedLenFeature", "VarLenFeature", "FixedLenSequenceFeature"]

logger = logging.getLogger(__name__)

_ON_CORRUPT = ("error", "skip")
_ID = "\0row"  # the one column of a stream of row numbers of cached examples (gathered once shuffled)
_ID_BLOCK = 1 << 16  # row numbers per block of such a stream
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
            if os.path.exists(match) and not stat.S_ISREG(os.stat(match).st_mode):
                raise ValueError(f"tfrecord_input_fn: {match!r} is not a regular file (a FIFO, socket or device); "
                                 f"a TFRecord file must be a regular file.")
            files.add(os.path.abspath(match))
    return sorted(files)


class TFRecordInput:
    """The iterable a ``tfrecord_input_fn`` returns: batches of tensors, resumable at any position.

    ``state_dict()`` / ``load_state_dict()`` save and restore the epoch and the number of records consumed in
    it; ``fingerprint`` identifies the files (paths and sizes), the spec and the batching, so a checkpoint
    resumes the input exactly. Resuming re-reads the current epoch's records up to the position (whole blocks
    at a time) and drops them. ``skipped_records`` counts corrupt records skipped (with ``on_corrupt="skip"``),
    each once even when a resume reads it again.
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
        cache: ExampleCache | None = None,
    ) -> None:
        self._files, self._specs, self._label_key = list(files), dict(features), label_key
        self._batch_size, self._num_epochs, self._shuffle, self._seed = batch_size, num_epochs, shuffle, seed
        self._buffer_size, self._compression, self._shard, self._on_corrupt = shuffle_buffer_size, compression_type, shard, on_corrupt
        # Equal shards ("pad"/"drop") with several processes; None: each shard as it comes (evaluation).
        self._uneven = uneven_shards if shard[1] > 1 else None
        self._file_counts = {} if file_counts is None else file_counts  # records per file, counted once
        self._cache = cache
        self._epoch, self._offset = 0, 0
        self.skipped_records = 0
        self._epoch_skipped = 0  # corrupt records met reading this epoch
        self._checkpoint_skips = 0  # ... when the last batch was yielded
        self._replayed_skips = 0  # ... at the position resumed from: met again, not counted again
        self._layouts = ExampleLayouts(self._specs)
        self._fills = {name: fill_value(spec) for name, spec in self._specs.items() if not isinstance(spec, FixedLenFeature)}
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
                "skipped_in_epoch": self._checkpoint_skips, "fingerprint": self.fingerprint}

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
        self._replayed_skips = 0 if finished else int(state.get("skipped_in_epoch", 0))

    # -- reading ---------------------------------------------------------------------------------------

    def _corrupt(self, error: CorruptRecordError) -> None:
        self._epoch_skipped += 1
        if self._epoch_skipped <= self._replayed_skips:
            return  # counted before the checkpoint
        self.skipped_records += 1
        logger.warning("Skipping a corrupt record (%d so far)%s: %s", self.skipped_records,
                       " and the rest of its file" if error.rest_of_file else "", error)

    def _blocks(self, epoch: int) -> Iterator[Rows]:
        """This shard's records of one epoch, parsed, in blocks: files (shuffled per epoch), shard, shuffle buffer."""
        files = self._files
        if self._shuffle:
            files = [files[i] for i in np.random.default_rng([self._seed, epoch]).permutation(len(files))]
        index, count = self._shard
        on_corrupt = self._corrupt if self._on_corrupt == "skip" else None
        by_file = count > 1 and len(files) >= count
        joined = self._cache.joined(files[index::count] if by_file else files) if self._cache is not None else None
        source: Callable[[Sequence[str], Callable[[CorruptRecordError], None] | None], Iterator[Rows]]
        if joined is not None:  # every file is in memory: row numbers go through sharding and shuffling
            rows, spans = joined
            source = lambda paths, _: _row_numbers(paths, spans)  # noqa: E731
        else:
            source = self._parsed
        stream: Iterator[Rows]
        if by_file:
            stream = source(files[index::count], on_corrupt)
            if self._uneven is not None:
                sizes = [sum(self._count(path) for path in files[shard::count]) for shard in range(count)]
                target = max(sizes) if self._uneven == "pad" else min(sizes)
                stream = _fit(stream, lambda: source(files[index::count], _ignore), target, f"{index} of {count}")
        else:
            stream = source(files, on_corrupt)
            if count > 1:  # by record
                stream = _deal(stream, index, count, self._uneven)
        if self._shuffle:
            stream = shuffle_rows(stream, self._buffer_size, np.random.default_rng([self._seed, epoch, 1]),
                                  pop=_ID_BLOCK if joined is not None else None)
        if joined is not None:
            stream = _gathered(stream, rows, self._batch_size)
        return stream

    def _count(self, path: str) -> int:
        """Records in ``path`` (corrupt ones skipped with ``on_corrupt="skip"``): read once, without parsing."""
        cached = self._cache.get(path) if self._cache is not None else None
        if cached is not None:
            return cached.n
        status = os.stat(path)
        key = f"{path}:{status.st_size}:{status.st_mtime_ns}"  # a rewritten file is counted again
        if key not in self._file_counts:
            on_corrupt = _ignore if self._on_corrupt == "skip" else None
            self._file_counts[key] = sum(len(block) for block in read_record_blocks(path, self._compression, on_corrupt))
        return self._file_counts[key]

    def _parsed(self, files: Sequence[str], on_corrupt: Callable[[CorruptRecordError], None] | None
                ) -> Iterator[Rows]:
        for path in files:
            cached = self._cache.get(path) if self._cache is not None else None
            if cached is not None:
                for start in range(0, cached.n, _ID_BLOCK):
                    yield cached.slice(start, min(start + _ID_BLOCK, cached.n))
                continue
            parts: list[Rows] | None = None
            if self._cache is not None:
                key, parts = self._cache.key(path), []
            for block in read_record_blocks(path, self._compression, on_corrupt):
                parsed = parse_records(block.data, block.starts, block.lengths, self._specs, _BlockSources(block),
                                       self._layouts, block.stride, padded=True)
                rows = Rows(len(block), parsed, self._fills)
                if parts is not None:
                    parts.append(rows)
                yield rows
            if self._cache is not None and parts is not None:  # read to its end: later passes read memory
                self._cache.put(path, key, parts, self._fills)

    def _batches(self) -> Iterator[Rows]:
        epoch, skip = self._epoch, self._offset
        pending: list[Rows] = []
        have = 0
        while self._num_epochs is None or epoch < self._num_epochs:
            consumed = 0
            self._epoch_skipped = 0
            for block in self._blocks(epoch):
                start = min(skip, block.n)
                skip -= start
                consumed += start
                if start == block.n:
                    continue
                block, start = self._as_tensors(block.slice(start, block.n)), 0  # once a block, not once a batch
                while start < block.n:
                    whole = (block.n - start) // self._batch_size if not have and not self._fills else 0
                    if whole:  # full batches straight out of the block: one split per column
                        size = self._batch_size
                        names = list(block.columns)
                        splits = [column[start : start + whole * size].split(size) for column in block.columns.values()]
                        for parts in zip(*splits):
                            consumed += size
                            self._epoch, self._offset = epoch, consumed
                            self._checkpoint_skips = self._epoch_skipped
                            yield Rows(size, dict(zip(names, parts)), self._fills)
                        start += whole * size
                        continue
                    take = min(block.n - start, self._batch_size - have)
                    pending.append(block.slice(start, start + take))
                    have += take
                    start += take
                    consumed += take
                    if have == self._batch_size:
                        self._epoch, self._offset = epoch, consumed
                        self._checkpoint_skips = self._epoch_skipped
                        yield _batch(pending)
                        pending, have = [], 0
            if consumed == 0:
                index, count = self._shard
                raise ValueError(f"tfrecord_input_fn: no records to read in {len(self._files)} file(s) "
                                 f"{self._files[:3]}{'...' if len(self._files) > 3 else ''}"
                                 + (f" for shard {index} of {count}" if count > 1 else "") + ".")
            skip = 0
            self._replayed_skips = 0
            epoch += 1
            if not pending:
                self._epoch, self._offset, self._checkpoint_skips = epoch, 0, 0
        if pending:
            self._epoch, self._offset, self._checkpoint_skips = epoch, 0, 0
            yield _batch(pending)

    def _as_tensors(self, rows: Rows) -> Rows:
        """``rows`` with its fixed-size columns made tensors (variable-length ones stay padded arrays until batched)."""
        columns: dict[str, Any] = {}
        for name, value in rows.columns.items():
            dtype = self._specs[name].dtype
            if name in self._fills:
                columns[name] = value
            elif dtype is str:
                columns[name] = torch.from_numpy(self._fingerprints(value))
            else:
                columns[name] = torch.from_numpy(_writable(value)).to(dtype)
        return Rows(rows.n, columns, self._fills)

    def _to_tensors(self, rows: Rows) -> dict[str, torch.Tensor]:
        if not self._fills:  # every column is a tensor already (a batch's own dict: the caller may change it)
            return rows.columns
        tensors: dict[str, Any] = {}
        for name, value in rows.columns.items():
            if name not in self._fills:
                tensors[name] = value
                continue
            parsed: dict[str, Any] = {}
            finish_variable(parsed, name, self._specs[name], *value)
            dtype = self._specs[name].dtype
            for key, array in parsed.items():
                if key != name:  # a padded VarLenFeature's lengths
                    tensors[key] = torch.from_numpy(np.array(array))
                elif isinstance(array, list):  # VarLenFeature(output="nested")
                    tensors[key] = torch.nested.nested_tensor(
                        [torch.from_numpy(self._fingerprints(v) if dtype is str else np.array(v)).to(
                            torch.int64 if dtype is str else dtype) for v in array], layout=torch.jagged)
                elif dtype is str:
                    tensors[key] = torch.from_numpy(self._fingerprints(array))
                else:
                    tensors[key] = torch.from_numpy(np.array(array)).to(dtype)
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
        # Blocks of megabytes are allocated and freed all the time: with glibc's adaptive thresholds most of
        # them came as fresh pages from the kernel (page faults cost more than the parsing). Set once per process.
        settle_malloc()
        label_keys = [self._label_key] if isinstance(self._label_key, str) else list(self._label_key or [])
        for batch in self._batches():
            features = self._to_tensors(batch)
            if not label_keys:
                yield features
            elif isinstance(self._label_key, str):
                yield features, features.pop(self._label_key)
            else:
                yield features, {key: features.pop(key) for key in label_keys}


class _BlockSources(SequenceABC[tuple[str, int]]):
    """``(path, offset)`` of each record of a block, for error messages (made only when one is needed)."""

    def __init__(self, block: RecordBlock) -> None:
        self._path, self._offsets = block.path, block.offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: Any) -> Any:
        return self._path, int(self._offsets[i])


def _row_numbers(paths: Sequence[str], spans: Mapping[str, tuple[int, int]]) -> Iterator[Rows]:
    """The numbers of the cached rows of ``paths`` (in the files' order) in the joined columns, in blocks."""
    for path in paths:
        first, n = spans[path]
        for start in range(first, first + n, _ID_BLOCK):
            stop = min(start + _ID_BLOCK, first + n)
            yield Rows(stop - start, {_ID: np.arange(start, stop, dtype=np.int64)}, {})


def _gathered(numbers: Iterator[Rows], rows: Rows, batch_size: int) -> Iterator[Rows]:
    """The rows at the row numbers of ``numbers``, gathered a whole number of batches (about 4 MiB) at a time."""
    size = sum(np.dtype(array.dtype).itemsize * int(np.prod(array.shape[1:]))
               for value in rows.columns.values() for array in (value if isinstance(value, tuple) else (value,)))
    chunk = batch_size * max(1, (4 << 20) // max(1, size * batch_size))
    pending: list[np.ndarray] = []
    have = 0
    for block in numbers:
        ids = block.columns[_ID]
        start = 0
        while have + len(ids) - start >= chunk:
            stop = start + chunk - have
            pending.append(ids[start:stop])
            yield rows.take(np.concatenate(pending) if len(pending) > 1 else pending[0])
            pending, have, start = [], 0, stop
        if start < len(ids):
            pending.append(ids[start:])
            have += len(ids) - start
    if have:
        yield rows.take(np.concatenate(pending) if len(pending) > 1 else pending[0])


def _ignore(error: CorruptRecordError) -> None:
    """Skip a corrupt record silently (a second read of it: it was reported, and counted, the first time)."""


def _fit(stream: Iterator[Rows], again: Callable[[], Iterator[Rows]], target: int, shard: str) -> Iterator[Rows]:
    """``stream`` cut to ``target`` rows, or lengthened to it by repeating it from the start (``again()``)."""
    have = 0
    for rows in stream:
        if have + rows.n >= target:
            if target > have:
                yield rows.slice(0, target - have)
            return
        have += rows.n
        yield rows
    while have < target:
        repeated = 0
        for rows in again():
            take = min(rows.n, target - have - repeated)
            yield rows.slice(0, take)
            repeated += take
            if have + repeated == target:
                break
        if repeated == 0:
            raise ValueError(f"tfrecord_input_fn: shard {shard} has no records to repeat up to the {target} of the "
                             f"largest shard (its files are empty); remove empty files or pass uneven_shards='drop'.")
        have += repeated


def _deal(stream: Iterator[Rows], index: int, count: int, uneven: str | None) -> Iterator[Rows]:
    """Shard ``index`` of ``count``'s rows of ``stream``: every count-th, as tf.data's sharding by record.

    With ``uneven="pad"`` the last, incomplete round gives the shards left out their own first row again; with
    ``"drop"`` it is dropped, so every shard gets the same number of rows; None: as they come.
    """
    seen = 0  # rows of the stream so far
    first: Rows | None = None  # this shard's first row
    held: Rows | None = None  # this shard's row of a round not yet complete, and where that round ends
    held_end = 0
    for rows in stream:
        picked = np.arange((index - seen) % count, rows.n, count)
        start, seen = seen, seen + rows.n
        if held is not None and held_end <= seen:  # its round is complete
            yield held
            held = None
        if not len(picked):
            continue
        mine = rows.take(picked)
        if first is None:
            first = mine.slice(0, 1)
        if uneven is None:
            yield mine
            continue
        ends = ((start + picked - index) // count + 1) * count  # where the round of each picked row ends
        done = int(np.count_nonzero(ends <= seen))
        if done:
            yield mine.slice(0, done)
        if done < mine.n:
            held, held_end = mine.slice(done, mine.n), int(ends[done])
    if uneven == "pad" and seen % count and first is not None:
        yield held if held is not None else first


def _batch(parts: list[Rows]) -> Rows:
    """One batch from the slices of blocks it spans (tensors for fixed-size columns, padded arrays for the rest)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    padded = Rows.concat([Rows(part.n, {name: part.columns[name] for name in first.fills}, first.fills)
                          for part in parts]).columns if first.fills else {}
    columns = {name: padded[name] if name in first.fills else torch.cat([part.columns[name] for part in parts])
               for name in first.columns}
    return Rows(sum(part.n for part in parts), columns, first.fills)


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else np.array(array)


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
    cache: bool = False,
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
        cache: Keep the parsed examples of every file read to its end in memory, and read them from there in
            later passes (as tf.data's ``Dataset.cache()``), shared by every input this ``input_fn`` makes (a
            train() after another, evaluations). Batches are the same as without it, and are copies. Memory
            holds the examples of the files this process reads (every file, when there are fewer files than
            processes); a file changed on disk is read again. Corrupt records skipped with
            ``on_corrupt="skip"`` are met, and counted, only when a file is read.

    Reading sets glibc's malloc thresholds once per process, as the prefetcher does (see
    ``RunConfig.prefetch_batches``; the environment's own malloc settings are left alone).

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
    if not isinstance(cache, bool):
        raise ValueError(f"tfrecord_input_fn `cache` must be True or False; received {cache!r}.")
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
    examples = ExampleCache() if cache else None

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
                             compression, shard, on_corrupt, uneven, counts, examples)

    return input_fn
