"""Early stopping: training hooks that stop when the evaluation history says so (TF's ``early_stopping.py``).

The hooks read the evaluation results that ``evaluate`` (and so ``train_and_evaluate``) writes to
``model_dir/eval`` or ``model_dir/eval_<name>`` — pass ``name=`` for a named EvalSpec, the directory TF users
kept missing (tensorflow/tensorflow#25272) — and check them on a timer, every ``run_every_secs`` seconds or
every ``run_every_steps`` steps, the first check on the first step. A stop is requested through the run
context; training then ends after the current step and saves its final checkpoint.

Under ``torch.distributed`` every process runs the hook, and the Estimator agrees on stops: a stop that any
process requests (the chief always sees the evaluation results, which it writes) stops every process at the
same step, agreed every ``RunConfig.log_step_count_steps`` steps.

Example:
    >>> import tempfile
    >>> from torch_estimator import summary
    >>> eval_dir = tempfile.mkdtemp()
    >>> for step, loss in [(10, 0.5), (20, 0.4), (30, 0.45), (40, 0.41)]:
    ...     summary.write_summaries(eval_dir, {"loss": loss}, step)
    >>> summary.flush_all()
    >>> sorted(read_eval_metrics(eval_dir))
    [10, 20, 30, 40]
    >>> should_stop = _no_improvement_fn(eval_dir, "loss", 20, higher_is_better=False, min_steps=0)
    >>> should_stop()
    True
"""

from __future__ import annotations

import glob
import logging
import operator
import os
from collections.abc import Callable, Mapping
from typing import Any

from . import summary
from .hooks import Hook, RunContext, SecondOrStepTimer
from .protocols import EstimatorLike

__all__ = [
    "read_eval_metrics",
    "make_early_stopping_hook",
    "stop_if_higher_hook",
    "stop_if_lower_hook",
    "stop_if_no_increase_hook",
    "stop_if_no_decrease_hook",
]

logger = logging.getLogger("torch_estimator")

_DEFAULT_RUN_EVERY_SECS = 60


def read_eval_metrics(eval_dir: str) -> dict[int, dict[str, float]]:
    """The scalar evaluation results in ``eval_dir``'s event files, ``{global_step: {metric: value}}`` sorted
    by step (TF's ``read_eval_metrics``); empty when there are none yet."""
    return summary.read_scalars(eval_dir)


class _EvalHistory:
    """Reads an evaluation directory, parsing its event files again only when they changed (the hooks may
    check every step), and explains what it finds."""

    def __init__(self, eval_dir: str, metric_name: str) -> None:
        self.eval_dir, self.metric_name = eval_dir, metric_name
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._metrics: dict[int, dict[str, float]] = {}
        self._warned = False

    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        signature = []
        for path in sorted(glob.glob(os.path.join(glob.escape(self.eval_dir), "events.out.tfevents.*"))):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            signature.append((path, stat.st_size, stat.st_mtime_ns))
        return tuple(signature)

    def values(self, min_steps: int) -> list[tuple[int, float]]:
        """``(step, value)`` of the metric at every evaluation at or after ``min_steps``, in step order.

        Raises:
            ValueError: If there are evaluations but none of them reports the metric.
        """
        signature = self._files_signature()
        if signature != self._signature:
            self._signature, self._metrics = signature, read_eval_metrics(self.eval_dir)
        considered = {step: metrics for step, metrics in self._metrics.items() if step >= min_steps}
        if not considered:
            self._warn_if_elsewhere()
            return []
        values = [(step, metrics[self.metric_name]) for step, metrics in considered.items() if self.metric_name in metrics]
        if not values:
            reported = sorted({name for metrics in considered.values() for name in metrics})
            raise ValueError(
                f"Early stopping on metric {self.metric_name!r}, but the evaluations in {self.eval_dir} report "
                f"only {reported}. Use one of those names (the keys of evaluate()'s result), or point the hook "
                f"at the right evaluation with name=... or eval_dir=..."
            )
        return values

    def _warn_if_elsewhere(self) -> None:
        if self._warned or self._metrics:
            return
        parent = os.path.dirname(os.path.abspath(self.eval_dir))
        others = [
            d for d in sorted(glob.glob(os.path.join(glob.escape(parent), "eval*")))
            if os.path.abspath(d) != os.path.abspath(self.eval_dir)
            and glob.glob(os.path.join(glob.escape(d), "events.out.tfevents.*"))
        ]
        if others:
            self._warned = True
            logger.warning(
                "Early stopping reads %s, which holds no evaluation yet, while %s do; if the EvalSpec has a name, "
                "pass name=<that name> (or eval_dir=...) to the hook.", self.eval_dir, [os.path.basename(d) for d in others],
            )


