"""TensorBoard event files, laid out as TF's Estimator wrote them.

Training events go to ``model_dir``, evaluation events to ``model_dir/eval`` or ``eval_<name>``. One writer
per directory per process, created on first use (TF's ``FileWriterCache``); ``tensorboard`` is imported only
then, so ``import torch_estimator`` stays fast. Where ``google-crc32c`` is installed (the ``tfrecord``
extra), records are checksummed in C and the scalars of one ``write_summaries`` call are written as one
event, at once, in the caller's thread; histograms, images, text and graphs go through tensorboard's writer.

``model_fn`` adds its own summaries through ``EstimatorSpec(summaries={tag: value})``: a 0-dimensional or
one-element tensor is a scalar, any other tensor a histogram, :class:`Image` an image, :class:`Text` text.
A value may also be a zero-argument callable, evaluated only on the steps that write summaries.

Example:
    >>> import tempfile, torch
    >>> logdir = tempfile.mkdtemp()
    >>> write_summaries(logdir, {"loss": 0.5, "weights": torch.arange(4.0)}, step=1)
    >>> flush_all()
    >>> read_scalars(logdir)
    {1: {'loss': 0.5}}
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import io
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .tfrecord import frame_record

logger = logging.getLogger("torch_estimator")

__all__ = ["Image", "Text", "writer_for", "write_summaries", "write_graph", "flush_all", "read_scalars", "host_summaries"]

_writers: dict[str, Any] = {}
_graphs: set[str] = set()  # logdirs this process has written (or tried to write) a model graph to
_lock = threading.RLock()  # re-entered when a failed writer is dropped


@dataclasses.dataclass(frozen=True)
class Image:
    """An image summary: a tensor in ``dataformats`` layout (CHW by default; NCHW for several images)."""

    tensor: Any
    dataformats: str = "CHW"


@dataclasses.dataclass(frozen=True)
class Text:
    """A text summary."""

    text: str


def writer_for(logdir: str) -> Any:
    """The process's ``SummaryWriter`` for ``logdir``, created (with its event file) on first use.

    Raises:
        OSError: If the directory or the event file cannot be created (see :func:`write_summaries`).
    """
    writer = _writers.get(logdir)  # the directory as the key spells it: no path arithmetic
    if writer is not None:
        return writer
    key = os.path.abspath(logdir)
    with _lock:
        writer = _writers.get(key)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # deferred: importing tensorboard takes seconds

            try:
                writer = _writers[key] = SummaryWriter(log_dir=key)
            except OSError as error:
                raise _write_error(key, error) from error
            _checksum_in_c(writer)
        return writer


class _RecordSink:
    """Where the records of one writer's event file go, checksummed by ``google-crc32c`` (C): tensorboard's
    writer thread hands its records here (tensorboard computes CRCs in pure Python, byte by byte: tens of
    thousands of instructions per event), and :func:`write_summaries` writes its scalars here directly, in
    the caller's thread (no protobuf built by ``add_scalar``, no thread woken). Each write appends to the
    file with plain ``os`` calls and closes it again, as tensorboard's local writes do (no file is held
    open: a disk can still be unmounted or remounted read-only between writes). A lock keeps the two
    writers' records whole. The records are byte for byte those of tensorboard's ``RecordWriter``."""

    def __init__(self, path: str, crc32c: Callable[[bytes], int]) -> None:
        self._path, self._crc32c, self._lock = path, crc32c, threading.Lock()

    def write(self, data: bytes) -> None:
        """One record of ``data`` (the writer thread's ``RecordWriter.write``, and the scalars' event)."""
        view = memoryview(frame_record(data, self._crc32c))
        with self._lock:
            fd = os.open(self._path, _APPEND, 0o666)
            try:
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)  # as tensorboard's "ab"
_sinks: weakref.WeakKeyDictionary[Any, _RecordSink] = weakref.WeakKeyDictionary()


def _checksum_in_c(writer: Any) -> None:
    """Give ``writer``'s event file a :class:`_RecordSink` where ``google-crc32c`` is installed (the
    ``tfrecord`` extra), the file is local and tensorboard's writer is laid out as expected; else nothing
    changes (records checksummed in Python, scalars written through ``add_scalar``)."""
    try:
        import google_crc32c
        from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return
    event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
    record_writer: Any = getattr(getattr(event_writer, "_async_writer", None), "_writer", None)
    gfile: Any = getattr(record_writer, "_writer", None)
    if type(record_writer) is not RecordWriter or not isinstance(getattr(gfile, "fs", None), LocalFileSystem):
        return
    sink = _sinks[writer] = _RecordSink(os.fsdecode(gfile.filename), google_crc32c.value)
    record_writer.write = sink.write


_EVENT_PROTOS: Any = None


def _scalar_event(scalars: list[tuple[str, float]], step: int) -> bytes:
    """One serialized ``Event`` at ``step`` whose summary holds ``scalars`` as simple values (TF 1's
    ``SummarySaverHook`` wrote a step's scalars as one summary too)."""
    global _EVENT_PROTOS
    if _EVENT_PROTOS is None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        _EVENT_PROTOS = event_pb2.Event, summary_pb2.Summary
    event, summary = _EVENT_PROTOS
    values = [summary.Value(tag=tag, simple_value=value) for tag, value in scalars]
    return event(wall_time=time.time(), step=step, summary=summary(value=values)).SerializeToString()


def _write_error(logdir: str, error: OSError) -> OSError:
    """The error of a failed event write: errno kept, the directory named, what to do said; the broken
    writer is dropped, so that a later write starts a new event file."""
    with _lock:
        writer = _writers.pop(logdir, None)
    if writer is not None:
        with contextlib.suppress(Exception):  # it failed already; the first error is the one to report
            writer.close()
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        advice = "free disk space"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "make the directory writable"
    else:
        advice = "fix the cause above"
    message = (f"Could not write TensorBoard events to {logdir}: {error.strerror or error}. Checkpoints are written "
               f"separately and are unaffected; {advice}, then run again.")
    return type(error)(error.errno, message) if error.errno is not None else OSError(message)


def flush_all() -> None:
    """Flush every open writer (done at the end of each train, evaluate and predict).

    Raises:
        OSError: The first writer that failed (every writer is flushed all the same).
    """
    with _lock:
        writers = list(_writers.items())
    failed: OSError | None = None
    for key, writer in writers:
        try:
            writer.flush()
        except OSError as error:
            failed = failed or _write_error(key, error)
    if failed is not None:
        raise failed


def _host(value: Any, to_host: Callable[[Any], Any]) -> Any:
    if callable(value) and not isinstance(value, (torch.Tensor, Image, Text)):
        value = value()
    if isinstance(value, Image):
        return Image(to_host(value.tensor), value.dataformats)
    if isinstance(value, torch.Tensor):
        return to_host(value)
    return value


def host_summaries(summaries: Mapping[str, Any], to_host: Callable[[Any], Any]) -> dict[str, Any]:
    """Evaluate callables and copy tensors to the host (one copy per value, on summary steps only)."""
    return {tag: _host(value, to_host) for tag, value in summaries.items()}


def write_summaries(logdir: str, summaries: Mapping[str, Any], step: int) -> None:
    """Write host values: numbers and one-element arrays as scalars, other arrays as histograms,
    :class:`Image` and :class:`Text` as such; ``None`` values are skipped.

    Raises:
        TypeError: If a value has none of these types (the message names the tag).
        OSError: If the events cannot be written (full disk, read-only directory): the errno kept, the
            directory named and what to do said.
    """
    writer = writer_for(logdir)
    try:
        _write(writer, summaries, step)
    except OSError as error:
        raise _write_error(os.path.abspath(logdir), error) from error


def _write(writer: Any, summaries: Mapping[str, Any], step: int) -> None:
    scalars: list[tuple[str, float]] = []
    for tag, value in summaries.items():
        if value is None:
            continue
        if value.__class__ is float:
            scalars.append((tag, value))
        elif isinstance(value, Image):
            writer.add_image(tag, np.asarray(value.tensor), step, dataformats=value.dataformats)
        elif isinstance(value, Text):
            writer.add_text(tag, value.text, step)
        elif isinstance(value, str):
            writer.add_text(tag, value, step)
        elif isinstance(value, (bool, int, float, np.number)) or (isinstance(value, np.ndarray) and value.size == 1):
            scalars.append((tag, float(np.asarray(value).reshape(()))))
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            writer.add_histogram(tag, np.asarray(value), step)
        else:
            raise TypeError(
                f"Summary {tag!r}: cannot write a {type(value).__name__}; give a number, a tensor (scalar or "
                f"histogram), torch_estimator.summary.Image or Text."
            )
    if not scalars:
        return
    sink = _sinks.get(writer)
    if sink is not None:
        sink.write(_scalar_event(scalars, step))
        return
    for tag, scalar in scalars:
        writer.add_scalar(tag, scalar, step)


def _graph_inputs(features: Any) -> list[tuple[Any, ...]]:
    """What to trace ``model`` on: the features as they are, else their one tensor (a ``{"x": images}`` dict
    for a model that takes the images)."""
    candidates: list[tuple[Any, ...]] = [(features,)]
    if isinstance(features, Mapping):
        tensors = [v for v in features.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            candidates.append((tensors[0],))
    return candidates


def write_graph(logdir: str, model: torch.nn.Module, features: Any) -> bool:
    """Add ``model``'s graph, traced on ``features``, to ``logdir``'s events (TensorBoard's Graphs tab), once per
    ``logdir`` and process; the first call decides.

    The trace runs in eval mode without gradients on a forked RNG, so it changes neither the weights, the
    batch-norm statistics nor the random streams of training. A model that does not trace (data-dependent
    control flow, inputs other than the features or their one tensor) gets no graph and a debug log line.

    Returns:
        Whether a graph was written by this call.

    Example:
        >>> import tempfile, torch
        >>> logdir = tempfile.mkdtemp()
        >>> write_graph(logdir, torch.nn.Linear(4, 2), {"x": torch.zeros(3, 4)}), write_graph(logdir, torch.nn.Linear(4, 2), torch.zeros(3, 4))
        (True, False)
    """
    key = os.path.abspath(logdir)
    with _lock:
        if key in _graphs:
            return False
        _graphs.add(key)
    writer = writer_for(logdir)
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    was_training = model.training
    failures = []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):  # torch's tracer prints its failures
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
            for inputs in _graph_inputs(features):
                try:
                    writer.add_graph(model, inputs, use_strict_trace=False)
                    return True
                except Exception as error:  # any failure to trace just means no graph
                    failures.append(f"{type(error).__name__}: {error}")
    finally:
        model.train(was_training)
    logger.debug("No model graph for TensorBoard: the model does not trace on the features (%s).", "; ".join(failures))
    return False


def read_scalars(logdir: str) -> dict[int, dict[str, float]]:
    """Every scalar in ``logdir``'s event files, as ``{step: {tag: value}}`` sorted by step.

    Files that are damaged past some point are read up to it.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    result: dict[int, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*"))):
        try:
            for event in EventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        scalar = value.simple_value
                    elif value.metadata.plugin_data.plugin_name == "scalars" and value.HasField("tensor"):
                        from tensorboard.util import tensor_util

                        scalar = float(tensor_util.make_ndarray(value.tensor).reshape(()))
                    else:
                        continue
                    result.setdefault(int(event.step), {})[value.tag] = float(scalar)
        except Exception:  # a torn write at the end of a file: keep what was read
            continue
    return dict(sorted(result.items()))
