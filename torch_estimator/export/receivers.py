"""Serving receivers: what a client sends (``TensorSpec``s) and how it becomes ``model_fn``'s features.

TF built placeholders; here a receiver *declares* its tensors with :class:`TensorSpec` (``None`` for a
dynamic dimension, the first being the batch) and gives the preprocessing from them to features as a
function or module, which export traces into the artifact together with ``model_fn``.

Example:
    >>> import torch
    >>> receiver_fn = build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 784], torch.float32)})
    >>> receiver = receiver_fn()
    >>> receiver.receiver_tensors
    {'x': TensorSpec(shape=[None, 784], dtype=torch.float32)}
    >>> images = ServingInputReceiver(
    ...     features=lambda r: {"x": r["image"].float().div(255).flatten(1)},
    ...     receiver_tensors={"image": TensorSpec([None, 28, 28], torch.uint8)})
    >>> images.to_features({"image": torch.full((2, 28, 28), 255, dtype=torch.uint8)})["x"].shape
    torch.Size([2, 784])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_named
from .._checks import describe as _describe

__all__ = [
    "TensorSpec",
    "ServingInputReceiver",
    "TensorServingInputReceiver",
    "build_raw_serving_input_receiver_fn",
    "dtype_name",
    "parse_dtype",
    "STRING",
    "STRING_ENCODING",
    "STRING_MODULE",
    "fingerprint",
    "StringFingerprint",
    "string_fingerprint_module",
]

STRING = "string"  # signature.json's dtype of an input that clients send as strings (TF's DT_STRING)
STRING_ENCODING = "fingerprint64"  # how a string input reaches the model: see `fingerprint`
STRING_MODULE = "string_fingerprint"  # model.pt's TorchScript submodule that encodes strings (exports with string inputs)
_FNV_OFFSET, _FNV_PRIME, _MASK64, _MASK63 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1, (1 << 63) - 1
SINGLE_INPUT_NAME = "input"  # TF's name for a receiver given as one tensor
SINGLE_FEATURE_NAME = "feature"  # TF's name for features returned as one tensor by ServingInputReceiver


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the name used in ``signature.json``."""
    return str(dtype).removeprefix("torch.")


def fingerprint(value: str | bytes) -> int:
    """The int64 that stands for a string inside tensors: FNV-1a 64 of its UTF-8 bytes, top bit cleared.

    Stable across processes, machines and versions (unlike Python's ``hash``). Training encodes string
    features with it (:func:`~torch_estimator.canned.feature_columns.encode_features`), and a string input of
    an export (dtype ``"string"``, encoding ``"fingerprint64"`` in ``signature.json``) is encoded with it before
    the model runs: by the loader, by the REST server, and by ``model.pt``'s own :class:`StringFingerprint`
    submodule for clients that hold only the artifact (in any language, a ``uint64_t`` loop:
    ``h = 0xcbf29ce484222325; for each byte: h = (h ^ byte) * 0x100000001b3; return h & 0x7fffffffffffffff``).

    Example:
        >>> fingerprint("red")
        714311032125047324
        >>> fingerprint("red") == fingerprint(b"red") != fingerprint("Red")
        True
    """
    h = _FNV_OFFSET
    for byte in value if isinstance(value, bytes) else value.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h & _MASK63


class StringFingerprint(torch.nn.Module):
    """:func:`fingerprint` as a TorchScript module: ``forward(List[str]) -> int64 Tensor`` (``""``: ``-1``).

    ``model.pt`` carries it, scripted, as the submodule ``string_fingerprint`` when a signature has a string
    input, so a client holding only the artifact encodes strings with the artifact itself (C++:
    ``module.attr("string_fingerprint").toModule().forward({strings})``). Use it scripted
    (:func:`string_fingerprint_module`): TorchScript iterates a ``str`` by its UTF-8 bytes, Python by
    characters. The 64-bit FNV product is computed on 32-bit halves, so no int64 arithmetic overflows.
    """

    def forward(self, values: list[str]) -> torch.Tensor:
        codes: list[int] = []
        for value in values:
            if len(value) == 0:
                codes.append(-1)
                continue
            high, low = 0xCBF29CE4, 0x84222325  # FNV-1a's 64-bit offset basis, in 32-bit halves
            for char in value:  # scripted: one UTF-8 byte at a time
                low = low ^ (ord(char) & 0xFF)
                product = low * 0x1B3  # times the prime 2**40 + 0x1B3, modulo 2**64
                high = (high * 0x1B3 + (product >> 32) + (low << 8)) & 0xFFFFFFFF
                low = product & 0xFFFFFFFF
            codes.append(((high & 0x7FFFFFFF) << 32) | low)
        return torch.tensor(codes, dtype=torch.int64)


