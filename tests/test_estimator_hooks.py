"""Hooks driven by the Estimator: call order per mode, TF's cadences, summaries read back, NaN, profiler."""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_estimator as te
from torch_estimator import checkpoint as ckpt
from torch_estimator import summary
from torch_estimator.inputs import numpy_input_fn

from .conftest import TinyNet, classifier_fn


def _train_fn(data, **kwargs):
    kwargs.setdefault("batch_size", 10)
    kwargs.setdefault("num_epochs", None)
    return numpy_input_fn({"x": data[0]}, data[1], shuffle=True, seed=1, **kwargs)


def _eval_fn(data):
    return numpy_input_fn({"x": data[0]}, data[1], batch_size=25, shuffle=False)


class Calls(te.Hook):
    def __init__(self):
        self.calls = []

    def begin(self):
        self.calls.append("begin")

    def after_restore(self, run_context):
        self.calls.append(("after_restore", run_context.global_step))

    def before_run(self, run_context):
        self.calls.append(("before_run", run_context.global_step))

    def after_run(self, run_context, run_values):
        self.calls.append(("after_run", run_context.global_step))

    def end(self, run_context):
        self.calls.append(("end", run_context.global_step))


def test_call_order_in_train(make_estimator, data):
    hook = Calls()
    make_estimator().train(_train_fn(data), steps=2, hooks=[hook])
    assert hook.calls == ["begin", ("after_restore", 0), ("before_run", 0), ("after_run", 1),
                          ("before_run", 1), ("after_run", 2), ("end", 2)]


def test_call_order_in_evaluate_and_predict(make_estimator, data):
    est = make_estimator()
    hook = Calls()
    est.evaluate(_eval_fn(data), hooks=[hook])
    assert hook.calls[:2] == ["begin", ("after_restore", 0)]
    assert hook.calls.count(("before_run", 0)) == 4 and hook.calls.count(("after_run", 0)) == 4
    assert hook.calls[-1] == ("end", 0)
    hook = Calls()
    list(est.predict(numpy_input_fn({"x": data[0][:10]}, batch_size=4, shuffle=False), hooks=[hook]))
    assert hook.calls.count(("after_run", 0)) == 3 and hook.calls[-1] == ("end", 0)


def test_spec_hooks_run_in_each_mode(tmp_path, data):
    hooks = {mode: Calls() for mode in te.ModeKeys.ALL}

    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        field = {"train": "training_hooks", "eval": "evaluation_hooks", "infer": "prediction_hooks"}[mode]
        return spec.replace(**{field: [hooks[mode]]})

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None))
    est.train(_train_fn(data), steps=3)
    est.evaluate(_eval_fn(data))
    list(est.predict(numpy_input_fn({"x": data[0][:8]}, batch_size=4, shuffle=False)))
    assert hooks["train"].calls.count("begin") == 1 and sum(1 for c in hooks["train"].calls if c[0] == "after_run") == 3
    assert sum(1 for c in hooks["eval"].calls if c[0] == "after_run") == 4
    assert sum(1 for c in hooks["infer"].calls if c[0] == "after_run") == 2


def test_logging_hook_on_predictions_like_the_tutorial(make_estimator, data, caplog):
    hook = te.LoggingTensorHook(tensors={"probabilities": "probabilities"}, every_n_iter=2)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        make_estimator().train(_train_fn(data), steps=4, hooks=[hook])
    assert caplog.text.count("probabilities = [[") == 2


def test_final_ops_hook_sees_evaluation_metrics(make_estimator, data):
    hook = te.FinalOpsHook(["accuracy"])
    result = make_estimator().evaluate(_eval_fn(data), hooks=[hook])
    assert hook.final_ops_values == {"accuracy": result["accuracy"]}
    with pytest.raises(ValueError, match="'nope'.* are not among the final values"):
        make_estimator().evaluate(_eval_fn(data), hooks=[te.FinalOpsHook(["nope"])])


def test_final_ops_hook_after_training(make_estimator, data):
    hook = te.FinalOpsHook()
    make_estimator().train(_train_fn(data), steps=3, hooks=[hook])
    assert hook.final_ops_values["global_step"] == 3 and np.isfinite(hook.final_ops_values["loss"])


# ----------------------------------------------------------------------------------------------------------
# Summaries.


def test_training_summaries_at_tf_steps(make_estimator, data):
    est = make_estimator(save_summary_steps=5, log_step_count_steps=10, save_checkpoints_steps=100)
    est.train(_train_fn(data), steps=21)
    scalars = summary.read_scalars(est.model_dir)
    loss_steps = [step for step, tags in scalars.items() if "loss" in tags]
    assert loss_steps == [1, 6, 11, 16, 21]
    assert all("learning_rate" in scalars[s] for s in loss_steps) and scalars[1]["learning_rate"] == pytest.approx(0.1)
    # TF's [run]: the first trigger (step 1) only starts the clock; values at 11 and 21.
    assert [step for step, tags in scalars.items() if "global_step/sec" in tags] == [11, 21]
    assert "examples/sec" in scalars[11]


