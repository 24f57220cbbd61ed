"""train_and_evaluate, run_evaluator, TrainSpec and EvalSpec: TF's observed sequences and the improvements."""

from __future__ import annotations

import logging
import os
import threading

import pytest
import torch

import torch_estimator as te
from torch_estimator import checkpoint as ckpt
from torch_estimator import summary
from torch_estimator.inputs import numpy_input_fn


def _train_fn(data, num_epochs=None):
    return numpy_input_fn({"x": data[0]}, data[1], batch_size=10, num_epochs=num_epochs, shuffle=True, seed=1)


def _eval_fn(data, flip=False):
    labels = 1 - data[1] if flip else data[1]
    return numpy_input_fn({"x": data[0]}, labels, batch_size=50, shuffle=False)


def _eval_spec(data, **kwargs):
    kwargs.setdefault("steps", None)
    return te.EvalSpec(_eval_fn(data), **kwargs)


def _evaluated(est, name=None):
    return sorted(summary.read_scalars(est.eval_dir(name)))


class RecordingExporter(te.Exporter):
    """Records every call; exports nothing."""

    def __init__(self, name="recorder"):
        self._name, self.calls = name, []

    @property
    def name(self):
        return self._name

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        self.calls.append((int(eval_result["global_step"]), is_the_final_export, export_path, os.path.basename(checkpoint_path)))
        return None


@pytest.fixture
def fake_export(monkeypatch):
    """Replace Estimator.export_saved_model with one that makes numbered directories (the real export is
    tested in test_exporters.py when it exists); returns the list of (directory, global step) exported."""
    made = []

    def export_saved_model(self, export_dir_base, serving_input_receiver_fn, assets_extra=None, checkpoint_path=None):
        path = os.path.join(export_dir_base, str(1_700_000_000 + len(made)))
        os.makedirs(path)
        made.append((path, ckpt.read_checkpoint(checkpoint_path).global_step))
        return path

    monkeypatch.setattr(te.Estimator, "export_saved_model", export_saved_model)
    return made


# ---------------------------------------------------------------------------
# TF's local-mode sequences
# ---------------------------------------------------------------------------


def test_default_throttle_evaluates_the_first_and_the_final_checkpoint(make_estimator, data, caplog):
    est = make_estimator(save_checkpoints_steps=10)
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        metrics, exports = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=45), _eval_spec(data))
    assert _evaluated(est) == [10, 45]
    assert int(metrics["global_step"]) == 45 and exports == []
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skip the current")]
    assert skipped == ["Skip the current checkpoint eval due to throttle secs (600 secs)."] * 4  # 20, 30, 40, 45


def test_zero_throttle_evaluates_every_checkpoint(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=45), _eval_spec(data, throttle_secs=0))
    assert _evaluated(est) == [10, 20, 30, 40, 45]


def test_the_throttle_counts_seconds_since_the_previous_evaluation(make_estimator, data, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("torch_estimator.hooks.time.monotonic", lambda: clock[0])

    class Tick(te.Hook):
        def after_run(self, run_context, run_values):
            clock[0] += 1.0  # one second per step

    est = make_estimator(save_checkpoints_steps=10)
    train_spec = te.TrainSpec(_train_fn(data), max_steps=60, hooks=[Tick()])
    te.train_and_evaluate(est, train_spec, _eval_spec(data, throttle_secs=25))
    assert _evaluated(est) == [10, 40, 60]


def test_a_finite_input_ends_with_a_final_evaluation_and_no_final_export(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=4)
    recorder = RecordingExporter()
    final = te.FinalExporter("final", lambda: None)  # never reaches the export: training has no max_steps
    spec = _eval_spec(data, throttle_secs=0, exporters=[recorder, final])
    metrics, exports = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data, num_epochs=1)), spec)
    assert _evaluated(est) == [4, 8, 10]
    assert int(metrics["global_step"]) == 10 and exports == [None, None]
    assert [final for _, final, _, _ in recorder.calls] == [False, False, False]


