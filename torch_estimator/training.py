"""``train_and_evaluate`` (TF's local mode) and ``run_evaluator`` (TF's evaluator task), in one process.

``train_and_evaluate`` makes one ``Estimator.train`` call; evaluation happens inside checkpoint saves, through
a saving listener: after each save (not the one at the start of training), the new checkpoint is evaluated
and the exporters run — every checkpoint that ``throttle_secs`` allows (the first one always), or at
``EvalSpec.every_n_steps`` — and once more at the end if the final checkpoint was not evaluated yet.

Improvements over TF, each kept compatible with TF's single-EvalSpec use:

- ``eval_spec`` may be a list of EvalSpecs with distinct names (say train, validation and test), each
  evaluated on its own schedule into ``eval_<name>/`` with its own exporters;
- evaluation uses the model already in memory: at a save, memory holds exactly the checkpoint just
  written, so nothing is rebuilt or read back (TF rebuilt the graph and restored the checkpoint each time);
  training continues exactly as without evaluation (model mode and random number generators are preserved);
- ``EvalSpec(every_n_steps=N)`` evaluates by global step instead of by time;
- ``BestExporter`` compares against the history of *its* EvalSpec's directory;
- when there is nothing left to train (``max_steps`` already reached), the final checkpoint is evaluated
  and its metrics returned, instead of TF's ``(None, None)``.

Example:
    >>> import numpy as np, tempfile, torch
    >>> import torch_estimator as te
    >>> def model_fn(features, labels, mode, model):
    ...     prediction = model(features).squeeze(1)
    ...     if mode == te.ModeKeys.PREDICT:
    ...         return te.EstimatorSpec(mode, predictions=prediction)
    ...     return te.EstimatorSpec(mode, loss=torch.nn.functional.mse_loss(prediction, labels))
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> y = x.sum(1)
    >>> est = te.Estimator(model_fn, model=torch.nn.Linear(3, 1), model_dir=tempfile.mkdtemp(),
    ...                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    ...                    config=te.RunConfig(device="cpu", save_checkpoints_steps=10, log_step_count_steps=None))
    >>> train_spec = te.TrainSpec(te.inputs.numpy_input_fn(x, y, batch_size=16, num_epochs=None, shuffle=True), max_steps=25)
    >>> eval_spec = te.EvalSpec(te.inputs.numpy_input_fn(x, y, batch_size=32, shuffle=False), steps=None, throttle_secs=0)
    >>> metrics, exports = te.train_and_evaluate(est, train_spec, eval_spec)
    >>> sorted(te.summary.read_scalars(est.eval_dir())), int(metrics["global_step"]), exports
    ([10, 20, 25], 25, [])
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch

from . import checkpoint as ckpt
from .estimator import Estimator
from .exporters import BestExporter
from .hooks import CheckpointSaverListener, SecondOrStepTimer
from .protocols import ExporterLike
from .spec import EvalSpec, TrainSpec

__all__ = ["train_and_evaluate", "run_evaluator"]

logger = logging.getLogger("torch_estimator")


def _checkpoint_step(path: str) -> int:
    step = ckpt.step_of(path)
    if step is None:
        raise ValueError(f"{path} is not named like a checkpoint (model.ckpt-<step>.safetensors).")
    return step


def _exporters(spec: EvalSpec) -> tuple[ExporterLike, ...]:
    """An EvalSpec's exporters: given as one or a list, kept as a tuple."""
    return cast(tuple[ExporterLike, ...], spec.exporters)


