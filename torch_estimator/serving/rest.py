"""The wire formats of the REST server: TF Serving's JSON API and the Open Inference Protocol (KServe v2).

Pure translation between parsed JSON bodies and tensors, with no HTTP and no threads, so that every rule
can be tested on its own. A client mistake raises :class:`ServingError` with status 400 and a message that
names the input (or request key) and what was expected; :mod:`.server` turns it into ``{"error": ...}``.

TF Serving (``/v1``), as ``json_tensor.cc`` defines it:

* ``:predict`` takes ``{"signature_name"?, "instances": [...]}`` (row format: one element per example,
  an object of input name to value when the signature has several inputs) or ``{"inputs": ...}``
  (columnar: one value, or an object of name to whole tensors), and answers ``{"predictions": ...}`` or
  ``{"outputs": ...}`` to match; a single output is written without its name.
* ``:classify`` and ``:regress`` take ``{"signature_name"?, "context"?, "examples": [{feature: value}]}``.
  TF parsed ``tf.Example`` protos; here each feature names one of the signature's inputs, and its value
  (a number, a flat list as in ``tf.Example``, or a nested list) fills one example's slice of that input
  (the input's shape without the batch dimension). Features in ``context`` apply to every example.
  Results are ``{"results": [[[label, score], ...], ...]}`` and ``{"results": [value, ...]}``.

Bytes: ``{"b64": "<base64>"}`` (the only key) stands for the raw little-endian bytes of values of the
input's dtype, filling the part of the input at that position: for a ``uint8`` input of shape
``[-1, 28, 28]``, ``{"b64": <784 bytes>}`` is one 28x28 image in the row format, and a list of them a
batch in the columnar format. Any numeric dtype works (4 bytes per ``float32`` value); bool, complex and
bfloat16 inputs take numbers only. An output whose name ends in ``_bytes`` is written back the same way,
one ``{"b64": ...}`` per example. (TF Serving used b64 for string tensors, which TorchScript signatures
do not have.)

Numbers: JSON numbers become float64 or int64 arrays, then the loader's safe casts apply (int -> float,
float64 -> float32; float -> int is refused). ``NaN`` and ``Infinity`` are accepted and written, as TF
does. ``float32`` outputs are written with the shortest decimal that reads back as the same ``float32``
(TF's ``WriteDecimal``), so ``0.2`` stays ``0.2``.

Example:
    >>> import torch
    >>> predict_response({"y": torch.tensor([[0.2], [1.5]])}, row_format=True)
    {'predictions': [[0.2], [1.5]]}
    >>> predict_response({"a": torch.tensor([1, 2]), "b": torch.tensor([0.5, 0.25])}, row_format=True)
    {'predictions': [{'a': 1, 'b': 0.5}, {'a': 2, 'b': 0.25}]}
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torch_estimator.serving.loader import STRING, ExportedModel, InvalidInputError, encode_strings

__all__ = [
    "ServingError",
    "last_line",
    "PREDICT_METHOD_NAME",
    "CLASSIFY_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "TensorRequest",
    "parse_predict",
    "predict_response",
    "parse_examples",
    "classify_response",
    "regress_response",
    "model_metadata",
    "status_response",
    "V2Request",
    "parse_v2_infer",
    "v2_infer_response",
    "v2_model_metadata",
    "to_json_value",
    "check_float_range",
    "split_binary_body",
]

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
BYTES_SUFFIX = "_bytes"  # TF's kBytesTensorNameSuffix

# signature.json dtype -> TF's DataType name (metadata) and the Open Inference Protocol's datatype.
_TF_DTYPES = {
    "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16", "float32": "DT_FLOAT", "float64": "DT_DOUBLE",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
    "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64", "bool": "DT_BOOL",
    "complex64": "DT_COMPLEX64", "complex128": "DT_COMPLEX128", STRING: "DT_STRING",
}
_V2_DTYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", STRING: "BYTES",
}
_FROM_V2 = {v2: name for name, v2 in _V2_DTYPES.items() if name != STRING}
# numpy kinds a JSON array may have for each kind of declared datatype (b: bool, i/u: ints, f: floats).
_ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
_B64_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
               "uint32", "uint64"}


class ServingError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``.

    Attributes:
        status: The HTTP status code (400 for client mistakes, 404, 500 for model errors, ...).
        message: What went wrong, naming the input or key and what was expected.
        headers: Extra response headers (``Allow`` for 405).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def last_line(error: BaseException) -> str:
    """The last non-empty line of an error's message (TorchScript's are whole tracebacks), else its type's name.

    Example:
        >>> last_line(RuntimeError("Traceback:\\n  at forward\\nshape mismatch\\n"))
        'shape mismatch'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _bad(message: str) -> ServingError:
    return ServingError(400, message)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value: Any) -> bool:
    """A JSON object that is not a ``{"b64": ...}`` value (TF's ``IsElementObject``)."""
    return isinstance(value, dict) and not _is_b64(value)


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names_problem(given: Sequence[str], declared: Sequence[str]) -> str:
    missing = sorted(set(declared) - set(given))
    unknown = sorted(set(given) - set(declared))
    hint = ' ({"b64": ...} must hold a base64 string)' if "b64" in unknown else ""
    return "; ".join([f"missing {missing}"] * bool(missing) + [f"unknown {unknown}{hint}"] * bool(unknown))


