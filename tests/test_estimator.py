"""Estimator: construction, TF's train/evaluate/predict semantics, memory vs disk, exact resume."""

from __future__ import annotations

import functools
import logging
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_estimator as te
from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import saver as ckpt_saver
from torch_estimator.inputs import numpy_input_fn

from .conftest import TinyNet, classifier_fn


def _train_fn(data, **kwargs):
    x, y = data
    kwargs.setdefault("batch_size", 10)
    kwargs.setdefault("num_epochs", None)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 3)
    return numpy_input_fn({"x": x}, y, **kwargs)


def _eval_fn(data, batch_size=10):
    x, y = data
    return numpy_input_fn({"x": x}, y, batch_size=batch_size, shuffle=False)


def _steps_on_disk(model_dir) -> list[int]:
    return [ckpt.step_of(p) for p in ckpt.read_index(str(model_dir)).paths]


class Recorder(te.CheckpointSaverListener):
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def begin(self):
        self.calls.append("begin")

    def before_save(self, global_step):
        self.calls.append(("before", global_step))

    def after_save(self, global_step):
        self.calls.append(("after", global_step))
        return global_step == self.stop_at

    def end(self, global_step):
        self.calls.append(("end", global_step))


# ----------------------------------------------------------------------------------------------------------
# Construction.


def test_model_fn_with_unknown_argument_is_rejected(tmp_path):
    def model_fn(features, labels, mode, extra):
        raise AssertionError

    with pytest.raises(ValueError, match="unexpected argument 'extra'"):
        te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet())


def test_partial_model_fn_with_bound_keywords_is_valid(tmp_path, data):
    # TF's test_partial_model_fn_args: keywords bound by functools.partial are the partial's, not the
    # Estimator's, even after them every argument becomes keyword-only.
    seen = {}

    def model_fn(features, labels, foo, mode, params, config, model, bar):
        seen.update(foo=foo, bar=bar, params=params, mode=mode, has_config=config is not None)
        return classifier_fn(features, labels, mode, model)

    partial = functools.partial(functools.partial(model_fn, foo=45.0), bar=46.0)
    est = te.Estimator(partial, model_dir=str(tmp_path), model=TinyNet(), params={"lr": 0.1},
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), config=te.RunConfig(device="cpu"))
    est.train(_train_fn(data), steps=1)
    assert seen == {"foo": 45.0, "bar": 46.0, "params": {"lr": 0.1}, "mode": te.ModeKeys.TRAIN, "has_config": True}


def test_partial_model_fn_still_rejects_unbound_unknown_arguments(tmp_path):
    def model_fn(features, labels, mode, foo, extra):
        raise AssertionError

    with pytest.raises(ValueError, match="unexpected argument 'extra'"):
        te.Estimator(functools.partial(model_fn, foo=1), model_dir=str(tmp_path), model=TinyNet())


def test_model_fn_without_features_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="must declare a `features` argument"):
        te.Estimator(lambda labels, mode: None, model_dir=str(tmp_path), model=TinyNet())


def test_model_fn_must_be_callable(tmp_path):
    with pytest.raises(ValueError, match="`model_fn` must be a callable"):
        te.Estimator(None, model_dir=str(tmp_path), model=TinyNet())


def test_params_without_params_argument_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not declare `params`"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), params={"lr": 1})


def test_params_are_deep_copied(tmp_path):
    params = {"layers": [1, 2]}
    est = te.Estimator(lambda features, params: None, model_dir=str(tmp_path), model=TinyNet(), params=params)
    params["layers"].append(3)
    copy = est.params
    copy["layers"].append(4)
    assert est.params == {"layers": [1, 2]}


def test_conflicting_model_dirs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="set both in the constructor"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path / "a"), model=TinyNet(),
                     config=te.RunConfig(model_dir=str(tmp_path / "b")))


def test_model_dir_comes_from_config(tmp_path):
    est = te.Estimator(classifier_fn, model=TinyNet(), config=te.RunConfig(model_dir=str(tmp_path)))
    assert est.model_dir == str(tmp_path) and est.config.model_dir == str(tmp_path)


def test_missing_model_dir_uses_a_temporary_one_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        est = te.Estimator(classifier_fn, model=TinyNet())
    assert os.path.isdir(est.model_dir)
    assert "Using temporary folder as model directory" in caplog.text


