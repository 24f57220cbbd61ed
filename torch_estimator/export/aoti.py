"""The AOTInductor artifact, ``model.aoti.pt2``: every signature compiled ahead of time to native code.

Each signature is captured by ``torch.export`` (as for ``model.pt2``, the batch a dynamic dimension) and
compiled by AOTInductor into a shared library with the weights inside it; the package holds one compiled
model per signature, named as in ``model.pt2`` (the default signature is ``"model"``, the name
``torch._inductor.aoti_load_package`` loads; the others are named after their ``function``), and
``signature.json`` as the extra file ``extra/signature.json``. This is what
``torch._inductor.aoti_compile_and_package`` writes for one model, done for several: ``aot_compile`` per
model and ``package_pt2`` once.

The compiled code runs only where it was compiled: the same torch release, the same kind of device, a CPU
with the same vector instructions (or a GPU of the same architecture). ``signature.json`` records the
torch version and device kind, the package records the CPU or GPU, and loading checks all three first
(:func:`torch_estimator.serving.loader.load_aoti_package`). Compiling needs a C++ compiler and takes tens
of seconds per signature; the weights are not pickled (they live in the shared library).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from ..serving.loader import AOTI_FILE, load_aoti_package

__all__ = ["DEFAULT_MODEL", "MODEL_FILE", "compile_package", "load", "model_name"]

MODEL_FILE = AOTI_FILE
DEFAULT_MODEL = "model"  # the model torch._inductor.aoti_load_package loads


def model_name(function: str) -> str:
    """The compiled model of a signature whose method (``function`` in ``signature.json``) is ``function``."""
    return DEFAULT_MODEL if function == "forward" else function


def compile_package(
    programs: Mapping[str, torch.export.ExportedProgram], path: str, signature_text: str
) -> float:
    """Compile every program with AOTInductor into one package at ``path``; return the seconds it took.

    Raises:
        Whatever AOTInductor raises (the caller adds context).
    """
    from torch.export.pt2_archive._package import package_pt2

    start = time.perf_counter()
    files: dict[str, Any] = {}
    for name, program in programs.items():
        module = program.module(check_guards=False)
        args, kwargs = program.example_inputs
        files[name] = torch._inductor.aot_compile(module, args, kwargs, options={"aot_inductor.package": True})
        if not isinstance(files[name], list):
            raise TypeError(f"AOTInductor returned {type(files[name]).__name__}, not the package's files.")
    package_pt2(path, aoti_files=files, extra_files={"signature.json": signature_text})
    return time.perf_counter() - start


def load(path: str, device: torch.device | str = "cpu") -> tuple[dict[str, Any], str]:
    """Every signature's compiled model of a package, by ``function``, and its ``signature.json`` text.

    Raises:
        ValueError: As :func:`torch_estimator.serving.loader.load_aoti_package` (a mismatched torch,
            device or CPU: ``IncompatibleArtifactError``).
    """
    text, runners = load_aoti_package(path, device)
    return runners, text
