"""The serving signatures of an export and ``signature.json``, the document that describes them.

``signature.json`` is written beside the artifact and embedded in it (``model.pt``'s extra files,
``model.pt2``'s extra files), so a client needs nothing else to call it::

    {"format": "torch_estimator.export/1", "default_signature": "serving_default",
     "signatures": {"serving_default": {"method_name": "tensorflow/serving/predict", "function": "forward",
       "inputs": {"x": {"dtype": "float32", "shape": [-1, 784]}},
       "outputs": {"classes": {"dtype": "int64", "shape": [-1]}, ...}}},
     "global_step": 2000, "torch_version": "2.14.1", "device": "cpu"}

``function`` is the TorchScript method to call (``forward`` for the default signature); shapes use ``-1``
for dynamic dimensions; a classification signature also has ``class_labels`` (a list, or null).
``torch_version`` and ``device`` (the kind of device the export was verified on) tell where a compiled
artifact (``model.aoti.pt2``) can run.

The file beside the artifact also has ``files``: each file of the export (``model.pt``, ``model.pt2``,
``assets.extra/...``) with its size and SHA-256, ``{"model.pt": {"bytes": 12345, "sha256": "9f86..."}}``,
which every load checks. The embedded copy cannot hold its own archive's hash; it is the beside copy
without ``files``, and a load refuses an export whose two copies disagree otherwise.

Example:
    >>> function_names(["serving_default", "classification", "eval", "alt:predict"], "serving_default")
    {'serving_default': 'forward', 'classification': 'classification', 'eval': 'eval_1', 'alt:predict': 'alt_predict'}
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import re
from collections.abc import Sequence
from typing import Any

import torch

from .outputs import CLASSIFY_METHOD_NAME, DEFAULT_SERVING_SIGNATURE_DEF_KEY
from .receivers import ServingInputReceiver, dtype_name

__all__ = ["FORMAT", "SIGNATURE_FILE", "FILES_KEY", "SignatureDef", "function_names", "output_info", "signature_document", "dumps"]

FORMAT = "torch_estimator.export/1"
SIGNATURE_FILE = "signature.json"
FILES_KEY = "files"

# Names a signature's method must not take: they are attributes of the module in Python or TorchScript.
_RESERVED = (
    set(dir(torch.nn.Module)) | set(dir(torch.jit.ScriptModule)) | set(dir(torch.jit.RecursiveScriptModule))
    | {"model", "receiver"} | set(keyword.kwlist)
)


@dataclasses.dataclass
class SignatureDef:
    """One serving signature: its inputs (a receiver), the export output it returns, and its method.

    Attributes:
        key: The signature's name, e.g. ``serving_default`` or ``"<alternative>:<output key>"``.
        function: The artifact's method (``forward`` for the default).
        receiver: Its receiver; ``receiver_name`` is ``""`` for the main one, else the alternative's name.
        output_key: The key of its export output in ``EstimatorSpec.export_outputs`` (after TF's rules).
        method_name: TF Serving's method name (predict, classify, regress).
        outputs: Output name to ``{"dtype", "shape"}``, filled from the eager runs.
        class_labels: For classification, the class names (or None).
    """

    key: str
    function: str
    receiver: ServingInputReceiver
    receiver_name: str
    output_key: str
    method_name: str
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    class_labels: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        inputs = {
            name: spec.signature_info()
            for name, spec in sorted(self.receiver.receiver_tensors.items())
        }
        document: dict[str, Any] = {
            "method_name": self.method_name,
            "function": self.function,
            "inputs": inputs,
            "outputs": {name: self.outputs[name] for name in sorted(self.outputs)},
        }
        if self.method_name == CLASSIFY_METHOD_NAME:
            document["class_labels"] = self.class_labels
        return document


def function_names(keys: Sequence[str], default: str = DEFAULT_SERVING_SIGNATURE_DEF_KEY) -> dict[str, str]:
    """A method name per signature key: ``forward`` for the default, else the key made an identifier
    (non-word characters become ``_``), with a numeric suffix where it would clash."""
    names: dict[str, str] = {}
    used = {"forward"}
    for key in keys:
        if key == default:
            names[key] = "forward"
            continue
        base = re.sub(r"\W", "_", key, flags=re.ASCII).strip("_") or "signature"
        if base[0].isdigit():
            base = "signature_" + base
        name, suffix = base, 0
        while name in used or name in _RESERVED or name.startswith("__"):
            suffix += 1
            name = f"{base}_{suffix}"
        names[key] = name
        used.add(name)
    return names


def output_info(observations: Sequence[torch.Tensor], where: str) -> dict[str, Any]:
    """``{"dtype", "shape"}`` of one output seen in several runs; dimensions that varied become -1.

    Raises:
        ValueError: If the dtype or rank changed between runs.
    """
    first = observations[0]
    shape = list(first.shape)
    for other in observations[1:]:
        if other.dtype != first.dtype or other.dim() != first.dim():
            raise ValueError(
                f"{where} changed dtype or rank between sample batches ({first.dtype}, {list(first.shape)} vs "
                f"{other.dtype}, {list(other.shape)}); a serving signature needs one dtype and rank."
            )
        shape = [-1 if a != b else a for a, b in zip(shape, other.shape)]
    return {"dtype": dtype_name(first.dtype), "shape": shape}


def signature_document(signatures: Sequence[SignatureDef], global_step: int, device: str = "cpu") -> dict[str, Any]:
    """The ``signature.json`` document (default signature first, then by key); ``device`` is the kind of
    device (``"cpu"``, ``"cuda"``) the export was made and verified on."""
    return {
        "format": FORMAT,
        "default_signature": DEFAULT_SERVING_SIGNATURE_DEF_KEY,
        "signatures": {s.key: s.to_json() for s in signatures},
        "global_step": int(global_step),
        "torch_version": str(torch.__version__),
        "device": device,
    }


def dumps(document: dict[str, Any]) -> str:
    """``signature.json``'s text: indented, keys in schema order, one line per tensor, file and list, a final
    newline."""
    return _format(document, "") + "\n"


def _format(value: Any, indent: str) -> str:
    flat = not isinstance(value, dict) or all(not isinstance(v, dict) for v in value.values()) and (
        "dtype" in value or "sha256" in value)
    if flat or not value:
        return json.dumps(value)
    inner = indent + "  "
    items = [f"{inner}{json.dumps(key)}: {_format(item, inner)}" for key, item in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + indent + "}"
