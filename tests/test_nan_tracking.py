"""The NaN policy of a train() call: NanTracker, configured by NanTensorHook."""

from __future__ import annotations

import logging

import pytest
import torch

from torch_estimator.hooks import Hook, NanLossDuringTrainingError, NanTensorHook, RunContext
from torch_estimator.nan_tracking import NanTracker


def _losses(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v) for v in values]


def test_finite_losses_are_looked_at_once_and_cleared():
    tracker, context = NanTracker(global_step=10), RunContext("train", 10)
    tracker.losses.extend(_losses(1.0, 2.0))
    assert tracker.check(context) is True
    assert tracker.losses == [] and not tracker.broken and not context.stop_requested


def test_a_nan_loss_raises_naming_the_first_bad_step():
    tracker = NanTracker(global_step=10)
    tracker.losses.extend(_losses(1.0, 2.0))
    tracker.check(RunContext("train", 12))
    tracker.losses.extend(_losses(1.0, float("inf"), float("nan")))
    with pytest.raises(NanLossDuringTrainingError, match=r"NaN or infinite loss at global step 14 \(the first bad step\)"):
        tracker.check(RunContext("train", 15))
    assert tracker.broken


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_host_values_name_the_first_bad_step_as_tensors_do(bad):
    tracker = NanTracker(global_step=10)  # the step on the CPU keeps loss.item()
    tracker.losses.extend([1.0, 2.0, bad, float("nan")])
    assert not tracker.all_finite()
    with pytest.raises(NanLossDuringTrainingError, match=r"NaN or infinite loss at global step 13 \(the first bad step\)"):
        tracker.check(RunContext("train", 14))


def test_host_values_whose_sum_overflows_are_finite():
    tracker, context = NanTracker(global_step=0), RunContext("train", 0)
    tracker.losses.extend([1e308, 1e308, 3])  # their sum is inf; each one is finite
    assert tracker.all_finite()
    assert tracker.check(context) is True and tracker.losses == [] and not tracker.broken


def test_the_cpu_step_keeps_host_values_and_stops_at_the_first_nan(tmp_path, monkeypatch):
    import torch_estimator as te

    def model_fn(features, labels, mode, model):
        loss = torch.nn.functional.mse_loss(model(features).squeeze(1), labels)
        return te.EstimatorSpec(mode, loss=loss / features.sum().clamp(max=0).abs().gt(0).float().sub(1).abs())

    batches = [(torch.ones(4, 2), torch.zeros(4))] * 3 + [(-torch.ones(4, 2), torch.zeros(4))] + [(torch.ones(4, 2), torch.zeros(4))] * 3
    est = te.Estimator(model_fn, model=torch.nn.Linear(2, 1), model_dir=str(tmp_path),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None, save_summary_steps=None))
    seen = []
    original = NanTracker.check

    def spying(self, context):
        seen.extend(type(value) for value in self.losses)
        return original(self, context)

    monkeypatch.setattr(NanTracker, "check", spying)
    with pytest.raises(NanLossDuringTrainingError, match=r"at global step 4 \(the first bad step\)"):
        est.train(lambda: batches)
    assert seen and set(seen) == {float}


def test_log_and_stop_policy_requests_a_stop_once(caplog):
    tracker, context = NanTracker(global_step=0, fail_on_nan_loss=False), RunContext("train", 0)
    tracker.losses.extend(_losses(float("nan")))
    with caplog.at_level(logging.ERROR, logger="torch_estimator"):
        assert tracker.check(context) is False
    assert context.stop_requested and tracker.broken
    assert "Model diverged with loss = NaN at global step 1" in caplog.text
    assert tracker.check(context) is False  # diverged: stays false, logs nothing more
    assert caplog.text.count("Model diverged") == 1
    assert not tracker.all_finite()


@pytest.mark.parametrize(("hooks", "raises"), [
    ([], True),
    ([Hook()], True),
    ([NanTensorHook()], True),
    ([NanTensorHook(fail_on_nan_loss=False)], False),
    ([NanTensorHook(fail_on_nan_loss=False), NanTensorHook()], True),  # any hook asking to raise wins
])
def test_nan_tensor_hooks_configure_the_policy(hooks, raises):
    tracker = NanTracker.from_hooks(hooks, global_step=0)
    tracker.losses.extend(_losses(float("nan")))
    if raises:
        with pytest.raises(NanLossDuringTrainingError, match="NaN or infinite loss at global step 1"):
            tracker.check(RunContext("train", 0))
    else:
        assert tracker.check(RunContext("train", 0)) is False


def test_a_save_of_non_finite_losses_is_refused():
    tracker = NanTracker(global_step=0)
    tracker.losses.extend(_losses(float("nan")))
    with pytest.raises(NanLossDuringTrainingError, match="Refusing to save a checkpoint of non-finite weights"):
        tracker.check_before_save(1, [], "/model")


def test_a_save_of_non_finite_weights_names_them_and_when_they_were_last_finite():
    tracker = NanTracker(global_step=0, finite_step=0)
    tracker.check_before_save(5, [], "/model")  # finite at step 5
    with pytest.raises(NanLossDuringTrainingError,
                       match=r"between global steps 6 and 9 \(they were finite at step 5\).*Non-finite: \['model/w'\]"):
        tracker.check_before_save(9, ["model/w"], "/model")
    assert tracker.broken
    with pytest.raises(NanLossDuringTrainingError, match=r"at global step 10, while the loss.* in /model is intact"):
        NanTracker(global_step=9, finite_step=9).check_before_save(10, ["model/w"], "/model")