def _threshold_fn(eval_dir: str, metric_name: str, threshold: float, higher: bool, min_steps: int) -> Callable[[], bool]:
    history = _EvalHistory(eval_dir, metric_name)
    crossed = operator.gt if higher else operator.lt
    relation = "greater than" if higher else "less than"

    def should_stop() -> bool:
        for step, value in history.values(min_steps):
            if crossed(value, threshold):
                logger.info('At step %s, metric "%s" has value %s which is %s the configured threshold (%s) for '
                            "early stopping.", step, metric_name, value, relation, threshold)
                return True
        return False

    return should_stop


def _no_improvement_fn(eval_dir: str, metric_name: str, max_steps_without: int, higher_is_better: bool,
                       min_steps: int) -> Callable[[], bool]:
    history = _EvalHistory(eval_dir, metric_name)
    better = operator.gt if higher_is_better else operator.lt
    change = "increase" if higher_is_better else "decrease"

    def should_stop() -> bool:
        best_value, best_step = None, 0
        for step, value in history.values(min_steps):
            if best_value is None or better(value, best_value):  # strict improvement only
                best_value, best_step = value, step
            if step - best_step >= max_steps_without:
                logger.info('No %s in metric "%s" for %s steps, which is greater than or equal to max steps (%s) '
                            "configured for early stopping.", change, metric_name, step - best_step, max_steps_without)
                return True
        return False

    return should_stop


class _StopOnPredicateHook(Hook):
    """Calls ``should_stop_fn`` on a timer (first on the first step) and requests a stop when it says so."""

    def __init__(self, should_stop_fn: Callable[[], bool], run_every_secs: float | None, run_every_steps: int | None) -> None:
        self._should_stop_fn = should_stop_fn
        self._timer = SecondOrStepTimer(every_secs=run_every_secs, every_steps=run_every_steps)

    def begin(self) -> None:
        self._timer.reset()

    def after_run(self, run_context: RunContext, run_values: Mapping[str, Any]) -> None:
        step = run_context.global_step
        if not self._timer.should_trigger_for_step(step):
            return
        self._timer.update_last_triggered_step(step)
        if self._should_stop_fn():
            logger.info("Requesting early stopping at global step %d", step)
            run_context.request_stop()


def _check_estimator(estimator: Any) -> None:
    if not callable(getattr(estimator, "eval_dir", None)):
        raise TypeError(f"`estimator` must be a torch_estimator.Estimator; received {type(estimator).__name__} {estimator!r}.")


def _check_schedule(run_every_secs: Any, run_every_steps: Any) -> tuple[float | None, int | None]:
    if run_every_steps is not None and run_every_secs == _DEFAULT_RUN_EVERY_SECS:
        run_every_secs = None  # run_every_steps replaces the default period
    if (run_every_secs is None) == (run_every_steps is None):
        raise ValueError(
            f"Early stopping: give exactly one of run_every_secs and run_every_steps; received "
            f"run_every_secs={run_every_secs!r}, run_every_steps={run_every_steps!r}."
        )
    steps_ok = isinstance(run_every_steps, int) and not isinstance(run_every_steps, bool) and run_every_steps > 0
    if run_every_steps is not None and not steps_ok:
        raise ValueError(f"Early stopping: run_every_steps must be an int > 0; received {run_every_steps!r}.")
    secs_ok = isinstance(run_every_secs, (int, float)) and not isinstance(run_every_secs, bool) and run_every_secs > 0
    if run_every_secs is not None and not secs_ok:
        raise ValueError(f"Early stopping: run_every_secs must be a number > 0; received {run_every_secs!r}.")
    return run_every_secs, run_every_steps