# ----------------------------------------------------------------------------------------------------------
# JSON values -> arrays


def _decode_b64(text: str, where: str, info: Mapping[str, Any], shape: Sequence[int], name: str) -> np.ndarray:
    dtype = info["dtype"]
    if dtype not in _B64_DTYPES:
        raise _bad(
            f'{where} is a {{"b64": ...}} value, but input {name!r} is {dtype}: b64 values carry the raw '
            f"little-endian bytes of numeric inputs (int, uint, float16/32/64); send numbers instead."
        )
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise _bad(f"{where}: 'b64' is not valid base64 ({error}).") from error
    return _decode_raw(raw, where, dtype, shape, name)


def _decode_raw(raw: bytes, where: str, dtype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Raw little-endian bytes of ``dtype`` values, filling ``shape`` (one ``-1`` takes what is left)."""
    item = np.dtype(dtype).newbyteorder("<")
    if len(raw) % item.itemsize:
        raise _bad(
            f"{where}: {len(raw)} bytes are not a whole number of {dtype} values ({item.itemsize} bytes each)."
        )
    flat = np.frombuffer(raw, dtype=item).astype(np.dtype(dtype))
    shape = list(shape)
    if shape.count(-1) > 1:
        raise _bad(
            f"{where}: one b64 string cannot fill shape {shape} (several free dimensions); send a list of b64 "
            f"strings, one per leading element."
        )
    fixed = math.prod(d for d in shape if d != -1)
    fits = flat.size % fixed == 0 if -1 in shape and fixed else flat.size == fixed
    if not fits:
        raise _bad(
            f"{where} decodes to {flat.size} {dtype} values, which do not fill input {name!r}'s shape {shape} "
            f"at this position (-1: any size)."
        )
    return flat.reshape(shape)


def _walk(value: Any, where: str, info: Mapping[str, Any], shape: Sequence[int], name: str) -> np.ndarray:
    """The slow, precise conversion: b64 values, and an error that says where a value went wrong."""
    if isinstance(value, (bool, int, float)):
        array = np.asarray(value)
        if array.dtype.kind == "O":
            raise _bad(f"{where} is {value}, outside the range of a 64-bit integer (input {name!r}).")
        return array
    if _is_b64(value):
        return _decode_b64(value["b64"], where, info, shape, name)
    if isinstance(value, list):
        if not value:
            return np.zeros((0,))
        parts = [_walk(v, f"{where}[{i}]", info, shape[1:], name) for i, v in enumerate(value)]
        for i, part in enumerate(parts):
            if part.shape != parts[0].shape:
                raise _bad(
                    f"{where} is ragged: {where}[{i}] has shape {list(part.shape)} but {where}[0] has "
                    f"{list(parts[0].shape)}; input {name!r} takes a rectangular array (shape {list(info['shape'])})."
                )
        return np.stack(parts)
    hint = ' (bytes go in {"b64": "<base64>"})' if isinstance(value, (str, dict)) else ""
    raise _bad(
        f"{where} is {_json_type(value)} ({_brief(value)}); input {name!r} takes {info['dtype']} numbers{hint}."
    )


def _strings(value: Any, where: str, name: str) -> Any:
    """A string input's JSON value with ``{"b64": ...}`` values decoded to bytes (TF's binary strings)."""
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"] + "=" * (-len(value["b64"]) % 4), validate=True)
        except (binascii.Error, ValueError) as error:
            raise _bad(f"{where}: 'b64' is not valid base64 ({error}).") from error
    if isinstance(value, list):
        return [_strings(item, f"{where}[{i}]", name) for i, item in enumerate(value)]
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _bad(f"{where} is {_json_type(value)} ({_brief(value)}); input {name!r} takes strings "
               f"(dtype string; null or \"\" for no value).")


def _to_array(value: Any, where: str, info: Mapping[str, Any], shape: Sequence[int], name: str) -> np.ndarray:
    """A JSON value as an array; ``shape`` is the part of the input's declared shape that it fills."""
    if info["dtype"] == STRING:  # strings become the int64 fingerprints the model takes
        try:
            return encode_strings(_strings(value, where, name), name).numpy()
        except InvalidInputError as error:
            raise _bad(f"{where}: {error}") from None
    if not isinstance(value, (dict, str)) and value is not None:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            array = None  # ragged: _walk finds where
        if array is not None and array.dtype.kind in "biuf":
            return array
    try:
        return _walk(value, where, info, shape, name)
    except RecursionError:
        raise _bad(f"{where} is nested too deeply for input {name!r} (shape {list(info['shape'])}).") from None


def _check_float_range(array: np.ndarray, dtype: str, name: str) -> None:
    """Refuse finite values that would become infinite in the input's float dtype (1e39 in a float32)."""
    values = torch.from_numpy(np.ascontiguousarray(array))
    narrow = values.to(getattr(torch, dtype))
    overflow = torch.isinf(narrow) & torch.isfinite(values)
    if bool(overflow.any()):
        first = float(values[overflow][0])
        largest = float(torch.finfo(getattr(torch, dtype)).max)
        raise _bad(f"Input {name!r} holds {first:g}, outside the range of {dtype} (largest finite value "
                   f"{largest:g}); it would become infinite. Send values within range (or Infinity itself).")