def test_config_must_be_a_run_config(tmp_path):
    with pytest.raises(ValueError, match="`config` must be a torch_estimator.RunConfig"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), config={"device": "cpu"})


def test_model_factory_receives_params(tmp_path):
    seen = {}

    def factory(params):
        seen.update(params)
        return torch.nn.Linear(params["n"], 1)

    est = te.Estimator(lambda features, params, model: None, model_dir=str(tmp_path), model=factory, params={"n": 3})
    assert seen == {"n": 3} and est.model.in_features == 3


def test_model_must_be_a_module_or_factory(tmp_path):
    with pytest.raises(TypeError, match="`model` must be an nn.Module or a factory"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=3)


def test_optimizer_over_foreign_parameters_is_rejected(tmp_path):
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not parameters of `model`"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=torch.optim.SGD(other.parameters(), lr=1))


def test_scheduler_without_optimizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="`lr_scheduler` needs an `optimizer`"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), lr_scheduler=lambda o: None)


def test_unavailable_device_is_rejected(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), config=te.RunConfig(device="cuda"))


def test_invalid_device_string_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="is not a valid device"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), config=te.RunConfig(device="gpu9"))


def test_auto_device_is_cpu_without_accelerators(tmp_path):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is available here")
    est = te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet())
    assert est.device == torch.device("cpu")


def test_bad_warm_start_value_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="`warm_start_from` must be a checkpoint path"):
        te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), warm_start_from=3)


# ----------------------------------------------------------------------------------------------------------
# train.


def test_steps_and_max_steps_follow_tf_sequence(make_estimator, data, tmp_path, caplog):
    est = make_estimator(save_checkpoints_steps=10, keep_checkpoint_max=10)
    est.train(_train_fn(data), steps=25)
    assert _steps_on_disk(est.model_dir) == [0, 10, 20, 25]
    est.train(_train_fn(data), steps=5)
    assert ckpt.step_of(est.latest_checkpoint()) == 30
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        est.train(_train_fn(data), max_steps=30)
    assert "Skipping training since max_steps has already saved" in caplog.text
    assert ckpt.step_of(est.latest_checkpoint()) == 30
    est.train(_train_fn(data), max_steps=33)
    assert _steps_on_disk(est.model_dir) == [0, 10, 20, 25, 30, 33]