def make_early_stopping_hook(
    estimator: EstimatorLike,
    should_stop_fn: Callable[[], bool],
    run_every_secs: float | None = _DEFAULT_RUN_EVERY_SECS,
    run_every_steps: int | None = None,
) -> Hook:
    """A training hook that calls ``should_stop_fn()`` periodically and stops training when it returns True.

    Args:
        estimator: The Estimator being trained.
        should_stop_fn: A callable without arguments returning a bool.
        run_every_secs: Call it every this many seconds (default 60).
        run_every_steps: Call it every this many global steps instead; giving it replaces the default
            ``run_every_secs`` (TF required ``run_every_secs=None`` as well).

    Returns:
        A hook for ``Estimator.train(hooks=...)`` or ``TrainSpec(hooks=...)``.

    Raises:
        TypeError: If ``estimator`` is not an Estimator or ``should_stop_fn`` is not callable.
        ValueError: If both or neither of ``run_every_secs``/``run_every_steps`` are given, or one is not positive.
    """
    _check_estimator(estimator)
    if not callable(should_stop_fn):
        raise TypeError(f"`should_stop_fn` must be callable (no arguments, returns a bool); received {should_stop_fn!r}.")
    secs, steps = _check_schedule(run_every_secs, run_every_steps)
    return _StopOnPredicateHook(should_stop_fn, secs, steps)


def _resolve_eval_dir(estimator: EstimatorLike, eval_dir: str | os.PathLike[str] | None, name: str | None) -> str:
    _check_estimator(estimator)
    if eval_dir is not None and name is not None:
        raise ValueError(f"Early stopping: give eval_dir ({eval_dir!r}) or name ({name!r}), not both.")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"Early stopping: name must be the EvalSpec's name (a string); received {name!r}.")
    return os.fspath(eval_dir) if eval_dir is not None else estimator.eval_dir(name)


def _check_metric_name(metric_name: Any) -> None:
    if not isinstance(metric_name, str) or not metric_name:
        raise ValueError(f"Early stopping: metric_name must be a non-empty string; received {metric_name!r}.")


def _check_min_steps(min_steps: Any) -> None:
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
        raise ValueError(f"Early stopping: min_steps must be an int >= 0; received {min_steps!r}.")


def _threshold_hook(estimator: EstimatorLike, metric_name: str, threshold: float, higher: bool, eval_dir: Any, min_steps: int,
                    run_every_secs: float | None, run_every_steps: int | None, name: str | None) -> Hook:
    directory = _resolve_eval_dir(estimator, eval_dir, name)
    _check_metric_name(metric_name)
    _check_min_steps(min_steps)
    should_stop = _threshold_fn(directory, metric_name, threshold, higher, min_steps)
    return make_early_stopping_hook(estimator, should_stop, run_every_secs, run_every_steps)


def _no_improvement_hook(estimator: EstimatorLike, metric_name: str, max_steps_without: int, higher: bool, eval_dir: Any,
                         min_steps: int, run_every_secs: float | None, run_every_steps: int | None, name: str | None,
                         argument: str) -> Hook:
    directory = _resolve_eval_dir(estimator, eval_dir, name)
    _check_metric_name(metric_name)
    _check_min_steps(min_steps)
    if isinstance(max_steps_without, bool) or not isinstance(max_steps_without, int) or max_steps_without <= 0:
        raise ValueError(f"Early stopping: {argument} must be an int > 0; received {max_steps_without!r}.")
    should_stop = _no_improvement_fn(directory, metric_name, max_steps_without, higher, min_steps)
    return make_early_stopping_hook(estimator, should_stop, run_every_secs, run_every_steps)


