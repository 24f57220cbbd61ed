"""Baselines that ignore the features: ``BaselineClassifier`` learns the class prior, ``BaselineRegressor``
the label mean (``BaselineEstimator`` takes any head). Use them to see what a real model must beat.

Example:
    >>> import numpy as np, tempfile
    >>> import torch_estimator as te
    >>> from torch_estimator import canned
    >>> y = np.array([1.0, 2.0, 3.0, 6.0] * 25, dtype="float32")
    >>> est = canned.BaselineRegressor(model_dir=tempfile.mkdtemp(),
    ...                                config=te.RunConfig(device="cpu", log_step_count_steps=None))
    >>> input_fn = te.inputs.numpy_input_fn({"x": np.zeros(100, "float32")}, y, batch_size=100, num_epochs=None, shuffle=False)
    >>> _ = est.train(input_fn, steps=200)
    >>> round(float(next(est.predict(te.inputs.numpy_input_fn({"x": np.zeros(1, "float32")}, shuffle=False)))["predictions"][0]), 1)
    3.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..run_config import RunConfig
from .base import CannedEstimator, check_head, classifier_head, regressor_head
from .feature_columns import NumericColumn
from .heads import Head, LossReduction
from .optimizers import get_optimizer_factory

__all__ = ["BaselineModel", "BaselineClassifier", "BaselineRegressor", "BaselineEstimator", "LEARNING_RATE"]

LEARNING_RATE = 0.3  # TF's baseline.py _LEARNING_RATE


class BaselineModel(nn.Module):
    """Logits that are one learned bias, repeated for each example (the batch size comes from any feature)."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(units))

    def forward(self, features: Any, with_summaries: bool = False) -> Any:
        if isinstance(features, torch.Tensor):
            first = features
        elif isinstance(features, Mapping) and features:
            first = features[sorted(features)[0]]
        else:
            raise ValueError(f"Baseline estimators need at least one feature (for the batch size); received {features!r}.")
        logits = torch.zeros(first.shape[0], self.bias.numel(), dtype=self.bias.dtype, device=self.bias.device) + self.bias
        if not with_summaries:
            return logits
        bias = self.bias.detach()
        return logits, {"bias": (lambda: bias[0]) if bias.numel() == 1 else (lambda: bias)}


class BaselineEstimator(CannedEstimator):
    """A baseline with any head (TF's ``BaselineEstimator``).

    Args:
        head: A :class:`~torch_estimator.canned.Head`.
        model_dir, config: As for :class:`~torch_estimator.Estimator`.
        optimizer: A name (``'Ftrl'`` default; names use learning rate 0.3), a factory or an Optimizer.

    Raises:
        ValueError: For a bad head or optimizer.
    """

    def __init__(self, head: Head, model_dir: str | os.PathLike[str] | None = None, optimizer: Any = "Ftrl",
                 config: RunConfig | None = None) -> None:
        head = check_head(head, type(self).__name__)
        super().__init__(head, BaselineModel(head.logits_dimension), get_optimizer_factory(optimizer, LEARNING_RATE),
                         model_dir=model_dir, config=config)


class BaselineClassifier(BaselineEstimator):
    """Predicts the class distribution of the training labels (TF's ``BaselineClassifier``).

    Args: ``n_classes``, ``weight_column``, ``label_vocabulary``, ``loss_reduction`` as for
    :class:`~torch_estimator.canned.DNNClassifier`; ``model_dir``, ``optimizer``, ``config`` as for
    :class:`BaselineEstimator`.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        n_classes: int = 2,
        weight_column: str | NumericColumn | None = None,
        label_vocabulary: Sequence[str] | None = None,
        optimizer: Any = "Ftrl",
        config: RunConfig | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
    ) -> None:
        head = classifier_head(n_classes, weight_column, label_vocabulary, loss_reduction, type(self).__name__)
        super().__init__(head, model_dir=model_dir, optimizer=optimizer, config=config)


class BaselineRegressor(BaselineEstimator):
    """Predicts the mean of the training labels (TF's ``BaselineRegressor``).

    Args: ``label_dimension``, ``weight_column``, ``loss_reduction`` as for
    :class:`~torch_estimator.canned.DNNRegressor`; ``model_dir``, ``optimizer``, ``config`` as for
    :class:`BaselineEstimator`.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        optimizer: Any = "Ftrl",
        config: RunConfig | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
    ) -> None:
        head = regressor_head(label_dimension, weight_column, loss_reduction)
        super().__init__(head, model_dir=model_dir, optimizer=optimizer, config=config)
