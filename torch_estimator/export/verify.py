"""Self-verification: sample inputs drawn from the receiver's specs, and the comparison of an artifact's
outputs with eager ``model_fn``'s, whose failure says which signature and output and what to change.

Export traces ``model_fn`` at one batch size (:data:`TRACE_ROUND`) and checks the saved artifact at two
others (:data:`VERIFY_ROUNDS`, batch 1 and 3), so a batch size baked in by tracing cannot pass. Dynamic
dimensions other than the batch (a sequence length) vary between rounds too, sharing one size per round.

Example:
    >>> import torch
    >>> from torch_estimator.export.receivers import TensorSpec
    >>> inputs = sample_inputs({"ids": TensorSpec([None, None], torch.int64, high=5)}, VERIFY_ROUNDS[0])
    >>> inputs["ids"].shape, bool(inputs["ids"].max() < 5)
    (torch.Size([1, 7]), True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .receivers import TensorSpec

__all__ = [
    "Round",
    "TRACE_ROUND",
    "VERIFY_ROUNDS",
    "ExportVerificationError",
    "sample_inputs",
    "compare_outputs",
    "TRACING_HINT",
]


@dataclasses.dataclass(frozen=True)
class Round:
    """Sizes for one set of sample inputs: the dynamic batch dimension, and other dynamic dimensions."""

    batch_size: int
    dynamic_size: int
    seed: int


TRACE_ROUND = Round(batch_size=2, dynamic_size=8, seed=0)  # 2, not 1: torch.export specializes size 1
VERIFY_ROUNDS = (Round(batch_size=1, dynamic_size=7, seed=1), Round(batch_size=3, dynamic_size=9, seed=2))

TRACING_HINT = (
    "Export records one pass through model_fn, so look for a batch size or shape baked in as a Python "
    "number (int(x.shape[0]), x.size(0) in arithmetic, len(x), .item(), .tolist(), numpy): use -1 or "
    "x.flatten(1) instead; or for Python control flow on tensor values (if x.sum() > 0), which takes the "
    "same branch for every input."
)


class ExportVerificationError(ValueError):
    """The saved artifact does not reproduce eager ``model_fn``; the export was not written."""


def _integer_bounds(spec: TensorSpec) -> tuple[int, int]:
    low = None if spec.low is None else math.ceil(spec.low)
    high = None if spec.high is None else math.ceil(spec.high)
    if low is None:
        low = 0 if high is None or high > 0 else high - 2
    if high is None or high <= low:
        high = low + 2 if high is None else low + 1
    return low, high


def _draw(spec: TensorSpec, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    dtype = spec.dtype
    if dtype.is_floating_point or dtype.is_complex:
        if dtype.is_complex:
            return torch.randn(shape, generator=generator, dtype=dtype)
        if spec.low is not None or spec.high is not None:
            low = spec.low if spec.low is not None else spec.high - 1.0  # type: ignore[operator]
            high = spec.high if spec.high is not None else low + 1.0
            values = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
            return values.to(dtype)
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    low, high = _integer_bounds(spec)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64).to(dtype)


def sample_input(spec: TensorSpec, round_: Round, generator: torch.Generator) -> torch.Tensor:
    """One input for ``spec``: rows of its example, else values drawn as :class:`TensorSpec` describes."""
    if spec.example is not None:
        if not spec.shape:
            return spec.example.clone()
        rows = spec.shape[0] if spec.shape[0] is not None else round_.batch_size
        index = torch.arange(rows) % spec.example.shape[0]
        return spec.example[index].clone()
    shape = [
        size if size is not None else (round_.batch_size if axis == 0 else round_.dynamic_size)
        for axis, size in enumerate(spec.shape)
    ]
    return _draw(spec, shape, generator)


def sample_inputs(
    specs: Mapping[str, TensorSpec], round_: Round, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Inputs for every spec of a receiver, reproducible for a given round (its own generator)."""
    generator = torch.Generator().manual_seed(round_.seed)
    return {name: sample_input(specs[name], round_, generator).to(device) for name in sorted(specs)}


def _first_line(error: BaseException | str, limit: int = 400) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def compare_outputs(expected: Mapping[str, torch.Tensor], actual: Any) -> tuple[str, str] | None:
    """None when ``actual`` matches ``expected`` (names, dtypes, shapes, values to float tolerance), else
    ``(output name or "", what differs)``."""
    if not isinstance(actual, Mapping):
        return "", f"returned {type(actual).__name__}, not a dict of tensors"
    if set(actual) != set(expected):
        return "", f"returned outputs {sorted(actual)} but eager model_fn gives {sorted(expected)}"
    for name in sorted(expected):
        want, got = expected[name], actual[name]
        if not isinstance(got, torch.Tensor):
            return name, f"is {type(got).__name__}, not a Tensor"
        if got.dtype != want.dtype:
            return name, f"has dtype {got.dtype} but eager model_fn gives {want.dtype}"
        if got.shape != want.shape:
            return name, f"has shape {list(got.shape)} but eager model_fn gives {list(want.shape)}"
        try:
            torch.testing.assert_close(got.cpu(), want.cpu(), equal_nan=True)
        except AssertionError as error:
            details = " ".join(line.strip() for line in str(error).splitlines()[1:3] if line.strip())
            return name, f"differs from eager model_fn ({details or _first_line(error)})"
    return None


def describe_warnings(messages: Sequence[str]) -> str:
    """A sentence quoting the first tracer warning, or an empty string."""
    if not messages:
        return ""
    more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
    return f" Tracing warned{more}: {messages[0]}"
