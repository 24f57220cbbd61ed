"""TensorBoard event files, laid out as TF's Estimator wrote them.

Training events go to ``model_dir``, evaluation events to ``model_dir/eval`` or ``eval_<name>``. One writer
per directory per process, created on first use (TF's ``FileWriterCache``); ``tensorboard`` is imported only
then, so ``import torch_estimator`` stays fast.

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

import dataclasses
import glob
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["Image", "Text", "writer_for", "write_summaries", "flush_all", "read_scalars", "host_summaries"]

_writers: dict[str, Any] = {}
_lock = threading.Lock()


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
    """The process's ``SummaryWriter`` for ``logdir``, created (with its event file) on first use."""
    key = os.path.abspath(logdir)
    with _lock:
        writer = _writers.get(key)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # deferred: importing tensorboard takes seconds

            writer = _writers[key] = SummaryWriter(log_dir=key)
        return writer


def flush_all() -> None:
    """Flush every open writer (done at the end of each train, evaluate and predict)."""
    with _lock:
        writers = list(_writers.values())
    for writer in writers:
        writer.flush()


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
    """
    writer = writer_for(logdir)
    for tag, value in summaries.items():
        if value is None:
            continue
        if isinstance(value, Image):
            writer.add_image(tag, np.asarray(value.tensor), step, dataformats=value.dataformats)
        elif isinstance(value, Text):
            writer.add_text(tag, value.text, step)
        elif isinstance(value, str):
            writer.add_text(tag, value, step)
        elif isinstance(value, (bool, int, float, np.number)) or (isinstance(value, np.ndarray) and value.size == 1):
            writer.add_scalar(tag, float(np.asarray(value).reshape(())), step)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            writer.add_histogram(tag, np.asarray(value), step)
        else:
            raise TypeError(
                f"Summary {tag!r}: cannot write a {type(value).__name__}; give a number, a tensor (scalar or "
                f"histogram), torch_estimator.summary.Image or Text."
            )


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