def test_log_lines_and_scalars_name_the_same_steps(make_estimator, data, caplog):
    # TF's TensorBoard convention: a step's values are tagged with the global step its update produced
    # (1, 1+N, ...); the default log line names that same step.
    est = make_estimator(save_summary_steps=5, log_step_count_steps=5, save_checkpoints_steps=100)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        est.train(_train_fn(data), steps=12)
    logged = {int(m.group(2)): float(m.group(1)) for m in re.finditer(r"loss = ([0-9.e+-]+), step = (\d+)", caplog.text)}
    scalars = summary.read_scalars(est.model_dir)
    assert sorted(logged) == [1, 6, 11] == [step for step, tags in scalars.items() if "loss" in tags]
    assert all(scalars[step]["loss"] == pytest.approx(loss, rel=1e-6) for step, loss in logged.items())


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(logdir), size_guidance={"histograms": 0, "scalars": 0}).Reload()


def test_model_graph_is_written_once_and_leaves_training_unchanged(make_estimator, data, tmp_path):
    # TinyNet takes the tensor x: the graph is traced on the features' one tensor. The trace runs in eval
    # mode on a forked RNG: training with the graph (summaries on) gives the weights training without does.
    with_graph = make_estimator(model_dir=tmp_path / "graph", save_summary_steps=3)
    with_graph.train(_train_fn(data), steps=4)
    with_graph.train(_train_fn(data), steps=2)  # a second train() adds no second graph
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted((tmp_path / "graph").glob("events.out.tfevents.*"))
    assert sum(event.HasField("graph_def") for path in files for event in EventFileLoader(str(path)).Load()) == 1
    events = _events(tmp_path / "graph")
    graph = events.Graph()
    assert any("Linear" in node.op or "linear" in node.op for node in graph.node)
    without = make_estimator(model_dir=tmp_path / "plain", save_summary_steps=None)
    without.train(_train_fn(data), steps=4)
    without.train(_train_fn(data), steps=2)
    assert _events(tmp_path / "plain").Tags()["graph"] is False
    for name, value in with_graph.model.state_dict().items():
        assert torch.equal(value, without.model.state_dict()[name]), name


def test_a_model_that_does_not_trace_gets_no_graph_and_trains(tmp_path, data, caplog):
    class NeedsAScale(TinyNet):
        def forward(self, x, scale):  # neither the features nor their tensor alone can call it
            return super().forward(x) * scale

    def model_fn(features, labels, mode, model):
        return classifier_fn(features, labels, mode, lambda x: model(x, 2.0))

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=NeedsAScale(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_summary_steps=1, log_step_count_steps=None))
    with caplog.at_level(logging.DEBUG, logger="torch_estimator"):
        est.train(_train_fn(data), steps=2)
    assert "No model graph for TensorBoard: the model does not trace" in caplog.text
    assert _events(tmp_path).Tags()["graph"] is False and sorted(summary.read_scalars(str(tmp_path))) == [1, 2]


def test_model_fn_summaries_are_written_only_on_summary_steps(tmp_path, data):
    evaluated = []

    def model_fn(features, labels, mode, model):
        spec = classifier_fn(features, labels, mode, model)
        return spec.replace(summaries={
            "weights": model.out.weight,
            "lazy_norm": lambda: evaluated.append(1) or model.out.weight.norm(),
            "image": summary.Image(torch.zeros(1, 4, 4)),
        })

    est = te.Estimator(model_fn, model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_summary_steps=4, log_step_count_steps=None))
    est.train(_train_fn(data), steps=9)
    assert len(evaluated) == 3  # steps 1, 5, 9
    assert sorted(summary.read_scalars(str(tmp_path))) == [1, 5, 9]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "images": 0}).Reload()
    assert [e.step for e in events.Histograms("weights")] == [1, 5, 9]
    assert [e.step for e in events.Images("image")] == [1, 5, 9]


def test_summaries_can_be_turned_off(make_estimator, data):
    est = make_estimator(save_summary_steps=None, log_step_count_steps=None)
    est.train(_train_fn(data), steps=3)
    assert not [f for f in os.listdir(est.model_dir) if f.startswith("events.out.tfevents")]