def test_max_steps_is_read_from_disk_by_a_new_estimator(make_estimator, data):
    make_estimator(save_checkpoints_steps=10).train(_train_fn(data), steps=25)
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), max_steps=20)
    assert ckpt.step_of(est.latest_checkpoint()) == 25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 1, "max_steps": 2}, "not both"),
        ({"steps": 0}, "`steps` must be an int > 0"),
        ({"max_steps": -1}, "`max_steps` must be an int > 0"),
        ({"hooks": ["not a hook"]}, "`hooks` must contain torch_estimator.Hook"),
        ({"saving_listeners": [object()]}, "CheckpointSaverListener"),
    ],
)
def test_train_rejects_bad_arguments(make_estimator, data, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_estimator().train(_train_fn(data), **kwargs)


def test_listeners_need_checkpointing(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=None, save_checkpoints_secs=None)
    with pytest.raises(ValueError, match="`saving_listeners` need checkpoints"):
        est.train(_train_fn(data), steps=1, saving_listeners=[Recorder()])


def test_training_without_steps_runs_until_the_input_ends(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=1000)
    est.train(_train_fn(data, num_epochs=2, batch_size=30))  # 200 examples -> 7 batches
    assert ckpt.step_of(est.latest_checkpoint()) == 7


def test_empty_input_warns_that_no_steps_were_made(make_estimator, caplog):
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        make_estimator().train(lambda: [], steps=3)
    assert "made no steps" in caplog.text


def test_listeners_see_tf_save_moments(make_estimator, data):
    recorder = Recorder()
    make_estimator(save_checkpoints_steps=10).train(_train_fn(data), steps=25, saving_listeners=[recorder])
    assert recorder.calls == [
        "begin", ("before", 0), ("after", 0), ("before", 10), ("after", 10),
        ("before", 20), ("after", 20), ("before", 25), ("after", 25), ("end", 25),
    ]


def test_resumed_training_tells_listeners_without_rewriting(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=10)
    mtime = os.stat(est.latest_checkpoint()).st_mtime_ns
    recorder = Recorder()
    est.train(_train_fn(data), steps=5, saving_listeners=[recorder])
    assert recorder.calls[:3] == ["begin", ("before", 10), ("after", 10)]
    assert os.stat(ckpt.checkpoint_path_for_step(est.model_dir, 10)).st_mtime_ns == mtime


def test_listener_returning_true_stops_training(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=100, saving_listeners=[Recorder(stop_at=20)])
    assert ckpt.step_of(est.latest_checkpoint()) == 20


def test_checkpoints_every_n_seconds(make_estimator, data, monkeypatch):
    clock = iter(range(0, 10_000, 7))
    monkeypatch.setattr(ckpt_saver.time, "monotonic", lambda: float(next(clock)))
    est = make_estimator(save_checkpoints_secs=20, keep_checkpoint_max=100)
    est.train(_train_fn(data), steps=9)
    steps = _steps_on_disk(est.model_dir)
    assert steps[0] == 0 and steps[-1] == 9 and len(steps) > 2


@pytest.mark.parametrize("hooks", ["default", "off"])
def test_checkpoints_every_n_seconds_follow_the_step_after_the_time_is_up(make_estimator, data, monkeypatch, hooks):
    # Each step "takes" 10 s; saves every 25 s: the time is up after steps 3, 7, 11 (at 30, 70, 110 s after
    # the saves at 0, 40, 80). A step no hook observes runs without a save, so the next one, 4, 8 or 12, is
    # observed and followed by the save; with hooks every 5 steps, step 11 is observed anyway and saves at
    # once. Then the final step, 14.
    steps = []

    def model_fn(features, labels, mode, model):
        steps.append(1)
        return classifier_fn(features, labels, mode, model)

    monkeypatch.setattr(ckpt_saver.time, "monotonic", lambda: 10.0 * len(steps))
    options = {"log_step_count_steps": 5, "save_summary_steps": 5} if hooks == "default" else {"save_summary_steps": None}
    est = make_estimator(model_fn=model_fn, save_checkpoints_secs=25, **options)
    recorder = Recorder()
    est.train(_train_fn(data), steps=14, saving_listeners=[recorder])
    expected = [0, 4, 8, 11, 14] if hooks == "default" else [0, 4, 8, 12, 14]
    assert [step for kind, step in recorder.calls[1:] if kind == "after"] == expected


def test_default_logging_lines(make_estimator, data, caplog):
    est = make_estimator(save_checkpoints_steps=10, log_step_count_steps=10)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        est.train(_train_fn(data), steps=25)
    text = caplog.text
    assert "loss = " in text and ", step = 1\n" in text and ", step = 21 (" in text  # the step each update produced
    assert "global_step/sec: " in text
    assert "Saving checkpoints for 25 into " in text
    assert "Loss for final step: " in text


def test_train_step_needs_a_way_to_step(tmp_path, data):
    est = te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(), config=te.RunConfig(device="cpu"))
    with pytest.raises(ValueError, match="TRAIN needs a way to step"):
        est.train(_train_fn(data), steps=1)


def test_custom_train_op_is_called_with_the_loss(tmp_path, data):
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def train_op(loss):
        calls.append(loss.shape)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        return spec.replace(train_op=train_op) if mode == te.ModeKeys.TRAIN else spec

    before = model.out.weight.detach().clone()
    te.Estimator(model_fn, model_dir=str(tmp_path), model=model, config=te.RunConfig(device="cpu")).train(_train_fn(data), steps=3)
    assert calls == [torch.Size([])] * 3 and not torch.equal(before, model.out.weight)


@pytest.mark.parametrize("clip", [None, 1.0])  # the plain step, and the general one
def test_an_optimizer_with_its_own_zero_grad_is_used_before_every_step(tmp_path, data, clip):
    calls = []

    class Counting(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none)

    est = te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(),
                       optimizer=lambda p: Counting(p, lr=0.1),
                       config=te.RunConfig(device="cpu", gradient_clip_norm=clip, log_step_count_steps=None))
    est.train(_train_fn(data), steps=4)
    assert calls == [True] * 4


