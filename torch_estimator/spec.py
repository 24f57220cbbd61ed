"""What ``model_fn`` returns: ``ModeKeys`` and ``EstimatorSpec``, validated per mode on construction.

This module sits at the bottom of the package: it imports nothing from ``torch_estimator``. Hooks and
metrics are therefore checked by protocol (the methods they must have), not by class.

Example:
    >>> import torch
    >>> spec = EstimatorSpec(ModeKeys.EVAL, loss=torch.tensor([0.5]))
    >>> spec.loss.shape
    torch.Size([])
    >>> EstimatorSpec(ModeKeys.PREDICT)
    Traceback (most recent call last):
    ...
    ValueError: EstimatorSpec(mode='infer') needs `predictions`...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ._checks import describe as _describe
from .protocols import ExporterLike, HookLike, SaverListenerLike

__all__ = ["ModeKeys", "EstimatorSpec", "TrainSpec", "EvalSpec"]


class ModeKeys:
    """The three modes ``model_fn`` is called in (TF's string values, so saved configs compare equal)."""

    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"

    ALL = (TRAIN, EVAL, PREDICT)


class ExportOutput:
    """Base class of export outputs (``torch_estimator.export.PredictOutput`` and friends): the named
    tensors a signature returns, and its TF Serving method name. Defined here, with the spec that holds
    them, so that a spec checks its ``export_outputs`` when it is built."""

    method_name: str = "tensorflow/serving/predict"
    class_labels: list[str] | None = None

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """The signature's outputs, name to Tensor."""
        raise NotImplementedError


_HOOK_METHODS = ("begin", "before_run", "after_run", "end")
_HOOK_FIELDS = ("training_chief_hooks", "training_hooks", "evaluation_hooks", "prediction_hooks")
_EMPTY: tuple[Any, ...] = ()
# Structures of EstimatorSpecs validated already (see EstimatorSpec._structure_key); a model_fn returns one or
# a few structures, so the bound only matters for code that builds specs of ever new shapes.
_VALID_STRUCTURES: set[tuple[Any, ...]] = set()
_MAX_STRUCTURES = 256


def _mapping_key(value: Any) -> Any:
    """None, a Tensor as its type, a dict as its keys and value types. Raises TypeError for anything else,
    whose validity its type does not tell."""
    if value is None or isinstance(value, torch.Tensor):
        return value.__class__
    if value.__class__ is dict:
        return tuple(value), tuple(map(type, value.values()))
    raise TypeError("not a structure to remember")


def _is_key(key: Any, tuples: bool) -> bool:
    """A str, or (where ``tuples``) a tuple of str: MultiHead's ``(head name, prediction key)``, as TF's."""
    if isinstance(key, str):
        return True
    return tuples and isinstance(key, tuple) and bool(key) and all(isinstance(k, str) for k in key)


def _check_tensor_map(field: str, value: Any, allow_tensor: bool) -> None:
    if allow_tensor and isinstance(value, torch.Tensor):
        return
    if not isinstance(value, Mapping):
        kind = "a Tensor or a dict of Tensors" if allow_tensor else "a dict of str to Tensor"
        raise TypeError(f"EstimatorSpec `{field}` must be {kind}; received {_describe(value)}.")
    for key, item in value.items():
        if not _is_key(key, tuples=allow_tensor):
            kinds = "str or tuples of str" if allow_tensor else "str"
            raise TypeError(f"EstimatorSpec `{field}` keys must be {kinds}; received key {key!r}.")
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"EstimatorSpec `{field}[{key!r}]` must be a Tensor; received {_describe(item)}.")


def _is_metric(value: Any) -> bool:
    if hasattr(value, "stats") and callable(getattr(value, "compute", None)):
        return True
    return all(callable(getattr(value, name, None)) for name in ("update", "compute", "reset"))


def _check_hooks(field: str, hooks: Any) -> tuple[HookLike, ...]:
    if hooks is None:
        return ()
    if isinstance(hooks, (str, bytes, Mapping)) or not isinstance(hooks, Sequence):
        raise TypeError(f"EstimatorSpec `{field}` must be a list of hooks; received {_describe(hooks)}.")
    for hook in hooks:
        missing = [m for m in _HOOK_METHODS if not callable(getattr(hook, m, None))]
        if missing:
            raise TypeError(
                f"EstimatorSpec `{field}` must contain hooks (subclasses of torch_estimator.Hook); "
                f"received {_describe(hook)}, which lacks {', '.join(missing)}."
            )
    return tuple(hooks)


