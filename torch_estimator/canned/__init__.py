"""Canned estimators, heads and feature columns: TF's ready-made models for tabular data.

- Heads (:mod:`.heads`): ``BinaryClassHead``, ``MultiClassHead``, ``MultiLabelHead``, ``RegressionHead``,
  ``PoissonRegressionHead``, ``LogisticRegressionHead`` turn logits into a complete ``EstimatorSpec`` (loss,
  predictions, TF's metrics, TF's export signatures); ``MultiHead`` (:mod:`.multi_head`) trains several at once.
- Feature columns (:mod:`.feature_columns`): ``numeric_column``, ``bucketized_column``,
  ``categorical_column_with_*``, ``crossed_column``, ``indicator_column``, ``embedding_column``, and the
  modules ``DenseFeatures`` and ``LinearModel``. String features are fingerprinted on the host by
  ``encode_features``; every other transformation runs inside the model (and the exported artifact).
- Estimators: ``DNNClassifier``/``Regressor``/``Estimator``, ``LinearClassifier``/..., ``DNNLinearCombined*``
  (wide & deep), ``Baseline*``; optimizers by TF's names (:mod:`.optimizers`).

Layers: ``heads``, ``multi_head``, ``feature_columns``, ``encoding`` and ``optimizers`` are layer 2 (a custom ``model_fn`` can use them
alone); the estimators build Estimators, layer 3.

Example:
    >>> from torch_estimator import canned
    >>> head = canned.RegressionHead(label_dimension=2)
    >>> head.logits_dimension
    2
"""

from __future__ import annotations

from .base import CannedEstimator, classifier_head, regressor_head
from .baseline import BaselineClassifier, BaselineEstimator, BaselineRegressor
from .dnn import DNNClassifier, DNNEstimator, DNNModel, DNNRegressor
from .dnn_linear_combined import (
    DNNLinearCombinedClassifier,
    DNNLinearCombinedEstimator,
    DNNLinearCombinedRegressor,
)
from .feature_columns import (
    DenseFeatures,
    LinearModel,
    bucketized_column,
    categorical_column_with_hash_bucket,
    categorical_column_with_identity,
    categorical_column_with_vocabulary_list,
    crossed_column,
    embedding_column,
    encode_features,
    fingerprint,
    indicator_column,
    make_feature_spec,
    numeric_column,
)
from .heads import (
    BinaryClassHead,
    Head,
    LogisticRegressionHead,
    LossReduction,
    MetricKeys,
    MultiClassHead,
    MultiLabelHead,
    PoissonRegressionHead,
    PredictionKeys,
    RegressionHead,
    decode_classes,
    encode_labels,
)
from .linear import LinearClassifier, LinearEstimator, LinearRegressor
from .multi_head import MultiHead
from .optimizers import CombinedOptimizer, Ftrl, get_optimizer_factory
from .parse_spec import make_parse_example_spec

__all__ = [
    "BaselineClassifier",
    "BaselineEstimator",
    "BaselineRegressor",
    "BinaryClassHead",
    "CannedEstimator",
    "CombinedOptimizer",
    "DNNClassifier",
    "DNNEstimator",
    "DNNLinearCombinedClassifier",
    "DNNLinearCombinedEstimator",
    "DNNLinearCombinedRegressor",
    "DNNModel",
    "DNNRegressor",
    "DenseFeatures",
    "Ftrl",
    "Head",
    "LinearClassifier",
    "LinearEstimator",
    "LinearModel",
    "LinearRegressor",
    "LogisticRegressionHead",
    "LossReduction",
    "MetricKeys",
    "MultiClassHead",
    "MultiHead",
    "MultiLabelHead",
    "PoissonRegressionHead",
    "PredictionKeys",
    "RegressionHead",
    "bucketized_column",
    "categorical_column_with_hash_bucket",
    "categorical_column_with_identity",
    "categorical_column_with_vocabulary_list",
    "classifier_head",
    "crossed_column",
    "decode_classes",
    "embedding_column",
    "encode_features",
    "encode_labels",
    "fingerprint",
    "get_optimizer_factory",
    "indicator_column",
    "make_feature_spec",
    "make_parse_example_spec",
    "numeric_column",
    "regressor_head",
]
