"""Hooks: TF's ``SessionRunHook`` family without sessions, and without host-device stalls.

A hook's ``before_run`` returns the names of the values it wants at this step (``"loss"``,
``"global_step"``, ``"learning_rate"``, a predictions key or a key of ``EstimatorSpec.fetches``); the loop
copies to the host only those, only then, and hands them to ``after_run``. A step that no hook observes never
waits for the device.

Example:
    >>> class PrintLoss(Hook):
    ...     def before_run(self, run_context):
    ...         return ["loss"] if run_context.global_step % 10 == 0 else None
    ...     def after_run(self, run_context, run_values):
    ...         print(run_values["loss"])
    >>> timer = SecondOrStepTimer(every_steps=10)
    >>> triggered = []
    >>> for step in range(25):
    ...     if timer.should_trigger_for_step(step):
    ...         _ = timer.update_last_triggered_step(step)
    ...         triggered.append(step)
    >>> triggered
    [0, 10, 20]
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from . import summary
from .protocols import HookLike

__all__ = [
    "Hook",
    "HookList",
    "RunContext",
    "CheckpointSaverListener",
    "NanLossDuringTrainingError",
    "SecondOrStepTimer",
    "LoggingTensorHook",
    "StopAtStepHook",
    "StepCounterHook",
    "SummarySaverHook",
    "NanTensorHook",
    "ProgressBarHook",
    "ProfilerHook",
    "FinalOpsHook",
]

logger = logging.getLogger("torch_estimator")


class NanLossDuringTrainingError(RuntimeError):
    """Raised when the loss became NaN or infinite; no checkpoint of the broken weights is written."""


class RunContext:
    """What a hook sees of the run: the mode, the global step, and the one way to stop.

    Attributes:
        mode: ``"train"``, ``"eval"`` or ``"infer"``.
        global_step: In ``before_run`` the step about to run; in ``after_run`` the step after it.
        model_dir: The Estimator's model directory.
        batch_size: The size of the current batch (set before ``before_run``).
        results: Set before ``end``: ``{"loss", "global_step"}`` after training, the metrics dict after
            evaluation, ``{"global_step"}`` after prediction.
    """

    __slots__ = ("mode", "global_step", "model_dir", "batch_size", "results", "_stop_requested", "_examples")

    def __init__(self, mode: str, global_step: int, model_dir: str | None = None) -> None:
        self.mode, self.global_step, self.model_dir = mode, global_step, model_dir
        self.batch_size = 0
        # Set by the training loop, whose hooks are not called on every step: the examples of the run so far,
        # the current batch included. None where every hook sees every step.
        self._examples: int | None = None
        self.results: dict[str, Any] | None = None  # set before ``end``: final loss, or evaluation metrics
        self._stop_requested = False

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (``end`` hooks still run, a final save happens)."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested


class Hook:
    """Base class: every method is a no-op; override the ones you need."""

    def begin(self) -> None:
        """Called once before the run, before the model is restored."""

    def after_restore(self, run_context: RunContext) -> None:
        """Called once the model, optimizer and their checkpoint state are in place (TF's
        ``after_create_session``); ``run_context.global_step`` is the restored step."""

    def before_run(self, run_context: RunContext) -> Sequence[str] | None:
        """Return the names of the values wanted at this step, or None for none."""
        return None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        """Receive the requested values (numpy scalars or arrays), copied to the host."""

    def end(self, run_context: RunContext) -> None:
        """Called once at the end of the run, also when the input ran out."""


def _overrides(hook: Any, method: str) -> bool:
    """Whether ``hook`` does something at ``method`` (the per-step calls skip :class:`Hook`'s no-ops)."""
    return getattr(type(hook), method, None) is not getattr(Hook, method)


class HookList:
    """Calls each hook point on every hook, in order (per step, only the hooks that do something there).

    The training loop calls :meth:`before_step` and :meth:`after_step` instead of ``before_run`` and
    ``after_run``, and only at the iterations :meth:`next_due` names: the built-in hooks with a step period
    say when they next need a call (the others are called on every step), so a step that no hook observes
    costs no Python call at all. The NaN check of the loop runs at the place of the (first)
    :class:`NanTensorHook` in the list, as TF's hook ran there: hooks before it see a step whose loss is NaN.
    """

    def __init__(self, hooks: Iterable[HookLike] = ()) -> None:
        self.hooks: list[HookLike] = []
        self._before: list[HookLike] = []
        self._after: list[HookLike] = []  # the hooks doing something in after_run, and NanTensorHooks (the NaN check)
        self._due: dict[int, int] = {}  # id(hook) -> the next iteration it must see (scheduled hooks only)
        self._every_step = False  # whether a hook must see every step
        self.extend(hooks)

    def extend(self, hooks: Iterable[HookLike]) -> None:
        for hook in hooks:
            self.hooks.append(hook)
            before, after = _overrides(hook, "before_run"), _overrides(hook, "after_run")
            if before:
                self._before.append(hook)
            if after or isinstance(hook, NanTensorHook):
                self._after.append(hook)
            if type(hook) in _SCHEDULED:  # exactly these classes: a subclass may observe more
                self._due[id(hook)] = 0
            elif before or after:
                self._every_step = True

    def join(self, hooks: Sequence[HookLike], run_context: RunContext, wanted: set[str] | None) -> set[str] | None:
        """Add ``hooks`` during a run (those an ``EstimatorSpec`` names, after the first step): they begin,
        see ``after_restore`` and this step's ``before_run`` now, in time for its ``after_run``. Returns
        ``wanted`` with what they want."""
        if not hooks:
            return wanted
        joined = HookList(hooks)
        joined.begin()
        joined.after_restore(run_context)
        self.extend(hooks)
        more = joined.before_run(run_context)
        return more if wanted is None else wanted | (more or set())

    def begin(self) -> None:
        for hook in self.hooks:
            hook.begin()

    def after_restore(self, run_context: RunContext) -> None:
        for hook in self.hooks:
            after_restore = getattr(hook, "after_restore", None)  # optional beyond the Hook base class
            if after_restore is not None:
                after_restore(run_context)

    def before_run(self, run_context: RunContext) -> set[str] | None:
        """The union of the names every hook wants this step, or None when none wants anything."""
        wanted: set[str] | None = None
        for hook in self._before:
            names = hook.before_run(run_context)
            if names:
                wanted = set(names) if wanted is None else wanted.union(names)
        return wanted

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        for hook in self._after:
            hook.after_run(run_context, run_values)

    def next_due(self) -> float:
        """The first iteration (counted from 0 in this run) at which a hook must be called; 0 when some hook
        must see every step, infinity when none ever needs a call."""
        if self._every_step:
            return 0
        return min(self._due.values(), default=math.inf)

    def before_step(self, run_context: RunContext, iteration: int) -> set[str] | None:
        """``before_run`` of the hooks due at ``iteration`` (every unscheduled hook is)."""
        wanted: set[str] | None = None
        due = self._due
        for hook in self._before:
            if due.get(id(hook), 0) > iteration:
                continue
            names = hook.before_run(run_context)
            if names:
                wanted = set(names) if wanted is None else wanted.union(names)
        return wanted

    def after_step(
        self,
        run_context: RunContext,
        run_values: Mapping[str, Any],
        iteration: int,
        nan_check: Callable[[], Any] | None = None,
    ) -> bool:
        """``after_run`` of the hooks due at ``iteration``, with ``nan_check()`` called at the first
        NanTensorHook's place; the scheduled hooks then say when they are due next. Returns whether
        ``nan_check`` was called."""
        checked = False
        due = self._due
        for hook in self._after:
            key = id(hook)
            if due.get(key, 0) > iteration:
                continue
            if isinstance(hook, NanTensorHook):
                if nan_check is not None and not checked:
                    checked = True
                    nan_check()
                continue
            hook.after_run(run_context, run_values)
            if key in due:
                due[key] = hook._next_due(iteration + 1, run_context)  # type: ignore[attr-defined]  # a _SCHEDULED class
        return checked

    def end(self, run_context: RunContext) -> None:
        for hook in self.hooks:
            hook.end(run_context)


def _steps_until(target: int | None, next_iteration: int, run_context: RunContext) -> float:
    """The iteration whose ``after_run`` sees global step ``target``: ``run_context.global_step`` is the
    step before iteration ``next_iteration`` (training advances it by one per iteration)."""
    if target is None:
        return math.inf
    return max(next_iteration, next_iteration + target - 1 - run_context.global_step)


def check_hooks(argument: str, hooks: Any) -> list[HookLike]:
    """Validate a user-given list of hooks.

    Raises:
        TypeError: If ``hooks`` is not a list of objects with the hook methods.
    """
    if hooks is None:
        return []
    if isinstance(hooks, (str, bytes, Mapping, Hook)) or not isinstance(hooks, Iterable):
        raise TypeError(f"`{argument}` must be a list of hooks; received {type(hooks).__name__} {hooks!r}.")
    hooks = list(hooks)
    for hook in hooks:
        if not all(callable(getattr(hook, m, None)) for m in ("begin", "before_run", "after_run", "end")):
            raise TypeError(
                f"`{argument}` must contain torch_estimator.Hook instances; received {type(hook).__name__} {hook!r}."
            )
    return hooks


class CheckpointSaverListener:
    """Called around every checkpoint save (chief only). ``after_save`` returning True stops training."""

    def begin(self) -> None:
        """Called once before the first save of a ``train`` call."""

    def before_save(self, global_step: int) -> None:
        """Called just before the checkpoint at ``global_step`` is written."""

    def after_save(self, global_step: int) -> bool | None:
        """Called just after; return True to stop training."""
        return None

    def end(self, global_step: int) -> None:
        """Called once at the end of ``train``, after the final save."""


class SecondOrStepTimer:
    """Triggers every N seconds or every N steps (exactly one); on the first call; never twice per step.

    Raises:
        ValueError: If both or neither of ``every_secs``/``every_steps`` are given, or one is not positive.
    """

    def __init__(self, every_secs: float | None = None, every_steps: int | None = None) -> None:
        if (every_secs is None) == (every_steps is None):
            raise ValueError(
                f"SecondOrStepTimer needs exactly one of every_secs and every_steps; received "
                f"every_secs={every_secs!r}, every_steps={every_steps!r}."
            )
        value = every_secs if every_secs is not None else every_steps
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"SecondOrStepTimer: the period must be > 0; received {value!r}.")
        self._every_secs, self._every_steps = every_secs, every_steps
        self._last_time: float | None = None
        self._last_step: int | None = None

    def reset(self) -> None:
        self._last_time = self._last_step = None

    def should_trigger_for_step(self, step: int) -> bool:
        last_step = self._last_step
        if last_step is None:
            return True
        if step == last_step:
            return False
        if self._every_steps is not None:
            return step >= last_step + self._every_steps
        return time.monotonic() >= self._last_time + self._every_secs  # type: ignore[operator]

    def update_last_triggered_step(self, step: int) -> tuple[float | None, int | None]:
        """Record a trigger at ``step``; returns (seconds, steps) since the previous trigger, or Nones."""
        now = time.monotonic()
        elapsed = (None, None) if self._last_time is None else (now - self._last_time, step - self._last_step)  # type: ignore[operator]
        self._last_time, self._last_step = now, step
        return elapsed

    def last_triggered_step(self) -> int | None:
        return self._last_step


