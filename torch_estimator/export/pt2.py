"""The ``torch.export`` artifact, ``model.pt2``: one exported program per signature, in one archive.

The default signature is the program named ``"model"``, so ``torch.export.load("model.pt2")`` returns it
(with ``signature.json`` in ``extra_files``); the others are named after their ``function`` in
``signature.json``. Several programs share one archive through ``torch.export.pt2_archive``'s
``package_pt2``/``load_pt2`` (what ``torch.export.save``/``load`` use underneath); in torch 2.14 each
program stores its own copy of the weights.

The batch dimension is one named dynamic dimension shared by every input (export fails, naming the code,
if ``model_fn`` makes it a constant); other dynamic dimensions are ``Dim.AUTO``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..serving import loader
from . import durable
from .receivers import TensorSpec

__all__ = ["MODEL_FILE", "DEFAULT_PROGRAM", "program_name", "export_program", "save", "load"]

MODEL_FILE = "model.pt2"
DEFAULT_PROGRAM = "model"  # the name torch.export.save/load use for an archive's program


def program_name(function: str) -> str:
    """The program of a signature whose TorchScript method is ``function``."""
    return DEFAULT_PROGRAM if function == "forward" else function


class _SignatureModule(torch.nn.Module):
    """One signature as a module: ``forward(inputs)`` runs its function; submodules carry the weights."""

    def __init__(
        self,
        model: torch.nn.Module | None,
        receiver_modules: Mapping[str, torch.nn.Module],
        function: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    ) -> None:
        super().__init__()
        if model is not None:
            self.model = model
        for name, module in receiver_modules.items():
            self.add_module(name, module)
        self._function = function

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._function(inputs)


def _dynamic_shapes(specs: Mapping[str, TensorSpec], names: list[str]) -> dict[str, Any]:
    batch = torch.export.Dim("batch")
    shapes: dict[str, Any] = {}
    for name in names:
        spec = specs[name]
        dims: dict[int, Any] = {}
        for axis, size in enumerate(spec.shape):
            if size is None:
                dims[axis] = batch if axis == 0 else torch.export.Dim.AUTO
        shapes[name] = dims or None
    return shapes


def export_program(
    model: torch.nn.Module | None,
    receiver_modules: Mapping[str, torch.nn.Module],
    function: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    specs: Mapping[str, TensorSpec],
    example_inputs: dict[str, torch.Tensor],
) -> torch.export.ExportedProgram:
    """``torch.export`` one signature with its dynamic dimensions.

    Raises:
        Whatever ``torch.export.export`` raises (the caller adds context).
    """
    module = _SignatureModule(model, receiver_modules, function)
    shapes = _dynamic_shapes(specs, list(example_inputs))
    return torch.export.export(module, (example_inputs,), dynamic_shapes=(shapes,), strict=False)


def save(programs: Mapping[str, torch.export.ExportedProgram], path: str, signature_text: str) -> None:
    """Write every program to one ``.pt2`` archive with ``signature.json`` embedded, and nothing pickled.

    torch pickles a program's sample inputs (``torch.export.save`` always writes them), tensor subclasses
    and custom objects. The sample inputs are dropped (``signature.json`` describes the inputs); the others
    make :func:`~torch_estimator.serving.loader.check_pt2_archive` refuse the archive, which :func:`load`
    runs, so such a model fails export with that error instead of writing a file that unpickles.
    """
    from torch.export.pt2_archive._package import package_pt2

    for program in programs.values():
        program.example_inputs = None  # else written with torch.save, and read back with pickle
    buffer = io.BytesIO()  # serialized in memory: torch's file writer aborts the process on a full disk
    package_pt2(buffer, exported_programs=dict(programs), extra_files={"signature.json": signature_text})
    durable.write_file(path, buffer.getbuffer())


def load(path: str) -> tuple[dict[str, torch.export.ExportedProgram], str]:
    """Every program of a ``.pt2`` archive, and its ``signature.json`` text, after the serving loader's
    check that no member needs unpickling.

    Raises:
        UnsafeArchiveError: From :func:`~torch_estimator.serving.loader.check_pt2_archive`.
    """
    from torch.export.pt2_archive._package import load_pt2

    with open(path, "rb") as file:
        data = file.read()
    loader.check_pt2_archive(data, path)
    contents = load_pt2(io.BytesIO(data))
    text: Any = contents.extra_files.get("signature.json", "")
    return dict(contents.exported_programs), text.decode("utf-8") if isinstance(text, bytes) else text
