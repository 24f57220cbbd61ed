"""Early-stopping hooks: TF's stop conditions, the schedule, named evaluations, and clear errors."""

from __future__ import annotations

import logging

import pytest
import torch

import torch_estimator as te
from torch_estimator import early_stopping, summary
from torch_estimator.inputs import numpy_input_fn

from .conftest import classifier_fn


class FakeEstimator:
    def __init__(self, model_dir):
        self.model_dir = str(model_dir)

    def eval_dir(self, name=None):
        return f"{self.model_dir}/eval_{name}" if name else f"{self.model_dir}/eval"


def _write(eval_dir, history):
    for step, metrics in history.items():
        summary.write_summaries(str(eval_dir), metrics, step)
    summary.flush_all()


def _stops(hook, step=1):
    """Run the hook as the loop does, after one step; whether it requested a stop."""
    hook.begin()
    context = te.RunContext(te.ModeKeys.TRAIN, step)
    hook.after_run(context, {})
    return context.stop_requested


@pytest.fixture
def est(tmp_path):
    return FakeEstimator(tmp_path)


def test_read_eval_metrics(est):
    _write(est.eval_dir(), {20: {"loss": 0.4, "accuracy": 0.8}, 10: {"loss": 0.5, "accuracy": 0.7}})
    assert te.read_eval_metrics(est.eval_dir()) == {
        10: {"loss": 0.5, "accuracy": pytest.approx(0.7)}, 20: {"loss": pytest.approx(0.4), "accuracy": pytest.approx(0.8)}
    }
    assert te.read_eval_metrics(est.eval_dir("missing")) == {}


def test_threshold_hooks_are_strict(est):
    _write(est.eval_dir(), {10: {"accuracy": 0.5}, 20: {"accuracy": 0.75}})
    assert _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, run_every_steps=1))
    assert not _stops(te.stop_if_higher_hook(est, "accuracy", 0.75, run_every_steps=1))
    assert _stops(te.stop_if_lower_hook(est, "accuracy", 0.6, run_every_steps=1))
    assert not _stops(te.stop_if_lower_hook(est, "accuracy", 0.5, run_every_steps=1))


def test_min_steps_ignores_earlier_evaluations(est):
    _write(est.eval_dir(), {10: {"accuracy": 0.9}, 20: {"accuracy": 0.5}})
    assert not _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, min_steps=11, run_every_steps=1))
    assert _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, min_steps=10, run_every_steps=1))


@pytest.mark.parametrize(
    "history, expected",
    [
        ({10: 0.5, 20: 0.5, 30: 0.5}, True),  # equal is no improvement: 30 - 10 >= 20
        ({10: 0.5, 20: 0.4, 30: 0.4}, False),  # best at 20
        ({10: 0.5, 20: 0.6, 30: 0.7, 40: 0.3}, True),  # stops at 30 already, whatever 40 says
        ({10: 0.5, 20: 0.6}, False),
    ],
)
def test_no_decrease(est, history, expected):
    _write(est.eval_dir(), {step: {"loss": value} for step, value in history.items()})
    assert _stops(te.stop_if_no_decrease_hook(est, "loss", 20, run_every_steps=1)) is expected


def test_no_increase(est):
    _write(est.eval_dir(), {10: {"accuracy": 0.5}, 20: {"accuracy": 0.6}, 30: {"accuracy": 0.6}})
    assert not _stops(te.stop_if_no_increase_hook(est, "accuracy", 20, run_every_steps=1))
    assert _stops(te.stop_if_no_increase_hook(est, "accuracy", 10, run_every_steps=1))
    assert not _stops(te.stop_if_no_increase_hook(est, "accuracy", 10, min_steps=25, run_every_steps=1))


def test_named_evaluations(est, caplog):
    _write(est.eval_dir("validation"), {10: {"accuracy": 0.9}})
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        assert not _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, run_every_steps=1))
    assert "holds no evaluation yet, while ['eval_validation'] do; if the EvalSpec has a name, pass name=" in caplog.text
    assert _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, run_every_steps=1, name="validation"))
    assert _stops(te.stop_if_higher_hook(est, "accuracy", 0.7, est.eval_dir("validation"), run_every_steps=1))
    with pytest.raises(ValueError, match="give eval_dir .* or name .*, not both"):
        te.stop_if_higher_hook(est, "accuracy", 0.7, eval_dir="x", name="validation")


def test_a_metric_that_is_never_reported_is_an_error(est):
    _write(est.eval_dir(), {10: {"loss": 0.5, "accuracy": 0.7}})
    hook = te.stop_if_no_increase_hook(est, "acc", 10, run_every_steps=1)
    with pytest.raises(ValueError, match=r"metric 'acc', but the evaluations in .*eval report only \['accuracy', 'loss'\]"):
        _stops(hook)