def test_a_profiled_training_step_shows_the_optimizer_ranges(tmp_path, data):
    est = te.Estimator(classifier_fn, model_dir=str(tmp_path), model=TinyNet(),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None))
    est.train(_train_fn(data), steps=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        est.train(_train_fn(data), steps=3)
    names = [event.name for event in profile.events()]
    assert names.count("Optimizer.zero_grad#SGD.zero_grad") == 3
    assert names.count("Optimizer.step#SGD.step") == 3


def test_model_fn_must_return_a_spec(tmp_path, data):
    est = te.Estimator(lambda features, labels: {"loss": 1}, model_dir=str(tmp_path), model=TinyNet())
    with pytest.raises(TypeError, match="model_fn must return an EstimatorSpec; it returned dict"):
        est.train(_train_fn(data), steps=1)


def test_model_fn_must_return_the_requested_mode(tmp_path, data):
    def model_fn(features, labels, model):
        return te.EstimatorSpec(te.ModeKeys.EVAL, loss=model(features["x"]).sum())

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="called in mode 'train' but returned an EstimatorSpec for 'eval'"):
        est.train(_train_fn(data), steps=1)


def test_labels_need_a_labels_argument(tmp_path, data):
    est = te.Estimator(lambda features, mode: None, model_dir=str(tmp_path), model=TinyNet())
    with pytest.raises(ValueError, match="does not declare `labels`, but input_fn returns labels"):
        est.train(_train_fn(data), steps=1)


def test_nan_loss_stops_training_without_saving_broken_weights(tmp_path, data):
    def model_fn(features, labels, mode, model):
        loss = F.cross_entropy(model(features["x"]), labels)
        step = model.calls = getattr(model, "calls", 0) + 1
        return te.EstimatorSpec(mode, loss=loss * float("nan") if step >= 7 else loss)

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=5, log_step_count_steps=None))
    with pytest.raises(te.NanLossDuringTrainingError, match="global step 7 \\(the first bad step\\)"):
        est.train(_train_fn(data), steps=20)
    assert _steps_on_disk(tmp_path) == [0, 5]
    for name in ("model/out.weight", "model/hidden.weight"):
        assert np.isfinite(est.get_variable_value(name)).all()


def test_hooks_receive_only_requested_values(make_estimator, data):
    class Wants(te.Hook):
        def __init__(self):
            self.seen = []

        def before_run(self, run_context):
            return ["loss", "global_step", "classes", "learning_rate"] if run_context.global_step % 2 == 0 else None

        def after_run(self, run_context, run_values):
            self.seen.append((run_context.global_step, dict(run_values)))

    hook = Wants()
    make_estimator(save_summary_steps=None).train(_train_fn(data), steps=4, hooks=[hook])
    assert [step for step, _ in hook.seen] == [1, 2, 3, 4]
    values = hook.seen[0][1]
    assert set(values) == {"loss", "global_step", "classes", "learning_rate"}
    assert isinstance(values["loss"], np.float32) and values["global_step"] == 0
    assert values["classes"].shape == (10,) and values["learning_rate"] == pytest.approx(0.1)
    assert hook.seen[1][1] == {}


def test_hook_requesting_an_unknown_name_lists_the_available_ones(make_estimator, data):
    class Bad(te.Hook):
        def before_run(self, run_context):
            return ["nope"]

    with pytest.raises(ValueError, match="requested 'nope', which this step \\(train\\) does not have; available: "
                                         "\\['classes', 'global_step', 'learning_rate', 'loss', 'probabilities', 'summaries'\\]. "
                                         "Name it in the EstimatorSpec"):
        make_estimator().train(_train_fn(data), steps=1, hooks=[Bad()])


def test_spec_fetches_and_training_hooks(tmp_path, data):
    class Grab(te.Hook):
        values = []

        def before_run(self, run_context):
            return ["norm"]

        def after_run(self, run_context, run_values):
            self.values.append(float(run_values["norm"]))

    grab = Grab()

    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        return spec.replace(fetches={"norm": model.out.weight.norm()}, training_hooks=[grab])

    te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                 config=te.RunConfig(device="cpu")).train(_train_fn(data), steps=3)
    assert len(grab.values) == 3  # spec hooks join on the first step, in time for its after_run


def test_stop_requested_by_a_hook(make_estimator, data):
    class StopAtTwo(te.Hook):
        def after_run(self, run_context, run_values):
            if run_context.global_step == 2:
                run_context.request_stop()

    est = make_estimator(save_checkpoints_steps=100)
    est.train(_train_fn(data), steps=10, hooks=[StopAtTwo()])
    assert ckpt.step_of(est.latest_checkpoint()) == 2