def stop_if_higher_hook(
    estimator: EstimatorLike,
    metric_name: str,
    threshold: float,
    eval_dir: str | os.PathLike[str] | None = None,
    min_steps: int = 0,
    run_every_secs: float | None = _DEFAULT_RUN_EVERY_SECS,
    run_every_steps: int | None = None,
    *,
    name: str | None = None,
) -> Hook:
    """Stop training once some evaluation (at a step >= ``min_steps``) has ``metric_name > threshold``.

    Args:
        estimator: The Estimator being trained.
        metric_name: A key of the evaluation results, e.g. ``"accuracy"``.
        threshold: Stop when the metric is strictly above it.
        eval_dir: Where the evaluation results are; default ``estimator.eval_dir(name)``.
        min_steps: Ignore evaluations before this global step.
        run_every_secs: Check every this many seconds (default 60).
        run_every_steps: Check every this many global steps instead (it replaces the default ``run_every_secs``).
        name: The EvalSpec's name, for results in ``eval_<name>/`` (instead of ``eval_dir``).

    Returns:
        A training hook.

    Raises:
        ValueError: For both ``eval_dir`` and ``name``, a bad schedule or ``min_steps``; during training, if
            the evaluations never report ``metric_name`` (the message lists the metrics they do report).
    """
    return _threshold_hook(estimator, metric_name, threshold, True, eval_dir, min_steps, run_every_secs, run_every_steps, name)


def stop_if_lower_hook(
    estimator: EstimatorLike,
    metric_name: str,
    threshold: float,
    eval_dir: str | os.PathLike[str] | None = None,
    min_steps: int = 0,
    run_every_secs: float | None = _DEFAULT_RUN_EVERY_SECS,
    run_every_steps: int | None = None,
    *,
    name: str | None = None,
) -> Hook:
    """Stop training once some evaluation (at a step >= ``min_steps``) has ``metric_name < threshold``.

    Arguments, return value and errors as :func:`stop_if_higher_hook`.
    """
    return _threshold_hook(estimator, metric_name, threshold, False, eval_dir, min_steps, run_every_secs, run_every_steps, name)


def stop_if_no_increase_hook(
    estimator: EstimatorLike,
    metric_name: str,
    max_steps_without_increase: int,
    eval_dir: str | os.PathLike[str] | None = None,
    min_steps: int = 0,
    run_every_secs: float | None = _DEFAULT_RUN_EVERY_SECS,
    run_every_steps: int | None = None,
    *,
    name: str | None = None,
) -> Hook:
    """Stop training when ``metric_name`` has not strictly increased for ``max_steps_without_increase``
    global steps: walking the evaluations in step order, some evaluation is that many steps after the best
    one before it.

    Arguments, return value and errors as :func:`stop_if_higher_hook`, with ``max_steps_without_increase``
    (an int > 0) in place of ``threshold``.
    """
    return _no_improvement_hook(estimator, metric_name, max_steps_without_increase, True, eval_dir, min_steps,
                                run_every_secs, run_every_steps, name, "max_steps_without_increase")


def stop_if_no_decrease_hook(
    estimator: EstimatorLike,
    metric_name: str,
    max_steps_without_decrease: int,
    eval_dir: str | os.PathLike[str] | None = None,
    min_steps: int = 0,
    run_every_secs: float | None = _DEFAULT_RUN_EVERY_SECS,
    run_every_steps: int | None = None,
    *,
    name: str | None = None,
) -> Hook:
    """Stop training when ``metric_name`` has not strictly decreased for ``max_steps_without_decrease``
    global steps (e.g. the validation loss has plateaued).

    Arguments, return value and errors as :func:`stop_if_no_increase_hook`.
    """
    return _no_improvement_hook(estimator, metric_name, max_steps_without_decrease, False, eval_dir, min_steps,
                                run_every_secs, run_every_steps, name, "max_steps_without_decrease")