def test_the_predicate_runs_on_its_timer(est):
    calls = []
    hook = te.make_early_stopping_hook(est, lambda: calls.append(1) or False, run_every_steps=5)
    hook.begin()
    for step in range(1, 13):
        hook.after_run(te.RunContext(te.ModeKeys.TRAIN, step), {})
    assert len(calls) == 3  # steps 1, 6 and 11


def test_the_schedule_arguments(est):
    fn = lambda: False  # noqa: E731
    te.make_early_stopping_hook(est, fn)  # every 60 secs
    te.make_early_stopping_hook(est, fn, run_every_steps=10)  # replaces the default secs
    with pytest.raises(ValueError, match="exactly one of run_every_secs and run_every_steps; received run_every_secs=30"):
        te.make_early_stopping_hook(est, fn, run_every_secs=30, run_every_steps=10)
    with pytest.raises(ValueError, match="exactly one of run_every_secs and run_every_steps; received run_every_secs=None, run_every_steps=None"):
        te.make_early_stopping_hook(est, fn, run_every_secs=None)
    with pytest.raises(ValueError, match="run_every_steps must be an int > 0; received 0"):
        te.make_early_stopping_hook(est, fn, run_every_steps=0)
    with pytest.raises(ValueError, match="run_every_secs must be a number > 0; received -1"):
        te.make_early_stopping_hook(est, fn, run_every_secs=-1)
    with pytest.raises(TypeError, match="`should_stop_fn` must be callable"):
        te.make_early_stopping_hook(est, "stop")
    with pytest.raises(TypeError, match="`estimator` must be a torch_estimator.Estimator; received str"):
        te.make_early_stopping_hook("est", fn)


def test_argument_checks(est):
    with pytest.raises(ValueError, match="min_steps must be an int >= 0; received -1"):
        te.stop_if_higher_hook(est, "accuracy", 0.5, min_steps=-1)
    with pytest.raises(ValueError, match="max_steps_without_decrease must be an int > 0; received 0"):
        te.stop_if_no_decrease_hook(est, "loss", 0)
    with pytest.raises(ValueError, match="metric_name must be a non-empty string; received ''"):
        te.stop_if_no_decrease_hook(est, "", 10)


def test_event_files_are_parsed_again_only_when_they_change(est, monkeypatch):
    _write(est.eval_dir(), {10: {"loss": 0.5}})
    reads = []
    original = early_stopping.read_eval_metrics
    monkeypatch.setattr(early_stopping, "read_eval_metrics", lambda d: reads.append(d) or original(d))
    hook = te.stop_if_no_decrease_hook(est, "loss", 20, run_every_steps=1)
    hook.begin()
    for step in (1, 2, 3):
        hook.after_run(te.RunContext(te.ModeKeys.TRAIN, step), {})
    _write(est.eval_dir(), {20: {"loss": 0.5}})
    hook.after_run(te.RunContext(te.ModeKeys.TRAIN, 4), {})
    assert len(reads) == 2


def test_constant_loss_stops_training_near_step_30(make_estimator, data, caplog):
    def constant_loss_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        if mode == te.ModeKeys.PREDICT:
            return spec
        return spec.replace(loss=spec.loss * 0 + 1.0)

    est = make_estimator(model_fn=constant_loss_fn, save_checkpoints_steps=10)
    hook = te.stop_if_no_decrease_hook(est, "loss", 20, run_every_steps=1)
    train_input = numpy_input_fn({"x": data[0]}, data[1], batch_size=10, num_epochs=None, shuffle=True, seed=1)
    eval_spec = te.EvalSpec(numpy_input_fn({"x": data[0]}, data[1], batch_size=50, shuffle=False), steps=None, throttle_secs=0)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        metrics, _ = te.train_and_evaluate(est, te.TrainSpec(train_input, max_steps=100, hooks=[hook]), eval_spec)
    # TF: evaluations at 10, 20, 30, then "Requesting early stopping at global step 29" (its pre-step count);
    # here the hook sees evaluation 30 on the next step and training ends at 31, evaluated at the end.
    assert int(metrics["global_step"]) == 31
    assert sorted(te.read_eval_metrics(est.eval_dir())) == [10, 20, 30, 31]
    assert 'No decrease in metric "loss" for 20 steps' in caplog.text
    assert "Requesting early stopping at global step 31" in caplog.text
    assert torch.equal(torch.tensor(metrics["loss"]), torch.tensor(1.0))
