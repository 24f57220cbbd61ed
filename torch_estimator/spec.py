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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["ModeKeys", "EstimatorSpec"]


class ModeKeys:
    """The three modes ``model_fn`` is called in (TF's string values, so saved configs compare equal)."""

    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"

    ALL = (TRAIN, EVAL, PREDICT)


_HOOK_METHODS = ("begin", "before_run", "after_run", "end")
_HOOK_FIELDS = ("training_chief_hooks", "training_hooks", "evaluation_hooks", "prediction_hooks")


def _describe(value: Any) -> str:
    """A short description of a received value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


def _check_tensor_map(field: str, value: Any, allow_tensor: bool) -> None:
    if allow_tensor and isinstance(value, torch.Tensor):
        return
    if not isinstance(value, Mapping):
        kind = "a Tensor or a dict of Tensors" if allow_tensor else "a dict of str to Tensor"
        raise TypeError(f"EstimatorSpec `{field}` must be {kind}; received {_describe(value)}.")
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"EstimatorSpec `{field}` keys must be str; received key {key!r}.")
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"EstimatorSpec `{field}[{key!r}]` must be a Tensor; received {_describe(item)}.")


def _is_metric(value: Any) -> bool:
    if hasattr(value, "stats") and callable(getattr(value, "compute", None)):
        return True
    return all(callable(getattr(value, name, None)) for name in ("update", "compute", "reset"))


def _check_hooks(field: str, hooks: Any) -> tuple[Any, ...]:
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


@dataclasses.dataclass(frozen=True)
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
        export_outputs: A dict of signature name to export output, used when exporting.
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
    training_chief_hooks: Sequence[Any] = ()
    training_hooks: Sequence[Any] = ()
    evaluation_hooks: Sequence[Any] = ()
    prediction_hooks: Sequence[Any] = ()
    fetches: Mapping[str, torch.Tensor] | None = None
    summaries: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
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
        if self.export_outputs is not None and not isinstance(self.export_outputs, Mapping):
            raise TypeError(
                f"EstimatorSpec `export_outputs` must be a dict of signature name to export output; "
                f"received {_describe(self.export_outputs)}."
            )
        if self.fetches is not None:
            _check_tensor_map("fetches", self.fetches, allow_tensor=False)
        if self.summaries is not None:
            if not isinstance(self.summaries, Mapping) or not all(isinstance(k, str) for k in self.summaries):
                raise TypeError(
                    f"EstimatorSpec `summaries` must be a dict of str tag to value; received {_describe(self.summaries)}."
                )
        for field in _HOOK_FIELDS:
            value = getattr(self, field)
            if value != ():
                object.__setattr__(self, field, _check_hooks(field, value))

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