@pytest.mark.parametrize(("hook", "steps", "expected"), [
    (te.StopAtStepHook(num_steps=3), None, 3),  # the input repeats forever: the hook alone stops it
    (te.StopAtStepHook(last_step=4), 10, 4),  # the earlier of the two
    (te.StopAtStepHook(num_steps=10), 2, 2),
])
def test_a_users_stop_at_step_hook_stops_training(make_estimator, data, hook, steps, expected):
    est = make_estimator(save_checkpoints_steps=100)
    est.train(_train_fn(data), steps=steps, hooks=[hook])
    assert est.get_variable_value("global_step") == expected


def test_keep_checkpoint_every_n_hours_none_trains_and_rotates(make_estimator, data, tmp_path):
    est = make_estimator(save_checkpoints_steps=2, keep_checkpoint_max=2, keep_checkpoint_every_n_hours=None)
    est.train(_train_fn(data), steps=8)
    assert _steps_on_disk(tmp_path / "model") == [6, 8]


# ----------------------------------------------------------------------------------------------------------
# evaluate.


def test_evaluate_returns_metrics_loss_and_global_step(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=20)
    result = est.evaluate(_eval_fn(data, batch_size=30))
    assert set(result) == {"accuracy", "loss", "global_step"}
    assert result["global_step"] == 20 and type(result["global_step"]) is int
    assert type(result["loss"]) is float and type(result["accuracy"]) is float
    x, y = data
    model = est.model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        batch_losses = [F.cross_entropy(logits[i : i + 30], torch.from_numpy(y[i : i + 30])).item() for i in range(0, 100, 30)]
        accuracy = (logits.argmax(1).numpy() == y).mean()
    assert result["loss"] == pytest.approx(np.mean(batch_losses), rel=1e-5)  # mean of per-batch losses
    assert result["accuracy"] == pytest.approx(accuracy)


def test_evaluate_results_print_as_plain_numbers(make_estimator, data, caplog):
    # numpy 2 prints its scalars as np.float64(0.78); the results are Python numbers, the float32 loss by
    # its shortest repr (as TF printed it), so a printed dict reads as numbers.
    est = make_estimator()
    est.train(_train_fn(data), steps=5)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        result = est.evaluate(_eval_fn(data, batch_size=30))
    assert "np." not in repr(result) and "np." not in caplog.text
    loss32 = np.float32(result["loss"])
    assert repr(result["loss"]) == str(loss32)  # shortest digits that give the float32 back
    assert re.fullmatch(r"\{'accuracy': [0-9.]+, 'global_step': 5, 'loss': [0-9.]+\}", repr(dict(sorted(result.items()))))


def test_array_metrics_stay_arrays(tmp_path, data):
    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        logits = model(features["x"]).detach()
        per_class = te.metrics.MetricUpdate({"total": logits.sum(0), "count": torch.tensor(float(len(logits)))},
                                            lambda stats: stats["total"] / stats["count"])
        return spec.replace(eval_metric_ops={**spec.eval_metric_ops, "mean_logits": per_class})

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), config=te.RunConfig(device="cpu"))
    result = est.evaluate(_eval_fn(data))
    assert isinstance(result["mean_logits"], np.ndarray) and result["mean_logits"].shape == (2,)


def test_evaluate_without_checkpoint_uses_initial_weights(make_estimator, data, caplog):
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        result = make_estimator().evaluate(_eval_fn(data))
    assert result["global_step"] == 0
    assert "Could not find trained model in model_dir" in caplog.text


def test_evaluate_steps_limits_batches(make_estimator, data):
    calls = []

    def model_fn(features, labels, mode, model):
        calls.append(mode)
        return classifier_fn(features, labels, mode, model)

    make_estimator(model_fn=model_fn).evaluate(_eval_fn(data), steps=3)
    assert calls == ["eval"] * 3


@pytest.mark.parametrize("reserved", ["loss", "global_step"])
def test_evaluate_rejects_reserved_metric_names(make_estimator, data, reserved):
    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        return spec.replace(eval_metric_ops={reserved: te.metrics.mean(spec.loss.reshape(1))})

    with pytest.raises(ValueError, match=f"may not be named '{reserved}'"):
        make_estimator(model_fn=model_fn).evaluate(_eval_fn(data))


