"""Exporters: what ``train_and_evaluate`` does with a model after evaluating it (TF's ``exporter.py``).

Each exporter writes to ``model_dir/export/<exporter.name>/<unix seconds>/`` through
``Estimator.export_saved_model`` and returns the export directory, or None when it did not export:

- :class:`LatestExporter` exports after every evaluation and keeps the newest ``exports_to_keep``;
- :class:`BestExporter` exports when the evaluation beats the best one so far (by default, a smaller
  ``loss``; :func:`metric_bigger` and :func:`metric_smaller` build a ``compare_fn`` on any metric);
- :class:`FinalExporter` exports once, at the end of training (``global_step >= TrainSpec.max_steps``).

Write your own by subclassing :class:`Exporter` (a ``name`` and an ``export`` method).

Example:
    >>> compare = metric_bigger("accuracy")
    >>> compare(best_eval_result={"accuracy": 0.8}, current_eval_result={"accuracy": 0.9})
    True
    >>> BestExporter(serving_input_receiver_fn=lambda: None, compare_fn=lambda best, current: True)
    Traceback (most recent call last):
    ...
    ValueError: BestExporter `compare_fn` must take exactly (best_eval_result, current_eval_result); ...
"""

from __future__ import annotations

import abc
import glob
import inspect
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from . import summary
from .protocols import EstimatorLike

__all__ = ["Exporter", "LatestExporter", "BestExporter", "FinalExporter", "metric_bigger", "metric_smaller"]

logger = logging.getLogger("torch_estimator")

CompareFn = Callable[..., bool]


class Exporter(abc.ABC):
    """Base class of the exporters that ``EvalSpec(exporters=...)`` runs after each evaluation."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The exporter's name: it exports into ``model_dir/export/<name>/``."""

    @abc.abstractmethod
    def export(
        self,
        estimator: EstimatorLike,
        export_path: str,
        checkpoint_path: str | None,
        eval_result: Mapping[str, Any],
        is_the_final_export: bool,
    ) -> str | None:
        """Export (or not) the model just evaluated.

        Args:
            estimator: The Estimator that was evaluated.
            export_path: ``model_dir/export/<name>``: create numbered export directories under it.
            checkpoint_path: The checkpoint that was evaluated.
            eval_result: The evaluation's result (metrics, ``loss`` and ``global_step``).
            is_the_final_export: True when training has reached ``TrainSpec.max_steps``.

        Returns:
            The export directory, or None when nothing was exported.
        """