@contextlib.contextmanager
def _training_state_kept(estimator: Estimator) -> Iterator[None]:
    """Evaluate/export in the middle of training without disturbing it: keep the model's train/eval mode and
    every random number generator (python, numpy, torch, the device's)."""
    model = estimator.model
    was_training = model.training
    python_state, numpy_state = random.getstate(), np.random.get_state()
    device = estimator.device
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class _Evaluation:
    """One EvalSpec: its schedule, and its last evaluation and exports."""

    def __init__(self, estimator: Estimator, spec: EvalSpec, max_steps: int | None) -> None:
        self.estimator, self.spec, self.max_steps = estimator, spec, max_steps
        self.eval_dir = estimator.eval_dir(spec.name)
        self.export_base = os.path.join(estimator.model_dir, "export")
        for exporter in _exporters(spec):
            if isinstance(exporter, BestExporter):
                exporter._bind_eval_dir(self.eval_dir)
        by_time = spec.every_n_steps is None and spec.throttle_secs > 0
        self.timer = SecondOrStepTimer(every_secs=spec.throttle_secs) if by_time else None
        self.reference_step: int | None = None  # every_n_steps: the step its boundaries are counted from
        self.last_step: int | None = None  # the step of the last evaluated checkpoint
        self.last_path: str | None = None
        self.result: dict[str, Any] | None = None
        self.exports: list[str | None] = []

    def start(self, step: int) -> None:
        """Training (re)starts at ``step``: count ``every_n_steps`` boundaries from there; restart the throttle."""
        self.reference_step = step
        if self.timer is not None:
            self.timer.reset()

    def due(self, step: int) -> bool:
        """Whether the checkpoint at ``step`` is to be evaluated now."""
        if step == self.last_step:
            return False
        every = self.spec.every_n_steps
        if every is not None:
            reference = self.last_step if self.last_step is not None else self.reference_step
            return reference is None or step // every > reference // every or self.is_final(step)
        return self.timer is None or self.timer.should_trigger_for_step(step)

    def skip_reason(self) -> str:
        if self.spec.every_n_steps is not None:
            return f"every_n_steps={self.spec.every_n_steps}"
        return f"throttle secs ({self.spec.throttle_secs} secs)"

    def is_final(self, step: int) -> bool:
        return self.max_steps is not None and step >= self.max_steps

    def run(self, checkpoint_path: str, step: int, *, export: bool = True) -> None:
        """Evaluate ``checkpoint_path`` (the model in memory when it holds it) and run the exporters."""
        if self.timer is not None:
            self.timer.update_last_triggered_step(step)  # the throttle counts from the start of an evaluation
        spec, estimator = self.spec, self.estimator
        if not estimator.config.is_chief:
            return
        with _training_state_kept(estimator), estimator.evaluate_alone():
            result = estimator.evaluate(
                spec.input_fn, steps=spec.steps, hooks=list(spec.hooks or ()), checkpoint_path=checkpoint_path, name=spec.name
            )
            self.last_step, self.last_path, self.result = step, checkpoint_path, result
            self.exports = [None] * len(_exporters(spec))
            if not export:
                return
            final = self.is_final(int(result["global_step"]))
            self.exports = [
                exporter.export(
                    estimator=estimator,
                    export_path=os.path.join(self.export_base, exporter.name),
                    checkpoint_path=checkpoint_path,
                    eval_result=result,
                    is_the_final_export=final,
                )
                for exporter in _exporters(spec)
            ]


class _EvaluateAfterSave(CheckpointSaverListener):
    """TF's ``_NewCheckpointListenerForEvaluate``: evaluate after saves, skipping the one at the start."""

    def __init__(self, estimator: Estimator, evaluations: Sequence[_Evaluation]) -> None:
        self._estimator, self._evaluations = estimator, list(evaluations)
        self.begun = False
        self._first = True
        self._last_saved: int | None = None

    def begin(self) -> None:
        self.begun, self._first, self._last_saved = True, True, None

    def after_save(self, global_step: int) -> bool | None:
        self._last_saved = global_step
        if self._first:  # the start of training (step 0, or the resumed step): nothing trained yet
            self._first = False
            for evaluation in self._evaluations:
                evaluation.start(global_step)
            return None
        path = self._latest()
        for evaluation in self._evaluations:
            if evaluation.due(global_step):
                evaluation.run(path, global_step)
            else:
                logger.info("Skip the current checkpoint eval due to %s.", evaluation.skip_reason())
        return None

    def end(self, global_step: int) -> None:
        if self._last_saved is None:
            return
        path = None
        for evaluation in self._evaluations:
            if evaluation.last_step != self._last_saved:  # the final checkpoint, whatever the schedule
                path = path or self._latest()
                evaluation.run(path, self._last_saved)

    def _latest(self) -> str:
        path = self._estimator.latest_checkpoint()
        if path is None:
            raise RuntimeError("There was no new checkpoint after the training. Eval status: missing checkpoint.")
        return path