@dataclasses.dataclass(frozen=True, init=False)
class EstimatorSpec:
    """Everything ``model_fn`` tells the Estimator about one batch in one mode.

    Args:
        mode: One of ``ModeKeys.TRAIN``, ``EVAL`` or ``PREDICT``.
        predictions: A Tensor or a dict of Tensors; required in PREDICT. Its first dimension is the batch.
        loss: A scalar Tensor (shape ``[1]`` is accepted and reshaped); required in TRAIN and EVAL.
        train_op: Optional callable ``train_op(loss)`` that performs a custom update (several optimizers,
            GANs). When omitted in TRAIN, the Estimator's ``optimizer`` steps on ``loss``.
        eval_metric_ops: A dict of metric name to a ``torch_estimator.metrics`` result or an object with
            ``update``/``compute``/``reset`` methods (torchmetrics' protocol). Read in EVAL.
        export_outputs: A dict of signature name to ``ExportOutput`` (``PredictOutput``,
            ``ClassificationOutput``, ``RegressionOutput``), used when exporting.
        training_chief_hooks: Hooks run on the chief process only, in TRAIN.
        training_hooks: Hooks run on every process in TRAIN.
        evaluation_hooks: Hooks run in EVAL.
        prediction_hooks: Hooks run in PREDICT.
        fetches: Extra named tensors that hooks may request by name (``LoggingTensorHook`` and friends).
        summaries: TensorBoard summaries, tag to value: a scalar tensor, any other tensor (a histogram),
            ``torch_estimator.summary.Image``/``Text``, or a zero-argument callable returning one, called
            only on the steps that write summaries.

    Hooks named in a spec begin right after the first ``model_fn`` call of a run, in time for that
    step's ``after_run``.

    Raises:
        ValueError: If a field the mode needs is missing or the loss is not a scalar.
        TypeError: If a field has the wrong type.
    """

    mode: str
    predictions: torch.Tensor | Mapping[str, torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    train_op: Callable[[torch.Tensor], Any] | None = None
    eval_metric_ops: Mapping[str, Any] | None = None
    export_outputs: Mapping[str, Any] | None = None
    training_chief_hooks: Sequence[HookLike] = ()
    training_hooks: Sequence[HookLike] = ()
    evaluation_hooks: Sequence[HookLike] = ()
    prediction_hooks: Sequence[HookLike] = ()
    fetches: Mapping[str, torch.Tensor] | None = None
    summaries: Mapping[str, Any] | None = None

    def __init__(
        self,
        mode: str,
        predictions: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        loss: torch.Tensor | None = None,
        train_op: Callable[[torch.Tensor], Any] | None = None,
        eval_metric_ops: Mapping[str, Any] | None = None,
        export_outputs: Mapping[str, Any] | None = None,
        training_chief_hooks: Sequence[Any] = (),
        training_hooks: Sequence[Any] = (),
        evaluation_hooks: Sequence[Any] = (),
        prediction_hooks: Sequence[Any] = (),
        fetches: Mapping[str, torch.Tensor] | None = None,
        summaries: Mapping[str, Any] | None = None,
    ) -> None:
        # Built on every step. The usual training spec (a scalar loss and nothing else) stores only its two
        # fields: the others keep the class's defaults, which are these same values. Otherwise the fields go
        # straight into the instance dict (a frozen dataclass's generated __init__ makes one
        # object.__setattr__ call per field), and a spec whose structure was validated before is not
        # validated again field by field (see _structure_key).
        values = self.__dict__
        values["mode"] = mode
        values["loss"] = loss
        if (
            loss.__class__ is torch.Tensor and predictions is None and train_op is None and eval_metric_ops is None
            and export_outputs is None and fetches is None and summaries is None and training_chief_hooks is _EMPTY
            and training_hooks is _EMPTY and evaluation_hooks is _EMPTY and prediction_hooks is _EMPTY
            and (mode == "train" or mode == "eval") and not loss.dim()
        ):
            return
        values["predictions"] = predictions
        values["train_op"] = train_op
        values["eval_metric_ops"] = eval_metric_ops
        values["export_outputs"] = export_outputs
        values["training_chief_hooks"] = training_chief_hooks
        values["training_hooks"] = training_hooks
        values["evaluation_hooks"] = evaluation_hooks
        values["prediction_hooks"] = prediction_hooks
        values["fetches"] = fetches
        values["summaries"] = summaries
        key = self._structure_key()
        if key is None or key not in _VALID_STRUCTURES:
            self._validate()
            if key is not None:
                if len(_VALID_STRUCTURES) >= _MAX_STRUCTURES:
                    _VALID_STRUCTURES.clear()
                _VALID_STRUCTURES.add(key)

    def _structure_key(self) -> tuple[Any, ...] | None:
        """What validation depends on, for a spec that needs no conversion: the mode, and the types (and, for
        dicts, the keys and the types of the values) of every field. None when a field needs converting or
        checking each time (a loss of shape [1], hooks)."""
        loss = self.loss
        if loss is not None and (not isinstance(loss, torch.Tensor) or loss.dim()):
            return None
        if not (self.training_chief_hooks is _EMPTY and self.training_hooks is _EMPTY
                and self.evaluation_hooks is _EMPTY and self.prediction_hooks is _EMPTY):
            return None
        try:
            return (
                self.mode, loss.__class__, _mapping_key(self.predictions), self.train_op.__class__,
                _mapping_key(self.eval_metric_ops), _mapping_key(self.export_outputs), _mapping_key(self.fetches),
                _mapping_key(self.summaries),
            )
        except TypeError:  # an unhashable mode or key: validate (and report) it every time
            return None

    def _validate(self) -> None:
        mode = self.mode
        if mode not in ModeKeys.ALL:
            raise ValueError(
                f"EstimatorSpec `mode` must be one of ModeKeys.TRAIN/EVAL/PREDICT {ModeKeys.ALL}; "
                f"received {mode!r}."
            )
        loss = self.loss
        if loss is None:
            if mode != ModeKeys.PREDICT:
                raise ValueError(
                    f"EstimatorSpec(mode={mode!r}) needs `loss`: return EstimatorSpec(mode, loss=...) "
                    f"with a scalar Tensor."
                )
        elif not isinstance(loss, torch.Tensor):
            raise TypeError(f"EstimatorSpec `loss` must be a scalar Tensor; received {_describe(loss)}.")
        elif loss.dim() != 0:
            if loss.numel() != 1:
                raise ValueError(
                    f"EstimatorSpec `loss` must be a scalar (shape [] or [1]); received shape "
                    f"{list(loss.shape)}. Reduce it, e.g. loss.mean()."
                )
            object.__setattr__(self, "loss", loss.reshape(()))
        if self.predictions is None:
            if mode == ModeKeys.PREDICT:
                raise ValueError(
                    f"EstimatorSpec(mode={mode!r}) needs `predictions`: a Tensor or a dict of Tensors."
                )
        else:
            _check_tensor_map("predictions", self.predictions, allow_tensor=True)
        if self.train_op is not None and not callable(self.train_op):
            raise TypeError(
                f"EstimatorSpec `train_op` must be a callable train_op(loss), or omitted to let the "
                f"Estimator's optimizer step; received {_describe(self.train_op)}."
            )
        if self.eval_metric_ops is not None:
            self._check_metrics(self.eval_metric_ops)
        if self.export_outputs is not None:
            self._check_export_outputs(self.export_outputs)
        if self.fetches is not None:
            _check_tensor_map("fetches", self.fetches, allow_tensor=False)
        if self.summaries is not None and (
            not isinstance(self.summaries, Mapping) or not all(isinstance(k, str) for k in self.summaries)
        ):
            raise TypeError(
                f"EstimatorSpec `summaries` must be a dict of str tag to value; received {_describe(self.summaries)}."
            )
        for field in _HOOK_FIELDS:
            value = getattr(self, field)
            if value != ():
                object.__setattr__(self, field, _check_hooks(field, value))

    @staticmethod
    def _check_export_outputs(export_outputs: Any) -> None:
        if not isinstance(export_outputs, Mapping):
            raise TypeError(
                f"EstimatorSpec `export_outputs` must be a dict of signature name to export output; "
                f"received {_describe(export_outputs)}."
            )
        for key, value in export_outputs.items():
            if not isinstance(value, ExportOutput):
                raise TypeError(
                    f"EstimatorSpec `export_outputs[{key!r}]` must be an ExportOutput (PredictOutput, "
                    f"ClassificationOutput or RegressionOutput from torch_estimator.export); received "
                    f"{_describe(value)}. Wrap tensors as PredictOutput({{name: tensor}})."
                )

    @staticmethod
    def _check_metrics(metrics: Any) -> None:
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"EstimatorSpec `eval_metric_ops` must be a dict of name to metric; received {_describe(metrics)}."
            )
        for name, metric in metrics.items():
            if not isinstance(name, str):
                raise TypeError(f"EstimatorSpec `eval_metric_ops` keys must be str; received {name!r}.")
            if not _is_metric(metric):
                raise TypeError(
                    f"EstimatorSpec `eval_metric_ops[{name!r}]` must be a metric from torch_estimator.metrics "
                    f"(e.g. metrics.accuracy(labels, classes)) or an object with update/compute/reset; "
                    f"received {_describe(metric)}."
                )

    def replace(self, **changes: Any) -> EstimatorSpec:
        """Return a copy with ``changes`` applied and validated again; the mode cannot change.

        Raises:
            ValueError: If ``mode`` is among the changes.
        """
        if "mode" in changes and changes["mode"] != self.mode:
            raise ValueError(f"The mode of an EstimatorSpec cannot be changed (from {self.mode!r}).")
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------
# train_and_evaluate's specs (TF's ``TrainSpec``/``EvalSpec``), validated here by protocol: hooks, listeners
# and exporters are recognised by the methods they have, so this module imports nothing from the package.

