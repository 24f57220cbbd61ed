"""``RunConfig``: how a run is carried out (where, how often to save and log, on which device).

A frozen dataclass: copies are made with :meth:`RunConfig.replace`, nothing is read from the environment
except in the explicit :meth:`RunConfig.from_env`.

Example:
    >>> config = RunConfig(save_checkpoints_steps=10)
    >>> (config.save_checkpoints_steps, config.save_checkpoints_secs)
    (10, None)
    >>> RunConfig().save_checkpoints_secs
    600
    >>> config.replace(save_checkpoints_secs=30).save_checkpoints_steps is None
    True
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["RunConfig"]


class _Unset:
    """Marks a checkpoint-frequency field that was not given (TF tells "not given" from ``None``)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
_DEFAULT_CHECKPOINT_SECS = 600
_PRECISIONS = ("32", "bf16", "fp16")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "an int >= %d%s" % (minimum, " or None" if allow_none else "")
        raise ValueError(f"RunConfig `{name}` must be {bound}; received {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Configuration of an Estimator's runs, with TF's fields and defaults where they mean something here.

    Args:
        model_dir: Where checkpoints, event files and evaluation results go.
        random_seed: Seeds python, numpy and torch at the start of every ``train``/``evaluate``/``predict``
            (TF's ``tf_random_seed``).
        save_summary_steps: Write TensorBoard summaries every N steps; 0 or None disables them.
        save_checkpoints_steps: Save a checkpoint every N global steps.
        save_checkpoints_secs: Save a checkpoint every N seconds. When neither frequency is given, this is
            600 (TF's default); giving one clears the other; giving both is an error; both ``None``
            disables checkpointing. A private marker tells "not given" from ``None`` for this one rule.
        keep_checkpoint_max: Keep at most N recent checkpoints; 0 or None keeps all.
        keep_checkpoint_every_n_hours: Additionally keep one checkpoint per N hours forever.
        log_step_count_steps: Log loss and steps/sec every N steps; None disables both.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device such as ``"cuda:1"``.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a checkpointed gradient scaler).
        deterministic: Use deterministic algorithms (bit-identical resume on CUDA; slower kernels).
        progress_bar: Show a tqdm progress bar; None = only when the output is a terminal or notebook.

    Raises:
        ValueError: If a value is out of range or both checkpoint frequencies are given.
    """

    model_dir: str | None = None
    random_seed: int | None = None
    save_summary_steps: int | None = 100
    save_checkpoints_steps: int | None = _UNSET
    save_checkpoints_secs: int | float | None = _UNSET
    keep_checkpoint_max: int | None = 5
    keep_checkpoint_every_n_hours: float = 10000.0
    log_step_count_steps: int | None = 100
    device: str = "auto"
    precision: str = "32"
    deterministic: bool = False
    progress_bar: bool | None = None

    def __post_init__(self) -> None:
        steps, secs = self.save_checkpoints_steps, self.save_checkpoints_secs
        if steps is _UNSET and secs is _UNSET:
            steps, secs = None, _DEFAULT_CHECKPOINT_SECS
        else:
            steps = None if steps is _UNSET else steps
            secs = None if secs is _UNSET else secs
        if steps is not None and secs is not None:
            raise ValueError(
                f"RunConfig `save_checkpoints_steps` ({steps!r}) and `save_checkpoints_secs` ({secs!r}) "
                f"cannot both be set; give one of them (or both None to disable checkpointing)."
            )
        object.__setattr__(self, "save_checkpoints_steps", steps)
        object.__setattr__(self, "save_checkpoints_secs", secs)
        if self.model_dir is not None:
            if not isinstance(self.model_dir, (str, os.PathLike)):
                raise ValueError(f"RunConfig `model_dir` must be a path (str or os.PathLike) or None; received {self.model_dir!r}.")
            model_dir = os.fspath(self.model_dir)
            if isinstance(model_dir, bytes):
                model_dir = os.fsdecode(model_dir)
            if not model_dir:
                raise ValueError("RunConfig `model_dir` must be a non-empty path or None; received ''.")
            object.__setattr__(self, "model_dir", model_dir)
        if self.random_seed is not None:
            _check_int("random_seed", self.random_seed, 0, allow_none=True)
        _check_int("save_summary_steps", self.save_summary_steps, 0, allow_none=True)
        _check_int("save_checkpoints_steps", steps, 1, allow_none=True)
        if secs is not None and (isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs <= 0):
            raise ValueError(f"RunConfig `save_checkpoints_secs` must be a number > 0 or None; received {secs!r}.")
        _check_int("keep_checkpoint_max", self.keep_checkpoint_max, 0, allow_none=True)
        hours = self.keep_checkpoint_every_n_hours
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
            raise ValueError(f"RunConfig `keep_checkpoint_every_n_hours` must be a number > 0; received {hours!r}.")
        _check_int("log_step_count_steps", self.log_step_count_steps, 1, allow_none=True)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"RunConfig `device` must be 'auto' or a device string such as 'cpu' or 'cuda:0'; "
                f"received {self.device!r}."
            )
        if self.precision not in _PRECISIONS:
            raise ValueError(f"RunConfig `precision` must be one of {_PRECISIONS}; received {self.precision!r}.")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"RunConfig `deterministic` must be True or False; received {self.deterministic!r}.")
        if self.progress_bar is not None and not isinstance(self.progress_bar, bool):
            raise ValueError(f"RunConfig `progress_bar` must be True, False or None; received {self.progress_bar!r}.")

    @property
    def checkpointing_enabled(self) -> bool:
        """Whether checkpoints are saved at all (one of the two frequencies is set)."""
        return self.save_checkpoints_steps is not None or self.save_checkpoints_secs is not None

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with ``changes``; setting one checkpoint frequency clears the other (TF's rule).

        Raises:
            ValueError: If a name is not a field, or the result is invalid.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"RunConfig.replace: cannot replace {unknown}; allowed fields are {sorted(fields)}.")
        values = {name: getattr(self, name) for name in fields}
        steps_given = changes.get("save_checkpoints_steps") is not None
        secs_given = changes.get("save_checkpoints_secs") is not None
        if steps_given and not secs_given:
            values["save_checkpoints_secs"] = None
        if secs_given and not steps_given:
            values["save_checkpoints_steps"] = None
        values.update(changes)
        return RunConfig(**values)

    @classmethod
    def from_env(cls, **overrides: Any) -> RunConfig:
        """Build a config whose ``model_dir`` may come from ``TORCH_ESTIMATOR_MODEL_DIR``.

        The environment is read here and nowhere else; explicit ``overrides`` win.
        """
        values: dict[str, Any] = {}
        if os.environ.get("TORCH_ESTIMATOR_MODEL_DIR"):
            values["model_dir"] = os.environ["TORCH_ESTIMATOR_MODEL_DIR"]
        values.update(overrides)
        return cls(**values)