def test_exporters_get_their_path_the_checkpoint_and_the_final_flag(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    recorder = RecordingExporter("latest")
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=25), _eval_spec(data, throttle_secs=0, exporters=recorder))
    path = os.path.join(est.model_dir, "export", "latest")
    assert recorder.calls == [
        (10, False, path, "model.ckpt-10.safetensors"),
        (20, False, path, "model.ckpt-20.safetensors"),
        (25, True, path, "model.ckpt-25.safetensors"),
    ]


def test_returns_the_last_evaluation_and_its_exports(make_estimator, data, fake_export):
    est = make_estimator(save_checkpoints_steps=10)
    spec = _eval_spec(data, throttle_secs=0, exporters=[te.LatestExporter("latest", lambda: None), RecordingExporter()])
    metrics, exports = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=20), spec)
    assert sorted(metrics) == ["accuracy", "global_step", "loss"] and int(metrics["global_step"]) == 20
    assert exports == [fake_export[-1][0], None] and fake_export[-1][1] == 20
    assert metrics == est.evaluate(_eval_fn(data))


def test_checkpointing_disabled_is_an_error(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=None, save_checkpoints_secs=None)
    with pytest.raises(ValueError, match="checkpoints must be enabled: set RunConfig.save_checkpoints_steps"):
        te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=5), _eval_spec(data))


def test_the_users_saving_listeners_run_first(make_estimator, data):
    seen = []

    class Listener(te.CheckpointSaverListener):
        def after_save(self, global_step):
            seen.append((global_step, _evaluated(est)))

    est = make_estimator(save_checkpoints_steps=10)
    train_spec = te.TrainSpec(_train_fn(data), max_steps=20, saving_listeners=[Listener()])
    te.train_and_evaluate(est, train_spec, _eval_spec(data, throttle_secs=0))
    assert seen == [(0, []), (10, []), (20, [10])]


# ---------------------------------------------------------------------------
# Improvements: the model in memory, undisturbed training, restarts
# ---------------------------------------------------------------------------


def test_evaluation_uses_the_model_in_memory(make_estimator, data, monkeypatch, fake_export):
    restores = []
    original = ckpt.restore_checkpoint
    monkeypatch.setattr(ckpt, "restore_checkpoint", lambda path, parts: restores.append(path) or original(path, parts))
    est = make_estimator(save_checkpoints_steps=10)
    spec = _eval_spec(data, throttle_secs=0, exporters=te.LatestExporter("latest", lambda: None))
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=30), spec)
    assert _evaluated(est) == [10, 20, 30] and len(fake_export) == 3
    assert restores == []


def test_evaluating_does_not_change_the_training(make_estimator, data, tmp_path):
    plain = make_estimator(model_dir=tmp_path / "plain", save_checkpoints_steps=10)
    plain.train(_train_fn(data), max_steps=30)
    est = make_estimator(model_dir=tmp_path / "evaluated", save_checkpoints_steps=10)
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=30), _eval_spec(data, throttle_secs=0))
    assert _evaluated(est) == [10, 20, 30]
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(est.model.state_dict()[name], value, rtol=0, atol=0)


def test_a_restart_does_not_evaluate_the_resumed_checkpoint_again(make_estimator, data, tmp_path):
    model_dir = tmp_path / "model"
    te.train_and_evaluate(make_estimator(model_dir, save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=20),
                          _eval_spec(data, throttle_secs=0))
    est = make_estimator(model_dir, save_checkpoints_steps=10)
    metrics, _ = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=35), _eval_spec(data, throttle_secs=0))
    assert _evaluated(est) == [10, 20, 30, 35] and int(metrics["global_step"]) == 35


def test_nothing_left_to_train_still_returns_the_final_evaluation(make_estimator, data, tmp_path):
    model_dir = tmp_path / "model"
    recorder = RecordingExporter()
    spec = _eval_spec(data, throttle_secs=0, exporters=recorder)
    te.train_and_evaluate(make_estimator(model_dir, save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=20), spec)
    calls = list(recorder.calls)
    metrics, exports = te.train_and_evaluate(make_estimator(model_dir, save_checkpoints_steps=10),
                                             te.TrainSpec(_train_fn(data), max_steps=20), spec)
    assert int(metrics["global_step"]) == 20 and exports == [None]
    assert recorder.calls == calls  # the exports of step 20 ran when it was first evaluated


# ---------------------------------------------------------------------------
# Improvements: several EvalSpecs, every_n_steps
# ---------------------------------------------------------------------------


