"""On a CUDA device: no host-device sync in unobserved steps, mixed precision, exact resume.

Skipped without CUDA (see conftest.py); run where a GPU is present with ``pytest -m cuda``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_estimator as te
from torch_estimator.inputs import numpy_input_fn

pytestmark = pytest.mark.cuda


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.drop = torch.nn.Dropout(0.2)
        self.fc = torch.nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


def model_fn(features, labels, mode, model):
    logits = model(features["x"].view(-1, 1, 28, 28))
    predictions = {"classes": logits.argmax(1)}
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=predictions)
    loss = F.cross_entropy(logits, labels)
    return te.EstimatorSpec(mode, loss=loss, eval_metric_ops={"accuracy": te.metrics.accuracy(labels, predictions["classes"])})


def _data(n=512):
    rng = np.random.default_rng(0)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def _estimator(model_dir, **config):
    config.setdefault("log_step_count_steps", None)
    config.setdefault("save_summary_steps", None)
    return te.Estimator(model_fn, model_dir=str(model_dir), model=lambda params: Net(),
                        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
                        config=te.RunConfig(device="cuda", random_seed=0, **config))


class SyncDebug(te.Hook):
    """Turns CUDA's sync detection to "error" from the first step to the last one's ``after_run``: the
    setup before and the end-of-training checks after (NaN check, final loss, final save) may sync."""

    def __init__(self, last_step):
        self.last_step = last_step

    def after_restore(self, run_context):
        torch.cuda.set_sync_debug_mode("error")

    def after_run(self, run_context, run_values):
        if run_context.global_step >= self.last_step:
            torch.cuda.set_sync_debug_mode("default")


def test_unobserved_steps_never_synchronise(tmp_path):
    x, y = _data()
    est = _estimator(tmp_path, save_checkpoints_steps=None, save_checkpoints_secs=None)
    input_fn = numpy_input_fn({"x": x}, y, batch_size=64, num_epochs=None, shuffle=True, seed=0)
    est.train(input_fn, steps=2)  # warm-up: lazy optimizer state, cuDNN plans
    sync = SyncDebug(last_step=22)
    try:
        est.train(input_fn, steps=20, hooks=[sync])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_train_evaluate_predict_on_cuda(tmp_path):
    x, y = _data()
    est = _estimator(tmp_path, save_checkpoints_steps=10)
    est.train(numpy_input_fn({"x": x}, y, batch_size=64, num_epochs=None, shuffle=True), steps=20)
    assert est.device.type == "cuda" and next(est.model.parameters()).is_cuda
    result = est.evaluate(numpy_input_fn({"x": x}, y, batch_size=100, shuffle=False))
    assert result["global_step"] == 20 and np.isfinite(result["loss"])
    predictions = list(est.predict(numpy_input_fn({"x": x[:5]}, batch_size=2, shuffle=False)))
    assert len(predictions) == 5 and isinstance(predictions[0]["classes"], np.int64)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path, precision):
    x, y = _data()
    est = _estimator(tmp_path, precision=precision, save_checkpoints_steps=10)
    est.train(numpy_input_fn({"x": x}, y, batch_size=64, num_epochs=None, shuffle=True), steps=15)
    assert np.isfinite(est.evaluate(numpy_input_fn({"x": x}, y, batch_size=128, shuffle=False))["loss"])


def test_deterministic_resume_is_bit_identical_on_cuda(tmp_path):
    x, y = _data()

    def input_fn():
        return numpy_input_fn({"x": x}, y, batch_size=32, num_epochs=None, shuffle=True, seed=1)

    straight = _estimator(tmp_path / "a", deterministic=True, save_checkpoints_steps=5)
    straight.train(input_fn(), steps=16)
    first = _estimator(tmp_path / "b", deterministic=True, save_checkpoints_steps=5)
    first.train(input_fn(), steps=7)
    resumed = _estimator(tmp_path / "b", deterministic=True, save_checkpoints_steps=5)
    resumed.train(input_fn(), steps=9)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
