"""Saving checkpoints into a ``model_dir``, with TF's rotation next to the save."""

from __future__ import annotations

import logging
import math
import os
import re
import time

from .files import discard, remove
from .format import checkpoint_path_for_step, step_of, write_checkpoint
from .index import (
    INDEX_NAME,
    CheckpointIndex,
    check_model_dir,
    checkpoint_files,
    make_writable_model_dir,
    read_index,
    write_index,
)
from .parts import Parts

__all__ = ["CheckpointManager"]

logger = logging.getLogger("torch_estimator")


_TEMP_RE = re.compile(r"^(model\.ckpt-\d+\.safetensors|" + re.escape(INDEX_NAME) + r")\.tmp\d+$")


class CheckpointManager:
    """Saves checkpoints into one ``model_dir`` and rotates them as TF's Saver did.

    ``keep_checkpoint_max`` newest checkpoints are kept (0 or None keeps all); one checkpoint per
    ``keep_checkpoint_every_n_hours`` is kept forever and leaves rotation (the index lists it under
    ``kept_forever_paths``). Rotation state is recovered from the index, so it continues across restarts.
    When the manager is created (one writer per ``model_dir``), what a crashed save left behind is cleaned
    up: temporary files, and a checkpoint that rotation had dropped from the index but not yet deleted.

    Raises:
        ValueError: If ``model_dir`` is a file (or inside one).
        PermissionError: If ``model_dir`` is not writable.
    """

    def __init__(self, model_dir: str, keep_checkpoint_max: int | None = 5,
                 keep_checkpoint_every_n_hours: float | None = 10000.0) -> None:
        self.model_dir = check_model_dir(model_dir)
        self._max = keep_checkpoint_max or 0
        hours = math.inf if keep_checkpoint_every_n_hours is None else keep_checkpoint_every_n_hours  # None: never
        self._every_secs = hours * 3600.0
        self._next_keep_time = time.time() + self._every_secs
        make_writable_model_dir(model_dir)
        for name in os.listdir(model_dir):
            if _TEMP_RE.match(name):  # a file, or a staging directory (see atomic_write)
                logger.info("Removing %s, left over by an interrupted save.", name)
                remove(os.path.join(model_dir, name))
        index = read_index(model_dir)
        self._kept: list[tuple[str, float]] = list(zip(index.paths, index.timestamps))
        self._forever: list[str] = list(index.kept_forever or ())
        if index.kept_forever is not None and self._kept:
            oldest = min(s for p, _ in self._kept if (s := step_of(p)) is not None)
            known = {p for p, _ in self._kept} | set(self._forever)
            for step, path in checkpoint_files(model_dir):
                if step < oldest and path not in known:
                    logger.info("Removing %s: rotation dropped it before a save was interrupted.", path)
                    remove(path)

    def save(self, global_step: int, parts: Parts) -> str:
        """Write ``model.ckpt-<global_step>.safetensors`` of ``parts`` (see :func:`.write_checkpoint`), then the
        index, then delete what rotation drops.

        Returns:
            The checkpoint's path.

        Raises:
            OSError: If the disk is full or the directory read-only: the message names the path, and the
                previous checkpoints and the index are unchanged (a new checkpoint file is removed again
                when the index cannot be written).
        """
        path = checkpoint_path_for_step(self.model_dir, global_step)
        existed = os.path.exists(path)
        write_checkpoint(path, global_step, parts)
        kept = [(p, t) for p, t in self._kept if p != path] + [(path, time.time())]
        forever, next_keep_time, dropped = list(self._forever), self._next_keep_time, []
        while self._max and len(kept) > self._max:
            old, stamp = kept.pop(0)
            if stamp > next_keep_time:
                next_keep_time += self._every_secs  # kept forever, no longer rotated
                forever.append(old)
            else:
                dropped.append(old)
        try:
            write_index(self.model_dir, CheckpointIndex(tuple(p for p, _ in kept), tuple(t for _, t in kept), tuple(forever)))
        except BaseException as error:
            if not existed:  # leave the directory as it was before this save
                leftover = discard(path)
                if leftover and isinstance(error, OSError):  # the original error wins, and says what is left
                    raise type(error)(error.errno, f"{error.strerror}{leftover}") from error
            raise
        self._kept, self._forever, self._next_keep_time = kept, forever, next_keep_time
        for old in dropped:
            remove(old)
        return path