def check_float_range(signature: Mapping[str, Any], inputs: Mapping[str, torch.Tensor]) -> None:
    """Refuse an input whose finite values would overflow to infinity when cast to its declared float dtype.

    JSON numbers arrive as float64; the loader casts them to the signature's dtype, where ``1e39`` would
    silently become ``inf`` in a float32 input.

    Example:
        >>> signature = {"inputs": {"x": {"dtype": "float32", "shape": [-1]}}}
        >>> check_float_range(signature, {"x": torch.tensor([1.0, float("inf")], dtype=torch.float64)})
        >>> check_float_range(signature, {"x": torch.tensor([1e39], dtype=torch.float64)})
        Traceback (most recent call last):
        ...
        torch_estimator.serving.rest.ServingError: Input 'x' holds 1e+39, outside the range of float32 (largest finite value 3.40282e+38); it would become infinite. Send values within range (or Infinity itself).

    Raises:
        ServingError: 400, naming the input and the value.
    """
    for name, tensor in inputs.items():
        info = signature["inputs"].get(name)
        if info is None or info["dtype"] not in ("float16", "bfloat16", "float32") or not tensor.is_floating_point():
            continue
        largest = torch.finfo(getattr(torch, info["dtype"])).max
        if torch.finfo(tensor.dtype).max > largest and tensor.numel():
            peak = float(tensor.abs().max())  # one pass; NaN or inf here takes the precise path
            if not peak <= largest:
                _check_float_range(tensor.numpy(), info["dtype"], name)


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}


# ----------------------------------------------------------------------------------------------------------
# Tensors -> JSON values


def to_json_value(tensor: torch.Tensor) -> Any:
    """A tensor as nested lists of JSON numbers (float32 and narrower: the shortest exact decimal).

    Raises:
        ServingError: 500 for complex tensors, which JSON cannot carry.
    """
    tensor = tensor.detach().cpu()
    if tensor.is_complex():
        raise ServingError(500, f"The model returned a {tensor.dtype} tensor, which JSON cannot represent.")
    if tensor.dtype in (torch.float16, torch.bfloat16, torch.float32):
        # numpy's float32 -> str is the shortest decimal that reads back as the same float32.
        return tensor.float().numpy().astype(str).astype(np.float64).tolist()
    return tensor.numpy().tolist()


def _b64(array: np.ndarray) -> dict[str, str]:
    little_endian = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
    return {"b64": base64.b64encode(little_endian.tobytes()).decode("ascii")}


def _b64_rows(tensor: torch.Tensor) -> Any:
    array = tensor.detach().cpu().numpy()
    return _b64(array) if array.ndim == 0 else [_b64(row) for row in array]


def _output_value(name: str, tensor: torch.Tensor) -> Any:
    return _b64_rows(tensor) if name.endswith(BYTES_SUFFIX) else to_json_value(tensor)


# ----------------------------------------------------------------------------------------------------------
# Predict


@dataclasses.dataclass(frozen=True)
class TensorRequest:
    """A parsed request: the signature to run and its inputs (not yet checked against the signature).

    Attributes:
        signature: The signature key.
        inputs: Input name to tensor, as the client sent them (the loader checks and casts them).
        row_format: True for ``instances`` (answer ``predictions``), False for ``inputs``.
    """

    signature: str
    inputs: dict[str, torch.Tensor]
    row_format: bool = False


def _signature(body: Mapping[str, Any], model: ExportedModel) -> tuple[str, dict[str, Any]]:
    key = body.get("signature_name")
    if key is None or key == "":
        key = model.default_signature
    if not isinstance(key, str):
        raise _bad(f"'signature_name' must be a string; received {_json_type(key)} ({_brief(key)}).")
    if key not in model.signatures:
        raise _bad(f'Serving signature name: "{key}" not found in signature def; '
                   f"available: {sorted(model.signatures)}.")
    return key, model.signatures[key]


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"The request body must be a JSON object; received {_json_type(body)}.")
    return body