def _as_eval_specs(eval_spec: Any) -> list[EvalSpec]:
    specs = [eval_spec] if isinstance(eval_spec, EvalSpec) else eval_spec
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence) or not specs:
        raise TypeError(f"`eval_spec` must be an EvalSpec or a non-empty list of EvalSpecs; received {eval_spec!r}.")
    for spec in specs:
        if not isinstance(spec, EvalSpec):
            raise TypeError(
                f"`eval_spec` must contain torch_estimator.EvalSpec objects; received {type(spec).__name__} {spec!r}."
            )
    names = [spec.name or None for spec in specs]
    duplicates = sorted({str(n) for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Several EvalSpecs need distinct names (each writes to eval_<name>/); received names {names}, "
            f"with {duplicates} repeated. Name them, e.g. EvalSpec(..., name='validation')."
        )
    exporters = [exporter.name for spec in specs for exporter in _exporters(spec)]
    clashing = sorted({n for n in exporters if exporters.count(n) > 1})
    if clashing:
        raise ValueError(
            f"Exporter names must be unique across the EvalSpecs (each exports to model_dir/export/<name>/); "
            f"{clashing} appear more than once in {exporters}."
        )
    return list(specs)


def _check_estimator(estimator: Any, function: str) -> None:
    if not isinstance(estimator, Estimator):
        raise TypeError(f"`estimator` must be a torch_estimator.Estimator; received {type(estimator).__name__}.")
    world_size = estimator.config.world_size or 1
    if world_size > 1 and function == "run_evaluator":
        raise ValueError(
            f"run_evaluator is a single process that watches model_dir; this Estimator has world_size={world_size}. "
            f"Run the evaluator as its own process, outside torchrun."
        )


def _results(eval_spec: Any, evaluations: Sequence[_Evaluation]) -> Any:
    if isinstance(eval_spec, EvalSpec):
        return evaluations[0].result, evaluations[0].exports
    return ({e.spec.name: e.result for e in evaluations}, {e.spec.name: e.exports for e in evaluations})


def _log_schedule(estimator: Estimator, specs: Sequence[EvalSpec]) -> None:
    config = estimator.config
    logger.info(
        "Start train and evaluate loop. The evaluate will happen after every checkpoint. Checkpoint frequency is "
        "determined based on RunConfig arguments: save_checkpoints_steps %s or save_checkpoints_secs %s.",
        config.save_checkpoints_steps, config.save_checkpoints_secs,
    )
    for spec in specs:
        every, save = spec.every_n_steps, config.save_checkpoints_steps
        if every is not None and (save is None or every % save):
            logger.warning(
                "EvalSpec(name=%r, every_n_steps=%d): checkpoints are saved every %s, so evaluations happen at the "
                "first checkpoint at or after each multiple of %d; set RunConfig.save_checkpoints_steps to a divisor "
                "of %d to evaluate exactly on them.", spec.name, every,
                f"{save} steps" if save is not None else f"{config.save_checkpoints_secs} secs", every, every,
            )


def train_and_evaluate(estimator: Estimator, train_spec: TrainSpec, eval_spec: EvalSpec | Sequence[EvalSpec]) -> Any:
    """Train, evaluating and exporting after checkpoints, as TF's ``train_and_evaluate`` in local mode.

    One ``estimator.train(train_spec.input_fn, max_steps=train_spec.max_steps, ...)`` call; after every
    checkpoint save except the one at the start of training, each EvalSpec evaluates the new checkpoint (on
    the model in memory, which holds it) and runs its exporters, if its schedule allows:

    - ``throttle_secs`` (TF): the first checkpoint always, then a checkpoint only if ``throttle_secs`` passed
      since the previous evaluation started (otherwise it logs "Skip the current checkpoint eval due to
      throttle secs (N secs)."); 0 evaluates every checkpoint;
    - ``every_n_steps``: the first checkpoint at or after each multiple of N global steps.

    At the end, the final checkpoint is evaluated and exported if it was not yet, whatever the schedule.
    Exporters get ``export_path=model_dir/export/<exporter.name>`` and ``is_the_final_export`` is
    ``global_step >= train_spec.max_steps`` (always False when ``max_steps`` is None).
    ``EvalSpec.start_delay_secs`` is ignored here, as in TF's local mode.

    If the checkpoint in ``model_dir`` has already reached ``max_steps``, nothing is trained: that checkpoint
    is evaluated (its exporters ran when it was first evaluated and are not run again) and its metrics
    returned — TF returned ``(None, None)``.

    Args:
        estimator: The Estimator; its RunConfig must save checkpoints.
        train_spec: How to train.
        eval_spec: An EvalSpec, or a list of EvalSpecs with distinct names (and exporter names unique across
            them), each evaluated on its own schedule into its own ``eval_<name>/``.

    Returns:
        For one EvalSpec, TF's ``(eval_result, export_results)`` of the last evaluation: the metrics dict and
        one entry per exporter (the export directory, or None where it did not export). For a list,
        ``({name: eval_result}, {name: export_results})`` with the EvalSpecs' names as keys.

    Under torchrun every process trains; evaluation and export run on the chief (rank 0) alone, on its own
    batches, after its saves, while the other processes wait in their next step (within
    ``RunConfig.distributed_timeout_secs``). Other processes return ``(None, [])`` (TF returned None
    in distributed mode). Early-stopping hooks stop every process together (the Estimator agrees on stops).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If checkpointing is disabled, or several EvalSpecs or exporters share a name.
    """
    _check_estimator(estimator, "train_and_evaluate")
    if not isinstance(train_spec, TrainSpec):
        raise TypeError(f"`train_spec` must be a torch_estimator.TrainSpec; received {type(train_spec).__name__}.")
    specs = _as_eval_specs(eval_spec)
    if not estimator.config.checkpointing_enabled:
        raise ValueError(
            "train_and_evaluate evaluates after checkpoint saves, so checkpoints must be enabled: set "
            "RunConfig.save_checkpoints_steps or RunConfig.save_checkpoints_secs."
        )
    _log_schedule(estimator, specs)
    evaluations = [_Evaluation(estimator, spec, train_spec.max_steps) for spec in specs]
    listener = _EvaluateAfterSave(estimator, evaluations)
    estimator.train(
        train_spec.input_fn,
        hooks=list(train_spec.hooks or ()),
        max_steps=train_spec.max_steps,
        saving_listeners=[*(train_spec.saving_listeners or ()), listener],
    )
    if not listener.begun:  # max_steps was already reached: report the final checkpoint's evaluation
        path = estimator.latest_checkpoint()
        if path is not None:
            for evaluation in evaluations:
                evaluation.run(path, _checkpoint_step(path), export=False)
    return _results(eval_spec, evaluations)


class _CheckpointVanished(Exception):
    """The checkpoint was deleted (rotated away by the trainer) before it could be read."""


def run_evaluator(
    estimator: Estimator,
    eval_spec: EvalSpec | Sequence[EvalSpec],
    max_steps: int | None = None,
    *,
    poll_secs: float = 1.0,
    timeout_secs: float | None = None,
) -> Any:
    """Evaluate and export each new checkpoint a trainer writes to ``model_dir`` (TF's evaluator task).

    Waits ``start_delay_secs``, then polls ``model_dir`` every ``poll_secs`` for a new latest checkpoint.
    Each EvalSpec evaluates it when its schedule allows (``throttle_secs`` since its previous evaluation
    started, or a multiple of ``every_n_steps`` crossed); intermediate checkpoints may be skipped, as in TF.
    A checkpoint that the trainer rotates away between listing and reading is skipped for the newest one.
    Exporters run as in :func:`train_and_evaluate`.

    Args:
        estimator: An Estimator on the trainer's ``model_dir`` (its own model is loaded from each checkpoint).
        eval_spec: An EvalSpec, or a list of EvalSpecs with distinct names.
        max_steps: Exit once a checkpoint at or past this step is evaluated (by every EvalSpec); None polls
            until ``timeout_secs``, or forever.
        poll_secs: Seconds between looks at ``model_dir``.
        timeout_secs: Exit when no new checkpoint appeared for this long; None waits forever.

    Returns:
        As :func:`train_and_evaluate`: the last evaluation's ``(eval_result, export_results)``, or the dicts by
        name for a list of EvalSpecs (``(None, [])`` when nothing was evaluated).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``max_steps``, ``poll_secs`` or ``timeout_secs`` is out of range, names clash, or the
            Estimator runs in several processes.
    """
    _check_estimator(estimator, "run_evaluator")
    specs = _as_eval_specs(eval_spec)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0):
        raise ValueError(f"`max_steps` must be an int > 0 or None; received {max_steps!r}.")
    if isinstance(poll_secs, bool) or not isinstance(poll_secs, (int, float)) or not poll_secs > 0:
        raise ValueError(f"`poll_secs` must be a number > 0; received {poll_secs!r}.")
    timeout_ok = isinstance(timeout_secs, (int, float)) and not isinstance(timeout_secs, bool) and timeout_secs >= 0
    if timeout_secs is not None and not timeout_ok:
        raise ValueError(f"`timeout_secs` must be a number >= 0 or None; received {timeout_secs!r}.")
    evaluations = [_Evaluation(estimator, spec, max_steps) for spec in specs]
    delay = min(spec.start_delay_secs for spec in specs)
    if delay:
        logger.info("Waiting %s secs before starting to evaluate.", delay)
        time.sleep(delay)
    last_new, newest = time.monotonic(), None
    damaged: dict[tuple[str, int, int], str | None] = {}  # a damaged checkpoint -> the newest intact one then
    while not (max_steps is not None and all(e.last_step is not None and e.last_step >= max_steps for e in evaluations)):
        path = latest = estimator.latest_checkpoint()
        if path is not None and path != newest:
            newest, last_new = path, time.monotonic()
        identity = None if latest is None else ckpt.checkpoint_identity(latest)
        if identity in damaged:
            path = damaged[identity]
        try:
            acted = path is not None and _evaluate_checkpoint(evaluations, path)
        except ckpt.CheckpointCorruptError as error:
            if latest is None or path != latest or os.path.abspath(error.path) != os.path.abspath(latest):
                raise
            damaged[identity] = fallback = _newest_intact(estimator.model_dir)  # type: ignore[index]
            logger.warning("%s The evaluator uses the newest intact checkpoint instead: %s.", error, fallback)
            acted = fallback is not None and _evaluate_checkpoint(evaluations, fallback)
        if not acted:
            if timeout_secs is not None and time.monotonic() - last_new >= timeout_secs:
                logger.info("No new checkpoint in %s secs; the evaluator stops.", timeout_secs)
                break
            time.sleep(poll_secs)
    return _results(eval_spec, evaluations)


