"""Feed-forward networks over feature columns: ``DNNClassifier``, ``DNNRegressor``, ``DNNEstimator``.

Example:
    >>> import numpy as np, tempfile, torch
    >>> import torch_estimator as te
    >>> from torch_estimator import canned
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 2)).astype("float32")
    >>> y = (x[:, 0] * x[:, 1] > 0).astype("int64")            # XOR-like: needs a hidden layer
    >>> est = canned.DNNClassifier([16, 16], [canned.numeric_column("x", shape=2)],
    ...                            optimizer=lambda p: torch.optim.Adam(p, lr=0.02), model_dir=tempfile.mkdtemp(),
    ...                            config=te.RunConfig(device="cpu", log_step_count_steps=None, random_seed=0))
    >>> _ = est.train(te.inputs.numpy_input_fn({"x": x}, y, batch_size=50, num_epochs=None, shuffle=True), steps=300)
    >>> metrics = est.evaluate(te.inputs.numpy_input_fn({"x": x}, y, batch_size=200, shuffle=False))
    >>> bool(metrics["accuracy"] > 0.9)
    True
"""

from __future__ import annotations

import functools
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
from .feature_columns import DenseFeatures, FeatureColumn, NumericColumn
from .heads import Head, LossReduction
from .optimizers import get_optimizer_factory

__all__ = ["DNNModel", "DNNClassifier", "DNNRegressor", "DNNEstimator"]

# tf.keras.layers.BatchNormalization as TF's canned DNN configured it: momentum 0.999 (torch counts the
# complement), epsilon 0.001.
_BATCH_NORM_MOMENTUM, _BATCH_NORM_EPSILON = 0.001, 0.001


def _glorot(layer: nn.Linear) -> nn.Linear:
    """Keras's Dense initialisation: Glorot-uniform kernel, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DNNModel(nn.Module):
    """``DenseFeatures`` -> hidden layers (dense, activation, dropout in training, optional batch norm) ->
    dense logits, in TF's order.

    Args:
        feature_columns: Dense feature columns.
        hidden_units: Sizes of the hidden layers.
        units: Logits per example.
        activation_fn: Applied after each hidden layer.
        dropout: Probability of dropping a hidden unit in training, or None.
        batch_norm: Batch-normalize each hidden layer's output.
    """

    def __init__(
        self,
        feature_columns: Sequence[FeatureColumn],
        hidden_units: Sequence[int],
        units: int,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dropout: float | None = None,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.input_layer = DenseFeatures(feature_columns)
        sizes = [self.input_layer.output_dim, *hidden_units]
        self.hidden_layers = nn.ModuleList(_glorot(nn.Linear(a, b)) for a, b in zip(sizes, sizes[1:]))
        self.activation_fn = activation_fn
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.batch_norms = (nn.ModuleList(nn.BatchNorm1d(u, eps=_BATCH_NORM_EPSILON, momentum=_BATCH_NORM_MOMENTUM)
                                          for u in hidden_units) if batch_norm else None)
        self.logits = _glorot(nn.Linear(sizes[-1], units))

    def forward(self, features: Any, with_summaries: bool = False) -> Any:
        net = self.input_layer(features)
        hidden = []
        for i, layer in enumerate(self.hidden_layers):
            net = self.activation_fn(layer(net))
            if self.dropout is not None:
                net = self.dropout(net)
            if self.batch_norms is not None:
                net = self.batch_norms[i](net)
            hidden.append(net)
        logits = self.logits(net)
        if not with_summaries:
            return logits
        return logits, hidden_layer_summaries(hidden)


def _zero_fraction(values: torch.Tensor) -> torch.Tensor:
    return (values == 0).float().mean()


def hidden_layer_summaries(hidden: Sequence[torch.Tensor], prefix: str = "dnn") -> dict[str, Callable[[], torch.Tensor]]:
    """TF's per-layer training summaries: the fraction of zero activations and their histogram."""
    summaries: dict[str, Callable[[], torch.Tensor]] = {}
    for i, values in enumerate(hidden):
        values = values.detach()
        summaries[f"{prefix}/hiddenlayer_{i}/fraction_of_zero_values"] = functools.partial(_zero_fraction, values)
        summaries[f"{prefix}/hiddenlayer_{i}/activation"] = values.float
    return summaries


