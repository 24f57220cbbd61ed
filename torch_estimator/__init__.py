"""torch_estimator: TensorFlow's Estimator, ported to PyTorch.

Write an ``input_fn`` and a ``model_fn``; the Estimator owns the loop, checkpoints, hooks, evaluation and
prediction. See ``Estimator`` for an example.
"""

import logging as _logging

from . import canned, checkpoint, early_stopping, export, exporters, hooks, inputs, lock, metrics, summary
from .canned import (
    BaselineClassifier,
    BaselineEstimator,
    BaselineRegressor,
    BinaryClassHead,
    DNNClassifier,
    DNNEstimator,
    DNNLinearCombinedClassifier,
    DNNLinearCombinedEstimator,
    DNNLinearCombinedRegressor,
    DNNRegressor,
    LinearClassifier,
    LinearEstimator,
    LinearRegressor,
    LogisticRegressionHead,
    MultiClassHead,
    MultiHead,
    MultiLabelHead,
    PoissonRegressionHead,
    RegressionHead,
)
from .canned import feature_columns as feature_column  # TF's tf.feature_column
from .checkpoint import WarmStartSettings
from .early_stopping import (
    make_early_stopping_hook,
    read_eval_metrics,
    stop_if_higher_hook,
    stop_if_lower_hook,
    stop_if_no_decrease_hook,
    stop_if_no_increase_hook,
)
from .estimator import Estimator
from .export import (
    ClassificationOutput,
    PredictOutput,
    RegressionOutput,
    ServingInputReceiver,
    TensorServingInputReceiver,
    TensorSpec,
    build_raw_serving_input_receiver_fn,
)
from .exporters import BestExporter, Exporter, FinalExporter, LatestExporter
from .hooks import (
    CheckpointSaverListener,
    FinalOpsHook,
    Hook,
    LoggingTensorHook,
    NanLossDuringTrainingError,
    NanTensorHook,
    ProfilerHook,
    ProgressBarHook,
    RunContext,
    SecondOrStepTimer,
    StepCounterHook,
    StopAtStepHook,
    SummarySaverHook,
)
from .inputs_pandas import pandas_input_fn
from .inputs_tfrecord import tfrecord_input_fn
from .lock import ModelDirLockedError
from .run_config import RunConfig
from .spec import EstimatorSpec, EvalSpec, ModeKeys, TrainSpec
from .training import run_evaluator, train_and_evaluate

__version__ = "0.1.0"

# Quiet unless the application configures logging: logging.basicConfig(level=logging.INFO) shows TF's lines.
_logging.getLogger("torch_estimator").addHandler(_logging.NullHandler())

__all__ = [
    "BaselineClassifier",
    "BaselineEstimator",
    "BaselineRegressor",
    "BestExporter",
    "BinaryClassHead",
    "CheckpointSaverListener",
    "ClassificationOutput",
    "DNNClassifier",
    "DNNEstimator",
    "DNNLinearCombinedClassifier",
    "DNNLinearCombinedEstimator",
    "DNNLinearCombinedRegressor",
    "DNNRegressor",
    "Estimator",
    "EstimatorSpec",
    "EvalSpec",
    "Exporter",
    "FinalExporter",
    "FinalOpsHook",
    "Hook",
    "LatestExporter",
    "LinearClassifier",
    "LinearEstimator",
    "LinearRegressor",
    "LoggingTensorHook",
    "LogisticRegressionHead",
    "ModeKeys",
    "ModelDirLockedError",
    "MultiClassHead",
    "MultiHead",
    "MultiLabelHead",
    "NanLossDuringTrainingError",
    "NanTensorHook",
    "PoissonRegressionHead",
    "PredictOutput",
    "ProfilerHook",
    "ProgressBarHook",
    "RegressionHead",
    "RegressionOutput",
    "RunConfig",
    "RunContext",
    "SecondOrStepTimer",
    "ServingInputReceiver",
    "StepCounterHook",
    "StopAtStepHook",
    "SummarySaverHook",
    "TensorServingInputReceiver",
    "TensorSpec",
    "TrainSpec",
    "WarmStartSettings",
    "build_raw_serving_input_receiver_fn",
    "canned",
    "checkpoint",
    "early_stopping",
    "export",
    "exporters",
    "feature_column",
    "hooks",
    "inputs",
    "lock",
    "make_early_stopping_hook",
    "metrics",
    "pandas_input_fn",
    "read_eval_metrics",
    "run_evaluator",
    "stop_if_higher_hook",
    "stop_if_lower_hook",
    "stop_if_no_decrease_hook",
    "stop_if_no_increase_hook",
    "summary",
    "tfrecord_input_fn",
    "train_and_evaluate",
]