@pytest.mark.parametrize(("kwargs", "message"), [({"steps": 0}, "`steps` must be"), ({"name": 3}, "`name` must be a string")])
def test_evaluate_rejects_bad_arguments(make_estimator, data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_estimator().evaluate(_eval_fn(data), **kwargs)


def test_evaluate_on_empty_input_is_an_error(make_estimator):
    with pytest.raises(ValueError, match="yielded no batches"):
        make_estimator().evaluate(lambda: [])


def test_evaluate_a_given_checkpoint(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=20)
    result = est.evaluate(_eval_fn(data), checkpoint_path=ckpt.checkpoint_path_for_step(est.model_dir, 10))
    assert result["global_step"] == 10
    assert est.evaluate(_eval_fn(data))["global_step"] == 20


def test_evaluate_does_not_disturb_the_training_trajectory(make_estimator, data, tmp_path):
    straight = make_estimator(tmp_path / "a", save_checkpoints_steps=None, save_checkpoints_secs=None)
    straight.train(_train_fn(data), steps=20)
    split = make_estimator(tmp_path / "b", save_checkpoints_steps=None, save_checkpoints_secs=None)
    split.train(_train_fn(data), steps=10)
    split.evaluate(_eval_fn(data))
    split.train(_train_fn(data), steps=10)
    for a, b in zip(straight.model.parameters(), split.model.parameters()):
        assert torch.equal(a, b)


def test_eval_dir(make_estimator):
    est = make_estimator()
    assert est.eval_dir() == os.path.join(est.model_dir, "eval")
    assert est.eval_dir("train") == os.path.join(est.model_dir, "eval_train")


# ----------------------------------------------------------------------------------------------------------
# predict.


def _predict_fn(data, n=10):
    return numpy_input_fn({"x": data[0][:n]}, batch_size=4, shuffle=False)


def test_predict_yields_single_examples(make_estimator, data):
    predictions = list(make_estimator().predict(_predict_fn(data)))
    assert len(predictions) == 10
    assert set(predictions[0]) == {"classes", "probabilities"} and predictions[0]["probabilities"].shape == (2,)


def test_predict_yields_whole_batches(make_estimator, data):
    batches = list(make_estimator().predict(_predict_fn(data), yield_single_examples=False))
    assert [b["classes"].shape for b in batches] == [(4,), (4,), (2,)]


def test_predict_keys_filter(make_estimator, data):
    predictions = list(make_estimator().predict(_predict_fn(data), predict_keys=["classes"]))
    assert set(predictions[0]) == {"classes"}


def test_predict_is_lazy(make_estimator, data):
    calls = []

    def model_fn(features, labels, mode, model):
        calls.append(mode)
        return classifier_fn(features, labels, mode, model)

    generator = make_estimator(model_fn=model_fn).predict(_predict_fn(data))
    assert calls == []
    next(generator)
    assert calls == ["infer"]


def test_predict_tensor_predictions(tmp_path, data):
    def model_fn(features, model):
        return te.EstimatorSpec(te.ModeKeys.PREDICT, predictions=model(features["x"]))

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet())
    rows = list(est.predict(_predict_fn(data)))
    assert len(rows) == 10 and rows[0].shape == (2,)
    with pytest.raises(ValueError, match="`predict_keys` only applies to dict predictions"):
        list(est.predict(_predict_fn(data), predict_keys=["a"]))


def test_predict_unknown_key_is_an_error(make_estimator, data):
    with pytest.raises(ValueError, match=r"`predict_keys` \['nope'\] are not among the predictions"):
        list(make_estimator().predict(_predict_fn(data), predict_keys="nope"))


def test_predict_batch_length_mismatch(tmp_path, data):
    def model_fn(features, model):
        out = model(features["x"])
        return te.EstimatorSpec(te.ModeKeys.PREDICT, predictions={"a": out, "b": out[:1]})

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet())
    with pytest.raises(ValueError, match="must share their batch length"):
        list(est.predict(_predict_fn(data)))


# ----------------------------------------------------------------------------------------------------------
# Checkpoint accessors, memory vs disk.


def test_accessors_without_checkpoint(make_estimator):
    est = make_estimator()
    assert est.latest_checkpoint() is None
    with pytest.raises(ValueError, match="Could not find a trained model"):
        est.get_variable_names()
    with pytest.raises(ValueError, match="Could not find a trained model"):
        est.get_variable_value("out.weight")


