"""``MultiHead``: several named heads trained together on one network (TF's ``tf.estimator.MultiHead``).

Each head keeps its own loss, predictions, metrics and export outputs; the multi-head merges them as TF
did:

* loss: the sum of the heads' losses, each times its ``head_weights`` entry, plus the regularization losses
  once;
* predictions: keyed ``(head name, prediction key)``;
* metrics: every head's own (already suffixed ``/<head name>``), ``loss/<head name>`` (the mean of that
  head's batch loss) and ``regularization_loss/<names joined by _>`` when there are regularization losses;
* export outputs: each head's default under its name and its other outputs under ``<head name>/<key>``,
  ``predict`` with every head's predictions as ``<head name>/<key>``, and the first head's default as
  ``serving_default``.

Logits are a dict keyed by head name, or one ``[batch, logits_dimension]`` tensor that is split along its
last dimension in the heads' order (what a canned estimator's network gives). Labels are a dict keyed by
head name.

Example:
    >>> import torch
    >>> from torch_estimator.canned import MultiClassHead, RegressionHead
    >>> head = MultiHead([MultiClassHead(3, name="kind"), RegressionHead(name="size")], head_weights=[1.0, 0.5])
    >>> head.logits_dimension
    4
    >>> logits = torch.tensor([[2.0, 0.0, 0.0, 1.5]])
    >>> sorted(k for k in head.predictions(logits) if k[0] == "size")
    [('size', 'predictions')]
    >>> labels = {"kind": torch.tensor([0]), "size": torch.tensor([[1.0]])}
    >>> kind = MultiClassHead(3).loss(labels["kind"], logits[:, :3])
    >>> bool(torch.isclose(head.loss(labels, logits), kind + 0.5 * 0.25))
    True
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch

from ..export.outputs import PredictOutput
from ..metrics import MetricUpdate, mean
from ..spec import EstimatorSpec, ModeKeys
from .heads import DEFAULT_SERVING_KEY, PREDICT_SERVING_KEY, Head, MetricKeys, select_predictions

__all__ = ["MultiHead"]


class MultiHead(Head):
    """Several named heads over one set of logits, merged as TF's ``MultiHead`` (see the module docstring).

    Args:
        heads: Heads with distinct names; the first is served by default.
        head_weights: Optional floats, one per head, weighting each head's loss (all 1 when omitted).

    Raises:
        ValueError: For no heads, a head that is not a ``Head`` or has no name, repeated names, or
            ``head_weights`` of another length or with non-numbers.
    """

    def __init__(self, heads: Sequence[Head], head_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not heads:
            raise ValueError(f"MultiHead: `heads` must be a non-empty list of heads; received {heads!r}.")
        for head in heads:
            if not isinstance(head, Head) or isinstance(head, MultiHead):
                raise ValueError(f"MultiHead: `heads` must hold single heads (e.g. BinaryClassHead()); received {head!r}.")
            if head.name is None:
                raise ValueError(
                    f"MultiHead: every head must have a name (e.g. BinaryClassHead(name='click')); received "
                    f"{type(head).__name__} without one."
                )
        names = [cast(str, head.name) for head in heads]  # each has one: checked above
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"MultiHead: head names must be distinct; {repeated} repeat among {names}.")
        if head_weights is not None:
            if isinstance(head_weights, (str, bytes)) or not isinstance(head_weights, Sequence) or len(head_weights) != len(heads):
                raise ValueError(
                    f"MultiHead: `head_weights` must have one weight per head ({len(heads)}); received {head_weights!r}."
                )
            if any(isinstance(w, bool) or not isinstance(w, numbers.Real) for w in head_weights):
                raise ValueError(f"MultiHead: `head_weights` must be numbers; received {list(head_weights)!r}.")
        self._heads = tuple(heads)
        self._head_weights = tuple(float(w) for w in head_weights) if head_weights is not None else None
        self._logits_dimension = sum(head.logits_dimension for head in heads)

    @property
    def name(self) -> str:
        """The heads' names joined by ``_`` (TF's)."""
        return "_".join(str(head.name) for head in self._heads)

    @property
    def heads(self) -> tuple[Head, ...]:
        return self._heads

    @property
    def head_weights(self) -> tuple[float, ...] | None:
        return self._head_weights

    # -- inputs ---------------------------------------------------------------------------------------

    def _split_logits(self, logits: Any) -> dict[str, torch.Tensor]:
        names = [str(head.name) for head in self._heads]
        if isinstance(logits, Mapping):
            missing = [n for n in names if n not in logits]
            if missing:
                raise ValueError(f"MultiHead: logits has missing values for head(s) {missing}; received keys {sorted(logits)}.")
            return {n: logits[n] for n in names}
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(
                f"MultiHead: `logits` must be a dict of head name to Tensor or one floating-point Tensor; received "
                f"{type(logits).__name__}."
            )
        if logits.dim() < 2 or logits.shape[-1] != self._logits_dimension:
            raise ValueError(
                f"MultiHead: logits shape must be [batch_size, {self._logits_dimension}] (the heads' logits dimensions "
                f"{[h.logits_dimension for h in self._heads]} side by side); received {list(logits.shape)}."
            )
        parts = torch.split(logits, [head.logits_dimension for head in self._heads], dim=-1)
        return dict(zip(names, parts))

    def _split_labels(self, labels: Any) -> dict[str, Any]:
        names = [str(head.name) for head in self._heads]
        if not isinstance(labels, Mapping):
            raise ValueError(
                f"MultiHead: labels must be a dict keyed by head name {names}; received {type(labels).__name__}. "
                f"Return (features, {{name: labels}}) from input_fn."
            )
        missing = [n for n in names if n not in labels]
        if missing:
            raise ValueError(f"MultiHead: labels has missing values for head(s) {missing}; received keys {sorted(labels)}.")
        return {n: labels[n] for n in names}

    # -- loss, predictions, metrics, export ------------------------------------------------------------

    def _head_losses(self, features: Any, logits: Mapping[str, torch.Tensor], labels: Mapping[str, Any]) -> list[torch.Tensor]:
        return [head.loss(labels[str(head.name)], logits[str(head.name)], features) for head in self._heads]

    def _merge(self, losses: Sequence[torch.Tensor], regularization_losses: Sequence[torch.Tensor] | None) -> torch.Tensor:
        weights = self._head_weights or (1.0,) * len(losses)
        merged = torch.stack([loss * weight for loss, weight in zip(losses, weights)]).sum()
        return self._regularized(merged, regularization_losses)

    def loss(
        self,
        labels: Any,
        logits: Any,
        features: Any = None,
        mode: str | None = None,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The weighted sum of the heads' losses, plus the regularization losses.

        Raises:
            ValueError: For labels or logits missing a head, or what a head rejects.
        """
        del mode  # every mode computes the same loss
        split = self._split_logits(logits)
        return self._merge(self._head_losses(features, split, self._split_labels(labels)), regularization_losses)

    def predictions(self, logits: Any, keys: Sequence[Any] | None = None) -> dict[Any, torch.Tensor]:
        """Every head's predictions keyed ``(head name, key)`` (all, or only ``keys``).

        Raises:
            ValueError: For an unknown key.
        """
        split = self._split_logits(logits)
        predictions = {(str(head.name), key): value
                       for head in self._heads for key, value in head.predictions(split[str(head.name)]).items()}
        return select_predictions(predictions, keys, "MultiHead")

    def metrics(
        self,
        features: Any,
        logits: Any,
        labels: Any,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, MetricUpdate]:
        """This batch's metrics: each head's, ``loss/<head name>`` and the regularization loss."""
        split, split_labels = self._split_logits(logits), self._split_labels(labels)
        return self._metrics_of(features, split, split_labels, self._head_losses(features, split, split_labels),
                                regularization_losses)

    def _metrics_of(self, features: Any, logits: Mapping[str, torch.Tensor], labels: Mapping[str, Any],
                    losses: Sequence[torch.Tensor], regularization_losses: Sequence[torch.Tensor] | None) -> dict[str, MetricUpdate]:
        updates: dict[str, MetricUpdate] = {}
        regularization = self._sum_regularization(regularization_losses)
        if regularization is not None:
            updates[f"{MetricKeys.LOSS_REGULARIZATION}/{self.name}"] = mean(regularization.detach().reshape(1))
        for head, loss in zip(self._heads, losses):
            name = str(head.name)
            updates[f"{MetricKeys.LOSS}/{name}"] = mean(loss.detach().reshape(1))
            updates.update(head.metrics(features, logits[name], labels[name]))
        return updates

    def export_outputs(self, predictions: Mapping[Any, torch.Tensor]) -> dict[str, Any]:
        """TF's merge: the first head's default as ``serving_default``, each head's outputs under its name,
        and one ``predict`` output with every head's predictions as ``<head name>/<key>``."""
        merged: dict[str, Any] = {}
        merged_predict: dict[str, torch.Tensor] = {}
        for head in self._heads:
            name = str(head.name)
            own = head.export_outputs({key: value for (owner, key), value in predictions.items() if owner == name})
            if not merged:
                merged[DEFAULT_SERVING_KEY] = own[DEFAULT_SERVING_KEY]
            for key, output in own.items():
                merged[name if key == DEFAULT_SERVING_KEY else f"{name}/{key}"] = output
                if key == PREDICT_SERVING_KEY and isinstance(output, PredictOutput):
                    merged_predict.update({f"{name}/{k}": v for k, v in output.outputs.items()})
        merged[PREDICT_SERVING_KEY] = PredictOutput(merged_predict)
        return merged

    def create_estimator_spec(
        self,
        features: Any,
        mode: str,
        logits: Any,
        labels: Any = None,
        *,
        train_op_fn: Callable[[torch.Tensor], Any] | None = None,
        regularization_losses: Sequence[torch.Tensor] | None = None,
    ) -> EstimatorSpec:
        """A complete :class:`~torch_estimator.EstimatorSpec` for ``mode`` (see :meth:`Head.create_estimator_spec`).

        Raises:
            ValueError: For a bad mode, labels or logits missing a head, or what a head rejects.
        """
        if mode not in ModeKeys.ALL:
            raise ValueError(f"MultiHead: `mode` must be one of {ModeKeys.ALL}; received {mode!r}.")
        split = self._split_logits(logits)
        predictions = self.predictions(split)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(mode, predictions=predictions, export_outputs=self.export_outputs(predictions))
        if labels is None:
            raise ValueError(
                "You must provide a labels dict keyed by head name in TRAIN and EVAL mode; received None. Return "
                "(features, {name: labels}) from input_fn."
            )
        split_labels = self._split_labels(labels)
        losses = self._head_losses(features, split, split_labels)
        loss = self._merge(losses, regularization_losses)
        if mode == ModeKeys.EVAL:
            with torch.no_grad():
                metrics = self._metrics_of(features, split, split_labels, losses, regularization_losses)
            return EstimatorSpec(mode, loss=loss, predictions=predictions, eval_metric_ops=metrics)
        regularization = self._sum_regularization(regularization_losses)
        summaries = None if regularization is None else {MetricKeys.LOSS_REGULARIZATION: regularization.detach()}
        return EstimatorSpec(mode, loss=loss, predictions={k: v.detach() for k, v in predictions.items()},
                             train_op=train_op_fn, summaries=summaries)
