"""Heads: loss, predictions, evaluation metrics and export outputs from logits (TF's ``tf.estimator.*Head``).

A head turns a model's logits into a complete :class:`~torch_estimator.EstimatorSpec` for any mode, so a
custom ``model_fn`` needs only the network::

    head = BinaryClassHead()

    def model_fn(features, labels, mode, model):
        return head.create_estimator_spec(features, mode, model(features["x"]), labels)

Prediction keys, metric names and export signatures are TF's (``est/canned/prediction_keys.py``,
``metric_keys.py``, ``est/head/*.py``). The one difference is classes: a tensor holds no strings, so
``classes`` and ``all_classes`` are integer class ids (as ``class_ids``), string labels are mapped to ids
before they become tensors (:func:`encode_labels`) and back after prediction (:func:`decode_classes`), and a
classifier's export records the class names (``label_vocabulary``, else ``"0"``, ``"1"``, ...) in its
``ClassificationOutput`` so that a server can name them.

Data-dependent label checks (ids in range) never stall an accelerator: on the CPU they raise at once, on a
GPU they are queued device-side assertions (see :func:`~torch_estimator.canned.encoding.check_values`).

Example:
    >>> import torch
    >>> head = MultiClassHead(n_classes=3)
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> sorted(head.predictions(logits))
    ['all_class_ids', 'all_classes', 'class_ids', 'classes', 'logits', 'probabilities']
    >>> head.predictions(logits)["class_ids"].tolist()
    [[0], [2]]
    >>> round(float(head.loss(torch.tensor([0, 2]), logits)), 4)
    0.1672
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..export.outputs import ClassificationOutput, PredictOutput, RegressionOutput
from ..metrics import MetricUpdate, accuracy, auc, mean, precision, recall
from ..spec import EstimatorSpec, ModeKeys
from .encoding import check_values
from .feature_columns import NumericColumn

__all__ = [
    "Head",
    "BinaryClassHead",
    "MultiClassHead",
    "MultiLabelHead",
    "RegressionHead",
    "PoissonRegressionHead",
    "LogisticRegressionHead",
    "LossReduction",
    "PredictionKeys",
    "MetricKeys",
    "encode_labels",
    "decode_classes",
]


class LossReduction:
    """How the per-example losses of a batch become the training loss (TF's ``tf.losses.Reduction``)."""

    SUM = "sum"  # weighted sum
    SUM_OVER_BATCH_SIZE = "sum_over_batch_size"  # weighted sum / number of loss elements (TF2's default)

    ALL = (SUM, SUM_OVER_BATCH_SIZE)


class PredictionKeys:
    """The keys of a head's predictions (TF's ``prediction_keys.PredictionKeys``)."""

    LOGITS = "logits"
    LOGISTIC = "logistic"
    PROBABILITIES = "probabilities"
    CLASS_IDS = "class_ids"
    CLASSES = "classes"
    ALL_CLASS_IDS = "all_class_ids"
    ALL_CLASSES = "all_classes"
    PREDICTIONS = "predictions"


class MetricKeys:
    """Evaluation metric names (TF's ``metric_keys.MetricKeys``)."""

    LOSS = "loss"
    LOSS_MEAN = "average_loss"
    LOSS_REGULARIZATION = "regularization_loss"
    ACCURACY = "accuracy"
    PRECISION = "precision"
    RECALL = "recall"
    ACCURACY_BASELINE = "accuracy_baseline"
    AUC = "auc"
    AUC_PR = "auc_precision_recall"
    LABEL_MEAN = "label/mean"
    PREDICTION_MEAN = "prediction/mean"
    ACCURACY_AT_THRESHOLD = "accuracy/positive_threshold_%g"
    PRECISION_AT_THRESHOLD = "precision/positive_threshold_%g"
    RECALL_AT_THRESHOLD = "recall/positive_threshold_%g"
    PROBABILITY_MEAN_AT_CLASS = "probability_mean/class%d"
    AUC_AT_CLASS = "auc/class%d"
    AUC_PR_AT_CLASS = "auc_precision_recall/class%d"
    PROBABILITY_MEAN_AT_NAME = "probability_mean/%s"
    AUC_AT_NAME = "auc/%s"
    AUC_PR_AT_NAME = "auc_precision_recall/%s"


DEFAULT_SERVING_KEY = "serving_default"
CLASSIFY_SERVING_KEY = "classification"
REGRESS_SERVING_KEY = "regression"
PREDICT_SERVING_KEY = "predict"

_LABEL_NONE = (
    "You must provide a labels Tensor in TRAIN and EVAL mode; received None. Return (features, labels) from "
    "input_fn."
)


# ----------------------------------------------------------------------------------------------------------
# Label vocabularies (host side).


def select_predictions(predictions: dict[Any, torch.Tensor], keys: Sequence[Any] | None, owner: str) -> dict[Any, torch.Tensor]:
    """``predictions`` restricted to ``keys`` (in that order), or all of them when ``keys`` is empty or None.

    Raises:
        ValueError: Naming the ``owner`` (a head), the unknown keys and the known ones.
    """
    if not keys:
        return predictions
    unknown = [k for k in keys if k not in predictions]
    if unknown:
        raise ValueError(f"{owner}: prediction keys {unknown} are not among {sorted(predictions)}.")
    return {k: predictions[k] for k in keys}


def _check_vocabulary(label_vocabulary: Any, n_classes: int, owner: str) -> tuple[str, ...] | None:
    if label_vocabulary is None:
        return None
    if not isinstance(label_vocabulary, (list, tuple)) or not all(isinstance(v, str) for v in label_vocabulary):
        raise ValueError(f"{owner}: `label_vocabulary` must be a list or tuple of strings; received {label_vocabulary!r}.")
    duplicates = sorted({v for v in label_vocabulary if label_vocabulary.count(v) > 1})
    if duplicates:
        raise ValueError(f"{owner}: `label_vocabulary` has duplicates {duplicates}.")
    if len(label_vocabulary) != n_classes:
        raise ValueError(
            f"{owner}: `label_vocabulary` must have n_classes ({n_classes}) entries; received "
            f"{len(label_vocabulary)}: {list(label_vocabulary)}."
        )
    return tuple(label_vocabulary)


def encode_labels(labels: Any, label_vocabulary: Sequence[str]) -> np.ndarray:
    """String labels -> int64 class ids (their index in ``label_vocabulary``), for ``input_fn``.

    Raises:
        ValueError: If a label is not in the vocabulary (the message lists them).

    Example:
        >>> encode_labels(["cat", "dog", "cat"], ["dog", "cat"]).tolist()
        [1, 0, 1]
    """
    vocabulary = list(label_vocabulary)
    index = {value: i for i, value in enumerate(vocabulary)}
    array = labels.to_numpy() if callable(getattr(labels, "to_numpy", None)) else np.asarray(labels)
    flat = [value.decode("utf-8") if isinstance(value, bytes) else value for value in array.astype(object).ravel()]
    unknown = sorted({repr(value) for value in flat if value not in index})
    if unknown:
        raise ValueError(
            f"Labels {', '.join(unknown[:10])} are not in label_vocabulary {vocabulary}; every label must be one of them."
        )
    return np.array([index[value] for value in flat], dtype=np.int64).reshape(array.shape)


def decode_classes(class_ids: Any, label_vocabulary: Sequence[str] | None = None) -> np.ndarray:
    """Class ids (``classes`` / ``class_ids`` predictions) -> class names: the vocabulary's strings, or the
    ids as strings without one (TF's ``classes`` values, as ``str`` rather than ``bytes``).

    Example:
        >>> decode_classes([[1], [0]], ["dog", "cat"]).tolist()
        [['cat'], ['dog']]
    """
    ids = np.asarray(class_ids.detach().cpu() if isinstance(class_ids, torch.Tensor) else class_ids, dtype=np.int64)
    if label_vocabulary is None:
        return ids.astype(str)
    return np.asarray(list(label_vocabulary), dtype=object)[ids].astype(str)


# ----------------------------------------------------------------------------------------------------------
# Shared helpers.


def _safe_ratio(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    total, count = stats["total"], stats["count"]
    positive = count > 0
    return torch.where(positive, total / torch.where(positive, count, torch.ones_like(count)), torch.zeros_like(total))


def _accuracy_baseline_value(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """max(label mean, 1 - label mean): the accuracy of always predicting the more frequent class."""
    total, count = stats["total"], stats["count"]
    return _safe_ratio({"total": torch.maximum(total, count - total), "count": count})


def _accuracy_baseline(label_mean: MetricUpdate) -> MetricUpdate:
    return MetricUpdate(dict(label_mean.stats), _accuracy_baseline_value)


def _regularization_mean(regularization_loss: torch.Tensor) -> MetricUpdate:
    return mean(regularization_loss.detach().reshape(1))


def _check_threshold_list(thresholds: Any, owner: str) -> tuple[float, ...]:
    if not thresholds:
        return ()
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Iterable):
        raise ValueError(f"{owner}: `thresholds` must be a list of floats in (0, 1); received {thresholds!r}.")
    values = tuple(thresholds)
    for t in values:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 < float(t) < 1.0:
            raise ValueError(f"{owner}: thresholds not in (0, 1): {values!r}.")
    return tuple(float(t) for t in values)


def _check_loss_fn(loss_fn: Any, owner: str) -> tuple[str, ...]:
    if loss_fn is None:
        return ()
    if not callable(loss_fn):
        raise ValueError(f"{owner}: `loss_fn` must be callable loss_fn(labels, logits[, features]); received {loss_fn!r}.")
    names = tuple(inspect.signature(loss_fn).parameters)
    if not {"labels", "logits"} <= set(names) <= {"labels", "logits", "features"}:
        raise ValueError(
            f"{owner}: `loss_fn` must take (labels, logits) or (labels, logits, features); received arguments {list(names)}."
        )
    return names


class Head:
    """Base class: loss, predictions, metrics and export outputs from logits.

    Subclasses set ``_logits_dimension`` and implement label processing, the unreduced loss, predictions,
    metrics and export outputs.

    Args:
        weight_column: A feature key (or ``numeric_column``) whose values weight each example's loss and metrics.
        loss_reduction: ``"sum_over_batch_size"`` (weighted sum / number of loss elements, TF2's default) or
            ``"sum"``.
        loss_fn: Optional ``loss_fn(labels, logits[, features])`` returning the unreduced loss, shaped like
            the head's (``[batch, 1]``, or ``[batch, label_dimension]`` for regression).
        name: Suffixes metric and summary keys as ``<key>/<name>``.
    """

    _logits_dimension = 1

    def __init__(
        self,
        weight_column: str | NumericColumn | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if loss_reduction not in LossReduction.ALL:
            raise ValueError(
                f"{owner}: invalid `loss_reduction` {loss_reduction!r}; expected one of {LossReduction.ALL} "
                f"(LossReduction.SUM_OVER_BATCH_SIZE or LossReduction.SUM)."
            )
        if weight_column is not None and not isinstance(weight_column, (str, NumericColumn)):
            raise ValueError(f"{owner}: `weight_column` must be a feature key, a numeric_column or None; received {weight_column!r}.")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{owner}: `name` must be a non-empty string or None; received {name!r}.")
        self._loss_fn_args = _check_loss_fn(loss_fn, owner)
        self._weight_column, self._loss_reduction, self._loss_fn, self._name = weight_column, loss_reduction, loss_fn, name

    def _check_weight_column_shape(self) -> None:
        """Call once the logits dimension is known: a numeric weight column holds one weight per example
        (or, for regression, one per label value)."""
        column = self._weight_column
        widths = sorted({1, self._weight_width()})
        if isinstance(column, NumericColumn) and column.shape not in [(w,) for w in widths]:
            allowed = " or ".join(f"({w},)" for w in widths)
            raise ValueError(f"{type(self).__name__}: `weight_column` must have shape {allowed}; received {column.shape}.")

    def _weight_width(self) -> int:
        """The widest weights the head accepts: one per example (per label value for regression)."""
        return 1

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def logits_dimension(self) -> int:
        """The size of the last dimension of the logits the head expects."""
        return self._logits_dimension

    @property
    def loss_reduction(self) -> str:
        return self._loss_reduction

    @property
    def weight_column(self) -> str | NumericColumn | None:
        return self._weight_column

    def _key(self, key: str) -> str:
        return f"{key}/{self._name}" if self._name else key

    # -- inputs ---------------------------------------------------------------------------------------

    def _check_logits(self, logits: Any) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(f"{type(self).__name__}: `logits` must be a floating-point Tensor; received {type(logits).__name__}.")
        if logits.dim() == 1 and self._logits_dimension == 1:
            logits = logits.unsqueeze(-1)
        if logits.dim() < 2 or logits.shape[-1] != self._logits_dimension:
            raise ValueError(
                f"{type(self).__name__}: logits shape must be [batch_size, {self._logits_dimension}]; received "
                f"{list(logits.shape)}."
            )
        return logits

    def _labels_for(self, labels: Any, logits: torch.Tensor, width: int) -> torch.Tensor:
        """Labels as ``[batch, width]`` with the logits' batch size (``[batch]`` accepted when width is 1)."""
        if labels is None:
            raise ValueError(_LABEL_NONE)
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(labels)
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: labels must be a Tensor; received {type(labels).__name__}.")
        received = list(labels.shape)
        if labels.dim() == 1 and width == 1:
            labels = labels.unsqueeze(-1)
        if labels.dim() != logits.dim() or labels.shape[:-1] != logits.shape[:-1] or labels.shape[-1] != width:
            raise ValueError(
                f"{type(self).__name__}: labels shape must be [batch_size, {width}] (or [batch_size] when it is 1) "
                f"with the logits' batch size; received labels {received} for logits {list(logits.shape)}."
            )
        return labels.to(logits.device)

    def _weights(self, features: Any, logits: torch.Tensor) -> torch.Tensor | None:
        """``[batch, 1]`` float example weights (or ``[batch, label_dimension]`` per-value weights where the
        head takes them) from the weight column, or None."""
        if self._weight_column is None:
            return None
        key = self._weight_column if isinstance(self._weight_column, str) else self._weight_column.key
        if not isinstance(features, Mapping) or key not in features:
            received = sorted(features) if isinstance(features, Mapping) else type(features).__name__
            raise ValueError(f"{type(self).__name__}: weight_column {key!r} is not in the features; received {received}.")
        weights = features[key]
        if isinstance(weights, np.ndarray):
            weights = torch.from_numpy(weights)
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: weights (feature {key!r}) must be a Tensor; received {type(weights).__name__}.")
        if weights.dim() == logits.dim() - 1:
            weights = weights.unsqueeze(-1)
        width = self._weight_width()
        if weights.shape[:-1] != logits.shape[:-1] or weights.shape[-1] not in (1, width):
            allowed = "[batch_size] or [batch_size, 1]" + (f" or [batch_size, {width}]" if width > 1 else "")
            raise ValueError(
                f"{type(self).__name__}: weights shape (feature {key!r}) must be {allowed}; received "
                f"{list(weights.shape)} for logits {list(logits.shape)}."
            )
        return weights.to(device=logits.device, dtype=logits.dtype)

    # -- loss -----------------------------------------------------------------------------------------

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        raise NotImplementedError

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loss_width(self) -> int:
        return 1

    def _unweighted_loss(self, labels: torch.Tensor, logits: torch.Tensor, features: Any) -> torch.Tensor:
        if self._loss_fn is None:
            return self._default_loss(labels, logits)
        kwargs = {"features": features} if "features" in self._loss_fn_args else {}
        loss = self._loss_fn(labels=labels, logits=logits, **kwargs)
        expected = [*logits.shape[:-1], self._loss_width()]
        if not isinstance(loss, torch.Tensor) or list(loss.shape) != expected:
            shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"{type(self).__name__}: loss_fn must return the unreduced loss of shape {expected}; received {shape}.")
        return loss

    def _reduce(self, unweighted: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        weighted = unweighted if weights is None else unweighted * weights
        total = weighted.sum()
        return total if self._loss_reduction == LossReduction.SUM else total / max(unweighted.numel(), 1)

    def _loss_parts(self, features: Any, logits: torch.Tensor, labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Processed labels, the unreduced loss and the weights."""
        labels = self._processed_labels(logits, labels)
        return labels, self._unweighted_loss(labels, logits, features), self._weights(features, logits)

    @staticmethod
    def _sum_regularization(regularization_losses: Sequence[torch.Tensor] | None) -> torch.Tensor | None:
        if not regularization_losses:
            return None
        return torch.stack([torch.as_tensor(r).reshape(()) for r in regularization_losses]).sum()

    def loss(
        self,
        labels: Any,
        logits: torch.Tensor,
        features: Any = None,
        mode: str | None = None,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The training loss: the reduced weighted loss, plus the regularization losses.

        Raises:
            ValueError: For missing labels, bad shapes or label values, or a missing weight column.
        """
        del mode  # every mode computes the same loss
        logits = self._check_logits(logits)
        _, unweighted, weights = self._loss_parts(features, logits, labels)
        return self._regularized(self._reduce(unweighted, weights), regularization_losses)

    def _regularized(self, loss: torch.Tensor, regularization_losses: Sequence[torch.Tensor] | None) -> torch.Tensor:
        regularization = self._sum_regularization(regularization_losses)
        return loss if regularization is None else loss + regularization

    # -- predictions, metrics, export -------------------------------------------------------------------

    def predictions(self, logits: torch.Tensor, keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The predictions for ``logits`` (all keys, or only ``keys``).

        Raises:
            ValueError: For an unknown key.
        """
        logits = self._check_logits(logits)
        return select_predictions(self._predictions(logits), keys, type(self).__name__)

    def _predictions(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _metric_updates(self, labels: torch.Tensor, logits: torch.Tensor, predictions: dict[str, torch.Tensor],
                        unweighted: torch.Tensor, weights: torch.Tensor | None) -> dict[str, MetricUpdate]:
        raise NotImplementedError

    def metrics(
        self,
        features: Any,
        logits: torch.Tensor,
        labels: Any,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, MetricUpdate]:
        """This batch's evaluation metrics (streaming updates, TF's metric names) for ``eval_metric_ops``."""
        logits = self._check_logits(logits)
        return self._metrics(logits, self._loss_parts(features, logits, labels), regularization_losses)

    def _metrics(self, logits: torch.Tensor, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
                 regularization_losses: Sequence[torch.Tensor] | None) -> dict[str, MetricUpdate]:
        labels, unweighted, weights = parts
        with torch.no_grad():
            logits = logits.detach()
            updates = self._metric_updates(labels, logits, self._predictions(logits), unweighted.detach(), weights)
            regularization = self._sum_regularization(regularization_losses)
            if regularization is not None:
                updates[MetricKeys.LOSS_REGULARIZATION] = _regularization_mean(regularization)
        return {self._key(k): v for k, v in updates.items()}

    def export_outputs(self, predictions: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The signatures a PREDICT spec exports, TF's choice: see the subclasses."""
        raise NotImplementedError

    def create_estimator_spec(
        self,
        features: Any,
        mode: str,
        logits: torch.Tensor,
        labels: Any = None,
        *,
        train_op_fn: Callable[[torch.Tensor], Any] | None = None,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> EstimatorSpec:
        """A complete :class:`~torch_estimator.EstimatorSpec` for ``mode``.

        PREDICT: predictions and TF's export outputs. EVAL: loss, predictions and the metrics. TRAIN: loss
        and predictions; the Estimator's optimizer steps on the loss unless ``train_op_fn`` (a custom
        ``train_op(loss)``) is given.

        Args:
            features: The batch's features (the weight column is read from them).
            mode: A :class:`~torch_estimator.ModeKeys` value.
            logits: ``[batch_size, logits_dimension]``.
            labels: Required in TRAIN and EVAL.
            train_op_fn: Optional custom update, passed on as the spec's ``train_op``.
            regularization_losses: Scalars added to the training loss (and reported as ``regularization_loss``).

        Raises:
            ValueError: For a bad mode, missing labels, or bad shapes and values.
        """
        if mode not in ModeKeys.ALL:
            raise ValueError(f"{type(self).__name__}: `mode` must be one of {ModeKeys.ALL}; received {mode!r}.")
        logits = self._check_logits(logits)
        predictions = self._predictions(logits)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(mode, predictions=predictions, export_outputs=self.export_outputs(predictions))
        parts = self._loss_parts(features, logits, labels)
        loss = self._regularized(self._reduce(parts[1], parts[2]), regularization_losses)
        if mode == ModeKeys.EVAL:
            return EstimatorSpec(mode, loss=loss, predictions=predictions,
                                 eval_metric_ops=self._metrics(logits, parts, regularization_losses))
        regularization = self._sum_regularization(regularization_losses)
        summaries = None if regularization is None else {self._key(MetricKeys.LOSS_REGULARIZATION): regularization.detach()}
        return EstimatorSpec(
            mode, loss=loss, predictions={k: v.detach() for k, v in predictions.items()},
            train_op=train_op_fn, summaries=summaries,
        )


def _class_names(n_classes: int, vocabulary: tuple[str, ...] | None) -> list[str]:
    return list(vocabulary) if vocabulary is not None else [str(i) for i in range(n_classes)]


def _classifier_exports(predictions: Mapping[str, torch.Tensor], classes_key: str, n_classes: int,
                        vocabulary: tuple[str, ...] | None, **extra: Any) -> dict[str, Any]:
    """TF's classifier signatures: the classification output as the default and under its own key, any
    ``extra`` outputs, and every prediction under ``predict``."""
    classification = ClassificationOutput(
        scores=predictions[PredictionKeys.PROBABILITIES], classes=predictions[classes_key],
        labels=_class_names(n_classes, vocabulary),
    )
    return {DEFAULT_SERVING_KEY: classification, CLASSIFY_SERVING_KEY: classification, **extra,
            PREDICT_SERVING_KEY: PredictOutput(dict(predictions))}


def _all_ids(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[batch, n_classes]`` of ``0..n-1``, following the logits' batch size (traced dynamically)."""
    ids = torch.arange(n_classes, device=logits.device)
    return torch.zeros_like(logits[..., :1], dtype=torch.int64) + ids


class BinaryClassHead(Head):
    """Single-label binary classification with the sigmoid cross-entropy loss (TF's ``BinaryClassHead``).

    Logits are ``[batch, 1]``; labels ``[batch]`` or ``[batch, 1]`` in ``[0, 1]`` (ids of ``label_vocabulary``
    when it is given: see :func:`encode_labels`).

    Predictions: ``logits``, ``logistic``, ``probabilities`` ``[batch, 2]``, ``class_ids`` and ``classes``
    ``[batch, 1]``, ``all_class_ids`` and ``all_classes`` ``[batch, 2]``. Metrics: ``accuracy``,
    ``accuracy_baseline``, ``auc``, ``auc_precision_recall``, ``average_loss``, ``label/mean``,
    ``prediction/mean``, ``precision``, ``recall`` and, per threshold ``t``, ``accuracy/positive_threshold_t``,
    ``precision/...``, ``recall/...``. Export: ``serving_default`` and ``classification`` (scores = the two
    probabilities, classes = both class ids with their names), ``regression`` (the logistic), ``predict``.

    Args:
        weight_column, loss_reduction, loss_fn, name: See :class:`Head`.
        thresholds: Floats in ``(0, 1)`` for the threshold metrics.
        label_vocabulary: The two class names.

    Raises:
        ValueError: For bad thresholds, vocabulary, loss reduction or loss_fn.
    """

    _logits_dimension = 1

    def __init__(
        self,
        weight_column: str | NumericColumn | None = None,
        thresholds: Sequence[float] | None = None,
        label_vocabulary: Sequence[str] | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight_column=weight_column, loss_reduction=loss_reduction, loss_fn=loss_fn, name=name)
        self._check_weight_column_shape()
        self._thresholds = _check_threshold_list(thresholds, "BinaryClassHead")
        self._label_vocabulary = _check_vocabulary(label_vocabulary, 2, "BinaryClassHead")

    @property
    def label_vocabulary(self) -> tuple[str, ...] | None:
        return self._label_vocabulary

    @property
    def n_classes(self) -> int:
        return 2

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = self._labels_for(labels, logits, 1).to(torch.float32)
        check_values((labels >= 0) & (labels <= 1), lambda: (
            f"BinaryClassHead: labels must be in [0, 1] (class ids 0 and 1, or probabilities); received values "
            f"{sorted(set(labels[(labels < 0) | (labels > 1)].tolist()))[:10]}."
        ))
        return labels

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")

    def _predictions(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        two_class_logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        class_ids = two_class_logits.argmax(-1, keepdim=True)
        all_ids = _all_ids(logits, 2)
        return {
            PredictionKeys.LOGITS: logits,
            PredictionKeys.LOGISTIC: torch.sigmoid(logits),
            PredictionKeys.PROBABILITIES: torch.softmax(two_class_logits, -1),
            PredictionKeys.CLASS_IDS: class_ids,
            PredictionKeys.CLASSES: class_ids,
            PredictionKeys.ALL_CLASS_IDS: all_ids,
            PredictionKeys.ALL_CLASSES: all_ids,
        }

    def _metric_updates(self, labels, logits, predictions, unweighted, weights):  # type: ignore[no-untyped-def]
        class_ids, logistic = predictions[PredictionKeys.CLASS_IDS], predictions[PredictionKeys.LOGISTIC]
        keys = MetricKeys
        label_mean = mean(labels, weights)
        updates = {
            keys.LOSS_MEAN: mean(unweighted, weights),
            keys.ACCURACY: accuracy(labels, class_ids, weights),
            keys.PRECISION: precision(labels, class_ids, weights),
            keys.RECALL: recall(labels, class_ids, weights),
            keys.PREDICTION_MEAN: mean(logistic, weights),
            keys.LABEL_MEAN: label_mean,
            keys.ACCURACY_BASELINE: _accuracy_baseline(label_mean),
            keys.AUC: auc(labels, logistic, weights),
            keys.AUC_PR: auc(labels, logistic, weights, curve="PR", summation_method="careful_interpolation"),
        }
        updates.update(_threshold_updates(self._thresholds, labels, logistic, weights))
        return updates

    def export_outputs(self, predictions: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return _classifier_exports(predictions, PredictionKeys.ALL_CLASS_IDS, 2, self._label_vocabulary,
                                   **{REGRESS_SERVING_KEY: RegressionOutput(predictions[PredictionKeys.LOGISTIC])})


def _threshold_updates(thresholds: tuple[float, ...], labels: torch.Tensor, probabilities: torch.Tensor,
                       weights: torch.Tensor | None) -> dict[str, MetricUpdate]:
    updates = {}
    for t in thresholds:
        positive = probabilities > t
        updates[MetricKeys.ACCURACY_AT_THRESHOLD % t] = accuracy(labels, positive.to(labels.dtype), weights)
        updates[MetricKeys.PRECISION_AT_THRESHOLD % t] = precision(labels, positive, weights)
        updates[MetricKeys.RECALL_AT_THRESHOLD % t] = recall(labels, positive, weights)
    return updates


def _check_n_classes(n_classes: Any, owner: str, minimum: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < minimum:
        raise ValueError(f"{owner}: `n_classes` must be an int >= {minimum}; received {n_classes!r}.")
    return int(n_classes)


class MultiClassHead(Head):
    """Single-label classification over ``n_classes`` with the softmax cross-entropy loss (TF's
    ``MultiClassHead``).

    Logits are ``[batch, n_classes]``; labels ``[batch]`` or ``[batch, 1]`` integer class ids in
    ``[0, n_classes)``. Predictions: ``logits``, ``probabilities``, ``class_ids`` and ``classes``
    ``[batch, 1]``, ``all_class_ids`` and ``all_classes`` ``[batch, n_classes]``. Metrics: ``accuracy``,
    ``average_loss``. Export: ``serving_default`` and ``classification`` (scores = probabilities, classes =
    all class ids with their names), ``predict``.

    Raises:
        ValueError: For ``n_classes <= 2`` (two classes take a :class:`BinaryClassHead`) or a vocabulary that
            does not have ``n_classes`` distinct strings.
    """

    def __init__(
        self,
        n_classes: int,
        weight_column: str | NumericColumn | None = None,
        label_vocabulary: Sequence[str] | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight_column=weight_column, loss_reduction=loss_reduction, loss_fn=loss_fn, name=name)
        self._check_weight_column_shape()
        if isinstance(n_classes, numbers.Integral) and not isinstance(n_classes, bool) and n_classes == 2:
            raise ValueError(
                "MultiClassHead: n_classes must be > 2; received 2. Use BinaryClassHead for two classes (TF's rule)."
            )
        self._n_classes = _check_n_classes(n_classes, "MultiClassHead", 3)
        self._logits_dimension = self._n_classes
        self._label_vocabulary = _check_vocabulary(label_vocabulary, self._n_classes, "MultiClassHead")

    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def label_vocabulary(self) -> tuple[str, ...] | None:
        return self._label_vocabulary

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = self._labels_for(labels, logits, 1)
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(
                f"MultiClassHead: labels must be integer class ids in [0, {self._n_classes}); received dtype "
                f"{labels.dtype}. Map string labels with encode_labels(labels, label_vocabulary)."
            )
        labels = labels.to(torch.int64)
        check_values((labels >= 0) & (labels < self._n_classes), lambda: (
            f"MultiClassHead: labels must be class ids in [0, {self._n_classes}); received "
            f"{sorted(set(labels[(labels < 0) | (labels >= self._n_classes)].tolist()))[:10]}."
        ))
        return labels

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1, self._n_classes)
        safe = labels.reshape(-1).clamp(0, self._n_classes - 1)  # range checked above; never index out of bounds
        return F.cross_entropy(flat, safe, reduction="none").reshape(*logits.shape[:-1], 1)

    def _predictions(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        class_ids = logits.argmax(-1, keepdim=True)
        all_ids = _all_ids(logits, self._n_classes)
        return {
            PredictionKeys.LOGITS: logits,
            PredictionKeys.PROBABILITIES: torch.softmax(logits, -1),
            PredictionKeys.CLASS_IDS: class_ids,
            PredictionKeys.CLASSES: class_ids,
            PredictionKeys.ALL_CLASS_IDS: all_ids,
            PredictionKeys.ALL_CLASSES: all_ids,
        }

    def _metric_updates(self, labels, logits, predictions, unweighted, weights):  # type: ignore[no-untyped-def]
        return {
            MetricKeys.LOSS_MEAN: mean(unweighted, weights),
            MetricKeys.ACCURACY: accuracy(labels, predictions[PredictionKeys.CLASS_IDS], weights),
        }

    def export_outputs(self, predictions: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return _classifier_exports(predictions, PredictionKeys.ALL_CLASS_IDS, self._n_classes, self._label_vocabulary)


class MultiLabelHead(Head):
    """Multi-label classification: each example has zero or more of ``n_classes`` labels; the sigmoid
    cross-entropy averaged over classes (TF's ``MultiLabelHead``).

    Logits are ``[batch, n_classes]``; labels a multi-hot ``[batch, n_classes]`` of 0/1 (build it from lists
    of ids or names with :meth:`multi_hot`). Predictions: ``logits``, ``probabilities``, ``classes`` (all
    class ids, ``[batch, n_classes]``). Metrics: ``average_loss``, ``auc``, ``auc_precision_recall``, threshold
    metrics, and ``probability_mean/``, ``auc/``, ``auc_precision_recall/`` per class in
    ``classes_for_class_based_metrics`` (``class<i>``, or the class name with a vocabulary). Export:
    ``serving_default`` and ``classification``, ``predict``.

    Raises:
        ValueError: For ``n_classes < 2``, bad thresholds, vocabulary or class-based-metric classes.
    """

    def __init__(
        self,
        n_classes: int,
        weight_column: str | NumericColumn | None = None,
        thresholds: Sequence[float] | None = None,
        label_vocabulary: Sequence[str] | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        classes_for_class_based_metrics: Sequence[int | str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight_column=weight_column, loss_reduction=loss_reduction, loss_fn=loss_fn, name=name)
        self._check_weight_column_shape()
        self._n_classes = _check_n_classes(n_classes, "MultiLabelHead", 2)
        self._logits_dimension = self._n_classes
        self._thresholds = _check_threshold_list(thresholds, "MultiLabelHead")
        self._label_vocabulary = _check_vocabulary(label_vocabulary, self._n_classes, "MultiLabelHead")
        self._class_metrics = self._check_metric_classes(classes_for_class_based_metrics)

    def _check_metric_classes(self, classes: Any) -> tuple[int, ...]:
        ids = []
        for value in classes or ():
            if isinstance(value, str):
                if self._label_vocabulary is None or value not in self._label_vocabulary:
                    raise ValueError(
                        f"MultiLabelHead: class {value!r} in classes_for_class_based_metrics is not in label_vocabulary "
                        f"{self._label_vocabulary}."
                    )
                ids.append(self._label_vocabulary.index(value))
            elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < self._n_classes:
                ids.append(int(value))
            else:
                raise ValueError(
                    f"MultiLabelHead: classes_for_class_based_metrics must hold ids in [0, {self._n_classes}) or "
                    f"vocabulary names; received {value!r}."
                )
        return tuple(ids)

    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def label_vocabulary(self) -> tuple[str, ...] | None:
        return self._label_vocabulary

    def multi_hot(self, labels: Iterable[Iterable[int | str]]) -> np.ndarray:
        """Lists of class ids (or names, with a vocabulary) per example -> a float32 multi-hot array.

        Raises:
            ValueError: For an id out of range or an unknown name.

        Example:
            >>> MultiLabelHead(3, label_vocabulary=["a", "b", "c"]).multi_hot([["a", "c"], []]).tolist()
            [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
        """
        rows = [list(row) for row in labels]
        result = np.zeros((len(rows), self._n_classes), dtype=np.float32)
        for i, row in enumerate(rows):
            for value in row:
                if isinstance(value, str):
                    if self._label_vocabulary is None or value not in self._label_vocabulary:
                        raise ValueError(f"MultiLabelHead: label {value!r} is not in label_vocabulary {self._label_vocabulary}.")
                    value = self._label_vocabulary.index(value)
                if not 0 <= int(value) < self._n_classes:
                    raise ValueError(f"MultiLabelHead: label id {value!r} is not in [0, {self._n_classes}).")
                result[i, int(value)] = 1.0
        return result

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = self._labels_for(labels, logits, self._n_classes).to(torch.float32)
        check_values((labels == 0) | (labels == 1), lambda: (
            "MultiLabelHead: labels must be a multi-hot tensor of 0s and 1s, [batch_size, n_classes]; build it with "
            "head.multi_hot(lists of class ids)."
        ))
        return labels

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1, keepdim=True)

    def _predictions(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            PredictionKeys.LOGITS: logits,
            PredictionKeys.PROBABILITIES: torch.sigmoid(logits),
            PredictionKeys.CLASSES: _all_ids(logits, self._n_classes),
        }

    def _metric_updates(self, labels, logits, predictions, unweighted, weights):  # type: ignore[no-untyped-def]
        probabilities = predictions[PredictionKeys.PROBABILITIES]
        keys = MetricKeys
        updates = {
            keys.LOSS_MEAN: mean(unweighted, weights),
            keys.AUC: auc(labels, probabilities, weights),
            keys.AUC_PR: auc(labels, probabilities, weights, curve="PR", summation_method="careful_interpolation"),
        }
        updates.update(_threshold_updates(self._thresholds, labels, probabilities, weights))
        for class_id in self._class_metrics:
            suffix = self._label_vocabulary[class_id] if self._label_vocabulary else None
            column_labels, column_probabilities = labels[..., class_id:class_id + 1], probabilities[..., class_id:class_id + 1]
            names = ((keys.PROBABILITY_MEAN_AT_NAME, keys.AUC_AT_NAME, keys.AUC_PR_AT_NAME) if suffix is not None
                     else (keys.PROBABILITY_MEAN_AT_CLASS, keys.AUC_AT_CLASS, keys.AUC_PR_AT_CLASS))
            value = suffix if suffix is not None else class_id
            updates[names[0] % value] = mean(column_probabilities, weights)
            updates[names[1] % value] = auc(column_labels, column_probabilities, weights)
            updates[names[2] % value] = auc(column_labels, column_probabilities, weights, curve="PR",
                                            summation_method="careful_interpolation")
        return updates

    def export_outputs(self, predictions: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return _classifier_exports(predictions, PredictionKeys.CLASSES, self._n_classes, self._label_vocabulary)


class RegressionHead(Head):
    """Regression with the squared error (TF's ``RegressionHead``).

    Logits and labels are ``[batch, label_dimension]`` (labels ``[batch]`` when it is 1). Predictions:
    ``predictions`` (``inverse_link_fn(logits)`` when given, and then also ``logits``). Metrics:
    ``average_loss``, ``label/mean``, ``prediction/mean``. Export: ``serving_default`` and ``regression``
    (the predictions), ``predict``.

    Raises:
        ValueError: For a bad ``label_dimension`` or ``inverse_link_fn``.
    """

    def __init__(
        self,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        inverse_link_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight_column=weight_column, loss_reduction=loss_reduction, loss_fn=loss_fn, name=name)
        if isinstance(label_dimension, bool) or not isinstance(label_dimension, numbers.Integral) or label_dimension < 1:
            raise ValueError(f"RegressionHead: invalid `label_dimension` {label_dimension!r}; it must be an int >= 1.")
        if inverse_link_fn is not None and not callable(inverse_link_fn):
            raise ValueError(f"RegressionHead: `inverse_link_fn` must be callable; received {inverse_link_fn!r}.")
        self._logits_dimension = int(label_dimension)
        self._inverse_link_fn: Callable[[torch.Tensor], torch.Tensor] | None = inverse_link_fn
        self._check_weight_column_shape()

    @property
    def label_dimension(self) -> int:
        return self._logits_dimension

    def _weight_width(self) -> int:
        return self._logits_dimension

    def _loss_width(self) -> int:
        return self._logits_dimension

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = self._labels_for(labels, logits, self._logits_dimension)
        if labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"RegressionHead: labels must be numbers; received dtype {labels.dtype}.")
        return labels.to(logits.dtype)

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return (logits - labels).square()

    def _predictions(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._inverse_link_fn is None:
            return {PredictionKeys.PREDICTIONS: logits}
        return {PredictionKeys.PREDICTIONS: self._inverse_link_fn(logits), PredictionKeys.LOGITS: logits}

    def _metric_updates(self, labels, logits, predictions, unweighted, weights):  # type: ignore[no-untyped-def]
        return {
            MetricKeys.LOSS_MEAN: mean(unweighted, weights),
            MetricKeys.LABEL_MEAN: mean(labels, weights),
            MetricKeys.PREDICTION_MEAN: mean(predictions[PredictionKeys.PREDICTIONS], weights),
        }

    def export_outputs(self, predictions: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        regression = RegressionOutput(predictions[PredictionKeys.PREDICTIONS])
        return {
            DEFAULT_SERVING_KEY: regression,
            REGRESS_SERVING_KEY: regression,
            PREDICT_SERVING_KEY: PredictOutput(dict(predictions)),
        }


class PoissonRegressionHead(RegressionHead):
    """Poisson regression of counts: the log-Poisson loss of ``exp(logits)`` (TF's ``PoissonRegressionHead``).

    The loss is ``exp(logits) - labels * logits``, plus with ``compute_full_loss`` the Stirling approximation
    of ``log(labels!)`` for labels above 1 (TF's ``tf.nn.log_poisson_loss``). Predictions: ``predictions``
    (``exp(logits)``, the expected count) and ``logits``. Metrics and export as :class:`RegressionHead`.

    Args:
        label_dimension, weight_column, loss_reduction, name: See :class:`RegressionHead`.
        compute_full_loss: Include the constant ``log(labels!)`` term.

    Raises:
        ValueError: For a bad argument; when the loss is computed, for negative labels.

    Example:
        >>> head = PoissonRegressionHead()
        >>> logits, labels = torch.tensor([[0.0], [-1.0], [1.0]]), torch.tensor([[1], [2], [3]])
        >>> round(float(head.loss(labels, logits)), 3)  # TF's test: (1.0 + 3.020 + 1.482) / 3
        1.834
        >>> head.predictions(logits)["predictions"].flatten().tolist() == torch.exp(logits).flatten().tolist()
        True
    """

    def __init__(
        self,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        compute_full_loss: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(label_dimension=label_dimension, weight_column=weight_column, loss_reduction=loss_reduction,
                         inverse_link_fn=torch.exp, name=name)
        if not isinstance(compute_full_loss, bool):
            raise ValueError(f"PoissonRegressionHead: `compute_full_loss` must be True or False; received {compute_full_loss!r}.")
        self._compute_full_loss = compute_full_loss

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = super()._processed_labels(logits, labels)
        check_values(labels >= 0, lambda: (
            f"PoissonRegressionHead: labels must be counts >= 0; received "
            f"{sorted(set(labels[labels < 0].tolist()))[:10]}."
        ))
        return labels

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.poisson_nll_loss(logits, labels, log_input=True, full=self._compute_full_loss, reduction="none")


class LogisticRegressionHead(RegressionHead):
    """Regression of a probability in ``[0, 1]`` with the sigmoid cross-entropy (TF's
    ``LogisticRegressionHead``).

    Unlike :class:`BinaryClassHead`: labels are floats in ``[0, 1]`` (no vocabulary), predictions are only
    ``predictions`` (``sigmoid(logits)``) and ``logits``, the metrics are a regression's (``average_loss``,
    ``label/mean``, ``prediction/mean``) and the export's default is a ``RegressionOutput``.

    Args:
        weight_column, loss_reduction, name: See :class:`Head`.

    Raises:
        ValueError: For a bad argument; when the loss is computed, for labels outside ``[0, 1]``.

    Example:
        >>> head = LogisticRegressionHead()
        >>> logits, labels = torch.tensor([[0.0], [-1.0], [1.0]]), torch.tensor([[0.4], [0.6], [0.8]])
        >>> round(float(head.loss(labels, logits)), 4)  # TF's test: (0.6931 + 0.9133 + 0.5133) / 3
        0.7066
    """

    def __init__(
        self,
        weight_column: str | NumericColumn | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        name: str | None = None,
    ) -> None:
        super().__init__(label_dimension=1, weight_column=weight_column, loss_reduction=loss_reduction,
                         inverse_link_fn=torch.sigmoid, name=name)

    def _processed_labels(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        labels = super()._processed_labels(logits, labels)
        check_values((labels >= 0) & (labels <= 1), lambda: (
            f"LogisticRegressionHead: Labels must be in range [0, 1]; received "
            f"{sorted(set(labels[(labels < 0) | (labels > 1)].tolist()))[:10]}."
        ))
        return labels

    def _default_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