_LISTENER_METHODS = ("begin", "before_save", "after_save", "end")


def _check_callable_input_fn(owner: str, input_fn: Any) -> None:
    if not callable(input_fn):
        raise TypeError(
            f"{owner} `input_fn` must be callable (it returns the batches); received {_describe(input_fn)}."
        )


def _check_count(owner: str, name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{owner} `{name}` must be an int > 0 or None; received {value!r}.")


def _check_seconds(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner} `{name}` must be a number of seconds >= 0; received {_describe(value)}.")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{owner} `{name}` must be >= 0; received {value!r}.")


def _check_objects(owner: str, name: str, values: Any, methods: tuple[str, ...], kind: str) -> tuple[Any, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"{owner} `{name}` must be a list of {kind}; received {_describe(values)}.")
    values = tuple(values)
    for value in values:
        missing = [m for m in methods if not callable(getattr(value, m, None))]
        if missing:
            raise TypeError(
                f"{owner} `{name}` must contain {kind}; received {_describe(value)}, which lacks {', '.join(missing)}."
            )
    return values


def _is_exporter(value: Any) -> bool:
    return callable(getattr(value, "export", None)) and hasattr(value, "name")


def _check_exporters(exporters: Any) -> tuple[ExporterLike, ...]:
    """A single exporter or an iterable of them, with unique non-empty string names (TF's rules)."""
    if exporters is None:
        return ()
    if _is_exporter(exporters):
        exporters = [exporters]
    elif isinstance(exporters, (str, bytes, Mapping)) or not isinstance(exporters, Iterable):
        raise TypeError(
            f"EvalSpec `exporters` must be an Exporter, a list of Exporters or None; received {_describe(exporters)}."
        )
    exporters = tuple(exporters)
    for exporter in exporters:
        if not _is_exporter(exporter):
            raise TypeError(
                f"EvalSpec `exporters` must contain Exporters (a `name` and an `export` method, e.g. "
                f"torch_estimator.exporters.LatestExporter); received {_describe(exporter)}."
            )
    names = [exporter.name for exporter in exporters]
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"EvalSpec `exporters`: every Exporter needs a non-empty string name (it names the directory "
                f"export/<name>/); received {name!r} among {names}."
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"EvalSpec `exporters` must have unique names (each exports to model_dir/export/<name>/); "
            f"{duplicates} appear more than once in {names}."
        )
    return exporters


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How ``train_and_evaluate`` trains (TF's ``TrainSpec``).

    Args:
        input_fn: Returns the training batches, as for ``Estimator.train``.
        max_steps: Train until the global step reaches this; None trains until ``input_fn`` ends.
        hooks: Extra training hooks (stored as a tuple).
        saving_listeners: Extra :class:`~torch_estimator.CheckpointSaverListener` objects; the evaluation
            listener of ``train_and_evaluate`` runs after them.

    Raises:
        TypeError: If ``input_fn`` is not callable, or a hook or listener lacks the methods it needs.
        ValueError: If ``max_steps`` is not a positive int or None.

    Example:
        >>> TrainSpec(lambda: None, max_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: TrainSpec `max_steps` must be an int > 0 or None; received 0.
    """

    input_fn: Callable[..., Any]
    max_steps: int | None = None
    hooks: Sequence[HookLike] | None = None
    saving_listeners: Sequence[SaverListenerLike] | None = None

    def __post_init__(self) -> None:
        _check_callable_input_fn("TrainSpec", self.input_fn)
        _check_count("TrainSpec", "max_steps", self.max_steps)
        object.__setattr__(self, "hooks", _check_objects("TrainSpec", "hooks", self.hooks, _HOOK_METHODS, "hooks"))
        object.__setattr__(
            self, "saving_listeners",
            _check_objects("TrainSpec", "saving_listeners", self.saving_listeners, _LISTENER_METHODS,
                           "CheckpointSaverListener objects"),
        )


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """How and when ``train_and_evaluate`` evaluates and exports (TF's ``EvalSpec``, plus ``every_n_steps``).

    Args:
        input_fn: Returns the evaluation batches, as for ``Estimator.evaluate``.
        steps: Evaluate on this many batches; None evaluates until ``input_fn`` ends.
        name: Evaluation name: results go to ``model_dir/eval_<name>`` (``model_dir/eval`` when None).
        hooks: Extra evaluation hooks (stored as a tuple).
        exporters: An Exporter or a list of Exporters (unique names), run after every evaluation (stored as
            a tuple).
        start_delay_secs: How long ``run_evaluator`` waits before its first evaluation (ignored by
            ``train_and_evaluate``, as TF's local mode ignores it).
        throttle_secs: Evaluate a new checkpoint only if this many seconds passed since the previous
            evaluation started; 0 evaluates every checkpoint.
        every_n_steps: Instead of ``throttle_secs`` (which is then ignored), evaluate the first checkpoint at
            or after every multiple of N global steps. Evaluations happen on checkpoints, so they fall exactly
            on the multiples when ``RunConfig.save_checkpoints_steps`` divides N.

    Raises:
        TypeError: If ``input_fn`` is not callable, ``name`` is not a string, a hook lacks the hook methods,
            an exporter is not an Exporter, or a number of seconds is not a number.
        ValueError: If ``steps`` or ``every_n_steps`` is not positive, a number of seconds is negative, or
            exporter names are empty or not unique.

    Example:
        >>> EvalSpec(lambda: None, throttle_secs=-1)
        Traceback (most recent call last):
        ...
        ValueError: EvalSpec `throttle_secs` must be >= 0; received -1.
    """

    input_fn: Callable[..., Any]
    steps: int | None = 100
    name: str | None = None
    hooks: Sequence[HookLike] | None = None
    exporters: ExporterLike | Iterable[ExporterLike] | None = None
    start_delay_secs: float = 120
    throttle_secs: float = 600
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        _check_callable_input_fn("EvalSpec", self.input_fn)
        _check_count("EvalSpec", "steps", self.steps)
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"EvalSpec `name` must be a string or None; received {_describe(self.name)}.")
        object.__setattr__(self, "hooks", _check_objects("EvalSpec", "hooks", self.hooks, _HOOK_METHODS, "hooks"))
        object.__setattr__(self, "exporters", _check_exporters(self.exporters))
        _check_seconds("EvalSpec", "start_delay_secs", self.start_delay_secs)
        _check_seconds("EvalSpec", "throttle_secs", self.throttle_secs)
        _check_count("EvalSpec", "every_n_steps", self.every_n_steps)