def test_several_eval_specs_each_evaluate_into_their_own_directory(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    specs = [
        te.EvalSpec(numpy_input_fn({"x": data[0][:50]}, data[1][:50], batch_size=50, shuffle=False), steps=None,
                    name="train", throttle_secs=0, exporters=RecordingExporter("a")),
        te.EvalSpec(numpy_input_fn({"x": data[0][50:]}, data[1][50:], batch_size=50, shuffle=False), steps=None,
                    name="validation", exporters=RecordingExporter("b")),
    ]
    metrics, exports = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=30), specs)
    assert (_evaluated(est, "train"), _evaluated(est, "validation"), _evaluated(est)) == ([10, 20, 30], [10, 30], [])
    assert sorted(metrics) == ["train", "validation"] and exports == {"train": [None], "validation": [None]}
    assert int(metrics["validation"]["global_step"]) == 30 and metrics["train"]["loss"] != metrics["validation"]["loss"]
    assert [c[0] for c in specs[0].exporters[0].calls] == [10, 20, 30]
    assert [c[2] for c in specs[1].exporters[0].calls] == [os.path.join(est.model_dir, "export", "b")] * 2


def test_several_eval_specs_need_distinct_names(make_estimator, data):
    with pytest.raises(ValueError, match=r"distinct names .* \['valid', 'valid'\]"):
        te.train_and_evaluate(make_estimator(save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=5),
                              [_eval_spec(data, name="valid"), _eval_spec(data, name="valid")])
    with pytest.raises(ValueError, match=r"\[None, None\]"):
        te.train_and_evaluate(make_estimator(save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=5),
                              [_eval_spec(data), _eval_spec(data, name="")])


def test_exporter_names_must_be_unique_across_eval_specs(make_estimator, data):
    specs = [_eval_spec(data, name="a", exporters=RecordingExporter("x")), _eval_spec(data, name="b", exporters=RecordingExporter("x"))]
    with pytest.raises(ValueError, match=r"unique across the EvalSpecs .* \['x'\] appear more than once"):
        te.train_and_evaluate(make_estimator(save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=5), specs)


def test_every_n_steps_evaluates_on_its_multiples(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=5)
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=35), _eval_spec(data, every_n_steps=10))
    assert _evaluated(est) == [10, 20, 30, 35]


def test_every_n_steps_evaluates_the_first_checkpoint_past_each_multiple(make_estimator, data, caplog):
    est = make_estimator(save_checkpoints_steps=4)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=30), _eval_spec(data, every_n_steps=10))
    assert _evaluated(est) == [12, 20, 30]
    assert "set RunConfig.save_checkpoints_steps to a divisor of 10" in caplog.text


def test_every_n_steps_counts_from_the_resumed_step(make_estimator, data, tmp_path):
    model_dir = tmp_path / "model"
    make_estimator(model_dir, save_checkpoints_steps=5).train(_train_fn(data), max_steps=15)
    est = make_estimator(model_dir, save_checkpoints_steps=5)
    te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=40), _eval_spec(data, every_n_steps=10))
    assert _evaluated(est) == [20, 30, 40]


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_train_and_evaluate_checks_its_arguments(make_estimator, data):
    est = make_estimator(save_checkpoints_steps=10)
    train_spec, eval_spec = te.TrainSpec(_train_fn(data), max_steps=5), _eval_spec(data)
    with pytest.raises(TypeError, match="`estimator` must be a torch_estimator.Estimator; received str"):
        te.train_and_evaluate("est", train_spec, eval_spec)
    with pytest.raises(TypeError, match="`train_spec` must be a torch_estimator.TrainSpec; received EvalSpec"):
        te.train_and_evaluate(est, eval_spec, eval_spec)
    with pytest.raises(TypeError, match="`eval_spec` must be an EvalSpec or a non-empty list"):
        te.train_and_evaluate(est, train_spec, [])
    with pytest.raises(TypeError, match="must contain torch_estimator.EvalSpec objects; received TrainSpec"):
        te.train_and_evaluate(est, train_spec, [eval_spec, train_spec])


