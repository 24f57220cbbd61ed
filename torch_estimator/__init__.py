"""torch_estimator: TensorFlow's Estimator, ported to PyTorch.

Write an ``input_fn`` and a ``model_fn``; the Estimator owns the loop, checkpoints, hooks, evaluation and
prediction. See ``Estimator`` for an example.
"""

from . import checkpoint, hooks, inputs, metrics
from .checkpoint import WarmStartSettings
from .estimator import Estimator
from .hooks import (
    CheckpointSaverListener,
    Hook,
    LoggingTensorHook,
    NanLossDuringTrainingError,
    RunContext,
    SecondOrStepTimer,
    StepCounterHook,
    StopAtStepHook,
)
from .run_config import RunConfig
from .spec import EstimatorSpec, ModeKeys

__version__ = "0.1.0"

__all__ = [
    "CheckpointSaverListener",
    "Estimator",
    "EstimatorSpec",
    "Hook",
    "LoggingTensorHook",
    "ModeKeys",
    "NanLossDuringTrainingError",
    "RunConfig",
    "RunContext",
    "SecondOrStepTimer",
    "StepCounterHook",
    "StopAtStepHook",
    "WarmStartSettings",
    "checkpoint",
    "hooks",
    "inputs",
    "metrics",
]
