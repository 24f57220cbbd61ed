"""When to save during one ``train`` call: TF's schedule, and the listeners told about each save."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from ..protocols import SaverListenerLike

__all__ = ["CheckpointSaver"]

logger = logging.getLogger("torch_estimator")


class CheckpointSaver:
    """Saves at TF's moments: at the start of training, every N steps or seconds, and at the end.

    The start save is skipped when ``already_saved`` (the step is already on disk, unchanged); listeners
    are told about it all the same. A listener whose ``after_save`` returns True asks training to stop (TF's
    way): :attr:`stop_requested` turns True, and the loop passes the request on.

    Args:
        save_fn: ``save_fn(global_step) -> path`` writes one checkpoint.
        every_steps: Save when the global step has advanced this much since the last save.
        every_secs: Save when this many seconds have passed since the last save.
        listeners: Objects with ``begin``, ``before_save``, ``after_save`` and ``end``.
    """

    def __init__(
        self,
        save_fn: Any,
        every_steps: int | None = None,
        every_secs: float | None = None,
        listeners: Sequence[SaverListenerLike] = (),
    ) -> None:
        self._save_fn, self._every_steps, self._every_secs = save_fn, every_steps, every_secs
        self._listeners = list(listeners)
        self._last_step = -1
        self._last_time = 0.0
        self.stop_requested = False
        """True once a listener's ``after_save`` has returned True."""

    def begin(self, global_step: int, already_saved: bool) -> None:
        """Begin the listeners, then save ``global_step`` (or, when ``already_saved``, tell them it is saved)."""
        for listener in self._listeners:
            listener.begin()
        if already_saved:
            self._last_step, self._last_time = global_step, time.monotonic()
            self._notify(global_step, wrote=False)
        else:
            self.save(global_step)

    def next_save(self) -> tuple[float, float]:
        """When ``should_save`` next turns true: ``(global step, time.monotonic() deadline)``, the other one
        infinite; lets a loop check one number per step instead of calling ``should_save``."""
        if self._every_steps is not None:
            return self._last_step + self._every_steps, math.inf
        return math.inf, self._last_time + self._every_secs  # type: ignore[operator]

    def should_save(self, global_step: int) -> bool:
        if self._every_steps is not None:
            return global_step >= self._last_step + self._every_steps
        return time.monotonic() >= self._last_time + self._every_secs  # type: ignore[operator]

    def save(self, global_step: int) -> None:
        """Save ``global_step``, with the listeners' ``before_save`` and ``after_save`` around it."""
        for listener in self._listeners:
            listener.before_save(global_step)
        path = self._save_fn(global_step)
        logger.info("Saving checkpoints for %d into %s.", global_step, path)
        self._last_step, self._last_time = global_step, time.monotonic()
        self._notify(global_step, wrote=True)

    def _notify(self, global_step: int, wrote: bool) -> None:
        for listener in self._listeners:
            if not wrote:
                listener.before_save(global_step)
            if listener.after_save(global_step):
                self.stop_requested = True

    def end(self, global_step: int, save: bool = True) -> None:
        """Save the final step unless it is saved already (or ``save`` is False), then end the listeners."""
        if save and global_step != self._last_step:
            self.save(global_step)
        for listener in self._listeners:
            listener.end(global_step)