def _newest_intact(model_dir: str) -> str | None:
    """The newest checkpoint whose content checks out (damaged ones are skipped with a warning each); None
    when there is none yet, or every one is damaged (the evaluator then waits for a new one)."""
    try:
        return ckpt.latest_intact_checkpoint(model_dir)
    except ckpt.CheckpointCorruptError as error:
        logger.warning("%s The evaluator waits for a new checkpoint.", error)
        return None


def _evaluate_checkpoint(evaluations: Sequence[_Evaluation], path: str) -> bool:
    """Let each EvalSpec evaluate ``path`` if its schedule allows; True if one did (or the file vanished)."""
    step = _checkpoint_step(path)
    acted = False
    for evaluation in evaluations:
        if evaluation.last_path == path or not evaluation.due(step):
            if evaluation.spec.every_n_steps is not None and not evaluation.is_final(step):
                evaluation.last_path = path  # not on the schedule: wait for a newer checkpoint
            continue
        try:
            _run_guarded(evaluation, path, step)
        except _CheckpointVanished:
            logger.warning("Checkpoint %s was deleted (rotated away by the trainer) before it could be read; "
                           "moving on to the newest.", path)
            return True
        acted = True
    return acted


def _run_guarded(evaluation: _Evaluation, path: str, step: int) -> None:
    try:
        evaluation.run(path, step)
    except (FileNotFoundError, ValueError) as error:
        if os.path.exists(path):
            raise
        raise _CheckpointVanished(path) from error
