"""Load a torch_estimator export and call its signatures, checking inputs against ``signature.json``.

This module imports only torch and the standard library (never training code), so it can be copied on
its own next to a server. It reads ``model.pt`` (TorchScript), ``model.pt2`` (``torch.export``) or
``model.aoti.pt2`` (AOTInductor, compiled) and the ``signature.json`` embedded in it.

What a load checks, before torch sees a byte (see "Trust" in docs/serving.md):

* **Integrity.** ``signature.json`` beside the model records each file's size and SHA-256 (``files``); the
  artifact is read once, its hash checked, and torch loads those same bytes. A mismatch, a missing
  ``signature.json`` or a ``signature.json`` that disagrees with the copy embedded in the model is refused
  (:class:`ExportIntegrityError`), naming the file. SHA-256 because this module uses only the standard
  library (checkpoints use XXH3 from the ``xxhash`` package); ``sha256sum model.pt`` gives the same digest.
  It costs about 0.3 s per 100 MB, once per load.
* **No pickle.** ``model.pt2`` is checked member by member against what torch_estimator writes: tensors as
  raw bytes described by JSON, the program as JSON, no sample inputs. A member torch would unpickle (sample
  inputs, a weight or constant marked ``use_pickle``, a legacy ``.pt`` weights file, custom objects),
  AOTInductor code, or a symbolic expression or guard that is more than arithmetic on sizes (torch
  evaluates those with ``eval``/``exec``) is refused (:class:`UnsafeArchiveError`). ``torch.jit.load``
  reads TorchScript's own format, whose unpickler rebuilds only tensors and TorchScript types.
  ``model.aoti.pt2`` holds native code (a shared library per signature, the weights inside it) that runs
  when it is loaded; a package with any member torch would unpickle is refused before it is opened.
* **Not a sandbox.** Every artifact is a *program*: calling a signature (or, for ``model.aoti.pt2``,
  loading it) runs its code, which can do what torch operations or native code can do. Load and serve
  only exports you trust.

Serving an export::

    model = load("exports/mnist")                      # the highest numeric version under the base
    model.signatures["serving_default"]["inputs"]      # {'x': {'dtype': 'float32', 'shape': [-1, 784]}}
    model({"x": images})["classes"]                    # Tensors, numpy arrays or nested lists in; Tensors out
    model({"size": ["medium", "large"], "x": [1.0, 2.0]}) # inputs of dtype "string" take strings

Example:
    >>> import os, tempfile
    >>> base = tempfile.mkdtemp()
    >>> for name in ("1700000000", "1700000100", "temp-1700000200"):
    ...     os.mkdir(os.path.join(base, name))
    >>> list_versions(base)
    [1700000000, 1700000100]
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "SIGNATURE_FILE",
    "TORCHSCRIPT_FILE",
    "PT2_FILE",
    "AOTI_FILE",
    "FORMATS",
    "IncompatibleArtifactError",
    "FILES_KEY",
    "InvalidInputError",
    "ExportIntegrityError",
    "UnsafeArchiveError",
    "file_record",
    "check_pt2_archive",
    "ExportedModel",
    "load",
    "list_versions",
    "read_document",
    "resolve_export_dir",
    "STRING",
    "encode_strings",
    "fingerprint",
]

logger = logging.getLogger("torch_estimator")

FORMAT = "torch_estimator.export/1"
SIGNATURE_FILE = "signature.json"
TORCHSCRIPT_FILE = "model.pt"
PT2_FILE = "model.pt2"
AOTI_FILE = "model.aoti.pt2"
FORMATS = ("torchscript", "pt2", "aoti")
_PT2_DEFAULT_PROGRAM = "model"
STRING = "string"  # signature.json's dtype of an input sent as strings (encoding "fingerprint64")
_MISSING = -1  # the fingerprint of "no value": "" and null


class IncompatibleArtifactError(ValueError):
    """A compiled artifact (``model.aoti.pt2``) was built for another torch, device kind or CPU: loading it
    could crash the process, so it is refused before any of its code is loaded."""
FILES_KEY = "files"  # in the signature.json beside the model: relative path -> {"bytes", "sha256"}
_MAX_DOCUMENT_BYTES = 16 << 20  # a signature.json is a few kB; bound what is read


class InvalidInputError(ValueError):
    """A request does not fit the signature: unknown signature, missing or unknown inputs, bad dtype or shape.

    A server answers these with HTTP 400.
    """


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence torch's deprecation warnings for torch.jit (only those) inside the block: TorchScript is
    deprecated upstream, and docs/formats.md says so once instead of every load."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=r"`?torch\.jit\.", category=category)
        yield


class ExportIntegrityError(ValueError):
    """An export's file does not match what its ``signature.json`` records (size, content hash, or the copy
    of ``signature.json`` embedded in the model), or the record is missing: nothing of it is loaded."""


class UnsafeArchiveError(ValueError):
    """A ``model.pt2`` holds a member that torch would unpickle, or code it would run while loading."""


def _is_export_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in (SIGNATURE_FILE, TORCHSCRIPT_FILE, PT2_FILE, AOTI_FILE))


def list_versions(base_dir: str | os.PathLike[str]) -> list[int]:
    """The numeric version directories under ``base_dir``, ascending (others, like ``temp-*``, are ignored)."""
    base_dir = os.fspath(base_dir)
    try:
        names = os.listdir(base_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(name) for name in names if name.isdigit() and os.path.isdir(os.path.join(base_dir, name)))


def resolve_export_dir(path: str | os.PathLike[str]) -> tuple[str, int | None]:
    """``(export directory, version)`` for a version directory, or for a base directory (its highest version).

    Raises:
        FileNotFoundError: If ``path`` does not exist or holds no export.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No export at {path!r}: no such directory.")
    if _is_export_dir(path):
        name = os.path.basename(os.path.normpath(path))
        return path, int(name) if name.isdigit() else None
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"No export found in {path!r}: expected {SIGNATURE_FILE} and {TORCHSCRIPT_FILE}, or numeric version "
            f"directories holding them."
        )
    return os.path.join(path, str(versions[-1])), versions[-1]


