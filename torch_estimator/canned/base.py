"""What every canned estimator shares: a head, a module, an optimizer, and the ``model_fn`` joining them.

A canned estimator is a thin :class:`~torch_estimator.Estimator` subclass: its constructor checks TF's
arguments, builds a head (:func:`classifier_head` / :func:`regressor_head`), an ``nn.Module`` computing the
logits and an optimizer factory, and hands them to ``Estimator.__init__`` with the ``model_fn`` below.
Everything else (train, evaluate, predict, export, checkpoints, warm start) is the Estimator's.

The module's ``forward(features, with_summaries=False)`` returns the logits, or ``(logits, summaries)``
where ``summaries`` are TF's training summaries of that model (zero-argument callables, computed only on
the steps that write summaries).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..checkpoint import WarmStartSettings
from ..estimator import Estimator
from ..run_config import RunConfig
from ..spec import EstimatorSpec, ModeKeys
from .heads import BinaryClassHead, Head, LossReduction, MultiClassHead, RegressionHead

__all__ = ["CannedEstimator", "classifier_head", "regressor_head"]


def classifier_head(
    n_classes: Any,
    weight_column: Any = None,
    label_vocabulary: Sequence[str] | None = None,
    loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
    owner: str = "Classifier",
) -> Head:
    """TF's choice: ``n_classes == 2`` gives a :class:`BinaryClassHead` (sigmoid), more a
    :class:`MultiClassHead` (softmax).

    Raises:
        ValueError: If ``n_classes`` is not an int > 1, or the vocabulary does not have ``n_classes`` entries.

    Example:
        >>> type(classifier_head(2)).__name__, type(classifier_head(3)).__name__
        ('BinaryClassHead', 'MultiClassHead')
        >>> classifier_head(1)
        Traceback (most recent call last):
        ...
        ValueError: Classifier: n_classes must be an int > 1; received 1.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes <= 1:
        raise ValueError(f"{owner}: n_classes must be an int > 1; received {n_classes!r}.")
    if n_classes == 2:
        return BinaryClassHead(weight_column=weight_column, label_vocabulary=label_vocabulary, loss_reduction=loss_reduction)
    return MultiClassHead(int(n_classes), weight_column=weight_column, label_vocabulary=label_vocabulary,
                          loss_reduction=loss_reduction)


def regressor_head(label_dimension: Any = 1, weight_column: Any = None,
                   loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE) -> Head:
    """A :class:`RegressionHead` with ``label_dimension`` outputs."""
    return RegressionHead(label_dimension=label_dimension, weight_column=weight_column, loss_reduction=loss_reduction)


def check_head(head: Any, owner: str) -> Head:
    if not isinstance(head, Head):
        raise ValueError(f"{owner}: `head` must be a Head (e.g. BinaryClassHead()); received {head!r}.")
    return head


def _canned_model_fn(head: Head) -> Callable[..., EstimatorSpec]:
    def model_fn(features: Any, labels: Any, mode: str, model: torch.nn.Module) -> EstimatorSpec:
        if mode == ModeKeys.TRAIN:
            logits, summaries = model(features, with_summaries=True)
        else:
            logits, summaries = model(features), None
        spec = head.create_estimator_spec(features, mode, logits, labels)
        if summaries:
            spec = spec.replace(summaries={**(spec.summaries or {}), **summaries})
        return spec

    return model_fn


class CannedEstimator(Estimator):
    """An Estimator made of a head and a module that maps a dict of features to logits.

    Args:
        head: The :class:`~torch_estimator.canned.Head`.
        model: A module with ``forward(features, with_summaries=False)`` (see the module docstring) whose last
            logits dimension is ``head.logits_dimension``.
        optimizer: What the Estimator steps with (a factory or an Optimizer).
        model_dir, config, warm_start_from: As for :class:`~torch_estimator.Estimator`.
    """

    def __init__(
        self,
        head: Head,
        model: torch.nn.Module,
        optimizer: Any,
        model_dir: str | os.PathLike[str] | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
    ) -> None:
        self._head = head
        super().__init__(_canned_model_fn(head), model_dir=model_dir, config=config,
                         warm_start_from=warm_start_from, model=model, optimizer=optimizer)

    @property
    def head(self) -> Head:
        """The head: loss, predictions, metrics and export outputs."""
        return self._head


def check_hidden_units(hidden_units: Any, owner: str, argument: str = "hidden_units") -> tuple[int, ...]:
    """A non-empty sequence of positive ints.

    Raises:
        ValueError: Otherwise, naming ``argument``.
    """
    if isinstance(hidden_units, (str, bytes, Mapping)) or not isinstance(hidden_units, Sequence) or not hidden_units:
        raise ValueError(
            f"{owner}: `{argument}` must be a non-empty list of layer sizes, e.g. [64, 32]; received {hidden_units!r}."
        )
    for units in hidden_units:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"{owner}: `{argument}` must hold ints >= 1; received {list(hidden_units)!r}.")
    return tuple(int(u) for u in hidden_units)


def check_dropout(dropout: Any, owner: str, argument: str = "dropout") -> float | None:
    if dropout is None:
        return None
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{owner}: `{argument}` must be None or a probability in [0, 1); received {dropout!r}.")
    return float(dropout) or None


def check_activation(activation_fn: Any, owner: str, argument: str = "activation_fn") -> Callable[[torch.Tensor], torch.Tensor]:
    if not callable(activation_fn):
        raise ValueError(f"{owner}: `{argument}` must be a callable such as torch.relu; received {activation_fn!r}.")
    return activation_fn
