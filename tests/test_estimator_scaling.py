"""Gradient accumulation and clipping, mixed precision's skipped steps, compile and channels-last."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_estimator as te
from torch_estimator.inputs import numpy_input_fn


def _regression_fn(features, labels, mode, model):
    prediction = model(features).squeeze(1)
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=prediction)
    return te.EstimatorSpec(mode, loss=F.mse_loss(prediction, labels))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype("float32")
    return x, (x @ rng.normal(size=5)).astype("float32")


def _estimator(tmp_path, name, lr=0.05, **config):
    torch.manual_seed(0)
    config.setdefault("log_step_count_steps", None)
    config.setdefault("save_checkpoints_steps", 1000)
    return te.Estimator(_regression_fn, model_dir=str(tmp_path / name), model=torch.nn.Linear(5, 1),
                        optimizer=lambda p: torch.optim.SGD(p, lr=lr), config=te.RunConfig(device="cpu", **config))


def _input(batch_size):
    x, y = _data()
    return numpy_input_fn(x, y, batch_size=batch_size, num_epochs=None, shuffle=False)


def test_accumulation_equals_a_larger_batch(tmp_path):
    accumulated = _estimator(tmp_path, "a", gradient_accumulation_steps=3)
    accumulated.train(_input(10), steps=8)
    large = _estimator(tmp_path, "b")
    large.train(_input(30), steps=8)
    assert accumulated.get_variable_value("global_step") == 8  # the global step counts optimizer steps
    for a, b in zip(accumulated.model.parameters(), large.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_drops_an_incomplete_last_step(tmp_path, caplog):
    x, y = _data()
    est = _estimator(tmp_path, "a", gradient_accumulation_steps=4)
    with caplog.at_level("WARNING", logger="torch_estimator"):
        est.train(numpy_input_fn(x[:50], y[:50], batch_size=10, shuffle=False))  # 5 micro-batches
    assert est.get_variable_value("global_step") == 1
    assert "1 were dropped" in caplog.text


def test_accumulation_rejects_a_custom_train_op(tmp_path):
    def model_fn(features, labels, mode, model):
        spec = _regression_fn(features, labels, mode, model)
        return spec.replace(train_op=lambda loss: loss.backward())

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=torch.nn.Linear(5, 1),
                       config=te.RunConfig(device="cpu", gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="gradient_accumulation_steps > 1 needs the Estimator's optimizer"):
        est.train(_input(10), steps=1)


def test_clip_by_value_bounds_every_update(tmp_path):
    est = _estimator(tmp_path, "a", lr=1.0, gradient_clip_value=1e-3)
    before = [p.detach().clone() for p in est.model.parameters()]
    est.train(_input(10), steps=1)
    for a, b in zip(before, est.model.parameters()):
        assert (a - b).abs().max() <= 1e-3 + 1e-7


def test_clip_by_norm_bounds_the_update_norm(tmp_path):
    est = _estimator(tmp_path, "a", lr=1.0, gradient_clip_norm=0.01)
    before = torch.cat([p.detach().flatten().clone() for p in est.model.parameters()])
    est.train(_input(10), steps=1)
    after = torch.cat([p.detach().flatten() for p in est.model.parameters()])
    assert (after - before).norm() <= 0.01 + 1e-6


@pytest.mark.parametrize(("name", "value"), [("gradient_accumulation_steps", 0), ("gradient_clip_norm", -1.0), ("gradient_clip_value", 0)])
def test_bad_scaling_options(name, value):
    with pytest.raises(ValueError, match=f"RunConfig `{name}` must be"):
        te.RunConfig(**{name: value})


def test_fp16_skipped_steps_leave_weights_and_scheduler_alone(tmp_path):
    model = torch.nn.Linear(5, 1)
    poison = {"calls": 0}

    def hook(grad):  # one overflow late in the run, besides the scaler's own early ones
        poison["calls"] += 1
        return grad * float("inf") if poison["calls"] == 7 else grad

    model.weight.register_hook(hook)
    est = te.Estimator(_regression_fn, model_dir=str(tmp_path), model=model,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
                       lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9),
                       config=te.RunConfig(device="cpu", precision="fp16", log_step_count_steps=None))
    weights, scales = [model.weight.detach().clone()], [est._scaler.get_scale()]

    class Snapshot(te.Hook):
        def after_run(self, run_context, run_values):
            weights.append(model.weight.detach().clone())
            scales.append(est._scaler.get_scale())

    est.train(_input(10), steps=8, hooks=[Snapshot()])
    skipped = [scales[i + 1] < scales[i] for i in range(8)]
    assert skipped[6] and not all(skipped)
    for i, skip in enumerate(skipped):
        assert torch.equal(weights[i], weights[i + 1]) == skip
    assert est._lr_scheduler.last_epoch == skipped.count(False)  # the scheduler follows applied steps only
    assert est.get_variable_value("global_step") == 8  # the global step counts every batch


def test_channels_last_models_and_batches(tmp_path):
    layouts = []

    def model_fn(features, labels, mode, model):
        layouts.append(features.is_contiguous(memory_format=torch.channels_last))
        logits = model(features).mean(dim=(2, 3))
        return te.EstimatorSpec(mode, loss=F.cross_entropy(logits, labels))

    model = torch.nn.Conv2d(3, 2, 3)
    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", channels_last=True, log_step_count_steps=None))
    images = np.random.default_rng(0).normal(size=(8, 3, 6, 6)).astype("float32")
    est.train(numpy_input_fn(images, np.arange(8) % 2, batch_size=4, shuffle=False), steps=2)
    assert layouts == [True, True]
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compile_keeps_checkpoint_keys_and_an_ordinary_module(tmp_path):
    seen = []

    def model_fn(features, labels, mode, model):
        seen.append(model.weight.shape)  # attribute access works through the compiled wrapper
        return _regression_fn(features, labels, mode, model)

    torch.manual_seed(0)
    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=torch.nn.Linear(5, 1),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                       config=te.RunConfig(device="cpu", compile=True, log_step_count_steps=None))
    est.train(_input(10), steps=3)
    names = est.get_variable_names()
    assert "model/weight" in names and not any("_orig_mod" in n for n in names)
    assert seen[0] == torch.Size([1, 5])
    assert np.isfinite(est.evaluate(numpy_input_fn(*_data(), batch_size=40, shuffle=False))["loss"])


def test_compile_modes_train_like_eager(tmp_path):
    # "reduce-overhead" replays CUDA graphs on CUDA; on the CPU it compiles without them. Either way the
    # weights match a plain run's.
    weights = {}
    for mode in (False, "reduce-overhead"):
        torch.manual_seed(0)
        est = te.Estimator(_regression_fn, model_dir=str(tmp_path / str(mode)), model=torch.nn.Linear(5, 1),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                           config=te.RunConfig(device="cpu", compile=mode, log_step_count_steps=None))
        est.train(_input(10), steps=3)
        weights[mode] = est.model.weight.detach().clone()
    assert torch.allclose(weights[False], weights["reduce-overhead"], atol=1e-6)
    with pytest.raises(ValueError, match=r"RunConfig `compile` must be True, False or one of torch.compile's modes"):
        te.RunConfig(compile="fast")
