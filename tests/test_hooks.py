"""Tests for torch_estimator.hooks: the timer, built-in hooks (reference 5.2), HookList and RunContext.

Hooks are driven directly with a RunContext, the way the Estimator's loop calls them: ``before_run`` says which
values it wants, and ``after_run`` receives only those.
"""

from __future__ import annotations

import logging

import pytest

import torch_estimator.hooks as hooks_module
import torch_estimator.summary as summary_module
from torch_estimator.hooks import (
    CheckpointSaverListener,
    Hook,
    HookList,
    LoggingTensorHook,
    NanLossDuringTrainingError,
    RunContext,
    SecondOrStepTimer,
    StepCounterHook,
    StopAtStepHook,
    check_hooks,
)


class FakeClock:
    """Stands in for the ``time`` module inside torch_estimator.hooks."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(hooks_module, "time", fake)
    return fake


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger="torch_estimator")
    return caplog


def messages(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "torch_estimator"]


def run_step(hook, step, values, batch_size=0, mode="train"):
    """One step of the loop: before_run at `step`, after_run at `step + 1` with only the requested values."""
    context = RunContext(mode, step)
    context.batch_size = batch_size
    wanted = hook.before_run(context)
    context.global_step = step + 1
    hook.after_run(context, {name: values[name] for name in (wanted or ())})
    return context


def trigger_steps(timer, steps):
    fired = []
    for step in steps:
        if timer.should_trigger_for_step(step):
            timer.update_last_triggered_step(step)
            fired.append(step)
    return fired


# ---------------------------------------------------------------------------
# RunContext
# ---------------------------------------------------------------------------


def test_run_context_starts_without_a_stop_request():
    assert RunContext("train", 0).stop_requested is False


def test_request_stop_sets_the_flag():
    context = RunContext("train", 0)
    context.request_stop()
    assert context.stop_requested is True


def test_run_context_carries_mode_step_and_model_dir():
    context = RunContext("eval", 7, model_dir="m")
    assert (context.mode, context.global_step, context.model_dir, context.batch_size) == ("eval", 7, "m", 0)


def test_run_context_has_no_results_before_the_end():
    assert RunContext("train", 0).results is None


# ---------------------------------------------------------------------------
# Hook base, listeners, errors
# ---------------------------------------------------------------------------


def test_hook_base_methods_are_no_ops():
    hook, context = Hook(), RunContext("train", 0)
    results = [hook.begin(), hook.after_restore(context), hook.before_run(context), hook.after_run(context, {}), hook.end(context)]
    assert results == [None] * 5


def test_checkpoint_saver_listener_does_not_stop_by_default():
    listener = CheckpointSaverListener()
    assert [listener.begin(), listener.before_save(1), listener.after_save(1), listener.end(1)] == [None] * 4


def test_nan_loss_error_is_a_runtime_error():
    assert issubclass(NanLossDuringTrainingError, RuntimeError)


# ---------------------------------------------------------------------------
# SecondOrStepTimer
# ---------------------------------------------------------------------------


def test_timer_needs_one_argument():
    with pytest.raises(ValueError, match="needs exactly one of every_secs and every_steps; received every_secs=None, every_steps=None"):
        SecondOrStepTimer()


def test_timer_rejects_both_arguments():
    with pytest.raises(ValueError, match="needs exactly one of every_secs and every_steps; received every_secs=1, every_steps=2"):
        SecondOrStepTimer(every_secs=1, every_steps=2)


@pytest.mark.parametrize("kwargs", [{"every_steps": 0}, {"every_steps": -1}, {"every_secs": 0}, {"every_secs": -0.5}, {"every_steps": True}, {"every_secs": "1"}])
def test_timer_rejects_a_non_positive_period(kwargs):
    with pytest.raises(ValueError, match="SecondOrStepTimer: the period must be > 0; received"):
        SecondOrStepTimer(**kwargs)


def test_timer_triggers_on_the_first_call():
    assert SecondOrStepTimer(every_steps=100).should_trigger_for_step(37) is True


def test_timer_triggers_every_n_steps():
    assert trigger_steps(SecondOrStepTimer(every_steps=10), range(35)) == [0, 10, 20, 30]


def test_timer_step_cadence_is_measured_from_the_last_trigger():
    assert trigger_steps(SecondOrStepTimer(every_steps=10), [3, 5, 12, 13, 14, 22, 23]) == [3, 13, 23]


def test_timer_never_triggers_twice_for_the_same_step():
    timer = SecondOrStepTimer(every_steps=1)
    timer.update_last_triggered_step(5)
    assert timer.should_trigger_for_step(5) is False


def test_timer_never_triggers_twice_for_the_same_step_in_secs_mode(clock):
    timer = SecondOrStepTimer(every_secs=1)
    timer.update_last_triggered_step(5)
    clock.advance(10)
    assert timer.should_trigger_for_step(5) is False


def test_timer_secs_does_not_trigger_before_the_period(clock):
    timer = SecondOrStepTimer(every_secs=5)
    timer.update_last_triggered_step(0)
    clock.advance(4.9)
    assert timer.should_trigger_for_step(1) is False


def test_timer_secs_triggers_once_the_period_has_passed(clock):
    timer = SecondOrStepTimer(every_secs=5)
    timer.update_last_triggered_step(0)
    clock.advance(5)
    assert timer.should_trigger_for_step(1) is True


def test_timer_secs_ignores_the_step_count(clock):
    timer = SecondOrStepTimer(every_secs=5)
    timer.update_last_triggered_step(0)
    assert timer.should_trigger_for_step(1_000_000) is False


def test_timer_first_update_reports_nothing_elapsed(clock):
    assert SecondOrStepTimer(every_steps=1).update_last_triggered_step(3) == (None, None)


def test_timer_update_reports_seconds_and_steps_since_the_last_trigger(clock):
    timer = SecondOrStepTimer(every_steps=1)
    timer.update_last_triggered_step(3)
    clock.advance(2.5)
    assert timer.update_last_triggered_step(8) == (2.5, 5)


def test_timer_remembers_the_last_triggered_step():
    timer = SecondOrStepTimer(every_steps=1)
    timer.update_last_triggered_step(4)
    assert timer.last_triggered_step() == 4


def test_timer_has_no_last_step_before_triggering():
    assert SecondOrStepTimer(every_steps=1).last_triggered_step() is None


def test_timer_reset_triggers_again():
    timer = SecondOrStepTimer(every_steps=100)
    timer.update_last_triggered_step(4)
    timer.reset()
    assert timer.should_trigger_for_step(5) is True


# ---------------------------------------------------------------------------
# LoggingTensorHook
# ---------------------------------------------------------------------------


def test_logging_hook_needs_a_period_or_at_end():
    with pytest.raises(ValueError, match="LoggingTensorHook: give at_end=True and/or exactly one of every_n_iter and every_n_secs"):
        LoggingTensorHook(["loss"])


def test_logging_hook_rejects_both_periods():
    with pytest.raises(ValueError, match="LoggingTensorHook: give only one of every_n_iter and every_n_secs"):
        LoggingTensorHook(["loss"], every_n_iter=1, every_n_secs=1)


@pytest.mark.parametrize("every_n_iter", [0, -3, True, 1.5])
def test_logging_hook_rejects_a_bad_every_n_iter(every_n_iter):
    with pytest.raises(ValueError, match=r"LoggingTensorHook: every_n_iter must be an int > 0; received"):
        LoggingTensorHook(["loss"], every_n_iter=every_n_iter)


@pytest.mark.parametrize("every_n_secs", [0, -1.0, "5"])
def test_logging_hook_rejects_a_bad_every_n_secs(every_n_secs):
    with pytest.raises(ValueError, match="LoggingTensorHook: every_n_secs must be a number > 0; received"):
        LoggingTensorHook(["loss"], every_n_secs=every_n_secs)


def test_logging_hook_rejects_bool_every_n_secs():
    with pytest.raises(ValueError, match="every_n_secs must be a number > 0; received True"):
        LoggingTensorHook(["loss"], every_n_secs=True)


@pytest.mark.parametrize("tensors", ["loss", 3, ["loss", 1], None])
def test_logging_hook_rejects_bad_tensors(tensors):
    with pytest.raises(TypeError, match="LoggingTensorHook `tensors` must be a list of names or a dict of tag to name"):
        LoggingTensorHook(tensors, every_n_iter=1)


def test_logging_hook_logs_list_tensors_in_list_order(log):
    hook = LoggingTensorHook(["loss", "step"], every_n_iter=1)
    hook.begin()
    run_step(hook, 0, {"loss": 0.5, "step": 3})
    assert messages(log) == ["loss = 0.5, step = 3"]


def test_logging_hook_list_order_is_kept_even_when_unsorted(log):
    hook = LoggingTensorHook(["step", "loss"], every_n_iter=1)
    hook.begin()
    run_step(hook, 0, {"loss": 0.5, "step": 3})
    assert messages(log) == ["step = 3, loss = 0.5"]


def test_logging_hook_logs_dict_tags_in_sorted_order(log):
    hook = LoggingTensorHook({"b_loss": "loss", "a_step": "global_step"}, every_n_iter=1)
    hook.begin()
    run_step(hook, 0, {"loss": 0.5, "global_step": 1})
    assert messages(log) == ["a_step = 1, b_loss = 0.5"]


def test_logging_hook_requests_the_named_values_when_triggered():
    hook = LoggingTensorHook({"tag": "loss", "other": "accuracy"}, every_n_iter=2)
    hook.begin()
    assert sorted(hook.before_run(RunContext("train", 0))) == ["accuracy", "loss"]


def test_logging_hook_requests_nothing_when_not_triggered():
    hook = LoggingTensorHook(["loss"], every_n_iter=2)
    hook.begin()
    run_step(hook, 0, {"loss": 1.0})
    assert hook.before_run(RunContext("train", 1)) is None


def test_logging_hook_counts_local_iterations_not_global_steps(log):
    hook = LoggingTensorHook(["loss"], every_n_iter=3)
    hook.begin()
    for i in range(7):
        run_step(hook, 1000 + 7 * i, {"loss": i})
    assert [m.split(" (")[0] for m in messages(log)] == ["loss = 0", "loss = 3", "loss = 6"]


def test_logging_hook_later_lines_show_elapsed_seconds(clock, log):
    hook = LoggingTensorHook(["loss"], every_n_iter=1)
    hook.begin()
    run_step(hook, 0, {"loss": 1.0})
    clock.advance(2)
    run_step(hook, 1, {"loss": 0.5})
    assert messages(log) == ["loss = 1.0", "loss = 0.5 (2.000 sec)"]


def test_logging_hook_every_n_secs(clock, log):
    hook = LoggingTensorHook(["loss"], every_n_secs=10)
    hook.begin()
    for i in range(6):
        run_step(hook, i, {"loss": i})
        clock.advance(4)
    assert messages(log) == ["loss = 0", "loss = 3 (12.000 sec)"]


def test_logging_hook_begin_restarts_the_count(log):
    hook = LoggingTensorHook(["loss"], every_n_iter=5)
    hook.begin()
    run_step(hook, 0, {"loss": 1})
    run_step(hook, 1, {"loss": 2})
    hook.begin()
    run_step(hook, 2, {"loss": 3})
    assert [m.split(" (")[0] for m in messages(log)] == ["loss = 1", "loss = 3"]


def test_logging_hook_uses_the_formatter(log):
    hook = LoggingTensorHook(["loss", "step"], every_n_iter=1, formatter=lambda values: f"custom {sorted(values.items())}")
    hook.begin()
    run_step(hook, 0, {"loss": 0.5, "step": 3})
    assert messages(log) == ["custom [('loss', 0.5), ('step', 3)]"]


def test_logging_hook_at_end_only_logs_the_last_values_in_end(log):
    hook = LoggingTensorHook(["loss"], at_end=True)
    hook.begin()
    for i in range(3):
        context = run_step(hook, i, {"loss": i})
    hook.end(context)
    assert messages(log) == ["loss = 2"]


def test_logging_hook_at_end_logs_nothing_during_the_run(log):
    hook = LoggingTensorHook(["loss"], at_end=True)
    hook.begin()
    run_step(hook, 0, {"loss": 1})
    assert messages(log) == []


def test_logging_hook_at_end_requests_values_every_step():
    hook = LoggingTensorHook(["loss"], at_end=True)
    hook.begin()
    assert hook.before_run(RunContext("train", 0)) == ["loss"]


def test_logging_hook_at_end_with_no_steps_logs_nothing(log):
    hook = LoggingTensorHook(["loss"], at_end=True)
    hook.begin()
    hook.end(RunContext("train", 0))
    assert messages(log) == []


def test_logging_hook_at_end_combines_with_a_period(log):
    hook = LoggingTensorHook(["loss"], every_n_iter=10, at_end=True)
    hook.begin()
    for i in range(3):
        context = run_step(hook, i, {"loss": i})
    hook.end(context)
    assert messages(log) == ["loss = 0", "loss = 2"]


# ---------------------------------------------------------------------------
# StopAtStepHook
# ---------------------------------------------------------------------------


def test_stop_at_step_needs_one_argument():
    with pytest.raises(ValueError, match="StopAtStepHook: one of num_steps or last_step must be given"):
        StopAtStepHook()


def test_stop_at_step_rejects_both_arguments():
    with pytest.raises(ValueError, match="StopAtStepHook: only one of num_steps or last_step can be given"):
        StopAtStepHook(num_steps=1, last_step=2)


def test_stop_at_step_num_steps_is_relative_to_the_restored_step():
    hook = StopAtStepHook(num_steps=5)
    hook.after_restore(RunContext("train", 10))
    assert hook.last_step == 15


def test_stop_at_step_num_steps_stops_at_restored_plus_n():
    hook = StopAtStepHook(num_steps=3)
    hook.after_restore(RunContext("train", 10))
    stops = [run_step(hook, step, {}).stop_requested for step in range(10, 14)]
    assert stops == [False, False, True, True]


def test_stop_at_step_last_step_is_absolute():
    hook = StopAtStepHook(last_step=3)
    hook.after_restore(RunContext("train", 1))
    stops = [run_step(hook, step, {}).stop_requested for step in range(1, 4)]
    assert stops == [False, True, True]


def test_stop_at_step_last_step_ignores_the_restored_step():
    hook = StopAtStepHook(last_step=3)
    hook.after_restore(RunContext("train", 1))
    assert hook.last_step == 3


def test_stop_at_step_already_past_stops_after_the_first_step():
    hook = StopAtStepHook(last_step=3)
    hook.after_restore(RunContext("train", 8))
    assert run_step(hook, 8, {}).stop_requested is True


def test_stop_at_step_requests_no_values():
    hook = StopAtStepHook(last_step=3)
    assert hook.before_run(RunContext("train", 0)) is None


# ---------------------------------------------------------------------------
# StepCounterHook
# ---------------------------------------------------------------------------


@pytest.fixture
def summaries(monkeypatch):
    """Records what hooks write with torch_estimator.summary.write_summaries, as (logdir, tag, value, step)."""
    writes = []

    def write_summaries(logdir, values, step):
        writes.extend((logdir, tag, value, step) for tag, value in values.items())

    monkeypatch.setattr(summary_module, "write_summaries", write_summaries)
    return writes


def drive_counter(hook, clock, last=25, seconds_per_step=0.5, batch_size=8):
    hook.begin()
    for step in range(last):
        clock.advance(seconds_per_step)
        run_step(hook, step, {}, batch_size=batch_size)


def written(writes, tag):
    return [(value, step) for _, t, value, step in writes if t == tag]


def test_step_counter_needs_a_period():
    with pytest.raises(ValueError, match="StepCounterHook"):
        StepCounterHook(every_n_steps=None)


def test_step_counter_missing_period_message_names_its_arguments():
    with pytest.raises(ValueError, match="StepCounterHook: give exactly one of every_n_steps and every_n_secs"):
        StepCounterHook(every_n_steps=None)


def test_step_counter_rejects_both_periods():
    with pytest.raises(ValueError, match="StepCounterHook: give only one of every_n_steps and every_n_secs"):
        StepCounterHook(every_n_steps=10, every_n_secs=5)


@pytest.mark.parametrize("every_n_steps", [0, -1, True])
def test_step_counter_rejects_a_bad_every_n_steps(every_n_steps):
    with pytest.raises(ValueError, match="StepCounterHook: every_n_steps must be an int > 0"):
        StepCounterHook(every_n_steps=every_n_steps)


def test_step_counter_writes_at_tf_steps(clock, summaries):
    # TF [run]: with N=10 the value is written at global steps 11 and 21 (the first trigger, at 1, records nothing).
    drive_counter(StepCounterHook(every_n_steps=10, output_dir="out"), clock)
    assert [step for _, step in written(summaries, "global_step/sec")] == [11, 21]


def test_step_counter_rate_is_steps_over_seconds(clock, summaries):
    drive_counter(StepCounterHook(every_n_steps=10, output_dir="out"), clock, seconds_per_step=0.5)
    assert [value for value, _ in written(summaries, "global_step/sec")] == pytest.approx([2.0, 2.0])


def test_step_counter_writes_to_its_output_dir(clock, summaries):
    drive_counter(StepCounterHook(every_n_steps=10, output_dir="out"), clock)
    assert {logdir for logdir, *_ in summaries} == {"out"}


def test_step_counter_first_trigger_logs_no_rate(clock, log, summaries):
    drive_counter(StepCounterHook(every_n_steps=10, output_dir="out"), clock, last=5)
    assert messages(log) == []


def test_step_counter_logs_global_step_per_sec(clock, log, summaries):
    drive_counter(StepCounterHook(every_n_steps=10), clock, last=12)
    assert "global_step/sec: 2" in messages(log)


def test_step_counter_reports_examples_per_sec(clock, summaries):
    drive_counter(StepCounterHook(every_n_steps=10, output_dir="out"), clock, seconds_per_step=0.5, batch_size=8)
    assert written(summaries, "examples/sec") == [(16.0, 11), (16.0, 21)]


def test_step_counter_without_output_dir_writes_no_summaries(clock, summaries):
    drive_counter(StepCounterHook(every_n_steps=2), clock, last=6)
    assert summaries == []


def test_step_counter_every_n_secs_overrides_the_default_steps(clock, summaries):
    drive_counter(StepCounterHook(every_n_secs=3, output_dir="out"), clock, last=10, seconds_per_step=1)
    assert [step for _, step in written(summaries, "global_step/sec")] == [4, 7, 10]


def test_step_counter_requests_no_values():
    hook = StepCounterHook()
    hook.begin()
    assert hook.before_run(RunContext("train", 0)) is None


# ---------------------------------------------------------------------------
# HookList
# ---------------------------------------------------------------------------


class Wants(Hook):
    def __init__(self, names, calls=None, tag=""):
        self.names, self.calls, self.tag = names, calls if calls is not None else [], tag

    def begin(self):
        self.calls.append(("begin", self.tag))

    def before_run(self, run_context):
        self.calls.append(("before_run", self.tag))
        return self.names

    def after_run(self, run_context, run_values):
        self.calls.append(("after_run", self.tag, dict(run_values)))

    def end(self, run_context):
        self.calls.append(("end", self.tag))


def test_hook_list_merges_requested_names():
    hooks = HookList([Wants(["loss"]), Wants(["loss", "global_step"]), Wants(("accuracy",))])
    assert hooks.before_run(RunContext("train", 0)) == {"loss", "global_step", "accuracy"}


def test_hook_list_returns_none_when_no_hook_wants_anything():
    hooks = HookList([Wants(None), Wants([]), Hook()])
    assert hooks.before_run(RunContext("train", 0)) is None


def test_empty_hook_list_wants_nothing():
    assert HookList().before_run(RunContext("train", 0)) is None


def test_hook_list_calls_every_hook_point_in_order():
    calls = []
    hooks = HookList([Wants(None, calls, "a"), Wants(None, calls, "b")])
    context = RunContext("train", 0)
    hooks.begin()
    hooks.before_run(context)
    hooks.after_run(context, {"loss": 1.0})
    hooks.end(context)
    assert calls == [
        ("begin", "a"), ("begin", "b"),
        ("before_run", "a"), ("before_run", "b"),
        ("after_run", "a", {"loss": 1.0}), ("after_run", "b", {"loss": 1.0}),
        ("end", "a"), ("end", "b"),
    ]


def test_hooks_joining_a_run_begin_and_see_this_steps_before_and_after_run():
    calls = []
    hooks = HookList([Wants(["loss"], calls, "a")])
    context = RunContext("train", 0)
    hooks.begin()
    wanted = hooks.before_run(context)
    wanted = hooks.join([Wants(["accuracy"], calls, "b")], context, wanted)
    assert wanted == {"loss", "accuracy"}
    hooks.after_run(context, {"loss": 1.0})
    assert calls == [
        ("begin", "a"), ("before_run", "a"), ("begin", "b"), ("before_run", "b"),
        ("after_run", "a", {"loss": 1.0}), ("after_run", "b", {"loss": 1.0}),
    ]
    assert hooks.join([], context, None) is None
    assert HookList().join([Wants(None)], context, None) is None


def test_hook_list_after_restore_reaches_hooks():
    hook = StopAtStepHook(num_steps=2)
    HookList([hook]).after_restore(RunContext("train", 5))
    assert hook.last_step == 7


def test_hook_list_after_restore_skips_hooks_without_it():
    class Minimal:
        def begin(self):
            pass

        def before_run(self, run_context):
            return None

        def after_run(self, run_context, run_values):
            pass

        def end(self, run_context):
            pass

    HookList([Minimal()]).after_restore(RunContext("train", 0))  # no AttributeError


def test_hook_list_extend_appends_in_order():
    first, second = Hook(), Hook()
    hooks = HookList([first])
    hooks.extend([second])
    assert hooks.hooks == [first, second]


def test_hook_list_stop_request_reaches_the_run_context():
    hooks = HookList([Hook(), StopAtStepHook(last_step=1)])
    context = RunContext("train", 0)
    hooks.before_run(context)
    context.global_step = 1
    hooks.after_run(context, {})
    assert context.stop_requested is True


# ---------------------------------------------------------------------------
# check_hooks
# ---------------------------------------------------------------------------


def test_check_hooks_none_is_an_empty_list():
    assert check_hooks("hooks", None) == []


def test_check_hooks_accepts_any_iterable_of_hooks():
    hook = Hook()
    assert check_hooks("hooks", (h for h in [hook])) == [hook]


@pytest.mark.parametrize("value", [Hook(), "hooks", {"a": Hook()}, 3])
def test_check_hooks_rejects_a_non_list(value):
    with pytest.raises(TypeError, match="`hooks` must be a list of hooks; received"):
        check_hooks("hooks", value)


def test_check_hooks_rejects_a_non_hook_item():
    with pytest.raises(TypeError, match="`hooks` must contain torch_estimator.Hook instances; received object"):
        check_hooks("hooks", [Hook(), object()])