def test_variable_names_and_values(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=3)
    names = est.get_variable_names()
    assert {"global_step", "model/out.weight", "model/hidden.bias"} <= set(names)
    assert np.array_equal(est.get_variable_value("out.weight"), est.model.out.weight.detach().numpy())
    assert est.get_variable_value("global_step") == 3
    with pytest.raises(ValueError, match="'nope' is not in checkpoint"):
        est.get_variable_value("nope")


def test_model_is_not_reloaded_when_memory_matches_disk(make_estimator, data, monkeypatch):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=10)
    restores = []
    real = ckpt.restore_checkpoint
    monkeypatch.setattr(ckpt, "restore_checkpoint", lambda *a, **k: restores.append(a) or real(*a, **k))
    est.evaluate(_eval_fn(data))
    list(est.predict(_predict_fn(data)))
    est.train(_train_fn(data), steps=5)
    assert restores == []


def test_model_is_reloaded_when_disk_changes(make_estimator, data, tmp_path):
    reader = make_estimator(tmp_path / "shared", save_checkpoints_steps=10)
    writer = make_estimator(tmp_path / "shared", save_checkpoints_steps=10, seed=1)
    writer.train(_train_fn(data), steps=10)
    assert reader.evaluate(_eval_fn(data))["global_step"] == 10
    writer.train(_train_fn(data), steps=5)
    assert reader.evaluate(_eval_fn(data))["global_step"] == 15
    for a, b in zip(reader.model.parameters(), writer.model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# Exactness.


def test_bit_identical_to_a_hand_written_loop(tmp_path):
    rng = np.random.default_rng(1)
    batches = [(torch.from_numpy(rng.normal(size=(16, 4)).astype("float32")), torch.from_numpy(rng.integers(0, 2, 16))) for _ in range(30)]

    def build():
        torch.manual_seed(7)
        return TinyNet()

    def model_fn(features, labels, mode, model):
        return te.EstimatorSpec(mode, loss=F.cross_entropy(model(features), labels))

    hand = build()
    opt = torch.optim.Adam(hand.parameters(), lr=0.01)
    torch.manual_seed(11)
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(hand(x), y)
        loss.backward()
        opt.step()

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=build(), optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=10))
    torch.manual_seed(11)
    est.train(lambda: batches)
    for a, b in zip(hand.parameters(), est.model.parameters()):
        assert torch.equal(a, b)


def _resumable(make_estimator, model_dir):
    return te.Estimator(
        classifier_fn,
        model_dir=str(model_dir),
        model=lambda params: TinyNet(),  # built after RunConfig.random_seed seeded the RNGs
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
        config=te.RunConfig(device="cpu", save_checkpoints_steps=10, log_step_count_steps=None, random_seed=5),
    )


def test_resume_follows_the_uninterrupted_trajectory(make_estimator, data, tmp_path):
    """A new Estimator resuming from step 13 (input position, RNG, Adam and scheduler state) ends where an
    uninterrupted run ends, bit for bit."""
    straight = _resumable(make_estimator, tmp_path / "a")
    straight.train(_train_fn(data, batch_size=7), steps=30)
    first = _resumable(make_estimator, tmp_path / "b")
    first.train(_train_fn(data, batch_size=7), steps=13)
    del first
    torch.manual_seed(999)  # a fresh process would have other RNG states
    np.random.seed(999)
    resumed = _resumable(make_estimator, tmp_path / "b")
    resumed.train(_train_fn(data, batch_size=7), steps=17)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert straight.evaluate(_eval_fn(data))["loss"] == resumed.evaluate(_eval_fn(data))["loss"]


def test_a_different_input_starts_fresh(make_estimator, data, caplog):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data, seed=1), steps=10)
    est2 = make_estimator(est.model_dir, save_checkpoints_steps=10)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        est2.train(_train_fn(data, seed=2), steps=1)
    assert "The training input differs from the checkpoint's" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# Warm start and precision.