class DNNEstimator(CannedEstimator):
    """A DNN with any head (TF's ``DNNEstimator``), e.g. ``MultiLabelHead``.

    Args:
        head: A :class:`~torch_estimator.canned.Head`.
        hidden_units: Sizes of the hidden layers, e.g. ``[64, 32]``.
        feature_columns: Dense columns (numeric, bucketized, indicator, embedding).
        model_dir, config, warm_start_from: As for :class:`~torch_estimator.Estimator`.
        optimizer: A name (``'Adagrad'`` default, ``'Adam'``, ``'Ftrl'``, ``'RMSProp'``, ``'SGD'``: Keras's
            default learning rates, as TF2), an optimizer factory or an Optimizer.
        activation_fn: The hidden layers' activation (default ``torch.relu``).
        dropout: Probability of dropping a hidden unit in training.
        batch_norm: Batch-normalize the hidden layers.

    Raises:
        ValueError: For bad hidden units, columns, optimizer, dropout or activation.
    """

    def __init__(
        self,
        head: Head,
        hidden_units: Sequence[int],
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        optimizer: Any = "Adagrad",
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dropout: float | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        batch_norm: bool = False,
    ) -> None:
        owner = type(self).__name__
        head = check_head(head, owner)
        model = DNNModel(
            feature_columns, check_hidden_units(hidden_units, owner), head.logits_dimension,
            activation_fn=check_activation(activation_fn, owner), dropout=check_dropout(dropout, owner),
            batch_norm=bool(batch_norm),
        )
        self.feature_columns = list(feature_columns)
        super().__init__(head, model, get_optimizer_factory(optimizer), model_dir=model_dir, config=config,
                         warm_start_from=warm_start_from)


class DNNClassifier(DNNEstimator):
    """A DNN classifier (TF's ``DNNClassifier``): sigmoid for 2 classes, softmax for more.

    Args:
        hidden_units, feature_columns, model_dir, optimizer, activation_fn, dropout, config, warm_start_from,
            batch_norm: See :class:`DNNEstimator`.
        n_classes: Number of classes, > 1.
        weight_column: A feature key or ``numeric_column`` weighting each example.
        label_vocabulary: Class names; labels are then their ids (see ``encode_labels``).
        loss_reduction: ``"sum_over_batch_size"`` (default) or ``"sum"``.

    Raises:
        ValueError: For bad arguments (each message names the argument).
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        n_classes: int = 2,
        weight_column: str | NumericColumn | None = None,
        label_vocabulary: Sequence[str] | None = None,
        optimizer: Any = "Adagrad",
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dropout: float | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        batch_norm: bool = False,
    ) -> None:
        head = classifier_head(n_classes, weight_column, label_vocabulary, loss_reduction, type(self).__name__)
        super().__init__(head, hidden_units, feature_columns, model_dir=model_dir, optimizer=optimizer,
                         activation_fn=activation_fn, dropout=dropout, config=config, warm_start_from=warm_start_from,
                         batch_norm=batch_norm)


class DNNRegressor(DNNEstimator):
    """A DNN regressor (TF's ``DNNRegressor``) with the squared error.

    Args:
        hidden_units, feature_columns, model_dir, optimizer, activation_fn, dropout, config, warm_start_from,
            batch_norm: See :class:`DNNEstimator`.
        label_dimension: Values to predict per example.
        weight_column, loss_reduction: See :class:`DNNClassifier`.

    Raises:
        ValueError: For bad arguments.
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        feature_columns: Sequence[FeatureColumn],
        model_dir: str | os.PathLike[str] | None = None,
        label_dimension: int = 1,
        weight_column: str | NumericColumn | None = None,
        optimizer: Any = "Adagrad",
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        dropout: float | None = None,
        config: RunConfig | None = None,
        warm_start_from: str | os.PathLike[str] | WarmStartSettings | None = None,
        loss_reduction: str = LossReduction.SUM_OVER_BATCH_SIZE,
        batch_norm: bool = False,
    ) -> None:
        head = regressor_head(label_dimension, weight_column, loss_reduction)
        super().__init__(head, hidden_units, feature_columns, model_dir=model_dir, optimizer=optimizer,
                         activation_fn=activation_fn, dropout=dropout, config=config, warm_start_from=warm_start_from,
                         batch_norm=batch_norm)
