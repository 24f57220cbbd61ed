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
import math
import os
from collections.abc import Callable
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
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    wrong_type = isinstance(value, bool) or not isinstance(value, int)
    if wrong_type or value < minimum:
        bound = f"an int >= {minimum}{' or None' if allow_none else ''}"
        raise (TypeError if wrong_type else ValueError)(f"RunConfig `{name}` must be {bound}; received {value!r}.")


def _check_number(name: str, value: Any, bound: str, ok: Callable[[float], bool]) -> None:
    """A number (int or float, not bool) for which ``ok`` holds, else TypeError (not a number) or ValueError."""
    wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if wrong_type or not ok(value):
        raise (TypeError if wrong_type else ValueError)(f"RunConfig `{name}` must be {bound}; received {value!r}.")


def _check_bool(name: str, value: Any, allow_none: bool = False) -> None:
    if not isinstance(value, bool) and not (allow_none and value is None):
        raise TypeError(f"RunConfig `{name}` must be True{', False or None' if allow_none else ' or False'}; "
                        f"received {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Configuration of an Estimator's runs, with TF's fields and defaults where they mean something here.

    Args:
        model_dir: Where checkpoints, event files and evaluation results go.
        random_seed: TF's ``tf_random_seed``: seeds python, numpy and torch when the Estimator is built (so a
            ``model`` factory initialises reproducibly) and is ``numpy_input_fn``'s default shuffle seed. Later
            calls continue the RNG streams rather than re-seeding, so that training resumed from a checkpoint
            (which stores the RNG states) follows the uninterrupted trajectory; ``evaluate`` runs in a forked
            RNG state and does not disturb them.
        save_summary_steps: Write TensorBoard summaries every N steps; 0 or None disables them.
        save_checkpoints_steps: Save a checkpoint every N global steps.
        save_checkpoints_secs: Save a checkpoint every N seconds. When neither frequency is given, this is
            600 (TF's default); giving one clears the other; giving both is an error; both ``None``
            disables checkpointing. A private marker tells "not given" from ``None`` for this one rule.
        keep_checkpoint_max: Keep at most N recent checkpoints; 0 or None keeps all.
        keep_checkpoint_every_n_hours: Additionally keep one checkpoint per N hours forever; None keeps
            none for its age (only ``keep_checkpoint_max`` applies).
        log_step_count_steps: Log loss and steps/sec every N steps; None disables both.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device such as ``"cuda:1"``.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a checkpointed gradient scaler).
        deterministic: Use deterministic algorithms (bit-identical resume on CUDA; slower kernels).
        progress_bar: Show a tqdm progress bar; None = only when the output is a terminal or notebook.
        gradient_accumulation_steps: Micro-batches per optimizer step (the global step counts optimizer
            steps); with DDP, gradients are synchronised only on the last micro-batch.
        gradient_clip_norm: Clip the global gradient norm to this (after unscaling under fp16).
        gradient_clip_value: Clip each gradient element to ``[-v, v]`` (after unscaling under fp16).
        compile: Run the model through ``torch.compile`` (checkpoints and exports keep the plain module's keys):
            True, or one of torch.compile's modes: ``"reduce-overhead"`` (CUDA graphs on CUDA: the step is
            replayed as one launch, for loops bound by kernel launches), ``"max-autotune"``,
            ``"max-autotune-no-cudagraphs"``, ``"default"``.
        channels_last: Convert the model and 4-D input batches to the channels-last memory format.
        prefetch_batches: How many batches a background thread makes ahead of the step (input_fn's work,
            conversion and, on CUDA, the copy to the device on a side stream); 0 makes them in the step
            loop. None ("auto"): 2 on CUDA; elsewhere 2 when making a batch takes a noticeable share of the
            time between two (measured over the first batches), else 0; 0 with ``deterministic``. Batches
            made ahead of a stop requested by a hook are dropped; a checkpoint's input position counts only
            the batches consumed, so resuming stays exact. An input_fn drawing from the global random
            generators interleaves those draws with the step's when prefetched: give it its own generator
            (as ``numpy_input_fn`` does) for reproducible runs. Under glibc, the first prefetching thread
            fixes malloc's mmap and trim thresholds at the ceiling of glibc's own adaptive heuristic (32 MB and
            64 MB, process-wide), so that the thread's arena stops returning work buffers to the kernel after
            every operation; setting ``MALLOC_TRIM_THRESHOLD_`` (or any ``MALLOC_*_`` variable, or a
            ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``) leaves malloc as configured.
        find_unused_parameters: DistributedDataParallel's option of that name.
        static_graph: DistributedDataParallel's option of that name.
        distributed_timeout_secs: How long a collective waits for the other processes before failing.
        rank: This process's rank; None = from the launcher (``RANK``), read when the Estimator is built.
        world_size: The number of processes; None = from the launcher (``WORLD_SIZE``).
        local_rank: This process's rank on its machine (picks its GPU); None = from ``LOCAL_RANK``.

    Raises:
        TypeError: If a value has the wrong type (``save_checkpoints_steps=10.0``, ``device=0``).
        ValueError: If a value of the right type is out of range, or both checkpoint frequencies are given.
    """

    model_dir: str | None = None
    random_seed: int | None = None
    save_summary_steps: int | None = 100
    save_checkpoints_steps: int | None = _UNSET
    save_checkpoints_secs: int | float | None = _UNSET
    keep_checkpoint_max: int | None = 5
    keep_checkpoint_every_n_hours: float | None = 10000.0
    log_step_count_steps: int | None = 100
    device: str = "auto"
    precision: str = "32"
    deterministic: bool = False
    progress_bar: bool | None = None
    gradient_accumulation_steps: int = 1
    gradient_clip_norm: float | None = None
    gradient_clip_value: float | None = None
    compile: bool | str = False
    channels_last: bool = False
    prefetch_batches: int | None = None
    find_unused_parameters: bool = False
    static_graph: bool = False
    distributed_timeout_secs: float = 1800.0
    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None

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
                raise TypeError(f"RunConfig `model_dir` must be a path (str or os.PathLike) or None; received {self.model_dir!r}.")
            model_dir = os.fspath(self.model_dir)
            if isinstance(model_dir, bytes):
                model_dir = os.fsdecode(model_dir)
            if not model_dir:
                raise ValueError("RunConfig `model_dir` must be a non-empty path or None; received ''.")
            object.__setattr__(self, "model_dir", model_dir)
        if self.random_seed is not None:
            _check_int("random_seed", self.random_seed, 0, allow_none=True)
            if self.random_seed >= 2**64:  # torch.manual_seed's limit
                raise ValueError(f"RunConfig `random_seed` must be < 2**64; received {self.random_seed!r}.")
        _check_int("save_summary_steps", self.save_summary_steps, 0, allow_none=True)
        _check_int("save_checkpoints_steps", steps, 1, allow_none=True)
        if secs is not None:
            _check_number("save_checkpoints_secs", secs, "a number > 0 or None", ok=lambda v: v > 0)
        _check_int("keep_checkpoint_max", self.keep_checkpoint_max, 0, allow_none=True)
        hours = self.keep_checkpoint_every_n_hours
        if hours is not None:
            _check_number("keep_checkpoint_every_n_hours", hours, "a number > 0 or None", ok=lambda v: v > 0)
        _check_int("log_step_count_steps", self.log_step_count_steps, 1, allow_none=True)
        if not isinstance(self.device, str) or not self.device:
            raise (TypeError if not isinstance(self.device, str) else ValueError)(
                f"RunConfig `device` must be 'auto' or a device string such as 'cpu' or 'cuda:0'; "
                f"received {self.device!r}."
            )
        if self.device.partition(":")[0].strip().lower() == "meta":
            raise ValueError(
                f"RunConfig `device` {self.device!r} holds no data (meta tensors have shapes only); training, "
                f"evaluation and prediction need a real device: 'auto', 'cpu', 'cuda' or 'mps'."
            )
        if self.precision not in _PRECISIONS:
            raise (TypeError if not isinstance(self.precision, str) else ValueError)(
                f"RunConfig `precision` must be one of {_PRECISIONS}; received {self.precision!r}.")
        _check_bool("deterministic", self.deterministic)
        _check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, allow_none=False)
        _check_int("prefetch_batches", self.prefetch_batches, 0, allow_none=True)
        for name in ("gradient_clip_norm", "gradient_clip_value", "distributed_timeout_secs"):
            value = getattr(self, name)
            if value is None and name != "distributed_timeout_secs":
                continue
            _check_number(name, value, f"a finite number > 0{' or None' if 'clip' in name else ''}",
                          ok=lambda v: 0 < v < math.inf)  # NaN too
        if not isinstance(self.compile, bool) and self.compile not in _COMPILE_MODES:
            raise (TypeError if not isinstance(self.compile, str) else ValueError)(
                f"RunConfig `compile` must be True, False or one of torch.compile's modes {_COMPILE_MODES} "
                f"(\"reduce-overhead\" uses CUDA graphs); received {self.compile!r}."
            )
        for name in ("channels_last", "find_unused_parameters", "static_graph"):
            _check_bool(name, getattr(self, name))
        _check_int("world_size", self.world_size, 1, allow_none=True)
        _check_int("rank", self.rank, 0, allow_none=True)
        _check_int("local_rank", self.local_rank, 0, allow_none=True)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"RunConfig `rank` ({self.rank}) must be < `world_size` ({self.world_size}).")
        _check_bool("progress_bar", self.progress_bar, allow_none=True)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, summaries, exports and logs (rank 0)."""
        return not self.rank

    @property
    def checkpointing_enabled(self) -> bool:
        """Whether checkpoints are saved at all (one of the two frequencies is set)."""
        return self.save_checkpoints_steps is not None or self.save_checkpoints_secs is not None

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with ``changes``; setting one checkpoint frequency clears the other (TF's rule).

        Raises:
            ValueError: If a name is not a field (TF's error), or a value is out of range.
            TypeError: If a value has the wrong type.
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
        """Build a config from the environment: ``model_dir`` from ``TORCH_ESTIMATOR_MODEL_DIR``, and rank,
        world size and local rank from the launcher (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

        The Estimator does the latter by itself for fields left None. Explicit ``overrides`` win.
        """
        from .distribute import context_from_env

        context = context_from_env()
        values: dict[str, Any] = {"rank": context.rank, "world_size": context.world_size, "local_rank": context.local_rank}
        if os.environ.get("TORCH_ESTIMATOR_MODEL_DIR"):
            values["model_dir"] = os.environ["TORCH_ESTIMATOR_MODEL_DIR"]
        values.update(overrides)
        return cls(**values)
