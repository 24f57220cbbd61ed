"""Helpers shared by the export, loader and CLI tests (this module holds no tests).

A small classifier trained for a few steps by a real Estimator produces the checkpoints, so the exports
under test come from ``Estimator.export_saved_model`` exactly as users make them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import torch_estimator as te
from torch_estimator import export

NUM_FEATURES = 4
NUM_CLASSES = 3
LABELS = ["ant", "bee", "cat"]


class Net(torch.nn.Module):
    """4 -> 8 -> 3 with dropout (active only in training, so export must see eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(NUM_FEATURES, 8)
        self.dropout = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.relu(self.hidden(x))))


def make_model_fn(
    export_outputs: Callable[[dict[str, torch.Tensor], torch.Tensor], Any] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dict_features: bool = True,
) -> Callable[..., te.EstimatorSpec]:
    """A classifier ``model_fn``; ``export_outputs(predictions, logits)`` builds its export outputs and
    ``transform`` rewrites the input first (to inject the mistakes export must catch)."""

    def model_fn(features, labels, mode, model):
        x = features["x"] if dict_features else features
        if transform is not None:
            x = transform(x)
        logits = model(x)
        predictions = {"classes": logits.argmax(1), "probabilities": logits.softmax(1)}
        if mode == te.ModeKeys.PREDICT:
            outputs = None if export_outputs is None else export_outputs(predictions, logits)
            return te.EstimatorSpec(mode, predictions=predictions, export_outputs=outputs)
        return te.EstimatorSpec(mode, loss=F.cross_entropy(logits, labels))

    return model_fn


def data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
    return x, y


def train_estimator(model_dir: str | os.PathLike[str], model_fn: Callable[..., Any] | None = None,
                    dict_features: bool = True, steps: int = 3) -> te.Estimator:
    """A real Estimator trained for a few steps (so a checkpoint exists)."""
    torch.manual_seed(0)
    est = te.Estimator(
        model_fn or make_model_fn(dict_features=dict_features),
        model_dir=str(model_dir),
        model=Net(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        config=te.RunConfig(device="cpu", log_step_count_steps=None),
    )
    x, y = data()
    features = {"x": x} if dict_features else x
    est.train(te.inputs.numpy_input_fn(features, y, batch_size=16, num_epochs=None, shuffle=True), steps=steps)
    return est


def raw_receiver_fn(batch_size: int | None = None) -> Callable[[], export.ServingInputReceiver]:
    return export.build_raw_serving_input_receiver_fn(
        {"x": export.TensorSpec([None, NUM_FEATURES], torch.float32)}, default_batch_size=batch_size
    )


def predict(est: te.Estimator, x: np.ndarray, dict_features: bool = True) -> dict[str, np.ndarray]:
    """``Estimator.predict`` on one batch, as a dict of arrays."""
    features = {"x": x} if dict_features else x
    input_fn = te.inputs.numpy_input_fn(features, batch_size=len(x), shuffle=False)
    result = next(est.predict(input_fn, yield_single_examples=False))
    return result if isinstance(result, dict) else {"output": result}