def test_evaluation_results_go_to_the_eval_dir(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    est.train(_train_fn(data), steps=10)
    result = est.evaluate(_eval_fn(data))
    est.evaluate(_eval_fn(data), name="validation")
    scalars = summary.read_scalars(est.eval_dir())
    assert scalars == {10: {"accuracy": pytest.approx(float(result["accuracy"])), "loss": pytest.approx(float(result["loss"]))}}
    assert set(summary.read_scalars(est.eval_dir("validation"))[10]) == {"accuracy", "loss"}


def test_bad_summary_value_names_the_tag(tmp_path):
    with pytest.raises(TypeError, match="Summary 'bad': cannot write a dict"):
        summary.write_summaries(str(tmp_path), {"bad": {"a": 1}}, 0)


def test_spec_summaries_must_be_a_dict():
    with pytest.raises(TypeError, match="`summaries` must be a dict of str tag to value"):
        te.EstimatorSpec(te.ModeKeys.EVAL, loss=torch.tensor(1.0), summaries=[1])


# ----------------------------------------------------------------------------------------------------------
# NaN, progress, profiler.


def _nan_after(step):
    def model_fn(features, labels, mode, model):
        loss = F.cross_entropy(model(features["x"]), labels)
        model.calls = getattr(model, "calls", 0) + 1
        return te.EstimatorSpec(mode, loss=loss * float("nan") if model.calls >= step else loss)

    return model_fn


def test_nan_hook_can_stop_instead_of_raising(tmp_path, data, caplog):
    est = te.Estimator(_nan_after(4), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=2, log_step_count_steps=None))
    with caplog.at_level(logging.ERROR, logger="torch_estimator"):
        est.train(_train_fn(data), steps=20, hooks=[te.NanTensorHook(fail_on_nan_loss=False)])
    assert "Model diverged with loss = NaN at global step 4" in caplog.text
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [0, 2]


def test_nan_is_caught_on_a_logging_step_before_any_save(tmp_path, data):
    est = te.Estimator(_nan_after(3), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=1000, log_step_count_steps=5))
    with pytest.raises(te.NanLossDuringTrainingError, match="global step 3"):
        est.train(_train_fn(data), steps=20)
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [0]


def test_memory_with_nan_weights_is_restored_from_disk(tmp_path, data):
    est = te.Estimator(_nan_after(4), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=2, log_step_count_steps=None))
    with pytest.raises(te.NanLossDuringTrainingError):
        est.train(_train_fn(data), steps=20)
    assert est.evaluate(_eval_fn(data))["global_step"] == 2
    assert all(torch.isfinite(p).all() for p in est.model.parameters())


def test_progress_bar_counts_steps(make_estimator, data, capsys):
    est = make_estimator(progress_bar=True, log_step_count_steps=5)
    est.train(_train_fn(data), steps=12)
    err = capsys.readouterr().err
    assert "train" in err and "12/12" in err


def test_progress_bar_off_when_not_interactive(make_estimator, data, capsys):
    make_estimator().train(_train_fn(data), steps=3)
    assert "train" not in capsys.readouterr().err


def test_profiler_hook_writes_chrome_traces(make_estimator, data, tmp_path):
    hook = te.ProfilerHook(save_steps=3, output_dir=str(tmp_path / "profile"))
    make_estimator().train(_train_fn(data), steps=7, hooks=[hook])
    steps = [int(p.rsplit(".step", 1)[1].split(".")[0]) for p in hook.traces]
    assert steps == [3, 6]  # never the first step
    with open(hook.traces[0], encoding="utf-8") as handle:
        trace = json.load(handle)
    assert trace["traceEvents"]


def test_profiler_hook_every_step_skips_the_first_as_tf(make_estimator, data, tmp_path):
    # TF's test_run_metadata_saves: with save_steps=1 the first step is not saved, the second is.
    hook = te.ProfilerHook(save_steps=1, output_dir=str(tmp_path / "profile"))
    est = make_estimator()
    est.train(_train_fn(data), steps=1, hooks=[hook])
    assert hook.traces == [] and not os.path.exists(tmp_path / "profile")
    est.train(_train_fn(data), steps=3, hooks=[hook])  # a new run: its first step (2) is skipped too
    assert [p.rsplit(".step", 1)[1] for p in hook.traces] == ["3.pt.trace.json", "4.pt.trace.json"]
    assert sorted(os.listdir(tmp_path / "profile")) == sorted(os.path.basename(p) for p in hook.traces)


def test_nan_stop_mode_still_hands_hooks_their_values(tmp_path, data, caplog):
    est = te.Estimator(_nan_after(3), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=100, log_step_count_steps=1))
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        est.train(_train_fn(data), steps=10, hooks=[te.NanTensorHook(fail_on_nan_loss=False)])
    assert "loss = nan, step = 3" in caplog.text  # the logging hook still got the (NaN) loss of the third step
    assert caplog.text.count("Model diverged") == 1
    assert [ckpt.step_of(p) for p in ckpt.read_index(str(tmp_path)).paths] == [0]


