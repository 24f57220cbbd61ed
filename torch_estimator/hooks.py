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

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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
    """

    __slots__ = ("mode", "global_step", "model_dir", "batch_size", "_stop_requested")

    def __init__(self, mode: str, global_step: int, model_dir: str | None = None) -> None:
        self.mode, self.global_step, self.model_dir = mode, global_step, model_dir
        self.batch_size = 0
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


class HookList:
    """Calls each hook point on every hook, in order."""

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        self.hooks: list[Any] = list(hooks)

    def extend(self, hooks: Iterable[Any]) -> None:
        self.hooks.extend(hooks)

    def begin(self) -> None:
        for hook in self.hooks:
            hook.begin()

    def after_restore(self, run_context: RunContext) -> None:
        for hook in self.hooks:
            if hasattr(hook, "after_restore"):
                hook.after_restore(run_context)

    def before_run(self, run_context: RunContext) -> set[str] | None:
        """The union of the names every hook wants this step, or None when none wants anything."""
        wanted: set[str] | None = None
        for hook in self.hooks:
            names = hook.before_run(run_context)
            if names:
                wanted = set(names) if wanted is None else wanted.union(names)
        return wanted

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        for hook in self.hooks:
            hook.after_run(run_context, run_values)

    def end(self, run_context: RunContext) -> None:
        for hook in self.hooks:
            hook.end(run_context)


def check_hooks(argument: str, hooks: Any) -> list[Any]:
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


def _check_every_n(name: str, every_n_iter: Any, every_n_secs: Any, at_end: bool = False, allow_none: bool = False) -> None:
    if every_n_iter is not None and every_n_secs is not None:
        raise ValueError(f"{name}: give only one of every_n_iter/every_n_steps and every_n_secs.")
    if every_n_iter is None and every_n_secs is None and not (at_end or allow_none):
        raise ValueError(f"{name}: give at_end=True and/or exactly one of every_n_iter and every_n_secs.")
    if every_n_iter is not None and (isinstance(every_n_iter, bool) or not isinstance(every_n_iter, int) or every_n_iter <= 0):
        raise ValueError(f"{name}: every_n_iter/every_n_steps must be an int > 0; received {every_n_iter!r}.")
    if every_n_secs is not None and (not isinstance(every_n_secs, (int, float)) or every_n_secs <= 0):
        raise ValueError(f"{name}: every_n_secs must be > 0; received {every_n_secs!r}.")


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

    def end(self, run_context: RunContext) -> None:
        if self._at_end and self._last is not None:
            self._log(self._last, None)

    def _log(self, values: dict[str, Any], elapsed: float | None) -> None:
        if self._formatter is not None:
            logger.info(self._formatter(values))
            return
        line = ", ".join(f"{tag} = {value}" for tag, value in values.items())
        logger.info("%s (%.3f sec)" % (line, elapsed) if elapsed is not None else line)


class StopAtStepHook(Hook):
    """Requests a stop once the global step reaches ``last_step`` (or ``num_steps`` past the start).

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


class StepCounterHook(Hook):
    """Logs ``global_step/sec`` (and ``examples/sec``) every N steps or seconds; the first trigger only starts
    the clock, as TF's. Values go to ``summary_writer(tag, value, step)`` when one is given."""

    def __init__(
        self,
        every_n_steps: int | None = 100,
        every_n_secs: float | None = None,
        summary_writer: Callable[[str, float, int], None] | None = None,
    ) -> None:
        if every_n_secs is not None and every_n_steps == 100:
            every_n_steps = None
        _check_every_n("StepCounterHook", every_n_steps, every_n_secs)
        self._timer = SecondOrStepTimer(every_secs=every_n_secs, every_steps=every_n_steps)
        self._writer = summary_writer
        self._examples = 0

    def begin(self) -> None:
        self._timer.reset()

    def before_run(self, run_context: RunContext) -> None:
        self._examples += run_context.batch_size
        return None

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        step = run_context.global_step
        if not self._timer.should_trigger_for_step(step):
            return
        elapsed, steps = self._timer.update_last_triggered_step(step)
        examples, self._examples = self._examples, 0
        if elapsed is None or not steps or elapsed <= 0:
            return
        rate = steps / elapsed
        logger.info("global_step/sec: %g", rate)
        logger.info("examples/sec: %g", examples / elapsed)
        if self._writer is not None:
            self._writer("global_step/sec", rate, step)
            self._writer("examples/sec", examples / elapsed, step)