def _rows(instances: Any, key: str, declared: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise _bad(f"Expecting 'instances' to be an list/array; received {_json_type(instances)}.")
    if not instances:
        raise _bad("No values in 'instances' array.")
    names = sorted(declared)
    named = _is_object(instances[0])
    if not named and len(names) > 1:
        raise _bad(
            f"'instances' is a plain list, but signature {key!r} takes several inputs {names}: send a list of "
            f"objects, one key per input."
        )
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if named != _is_object(instance):
            expected, got = ("object", _json_type(instance)) if named else ("value/list", "object")
            raise _bad(f"Expecting {expected} but got {got} at item {i} of 'instances' (all items must be alike).")
        if named:
            problem = _names_problem(list(instance), names)
            if problem:
                raise _bad(f"instances[{i}] has inputs {sorted(instance)} but signature {key!r} takes {names}: "
                           f"{problem}.")
            for name in names:
                columns[name].append(instance[name])
        else:
            columns[names[0]].append(instance)
    return {name: _stack_rows(rows, name, declared[name], named) for name, rows in columns.items()}


def _stack_rows(rows: list[Any], name: str, info: Mapping[str, Any], named: bool) -> np.ndarray:
    try:
        array = np.asarray(rows)
        if array.dtype.kind in "biuf":
            return array
    except (ValueError, TypeError, OverflowError):
        pass
    where = (lambda i: f"instances[{i}][{name!r}]") if named else (lambda i: f"instances[{i}]")
    shape = list(info["shape"])[1:]
    arrays = [_to_array(row, where(i), info, shape, name) for i, row in enumerate(rows)]
    for i, array in enumerate(arrays):
        if array.shape != arrays[0].shape:
            raise _bad(
                f"Expecting shape {list(arrays[0].shape)} but got: {list(array.shape)} at {where(i)}: every instance "
                f"of input {name!r} must have the same shape (declared {list(info['shape'])}, -1: any size)."
            )
    return np.stack(arrays)


def _columns(inputs: Any, key: str, declared: Mapping[str, Any]) -> dict[str, np.ndarray]:
    names = sorted(declared)
    if not _is_object(inputs):
        if len(names) > 1:
            raise _bad(
                f"'inputs' is a plain value/list, but signature {key!r} takes several inputs {names}: send an "
                f"object of input name to value."
            )
        info = declared[names[0]]
        return {names[0]: _to_array(inputs, "inputs", info, info["shape"], names[0])}
    problem = _names_problem(list(inputs), names)
    if problem:
        raise _bad(f"'inputs' has inputs {sorted(inputs)} but signature {key!r} takes {names}: {problem}.")
    return {
        name: _to_array(inputs[name], f"inputs[{name!r}]", declared[name], declared[name]["shape"], name)
        for name in names
    }


def parse_predict(body: Any, model: ExportedModel) -> TensorRequest:
    """A ``:predict`` body (row or columnar format) as a :class:`TensorRequest`.

    Raises:
        ServingError: 400, naming what is wrong.
    """
    body = _require_object(body)
    key, signature = _signature(body, model)
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist.")
    declared = signature["inputs"]
    if "instances" in body:
        return TensorRequest(key, _tensors(_rows(body["instances"], key, declared)), row_format=True)
    if "inputs" in body:
        return TensorRequest(key, _tensors(_columns(body["inputs"], key, declared)), row_format=False)
    raise _bad("Missing 'inputs' or 'instances' key.")


def predict_response(outputs: Mapping[str, torch.Tensor], row_format: bool) -> dict[str, Any]:
    """``{"predictions": ...}`` (row format) or ``{"outputs": ...}``; a single output loses its name.

    Raises:
        ServingError: 400 when the outputs cannot be split into rows (then the columnar format works).
    """
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": _output_value(names[0], outputs[names[0]])}
        return {"outputs": {name: _output_value(name, outputs[name]) for name in names}}
    batch = None
    for name in names:
        tensor = outputs[name]
        if tensor.dim() == 0:
            raise _bad(f"Tensor name: {name} has no shape information (a scalar cannot be split into rows); "
                       f"use the columnar 'inputs' format.")
        if batch is not None and tensor.shape[0] != batch:
            raise _bad(f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} expecting: {batch}; "
                       f"use the columnar 'inputs' format.")
        batch = tensor.shape[0]
    values = {name: _output_value(name, outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{name: values[name][i] for name in names} for i in range(batch or 0)]}


# ----------------------------------------------------------------------------------------------------------
# Classify and regress


def _example_value(value: Any, where: str, info: Mapping[str, Any], name: str) -> np.ndarray:
    """One example's feature: a number, a flat list (tf.Example) or nested list, shaped as one example."""
    shape = list(info["shape"])[1:]
    array = _to_array(value, where, info, shape, name)
    if shape.count(-1) > 1:
        return array
    fixed = math.prod(d for d in shape if d != -1)
    fits = array.size % fixed == 0 if -1 in shape and fixed else array.size == fixed
    if not fits:
        raise _bad(
            f"{where} has {array.size} value(s), but input {name!r} takes {fixed} per example "
            f"(shape {shape} without the batch dimension, -1: any size)."
        )
    return array.reshape(shape)


def parse_examples(body: Any, model: ExportedModel, method: str) -> TensorRequest:
    """A ``:classify`` or ``:regress`` body (``examples``, optional ``context``) as a :class:`TensorRequest`.

    Args:
        body: The parsed JSON body.
        model: The model it runs on.
        method: ``"classify"`` or ``"regress"``.

    Raises:
        ServingError: 400, naming what is wrong.
    """
    body = _require_object(body)
    key, signature = _signature(body, model)
    expected = CLASSIFY_METHOD_NAME if method == "classify" else REGRESS_METHOD_NAME
    if signature["method_name"] != expected:
        kind = "classification" if method == "classify" else "regression"
        raise _bad(
            f"Expected {kind} signature method_name to be {expected}. Was: {signature['method_name']} "
            f"(signature {key!r}; pick a {kind} signature with 'signature_name', or use :predict)."
        )
    context = body.get("context", {})
    if not _is_object(context):
        raise _bad(f"'context' must be a JSON object of feature name to value; received {_json_type(context)}.")
    examples = body.get("examples")
    if examples is None:
        raise _bad(f"When method is {method}, key 'examples' is expected and was not found.")
    if not isinstance(examples, list):
        raise _bad(f"Expecting 'examples' value to be an list/array; received {_json_type(examples)}.")
    if not examples:
        raise _bad("'examples' value is an empty array.")
    declared = signature["inputs"]
    names = sorted(declared)
    shared = {
        name: _example_value(value, f"context[{name!r}]", declared[name], name)
        for name, value in context.items() if name in declared
    }
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, example in enumerate(examples):
        if not _is_object(example):
            raise _bad(f"Example must be JSON object but got JSON {_json_type(example)} (examples[{i}]).")
        both = sorted(set(example) & set(context))
        if both:
            raise _bad(f"Features {both} appear in both 'context' and examples[{i}]; a context feature must not "
                       f"appear in examples.")
        problem = _names_problem(list(example) + list(context), names)
        if problem:
            raise _bad(f"examples[{i}] (with 'context') has features {sorted([*example, *context])} but signature "
                       f"{key!r} takes inputs {names}: {problem}.")
        for name in names:
            value = shared[name] if name in shared else _example_value(
                example[name], f"examples[{i}][{name!r}]", declared[name], name)
            columns[name].append(value)
    arrays = {}
    for name, values in columns.items():
        for i, value in enumerate(values):
            if value.shape != values[0].shape:
                raise _bad(f"examples[{i}][{name!r}] has shape {list(value.shape)} but examples[0] has "
                           f"{list(values[0].shape)}; every example must have the same shape.")
        arrays[name] = np.stack(values)
    return TensorRequest(key, _tensors(arrays))