def test_train_spec_validation():
    with pytest.raises(TypeError, match="TrainSpec `input_fn` must be callable .* received list"):
        te.TrainSpec([1, 2])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"TrainSpec `max_steps` must be an int > 0 or None; received"):
            te.TrainSpec(lambda: None, max_steps=bad)
    with pytest.raises(TypeError, match="TrainSpec `hooks` must contain hooks; received str 'x', which lacks begin"):
        te.TrainSpec(lambda: None, hooks=["x"])
    with pytest.raises(TypeError, match="TrainSpec `hooks` must be a list of hooks"):
        te.TrainSpec(lambda: None, hooks=te.Hook())
    with pytest.raises(TypeError, match="TrainSpec `saving_listeners` must contain CheckpointSaverListener objects; .*lacks before_save"):
        te.TrainSpec(lambda: None, saving_listeners=[te.Hook()])
    spec = te.TrainSpec(lambda: None, max_steps=3, hooks=None, saving_listeners=None)
    assert (spec.hooks, spec.saving_listeners) == ((), ())


def test_eval_spec_validation():
    fn = lambda: None  # noqa: E731
    with pytest.raises(TypeError, match="EvalSpec `input_fn` must be callable"):
        te.EvalSpec(None)
    with pytest.raises(ValueError, match="EvalSpec `steps` must be an int > 0 or None; received 0"):
        te.EvalSpec(fn, steps=0)
    with pytest.raises(TypeError, match="EvalSpec `name` must be a string or None; received int 3"):
        te.EvalSpec(fn, name=3)
    with pytest.raises(ValueError, match="EvalSpec `throttle_secs` must be >= 0; received -1"):
        te.EvalSpec(fn, throttle_secs=-1)
    with pytest.raises(ValueError, match="EvalSpec `start_delay_secs` must be >= 0; received -0.5"):
        te.EvalSpec(fn, start_delay_secs=-0.5)
    with pytest.raises(TypeError, match="EvalSpec `throttle_secs` must be a number of seconds"):
        te.EvalSpec(fn, throttle_secs="10")
    with pytest.raises(ValueError, match="EvalSpec `every_n_steps` must be an int > 0 or None; received 0"):
        te.EvalSpec(fn, every_n_steps=0)
    with pytest.raises(TypeError, match="EvalSpec `hooks` must contain hooks"):
        te.EvalSpec(fn, hooks=[object()])
    assert te.EvalSpec(fn, throttle_secs=0, steps=None).throttle_secs == 0


def test_eval_spec_exporters():
    fn = lambda: None  # noqa: E731
    single = RecordingExporter("a")
    assert te.EvalSpec(fn, exporters=single).exporters == (single,)
    assert te.EvalSpec(fn, exporters=None).exporters == ()
    with pytest.raises(ValueError, match=r"unique names .* \['a'\] appear more than once in \['a', 'b', 'a'\]"):
        te.EvalSpec(fn, exporters=[RecordingExporter("a"), RecordingExporter("b"), RecordingExporter("a")])
    with pytest.raises(ValueError, match=r"non-empty string name .* received '' among \['a', ''\]"):
        te.EvalSpec(fn, exporters=[RecordingExporter("a"), RecordingExporter("")])
    with pytest.raises(TypeError, match="EvalSpec `exporters` must contain Exporters .* received str 'latest'"):
        te.EvalSpec(fn, exporters=["latest"])
    with pytest.raises(TypeError, match="EvalSpec `exporters` must be an Exporter, a list of Exporters or None; received int 5"):
        te.EvalSpec(fn, exporters=5)


# ---------------------------------------------------------------------------
# run_evaluator
# ---------------------------------------------------------------------------


def test_run_evaluator_evaluates_the_latest_checkpoint_and_exits_at_max_steps(make_estimator, data, tmp_path):
    model_dir = tmp_path / "model"
    make_estimator(model_dir, save_checkpoints_steps=10).train(_train_fn(data), max_steps=30)
    evaluator = make_estimator(model_dir)
    recorder = RecordingExporter()
    spec = _eval_spec(data, throttle_secs=0, start_delay_secs=0, exporters=recorder)
    metrics, exports = te.run_evaluator(evaluator, spec, max_steps=30, poll_secs=0.01)
    assert int(metrics["global_step"]) == 30 and exports == [None]
    assert _evaluated(evaluator) == [30] and recorder.calls[0][:2] == (30, True)