def _check_name(owner: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{owner} `name` must be a non-empty string (it names export/<name>/); received {name!r}.")
    if name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{owner} `name` must be a single directory name, without path separators; received {name!r}.")
    return name


def _check_receiver_fn(owner: str, fn: Any) -> Callable[[], Any]:
    if not callable(fn):
        raise ValueError(
            f"{owner} `serving_input_receiver_fn` must be given: a callable returning the serving receiver "
            f"(e.g. torch_estimator.export.build_raw_serving_input_receiver_fn(...)); received {fn!r}."
        )
    return fn


def _check_assets_extra(owner: str, assets_extra: Any) -> Mapping[str, str] | None:
    if assets_extra is not None and not isinstance(assets_extra, Mapping):
        raise TypeError(
            f"{owner} `assets_extra` must be a dict of destination (relative to assets.extra/) to source path, "
            f"or None; received {assets_extra!r}."
        )
    return assets_extra


def _check_exports_to_keep(owner: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{owner} `exports_to_keep` must be an int > 0, or None to keep all; received {value!r}.")
    return value


def _export(estimator: EstimatorLike, export_path: str, receiver_fn: Callable[[], Any], assets_extra: Mapping[str, str] | None,
            checkpoint_path: str | None) -> str:
    path = estimator.export_saved_model(
        export_path, receiver_fn, assets_extra=assets_extra, checkpoint_path=checkpoint_path
    )
    return os.fsdecode(path)


def _numbered_exports(export_path: str) -> list[tuple[int, str]]:
    """The finished exports under ``export_path`` (numeric directory names), oldest first; ``temp-*`` and
    other names are not exports."""
    try:
        names = os.listdir(export_path)
    except FileNotFoundError:
        return []
    found = [(int(n), os.path.join(export_path, n)) for n in names if n.isdigit() and os.path.isdir(os.path.join(export_path, n))]
    return sorted(found)


def _garbage_collect(export_path: str, exports_to_keep: int | None) -> None:
    """Delete all but the newest ``exports_to_keep`` numbered exports (TF's export GC)."""
    if exports_to_keep is None:
        return
    exports = _numbered_exports(export_path)
    for _, path in exports[: max(0, len(exports) - exports_to_keep)]:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("Deleted an old export to keep the newest %d: %s", exports_to_keep, path)


class LatestExporter(Exporter):
    """Exports after every evaluation; keeps the newest ``exports_to_keep`` exports.

    Args:
        name: Exports go to ``model_dir/export/<name>/``.
        serving_input_receiver_fn: Declares what clients send (see ``Estimator.export_saved_model``).
        assets_extra: ``{destination relative to assets.extra/: source path}`` files to copy into each export.
        exports_to_keep: How many exports to keep (newest first); None keeps all.

    Raises:
        ValueError: For an empty name, a missing ``serving_input_receiver_fn`` or ``exports_to_keep <= 0``.
        TypeError: If ``assets_extra`` is not a dict.
    """

    def __init__(
        self,
        name: str,
        serving_input_receiver_fn: Callable[[], Any],
        assets_extra: Mapping[str, str] | None = None,
        exports_to_keep: int | None = 5,
    ) -> None:
        self._name = _check_name("LatestExporter", name)
        self._receiver_fn = _check_receiver_fn("LatestExporter", serving_input_receiver_fn)
        self._assets_extra = _check_assets_extra("LatestExporter", assets_extra)
        self._exports_to_keep = _check_exports_to_keep("LatestExporter", exports_to_keep)

    @property
    def name(self) -> str:
        return self._name

    def export(self, estimator: EstimatorLike, export_path: str, checkpoint_path: str | None, eval_result: Mapping[str, Any],
               is_the_final_export: bool) -> str | None:
        path = _export(estimator, export_path, self._receiver_fn, self._assets_extra, checkpoint_path)
        _garbage_collect(export_path, self._exports_to_keep)
        return path


class FinalExporter(Exporter):
    """Exports once, at the end of training: when ``global_step >= TrainSpec.max_steps``. Never exports
    when ``max_steps`` is None (training that ends with its input), as TF.

    Raises:
        ValueError: For an empty name or a missing ``serving_input_receiver_fn``.
    """

    def __init__(
        self,
        name: str,
        serving_input_receiver_fn: Callable[[], Any],
        assets_extra: Mapping[str, str] | None = None,
    ) -> None:
        self._name = _check_name("FinalExporter", name)
        self._receiver_fn = _check_receiver_fn("FinalExporter", serving_input_receiver_fn)
        self._assets_extra = _check_assets_extra("FinalExporter", assets_extra)

    @property
    def name(self) -> str:
        return self._name

    def export(self, estimator: EstimatorLike, export_path: str, checkpoint_path: str | None, eval_result: Mapping[str, Any],
               is_the_final_export: bool) -> str | None:
        if not is_the_final_export:
            return None
        return _export(estimator, export_path, self._receiver_fn, self._assets_extra, checkpoint_path)


def _metric(key: str, result: Mapping[str, Any] | None, which: str) -> Any:
    if not result or key not in result:
        raise ValueError(
            f"compare_fn needs {key!r} in {which}, which has {sorted(result or {})}; compare on a metric "
            f"that the evaluation reports (e.g. compare_fn=metric_bigger('accuracy'))."
        )
    return result[key]


def metric_smaller(key: str) -> CompareFn:
    """A ``compare_fn`` for :class:`BestExporter`: the current result is better when ``key`` is smaller.

    ``metric_smaller("loss")`` is the default (TF's ``_loss_smaller``).
    """

    def compare_fn(best_eval_result: Mapping[str, Any], current_eval_result: Mapping[str, Any]) -> bool:
        return bool(_metric(key, best_eval_result, "best_eval_result") > _metric(key, current_eval_result, "current_eval_result"))

    compare_fn.__name__ = compare_fn.__qualname__ = f"metric_smaller({key!r})"
    return compare_fn


def metric_bigger(key: str) -> CompareFn:
    """A ``compare_fn`` for :class:`BestExporter`: the current result is better when ``key`` is bigger.

    Example:
        >>> metric_bigger("accuracy")(best_eval_result={"accuracy": 0.9}, current_eval_result={"accuracy": 0.9})
        False
    """

    def compare_fn(best_eval_result: Mapping[str, Any], current_eval_result: Mapping[str, Any]) -> bool:
        return bool(_metric(key, best_eval_result, "best_eval_result") < _metric(key, current_eval_result, "current_eval_result"))

    compare_fn.__name__ = compare_fn.__qualname__ = f"metric_bigger({key!r})"
    return compare_fn


def _check_compare_fn(compare_fn: Any) -> CompareFn:
    if not callable(compare_fn):
        raise ValueError(f"BestExporter `compare_fn` must be a callable; received {compare_fn!r}.")
    names = [
        p.name for p in inspect.signature(compare_fn).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if sorted(names) != ["best_eval_result", "current_eval_result"]:
        raise ValueError(
            f"BestExporter `compare_fn` must take exactly (best_eval_result, current_eval_result); "
            f"{getattr(compare_fn, '__name__', compare_fn)!r} takes {names}. It is called by keyword and returns "
            f"True when current_eval_result is better, e.g. compare_fn=metric_bigger('accuracy')."
        )
    return compare_fn


class BestExporter(Exporter):
    """Exports when an evaluation is better than every earlier one, by ``compare_fn``.

    The best result so far is read from the evaluation event files at the first call for a ``model_dir``,
    from the evaluations *before* the current step (the current evaluation is already written), so:

    - the first evaluation of a fresh run exports;
    - a restarted run never exports a model worse than the best evaluated before (TF v2.2+ exported the
      first model after every restart, tensorflow/tensorflow#47396);
    - if ``export_path`` holds no export at all yet (say, the exporter was added on a restart), the first
      call exports whatever the history.

    Args:
        name: Exports go to ``model_dir/export/<name>/``.
        serving_input_receiver_fn: Declares what clients send (see ``Estimator.export_saved_model``).
        event_file_pattern: TF's glob of the evaluation event files, relative to ``model_dir`` (e.g.
            ``"eval_validation/*.tfevents.*"``); the directories of the matching files are read. None (the
            default) reads the evaluation directory of the EvalSpec this exporter belongs to in
            ``train_and_evaluate``/``run_evaluator`` — ``eval_<name>/`` for a named one, which TF's default
            ``eval/*.tfevents.*`` missed — and ``eval/`` elsewhere.
        compare_fn: ``compare_fn(best_eval_result, current_eval_result) -> bool``, True when the current
            result is better; exactly those argument names. Default: smaller ``loss``. One line on
            another metric: ``compare_fn=metric_bigger("accuracy")``.
        assets_extra: ``{destination relative to assets.extra/: source path}`` files to copy into each export.
        exports_to_keep: How many exports to keep (newest first); None keeps all.

    Raises:
        ValueError: For an empty name, a missing ``serving_input_receiver_fn``, a ``compare_fn`` with other
            argument names, or ``exports_to_keep <= 0``.
    """

    def __init__(
        self,
        name: str = "best_exporter",
        serving_input_receiver_fn: Callable[[], Any] | None = None,
        event_file_pattern: str | None = None,
        compare_fn: CompareFn | None = None,
        assets_extra: Mapping[str, str] | None = None,
        exports_to_keep: int | None = 5,
    ) -> None:
        self._name = _check_name("BestExporter", name)
        self._receiver_fn = _check_receiver_fn("BestExporter", serving_input_receiver_fn)
        if event_file_pattern is not None and (not isinstance(event_file_pattern, str) or not event_file_pattern):
            raise ValueError(
                f"BestExporter `event_file_pattern` must be a non-empty glob or None; received {event_file_pattern!r}."
            )
        self._event_file_pattern = event_file_pattern
        self._compare_fn = _check_compare_fn(metric_smaller("loss") if compare_fn is None else compare_fn)
        self._assets_extra = _check_assets_extra("BestExporter", assets_extra)
        self._exports_to_keep = _check_exports_to_keep("BestExporter", exports_to_keep)
        self._eval_dir: str | None = None  # set by train_and_evaluate / run_evaluator: the EvalSpec's directory
        self._loaded_for: str | None = None  # the model_dir whose history is loaded
        self._best_eval_result: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return self._name

    def _bind_eval_dir(self, eval_dir: str) -> None:
        """Read the history from ``eval_dir`` (``train_and_evaluate`` passes its EvalSpec's directory)."""
        if self._eval_dir is not None and os.path.abspath(eval_dir) != os.path.abspath(self._eval_dir):
            self._loaded_for = None  # another evaluation's history: reload it at the next call
        self._eval_dir = eval_dir

    def _history_dirs(self, estimator: EstimatorLike) -> list[str]:
        if self._event_file_pattern is not None:
            files = glob.glob(os.path.join(glob.escape(estimator.model_dir), self._event_file_pattern))
            return sorted({os.path.dirname(f) for f in files})
        return [self._eval_dir or estimator.eval_dir()]

    def _best_from_history(self, estimator: EstimatorLike, before_step: int) -> Mapping[str, Any] | None:
        best = None
        for directory in self._history_dirs(estimator):
            for step, scalars in summary.read_scalars(directory).items():
                if step >= before_step:
                    continue
                result = {**scalars, "global_step": step}
                if best is None or self._compare_fn(best_eval_result=best, current_eval_result=result):
                    best = result
        return best

    def export(self, estimator: EstimatorLike, export_path: str, checkpoint_path: str | None, eval_result: Mapping[str, Any],
               is_the_final_export: bool) -> str | None:
        if self._loaded_for != os.path.abspath(estimator.model_dir):
            self._loaded_for = os.path.abspath(estimator.model_dir)
            history = None
            if _numbered_exports(export_path):  # else nothing was exported yet: export whatever the history
                history = self._best_from_history(estimator, int(eval_result["global_step"]))
            if history is not None:
                logger.info("BestExporter %r: the best evaluation so far is at step %s: %s.", self._name,
                            history["global_step"], dict(history))
            self._best_eval_result = history
        best = self._best_eval_result
        if best is not None and not self._compare_fn(best_eval_result=best, current_eval_result=eval_result):
            logger.info("BestExporter %r: step %s is not better than step %s; not exporting.", self._name,
                        eval_result.get("global_step"), best.get("global_step"))
            return None
        path = _export(estimator, export_path, self._receiver_fn, self._assets_extra, checkpoint_path)
        self._best_eval_result = dict(eval_result)
        _garbage_collect(export_path, self._exports_to_keep)
        return path
