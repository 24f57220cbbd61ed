"""The TorchScript artifact, ``model.pt``: ``model_fn`` traced into one method per signature.

The traced module (:class:`ServingModule`) holds the model and any receiver modules as submodules, so
their parameters are the artifact's parameters; each method takes and returns ``Dict[str, Tensor]``.
``signature.json`` is embedded as an extra file: ``torch.jit.load(path, _extra_files={"signature.json": ""})``
in Python, ``torch::jit::load(path, device, extra)`` in C++.

TorchScript is deprecated upstream and torch 2.14 warns (``FutureWarning``) on every ``torch.jit`` call.
This module silences those warnings, and only those, around its own calls (docs/formats.md says it once).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import durable

__all__ = ["ServingModule", "quiet_torchscript", "trace", "save", "load", "MODEL_FILE"]

MODEL_FILE = "model.pt"

SignatureFunction = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings (only those) inside the block."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=r"`?torch\.jit\.", category=category)
        yield


class ServingModule(torch.nn.Module):
    """What export traces: the model, receiver modules, and one function per signature method.

    ``forward`` runs the default signature; every other function becomes a method of its name. The
    functions close over the receivers and ``model_fn``; tracing records what they compute.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        receiver_modules: Mapping[str, torch.nn.Module],
        functions: Mapping[str, SignatureFunction],
    ) -> None:
        super().__init__()
        if model is not None:
            self.model = model
        for name, module in receiver_modules.items():
            self.add_module(name, module)
        self._functions = dict(functions)
        for name, function in functions.items():
            if name != "forward":
                object.__setattr__(self, name, function)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._functions["forward"](inputs)


def trace(
    module: ServingModule, example_inputs: Mapping[str, dict[str, torch.Tensor]]
) -> tuple[torch.jit.ScriptModule, list[str]]:
    """Trace every method on its example inputs; return the module and the tracer's warnings.

    Raises:
        Whatever tracing raises (the caller adds context).
    """
    recorded: list[str] = []
    with quiet_torchscript(), warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(
            module,
            {name: (inputs,) for name, inputs in example_inputs.items()},
            check_trace=False,
            strict=False,  # dict outputs
        )
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            text = " ".join(str(warning.message).split())
            entry = f"{os.path.basename(warning.filename)}:{warning.lineno}: {text}"
            if entry not in recorded:
                recorded.append(entry)
        else:  # not ours to swallow
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return traced, recorded


def save(module: torch.jit.ScriptModule, path: str, signature_text: str) -> None:
    """Write ``model.pt`` with ``signature.json`` embedded."""
    buffer = io.BytesIO()  # serialized in memory: torch's file writer aborts the process on a full disk
    with quiet_torchscript():
        torch.jit.save(module, buffer, _extra_files={"signature.json": signature_text.encode("utf-8")})
    durable.write_file(path, buffer.getbuffer())


def load(path: str, device: torch.device | str | None = None) -> tuple[torch.jit.ScriptModule, str]:
    """Load ``model.pt`` and its embedded ``signature.json`` text."""
    extra = {"signature.json": ""}
    with quiet_torchscript():
        module = torch.jit.load(path, map_location=device, _extra_files=extra)
    text: Any = extra["signature.json"]
    return module, text.decode("utf-8") if isinstance(text, bytes) else text