def test_warm_start_from_a_directory_with_a_regex(make_estimator, data, tmp_path):
    source = make_estimator(tmp_path / "source", save_checkpoints_steps=10)
    source.train(_train_fn(data), steps=10)
    torch.manual_seed(3)
    est = te.Estimator(classifier_fn, model_dir=str(tmp_path / "new"), model=TinyNet(),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), config=te.RunConfig(device="cpu"),
                       warm_start_from=te.WarmStartSettings(str(tmp_path / "source"), vars_to_warm_start="hidden\\..*"))
    fresh_out = est.model.out.weight.detach().clone()
    est.train(_train_fn(data), steps=1)
    assert torch.equal(est.model.hidden.weight.detach(), est.model.hidden.weight) and est.get_variable_value("global_step") == 1
    warmed = te.Estimator(classifier_fn, model_dir=str(tmp_path / "new2"), model=TinyNet(),
                          warm_start_from=str(tmp_path / "source"), config=te.RunConfig(device="cpu"))
    warmed.evaluate(_eval_fn(data))
    assert torch.equal(warmed.model.hidden.weight, source.model.hidden.weight)
    assert torch.equal(warmed.model.out.weight, source.model.out.weight)
    assert not torch.equal(fresh_out, source.model.out.weight)


def test_warm_start_is_skipped_when_model_dir_has_a_checkpoint(make_estimator, data, tmp_path):
    source = make_estimator(tmp_path / "source", save_checkpoints_steps=10)
    source.train(_train_fn(data), steps=10)
    own = make_estimator(tmp_path / "own", save_checkpoints_steps=10, seed=4)
    own.train(_train_fn(data), steps=10)
    again = te.Estimator(classifier_fn, model_dir=str(tmp_path / "own"), model=TinyNet(),
                         warm_start_from=str(tmp_path / "source"), config=te.RunConfig(device="cpu"))
    again.evaluate(_eval_fn(data))
    assert torch.equal(again.model.out.weight, own.model.out.weight)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_the_scaler(make_estimator, data, precision):
    est = make_estimator(precision=precision, save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=4)
    assert np.isfinite(est.evaluate(_eval_fn(data))["loss"])
    state = ckpt.read_checkpoint(est.latest_checkpoint()).state
    assert ("grad_scaler" in state) == (precision == "fp16")


def test_scalar_predictions_cannot_be_split_into_examples(tmp_path, data):
    def model_fn(features, model):
        return te.EstimatorSpec(te.ModeKeys.PREDICT, predictions=model(features["x"]).sum())

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet())
    with pytest.raises(ValueError, match="must have a batch dimension to yield single examples"):
        list(est.predict(_predict_fn(data)))



def test_model_fn_is_called_the_same_whatever_its_parameter_order(tmp_path, data):
    # The training loop calls model_fn(features, labels, ...) positionally when its parameters allow it, by
    # keyword otherwise: every order trains the same weights.
    seen = []

    def body(features, labels, mode, model):
        seen.append(mode)
        return classifier_fn(features, labels, mode, model)

    model_fns = {
        "positional": lambda features, labels, mode, model: body(features, labels, mode, model),
        "reordered": lambda model, mode, labels, features: body(features, labels, mode, model),
        "keyword_only": lambda features, *, labels, model, mode: body(features, labels, mode, model),
    }
    weights = {}
    for name, model_fn in model_fns.items():
        seen.clear()
        torch.manual_seed(0)
        est = te.Estimator(model_fn, model_dir=str(tmp_path / name), model=TinyNet(),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                           config=te.RunConfig(device="cpu", log_step_count_steps=None))
        torch.manual_seed(1)
        est.train(numpy_input_fn({"x": data[0]}, data[1], batch_size=10, num_epochs=None, shuffle=True, seed=1), steps=5)
        assert seen == ["train"] * 5
        weights[name] = est.model.state_dict()
    for name in ("reordered", "keyword_only"):
        assert all(torch.equal(weights["positional"][k], v) for k, v in weights[name].items())


def test_fetched_values_are_copies_a_later_step_does_not_change(tmp_path, data):
    class Grab(te.Hook):
        def __init__(self):
            self.values = []

        def before_run(self, run_context):
            return ["weight"]

        def after_run(self, run_context, run_values):
            self.values.append(run_values["weight"])

    grab = Grab()

    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        return spec.replace(fetches={"weight": model.out.weight}, training_hooks=[grab])

    te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                 config=te.RunConfig(device="cpu")).train(_train_fn(data), steps=3)
    first, _, last = grab.values
    assert not np.array_equal(first, last)  # the optimizer updates the weight in place after each fetch