def test_run_evaluator_times_out_without_checkpoints(make_estimator, data):
    spec = _eval_spec(data, throttle_secs=0, start_delay_secs=0)
    assert te.run_evaluator(make_estimator(), spec, max_steps=10, poll_secs=0.01, timeout_secs=0.05) == (None, [])


def test_run_evaluator_moves_on_when_a_checkpoint_is_rotated_away(make_estimator, data, tmp_path, monkeypatch, caplog):
    model_dir = tmp_path / "model"
    trainer = make_estimator(model_dir, save_checkpoints_steps=10, keep_checkpoint_max=1)
    trainer.train(_train_fn(data), max_steps=10)
    read = []
    original = ckpt.restore_checkpoint

    def racing_restore(path, parts):
        read.append(os.path.basename(path))
        if len(read) == 1:  # between the evaluator listing ckpt-10 and reading it, the trainer moves on
            trainer.train(_train_fn(data), max_steps=20)
        return original(path, parts)

    monkeypatch.setattr(ckpt, "restore_checkpoint", racing_restore)
    spec = _eval_spec(data, throttle_secs=0, start_delay_secs=0)
    with caplog.at_level(logging.WARNING, logger="torch_estimator"):
        metrics, _ = te.run_evaluator(make_estimator(model_dir), spec, max_steps=20, poll_secs=0.01)
    assert read == ["model.ckpt-10.safetensors", "model.ckpt-20.safetensors"]
    assert int(metrics["global_step"]) == 20
    assert "model.ckpt-10.safetensors was deleted (rotated away by the trainer)" in caplog.text


def test_run_evaluator_follows_a_trainer(make_estimator, data, tmp_path):
    model_dir = tmp_path / "model"
    trainer = make_estimator(model_dir, save_checkpoints_steps=10, keep_checkpoint_max=2)
    evaluator = make_estimator(model_dir, seed=1)

    class Slow(te.Hook):
        def after_run(self, run_context, run_values):
            threading.Event().wait(0.005)

    thread = threading.Thread(target=lambda: trainer.train(_train_fn(data), max_steps=40, hooks=[Slow()]))
    thread.start()
    try:
        metrics, _ = te.run_evaluator(evaluator, _eval_spec(data, throttle_secs=0, start_delay_secs=0), max_steps=40,
                                      poll_secs=0.005, timeout_secs=60)
    finally:
        thread.join()
    assert int(metrics["global_step"]) == 40
    steps = _evaluated(evaluator)
    assert steps[-1] == 40 and set(steps) <= {0, 10, 20, 30, 40}


def test_run_evaluator_checks_its_arguments(make_estimator, data):
    est, spec = make_estimator(), _eval_spec(data, start_delay_secs=0)
    with pytest.raises(ValueError, match="`max_steps` must be an int > 0 or None; received 0"):
        te.run_evaluator(est, spec, max_steps=0)
    with pytest.raises(ValueError, match="`poll_secs` must be a number > 0; received 0"):
        te.run_evaluator(est, spec, poll_secs=0)
    with pytest.raises(ValueError, match="`timeout_secs` must be a number >= 0 or None; received -1"):
        te.run_evaluator(est, spec, timeout_secs=-1)
    with pytest.raises(TypeError, match="`estimator` must be a torch_estimator.Estimator"):
        te.run_evaluator(None, spec)


def test_evaluation_metrics_are_plain_numbers(make_estimator, data):
    metrics, _ = te.train_and_evaluate(make_estimator(save_checkpoints_steps=10), te.TrainSpec(_train_fn(data), max_steps=10),
                                       _eval_spec(data))
    assert type(metrics["global_step"]) is int and type(metrics["loss"]) is float


def test_the_evaluator_process_is_not_distributed(make_estimator, data, monkeypatch):
    est = make_estimator(save_checkpoints_steps=10)
    monkeypatch.setattr(est, "_config", est.config.replace(world_size=2, rank=0))
    with pytest.raises(ValueError, match="run_evaluator is a single process that watches model_dir; this Estimator has world_size=2"):
        te.run_evaluator(est, _eval_spec(data))
