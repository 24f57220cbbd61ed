"""The NaN policy of one ``train`` call, in one object: which steps' losses are known finite, and what to do
when one is not (:class:`NanTensorHook` says: raise, TF's default, or log and stop).

Each step's detached loss is kept (a reference, no device work), or on the CPU its value (``loss.item()``: a
host read, no device to wait for, cheaper than keeping the tensor and stacking it later); the host looks at
them only where it waits anyway (a step whose loss a hook fetched, a save, the end of the run) or when
``buffer`` of them are pending. Before a save, the weights and optimizer state are checked too (a finite loss can hide a NaN
gradient), so no checkpoint of non-finite values is ever written.

Example:
    >>> import torch
    >>> from torch_estimator.hooks import RunContext
    >>> tracker = NanTracker(global_step=0, fail_on_nan_loss=False)
    >>> context = RunContext("train", 0)
    >>> tracker.losses.extend([torch.tensor(0.5), torch.tensor(float("nan"))])
    >>> tracker.check(context), context.stop_requested, tracker.broken
    (False, True, True)
    >>> tracker = NanTracker(global_step=0)
    >>> tracker.losses.extend([0.5, 0.25])  # host values, as the step on the CPU keeps them
    >>> tracker.check(context)
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .hooks import NanLossDuringTrainingError, NanTensorHook, RunContext
from .protocols import HookLike

__all__ = ["NanTracker"]

logger = logging.getLogger("torch_estimator")


def _first_bad(losses: Sequence[Any]) -> int | None:
    """The index of the first non-finite loss among ``losses`` (tensors, or host numbers), None when every
    one is finite."""
    if isinstance(losses[0], torch.Tensor):
        bad = ~torch.isfinite(torch.stack(list(losses)).float())
        return int(bad.int().argmax()) if bool(bad.any()) else None
    if math.isfinite(sum(losses)):  # NaN and infinity propagate; an overflow of the sum alone looks below
        return None
    return next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)


class NanTracker:
    """The finite-loss bookkeeping of a training run (see the module docstring).

    Args:
        global_step: The global step before the run's first step.
        fail_on_nan_loss: Raise :class:`NanLossDuringTrainingError` at a non-finite loss (True), or log it
            and request a stop (False).
        finite_step: The last global step whose weights are known finite (a restored checkpoint's), or None.
        buffer: Look at the pending losses once this many are kept, at the latest.

    Attributes:
        losses: The detached losses (or, on the CPU, their values) of the steps not looked at yet; the step
            appends to it.
        broken: Whether memory holds non-finite weights (the Estimator restores from disk next time).
    """

    def __init__(self, global_step: int, fail_on_nan_loss: bool = True, finite_step: int | None = None,
                 buffer: int = 1024) -> None:
        self.losses: list[Any] = []  # tensors, or host numbers (the step on the CPU)
        self.buffer = buffer
        self.broken = False
        self._checked_step = global_step
        self._fail = fail_on_nan_loss
        self._finite_step = finite_step
        self._diverged = False

    @classmethod
    def from_hooks(cls, hooks: Iterable[HookLike], global_step: int, finite_step: int | None = None,
                   buffer: int = 1024) -> NanTracker:
        """The policy the :class:`NanTensorHook` among ``hooks`` configures: raise unless every one of them
        says ``fail_on_nan_loss=False`` (raise without any)."""
        policies = [hook.fail_on_nan_loss for hook in hooks if isinstance(hook, NanTensorHook)]
        return cls(global_step, fail_on_nan_loss=not policies or any(policies), finite_step=finite_step, buffer=buffer)

    def all_finite(self) -> bool:
        """Whether every loss so far was finite (without acting on it)."""
        return not self._diverged and (not self.losses or _first_bad(self.losses) is None)

    def check(self, context: RunContext) -> bool:
        """True while every loss so far was finite; else raise, or (``fail_on_nan_loss=False``) log and stop.

        Raises:
            NanLossDuringTrainingError: At the first non-finite loss, under the raising policy.
        """
        if self._diverged:
            return False
        losses = self.losses
        if not losses:
            return True
        first_bad = _first_bad(losses)
        if first_bad is None:
            self._checked_step += len(losses)
            losses.clear()
            return True
        self.broken = True
        step = self._checked_step + first_bad + 1
        if self._fail:
            raise NanLossDuringTrainingError(
                f"NaN or infinite loss at global step {step} (the first bad step); training stopped and no "
                f"checkpoint of the broken weights was written. Lower the learning rate or check the input."
            )
        logger.error("Model diverged with loss = NaN at global step %d; stopping without saving.", step)
        self._diverged = True
        context.request_stop()
        return False

    def check_before_save(self, global_step: int, non_finite: list[str], model_dir: str) -> None:
        """Refuse a save of non-finite losses, weights or optimizer state (``non_finite``: the names of the
        tensors holding NaN or infinity).

        Raises:
            NanLossDuringTrainingError: If a loss so far, or a tensor, is not finite.
        """
        if not self.all_finite():  # the loop checks first; this guards every write
            raise NanLossDuringTrainingError("Refusing to save a checkpoint of non-finite weights.")
        if not non_finite:
            self._finite_step = global_step
            return
        self.broken = True
        since = self._finite_step
        when = (f"at global step {global_step}" if since is None or since >= global_step - 1
                else f"between global steps {since + 1} and {global_step} (they were finite at step {since})")
        raise NanLossDuringTrainingError(
            f"The weights or optimizer state became NaN or infinite {when}, while the loss stayed finite: a "
            f"non-finite gradient (e.g. sqrt or log of 0 or of a negative number hidden by torch.where or a mask) "
            f"or a non-finite optimizer setting. Non-finite: {non_finite[:8]}{' …' if len(non_finite) > 8 else ''}. "
            f"Training stopped and no checkpoint of them was written; the newest checkpoint in {model_dir} is "
            f"intact. Make the gradient finite (clamp the input of sqrt/log before torch.where selects it) or "
            f"check the optimizer's settings."
        )
