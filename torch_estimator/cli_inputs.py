"""The inputs of ``torch-estimator run``, read as TF's ``saved_model_cli run`` reads them, without its risks.

* ``--inputs name=file`` reads ``.npy``, ``.npz`` (``file.npz[key]`` picks an array) and JSON files
  (``file.json[key]`` picks a member of an object). The format is told by the file's first bytes, not its
  name; pickle is never loaded (``allow_pickle=False``), and a pickle file is refused by name.
* ``--input_exprs name=expression`` takes numbers, strings, lists, tuples, arithmetic and numpy
  constructors such as ``np.ones((2, 784))`` or ``np.random.rand(2, 784).astype(np.float32)``. The
  expression is parsed with :mod:`ast` and evaluated node by node against a whitelist; nothing else (names,
  imports, attributes, subscripts, lambdas) is ever evaluated, and arrays larger than
  :data:`MAX_ELEMENTS` are refused before they are allocated.
* ``--input_examples name=[{feature: [values]}, ...]`` takes examples as ``:classify`` does: one dict of
  feature to value per example, stacked into one input per feature.

Example:
    >>> evaluate_expression("np.ones((2, 3), dtype=np.float32) * 0.5", "x").tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    >>> evaluate_expression("[[1, 2], [3, 4]]", "x").shape
    (2, 2)
    >>> evaluate_expression("__import__('os').system('true')", "x")
    Traceback (most recent call last):
    ...
    torch_estimator.cli_inputs.InputError: Input 'x': --input_exprs does not allow calling __import__('os').system; ...
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ALLOWED", "InputError", "MAX_ELEMENTS", "evaluate_expression", "read_input_file", "parse_examples",
           "examples_to_inputs"]

MAX_ELEMENTS = 100_000_000  # the largest array an expression may build (800 MB of float64)


class InputError(ValueError):
    """An input that cannot be read: the message names the input, what was wrong and how to fix it."""


# ----------------------------------------------------------------------------------------------------------
# --input_exprs: a whitelist evaluator

_NUMPY_NAMES = ("np", "numpy")


def _count(shape: Any) -> int:
    """Elements in an array of ``shape`` (an int or a sequence of ints)."""
    dims = [shape] if isinstance(shape, (int, np.integer)) else list(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"a shape must be ints; received {shape!r}")
    return math.prod(max(int(d), 0) for d in dims)


def _shape_arg(args: Sequence[Any], kwargs: Mapping[str, Any], key: str = "shape") -> int:
    if args:
        return _count(args[0])
    return _count(kwargs.get(key, 1)) if kwargs.get(key) is not None else 1


def _arange_count(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    values = list(args) + [kwargs[k] for k in ("start", "stop", "step") if k in kwargs]
    if len(values) == 1:
        start, stop, step = 0, values[0], 1
    else:
        start, stop, step = (values + [1])[:3]
    if not all(isinstance(v, (int, float, np.number)) for v in (start, stop, step)) or step == 0:
        return 0  # numpy raises its own error
    return max(0, math.ceil((stop - start) / step))


# numpy function -> number of elements it would allocate, from its (already evaluated) arguments.
_CONSTRUCTORS: dict[str, Callable[[Sequence[Any], Mapping[str, Any]], int]] = {
    "array": lambda a, k: 0,  # from values already built (and bounded) here
    "asarray": lambda a, k: 0,
    "ones": _shape_arg,
    "zeros": _shape_arg,
    "empty": _shape_arg,
    "full": _shape_arg,
    "ones_like": lambda a, k: 0,
    "zeros_like": lambda a, k: 0,
    "full_like": lambda a, k: 0,
    "arange": _arange_count,
    "linspace": lambda a, k: _count(a[2] if len(a) > 2 else k.get("num", 50)),
    "eye": lambda a, k: _count(a[0]) * _count(a[1] if len(a) > 1 and a[1] is not None else a[0] if a else 1),
    "identity": lambda a, k: _count(a[0]) ** 2 if a else 0,
}
_RANDOM: dict[str, Callable[[Sequence[Any], Mapping[str, Any]], int]] = {
    "rand": lambda a, k: _count(list(a)),
    "randn": lambda a, k: _count(list(a)),
    "random": lambda a, k: _shape_arg(a, k, "size"),
    "randint": lambda a, k: _count(k["size"]) if k.get("size") is not None else (
        _count(a[2]) if len(a) > 2 and a[2] is not None else 1),
    "uniform": lambda a, k: _count(k["size"]) if k.get("size") is not None else (
        _count(a[2]) if len(a) > 2 and a[2] is not None else 1),
    "normal": lambda a, k: _count(k["size"]) if k.get("size") is not None else (
        _count(a[2]) if len(a) > 2 and a[2] is not None else 1),
}
_CONSTANTS = {"pi": np.pi, "e": np.e, "inf": np.inf, "nan": np.nan, "newaxis": None}
_DTYPES = {"bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128", "str_", "bytes_"}
_METHODS = {"reshape", "astype", "copy", "flatten", "transpose"}
_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
ALLOWED = ("numbers, strings, True/False/None, lists, tuples, + - * / // % **, numpy constants and dtypes "
           "(np.pi, np.float32), numpy constructors (np." + ", np.".join(sorted(_CONSTRUCTORS)) + ", np.random."
           + ", np.random.".join(sorted(_RANDOM)) + ") and the array methods ." + ", .".join(sorted(_METHODS))
           + " (and .T)")


class _Evaluator:
    def __init__(self, name: str, flag: str = "--input_exprs", dicts: bool = False) -> None:
        self.name, self.flag, self.dicts = name, flag, dicts

    def refuse(self, what: str) -> InputError:
        return InputError(f"Input {self.name!r}: {self.flag} does not allow {what}; it takes numbers, strings, "
                          f"lists, arithmetic and numpy constructors such as np.ones((2, 784)) or "
                          f"np.arange(6).reshape(2, 3) (torch-estimator run --help lists them all).")

    def numpy_path(self, node: ast.AST) -> list[str] | None:
        """``["random", "rand"]`` for ``np.random.rand``; None if ``node`` is not an attribute of numpy."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in _NUMPY_NAMES and parts:
            return parts
        return None

    def size_check(self, count: int, what: str) -> None:
        if count > MAX_ELEMENTS:
            raise InputError(f"Input {self.name!r}: {what} would hold {count:,} elements, more than the "
                             f"{MAX_ELEMENTS:,} --input_exprs allows; read large inputs from a .npy file (--inputs).")

    def __call__(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return self(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float, complex, str, bytes, bool)) or node.value is None:
                return node.value
            raise self.refuse(f"the constant {node.value!r}")
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [self(element) for element in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        if isinstance(node, ast.Dict) and self.dicts and all(key is not None for key in node.keys):
            return {self(key): self(value) for key, value in zip(node.keys, node.values) if key is not None}
        if isinstance(node, ast.Name) and self.dicts and \
                node.id in ("true", "false", "null"):  # JSON's spellings
            return {"true": True, "false": False, "null": None}[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self(node.operand)
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return self.binary(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            raise self.refuse(f"the name {node.id!r}")
        return self.refuse_node(node)

    def refuse_node(self, node: ast.AST) -> Any:
        raise self.refuse(f"{type(node).__name__} expressions ({ast.unparse(node)[:40]!r})")

    def binary(self, node: ast.BinOp) -> Any:
        left, right = self(node.left), self(node.right)
        if isinstance(node.op, ast.Mult):  # list repetition: [0.0] * 784
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (list, tuple, str, bytes)) and isinstance(times, int):
                    self.size_check(len(seq) * times, "a repeated list")
        if (isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int)
                and right > 0 and left not in (0, 1, -1) and abs(left).bit_length() * right > 4096):
            raise InputError(f"Input {self.name!r}: {ast.unparse(node)[:40]} is too large a number.")
        try:
            return _OPERATORS[type(node.op)](left, right)
        except (TypeError, ValueError, ArithmeticError) as error:
            raise InputError(f"Input {self.name!r}: {ast.unparse(node)[:60]!r} fails: {error}.") from error

    def attribute(self, node: ast.Attribute) -> Any:
        path = self.numpy_path(node)
        if path is not None and len(path) == 1 and path[0] in _CONSTANTS:
            return _CONSTANTS[path[0]]
        if path is not None and len(path) == 1 and path[0] in _DTYPES:
            return getattr(np, path[0])
        if path is None and node.attr == "T":
            value = self(node.value)
            if isinstance(value, np.ndarray):
                return value.T
        raise self.refuse(f"the attribute {ast.unparse(node)!r}")

    def call(self, node: ast.Call) -> Any:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.refuse("* or ** arguments")
        path = self.numpy_path(node.func)
        if path is None and isinstance(node.func, ast.Attribute) and node.func.attr in _METHODS:
            target = self(node.func.value)
            if not isinstance(target, np.ndarray):
                raise self.refuse(f".{node.func.attr}() on a {type(target).__name__} (only on numpy arrays)")
            return self.invoke(getattr(target, node.func.attr), node, None)
        sizes: Callable[[Sequence[Any], Mapping[str, Any]], int] | None = None
        function: Callable[..., Any] | None = None
        if path is not None and len(path) == 1:
            sizes = _CONSTRUCTORS.get(path[0])
            function = getattr(np, path[0]) if sizes else None
        elif path is not None and len(path) == 2 and path[0] == "random":
            sizes = _RANDOM.get(path[1])
            function = getattr(np.random, path[1]) if sizes else None
        if sizes is None or function is None:
            raise self.refuse(f"calling {ast.unparse(node.func)}")
        return self.invoke(function, node, sizes)

    def invoke(self, function: Callable[..., Any], node: ast.Call,
               sizes: Callable[[Sequence[Any], Mapping[str, Any]], int] | None) -> Any:
        args = [self(a) for a in node.args]
        kwargs = {k.arg: self(k.value) for k in node.keywords if k.arg is not None}
        text = ast.unparse(node)[:60]
        try:
            if sizes is not None:
                self.size_check(sizes(args, kwargs), text)
            return function(*args, **kwargs)
        except InputError:
            raise
        except (TypeError, ValueError, ArithmeticError, MemoryError) as error:
            raise InputError(f"Input {self.name!r}: {text!r} fails: {error}.") from error


def evaluate_expression(text: str, name: str) -> np.ndarray:
    """The array an ``--input_exprs`` expression describes, evaluated against a whitelist (never ``eval``).

    Args:
        text: E.g. ``"np.ones((2, 784))"``, ``"[[0.5, 1.0]]"`` or ``"['small', 'large']"``.
        name: The input's name, for messages.

    Returns:
        The value as a numpy array.

    Raises:
        InputError: For a syntax error, anything outside the whitelist, or an array over MAX_ELEMENTS.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise InputError(f"Input {name!r}: {text!r} is not a valid expression ({error.msg}).") from None
    try:
        value = _Evaluator(name)(tree)
    except RecursionError:
        raise InputError(f"Input {name!r}: the expression is nested too deeply.") from None
    try:
        return np.asarray(value)
    except ValueError as error:
        raise InputError(f"Input {name!r}: {text[:60]!r} is not a rectangular array ({error}).") from error


# ----------------------------------------------------------------------------------------------------------
# --inputs: files

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def split_key(spec: str) -> tuple[str, str | None]:
    """``"data.npz[images]"`` -> ``("data.npz", "images")``; ``"x.npy"`` -> ``("x.npy", None)``."""
    match = re.fullmatch(r"(.+?)\[([^\[\]]+)\]", spec)
    return (match.group(1), match.group(2)) if match else (spec, None)


def _pick(keys: Sequence[str], key: str | None, name: str, path: str, what: str) -> str:
    if key is None:
        if len(keys) != 1:
            raise InputError(f"Input {name!r}: {path!r} holds {what} {list(keys)}; pick one with {path}[key].")
        return keys[0]
    if key not in keys:
        raise InputError(f"Input {name!r}: {path!r} has no {what[:-1]} {key!r}; it holds {list(keys)}.")
    return key


def read_input_file(spec: str, name: str) -> np.ndarray:
    """The array in ``file.npy``, ``file.npz[key]`` or ``file.json[key]`` (the key is optional when the
    file holds one array). The format is read from the file's first bytes.

    Raises:
        InputError: Naming the input and the file: missing, unreadable, pickled, or not one of these formats.
    """
    path, key = split_key(spec)
    if not os.path.exists(path) and os.path.exists(spec):
        path, key = spec, None  # a file whose name ends in [...]
    if not os.path.exists(path):
        raise InputError(f"Input {name!r}: file {path!r} not found.")
    if os.path.isdir(path):
        raise InputError(f"Input {name!r}: {path!r} is a directory; give a .npy, .npz or .json file.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise InputError(f"Input {name!r}: cannot read {path!r}: {error.strerror or error}.") from error
    if head.startswith(b"\x80") or path.endswith((".pkl", ".pickle")):
        raise InputError(f"Input {name!r}: {path!r} is a pickle file, which is never loaded (unpickling can run "
                         f"code); save the array with numpy.save (.npy) or numpy.savez (.npz) instead.")
    try:
        if head.startswith(_NPY_MAGIC):
            if key is not None:
                raise InputError(f"Input {name!r}: {path!r} is a .npy file; [key] applies to .npz and JSON files.")
            return np.load(path, allow_pickle=False)
        if head.startswith(_ZIP_MAGIC):
            with np.load(path, allow_pickle=False) as archive:
                return archive[_pick(list(archive.keys()), key, name, path, "arrays")]
        return _read_json(path, key, name, head)
    except InputError:
        raise
    except ValueError as error:
        if "pickle" in str(error).lower():  # an object array inside .npy/.npz
            raise InputError(f"Input {name!r}: {path!r} holds Python objects (an object array), which are never "
                             f"unpickled; save numbers or strings (a fixed-width string dtype).") from error
        raise InputError(f"Input {name!r}: cannot read {path!r}: {error}.") from error
    except (OSError, EOFError, KeyError) as error:
        raise InputError(f"Input {name!r}: cannot read {path!r}: {error}.") from error


def _read_json(path: str, key: str | None, name: str, head: bytes) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"Input {name!r}: {path!r} is not a .npy, .npz or JSON file (it starts with {head!r}; "
                         f"as JSON: {error}).") from None
    if isinstance(value, dict):
        value = value[_pick(sorted(value), key, name, path, "members")]
    elif key is not None:
        raise InputError(f"Input {name!r}: {path!r} holds a JSON {type(value).__name__}; [key] picks a member "
                         f"of a JSON object.")
    try:
        return np.asarray(value)
    except ValueError as error:
        raise InputError(f"Input {name!r}: {path!r} is not a rectangular array ({error}).") from error


# ----------------------------------------------------------------------------------------------------------
# --input_examples


def parse_examples(text: str, name: str) -> list[dict[str, Any]]:
    """``[{"size": ["medium"], "x": [0.0] * 784}, ...]`` (Python or JSON syntax, evaluated with the
    whitelist of ``--input_exprs``) as a list of feature dicts.

    Raises:
        InputError: If it is not a non-empty list of dicts with string keys.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise InputError(f"Input {name!r}: {text[:60]!r} is not a valid expression ({error.msg}); --input_examples "
                         f"takes a list of dicts of feature to values, e.g. '{name}=[{{\"x\": [1.0, 2.0]}}]'.") from None
    try:
        value = _Evaluator(name, "--input_examples", dicts=True)(tree)
    except RecursionError:
        raise InputError(f"Input {name!r}: the examples are nested too deeply.") from None
    if not isinstance(value, list) or not value or not all(
            isinstance(e, dict) and all(isinstance(k, str) for k in e) for e in value):
        raise InputError(f"Input {name!r}: --input_examples takes a non-empty list of dicts of feature name to "
                         f"values, e.g. '{name}=[{{\"x\": [1.0, 2.0]}}]'; received {type(value).__name__}.")
    return value


def examples_to_inputs(examples: Sequence[Mapping[str, Any]], declared: Mapping[str, Mapping[str, Any]],
                       name: str) -> dict[str, np.ndarray]:
    """One input per feature: the examples' values stacked, each reshaped to the signature's per-example shape
    (so tf.Example's flat lists fit), as ``:classify`` reads ``examples``.

    Raises:
        InputError: For features the signature lacks or misses, or values that do not fit its shapes.
    """
    inputs: dict[str, np.ndarray] = {}
    for feature in sorted(declared):
        rows = []
        for i, example in enumerate(examples):
            if feature not in example:
                raise InputError(f"Input {name!r}: example {i} has features {sorted(example)} but the signature "
                                 f"takes {sorted(declared)}: missing {feature!r}.")
            row = np.asarray(example[feature])
            shape = [d for d in declared[feature]["shape"][1:]]
            if -1 not in shape:
                if row.size != math.prod(shape):
                    raise InputError(f"Input {name!r}: example {i}'s {feature!r} has {row.size} value(s); the "
                                     f"signature takes {math.prod(shape)} (shape {shape} per example).")
                row = row.reshape(shape)
            rows.append(row)
        try:
            inputs[feature] = np.stack(rows)
        except ValueError as error:
            raise InputError(f"Input {name!r}: the examples' {feature!r} values differ in shape ({error}).") from None
    unknown = sorted({k for example in examples for k in example} - set(declared))
    if unknown:
        raise InputError(f"Input {name!r}: the examples have features {unknown} that the signature does not take "
                         f"(it takes {sorted(declared)}).")
    return inputs
