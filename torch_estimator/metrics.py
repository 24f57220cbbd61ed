"""Streaming evaluation metrics in the style of ``tf.compat.v1.metrics``.

Each metric function is called on one evaluation batch (usually inside a ``model_fn``) and returns a
:class:`MetricUpdate`: the batch's *additive* sufficient statistics plus a pure function that turns
summed statistics into the metric value.  Because the statistics are additive, batches (and, in
distributed evaluation, processes) are combined by plain summation and the metric is finalized
exactly once at the end, which reproduces TensorFlow's streaming semantics without TF's local
variables.

All statistics are computed with torch ops on the inputs' own device and never force a host-device
synchronization (no ``.item()``, no Python branching on tensor values, no data-dependent shapes).
Counts and sums are kept in ``float64``, except on MPS devices (which have no ``float64``), where
``float32`` is used.

:class:`MetricAccumulator` sums the updates that a ``model_fn`` returns in
``EstimatorSpec.eval_metric_ops`` over batches.  It also accepts objects that follow the
torchmetrics protocol (callable ``update``, ``compute`` and ``reset`` attributes), which keep their
own state.

Example:
    >>> import torch
    >>> from torch_estimator import metrics
    >>> update = metrics.accuracy(torch.tensor([1, 0, 1, 1]),
    ...                           torch.tensor([1, 1, 1, 0]))
    >>> sorted(update.stats)
    ['count', 'total']
    >>> float(update.compute(update.stats))
    0.5
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._host import to_numpy

__all__ = [
    "MetricUpdate",
    "MetricAccumulator",
    "is_metric",
    "accuracy",
    "mean",
    "precision",
    "recall",
    "true_positives",
    "false_positives",
    "true_negatives",
    "false_negatives",
    "auc",
    "mean_squared_error",
    "root_mean_squared_error",
    "mean_absolute_error",
]

Stats = dict[str, torch.Tensor]
ComputeFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]

# TF v1 `auc`: thresholds are padded by this to include predictions of exactly 0 and 1, and this
# epsilon is added in the rate divisions.
_THRESHOLD_EPSILON = 1e-7
_AUC_EPSILON = 1e-6
_CURVES = ("ROC", "PR")
_SUMMATION_METHODS = ("trapezoidal", "careful_interpolation", "minoring", "majoring")


@dataclasses.dataclass(frozen=True, eq=False)
class MetricUpdate:
    """One batch's contribution to a streaming metric.

    Attributes:
        stats: Additive sufficient statistics of this batch.  Statistics of several batches (or
            processes) are combined by summing the tensors key by key.
        compute: Pure function mapping summed ``stats`` to the metric value.
    """

    stats: dict[str, torch.Tensor]
    compute: ComputeFn


# Input preparation.


def _stat_dtype(device: torch.device) -> torch.dtype:
    """Returns the dtype used for statistics on ``device``."""
    return torch.float32 if device.type == "mps" else torch.float64


def _device_of(*values: Any) -> torch.device:
    """Returns the device of the first tensor in ``values`` (CPU if none)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    """Converts ``value`` (tensor, numpy array, number, list) to a tensor on ``device``."""
    tensor = torch.as_tensor(value)
    if device.type == "mps" and tensor.dtype == torch.float64:
        tensor = tensor.to(torch.float32)
    return tensor.detach().to(device)


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _remove_squeezable_dimensions(
    labels: torch.Tensor, predictions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squeezes a trailing size-1 dimension so that the ranks match (as TF)."""
    if predictions.dim() - labels.dim() == 1 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    elif labels.dim() - predictions.dim() == 1 and labels.shape[-1] == 1:
        labels = labels.squeeze(-1)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"Shapes of labels {_shape(labels)} and predictions "
            f"{_shape(predictions)} are incompatible."
        )
    return labels, predictions


def _broadcast_weights(
    weights: Any, values: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Broadcasts ``weights`` to the shape of ``values`` following TF's rules.

    Weights may be ``None`` (all ones), a scalar, or a tensor whose rank equals that of ``values``
    (or differs by a trailing dimension, which is squeezed or added as TF does) and whose every
    dimension is 1 or equal to the corresponding dimension of ``values``.

    Raises:
        ValueError: If ``weights`` cannot be broadcast to ``values``.
    """
    if weights is None or isinstance(weights, (int, float)):
        fill = 1.0 if weights is None else float(weights)
        return torch.full(values.shape, fill, dtype=dtype, device=values.device)
    weights = _as_tensor(weights, values.device).to(dtype)
    if weights.dim() == 0:
        return weights.expand(values.shape)
    if weights.dim() - values.dim() == 1 and weights.shape[-1] == 1:
        weights = weights.squeeze(-1)
    elif values.dim() - weights.dim() == 1:
        weights = weights.unsqueeze(-1)
    compatible = weights.dim() == values.dim() and all(
        w in (1, v) for w, v in zip(weights.shape, values.shape)
    )
    if not compatible:
        raise ValueError(
            f"weights shape {_shape(weights)} cannot be broadcast to values "
            f"shape {_shape(values)}."
        )
    return weights.expand(values.shape)


def _prepare(
    labels: Any, predictions: Any, weights: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Converts, shape-checks and flattens labels, predictions and weights.

    Returns:
        Flat ``(labels, predictions, weights)`` on the predictions' device, with weights in the
        statistics dtype.

    Raises:
        ValueError: On incompatible shapes.
    """
    device = _device_of(predictions, labels, weights)
    labels = _as_tensor(labels, device)
    predictions = _as_tensor(predictions, device)
    labels, predictions = _remove_squeezable_dimensions(labels, predictions)
    weights = _broadcast_weights(weights, predictions, _stat_dtype(device))
    return labels.reshape(-1), predictions.reshape(-1), weights.reshape(-1)


# Shared statistics and finalizers.


def _safe_div(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (as TF)."""
    positive = denominator > 0
    return torch.where(
        positive, numerator / torch.where(positive, denominator, 1), 0
    )


def _weighted_mean_stats(values: torch.Tensor, weights: torch.Tensor) -> Stats:
    """Returns the weighted ``total`` and ``count`` of flat ``values``."""
    return {
        "total": (values.to(weights.dtype) * weights).sum(),
        "count": weights.sum(),
    }


def _mean_value(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return _safe_div(stats["total"], stats["count"])


def _sqrt_mean_value(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(_mean_value(stats))


def _mean_update(values: torch.Tensor, weights: torch.Tensor) -> MetricUpdate:
    return MetricUpdate(_weighted_mean_stats(values, weights), _mean_value)


def _confusion_counts(
    labels: torch.Tensor,
    scores: torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor,
) -> Stats:
    """Weighted confusion counts at each of the increasing ``thresholds``.

    An example counts as predicted positive at a threshold when its score is strictly greater.
    Binary metrics use the single threshold 0 with ``score = prediction != 0``.  Works by a stable
    sort and cumulative sums (deterministic, no scatter, no host-device sync).

    Args:
        labels: Flat labels; nonzero means positive.
        scores: Flat scores, same dtype as ``thresholds``.
        weights: Flat weights in the statistics dtype.
        thresholds: Sorted 1-D thresholds.

    Returns:
        ``tp``, ``fp``, ``tn`` and ``fn``, each shaped like ``thresholds``.
    """
    positive = labels.to(torch.bool)
    sorted_scores, order = torch.sort(scores, stable=True)
    by_class = torch.stack(
        [torch.where(positive, weights, 0), torch.where(positive, 0, weights)]
    ).index_select(1, order)
    zeros = by_class.new_zeros(2, 1)
    # Column j: weight of the j lowest scores / of all the others.
    lowest = torch.cat([zeros, by_class.cumsum(1)], 1)
    highest = torch.cat([by_class.flip(1).cumsum(1).flip(1), zeros], 1)
    # Number of scores <= each threshold, i.e. predicted negative there.
    split = torch.searchsorted(sorted_scores, thresholds, right=True)
    at_or_below, above = lowest.index_select(1, split), highest.index_select(1, split)
    return {"tp": above[0], "fp": above[1], "tn": at_or_below[1], "fn": at_or_below[0]}


def _binary_counts(labels: Any, predictions: Any, weights: Any) -> Stats:
    """Weighted scalar ``tp``, ``fp``, ``tn``, ``fn`` with bool-cast inputs."""
    labels, predictions, weights = _prepare(labels, predictions, weights)
    scores = predictions.to(torch.bool).to(torch.float32)
    threshold = torch.zeros(1, dtype=torch.float32, device=scores.device)
    counts = _confusion_counts(labels, scores, weights, threshold)
    return {key: value.reshape(()) for key, value in counts.items()}


def _stat_value(key: str, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return stats[key].clone()


def _count_update(key: str, labels: Any, predictions: Any, weights: Any) -> MetricUpdate:
    counts = _binary_counts(labels, predictions, weights)
    return MetricUpdate({key: counts[key]}, functools.partial(_stat_value, key))


def _precision_value(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return _safe_div(stats["tp"], stats["tp"] + stats["fp"])


def _recall_value(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return _safe_div(stats["tp"], stats["tp"] + stats["fn"])


# Public metrics.


def accuracy(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted fraction of predictions that equal the labels.

    As in TF, ``predictions`` are cast to the dtype of ``labels`` before the comparison.  A zero
    total weight gives an accuracy of 0.

    Args:
        labels: Ground truth tensor or array.
        predictions: Predictions of the same shape as ``labels``.
        weights: ``None``, a scalar, or weights broadcastable to ``labels``.

    Returns:
        A :class:`MetricUpdate` with stats ``total`` and ``count``.

    Raises:
        ValueError: If shapes of labels, predictions or weights are incompatible.
    """
    labels, predictions, weights = _prepare(labels, predictions, weights)
    if predictions.dtype != labels.dtype:
        predictions = predictions.to(labels.dtype)
    return _mean_update(labels == predictions, weights)


def mean(values: Any, weights: Any = None) -> MetricUpdate:
    """Weighted mean of ``values`` (0 when the total weight is 0).

    Args:
        values: Tensor or array of any shape.
        weights: ``None``, a scalar, or weights broadcastable to ``values``.

    Returns:
        A :class:`MetricUpdate` with stats ``total`` and ``count``.

    Raises:
        ValueError: If ``weights`` cannot be broadcast to ``values``.
    """
    device = _device_of(values, weights)
    values = _as_tensor(values, device)
    weights = _broadcast_weights(weights, values, _stat_dtype(device))
    return _mean_update(values.reshape(-1), weights.reshape(-1))


def true_positives(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted count of examples with nonzero label and nonzero prediction.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stat ``tp``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    return _count_update("tp", labels, predictions, weights)


def false_positives(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted count of examples with zero label and nonzero prediction.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stat ``fp``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    return _count_update("fp", labels, predictions, weights)


def true_negatives(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted count of examples with zero label and zero prediction.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stat ``tn``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    return _count_update("tn", labels, predictions, weights)


def false_negatives(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted count of examples with nonzero label and zero prediction.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stat ``fn``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    return _count_update("fn", labels, predictions, weights)


def precision(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted ``tp / (tp + fp)`` with bool-cast inputs; 0 when ``tp + fp == 0``.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stats ``tp`` and ``fp``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    counts = _binary_counts(labels, predictions, weights)
    return MetricUpdate({"tp": counts["tp"], "fp": counts["fp"]}, _precision_value)


def recall(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted ``tp / (tp + fn)`` with bool-cast inputs; 0 when ``tp + fn == 0``.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Predictions of the same shape; cast to bool.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stats ``tp`` and ``fn``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    counts = _binary_counts(labels, predictions, weights)
    return MetricUpdate({"tp": counts["tp"], "fn": counts["fn"]}, _recall_value)


def _auc_thresholds(num_thresholds: int, device: torch.device) -> torch.Tensor:
    """TF v1 thresholds as float32: ``-eps``, ``i / (n - 1)`` for ``0 < i < n - 1``, ``1 + eps``.

    Built on ``device`` directly (no host-to-device copy).  The interior points are divided in the
    statistics dtype, i.e. in float64 like TF's Python floats except on MPS, and then rounded to
    float32 as TF does.
    """
    step = torch.arange(1, num_thresholds - 1, dtype=_stat_dtype(device), device=device)
    interior = (step / (num_thresholds - 1)).to(torch.float32)
    low = torch.full((1,), 0.0 - _THRESHOLD_EPSILON, dtype=torch.float32, device=device)
    high = torch.full((1,), 1.0 + _THRESHOLD_EPSILON, dtype=torch.float32, device=device)
    return torch.cat([low, interior, high])


def _interpolate_pr_auc(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """TF's ``careful_interpolation`` PR-AUC (Davis & Goadrich 2006)."""
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    prec_slope = _safe_div(dtp, torch.clamp_min(p[:-1] - p[1:], 0))
    intercept = tp[1:] - prec_slope * p[1:]
    both_positive = (p[:-1] > 0) & (p[1:] > 0)
    p_ratio = torch.where(
        both_positive, _safe_div(p[:-1], torch.clamp_min(p[1:], 0)), 1
    )
    increments = _safe_div(
        prec_slope * (dtp + intercept * torch.log(p_ratio)),
        torch.clamp_min(tp[1:] + fn[1:], 0),
    )
    return increments.sum()


def _auc_value(
    curve: str, summation_method: str, stats: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Area under the ROC or PR curve from per-threshold confusion counts."""
    tp, fp, tn, fn = stats["tp"], stats["fp"], stats["tn"], stats["fn"]
    if curve == "PR" and summation_method == "careful_interpolation":
        return _interpolate_pr_auc(tp, fp, fn)
    eps = _AUC_EPSILON
    recall_at = (tp + eps) / (tp + fn + eps)
    if curve == "ROC":
        x, y = fp / (fp + tn + eps), recall_at
    else:
        x, y = recall_at, (tp + eps) / (tp + fp + eps)
    if summation_method == "minoring":
        heights = torch.minimum(y[:-1], y[1:])
    elif summation_method == "majoring":
        heights = torch.maximum(y[:-1], y[1:])
    else:
        heights = (y[:-1] + y[1:]) / 2.0
    return ((x[:-1] - x[1:]) * heights).sum()


def auc(
    labels: Any,
    predictions: Any,
    weights: Any = None,
    num_thresholds: int = 200,
    curve: str = "ROC",
    summation_method: str = "trapezoidal",
) -> MetricUpdate:
    """Approximate area under the ROC or PR curve, as ``tf.compat.v1.metrics.auc``.

    Uses TF v1's thresholds ``[-1e-7, 1/(n-1), ..., (n-2)/(n-1), 1 + 1e-7]`` and counts an example
    as predicted positive at a threshold when its prediction (cast to float32, as TF does) is
    strictly greater.  Labels are cast to bool.  Predictions are expected in ``[0, 1]``; unlike TF
    this is not asserted, since that would need a host-device sync.

    Args:
        labels: Ground truth; cast to bool.
        predictions: Scores of the same shape as ``labels``, in ``[0, 1]``.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.
        num_thresholds: Number of thresholds (at least 2).
        curve: ``"ROC"`` or ``"PR"``.
        summation_method: ``"trapezoidal"`` (TF's default), ``"minoring"``, ``"majoring"`` or
            ``"careful_interpolation"`` (which, as in TF, means trapezoidal for ROC).

    Returns:
        A :class:`MetricUpdate` with stats ``tp``, ``fp``, ``tn`` and ``fn``, each of shape
        ``[num_thresholds]``.

    Raises:
        ValueError: On a bad ``curve``, ``summation_method`` or ``num_thresholds``, or incompatible
            shapes.
    """
    if curve not in _CURVES:
        raise ValueError(f"curve must be either ROC or PR, {curve!r} unknown.")
    if summation_method not in _SUMMATION_METHODS:
        raise ValueError(
            f"Invalid summation_method: {summation_method!r}; expected one of "
            f"{_SUMMATION_METHODS}."
        )
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2, received {num_thresholds!r}.")
    labels, predictions, weights = _prepare(labels, predictions, weights)
    thresholds = _auc_thresholds(num_thresholds, predictions.device)
    counts = _confusion_counts(labels, predictions.to(torch.float32), weights, thresholds)
    return MetricUpdate(counts, functools.partial(_auc_value, curve, summation_method))


def _regression_inputs(
    labels: Any, predictions: Any, weights: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat labels and predictions in the statistics dtype, plus weights."""
    labels, predictions, weights = _prepare(labels, predictions, weights)
    return labels.to(weights.dtype), predictions.to(weights.dtype), weights


def mean_squared_error(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted mean of ``(labels - predictions) ** 2``.

    Args:
        labels: Ground truth tensor or array.
        predictions: Predictions of the same shape as ``labels``.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stats ``total`` and ``count``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    labels, predictions, weights = _regression_inputs(labels, predictions, weights)
    return _mean_update((labels - predictions).square(), weights)


def root_mean_squared_error(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Square root of the weighted mean squared error.

    Args:
        labels: Ground truth tensor or array.
        predictions: Predictions of the same shape as ``labels``.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stats ``total`` and ``count``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    mse = mean_squared_error(labels, predictions, weights)
    return MetricUpdate(mse.stats, _sqrt_mean_value)


def mean_absolute_error(labels: Any, predictions: Any, weights: Any = None) -> MetricUpdate:
    """Weighted mean of ``|labels - predictions|``.

    Args:
        labels: Ground truth tensor or array.
        predictions: Predictions of the same shape as ``labels``.
        weights: ``None``, a scalar, or weights broadcastable to ``predictions``.

    Returns:
        A :class:`MetricUpdate` with stats ``total`` and ``count``.

    Raises:
        ValueError: If shapes are incompatible.
    """
    labels, predictions, weights = _regression_inputs(labels, predictions, weights)
    return _mean_update((labels - predictions).abs(), weights)


# Accumulation.


def is_metric(obj: Any) -> bool:
    """Whether ``obj`` follows the torchmetrics protocol.

    Such objects have callable ``update``, ``compute`` and ``reset`` attributes.  A
    :class:`MetricUpdate` is *not* such an object; check it with ``isinstance``.

    Args:
        obj: Any object.

    Returns:
        True if ``obj`` has callable ``update``, ``compute`` and ``reset``.
    """
    if isinstance(obj, MetricUpdate):
        return False
    return all(callable(getattr(obj, attr, None)) for attr in ("update", "compute", "reset"))


class MetricAccumulator:
    """Accumulates ``eval_metric_ops`` values over batches; finalizes once.

    Every batch must provide the same metric names.  A :class:`MetricUpdate` has its stats summed in
    place (no host-device sync); an object following the torchmetrics protocol (see
    :func:`is_metric`) is expected to be updated by the user's ``model_fn`` itself and is only
    remembered, then computed and reset by :meth:`compute`.

    Example:
        >>> import torch
        >>> from torch_estimator import metrics
        >>> accumulator = metrics.MetricAccumulator()
        >>> accumulator.update(
        ...     {"acc": metrics.accuracy(torch.tensor([1, 0]), torch.tensor([1, 0]))})
        >>> accumulator.update(
        ...     {"acc": metrics.accuracy(torch.tensor([1, 1]), torch.tensor([0, 1]))})
        >>> accumulator.stats()["acc"]["count"]
        tensor(4., dtype=torch.float64)
        >>> print(accumulator.compute()["acc"])
        0.75
    """

    def __init__(self) -> None:
        self._names: list[str] | None = None
        self._sums: dict[str, Stats] = {}
        self._computes: dict[str, ComputeFn] = {}
        self._objects: dict[str, Any] = {}

    def update(self, metric_ops: Mapping[str, Any] | None) -> None:
        """Adds one batch's ``eval_metric_ops``.

        The whole batch is validated before any state changes.

        Args:
            metric_ops: Mapping from metric name to a :class:`MetricUpdate` or a
                torchmetrics-protocol object; ``None`` means no metrics.

        Raises:
            TypeError: If a value is neither kind of metric.
            ValueError: If the metric names, a metric's kind, its stat keys or stat shapes differ
                from earlier batches, or a different protocol object is passed under the same name.
        """
        metric_ops = dict(metric_ops or {})
        if self._names is not None and set(metric_ops) != set(self._names):
            raise ValueError(
                "eval_metric_ops must have the same names in every batch: "
                f"expected {sorted(self._names)}, received {sorted(metric_ops)}."
            )
        for name, op in metric_ops.items():
            self._check(name, op)
        for name, op in metric_ops.items():
            self._add(name, op)
        if self._names is None:
            self._names = list(metric_ops)

    def _check(self, name: str, op: Any) -> None:
        """Validates ``op`` against what earlier batches gave for ``name``."""
        if isinstance(op, MetricUpdate):
            if name in self._objects:
                raise ValueError(
                    f"eval_metric_ops[{name!r}] was a metric object in an earlier "
                    "batch but received a MetricUpdate."
                )
            if name in self._sums:
                self._check_stats(name, op.stats)
        elif is_metric(op):
            if name in self._sums:
                raise ValueError(
                    f"eval_metric_ops[{name!r}] was a MetricUpdate in an earlier "
                    f"batch but received {type(op)!r}."
                )
            if name in self._objects and self._objects[name] is not op:
                raise ValueError(
                    f"eval_metric_ops[{name!r}] received a different {type(op)!r} "
                    "object than in an earlier batch; create the metric object once "
                    "and reuse it across batches."
                )
        else:
            raise TypeError(
                f"eval_metric_ops[{name!r}] must be a MetricUpdate (from "
                "torch_estimator.metrics) or an object with update/compute/reset "
                f"methods; received {type(op)!r}"
            )

    def _check_stats(self, name: str, stats: Mapping[str, torch.Tensor]) -> None:
        """Checks that stat keys and shapes match the accumulated ones."""
        summed = self._sums[name]
        if set(stats) != set(summed):
            raise ValueError(
                f"eval_metric_ops[{name!r}] stat keys changed between batches: "
                f"expected {sorted(summed)}, received {sorted(stats)}."
            )
        for key, value in stats.items():
            if tuple(value.shape) != tuple(summed[key].shape):
                raise ValueError(
                    f"eval_metric_ops[{name!r}] stat {key!r} shape changed between "
                    f"batches: expected {tuple(summed[key].shape)}, received "
                    f"{tuple(value.shape)}."
                )

    def _add(self, name: str, op: Any) -> None:
        """Adds a validated ``op`` to the state."""
        if not isinstance(op, MetricUpdate):
            self._objects[name] = op
        elif name not in self._sums:
            self._sums[name] = {key: value.detach().clone() for key, value in op.stats.items()}
            self._computes[name] = op.compute
        else:
            for key, value in op.stats.items():
                self._sums[name][key].add_(value.detach())

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Returns the current summed stats of every :class:`MetricUpdate` metric.

        The tensors are the accumulator's own buffers (not copies); protocol objects are not
        included.

        Returns:
            ``{metric name: {stat key: summed tensor}}``.
        """
        return {name: dict(stats) for name, stats in self._sums.items()}

    def compute(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Finalizes all metrics and resets the protocol objects.

        Summed stats are left untouched, so calling :meth:`reset` before the next evaluation is the
        caller's job.

        Args:
            reduce: Optional function applied to every summed stat tensor before finalizing, e.g. an
                all-reduce SUM across processes in distributed evaluation.  It must return the
                reduced tensor and should not modify its input.  Protocol objects are not passed
                through it (torchmetrics synchronizes itself).

        Returns:
            ``{metric name: value}``; tensor results become numpy scalars (0-dim) or ``np.ndarray``,
            other results are returned as is.
        """
        results: dict[str, Any] = {}
        for name in self._names or []:
            if name in self._sums:
                stats = self._sums[name]
                if reduce is not None:
                    stats = {key: reduce(value) for key, value in stats.items()}
                results[name] = to_numpy(self._computes[name](stats))
            else:
                results[name] = to_numpy(self._objects[name].compute())
        for obj in self._objects.values():
            obj.reset()
        return results

    def reset(self) -> None:
        """Forgets all accumulated state (and resets remembered protocol objects)."""
        for obj in self._objects.values():
            obj.reset()
        self._names = None
        self._sums.clear()
        self._computes.clear()
        self._objects.clear()
