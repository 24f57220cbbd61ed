"""Linear models over feature columns: ``LinearClassifier``, ``LinearRegressor``, ``LinearEstimator``.

Categorical columns (identity, vocabulary, hash buckets, bucketized, crossed) are read directly: each id
adds its weight row, combined by ``sparse_combiner``; dense columns add a matrix product. Weights start at
zero and the default optimizer is FTRL at learning rate 0.2, as TF's.

Example:
    >>> import numpy as np, tempfile
    >>> import torch_estimator as te
    >>> from torch_estimator import canned
    >>> day = canned.categorical_column_with_identity("day", 7)
    >>> x = {"day": np.arange(140) % 7}
    >>> y = (x["day"] >= 5).astype("int64")                    # weekends
    >>> est = canned.LinearClassifier([day], model_dir=tempfile.mkdtemp(),
    ...                               config=te.RunConfig(device="cpu", log_step_count_steps=None))
    >>> _ = est.train(te.inputs.numpy_input_fn(x, y, batch_size=20, num_epochs=None, shuffle=True), steps=100)
    >>> float(est.evaluate(te.inputs.numpy_input_fn(x, y, batch_size=140, shuffle=False))["accuracy"])
    1.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoint import WarmStartSettings
from ..run_config import RunConfig
from .base import CannedEstimator, check_head, classifier_head, regressor_head
from .feature_columns import FeatureColumn, LinearModel, NumericColumn
from .heads import Head, LossReduction
from .optimizers import get_optimizer_factory

__all__ = ["LinearLogits", "LinearClassifier", "LinearRegressor", "LinearEstimator", "LEARNING_RATE"]

LEARNING_RATE = 0.2  # TF's linear.py _LEARNING_RATE


class LinearLogits(nn.Module):
    """A :class:`~torch_estimator.canned.LinearModel` with TF's training summaries (``bias``,
    ``fraction_of_zero_weights``)."""

    def __init__(self, feature_columns: Sequence[FeatureColumn], units: int, sparse_combiner: str = "sum",
                 prefix: str = "") -> None:
        super().__init__()
        self.linear_model = LinearModel(feature_columns, units, sparse_combiner)
        self._prefix = prefix

    def forward(self, features: Any, with_summaries: bool = False) -> Any:
        logits = self.linear_model(features)
        if not with_summaries:
            return logits
        return logits, linear_summaries(self.linear_model, self._prefix)


def linear_summaries(model: LinearModel, prefix: str = "") -> dict[str, Callable[[], torch.Tensor]]:
    """``bias`` (a scalar for one unit, else a histogram) and the fraction of weights that are exactly zero."""

    def bias() -> torch.Tensor:
        value = model.bias.detach()
        return value[0] if value.numel() == 1 else value

    def zero_fraction() -> torch.Tensor:
        weights = torch.cat([w.detach().reshape(-1) for w in model.weights.values()])
        return (weights == 0).float().mean()

    return {f"{prefix}bias": bias, f"{prefix}fraction_of_zero_weights": zero_fraction}


class LinearEstimator(CannedEstimator):
    """A linear model with any head (TF's ``LinearEstimator``).

    Args:
        head: A :class:`~torch_estimator.canned.Head`.
        feature_columns: Categorical and dense columns.
        model_dir, config, warm_start_from: As for :class:`~torch_estimator.Estimator`.
        optimizer: A name (``'Ftrl'`` default; names use learning rate 0.2), a factory or an Optimizer.
        sparse_combiner: ``"sum"`` (default), ``"mean"`` or ``"sqrtn"``: how a column's several ids combine.

    Raises:
        ValueError: For bad columns, optimizer or combiner.
    """

    def __init__(
        self,
        head: Head,
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        optimizer: Any = "Ftrl",
        config: RunConfig | None = None,
        sparse_combiner: str = "sum",
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
    ) -> None:
        head = check_head(head, type(self).__name__)
        model = LinearLogits(feature_columns, head.logits_dimension, sparse_combiner)
        self.feature_columns = list(feature_columns)
        super().__init__(head, model, get_optimizer_factory(optimizer, LEARNING_RATE), model_dir=model_dir, config=config,
                         warm_start_from=warm_start_from)


class LinearClassifier(LinearEstimator):
    """A linear classifier (TF's ``LinearClassifier``): logistic regression for 2 classes, softmax for more.

    Args:
        feature_columns, model_dir, optimizer, config, warm_start_from, sparse_combiner: See
            :class:`LinearEstimator`.
        n_classes, weight_column, label_vocabulary, loss_reduction: See
            :class:`~torch_estimator.canned.DNNClassifier`.

    Raises:
        ValueError: For bad arguments.
    """

    def __init__(
        self,
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        n_classes: int = 2,
        weight_column: str | NumericColumn | None = None,
        label_vocabulary: Sequence[str] | None = None,
        optimizer: Any = "Ftrl",
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        sparse_combiner: str = "sum",
    ) -> None:
        head = classifier_head(n_classes, weight_column, label_vocabulary, loss_reduction, type(self).__name__)
        super().__init__(head, feature_columns, model_dir=model_dir, optimizer=optimizer, config=config,
                         sparse_combiner=sparse_combiner, warm_start_from=warm_start_from)


class LinearRegressor(LinearEstimator):
    """A linear regressor (TF's ``LinearRegressor``).

    Args:
        feature_columns, model_dir, optimizer, config, warm_start_from, sparse_combiner: See
            :class:`LinearEstimator`.
        label_dimension, weight_column, loss_reduction: See :class:`~torch_estimator.canned.DNNRegressor`.

    Raises:
        ValueError: For bad arguments.
    """

    def __init__(
        self,
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        optimizer: Any = "Ftrl",
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        sparse_combiner: str = "sum",
    ) -> None:
        head = regressor_head(label_dimension, weight_column, loss_reduction)
        super().__init__(head, feature_columns, model_dir=model_dir, optimizer=optimizer, config=config,
                         sparse_combiner=sparse_combiner, warm_start_from=warm_start_from)