class SeesLoss(te.Hook):
    """A user hook that fetches the loss on every step (or only sees the steps, with fetch=False)."""

    def __init__(self, fetch=True):
        self.fetch, self.seen = fetch, []

    def before_run(self, run_context):
        return ["loss"] if self.fetch else None

    def after_run(self, run_context, run_values):
        self.seen.append((run_context.global_step, float(run_values["loss"]) if self.fetch else None))


@pytest.mark.parametrize("fetch", [True, False])
def test_user_hooks_see_the_nan_step_before_the_nan_check_raises(tmp_path, data, caplog, fetch):
    # TF's testCustomHooksAreCalledBeforeNanTensorHook: user hooks come before the NaN check, the default
    # logging hook after it (it fetches the loss every step here, so the check runs on every step).
    hook = SeesLoss(fetch)
    est = te.Estimator(_nan_after(3), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=1000, log_step_count_steps=1))
    with caplog.at_level(logging.INFO, logger="torch_estimator"), \
            pytest.raises(te.NanLossDuringTrainingError, match="global step 3"):
        est.train(_train_fn(data), steps=10, hooks=[hook])
    assert [step for step, _ in hook.seen] == [1, 2, 3]
    if fetch:
        assert np.isfinite(hook.seen[1][1]) and np.isnan(hook.seen[2][1])
    assert "loss = nan" not in caplog.text  # the logging hook comes after the check, as TF's did


def test_a_user_nan_hook_placed_first_checks_before_the_other_user_hooks(tmp_path, data):
    hook = SeesLoss()
    est = te.Estimator(_nan_after(2), model_dir=str(tmp_path), model=TinyNet(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", save_checkpoints_steps=1000, log_step_count_steps=None))
    with pytest.raises(te.NanLossDuringTrainingError, match="global step 2"):
        est.train(_train_fn(data), steps=10, hooks=[te.NanTensorHook(), hook])
    assert [step for step, _ in hook.seen] == [1]


class EveryStep(te.Hook):
    """An unscheduled hook: the loop must call the hooks on every step."""

    def after_run(self, run_context, run_values):
        pass


def _cadence(est, data, caplog, hooks):
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        caplog.clear()
        est.train(_train_fn(data), steps=23, hooks=hooks)
        lines = [r.getMessage() for r in caplog.records]
    events = [line.split(" into ")[0] if line.startswith("Saving checkpoints") else
              line.split(", ")[-1].split(" (")[0] if line.startswith("loss =") else line.split(":")[0]
              for line in lines if line.startswith(("loss =", "global_step/sec", "Saving checkpoints"))]
    scalars = summary.read_scalars(est.model_dir)
    return events, {step: sorted(tags) for step, tags in scalars.items()}


def test_the_hook_schedule_keeps_every_cadence(make_estimator, data, caplog, tmp_path):
    # Steps no hook observes skip the hooks entirely; the logs, summaries and saves happen at the same
    # steps as when a hook forces every step through all of them.
    config = dict(save_summary_steps=4, log_step_count_steps=5, save_checkpoints_steps=7)
    scheduled = _cadence(make_estimator(model_dir=tmp_path / "a", **config), data, caplog, [])
    every_step = _cadence(make_estimator(model_dir=tmp_path / "b", **config), data, caplog, [EveryStep()])
    assert scheduled == every_step
    lines, scalars = scheduled
    assert lines == ["Saving checkpoints for 0", "step = 1", "step = 6", "global_step/sec", "Saving checkpoints for 7",
                     "step = 11", "global_step/sec", "Saving checkpoints for 14", "step = 16", "global_step/sec",
                     "step = 21", "global_step/sec", "Saving checkpoints for 21", "Saving checkpoints for 23"]
    assert [step for step, tags in scalars.items() if "loss" in tags] == [1, 5, 9, 13, 17, 21]
    assert [step for step, tags in scalars.items() if "global_step/sec" in tags] == [6, 11, 16, 21]


def test_scheduled_step_counter_counts_every_example(make_estimator, data):
    est = make_estimator(save_summary_steps=None, log_step_count_steps=4, save_checkpoints_steps=100)
    est.train(_train_fn(data, batch_size=7), steps=13)
    scalars = summary.read_scalars(est.model_dir)
    for step in (5, 9, 13):  # examples/sec over global_step/sec: the examples of each step, 7
        assert scalars[step]["examples/sec"] / scalars[step]["global_step/sec"] == pytest.approx(7.0)
