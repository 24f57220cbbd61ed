"""torch_estimator: TensorFlow's Estimator, ported to PyTorch.

Write an ``input_fn`` and a ``model_fn``; the Estimator owns the loop, checkpoints, hooks, evaluation and
prediction. See ``Estimator`` for an example.
"""

import logging as _logging

from . import checkpoint, hooks, inputs, metrics, summary
from .checkpoint import WarmStartSettings
from .estimator import Estimator
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
from .run_config import RunConfig
from .spec import EstimatorSpec, ModeKeys

__version__ = "0.1.0"

# Quiet unless the application configures logging: logging.basicConfig(level=logging.INFO) shows TF's lines.
_logging.getLogger("torch_estimator").addHandler(_logging.NullHandler())

__all__ = [
    "CheckpointSaverListener",
    "Estimator",
    "EstimatorSpec",
    "FinalOpsHook",
    "Hook",
    "LoggingTensorHook",
    "ModeKeys",
    "NanLossDuringTrainingError",
    "NanTensorHook",
    "ProfilerHook",
    "ProgressBarHook",
    "RunConfig",
    "RunContext",
    "SecondOrStepTimer",
    "StepCounterHook",
    "StopAtStepHook",
    "SummarySaverHook",
    "WarmStartSettings",
    "checkpoint",
    "hooks",
    "inputs",
    "metrics",
    "summary",
]
