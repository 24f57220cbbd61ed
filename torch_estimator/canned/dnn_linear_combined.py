"""Wide & deep: a linear model and a DNN whose logits add up, each with its own optimizer
(``DNNLinearCombinedClassifier``, ``DNNLinearCombinedRegressor``, ``DNNLinearCombinedEstimator``).

The two optimizers become one :class:`~torch_estimator.canned.optimizers.CombinedOptimizer` for the
Estimator, checkpointed together (``optimizer/linear/...`` and ``optimizer/dnn/...``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoint import WarmStartSettings
from ..run_config import RunConfig
from .base import (
    CannedEstimator,
    check_activation,
    check_dropout,
    check_head,
    check_hidden_units,
    classifier_head,
    regressor_head,
)
from .dnn import DNNModel
from .feature_columns import FeatureColumn, NumericColumn
from .heads import Head, LossReduction
from .linear import LinearLogits
from .optimizers import CombinedOptimizer, get_optimizer_factory

__all__ = ["WideDeepModel", "DNNLinearCombinedClassifier", "DNNLinearCombinedRegressor", "DNNLinearCombinedEstimator",
           "DNN_LEARNING_RATE", "linear_learning_rate"]

DNN_LEARNING_RATE = 0.001  # TF's dnn_linear_combined.py _DNN_LEARNING_RATE
_LINEAR_LEARNING_RATE = 0.005


def linear_learning_rate(num_linear_feature_columns: int) -> float:
    """TF's default for the linear part: ``min(0.005, 1 / sqrt(number of linear columns))``.

    Example:
        >>> linear_learning_rate(4)
        0.005
    """
    return min(_LINEAR_LEARNING_RATE, 1.0 / math.sqrt(num_linear_feature_columns))


class WideDeepModel(nn.Module):
    """The sum of a linear model's logits (``linear``) and a DNN's (``dnn``); either may be absent."""

    def __init__(self, linear: LinearLogits | None, dnn: DNNModel | None) -> None:
        super().__init__()
        self.linear, self.dnn = linear, dnn

    def forward(self, features: Any, with_summaries: bool = False) -> Any:
        parts = [m(features, with_summaries=with_summaries) for m in (self.linear, self.dnn) if m is not None]
        if not with_summaries:
            return parts[0] if len(parts) == 1 else parts[0] + parts[1]
        summaries = {k: v for _, part in parts for k, v in part.items()}
        logits = parts[0][0] if len(parts) == 1 else parts[0][0] + parts[1][0]
        return logits, summaries


def _build(optimizer: Any, module: nn.Module) -> torch.optim.Optimizer:
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(module.parameters())


class DNNLinearCombinedEstimator(CannedEstimator):
    """Wide & deep with any head (TF's ``DNNLinearCombinedEstimator``).

    Args:
        head: A :class:`~torch_estimator.canned.Head`.
        model_dir, config, warm_start_from: As for :class:`~torch_estimator.Estimator`.
        linear_feature_columns: Columns of the linear part (categorical and dense).
        linear_optimizer: For the linear part: a name (``'Ftrl'`` default; names use
            :func:`linear_learning_rate`), a factory or an Optimizer over its parameters.
        dnn_feature_columns: Dense columns of the DNN part.
        dnn_optimizer: For the DNN: a name (``'Adagrad'`` default, learning rate 0.001), a factory or an Optimizer.
        dnn_hidden_units: Required with ``dnn_feature_columns``.
        dnn_activation_fn, dnn_dropout, batch_norm: As for :class:`~torch_estimator.canned.DNNEstimator`.
        linear_sparse_combiner: As ``sparse_combiner`` of :class:`~torch_estimator.canned.LinearEstimator`.

    Raises:
        ValueError: If neither column list is given, ``dnn_hidden_units`` is missing with DNN columns, or
            another argument is bad.
    """

    def __init__(
        self,
        head: Head,
        model_dir: str | os.PathLike[str] | None = None,
        linear_feature_columns: Sequence[FeatureColumn] | None = None,
        linear_optimizer: Any = "Ftrl",
        dnn_feature_columns: Sequence[FeatureColumn] | None = None,
        dnn_optimizer: Any = "Adagrad",
        dnn_hidden_units: Sequence[int] | None = None,
        dnn_activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dnn_dropout: float | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        batch_norm: bool = False,
        linear_sparse_combiner: str = "sum",
    ) -> None:
        owner = type(self).__name__
        head = check_head(head, owner)
        linear_columns, dnn_columns = list(linear_feature_columns or []), list(dnn_feature_columns or [])
        if not linear_columns and not dnn_columns:
            raise ValueError(f"{owner}: either linear_feature_columns or dnn_feature_columns must be defined.")
        if dnn_columns and not dnn_hidden_units:
            raise ValueError(f"{owner}: dnn_hidden_units must be defined when dnn_feature_columns is specified.")
        linear = dnn = None
        if linear_columns:
            linear = LinearLogits(linear_columns, head.logits_dimension, linear_sparse_combiner, prefix="linear/")
        if dnn_columns:
            dnn = DNNModel(dnn_columns, check_hidden_units(dnn_hidden_units, owner, "dnn_hidden_units"), head.logits_dimension,
                           check_activation(dnn_activation_fn, owner, "dnn_activation_fn"),
                           check_dropout(dnn_dropout, owner, "dnn_dropout"), bool(batch_norm))
        model = WideDeepModel(linear, dnn)
        factories: dict[str, tuple[Any, nn.Module]] = {}
        if linear is not None:
            factories["linear"] = (get_optimizer_factory(linear_optimizer, linear_learning_rate(len(linear_columns)),
                                                         argument="linear_optimizer"), linear)
        if dnn is not None:
            factories["dnn"] = (get_optimizer_factory(dnn_optimizer, DNN_LEARNING_RATE, argument="dnn_optimizer"), dnn)
        self.linear_feature_columns, self.dnn_feature_columns = linear_columns, dnn_columns

        def optimizer(parameters: Any) -> CombinedOptimizer:
            del parameters  # each part's optimizer takes its own module's parameters
            return CombinedOptimizer({name: _build(factory, module) for name, (factory, module) in factories.items()})

        super().__init__(head, model, optimizer, model_dir=model_dir, config=config, warm_start_from=warm_start_from)


class DNNLinearCombinedClassifier(DNNLinearCombinedEstimator):
    """A wide & deep classifier (TF's ``DNNLinearCombinedClassifier``).

    Args: as :class:`DNNLinearCombinedEstimator`, with ``n_classes``, ``weight_column``, ``label_vocabulary``
    and ``loss_reduction`` as for :class:`~torch_estimator.canned.DNNClassifier` instead of ``head``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        linear_feature_columns: Sequence[FeatureColumn] | None = None,
        linear_optimizer: Any = "Ftrl",
        dnn_feature_columns: Sequence[FeatureColumn] | None = None,
        dnn_optimizer: Any = "Adagrad",
        dnn_hidden_units: Sequence[int] | None = None,
        dnn_activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dnn_dropout: float | None = None,
        n_classes: int = 2,
        weight_column: str | NumericColumn | None = None,
        label_vocabulary: Sequence[str] | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        batch_norm: bool = False,
        linear_sparse_combiner: str = "sum",
    ) -> None:
        head = classifier_head(n_classes, weight_column, label_vocabulary, loss_reduction, type(self).__name__)
        super().__init__(
            head, model_dir=model_dir, linear_feature_columns=linear_feature_columns, linear_optimizer=linear_optimizer,
            dnn_feature_columns=dnn_feature_columns, dnn_optimizer=dnn_optimizer, dnn_hidden_units=dnn_hidden_units,
            dnn_activation_fn=dnn_activation_fn, dnn_dropout=dnn_dropout, config=config, warm_start_from=warm_start_from,
            batch_norm=batch_norm, linear_sparse_combiner=linear_sparse_combiner,
        )


class DNNLinearCombinedRegressor(DNNLinearCombinedEstimator):
    """A wide & deep regressor (TF's ``DNNLinearCombinedRegressor``).

    Args: as :class:`DNNLinearCombinedEstimator`, with ``label_dimension``, ``weight_column`` and
    ``loss_reduction`` as for :class:`~torch_estimator.canned.DNNRegressor` instead of ``head``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        linear_feature_columns: Sequence[FeatureColumn] | None = None,
        linear_optimizer: Any = "Ftrl",
        dnn_feature_columns: Sequence[FeatureColumn] | None = None,
        dnn_optimizer: Any = "Adagrad",
        dnn_hidden_units: Sequence[int] | None = None,
        dnn_activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dnn_dropout: float | None = None,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        batch_norm: bool = False,
        linear_sparse_combiner: str = "sum",
    ) -> None:
        head = regressor_head(label_dimension, weight_column, loss_reduction)
        super().__init__(
            head, model_dir=model_dir, linear_feature_columns=linear_feature_columns, linear_optimizer=linear_optimizer,
            dnn_feature_columns=dnn_feature_columns, dnn_optimizer=dnn_optimizer, dnn_hidden_units=dnn_hidden_units,
            dnn_activation_fn=dnn_activation_fn, dnn_dropout=dnn_dropout, config=config, warm_start_from=warm_start_from,
            batch_norm=batch_norm, linear_sparse_combiner=linear_sparse_combiner,
        )