def _parse_document(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source} is not valid JSON: {error}.") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise ValueError(f"{source} is not a torch_estimator export signature (format {found!r}, expected {FORMAT!r}).")
    signatures = document.get("signatures")
    if not isinstance(signatures, dict) or not signatures or document.get("default_signature") not in signatures:
        raise ValueError(f"{source} declares no signatures, or its default_signature is not among them.")
    return document


def _read_file(path: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (a FIFO or device is refused without blocking), at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ExportIntegrityError(f"{path} is not a regular file; an export holds regular files only.")
        if limit is not None and info.st_size > limit:
            raise ExportIntegrityError(f"{path} is {info.st_size} bytes, more than a signature.json can be ({limit}).")
        return file.read()


def file_record(data: bytes) -> dict[str, Any]:
    """What ``signature.json``'s ``files`` records for a file: ``{"bytes": size, "sha256": hex digest}``.

    Example:
        >>> file_record(b"abc")["sha256"][:16], file_record(b"abc")["bytes"]
        ('ba7816bf8f01cfea', 3)
    """
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _beside_document(path: str) -> tuple[str, dict[str, Any]]:
    beside = os.path.join(path, SIGNATURE_FILE)
    try:
        data = _read_file(beside, _MAX_DOCUMENT_BYTES)
    except FileNotFoundError:
        raise ExportIntegrityError(
            f"No {SIGNATURE_FILE} beside the model in {path!r}: it records the content hash of each file, so the "
            f"export cannot be verified and is refused. Copy the whole version directory, or export again."
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{beside} is not UTF-8 text: {error}.") from error
    return beside, _parse_document(text, beside)


def _verified_artifact(path: str, name: str, document: dict[str, Any], source: str) -> bytes:
    """The artifact's bytes, checked against ``document``'s record of them."""
    records = document.get(FILES_KEY)
    record = records.get(name) if isinstance(records, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise ExportIntegrityError(
            f"{source} records no content hash for {name} (its `{FILES_KEY}` entry is missing), so "
            f"{os.path.join(path, name)} cannot be verified and is refused. Exports written by this version of "
            f"torch_estimator record one: export the model again."
        )
    file = os.path.join(path, name)
    data = _read_file(file)
    actual = file_record(data)
    if actual != {"bytes": record.get("bytes"), "sha256": record["sha256"]}:
        what = (f"it is {actual['bytes']} bytes, {source} records {record.get('bytes')}"
                if actual["bytes"] != record.get("bytes") else
                f"its SHA-256 is {actual['sha256']}, {source} records {record['sha256']}")
        raise ExportIntegrityError(
            f"{file} is damaged or was altered after export: {what}. It is not loaded; export again or restore "
            f"the version directory from a good copy."
        )
    return data


def _embedded_text(data: bytes, file: str) -> str:
    """The ``signature.json`` embedded in a model archive's bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zipped:
            entries = [n for n in zipped.namelist() if ("/" + n).endswith("/extra/" + SIGNATURE_FILE)]
            if len(entries) != 1:
                raise ExportIntegrityError(f"{file} does not embed exactly one {SIGNATURE_FILE}; it is not loaded.")
            return zipped.read(entries[0]).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise ExportIntegrityError(f"{file} is not a model archive ({error}); it is not loaded.") from error


def _agree(beside: dict[str, Any], beside_path: str, embedded_text: str, file: str) -> None:
    """The beside copy (less its ``files``) must be the embedded one: show, load and serve then agree."""
    embedded = _parse_document(embedded_text, f"The {SIGNATURE_FILE} embedded in {file}")
    mine = {key: value for key, value in beside.items() if key != FILES_KEY}
    if mine != embedded:
        keys = sorted(k for k in set(mine) | set(embedded) if mine.get(k) != embedded.get(k))
        raise ExportIntegrityError(
            f"{beside_path} disagrees with the copy embedded in {file} (differing keys: {keys}); one of them was "
            f"edited or damaged after export, so the export is refused. Export again, or restore the version "
            f"directory from a good copy."
        )


_FILES = {"torchscript": TORCHSCRIPT_FILE, "pt2": PT2_FILE, "aoti": AOTI_FILE}


def _default_format(path: str) -> str:
    """The first of ``model.pt``, ``model.pt2`` and ``model.aoti.pt2`` present (``torchscript`` if none)."""
    return next((key for key in FORMATS if os.path.isfile(os.path.join(path, _FILES[key]))), "torchscript")


def _verified(path: str, format: str | None) -> tuple[dict[str, Any], str, bytes]:
    """``(signature.json beside, artifact file, its verified bytes)``; the embedded copy agrees."""
    format = format if format is not None else _default_format(path)
    if format not in _FILES:
        raise ValueError(f"`format` must be 'torchscript', 'pt2', 'aoti' or None; received {format!r}.")
    name = _FILES[format]
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No {name} in {path!r}.")
    beside_path, beside = _beside_document(path)
    data = _verified_artifact(path, name, beside, beside_path)
    if format == "pt2":
        check_pt2_archive(data, file)
    _agree(beside, beside_path, _embedded_text(data, file), file)
    return beside, file, data


def read_document(
    export_dir: str | os.PathLike[str], *, format: str | None = None
) -> tuple[str, int | None, dict[str, Any]]:
    """``(export directory, version, signature.json)`` without loading the model, verified as :func:`load`
    verifies it: the artifact's content hash, and the embedded copy of ``signature.json`` agreeing.

    Args:
        export_dir: A version directory, or a base directory (its highest version).
        format: The artifact to verify (default: the one :func:`load` would load).

    Raises:
        FileNotFoundError: If there is no export there.
        ExportIntegrityError: If the artifact or ``signature.json`` does not match, or is missing.
        UnsafeArchiveError: If ``model.pt2`` holds members that need unpickling.
        ValueError: If the signature is not a torch_estimator export's.
    """
    path, version = resolve_export_dir(export_dir)
    document, _, _ = _verified(path, format)
    return path, version, document


# ----------------------------------------------------------------------------------------------------------
# model.pt2 without pickle: every member must be one that torch.export's loader reads without unpickling.

_PT2_MEMBER = re.compile(
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/(?P<model>\w+)\.json"
    r"|data/sample_inputs/(?P<sample>\w+)\.pt"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+"
    r"|data/weights/(?P<weights>\w+)_weights_config\.json|data/constants/(?P<constants>\w+)_constants_config\.json"
    r"|extra/[\w.-]+"
)
_PAYLOAD_NAME = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
# Symbolic sizes (sympy.sympify, i.e. eval) and guards (exec) are code torch runs while loading: they may only
# be arithmetic and comparisons on sizes, symbols like s0, and these names.
_EXPRESSION_NAMES = frozenset(  # a list of words reads best as one string
    "Symbol Integer Rational Float Add Mul Pow Max Min Mod Abs Eq Ne Lt Le Gt Ge And Or Not oo "  # noqa: SIM905
    "positive negative nonnegative nonpositive integer real finite zero nonzero True False None "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural "
    "FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt "
    "RoundDecimal ToFloat Identity L size stride storage_offset math isnan inf and or not".split()
)
_EXPRESSION_TOKEN = re.compile(
    r"\s+|\d+(\.\d+)?(e[-+]?\d+)?|'\w*'|(?P<name>[A-Za-z]\w*)|\.(?=(size|stride|storage_offset|isnan|inf)\b)"
    r"|\*\*|//|[-+*/%(),\[\]<>=!]=?"
)
_SYMBOL = re.compile(r"[a-z]+\d+")


def _check_expression(text: Any, where: str) -> None:
    if not isinstance(text, str) or len(text) > 10_000:
        raise UnsafeArchiveError(f"{where} is not a symbolic size expression; the archive is refused.")
    at = 0
    while at < len(text):
        match = _EXPRESSION_TOKEN.match(text, at)
        name = match.group("name") if match else None
        if match is None or (name is not None and name not in _EXPRESSION_NAMES and not _SYMBOL.fullmatch(name)):
            raise UnsafeArchiveError(
                f"{where} holds {text[:200]!r}, which is not arithmetic on sizes (torch would evaluate it as Python "
                f"while loading); the archive is refused."
            )
        at = match.end()


def _check_program(program: Any, where: str) -> None:
    """The code strings torch evaluates while loading a program's JSON: guards and symbolic expressions, and
    the guards it derives from non-tensor inputs."""
    if not isinstance(program, dict):
        raise UnsafeArchiveError(f"{where} is not a torch.export program; the archive is refused.")
    graph = program.get("graph_module", {}).get("graph", {}) if isinstance(program.get("graph_module"), dict) else {}
    inputs = graph.get("inputs") if isinstance(graph, dict) else None
    if not isinstance(inputs, list) or any(not isinstance(i, dict) or list(i) != ["as_tensor"] for i in inputs):
        # torch writes a guard (exec'd while loading) quoting a non-tensor input's value unescaped
        raise UnsafeArchiveError(f"{where} takes inputs other than tensors, which torch_estimator never exports; "
                                 f"the archive is refused.")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafeArchiveError(f"{where} has malformed guards_code; the archive is refused.")
    for guard in guards:
        _check_expression(guard, f"{where} guard")
    stack: list[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    _check_expression(value, f"{where} expression")
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(value for value in item if isinstance(value, (dict, list)))


def check_pt2_archive(data: bytes, source: str) -> None:
    """Refuse a ``model.pt2`` (its bytes) that torch could not load without unpickling or running code.

    Allowed: one root folder holding the archive's format and version records, per program ``models/<p>.json``
    (no guard or size expression beyond arithmetic on sizes), an empty ``data/sample_inputs/<p>.pt``, raw
    tensors ``data/weights/weight_<n>`` and ``data/constants/tensor_<n>`` described by JSON configs whose
    entries all have ``use_pickle: false``, and ``extra/`` text files.

    Raises:
        UnsafeArchiveError: Naming the member and why it is refused.
        ExportIntegrityError: If ``data`` is not a zip archive.
    """
    try:
        zipped = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise ExportIntegrityError(f"{source} is not a model archive ({error}); it is not loaded.") from error
    with zipped:
        infos = zipped.infolist()
        names = [info.filename for info in infos]
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names) or len(set(names)) != len(names):
            raise UnsafeArchiveError(
                f"{source} is not laid out as torch.export writes an archive (one root folder, unique members); "
                f"it is refused."
            )
        models, samples, configs = set(), {}, {}
        for info in infos:
            relative = info.filename.split("/", 1)[1]
            match = _PT2_MEMBER.fullmatch(relative)
            if match is None:
                raise UnsafeArchiveError(
                    f"{source} holds member {relative!r}, which torch_estimator never writes: torch could unpickle "
                    f"it or load it as compiled code (sample inputs, pickled weights, custom objects, AOTInductor). "
                    f"The archive is refused; export the model again with torch_estimator."
                )
            if match.group("model"):
                models.add(match.group("model"))
            elif match.group("sample"):
                samples[match.group("sample")] = info.file_size
            elif match.group("weights") or match.group("constants"):
                kind = "weights" if match.group("weights") else "constants"
                configs[(kind, match.group(kind))] = info.filename
        for model in sorted(models):
            if samples.get(model, 0) != 0:
                raise UnsafeArchiveError(
                    f"{source} holds sample inputs for program {model!r} (data/sample_inputs/{model}.pt), which torch "
                    f"would unpickle; torch_estimator writes none. The archive is refused."
                )
            for kind in ("weights", "constants"):
                member = configs.get((kind, model))
                if member is None:
                    raise UnsafeArchiveError(f"{source} lacks the {kind} config of program {model!r}; it is refused.")
                try:
                    entries = json.loads(zipped.read(member))["config"]
                    items = list(entries.items())
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    raise UnsafeArchiveError(f"{source}: {member} is not a payload config ({error}).") from error
                for fqn, entry in items:
                    if not isinstance(entry, dict) or entry.get("use_pickle") is not False or not (
                            isinstance(entry.get("path_name"), str) and _PAYLOAD_NAME[kind].fullmatch(entry["path_name"])):
                        raise UnsafeArchiveError(
                            f"{source}: {kind[:-1]} {fqn!r} of program {model!r} is stored with pickle (or as an "
                            f"object, not raw tensor bytes), which torch would unpickle; the archive is refused."
                        )
            try:
                program = json.loads(zipped.read(f"{next(iter(roots))}/models/{model}.json"))
            except ValueError as error:
                raise UnsafeArchiveError(f"{source}: models/{model}.json is not JSON ({error}).") from error
            _check_program(program, f"{source}: program {model!r}")


def fingerprint(value: str | bytes) -> int:
    """FNV-1a 64 of the UTF-8 bytes, top bit cleared: signature.json's encoding ``"fingerprint64"``.

    The same function as ``torch_estimator.export.receivers.fingerprint`` (the one training uses), copied so
    that this module imports nothing from the package.

    Example:
        >>> fingerprint("medium")
        5145935824092275382
    """
    h = 0xCBF29CE484222325
    for byte in value if isinstance(value, bytes) else value.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _encode_string_item(value: Any, name: str) -> int:
    if isinstance(value, str):
        return fingerprint(value) if value else _MISSING
    if isinstance(value, bytes):
        return fingerprint(value) if value else _MISSING
    if value is None or (isinstance(value, float) and value != value):
        return _MISSING
    if isinstance(value, int) and not isinstance(value, bool):  # a fingerprint computed by the client
        return value
    raise InvalidInputError(
        f"Input {name!r} takes strings (or their int64 fingerprints); received {type(value).__name__} {value!r}."
    )


def encode_strings(value: Any, name: str) -> torch.Tensor:
    """A string input's values as the int64 tensor the model receives: each string's :func:`fingerprint`
    (``""`` and None: ``-1``, no value); integers are taken as fingerprints already.

    Args:
        value: A string, or a (nested) list or numpy array of strings or bytes; or an integer tensor/array.
        name: The input's name, for messages.

    Raises:
        InvalidInputError: For values that are neither strings nor integers, or ragged lists.

    Example:
        >>> encode_strings([["small", ""], ["medium", None]], "size").tolist()
        [[9037846435736361356, -1], [5145935824092275382, -1]]
    """
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise InvalidInputError(f"Input {name!r} takes strings (or their int64 fingerprints); received a "
                                    f"{str(value.dtype).removeprefix('torch.')} tensor.")
        return value.detach().to(torch.int64)
    array = value if hasattr(value, "__array__") and hasattr(value, "dtype") else None
    if array is not None and array.dtype.kind in "iu":
        return torch.as_tensor(array.astype("int64"))
    nested = _nested(value, name)
    codes = [_encode_string_item(item, name) for item in nested[0]]
    return torch.tensor(codes, dtype=torch.int64).reshape(nested[1])


def _nested(value: Any, name: str) -> tuple[list[Any], list[int]]:
    """``(flat items, shape)`` of a (nested) list, tuple or array of scalars."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return [value], []
    parts = [_nested(item, name) for item in value]
    if any(part[1] != parts[0][1] for part in parts):
        raise InvalidInputError(f"Input {name!r} is ragged: its lists differ in length; send a rectangular array.")
    shape = [len(parts)] + (parts[0][1] if parts else [])
    return [item for part in parts for item in part[0]], shape


def _dtype(name: str) -> torch.dtype:
    if name == STRING:
        return torch.int64
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"signature.json names an unknown dtype {name!r}.")
    return dtype


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (str, bytes)) or value is None:
        raise InvalidInputError(
            f"Input {name!r} must be numbers (a tensor, array or nested list); received {type(value).__name__}."
        )
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        if hasattr(value, "copy") and hasattr(value, "__array__"):  # numpy with negative strides
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                return torch.as_tensor(value.copy())
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise InvalidInputError(f"Input {name!r} is not a rectangular array of numbers: {reason}.") from error


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "int"


_SAFE = {("bool", "int"), ("bool", "float"), ("int", "float"), ("float", "complex"), ("int", "complex")}


def _cast(tensor: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """``tensor`` as ``dtype`` if no information is lost in kind (float -> int is refused) or range."""
    if tensor.dtype == dtype:
        return tensor
    source, target = _kind(tensor.dtype), _kind(dtype)
    if source != target and (source, target) not in _SAFE:
        raise InvalidInputError(
            f"Input {name!r} expects {str(dtype).removeprefix('torch.')} but received "
            f"{str(tensor.dtype).removeprefix('torch.')} values; a {source} cannot be converted to {target} safely."
        )
    if source == target == "int" and tensor.numel():
        info = torch.iinfo(dtype)
        low, high = int(tensor.min()), int(tensor.max())
        if low < info.min or high > info.max:
            raise InvalidInputError(
                f"Input {name!r} expects {str(dtype).removeprefix('torch.')} but holds values in [{low}, {high}], "
                f"outside its range [{info.min}, {info.max}]."
            )
    return tensor.to(dtype)


class ExportedModel:
    """A loaded export: its signatures, and ``__call__`` to run one.

    Attributes:
        path: The version directory loaded.
        version: Its number (the directory name), or None if it is not numeric.
        format: ``"torchscript"``, ``"pt2"`` or ``"aoti"``.
        signatures: ``signature.json``'s ``signatures``: key to ``method_name``, ``function``, ``inputs``,
            ``outputs`` (and ``class_labels`` for classification).
        default_signature: The key used when ``__call__`` gets no signature (``serving_default``).
        global_step: The training step the export was made from.
        document: The whole ``signature.json``.
        device: Where inputs are moved and the model runs.
    """

    def __init__(
        self, path: str, version: int | None, format: str, document: dict[str, Any],
        runners: Mapping[str, Any], device: torch.device,
    ) -> None:
        self.path, self.version, self.format, self.document, self.device = path, version, format, document, device
        self.signatures: dict[str, dict[str, Any]] = document["signatures"]
        self.default_signature: str = document["default_signature"]
        self.global_step: int | None = document.get("global_step")
        self._runners = dict(runners)  # function name -> callable(dict) -> dict

    def signature_def(self, signature: str | None = None) -> dict[str, Any]:
        """The signature named ``signature`` (default: the default one).

        Raises:
            InvalidInputError: If there is no such signature.
        """
        key = self.default_signature if signature is None else signature
        if key not in self.signatures:
            raise InvalidInputError(f"Serving signature name: {key!r} not found; available: {sorted(self.signatures)}.")
        return self.signatures[key]

    def prepare(self, inputs: Any, signature: str | None = None) -> dict[str, torch.Tensor]:
        """Check and convert ``inputs`` for a signature: names, dtypes (safe casts only), shapes.

        Args:
            inputs: A dict of input name to Tensor, numpy array or nested list; a signature with a single
                input also takes the value alone.

        Raises:
            InvalidInputError: Naming the input and what is wrong.
        """
        key = self.default_signature if signature is None else signature
        declared = self.signature_def(signature)["inputs"]
        if not isinstance(inputs, Mapping):
            if len(declared) != 1:
                raise InvalidInputError(
                    f"Signature {key!r} takes inputs {sorted(declared)}: pass a dict of name to value."
                )
            inputs = {next(iter(declared)): inputs}
        missing = sorted(set(declared) - set(inputs))
        unknown = sorted(set(inputs) - set(declared), key=str)
        if missing or unknown:
            problem = "; ".join([f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown))
            raise InvalidInputError(f"Signature {key!r} takes inputs {sorted(declared)}: {problem}.")
        prepared = {}
        for name, info in declared.items():
            if info["dtype"] == STRING:
                tensor = encode_strings(inputs[name], name)
            else:
                tensor = _cast(_as_tensor(inputs[name], name), _dtype(info["dtype"]), name)
            shape = info["shape"]
            if tensor.dim() != len(shape) or any(d != -1 and d != s for d, s in zip(shape, tensor.shape)):
                raise InvalidInputError(
                    f"Input {name!r} expects shape {shape} (-1: any size) but received {list(tensor.shape)}."
                )
            prepared[name] = tensor.to(self.device)
        return prepared

    def __call__(self, inputs: Any, signature: str | None = None) -> dict[str, torch.Tensor]:
        """Run a signature (default: the default one) on ``inputs``.

        Args:
            inputs: As :meth:`prepare` takes them.
            signature: A key of :attr:`signatures`.

        Returns:
            Output name to Tensor (on :attr:`device`; ``.cpu().numpy()`` gives arrays).

        Raises:
            InvalidInputError: For an unknown signature or inputs that do not fit it.
        """
        prepared = self.prepare(inputs, signature)
        function = self.signature_def(signature)["function"]
        with torch.no_grad():
            outputs = self._runners[function](prepared)
        return {name: value.detach() for name, value in outputs.items()}

    def __repr__(self) -> str:
        return f"ExportedModel(path={self.path!r}, format={self.format!r}, signatures={sorted(self.signatures)})"


def _load_torchscript(data: bytes, file: str, device: torch.device, document: dict[str, Any]) -> dict[str, Any]:
    with _quiet_torchscript():
        module = torch.jit.load(io.BytesIO(data), map_location=device)
    module.eval()
    runners = {}
    for key, signature in document["signatures"].items():
        function = signature.get("function")
        if not isinstance(function, str) or not hasattr(module, function):
            raise ValueError(f"{file} has no method {function!r} for signature {key!r}.")
        runners[function] = getattr(module, function)
    return runners


def _load_pt2(data: bytes, file: str, device: torch.device, document: dict[str, Any]) -> dict[str, Any]:
    from torch.export.pt2_archive._package import load_pt2

    contents = load_pt2(io.BytesIO(data))  # check_pt2_archive passed these bytes: nothing here unpickles
    runners = {}
    for key, signature in document["signatures"].items():
        function = signature.get("function")
        program = _PT2_DEFAULT_PROGRAM if function == "forward" else function
        if program not in contents.exported_programs:
            raise ValueError(f"{file} has no program {program!r} for signature {key!r}.")
        runners[function] = contents.exported_programs[program].module()
    return runners

# ----------------------------------------------------------------------------------------------------------
# model.aoti.pt2: AOTInductor's package, one compiled model per signature.

_AOTI_DEFAULT_MODEL = "model"
_AOTI_CODE_DIR = "data/aotinductor/"
_AOTI_ARCHIVE_RECORDS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
# The CPU features AOTInductor records (AOTI_CPU_ISA) and the /proc/cpuinfo flags each one needs.
_CPU_FLAGS = {
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",),
}


def _aoti_model_name(function: str) -> str:
    return _AOTI_DEFAULT_MODEL if function == "forward" else function


def _aoti_members(path: str) -> tuple[dict[str, list[str]], str]:
    """``({model name: its files}, signature.json text)``; refuses any member torch would unpickle.

    A package written by torch_estimator holds compiled code (``.so``, ``.cpp``, JSON metadata) per model
    with the weights inside the ``.so``, and ``extra/signature.json``. Packages can also carry pickled
    weights (``data/weights/``), constants (``data/constants/``) or exported programs (``models/``), which
    torch reads with ``torch.load``/``pickle``: such a package is refused, never opened.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
            prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
            models: dict[str, list[str]] = {}
            text = None
            for name in names:
                member = name.removeprefix(prefix)
                parts = member.split("/")
                if member in _AOTI_ARCHIVE_RECORDS or (parts[0] == "extra" and member != "extra/" + SIGNATURE_FILE):
                    continue
                if member == "extra/" + SIGNATURE_FILE:
                    text = archive.read(name).decode("utf-8")
                elif member.startswith(_AOTI_CODE_DIR) and len(parts) == 4 and not _names_pickled_data(parts[3]):
                    models.setdefault(parts[2], []).append(parts[3])
                else:
                    raise ValueError(
                        f"{path} holds {member!r}, which is not part of a torch_estimator AOTInductor package "
                        f"(torch would read it with pickle); refusing to load it. Re-export with format='aoti'."
                    )
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not an AOTInductor package (a zip archive): {error}.") from error
    if text is None:
        raise ValueError(f"{path} holds no extra/{SIGNATURE_FILE}: it was not written by torch_estimator's export.")
    return models, text


def _names_pickled_data(filename: str) -> bool:
    """A model's file that points torch at pickled data: pickled weights' or torchbind objects' configs."""
    return filename == "weights_config.json" or filename.startswith("custom_obj")


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _check_aoti_compatible(path: str, document: dict[str, Any], metadata: Mapping[str, str], device: torch.device) -> None:
    """Refuse a package compiled for another torch release, device kind, CPU or GPU architecture."""
    built = str(document.get("torch_version", "")).split("+")[0]
    running = torch.__version__.split("+")[0]
    if built != running:
        raise IncompatibleArtifactError(
            f"{path} was compiled by torch {built or 'of unknown version'} but this is torch {running}: "
            f"AOTInductor's compiled code is tied to the torch that built it. Export again with torch {running} "
            f"(or load model.pt, which any torch loads)."
        )
    kind = str(document.get("device") or metadata.get("AOTI_DEVICE_KEY") or "cpu")
    if kind != device.type:
        raise IncompatibleArtifactError(
            f"{path} was compiled for {kind} but device={str(device)!r} was requested: AOTInductor's code runs "
            f"only on the kind of device it was compiled for. Load it with device={kind!r}, or export on "
            f"{device.type}."
        )
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise IncompatibleArtifactError(f"{path} was compiled for cuda but no GPU is available here.")
        wanted = metadata.get("AOTI_COMPUTE_CAPABILITY", "")
        major, minor = torch.cuda.get_device_capability(device)
        if wanted and wanted != f"{major}{minor}":
            raise IncompatibleArtifactError(
                f"{path} was compiled for GPUs of compute capability {wanted} but {device} has {major}{minor}: "
                f"export again on this kind of GPU."
            )
    elif kind == "cpu":
        features = str(metadata.get("AOTI_CPU_ISA", "")).split()
        flags = _cpu_flags()
        machine = metadata.get("AOTI_MACHINE")
        if machine and machine != _machine():
            raise IncompatibleArtifactError(
                f"{path} was compiled for a {machine} CPU but this machine is {_machine()}: export again on "
                f"this kind of machine, or load model.pt."
            )
        missing = [f for f in features if flags is not None and not set(_CPU_FLAGS.get(f, ())) <= flags]
        if missing:
            raise IncompatibleArtifactError(
                f"{path} was compiled for a CPU with {' '.join(features)} vector instructions, which this machine "
                f"lacks ({', '.join(missing)}): running it would crash the process. Export again on this kind of "
                f"machine, or load model.pt."
            )


def _machine() -> str:
    return platform.machine()  # what AOTInductor records as AOTI_MACHINE


class _CompiledSignature:
    """One compiled model of the package as ``Dict[str, Tensor] -> Dict[str, Tensor]``.

    Its call spec (the input and output names, in the order of the compiled code's arguments and results)
    is read once here, so a call is one native run and no Python tree flattening.
    """

    def __init__(self, runner: Any, path: str, name: str) -> None:
        from torch.utils import _pytree as pytree

        self._runner = runner
        in_spec, out_spec = (pytree.treespec_loads(spec) for spec in runner.get_call_spec())
        try:
            (positions,), keywords = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
            outputs = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
            if keywords or not isinstance(positions, dict) or not isinstance(outputs, dict):
                raise TypeError
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Model {name!r} in {path} does not take and return a dict of tensors: it was not compiled by "
                f"torch_estimator's export."
            ) from error
        self.input_names = sorted(positions, key=positions.__getitem__)
        self.output_names = sorted(outputs, key=outputs.__getitem__)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        results = self._runner.boxed_run([inputs[name].contiguous() for name in self.input_names])
        return dict(zip(self.output_names, results))


def load_aoti_package(path: str, device: torch.device | str = "cpu") -> tuple[str, dict[str, Any]]:
    """``(embedded signature.json text, {function: runner})`` of a ``model.aoti.pt2``, every signature.

    The package is checked before any of its code is loaded: only compiled code, its metadata and
    ``signature.json`` (no member torch would unpickle), the same torch release, device kind and CPU
    features (or GPU architecture). Each signature's model is then loaded with torch's
    ``AOTIModelPackageLoader``, what ``torch._inductor.aoti_load_package`` uses (which loads the default one).

    Raises:
        IncompatibleArtifactError: For another torch, device kind, CPU or GPU.
        ValueError: For a package that is not a torch_estimator export's, or holds pickled members.
    """
    device = torch.device(device)
    models, text = _aoti_members(path)
    document = _parse_document(text, f"The {SIGNATURE_FILE} embedded in {path}")
    functions = {}
    for key, signature in document["signatures"].items():
        function = signature.get("function")
        name = _aoti_model_name(function) if isinstance(function, str) else None
        if name not in models:
            raise ValueError(f"{path} has no compiled model {name!r} for signature {key!r}; it holds {sorted(models)}.")
        functions[function] = name
    package_loader = torch._C._aoti.AOTIModelPackageLoader
    for name in sorted(set(functions.values())):
        metadata = package_loader.load_metadata_from_package(path, name)  # type: ignore[attr-defined]
        _check_aoti_compatible(path, document, metadata, device)
    index = -1 if device.type == "cpu" or device.index is None else device.index
    runners: dict[str, Any] = {}
    for function, name in functions.items():
        runners[function] = _CompiledSignature(package_loader(path, name, False, 1, index), path, name)
    return text, runners


def load(
    export_dir: str | os.PathLike[str], *, device: torch.device | str = "cpu", format: str | None = None
) -> ExportedModel:
    """Load an export: a version directory, or a base directory (its highest numeric version).

    The artifact is read once and checked before torch parses it (see the module's notes): its size and
    SHA-256 against ``signature.json``, the embedded ``signature.json`` against the one beside it, and for
    ``model.pt2`` that no member needs unpickling.

    Args:
        export_dir: The directory.
        device: Where to run (TorchScript is mapped there; ``model.pt2`` runs where it was exported).
        format: ``"torchscript"``, ``"pt2"`` or ``"aoti"`` (``model.aoti.pt2``, compiled: runs only on the
            torch release, device kind and CPU or GPU it was compiled for); default: the first of
            ``model.pt``, ``model.pt2`` and ``model.aoti.pt2`` present.

    Returns:
        An :class:`ExportedModel`.

    Raises:
        FileNotFoundError: If there is no export there.
        IncompatibleArtifactError: If ``model.aoti.pt2`` was compiled for another torch, device or CPU.
        ExportIntegrityError: If a file does not match ``signature.json`` (naming it), or is not recorded.
        UnsafeArchiveError: If ``model.pt2`` holds a member that would need unpickling.
        ValueError: If the files are not a torch_estimator export, or ``format`` is unknown.
    """
    path, version = resolve_export_dir(export_dir)
    format = format if format is not None else _default_format(path)
    document, file, data = _verified(path, format)
    device = torch.device(device)
    if format == "aoti":  # AOTInductor's loader opens the file itself: the bytes just verified
        del data
        _, runners = load_aoti_package(file, device)
    else:
        loader = _load_torchscript if format == "torchscript" else _load_pt2
        runners = loader(data, file, device, document)
        del data
    return ExportedModel(path, version, format, document, runners, device)