def _scores_and_ids(outputs: Mapping[str, torch.Tensor], key: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    scores, classes = outputs.get("scores"), outputs.get("classes")
    if scores is None and classes is None:
        raise ServingError(500, f"Classification signature {key!r} returned neither 'classes' nor 'scores'.")
    arrays: list[np.ndarray | None] = []
    for name, tensor in (("scores", scores), ("classes", classes)):
        if tensor is None:
            arrays.append(None)
            continue
        tensor = tensor.detach().cpu()
        tensor = tensor[:, None] if tensor.dim() == 1 else tensor
        if tensor.dim() != 2:
            raise ServingError(500, f"Classification output {name!r} of signature {key!r} has shape "
                                    f"{list(tensor.shape)}; expected [batch] or [batch, classes].")
        arrays.append(tensor.float().numpy() if name == "scores" else tensor.long().numpy())
    return arrays[0], arrays[1]


def classify_response(outputs: Mapping[str, torch.Tensor], signature: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``{"results": [[[label, score], ...] per example]}`` from a classification signature's outputs.

    Labels come from the signature's ``class_labels`` (the class id as a string when it has none). With
    ``scores`` only, every class is listed in id order; with ``classes`` only, the score is 0.0 (as TF);
    with both of the same shape they pair up; ids with a full score row take their score from it.

    Raises:
        ServingError: 500 when the outputs do not fit together or an id has no label.
    """
    scores, ids = _scores_and_ids(outputs, key)
    labels = signature.get("class_labels")
    if ids is None and scores is not None:
        ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    assert ids is not None  # _scores_and_ids returns at least one of the two
    if scores is None:
        scores = np.zeros(ids.shape, dtype=np.float32)
    elif scores.shape != ids.shape:
        if scores.shape[0] != ids.shape[0] or (ids.size and not 0 <= ids.min() <= ids.max() < scores.shape[1]):
            raise ServingError(500, f"Classification outputs of signature {key!r} do not fit together: classes "
                                    f"{list(ids.shape)}, scores {list(scores.shape)}.")
        scores = np.take_along_axis(scores, ids, axis=1)
    outside = ids[(ids < 0) | (ids >= len(labels))] if labels else ids[ids < 0]
    if outside.size:
        raise ServingError(500, f"Signature {key!r} returned class id {int(outside[0])}, which has no label "
                                f"(class_labels: {len(labels or [])}).")
    label = (lambda i: labels[i]) if labels else str
    values = scores.astype(str).astype(np.float64).tolist()  # shortest float32 decimals, as to_json_value
    return {"results": [[[label(c), s] for c, s in zip(row_ids, row_scores)]
                        for row_ids, row_scores in zip(ids.tolist(), values)]}


def regress_response(outputs: Mapping[str, torch.Tensor], key: str) -> dict[str, Any]:
    """``{"results": [value per example]}`` from a regression signature's ``outputs``.

    Raises:
        ServingError: 500 when the output is not ``[batch]`` or ``[batch, 1]``.
    """
    tensor = outputs.get("outputs")
    if tensor is None:
        if len(outputs) != 1:
            raise ServingError(500, f"Regression signature {key!r} has no output named 'outputs'.")
        tensor = next(iter(outputs.values()))
    if not (tensor.dim() == 1 or (tensor.dim() == 2 and tensor.shape[1] == 1)):
        raise ServingError(500, f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                                f"{list(tensor.shape)} (signature {key!r}).")
    return {"results": to_json_value(tensor.reshape(-1))}


# ----------------------------------------------------------------------------------------------------------
# Status and metadata


def _tensor_info(name: str, info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dtype": _TF_DTYPES.get(info["dtype"], "DT_INVALID"),
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in info["shape"]], "unknown_rank": False},
        "name": name,
    }


def model_metadata(model_name: str, model: ExportedModel) -> dict[str, Any]:
    """TF Serving's ``GetModelMetadataResponse`` (``signature_def`` only) built from ``signature.json``.

    Dtypes become TF's names (``float32`` -> ``DT_FLOAT``), sizes strings (proto3 JSON of int64), and each
    tensor's ``name`` is its key (an export has no graph tensor names).
    """
    signatures = {
        key: {
            "inputs": {name: _tensor_info(name, info) for name, info in signature["inputs"].items()},
            "outputs": {name: _tensor_info(name, info) for name, info in signature["outputs"].items()},
            "method_name": signature["method_name"],
            "defaults": {},
        }
        for key, signature in model.signatures.items()
    }
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }


def status_response(entries: Sequence[tuple[int, str, str, str]]) -> dict[str, Any]:
    """``{"model_version_status": [...]}`` from ``(version, state, error_code, error_message)`` tuples."""
    return {
        "model_version_status": [
            {"version": str(version), "state": state, "status": {"error_code": code, "error_message": message}}
            for version, state, code, message in entries
        ]
    }


# ----------------------------------------------------------------------------------------------------------
# Open Inference Protocol (KServe v2)


@dataclasses.dataclass(frozen=True)
class V2Request:
    """A parsed ``/v2/.../infer`` body.

    Attributes:
        signature: The signature key (the default, or ``parameters.signature_name``).
        inputs: Input name to tensor.
        outputs: The output names asked for, or None for all.
        id: The request's ``id``, echoed in the response.
        binary_outputs: The outputs to write as binary data (the binary tensor data extension).
    """

    signature: str
    inputs: dict[str, torch.Tensor]
    outputs: list[str] | None
    id: str | None
    binary_outputs: frozenset[str] = frozenset()


def split_binary_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """``(JSON part, binary part)`` of a request body, as the binary tensor data extension frames it.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: the whole body is JSON).

    Example:
        >>> split_binary_body(b'{"inputs": []}\\x00\\x01', "14")
        (b'{"inputs": []}', b'\\x00\\x01')

    Raises:
        ServingError: 400 when the header is not a length within the body.
    """
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise _bad(f"Inference-Header-Content-Length must be the byte length of the JSON part of the body (at most "
                   f"{len(body)}); received {_brief(header_length)}.")
    size = int(text)
    return body[:size], body[size:]


class _Binary:
    """The binary part of a request, handed out in order to the inputs that declare ``binary_data_size``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = memoryview(data), 0

    def take(self, size: int, name: str) -> bytes:
        if self.offset + size > len(self.data):
            raise _bad(f"Input {name!r}: binary_data_size is {size} but only {len(self.data) - self.offset} bytes of "
                       f"binary data remain after the JSON part of the body.")
        part = bytes(self.data[self.offset:self.offset + size])
        self.offset += size
        return part


def _bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """``count`` BYTES elements from binary data: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise _bad(f"Input {name!r}: the BYTES binary data ends before element {i} of {count}.")
        size = int.from_bytes(raw[offset:offset + 4], "little")
        if offset + 4 + size > len(raw):
            raise _bad(f"Input {name!r}: BYTES element {i} declares {size} bytes but fewer remain.")
        elements.append(raw[offset + 4:offset + 4 + size])
        offset += 4 + size
    if offset != len(raw):
        raise _bad(f"Input {name!r}: {len(raw) - offset} bytes of BYTES binary data are left over after {count} "
                   f"element(s).")
    return elements


def _flat_strings(data: Any, name: str) -> list[bytes]:
    values = data if isinstance(data, list) else [data]
    flat: list[bytes] = []
    while values:
        value = values.pop(0)
        if isinstance(value, list):
            values[:0] = value
        elif isinstance(value, str):
            flat.append(value.encode("utf-8"))
        else:
            raise _bad(f"Input {name!r}: BYTES data must hold strings; received {_json_type(value)} "
                       f"({_brief(value)}).")
    return flat


def _v2_bytes(elements: list[bytes], shape: list[int], declared: Mapping[str, Any], name: str) -> np.ndarray:
    """BYTES elements as the raw bytes of the input's values: each fills the input's dimensions after ``shape``."""
    dtype, full = declared["dtype"], list(declared["shape"])
    if dtype not in _B64_DTYPES:
        raise _bad(f"Input {name!r}: BYTES elements carry the raw little-endian bytes of numeric inputs; input "
                   f"{name!r} is {dtype}, so send {_V2_DTYPES.get(dtype, dtype)} data instead.")
    if len(shape) > len(full):
        raise _bad(f"Input {name!r}: a BYTES tensor of shape {shape} has more dimensions than the input's "
                   f"{full}.")
    if len(elements) != math.prod(shape):
        raise _bad(f"Input {name!r}: shape {shape} needs {math.prod(shape)} BYTES elements but there are "
                   f"{len(elements)}.")
    inner = full[len(shape):]
    parts = [_decode_raw(raw, f"Input {name!r} BYTES element {i}", dtype, inner, name) for i, raw in enumerate(elements)]
    if not parts:
        return np.zeros([*shape, *[max(d, 0) for d in inner]], dtype=np.dtype(dtype))
    for i, part in enumerate(parts):
        if part.shape != parts[0].shape:
            raise _bad(f"Input {name!r}: BYTES element {i} fills shape {list(part.shape)} but element 0 fills "
                       f"{list(parts[0].shape)}; every element must hold the same number of values.")
    return np.stack(parts).reshape([*shape, *parts[0].shape])


def _v2_numeric_binary(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray:
    if datatype == "BF16":
        raise _bad(f"Input {name!r}: BF16 binary data is not supported; send FP32 data (it is cast to bfloat16).")
    item = np.dtype(_FROM_V2[datatype]).newbyteorder("<")
    needed = math.prod(shape) * item.itemsize
    if len(raw) != needed:
        raise _bad(f"Input {name!r}: shape {shape} of {datatype} needs {needed} bytes of binary data but "
                   f"binary_data_size is {len(raw)}.")
    return np.frombuffer(raw, dtype=item).astype(np.dtype(_FROM_V2[datatype])).reshape(shape)


def _v2_tensor(entry: Any, i: int, declared: Mapping[str, Any], binary: _Binary) -> tuple[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise _bad(f"inputs[{i}] must be an object with name, shape, datatype and data; received {_json_type(entry)}.")
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad(f"inputs[{i}]: 'parameters' must be an object; received {_json_type(parameters)}.")
    size = parameters.get("binary_data_size")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in entry and (k != "data" or size is None)]
    if missing:
        raise _bad(f"inputs[{i}] lacks {missing}; each input needs name, shape, datatype and data (or "
                   f"parameters.binary_data_size with the binary tensor data extension).")
    name, shape, datatype = entry["name"], entry["shape"], entry["datatype"]
    if not isinstance(name, str) or name not in declared:
        raise _bad(f"Unexpected inference input {name!r} (inputs[{i}]); the model takes {sorted(declared)}.")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"Input {name!r}: 'shape' must be a list of non-negative integers; received {_brief(shape)}.")
    raw = None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"Input {name!r}: parameters.binary_data_size must be a non-negative integer; received "
                       f"{_brief(size)}.")
        if "data" in entry:
            raise _bad(f"Input {name!r} has both 'data' and parameters.binary_data_size; send one of them.")
        raw = binary.take(size, name)
    if declared[name]["dtype"] == STRING:  # strings: BYTES tensors, sent to the model as fingerprints
        if datatype != "BYTES":
            raise _bad(f"Input {name!r} takes strings: send datatype BYTES; received {_brief(datatype)}.")
        where = f"inputs[{i}] ({name!r}) data"
        if raw is not None:
            try:
                array = encode_strings(_bytes_elements(raw, math.prod(shape), name), name).numpy()
            except InvalidInputError as error:
                raise _bad(f"{where}: {error}") from None
        else:
            array = _to_array(entry["data"], where, declared[name], [-1], name).reshape(-1)
        if array.size != math.prod(shape):
            raise _bad(f"Input {name!r}: shape {shape} needs {math.prod(shape)} values but 'data' has {array.size}.")
        return name, array.reshape(shape)
    expected = _V2_DTYPES.get(declared[name]["dtype"], "?")
    if datatype == "BYTES":
        elements = _bytes_elements(raw, math.prod(shape), name) if raw is not None else _flat_strings(entry["data"], name)
        return name, _v2_bytes(elements, shape, declared[name], name)
    if datatype not in _FROM_V2:
        raise _bad(f"Input {name!r}: unknown datatype {_brief(datatype)}; the model takes {expected} "
                   f"(one of {sorted(_FROM_V2)}, or BYTES holding raw {expected} values).")
    dtype = _FROM_V2[datatype]
    if raw is not None:
        return name, _v2_numeric_binary(raw, datatype, shape, name)
    info = {"dtype": declared[name]["dtype"], "shape": list(shape)}
    array = _to_array(entry["data"], f"inputs[{i}] ({name!r}) data", info, [-1], name)
    kind = "f" if dtype == "bfloat16" else np.dtype(dtype).kind
    if array.size and array.dtype.kind not in _ACCEPTED_KINDS[kind]:
        raise _bad(f"Input {name!r}: datatype {datatype} but 'data' holds {array.dtype.kind!r}-kind values "
                   f"({'floats' if array.dtype.kind == 'f' else 'integers'}); they cannot be converted safely.")
    if kind in "iu" and array.size:
        info_range = np.iinfo(np.dtype(dtype))
        low, high = int(array.min()), int(array.max())
        if low < info_range.min or high > info_range.max:
            raise _bad(f"Input {name!r}: datatype {datatype} but 'data' holds values in [{low}, {high}].")
    if kind == "f" and dtype != "float64" and array.size:
        _check_float_range(array, dtype, name)
    if array.size != math.prod(shape):
        raise _bad(f"Input {name!r}: shape {shape} needs {math.prod(shape)} values but 'data' has {array.size}.")
    array = array.reshape(shape)
    return name, array if dtype == "bfloat16" else array.astype(np.dtype(dtype))


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{where} must be true or false; received {_json_type(value)} ({_brief(value)}).")
    return value


def parse_v2_infer(body: Any, model: ExportedModel, binary: bytes = b"") -> V2Request:
    """An Open Inference Protocol ``infer`` body as a :class:`V2Request`.

    ``parameters.signature_name`` (an extension) picks a signature other than the default. With the binary
    tensor data extension, ``binary`` is the part of the body after the JSON (see :func:`split_binary_body`):
    inputs with ``parameters.binary_data_size`` take their bytes from it in order, and outputs are written as
    binary data when asked (``parameters.binary_data_output`` for all, ``outputs[i].parameters.binary_data``
    for one).

    Raises:
        ServingError: 400, naming what is wrong.
    """
    body = _require_object(body)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"'id' must be a string; received {_json_type(request_id)}.")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad(f"'parameters' must be an object; received {_json_type(parameters)}.")
    key, signature = _signature(parameters, model)
    binary_default = _flag(parameters.get("binary_data_output", False), "parameters.binary_data_output")
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise _bad("'inputs' must be a non-empty list of {name, shape, datatype, data} objects.")
    declared = signature["inputs"]
    arrays: dict[str, np.ndarray] = {}
    reader = _Binary(binary)
    for i, entry in enumerate(entries):
        name, array = _v2_tensor(entry, i, declared, reader)
        if name in arrays:
            raise _bad(f"Input {name!r} is given more than once.")
        arrays[name] = array
    if reader.offset != len(reader.data):
        raise _bad(f"{len(reader.data) - reader.offset} bytes of binary data after the JSON part of the body belong "
                   f"to no input (each binary input declares parameters.binary_data_size).")
    missing = sorted(set(declared) - set(arrays))
    if missing:
        raise _bad(f"Missing inference inputs {missing}; the model takes {sorted(declared)}.")
    wanted = body.get("outputs")
    names = None
    binary_outputs = set(signature["outputs"]) if binary_default else set()
    if wanted is not None:
        named = isinstance(wanted, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted)
        if not named:
            raise _bad("'outputs' must be a list of {\"name\": ...} objects.")
        names = [o["name"] for o in wanted]
        unknown = sorted(set(names) - set(signature["outputs"]))
        if unknown:
            raise _bad(f"Unexpected requested outputs {unknown}; the model returns {sorted(signature['outputs'])}.")
        for output in wanted:
            options = output.get("parameters") or {}
            if not isinstance(options, dict):
                raise _bad(f"Output {output['name']!r}: 'parameters' must be an object.")
            if _flag(options.get("binary_data", binary_default), f"Output {output['name']!r}: parameters.binary_data"):
                binary_outputs.add(output["name"])
            else:
                binary_outputs.discard(output["name"])
    return V2Request(key, _tensors(arrays), names, request_id, frozenset(binary_outputs))


def _v2_datatype(name: str, dtype: torch.dtype) -> str:
    if name.endswith(BYTES_SUFFIX):
        return "BYTES"
    return _V2_DTYPES.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch.").upper())


def _v2_output(name: str, tensor: torch.Tensor, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output's JSON entry, and its binary data when it is written as binary."""
    tensor = tensor.detach().cpu()
    if name.endswith(BYTES_SUFFIX):  # one BYTES element per row: the raw little-endian bytes of its values
        array = tensor.numpy()
        rows = [array] if array.ndim == 0 else list(array)
        elements = [np.ascontiguousarray(r).astype(r.dtype.newbyteorder("<")).tobytes() for r in rows]
        shape = [] if array.ndim == 0 else [len(rows)]
        entry = {"name": name, "datatype": "BYTES", "shape": shape}
        if binary:
            raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
            return {**entry, "parameters": {"binary_data_size": len(raw)}}, raw
        return {**entry, "data": [base64.b64encode(e).decode("ascii") for e in elements]}, None
    entry = {"name": name, "datatype": _v2_datatype(name, tensor.dtype), "shape": list(tensor.shape)}
    if binary:
        if tensor.dtype == torch.bfloat16:
            raw = tensor.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        elif tensor.is_complex():
            raise ServingError(500, f"The model returned a {tensor.dtype} tensor, which the protocol cannot carry.")
        else:
            array = tensor.contiguous().numpy()
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        return {**entry, "parameters": {"binary_data_size": len(raw)}}, raw
    return {**entry, "data": to_json_value(tensor.reshape(-1))}, None


def v2_infer_response(
    model_name: str, model: ExportedModel, outputs: Mapping[str, torch.Tensor], request: V2Request,
    blobs: list[bytes] | None = None,
) -> dict[str, Any]:
    """``{"model_name", "model_version", "id"?, "outputs": [{name, datatype, shape, data}]}`` (data flat).

    Outputs in ``request.binary_outputs`` carry ``parameters.binary_data_size`` instead of ``data``; their
    bytes are appended to ``blobs`` in order (send them after the JSON, with ``Inference-Header-Content-Length``
    set to the JSON's length). An output whose name ends in ``_bytes`` is a BYTES tensor with one element per
    row (the row's raw little-endian bytes; base64 strings in JSON).

    Raises:
        ValueError: If binary outputs are asked for without ``blobs`` to put them in.
    """
    names = request.outputs if request.outputs is not None else sorted(outputs)
    response: dict[str, Any] = {"model_name": model_name, "model_version": str(model.version)}
    if request.id is not None:
        response["id"] = request.id
    if request.binary_outputs and blobs is None:
        raise ValueError("v2_infer_response: binary outputs were asked for; pass a list as `blobs` for their bytes.")
    entries = []
    for name in names:
        entry, raw = _v2_output(name, outputs[name], name in request.binary_outputs)
        entries.append(entry)
        if raw is not None and blobs is not None:
            blobs.append(raw)
    response["outputs"] = entries
    return response


def v2_model_metadata(model_name: str, model: ExportedModel, versions: Sequence[int]) -> dict[str, Any]:
    """``{"name", "versions", "platform", "inputs", "outputs"}`` for the default signature."""
    signature = model.signatures[model.default_signature]
    describe = lambda tensors: [  # noqa: E731
        {"name": name, "datatype": _V2_DTYPES.get(info["dtype"], info["dtype"].upper()), "shape": list(info["shape"])}
        for name, info in sorted(tensors.items())
    ]
    return {
        "name": model_name,
        "versions": [str(v) for v in versions],
        "platform": f"pytorch_{model.format}",
        "inputs": describe(signature["inputs"]),
        "outputs": describe(signature["outputs"]),
    }