def string_fingerprint_module() -> torch.jit.ScriptModule:
    """A scripted :class:`StringFingerprint` (what ``model.pt`` carries).

    Example:
        >>> string_fingerprint_module()(["red", ""]).tolist()
        [714311032125047324, -1]
    """
    import warnings

    with warnings.catch_warnings():  # torch 2.14 warns on every torch.jit call
        warnings.filterwarnings("ignore", message=r"`?torch\.jit\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"`?torch\.jit\.", category=DeprecationWarning)
        return torch.jit.script(StringFingerprint())


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or its name (``"float32"``, ``"torch.int64"``).

    Raises:
        TypeError: If ``value`` names no torch dtype.
    """
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        found = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return found
    raise TypeError(f"`dtype` must be a torch.dtype or its name such as 'float32'; received {value!r}.")


class TensorSpec:
    """One tensor a client sends: shape (``None`` for a dynamic dimension) and dtype.

    The first dimension is the batch when it is ``None``. Export draws verification inputs from the spec:
    floats from a normal distribution (uniform in ``[low, high)`` when given), integers uniform in
    ``[low, high)`` (default ``[0, 2)``, small enough to be valid ids), booleans at random, or rows of
    ``example`` when given (then its values are the ones used, e.g. valid token ids).

    ``dtype="string"`` declares an input that clients send as strings (TF's ``DT_STRING``): the model
    receives each string's :func:`fingerprint` (int64; ``""`` and null become ``-1``, no value), and
    ``signature.json`` says ``"dtype": "string", "encoding": "fingerprint64"`` so that every client encodes
    alike. Export's self-check draws int64 values for it (or the rows of ``example``, fingerprints).

    Args:
        shape: Sizes, ``None`` for dynamic ones, e.g. ``[None, 784]``.
        dtype: A ``torch.dtype`` or its name, or ``"string"``.
        example: A batch of valid values (a Tensor or array whose shape fits ``shape``).
        low: Inclusive lower bound for drawn values.
        high: Exclusive upper bound for drawn values.

    Raises:
        ValueError: For a bad shape, bounds that are not ``low < high``, or an example that does not fit.
        TypeError: For a bad dtype or example.
    """

    __slots__ = ("shape", "dtype", "strings", "example", "low", "high")

    def __init__(
        self,
        shape: Sequence[int | None],
        dtype: torch.dtype | str,
        *,
        example: Any = None,
        low: float | None = None,
        high: float | None = None,
    ) -> None:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
            raise ValueError(f"TensorSpec `shape` must be a list of ints or None; received {shape!r}.")
        dims = []
        for dim in shape:
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0):
                raise ValueError(
                    f"TensorSpec `shape` entries must be ints >= 0 or None (dynamic); received {list(shape)!r}."
                )
            dims.append(None if dim is None else int(dim))
        self.shape: list[int | None] = dims
        self.strings: bool = isinstance(dtype, str) and dtype == STRING
        self.dtype: torch.dtype = torch.int64 if self.strings else parse_dtype(dtype)
        for name, bound in (("low", low), ("high", high)):
            number = isinstance(bound, (int, float)) and not isinstance(bound, bool)
            if bound is not None and not (number and math.isfinite(bound)):
                raise ValueError(f"TensorSpec `{name}` must be a finite number or None; received {bound!r}.")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"TensorSpec needs low < high; received low={low!r}, high={high!r}.")
        self.low, self.high = low, high
        self.example: torch.Tensor | None = None if example is None else self._check_example(example)

    def _check_example(self, example: Any) -> torch.Tensor:
        if isinstance(example, np.ndarray):
            example = torch.from_numpy(np.ascontiguousarray(example))
        if not isinstance(example, torch.Tensor):
            raise TypeError(f"TensorSpec `example` must be a Tensor or numpy array; received {type(example).__name__}.")
        rows_fit = example.dim() == len(self.shape) and (not self.shape or TensorSpec(
            [None, *self.shape[1:]], self.dtype).is_compatible(example.shape))
        if not rows_fit:
            raise ValueError(
                f"TensorSpec `example` has shape {list(example.shape)}, which does not fit the spec's shape "
                f"{self.shape}; give a batch of examples (the first dimension is the batch; its rows are "
                f"repeated or cut to the batch sizes export needs)."
            )
        if self.shape and example.shape[0] == 0:
            raise ValueError("TensorSpec `example` must hold at least one example.")
        return example.detach().to("cpu", self.dtype)

    @classmethod
    def from_tensor(cls, tensor: Any, batch_size: int | None = None) -> TensorSpec:
        """The spec of a batch ``tensor`` with the batch dimension set to ``batch_size`` (None: dynamic);
        the tensor is kept as the example.

        Raises:
            TypeError: If ``tensor`` is not a Tensor or numpy array.
            ValueError: If ``tensor`` is a scalar (it has no batch dimension).
        """
        if isinstance(tensor, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(tensor))
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"Expected a TensorSpec, a Tensor or a numpy array; received {type(tensor).__name__}.")
        if tensor.dim() == 0:
            raise ValueError("An example tensor needs a batch dimension; received a scalar.")
        return cls([batch_size, *tensor.shape[1:]], tensor.dtype, example=tensor)

    @property
    def batch_dynamic(self) -> bool:
        """Whether the first (batch) dimension is dynamic."""
        return bool(self.shape) and self.shape[0] is None

    def signature_shape(self) -> list[int]:
        """The shape with ``-1`` for dynamic dimensions, as ``signature.json`` writes it."""
        return [-1 if dim is None else dim for dim in self.shape]

    def is_compatible(self, shape: Sequence[int]) -> bool:
        """Whether a concrete ``shape`` fits this spec."""
        return len(shape) == len(self.shape) and all(d is None or d == s for d, s in zip(self.shape, shape))

    def with_batch_size(self, batch_size: int | None) -> TensorSpec:
        """A copy with the first dimension replaced (TF's ``[default_batch_size] + shape[1:]``)."""
        if not self.shape:
            return self
        return TensorSpec([batch_size, *self.shape[1:]], STRING if self.strings else self.dtype, example=self.example,
                          low=self.low, high=self.high)

    def signature_info(self) -> dict[str, Any]:
        """This input as ``signature.json`` declares it: ``{"dtype", "shape"}`` (and ``"encoding"`` for strings)."""
        if self.strings:
            return {"dtype": STRING, "shape": self.signature_shape(), "encoding": STRING_ENCODING}
        return {"dtype": dtype_name(self.dtype), "shape": self.signature_shape()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorSpec) and (self.shape, self.dtype, self.strings, self.low, self.high) == (
            other.shape, other.dtype, other.strings, other.low, other.high
        )

    def __hash__(self) -> int:
        return hash((tuple(self.shape), self.dtype, self.strings))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("low", "high") if getattr(self, k) is not None)
        if self.example is not None:
            extra += f", example=<{list(self.example.shape)}>"
        dtype = repr(STRING) if self.strings else str(self.dtype)
        return f"TensorSpec(shape={self.shape}, dtype={dtype}{extra})"


SpecMap = dict[str, TensorSpec]
Preprocess = Callable[[dict[str, torch.Tensor]], Any] | torch.nn.Module | None


def _spec_map(value: Any, what: str) -> SpecMap:
    """A TensorSpec (named ``input``) or a dict of them, validated."""
    if isinstance(value, TensorSpec):
        return {SINGLE_INPUT_NAME: value}
    if not isinstance(value, Mapping) or not value:
        raise TypeError(
            f"{what} must be a TensorSpec or a non-empty dict of name to TensorSpec; received {value!r}."
        )
    return check_named(value, TensorSpec, what=what, expected="a TensorSpec, e.g. TensorSpec([None, 784], torch.float32)")


class ServingInputReceiver:
    """What clients send (``receiver_tensors``) and how it becomes ``model_fn``'s features.

    Args:
        features: The preprocessing, called with the dict of received tensors and returning the features
            (a dict of Tensors, or one Tensor, which is named ``"feature"`` as TF did). A function or an
            ``nn.Module`` (its parameters and buffers travel with the export). None: the received dict
            is the features.
        receiver_tensors: A :class:`TensorSpec` (named ``"input"``) or a dict of name to TensorSpec: the
            signature's inputs.
        receiver_tensors_alternatives: ``{name: specs}`` for further entry points, exported as signatures
            ``"<name>:<output key>"``; ``specs`` is a TensorSpec or dict of them given straight to
            ``model_fn`` as features, or a ``ServingInputReceiver`` with its own preprocessing.

    Raises:
        TypeError: For receiver tensors that are not TensorSpecs, or a ``features`` that is not callable.
        ValueError: For bad names.
    """

    as_dict = True  # model_fn receives a dict of features

    def __init__(
        self,
        features: Preprocess,
        receiver_tensors: TensorSpec | Mapping[str, TensorSpec],
        receiver_tensors_alternatives: Mapping[str, Any] | None = None,
    ) -> None:
        if features is not None and not callable(features):
            raise TypeError(
                f"`features` must be a function or nn.Module from the dict of received tensors to the features, "
                f"or None for the received tensors themselves; received {type(features).__name__}."
            )
        self.features = features
        self.receiver_tensors: SpecMap = _spec_map(receiver_tensors, "`receiver_tensors`")
        self.receiver_tensors_alternatives = self._alternatives(receiver_tensors_alternatives)

    def _alternatives(self, alternatives: Any) -> dict[str, ServingInputReceiver]:
        if alternatives is None:
            return {}
        if not isinstance(alternatives, Mapping):
            raise TypeError(
                f"`receiver_tensors_alternatives` must be a dict of name to receiver tensors; "
                f"received {alternatives!r}."
            )
        result = {}
        for name, value in alternatives.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"`receiver_tensors_alternatives` names must be non-empty strings; received {name!r}.")
            if isinstance(value, ServingInputReceiver):
                if value.receiver_tensors_alternatives:
                    raise ValueError(f"Alternative receiver {name!r} may not have alternatives of its own.")
                result[name] = value
            else:
                result[name] = type(self)(None, _spec_map(value, f"`receiver_tensors_alternatives[{name!r}]`"))
        return result

    def to_features(self, received: dict[str, torch.Tensor]) -> Any:
        """The features ``model_fn`` receives for a dict of received tensors.

        Raises:
            TypeError: If the preprocessing returns something other than a Tensor or dict of Tensors.
        """
        features = received if self.features is None else self.features(received)
        if isinstance(features, torch.Tensor):
            return {SINGLE_FEATURE_NAME: features}
        if isinstance(features, Mapping) and features and all(isinstance(v, torch.Tensor) for v in features.values()):
            return dict(features)
        raise TypeError(
            f"The receiver's `features` must return a Tensor or a dict of Tensors; it returned {_describe(features)}."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(receiver_tensors={self.receiver_tensors})"


class TensorServingInputReceiver(ServingInputReceiver):
    """A receiver whose features reach ``model_fn`` as one Tensor, not a dict (TF's class of that name).

    ``features`` returns one Tensor; when it is None there must be exactly one receiver tensor, which is
    passed on as is. Alternatives with one tensor are passed on as that tensor too.
    """

    as_dict = False

    def __init__(
        self,
        features: Preprocess,
        receiver_tensors: TensorSpec | Mapping[str, TensorSpec],
        receiver_tensors_alternatives: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(features, receiver_tensors, receiver_tensors_alternatives)
        for receiver in (self, *self.receiver_tensors_alternatives.values()):
            if receiver.features is None and len(receiver.receiver_tensors) != 1:
                raise ValueError(
                    f"TensorServingInputReceiver passes one tensor to model_fn, so without `features` it needs "
                    f"exactly one receiver tensor; received {sorted(receiver.receiver_tensors)}."
                )

    def to_features(self, received: dict[str, torch.Tensor]) -> Any:
        features = next(iter(received.values())) if self.features is None else self.features(received)
        if not isinstance(features, torch.Tensor):
            raise TypeError(
                f"TensorServingInputReceiver's `features` must return one Tensor; it returned {_describe(features)}."
            )
        return features


def build_raw_serving_input_receiver_fn(
    features: Mapping[str, Any], default_batch_size: int | None = None
) -> Callable[[], ServingInputReceiver]:
    """A receiver fn whose clients send the features themselves, one tensor per feature (TF's function).

    Args:
        features: ``{name: TensorSpec}``, or ``{name: example batch}`` (a Tensor or numpy array, kept as
            the verification example).
        default_batch_size: The batch size of every input; None keeps the batch dynamic.

    Returns:
        A function returning a :class:`ServingInputReceiver` whose features are its receiver tensors.

    Raises:
        TypeError: If ``features`` is not a dict of TensorSpecs or tensors.
        ValueError: If ``default_batch_size`` is not a positive int or None.
    """
    if not isinstance(features, Mapping) or not features:
        raise TypeError(
            f"`features` must be a non-empty dict of name to TensorSpec or example tensor; received {features!r}."
        )
    size = default_batch_size
    positive = isinstance(size, int) and not isinstance(size, bool) and size > 0
    if default_batch_size is not None and not positive:
        raise ValueError(f"`default_batch_size` must be a positive int or None; received {default_batch_size!r}.")
    specs = {}
    for name, value in features.items():
        spec = value if isinstance(value, TensorSpec) else TensorSpec.from_tensor(value)
        if not spec.shape:
            raise ValueError(f"Feature {name!r} is a scalar spec; raw receivers need a batch dimension.")
        specs[name] = spec.with_batch_size(default_batch_size)

    def serving_input_receiver_fn() -> ServingInputReceiver:
        return ServingInputReceiver(None, dict(specs))

    return serving_input_receiver_fn