def _check_every_n(
    owner: str,
    steps: Any,
    secs: Any,
    at_end: bool = False,
    names: tuple[str, str] = ("every_n_iter", "every_n_secs"),
) -> None:
    """Exactly one of a step period and a seconds period (or ``at_end``), each positive."""
    steps_name, secs_name = names
    if steps is not None and secs is not None:
        raise ValueError(f"{owner}: give only one of {steps_name} and {secs_name}; received {steps!r} and {secs!r}.")
    if steps is None and secs is None and not at_end:
        also = "at_end=True and/or " if owner == "LoggingTensorHook" else ""
        raise ValueError(f"{owner}: give {also}exactly one of {steps_name} and {secs_name}.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"{owner}: {steps_name} must be an int > 0; received {steps!r}.")
    if secs is not None and (isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs <= 0):
        raise ValueError(f"{owner}: {secs_name} must be a number > 0; received {secs!r}.")


class LoggingTensorHook(Hook):
    """Logs named values every N local iterations or seconds, and/or at the end.

    Args:
        tensors: A list of names, or a dict of tag to name (logged in sorted tag order).
        every_n_iter: Log every N iterations of this run (not global steps, as TF).
        every_n_secs: Log every N seconds.
        at_end: Also log the last values at the end of the run.
        formatter: ``formatter(dict of tag to value) -> str`` instead of ``"tag = value, ..."``.
    """

    def __init__(
        self,
        tensors: Sequence[str] | Mapping[str, str],
        every_n_iter: int | None = None,
        every_n_secs: float | None = None,
        at_end: bool = False,
        formatter: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        _check_every_n("LoggingTensorHook", every_n_iter, every_n_secs, at_end)
        if isinstance(tensors, Mapping):
            self._tags = {tag: tensors[tag] for tag in sorted(tensors)}
        elif isinstance(tensors, (list, tuple)) and all(isinstance(t, str) for t in tensors):
            self._tags = {name: name for name in tensors}
        else:
            raise TypeError(f"LoggingTensorHook `tensors` must be a list of names or a dict of tag to name; received {tensors!r}.")
        self._names = sorted(set(self._tags.values()))
        self._timer = (
            SecondOrStepTimer(every_secs=every_n_secs, every_steps=every_n_iter)
            if (every_n_iter or every_n_secs) else None
        )
        self._at_end, self._formatter = at_end, formatter
        self._iteration, self._triggered = 0, False
        self._last: dict[str, Any] | None = None

    def begin(self) -> None:
        if self._timer is not None:
            self._timer.reset()
        self._iteration = 0

    def before_run(self, run_context: RunContext) -> Sequence[str] | None:
        self._triggered = self._timer is not None and self._timer.should_trigger_for_step(self._iteration)
        return self._names if self._triggered or self._at_end else None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        if self._at_end:
            self._last = {tag: run_values[name] for tag, name in self._tags.items()}
        if self._triggered:
            elapsed, _ = self._timer.update_last_triggered_step(self._iteration)  # type: ignore[union-attr]
            self._log({tag: run_values[name] for tag, name in self._tags.items()}, elapsed)
        self._iteration += 1

    def _next_due(self, next_iteration: int, run_context: RunContext) -> float:
        """Scheduling (see HookList): the next iteration that logs; the iterations skipped count as seen."""
        timer = self._timer
        if self._at_end or timer is None or timer._every_steps is None:
            return next_iteration  # the last values, or a clock: every step
        last = timer.last_triggered_step()
        due = next_iteration if last is None else max(next_iteration, last + timer._every_steps)
        self._iteration = due
        return due

    def end(self, run_context: RunContext) -> None:
        if self._at_end and self._last is not None:
            self._log(self._last, None)

    def _log(self, values: dict[str, Any], elapsed: float | None) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        if self._formatter is not None:
            logger.info(self._formatter(values))
            return
        line = ", ".join(f"{tag} = {value}" for tag, value in values.items())
        logger.info(f"{line} ({elapsed:.3f} sec)" if elapsed is not None else line)


class StepLoggingHook(LoggingTensorHook):
    """TF's default "loss = ..., step = ..." line (the Estimator's, from ``RunConfig.log_step_count_steps``),
    naming the step the update produced: the step its summaries are written at in TensorBoard (TF's
    convention: 1, 1+N, ...), so that log and scalars agree. Scheduled as its base class (see HookList)."""

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        if "global_step" in run_values:
            run_values = {**run_values, "global_step": np.int64(run_context.global_step)}
        super().after_run(run_context, run_values)


class StopAtStepHook(Hook):
    """Requests a stop once the global step reaches ``last_step`` (or ``num_steps`` past the start).

    ``train(steps=..., max_steps=...)`` needs no such hook: the loop is given its last step. This hook is a
    stop request like any other hook's (with several processes, agreed every ``log_step_count_steps``
    steps), for runs that stop themselves.

    Raises:
        ValueError: Unless exactly one of ``num_steps``/``last_step`` is given.
    """

    def __init__(self, num_steps: int | None = None, last_step: int | None = None) -> None:
        if num_steps is None and last_step is None:
            raise ValueError("StopAtStepHook: one of num_steps or last_step must be given.")
        if num_steps is not None and last_step is not None:
            raise ValueError("StopAtStepHook: only one of num_steps or last_step can be given.")
        self._num_steps, self.last_step = num_steps, last_step

    def after_restore(self, run_context: RunContext) -> None:
        if self._num_steps is not None:
            self.last_step = run_context.global_step + self._num_steps

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        if self.last_step is not None and run_context.global_step >= self.last_step:
            run_context.request_stop()

    def _next_due(self, next_iteration: int, run_context: RunContext) -> float:
        return _steps_until(self.last_step, next_iteration, run_context)


class StepCounterHook(Hook):
    """Logs ``global_step/sec`` and ``examples/sec`` every N steps or seconds, and writes them to
    ``output_dir``'s event file when given. The first trigger only starts the clock, as TF's.

    Raises:
        ValueError: Unless exactly one of ``every_n_steps``/``every_n_secs`` is given and positive.
    """

    def __init__(self, every_n_steps: int | None = 100, every_n_secs: float | None = None, output_dir: str | None = None) -> None:
        if every_n_secs is not None and every_n_steps == 100:
            every_n_steps = None
        _check_every_n("StepCounterHook", every_n_steps, every_n_secs, names=("every_n_steps", "every_n_secs"))
        self._timer = SecondOrStepTimer(every_secs=every_n_secs, every_steps=every_n_steps)
        self._output_dir = output_dir
        self._examples = 0
        self._examples_seen = 0  # the run's example count at the last trigger (scheduled calls)

    def begin(self) -> None:
        self._timer.reset()
        self._examples = self._examples_seen = 0

    def before_run(self, run_context: RunContext) -> None:
        self._examples += run_context.batch_size
        return None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        step = run_context.global_step
        if not self._timer.should_trigger_for_step(step):
            return
        elapsed, steps = self._timer.update_last_triggered_step(step)
        if run_context._examples is not None:  # the loop counts the examples of the steps it did not show
            examples, self._examples_seen = run_context._examples - self._examples_seen, run_context._examples
        else:
            examples, self._examples = self._examples, 0
        if elapsed is None or not steps or elapsed <= 0:
            return
        rates = {"global_step/sec": steps / elapsed, "examples/sec": examples / elapsed}
        for tag, rate in rates.items():
            logger.info("%s: %g", tag, rate)
        if self._output_dir is not None:
            summary.write_summaries(self._output_dir, rates, step)

    def _next_due(self, next_iteration: int, run_context: RunContext) -> float:
        timer = self._timer
        if timer._every_steps is None:
            return next_iteration
        last = timer.last_triggered_step()
        if last is None:
            return next_iteration
        return _steps_until(last + timer._every_steps, next_iteration, run_context)


class SummarySaverHook(Hook):
    """Writes the training summaries (``loss``, learning rate(s) and ``EstimatorSpec.summaries``) on the
    first step and then every N steps or seconds, tagged with the step after the update (TF: 1, 1+N, ...).

    Raises:
        ValueError: Unless exactly one of ``save_steps``/``save_secs`` is given and positive.
    """

    def __init__(self, save_steps: int | None = None, save_secs: float | None = None, output_dir: str | None = None) -> None:
        _check_every_n("SummarySaverHook", save_steps, save_secs, names=("save_steps", "save_secs"))
        self._timer = SecondOrStepTimer(every_secs=save_secs, every_steps=save_steps)
        self._output_dir = output_dir
        self._wanted = False

    def begin(self) -> None:
        self._timer.reset()

    def before_run(self, run_context: RunContext) -> Sequence[str] | None:
        self._wanted = self._timer.should_trigger_for_step(run_context.global_step + 1)
        return ["summaries"] if self._wanted else None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        if self._wanted:
            self._timer.update_last_triggered_step(run_context.global_step)
            logdir = cast(str, self._output_dir or run_context.model_dir)  # the Estimator sets model_dir
            summary.write_summaries(logdir, run_values["summaries"], run_context.global_step)

    def _next_due(self, next_iteration: int, run_context: RunContext) -> float:
        timer = self._timer
        last = timer.last_triggered_step()
        if timer._every_steps is None or last is None:
            return next_iteration
        return _steps_until(last + timer._every_steps, next_iteration, run_context)

    def end(self, run_context: RunContext) -> None:
        summary.flush_all()


class NanTensorHook(Hook):
    """What to do when the loss becomes NaN or infinite: raise :class:`NanLossDuringTrainingError`
    (``fail_on_nan_loss=True``, TF's default and the Estimator's), or log and stop training.

    The loop keeps a device-side "all finite so far" flag and reads it only where the host waits anyway
    (steps whose loss is fetched, every save, the end), so this hook adds no synchronisation. Either way
    no checkpoint of non-finite weights is written.
    """

    def __init__(self, fail_on_nan_loss: bool = True) -> None:
        self.fail_on_nan_loss = bool(fail_on_nan_loss)


def _console_loggers() -> list[logging.Logger]:
    """The package's logger and the root logger, where they print to the terminal (stdout or stderr)."""
    found = []
    for log in (logging.getLogger(), logger):
        if any(type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
               for h in log.handlers):
            found.append(log)
    return found


class ProgressBarHook(Hook):
    """A tqdm progress bar (the notebook widget in notebooks): steps, total when known, rate, and the loss
    whenever another hook fetched it anyway. Adds no synchronisation.

    While the bar is open, log records that would print to the terminal go through ``tqdm.write``
    (``tqdm.contrib.logging.logging_redirect_tqdm``), so a log line never lands on the bar's line.
    :meth:`clear` erases the bar before other code prints (``predict`` calls it before yielding).
    """

    def __init__(self, total: int | None = None, desc: str = "train", unit: str = "step") -> None:
        self._total, self._desc, self._unit = total, desc, unit
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._cleared_at: float | None = None

    def begin(self) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.close()  # a hook reused for a second run
        self._bar = tqdm(total=self._total, desc=self._desc, unit=self._unit, dynamic_ncols=True)
        self._redirect = contextlib.ExitStack()
        loggers = _console_loggers()
        if loggers:
            self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers, tqdm_class=tqdm))

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        self._bar.update(1)
        if "loss" in run_values:
            self._bar.set_postfix(loss=f"{float(run_values['loss']):.4g}", refresh=False)

    def clear(self) -> None:
        """Erase the bar if it was drawn since the last call: the next update draws it again, below what
        was printed meanwhile. Costs one comparison when there is nothing to erase."""
        bar = self._bar
        if bar is not None and bar.last_print_t != self._cleared_at:
            bar.clear()
            self._cleared_at = bar.last_print_t

    def end(self, run_context: RunContext) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar and restore the logging handlers (idempotent; also for a run that failed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None


class ProfilerHook(Hook):
    """Profiles one step every N steps or seconds with ``torch.profiler`` and writes a Chrome trace,
    ``<output_dir>/<host>_<pid>.step<N>.pt.trace.json``, that Perfetto, chrome://tracing and TensorBoard's
    PyTorch profiler plugin open. As TF's, it never profiles the first step of a run (with ``save_steps=1``
the first trace is of the second step).

    Raises:
        ValueError: Unless exactly one of ``save_steps``/``save_secs`` is given and positive.
    """

    def __init__(
        self,
        save_steps: int | None = None,
        save_secs: float | None = None,
        output_dir: str = "",
        show_memory: bool = False,
        record_shapes: bool = False,
    ) -> None:
        _check_every_n("ProfilerHook", save_steps, save_secs, names=("save_steps", "save_secs"))
        self._timer = SecondOrStepTimer(every_secs=save_secs, every_steps=save_steps)
        self._output_dir, self._show_memory, self._record_shapes = output_dir, show_memory, record_shapes
        self._profiler: Any = None
        self._first_step = 0
        self.traces: list[str] = []

    def begin(self) -> None:
        self._timer.reset()

    def after_restore(self, run_context: RunContext) -> None:
        self._timer.update_last_triggered_step(run_context.global_step)
        self._first_step = run_context.global_step + 1

    def before_run(self, run_context: RunContext) -> None:
        step = run_context.global_step + 1
        # The first step of a run is never profiled (it pays for warm-up), even with save_steps=1: TF's.
        if step != self._first_step and self._timer.should_trigger_for_step(step):
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(
                activities=activities, profile_memory=self._show_memory, record_shapes=self._record_shapes
            )
            self._profiler.__enter__()
        return None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        if self._profiler is None:
            return
        import os
        import socket

        self._profiler.__exit__(None, None, None)
        step = run_context.global_step
        self._timer.update_last_triggered_step(step)
        output_dir = self._output_dir or run_context.model_dir or "."
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{socket.gethostname()}_{os.getpid()}.step{step}.pt.trace.json")
        self._profiler.export_chrome_trace(path)
        self.traces.append(path)
        logger.info("Saved a profile of step %d to %s", step, path)
        self._profiler = None

    def end(self, run_context: RunContext) -> None:
        if self._profiler is not None:  # the run stopped inside a profiled step
            self._profiler.__exit__(None, None, None)
            self._profiler = None


# The hooks whose calls the training loop schedules (exactly these classes; see HookList).
_SCHEDULED = frozenset({LoggingTensorHook, StepLoggingHook, StopAtStepHook, StepCounterHook, SummarySaverHook})


class FinalOpsHook(Hook):
    """Keeps end-of-run values: after ``evaluate``, the metrics (all, or those named); after ``train``,
    the final loss and global step. Read them from ``final_ops_values``."""

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self._names = list(names) if names is not None else None
        self.final_ops_values: dict[str, Any] | None = None

    def end(self, run_context: RunContext) -> None:
        results = run_context.results or {}
        if self._names is None:
            self.final_ops_values = dict(results)
            return
        missing = [n for n in self._names if n not in results]
        if missing:
            raise ValueError(f"FinalOpsHook: {missing} are not among the final values {sorted(results)}.")
        self.final_ops_values = {n: results[n] for n in self._names}
