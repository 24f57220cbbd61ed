"""``Estimator``: wires ``model_fn``, the model, the optimizer, checkpoints and hooks, and owns the step loop.

The state TF rebuilt on every call (model, optimizer, scheduler, grad scaler, global step) lives here, in
memory, between calls. The latest checkpoint on disk is the source of truth at the start of each
``train``/``evaluate``/``predict``: it is restored only when it differs from what is in memory.

Example:
    >>> import numpy as np, tempfile, torch
    >>> import torch_estimator as te
    >>> def model_fn(features, labels, mode, model):
    ...     prediction = model(features).squeeze(1)
    ...     if mode == te.ModeKeys.PREDICT:
    ...         return te.EstimatorSpec(mode, predictions=prediction)
    ...     return te.EstimatorSpec(mode, loss=torch.nn.functional.mse_loss(prediction, labels))
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> y = x @ np.array([1.0, -2.0, 0.5], dtype="float32")
    >>> est = te.Estimator(model_fn, model=torch.nn.Linear(3, 1), model_dir=tempfile.mkdtemp(),
    ...                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    ...                    config=te.RunConfig(device="cpu", log_step_count_steps=None))
    >>> _ = est.train(te.inputs.numpy_input_fn(x, y, batch_size=16, num_epochs=None, shuffle=True), steps=200)
    >>> metrics = est.evaluate(te.inputs.numpy_input_fn(x, y, batch_size=16, shuffle=False))
    >>> sorted(metrics), int(metrics["global_step"]), bool(metrics["loss"] < 1e-3)
    (['global_step', 'loss'], 200, True)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import itertools
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distribute, export, summary
from ._host import to_numpy as _to_host
from .grads import grad_clearer
from .hooks import (
    HookList,
    NanTensorHook,
    ProgressBarHook,
    RunContext,
    StepCounterHook,
    StepLoggingHook,
    SummarySaverHook,
    check_hooks,
)
from .inputs import InputContext, call_input_fn, iterate_batches
from .lock import ModelDirLock
from .metrics import MetricAccumulator
from .nan_tracking import NanTracker
from .prefetch import Prefetcher
from .protocols import HookLike
from .run_config import RunConfig
from .spec import EstimatorSpec, ModeKeys

__all__ = ["Estimator"]

logger = logging.getLogger("torch_estimator")

_MODEL_FN_ARGS = ("features", "labels", "mode", "params", "config", "model")
_EXPORT = "export"  # the model_fn arguments used when tracing an export
_RESERVED_METRICS = ("loss", "global_step")
_NO_VALUES: Mapping[str, Any] = {}
_NO_CONTEXT = contextlib.nullcontext()
_END = object()  # the end of the training input
_StepRunner = Callable[[Iterator[tuple[Any, Any, int]], "int | None", "Callable[[], float] | None", float],
                       "tuple[int, int, EstimatorSpec | None]"]


def _partial_keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """The keyword arguments a ``functools.partial`` (or a chain of them) binds: they are not the
    Estimator's to fill, whatever their names (TF's ``fn_args``)."""
    bound: set[str] = set()
    while isinstance(fn, functools.partial):
        bound.update(fn.keywords)
        fn = fn.func
    return frozenset(bound)


def _model_fn_args(model_fn: Callable[..., Any], params: Any) -> frozenset[str]:
    if model_fn is None or not callable(model_fn):
        raise ValueError(f"`model_fn` must be a callable returning an EstimatorSpec; received {model_fn!r}.")
    names = set()
    bound = _partial_keywords(model_fn)
    for name, parameter in inspect.signature(model_fn).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name in bound:
            continue
        if name not in _MODEL_FN_ARGS:
            raise ValueError(
                f"model_fn {getattr(model_fn, '__name__', model_fn)!r} has an unexpected argument {name!r}; "
                f"it may declare only {list(_MODEL_FN_ARGS)} (matched by name)."
            )
        names.add(name)
    if "features" not in names:
        raise ValueError(f"model_fn {getattr(model_fn, '__name__', model_fn)!r} must declare a `features` argument.")
    if params and "params" not in names:
        raise ValueError(f"`params` were given to the Estimator ({params!r}) but model_fn does not declare `params`.")
    return frozenset(names)


def _warnings_only(record: logging.LogRecord) -> bool:
    """Non-chief processes log warnings and errors only."""
    return record.levelno >= logging.WARNING


def _resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            index = torch.cuda.current_device() if local_rank is None else local_rank % torch.cuda.device_count()
            if local_rank is not None:
                torch.cuda.set_device(index)
            return torch.device("cuda", index)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"RunConfig `device` {name!r} is not a valid device: {error}.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"RunConfig `device` is {name!r} but CUDA is not available; use 'auto' or 'cpu'.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"RunConfig `device` is {name!r} but MPS is not available; use 'auto' or 'cpu'.")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _plain(value: Any) -> Any:
    """A metric as a plain Python number where it is a scalar (``0.8125``, not ``np.float64(0.8125)``):
    float32 values by their shortest repr (``0.6954324``, what TF printed), arrays unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (np.float32, np.float16)):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the fp16 gradients overflowed (the scaler will skip the step), after ``unscale_``.
    ``GradScaler.step`` reads the same flags on the host; reading them first adds no wait for the device,
    unlike reading the new scale after ``update()`` would."""
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
    flags = state.get("found_inf_per_device")
    if flags is None:  # a scaler whose internals differ: fall back to reading the scale
        return False
    return bool(sum(flag.item() for flag in flags.values()))


def _known_length(source: Any) -> int | None:
    """The number of batches an input yields, when it says (``len``); None for one that repeats or streams."""
    try:
        length = len(source)
    except TypeError:  # no __len__, or an input that repeats forever
        return None
    return length if isinstance(length, int) and length >= 0 else None


def _close_progress_bars(hooks: Iterable[Any]) -> None:
    """Close the progress bars among ``hooks``: also after a run that failed, so the bar and its logging
    redirection never outlive the run."""
    for hook in hooks:
        if isinstance(hook, ProgressBarHook):
            hook.close()


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"`{name}` must be an int > 0 or None; received {value!r}.")


class _HookedRun:
    """The hook-calling sequence that train, evaluate and predict share. Made at the start of a run: the hooks'
    ``begin``, the model put in the mode's train/eval state, their ``after_restore``. After each step the hooks
    observe, :meth:`values` fetches what they asked for; on the first step the hooks named in the spec join
    first (in time for that step's ``after_run``). :meth:`end` gives them the run's results.

    Between those, each loop calls ``before_run``/``after_run`` (training: ``before_step``/``after_step``,
    at the steps the hooks need) itself.
    """

    def __init__(self, estimator: Estimator, hooks: HookList, mode: str) -> None:
        self.hooks = hooks
        self.context = RunContext(mode, estimator._global_step, estimator.model_dir)
        self._fetch, self._is_chief, self._first = estimator._fetch, estimator._dist.is_chief, True
        hooks.begin()
        estimator._model.train(mode == ModeKeys.TRAIN)
        hooks.after_restore(self.context)

    def values(self, wanted: set[str] | None, spec: EstimatorSpec, global_step: int) -> Mapping[str, Any]:
        """The values ``wanted`` (with those of the spec's hooks, on the first step), fetched from ``spec``."""
        if self._first:
            self._first = False
            wanted = self.hooks.join(self._spec_hooks(spec), self.context, wanted)
        return self._fetch(wanted, spec, global_step) if wanted else _NO_VALUES

    def _spec_hooks(self, spec: EstimatorSpec) -> Sequence[HookLike]:
        if spec.mode == ModeKeys.TRAIN:
            return (*spec.training_hooks, *(spec.training_chief_hooks if self._is_chief else ()))
        return spec.evaluation_hooks if spec.mode == ModeKeys.EVAL else spec.prediction_hooks

    def end(self, results: dict[str, Any]) -> None:
        self.context.results = results
        self.hooks.end(self.context)


class Estimator:
    """Trains, evaluates and predicts with a ``model_fn``, as ``tf.estimator.Estimator`` did.

    Args:
        model_fn: ``model_fn(features, labels, mode, params, config, model) -> EstimatorSpec``; only
            ``features`` is required, the others are passed when declared (by name).
        model_dir: Where checkpoints and summaries go; else ``config.model_dir``; else a temporary directory.
        config: A :class:`RunConfig`; None for the defaults.
        params: Hyper-parameters passed to ``model_fn`` and ``input_fn`` (deep-copied).
        warm_start_from: A checkpoint file or directory, or :class:`~torch_estimator.checkpoint.WarmStartSettings`,
            loaded into the model when ``model_dir`` has no checkpoint yet.
        model: An ``nn.Module``, or a factory ``params -> nn.Module``. Placed on the device and checkpointed.
        optimizer: A factory ``parameters -> Optimizer``, or an Optimizer over ``model``'s parameters.
            Needed in TRAIN unless ``model_fn`` returns its own ``train_op``.
        lr_scheduler: A factory ``optimizer -> scheduler``, or a scheduler; stepped once per training step.

    Raises:
        ValueError: For a bad ``model_fn`` signature, conflicting model directories, or a bad config.
        TypeError: If ``model``, ``optimizer`` or ``lr_scheduler`` has the wrong type.
    """

    def __init__(
        self,
        model_fn: Callable[..., EstimatorSpec],
        model_dir: str | os.PathLike[str] | None = None,
        config: RunConfig | None = None,
        params: Mapping[str, Any] | None = None,
        warm_start_from: str | os.PathLike[str] | ckpt.WarmStartSettings | None = None,
        *,
        model: torch.nn.Module | Callable[[dict[str, Any]], torch.nn.Module],
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Any = None,
    ) -> None:
        if config is None:
            config = RunConfig()
        elif not isinstance(config, RunConfig):
            raise ValueError(f"`config` must be a torch_estimator.RunConfig; received {type(config).__name__}.")
        self._params = copy.deepcopy(dict(params or {}))
        self._fn_args = _model_fn_args(model_fn, self._params)
        self._model_fn = model_fn
        self._dist = self._resolve_distribution(config)
        config = self._config = config.replace(
            model_dir=ckpt.check_model_dir(self._resolve_model_dir(model_dir, config)),
            rank=self._dist.rank, world_size=self._dist.world_size, local_rank=self._dist.local_rank,
        )
        self._warm_start = self._resolve_warm_start(warm_start_from)
        self._device = _resolve_device(config.device, self._dist.local_rank if self._dist.is_distributed else None)
        distribute.ensure_process_group(self._dist, self._device, config.distributed_timeout_secs)
        if not self._dist.is_chief:
            logger.addFilter(_warnings_only)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if config.random_seed is not None:
            _seed_everything(config.random_seed)
        self._model = self._build_model(model)
        self._train_module, self._ddp = self._wrap_for_training()
        self._eval_module = self._compiled(self._model) if config.compile else self._model
        self._optimizer = self._build_optimizer(optimizer)
        # optimizer.zero_grad()'s effect, without its per-call wrapping (see grads.py)
        self._clear_grads = grad_clearer(self._optimizer) if self._optimizer is not None else None
        self._lr_scheduler = self._build_lr_scheduler(lr_scheduler)
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self._scaler = torch.amp.GradScaler(self._device.type, enabled=config.precision == "fp16")
        self._global_step = 0
        self._synced: tuple[str, int, int] | None = None  # identity of the checkpoint equal to memory
        self._pending_rng: ckpt.Checkpoint | None = None  # RNG state of a restore, for the next train()
        self._input_state: dict[str, Any] | None = None  # where the training input stopped
        self._warm_started = False
        self._checkpoints: ckpt.CheckpointManager | None = None
        self._fn_kwargs = {
            ModeKeys.TRAIN: self._static_kwargs(ModeKeys.TRAIN, self._train_module),
            ModeKeys.EVAL: self._static_kwargs(ModeKeys.EVAL, self._eval_module),
            ModeKeys.PREDICT: self._static_kwargs(ModeKeys.PREDICT, self._eval_module),
            _EXPORT: self._static_kwargs(ModeKeys.PREDICT, self._model),  # tracing needs the plain module
        }
        self._evaluating_alone = False  # set by evaluate_alone(): no collectives in evaluation
        # Under DDP, a stop one process requests (a listener, a hook, a NaN) is agreed every this many steps.
        self._stop_every = config.log_step_count_steps or 100
        logger.info("Using config: %s", self._config)

    # ------------------------------------------------------------------------------------------------
    # Construction helpers.

    @staticmethod
    def _resolve_model_dir(model_dir: Any, config: RunConfig) -> str:
        if model_dir is not None:
            model_dir = os.fspath(model_dir)
            if not model_dir:
                raise ValueError("`model_dir` must be a non-empty path; received ''.")
            if config.model_dir is not None and os.path.abspath(config.model_dir) != os.path.abspath(model_dir):
                raise ValueError(
                    f"`model_dir` is set both in the constructor ({model_dir!r}) and in RunConfig "
                    f"({config.model_dir!r}) with different values; set it in one place."
                )
            return model_dir
        if config.model_dir is not None:
            return config.model_dir
        model_dir = tempfile.mkdtemp(prefix="torch_estimator_")
        logger.warning("Using temporary folder as model directory: %s", model_dir)
        return model_dir

    @staticmethod
    def _resolve_distribution(config: RunConfig) -> distribute.DistributedContext:
        """Rank, world size and local rank: the config's where given, else the launcher's (read once, here)."""
        launcher = distribute.context_from_env() if None in (config.rank, config.world_size, config.local_rank) else None
        pick = lambda value, name: value if value is not None else getattr(launcher, name)  # noqa: E731
        return distribute.DistributedContext(
            rank=pick(config.rank, "rank"), world_size=pick(config.world_size, "world_size"),
            local_rank=pick(config.local_rank, "local_rank"),
        )

    def _wrap_for_training(self) -> tuple[torch.nn.Module | Callable[..., Any], Any]:
        """The module ``model_fn`` sees in TRAIN: DDP over the model when distributed, compiled if asked."""
        module: torch.nn.Module | Callable[..., Any] = self._model
        ddp = None
        if self._dist.is_distributed:
            module = ddp = distribute.wrap_ddp(
                self._model, self._device, find_unused_parameters=self._config.find_unused_parameters,
                static_graph=self._config.static_graph,
            )
        if self._config.compile:
            module = self._compiled(module)
        return module, ddp

    def _compiled(self, module: torch.nn.Module | Callable[..., Any]) -> Callable[..., Any]:
        mode = self._config.compile
        return torch.compile(module) if mode is True else torch.compile(module, mode=str(mode))

    @property
    def _cuda_graphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs: each step must then be marked as a new one, and
        a tensor kept across steps copied out of the graph's memory, which the next replay overwrites."""
        return self._device.type == "cuda" and self._config.compile in ("reduce-overhead", "max-autotune")

    @staticmethod
    def _resolve_warm_start(value: Any) -> ckpt.WarmStartSettings | None:
        if value is None or isinstance(value, ckpt.WarmStartSettings):
            return value
        if isinstance(value, (str, os.PathLike)):
            return ckpt.WarmStartSettings(os.fspath(value))
        raise ValueError(
            f"`warm_start_from` must be a checkpoint path, a model_dir or WarmStartSettings; received {value!r}."
        )

    def _build_model(self, model: Any) -> torch.nn.Module:
        if not isinstance(model, torch.nn.Module):
            if not callable(model):
                raise TypeError(f"`model` must be an nn.Module or a factory params -> nn.Module; received {model!r}.")
            if "model" not in self._fn_args:
                raise ValueError("`model` is a factory, so model_fn must declare a `model` argument to use it.")
            built = model(copy.deepcopy(self._params))
            if not isinstance(built, torch.nn.Module):
                raise TypeError(f"The `model` factory must return an nn.Module; it returned {type(built).__name__}.")
            model = built
        model = model.to(self._device)
        if self._config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self, optimizer: Any) -> torch.optim.Optimizer | None:
        if optimizer is None or isinstance(optimizer, torch.optim.Optimizer):
            if optimizer is not None:
                own = {id(p) for p in self._model.parameters()}
                foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
                if foreign:
                    raise ValueError(
                        f"`optimizer` updates {len(foreign)} tensors that are not parameters of `model`; "
                        f"pass a factory instead, e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.01)."
                    )
            return optimizer
        if not callable(optimizer):
            raise TypeError(f"`optimizer` must be an Optimizer or a factory parameters -> Optimizer; received {optimizer!r}.")
        built = optimizer(self._model.parameters())
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(f"The `optimizer` factory must return a torch.optim.Optimizer; it returned {type(built).__name__}.")
        return built

    def _build_lr_scheduler(self, scheduler: Any) -> Any:
        if scheduler is None:
            return None
        if self._optimizer is None:
            raise ValueError("`lr_scheduler` needs an `optimizer`; give the Estimator one.")
        if not (callable(getattr(scheduler, "step", None)) and callable(getattr(scheduler, "state_dict", None))):
            if not callable(scheduler):
                raise TypeError(f"`lr_scheduler` must be a scheduler or a factory optimizer -> scheduler; received {scheduler!r}.")
            scheduler = scheduler(self._optimizer)
            if not callable(getattr(scheduler, "step", None)):
                raise TypeError(f"The `lr_scheduler` factory must return a scheduler; it returned {type(scheduler).__name__}.")
        return scheduler

    def _static_kwargs(self, mode: str, module: torch.nn.Module | Callable[..., Any]) -> dict[str, Any]:
        available = {"mode": mode, "params": self._params, "config": self._config, "model": module}
        return {name: value for name, value in available.items() if name in self._fn_args}

    # ------------------------------------------------------------------------------------------------
    # Public properties and checkpoint accessors.

    @property
    def model_dir(self) -> str:
        return self._config.model_dir  # type: ignore[return-value]

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def params(self) -> dict[str, Any]:
        return copy.deepcopy(self._params)

    @property
    def model(self) -> torch.nn.Module:
        """The model in memory (weights of the last restored or trained state)."""
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    def eval_dir(self, name: str | None = None) -> str:
        """``model_dir/eval`` or ``model_dir/eval_<name>``."""
        return os.path.join(self.model_dir, f"eval_{name}" if name else "eval")

    def latest_checkpoint(self) -> str | None:
        """The path of the newest checkpoint in ``model_dir``, or None."""
        return ckpt.latest_checkpoint(self.model_dir)

    def _require_checkpoint(self) -> str:
        path = self.latest_checkpoint()
        if path is None:
            raise ValueError(f"Could not find a trained model in model_dir: {self.model_dir}.")
        return path

    def get_variable_names(self) -> list[str]:
        """Names of every tensor in the latest checkpoint (``model/…``, ``optimizer/…``) and ``global_step``.

        Raises:
            ValueError: If there is no checkpoint.
        """
        return list(ckpt.list_variables(self._require_checkpoint()))

    def get_variable_value(self, name: str) -> np.ndarray:
        """The value of one checkpointed tensor; a model tensor may be named without its ``model/`` prefix.

        Raises:
            ValueError: If there is no checkpoint or no such name (the message lists the names).
        """
        path = self._require_checkpoint()
        checkpoint = ckpt.read_checkpoint(path)
        if name == "global_step":
            return np.int64(checkpoint.global_step)
        names = ckpt.list_variables(path)
        key = name if name in names else f"model/{name}"
        if key not in names:
            raise ValueError(f"{name!r} is not in checkpoint {path}; names are {sorted(names)}.")
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as handle:
            return handle.get_tensor(key).numpy()

    # ------------------------------------------------------------------------------------------------
    # Keeping memory and disk in step.

    def _prepare(self, checkpoint_path: str | None = None, mode: str = ModeKeys.TRAIN) -> str | None:
        """Restore ``checkpoint_path`` (default: the latest) unless memory already holds it; warm-start a
        fresh model. Returns the checkpoint the model now holds, or None."""
        path = checkpoint_path or self.latest_checkpoint()
        if checkpoint_path is not None and not os.path.exists(checkpoint_path):
            raise ValueError(f"`checkpoint_path` {checkpoint_path} does not exist.")
        identity = None if path is None else ckpt.checkpoint_identity(path)
        # Training needs everything the checkpoint holds; evaluate, predict and export only the model (so a
        # model_dir trained with another optimizer still evaluates).
        full = mode == ModeKeys.TRAIN
        held = (self._synced,) if full else (self._synced, getattr(self, "_model_synced", None))
        if path is not None and (identity is None or identity not in held):
            parts = self._checkpoint_parts() if full else {"model": self._model}
            # The latest may be damaged, or rotated away by now: restore_latest falls back to the newest intact one.
            checkpoint = (ckpt.restore_checkpoint(path, parts) if checkpoint_path is not None
                          else ckpt.restore_latest(self.model_dir, parts))
            path = None if checkpoint is None else checkpoint.path
            if checkpoint is not None:
                self._global_step = checkpoint.global_step
                if full:
                    self._synced, self._pending_rng = checkpoint.identity, checkpoint
                    self._input_state = checkpoint.state.get("input")
                else:  # the optimizer's state in memory no longer belongs to these weights
                    self._synced, self._model_synced = None, checkpoint.identity
                logger.info("Restoring parameters from %s", path)
        if path is None:
            if self._warm_start is not None and not self._warm_started:
                ckpt.warm_start(self._model, self._warm_start)
                self._warm_started = True
            if mode != ModeKeys.TRAIN and self._global_step == 0:
                logger.info("Could not find trained model in model_dir: %s, running initialization to %s.",
                            self.model_dir, "evaluate" if mode == ModeKeys.EVAL else "predict")
            return None
        return path

    def _checkpoint_parts(self) -> dict[str, Any]:
        """What a checkpoint holds, by name (besides the input's position and the RNG states): the one place to
        add a part, such as EMA weights or a second optimizer."""
        return {"model": self._model, "optimizer": self._optimizer, "lr_scheduler": self._lr_scheduler,
                "grad_scaler": self._scaler}

    def _checkpoint_manager(self) -> ckpt.CheckpointManager:
        """The chief's writer, made at the first train(): it cleans up after a crashed save and checks that
        model_dir is writable before any step runs."""
        if self._checkpoints is None:
            self._checkpoints = ckpt.CheckpointManager(
                self.model_dir, self._config.keep_checkpoint_max, self._config.keep_checkpoint_every_n_hours
            )
        return self._checkpoints

    def _save(self, global_step: int, source: Any, nans: NanTracker) -> str:
        # One fused check and one wait for the device, at a save, where the host waits anyway.
        nans.check_before_save(global_step, ckpt.non_finite_tensors(ckpt.training_state_tensors(self._checkpoint_parts())),
                               self.model_dir)
        path = self._checkpoint_manager().save(global_step, {**self._checkpoint_parts(), "input": self._capture_input(source)})
        self._synced = ckpt.checkpoint_identity(path)
        return path

    @staticmethod
    def _capture_input(source: Any) -> dict[str, Any] | None:
        if isinstance(source, Prefetcher):  # the position after the batches consumed, not those made ahead
            return source.state_dict()
        if not callable(getattr(source, "state_dict", None)):
            return None
        return {**source.state_dict(), "fingerprint": getattr(source, "fingerprint", None)}

    def _resume(self, source: Any) -> None:
        """Continue where training stopped: the restored RNG state, and the input position when the input
        is recognisably the same (its fingerprint matches); otherwise the input starts fresh."""
        if self._pending_rng is not None:
            ckpt.apply_rng_state(self._pending_rng)
            self._pending_rng = None
        saved = self._input_state
        if saved is None or not callable(getattr(source, "load_state_dict", None)):
            return
        fingerprint = getattr(source, "fingerprint", None)
        if fingerprint != saved.get("fingerprint"):
            logger.info("The training input differs from the checkpoint's (%s vs %s); it starts fresh.",
                        fingerprint, saved.get("fingerprint"))
            return
        source.load_state_dict(saved)

    # ------------------------------------------------------------------------------------------------
    # Calling model_fn.

    def _call_model_fn(self, features: Any, labels: Any, mode: str, kwargs_key: str | None = None) -> EstimatorSpec:
        kwargs = self._fn_kwargs[kwargs_key or mode]
        if "labels" in self._fn_args:
            spec = self._model_fn(features=features, labels=labels, **kwargs)
        elif labels is not None and mode != ModeKeys.PREDICT:
            raise ValueError("model_fn does not declare `labels`, but input_fn returns labels.")
        else:
            spec = self._model_fn(features=features, **kwargs)
        return self._checked_spec(spec, mode)

    @staticmethod
    def _checked_spec(spec: Any, mode: str) -> EstimatorSpec:
        if not isinstance(spec, EstimatorSpec):
            raise TypeError(f"model_fn must return an EstimatorSpec; it returned {type(spec).__name__}.")
        if spec.mode != mode:
            raise ValueError(f"model_fn was called in mode {mode!r} but returned an EstimatorSpec for {spec.mode!r}.")
        return spec

    def _batches(self, input_fn: Callable[..., Any], mode: str) -> tuple[Any, Iterator[tuple[Any, Any, int]]]:
        context = InputContext(self._dist.world_size, self._dist.rank, self._dist.world_size)
        source = call_input_fn(
            input_fn, mode=mode, params=copy.deepcopy(self._params), config=self._config, input_context=context
        )
        set_epoch = getattr(getattr(source, "sampler", None), "set_epoch", None)
        if callable(set_epoch):  # a DistributedSampler: a new order per call
            set_epoch(self._global_step)
        return source, iterate_batches(source, self._device, self._config.channels_last)

    def _prefetcher(self, batches: Iterator[Any], limit: int | None, source: Any = None) -> Prefetcher | None:
        """A :class:`Prefetcher` over ``batches`` as ``RunConfig.prefetch_batches`` says (None when 0; "auto"
        is off with ``deterministic``, as a thread reading ahead interleaves its random draws with the step's)."""
        depth = self._config.prefetch_batches
        if depth == 0 or (depth is None and self._config.deterministic):
            return None
        state = None
        if callable(getattr(source, "state_dict", None)):
            state = lambda: self._capture_input(source)  # noqa: E731
        return Prefetcher(batches, depth, state=state, limit=limit or None, device=self._device)

    def _fetch(self, names: set[str], spec: EstimatorSpec, global_step: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        predictions = spec.predictions if isinstance(spec.predictions, Mapping) else {"predictions": spec.predictions}
        for name in names:
            if name == "loss" and spec.loss is not None:
                values[name] = _to_host(spec.loss)
            elif name == "global_step":
                values[name] = np.int64(global_step)
            elif name == "learning_rate" and self._optimizer is not None:
                rates = [group["lr"] for group in self._optimizer.param_groups]
                values[name] = _to_host(rates[0]) if len(rates) == 1 else [_to_host(r) for r in rates]
            elif name == "summaries":
                values[name] = self._summaries(spec)
            elif spec.fetches and name in spec.fetches:
                values[name] = _to_host(spec.fetches[name])
            elif name in predictions and predictions[name] is not None:
                values[name] = _to_host(predictions[name])
            else:
                named = [k for k, v in predictions.items() if v is not None]
                available = sorted({"loss", "global_step", "summaries", *named, *(spec.fetches or {})}
                                   | ({"learning_rate"} if self._optimizer is not None else set()))
                raise ValueError(
                    f"A hook requested {name!r}, which this step ({spec.mode}) does not have; available: {available}. "
                    f"Name it in the EstimatorSpec this mode returns: predictions={{{name!r}: ...}} or fetches={{{name!r}: ...}}."
                )
        return values

    def _summaries(self, spec: EstimatorSpec) -> dict[str, Any]:
        """Host values of the default summaries (TRAIN: loss and learning rates) and the spec's own."""
        values: dict[str, Any] = {}
        if spec.mode == ModeKeys.TRAIN:
            values["loss"] = _to_host(spec.loss)
            groups = self._optimizer.param_groups if self._optimizer is not None else []
            for i, group in enumerate(groups):  # several groups: named by their "name" entry, else numbered
                values["learning_rate" if len(groups) == 1 else f"learning_rate/{group.get('name', i)}"] = _to_host(group["lr"])
        if spec.summaries:
            values.update(summary.host_summaries(spec.summaries, _to_host))
        return values

    def _progress_enabled(self) -> bool:
        if self._config.progress_bar is not None:
            return self._config.progress_bar
        return sys.stderr.isatty() or "ipykernel" in sys.modules

    # ------------------------------------------------------------------------------------------------
    # Training.

    def train(
        self,
        input_fn: Callable[..., Any],
        hooks: list[Any] | None = None,
        steps: int | None = None,
        max_steps: int | None = None,
        saving_listeners: list[Any] | None = None,
    ) -> Estimator:
        """Train on ``input_fn``'s batches; ``steps`` more steps, up to ``max_steps``, or until the input ends.

        Args:
            input_fn: Returns the training batches.
            hooks: Extra :class:`~torch_estimator.Hook` objects.
            steps: Train this many more steps (incremental).
            max_steps: Train until the global step reaches this (absolute); a no-op once reached.
            saving_listeners: :class:`~torch_estimator.CheckpointSaverListener` objects called around saves.

        Returns:
            self, for chaining.

        Raises:
            ValueError: If both ``steps`` and ``max_steps`` are given, either is not positive, or listeners are
                given while checkpointing is disabled.
            NanLossDuringTrainingError: If the loss became NaN or infinite.
        """
        if steps is not None and max_steps is not None:
            raise ValueError(f"Give `steps` or `max_steps`, not both; received steps={steps}, max_steps={max_steps}.")
        _check_positive("steps", steps)
        _check_positive("max_steps", max_steps)
        hooks = check_hooks("hooks", hooks)
        listeners = self._check_listeners(saving_listeners)
        with self._training_lock():
            return self._train_locked(input_fn, hooks, steps, max_steps, listeners)

    @contextlib.contextmanager
    def _training_lock(self) -> Iterator[None]:
        """While the chief trains with checkpoints, it holds ``model_dir``'s lock (one writer per model_dir)
        and a checkpoint writer made under it; both end with the block, whatever ends it."""
        if not (self._config.checkpointing_enabled and self._dist.is_chief):
            yield
            return
        created = not os.path.isdir(self.model_dir)
        ckpt.make_writable_model_dir(self.model_dir)
        try:
            with ModelDirLock(self.model_dir):
                self._checkpoints = None  # a fresh writer: another trainer may have written since the last call
                try:
                    yield
                finally:
                    self._checkpoints = None
        finally:
            if created:  # a train() that failed before writing anything leaves no empty model_dir behind
                with contextlib.suppress(OSError):
                    os.rmdir(self.model_dir)

    def _train_locked(self, input_fn: Callable[..., Any], hooks: list[Any], steps: int | None,
                      max_steps: int | None, listeners: list[Any]) -> Estimator:
        path = self._prepare()
        self._model_synced = None  # from here on the model in memory moves on
        if max_steps is not None and max_steps <= self._global_step:
            logger.info("Skipping training since max_steps has already saved.")
            return self
        source, batches = self._batches(input_fn, ModeKeys.TRAIN)
        self._resume(source)
        last_step = max_steps if max_steps else (self._global_step + steps if steps else math.inf)
        remaining = None if last_step == math.inf else int(last_step - self._global_step)
        total = remaining if remaining is not None else _known_length(source)
        # With prefetching, the input's checkpointed position is the one after the last batch consumed.
        prefetcher = self._prefetcher(batches, remaining and remaining * self._config.gradient_accumulation_steps, source)
        position = source if prefetcher is None else prefetcher
        defaults = self._default_training_hooks(total)
        if any(isinstance(h, NanTensorHook) for h in hooks):  # the user's NaN policy replaces the default
            defaults = [h for h in defaults if not isinstance(h, NanTensorHook)]
        hook_list = HookList([*hooks, *defaults])
        nans = NanTracker.from_hooks(hook_list.hooks, self._global_step, self._global_step if path is not None else None)
        saver = None
        if self._config.checkpointing_enabled and self._dist.is_chief:
            self._checkpoint_manager()
            saver = ckpt.CheckpointSaver(
                lambda step: self._save(step, position, nans), self._config.save_checkpoints_steps,
                self._config.save_checkpoints_secs, listeners,
            )
        try:
            last_loss = self._train_loop(position if prefetcher is not None else batches, hook_list, saver,
                                         already_saved=path is not None and self._synced is not None,
                                         last_step=last_step, nans=nans)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped training is the one to report
                summary.flush_all()
            _close_progress_bars(defaults)
            raise
        finally:
            if nans.broken:  # memory holds broken weights: restore from disk next time
                self._synced = None
            if prefetcher is not None:
                prefetcher.close()
        try:
            summary.flush_all()
        finally:
            _close_progress_bars(defaults)
        self._input_state = self._capture_input(position)
        self._sync_after_training()
        if last_loss is None:
            logger.warning("Training with estimator made no steps. Perhaps input is empty or misspecified.")
        else:
            logger.info("Loss for final step: %s.", last_loss)
        return self

    def _sync_after_training(self) -> None:
        """Every process waits for the chief's last save, then knows its memory equals that checkpoint."""
        if not self._dist.is_distributed:
            return
        distribute.barrier()
        latest = self.latest_checkpoint()
        if not self._dist.is_chief and latest is not None and ckpt.step_of(latest) == self._global_step:
            self._synced = ckpt.checkpoint_identity(latest)

    def _check_listeners(self, listeners: Any) -> list[Any]:
        listeners = list(listeners or [])
        for listener in listeners:
            if not all(callable(getattr(listener, m, None)) for m in ("begin", "before_save", "after_save", "end")):
                raise TypeError(
                    f"`saving_listeners` must contain CheckpointSaverListener instances; received {listener!r}."
                )
        if listeners and not self._config.checkpointing_enabled:
            raise ValueError(
                "`saving_listeners` need checkpoints: set RunConfig.save_checkpoints_steps or save_checkpoints_secs."
            )
        return listeners

    def _default_training_hooks(self, total: int | None) -> list[HookLike]:
        """TF's defaults from RunConfig: NaN check, loss/step logging; on the chief, the step counter,
        summaries and a progress bar."""
        config = self._config
        hooks: list[HookLike] = [NanTensorHook()]
        if config.log_step_count_steps is not None:
            hooks.append(StepLoggingHook({"loss": "loss", "step": "global_step"}, every_n_iter=config.log_step_count_steps))
        if not self._dist.is_chief:
            return hooks
        if config.log_step_count_steps is not None:
            hooks.append(StepCounterHook(config.log_step_count_steps, output_dir=self.model_dir))
        if config.save_summary_steps:
            hooks.append(SummarySaverHook(save_steps=config.save_summary_steps, output_dir=self.model_dir))
        if self._progress_enabled():
            hooks.append(ProgressBarHook(total, desc="train"))
        return hooks

    def _train_loop(self, batches: Iterable[tuple[Any, Any, int]], hooks: HookList, saver: Any, already_saved: bool,
                    last_step: float, nans: NanTracker) -> float | None:
        """The step loop: batches, one step, the hooks, maybe a save; until ``last_step`` (``steps`` or
        ``max_steps``; infinity for none), the input's end or an (agreed) stop.

        Most steps are bare: the batch, the step, the global step. Everything else happens at iterations
        known in advance (``due``): a hook's period (see ``HookList.next_due``), a save, the NaN check of
        a full loss buffer, the last step, a stop agreement between processes; a hook without a period makes
        every step one of them. A save every N seconds is the one thing checked on every step (a clock read).
        """
        run = _HookedRun(self, hooks, ModeKeys.TRAIN)
        context = run.context
        if saver is not None:
            saver.begin(self._global_step, already_saved)
            if saver.stop_requested:
                context.request_stop()
        self._synced, spec = None, None  # from here on, memory runs ahead of disk
        stop = self._stop_agreed(context, now=True)
        start, pending, buffer = self._global_step, nans.losses, nans.buffer
        step_fn, run_steps = self._step_function(nans.losses)
        save_step, save_time = saver.next_save() if saver is not None else (math.inf, math.inf)
        clock = time.monotonic if save_time != math.inf else None
        iteration = examples = 0
        due: float = 0  # the next iteration the hooks, the saver or the NaN check need (inf: none)
        nan_check = functools.partial(nans.check, context)
        units = iter(() if stop or start >= last_step else self._units(batches))
        while True:
            if iteration < due and (clock is None or clock() < save_time):
                # The bare steps before the next one anything observes, in one call (no per-step bookkeeping;
                # with saves every N seconds, the clock read after each step ends them when the time is up).
                wanted_steps = due - iteration
                done, size, last = run_steps(units, None if wanted_steps == math.inf else int(wanted_steps), clock, save_time)
                if done:
                    iteration += done
                    examples += size
                    spec = last
                    self._global_step = start + iteration
            item: Any = next(units, _END)  # (the input ended when the bare steps fell short without a deadline)
            if item is _END:
                break
            features, labels, size = item
            context.global_step = self._global_step
            context._examples = examples = examples + size
            context.batch_size = size
            wanted = hooks.before_step(context, iteration)
            self._synced = None  # memory is about to be ahead of the last save (which set it)
            spec = step_fn(features, labels)
            values = run.values(wanted, spec, context.global_step)
            iteration += 1
            context.global_step = self._global_step = step = start + iteration
            fetched_loss = "loss" in values
            # The host waits for a fetched loss anyway: the NaN check looks then, after the hooks before the
            # NanTensorHook (TF's order: they see the step whose loss is NaN).
            if not hooks.after_step(context, values, iteration - 1, nan_check if fetched_loss else None) and fetched_loss:
                nans.check(context)
            if iteration == 1:  # the first step went through: TensorBoard's graph, once
                self._write_graph(features[0][0] if self._config.gradient_accumulation_steps > 1 else features)
            if len(pending) >= buffer:
                nans.check(context)
            if saver is not None and saver.should_save(step) and nans.check(context):
                saver.save(step)
                if saver.stop_requested:
                    context.request_stop()
                save_step, save_time = saver.next_save()
                due = iteration + 1  # the next step tells that memory is ahead of the save again
            if self._stop_agreed(context) or step >= last_step:
                break
            due = min(
                hooks.next_due(), iteration + buffer - len(pending), save_step - start - 1,
                last_step - start - 1, self._next_stop_agreement(step) - start - 1,
                due if due > iteration else math.inf,
            )
        finite = nans.check(context)
        if saver is not None:
            saver.end(self._global_step, save=finite)
        last_loss = None if spec is None else float(_to_host(spec.loss))
        run.end({"loss": last_loss, "global_step": self._global_step})
        return last_loss

    def _write_graph(self, features: Any) -> None:
        """The model's graph for TensorBoard, traced on the first batch once per model_dir (chief, with
        summaries on): one forward pass in eval mode, after the first step, outside the steady state."""
        if self._config.save_summary_steps and self._dist.is_chief:
            summary.write_graph(self.model_dir, self._model, features)
        return None

    def _next_stop_agreement(self, step: int) -> float:
        """The global step after which the processes next agree on stopping (none with one process)."""
        if not self._dist.is_distributed:
            return math.inf
        return (step // self._stop_every + 1) * self._stop_every

    def _stop_agreed(self, context: RunContext, now: bool = False) -> bool:
        """Whether to stop: the local request with one process; with several, every process's request,
        agreed by one tiny all-reduce every ``log_step_count_steps`` steps (never a collective per step)."""
        if not self._dist.is_distributed:
            return context.stop_requested
        if not now and self._global_step % self._stop_every:
            return False
        flag = torch.tensor([float(context.stop_requested)], device=self._device)
        return bool(distribute.all_reduce_sum(flag).item() > 0)

    def _units(self, batches: Iterable[tuple[Any, Any, int]]) -> Iterable[tuple[Any, Any, int]]:
        """What one step consumes: a batch, or (with gradient accumulation) ``(micro-batches, None, size)``."""
        count = self._config.gradient_accumulation_steps
        if count == 1:
            return batches
        return self._accumulated(iter(batches), count)

    @staticmethod
    def _accumulated(batches: Iterator[tuple[Any, Any, int]], count: int) -> Iterator[tuple[Any, Any, int]]:
        while True:
            micro = list(itertools.islice(batches, count))
            if len(micro) < count:
                if micro:
                    logger.warning("The input ended inside an accumulation of %d micro-batches; %d were dropped.", count, len(micro))
                return
            yield micro, None, sum(b[2] for b in micro)

    def _step_function(self, losses: list[Any]) -> tuple[Callable[[Any, Any], EstimatorSpec], _StepRunner]:
        """``step(features, labels) -> spec``: one training step, whose detached loss (on the CPU, its value)
        it appends to ``losses`` (for the NaN check); and ``run(batches, count, clock, deadline) -> (steps,
        examples, last spec)``: up to ``count`` (None: all) steps over the next ``(features, labels, size)`` of
        ``batches``, the steps no hook, save or check observes, in one call (ended early once ``clock()``, when
        given, reaches ``deadline``). The general step handles accumulation, mixed
        precision, clipping and custom train_ops; the plain one (the default configuration) is the
        hand-written loop plus the model_fn call and the loss kept, and its runner has it inline."""
        config = self._config
        if config.gradient_accumulation_steps > 1:
            accumulating: Callable[[Any, Any], EstimatorSpec] = lambda micro, _labels: self._train_step(micro, losses)  # noqa: E731
            return accumulating, self._runner(accumulating)
        general = lambda features, labels: self._train_step([(features, labels, 0)], losses)  # noqa: E731
        zero_grad = self._clear_grads
        if (zero_grad is None or self._optimizer is None or self._scaler.is_enabled() or self._autocast_dtype is not None
                or config.gradient_clip_norm is not None or config.gradient_clip_value is not None
                or self._cuda_graphs):
            return general, self._runner(general)
        model_fn, kwargs, takes_labels = self._model_fn, self._fn_kwargs[ModeKeys.TRAIN], "labels" in self._fn_args
        positional = self._positional_args(kwargs)  # model_fn(features, labels, *positional): no dict per call
        optimizer_step, keep = self._optimizer.step, losses.append
        # On the CPU the loss's value is read at once (no device to wait for): cheaper than keeping the
        # detached tensor alive and stacking the kept ones for the check.
        on_cpu = self._device.type == "cpu"
        scheduler_step = self._lr_scheduler.step if self._lr_scheduler is not None else None
        checked = self._checked_spec

        def call(features: Any, labels: Any) -> Any:
            if takes_labels:
                return model_fn(features=features, labels=labels, **kwargs)
            if labels is None:
                return model_fn(features=features, **kwargs)
            raise ValueError("model_fn does not declare `labels`, but input_fn returns labels.")

        # model_fn(features, labels, mode, model)-like signatures (the usual one) are called with their
        # values in place: no argument tuple built per step.
        two = positional is not None and len(positional) == 2
        first, second = positional if two else (None, None)  # type: ignore[misc]  # two values when two

        def step(features: Any, labels: Any) -> EstimatorSpec:
            zero_grad()
            if two:
                spec = model_fn(features, labels, first, second)
            elif positional is not None:
                spec = model_fn(features, labels, *positional)
            else:
                spec = call(features, labels)
            if spec.__class__ is not EstimatorSpec or spec.mode != "train":
                spec = checked(spec, ModeKeys.TRAIN)
            loss: torch.Tensor = spec.loss  # type: ignore[assignment]  # a TRAIN spec has one (EstimatorSpec checks)
            if spec.train_op is None:
                loss.backward()
                optimizer_step()
                if scheduler_step is not None:
                    scheduler_step()
            else:
                spec.train_op(loss)
            keep(loss.item() if on_cpu else loss.detach())
            return spec

        def run(batches: Iterator[tuple[Any, Any, int]], count: int | None, clock: Callable[[], float] | None,
                deadline: float) -> tuple[int, int, EstimatorSpec | None]:
            # step() inline: the same statements, without a call per step.
            done = examples = 0
            spec = None
            try:
                for features, labels, size in itertools.islice(batches, count):
                    zero_grad()
                    if two:
                        spec = model_fn(features, labels, first, second)
                    elif positional is not None:
                        spec = model_fn(features, labels, *positional)
                    else:
                        spec = call(features, labels)
                    if spec.__class__ is not EstimatorSpec or spec.mode != "train":
                        spec = checked(spec, ModeKeys.TRAIN)
                    loss: torch.Tensor = spec.loss  # type: ignore[assignment]  # a TRAIN spec has one
                    if spec.train_op is None:
                        loss.backward()
                        optimizer_step()
                        if scheduler_step is not None:
                            scheduler_step()
                    else:
                        spec.train_op(loss)
                    keep(loss.item() if on_cpu else loss.detach())
                    done += 1
                    examples += size
                    if clock is not None and clock() >= deadline:
                        break
            except BaseException:
                self._global_step += done  # the steps that went through
                raise
            return done, examples, spec

        return step, run

    def _runner(self, step: Callable[[Any, Any], EstimatorSpec]) -> _StepRunner:
        """The runner (see :meth:`_step_function`) calling ``step`` once per step."""

        def run(batches: Iterator[tuple[Any, Any, int]], count: int | None, clock: Callable[[], float] | None,
                deadline: float) -> tuple[int, int, EstimatorSpec | None]:
            done = examples = 0
            spec = None
            try:
                for features, labels, size in itertools.islice(batches, count):
                    spec = step(features, labels)
                    done += 1
                    examples += size
                    if clock is not None and clock() >= deadline:
                        break
            except BaseException:
                self._global_step += done  # the steps that went through
                raise
            return done, examples, spec

        return run

    def _positional_args(self, kwargs: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The values after ``features, labels`` when model_fn's parameters are exactly ``features, labels``
        and then names the Estimator passes, all positional-or-keyword; else None (call by keyword)."""
        try:
            parameters = list(inspect.signature(self._model_fn).parameters.values())
        except (TypeError, ValueError):
            return None
        names = [p.name for p in parameters]
        if (names[:2] != ["features", "labels"] or set(names[2:]) != set(kwargs) - {"features", "labels"}
                or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in parameters)):
            return None
        return tuple(kwargs[name] for name in names[2:])

    def _train_step(self, micro_batches: list[tuple[Any, Any, int]], losses: list[torch.Tensor]) -> EstimatorSpec:
        """Forward and backward through model_fn for each micro-batch, then one update: the spec's train_op,
        or the Estimator's optimizer (with unscaling, clipping and the scheduler). The detached loss goes to
        ``losses``."""
        if self._clear_grads is not None:
            self._clear_grads()
        if len(micro_batches) == 1:
            features, labels, _ = micro_batches[0]
            spec = self._forward_backward(features, labels, 1)
        else:
            spec = self._accumulate(micro_batches)
        if spec.train_op is None:
            self._apply_gradients()
        assert spec.loss is not None  # a TRAIN spec has one (EstimatorSpec checks)
        loss = spec.loss.detach()
        losses.append(loss.clone() if self._cuda_graphs else loss)
        return spec

    def _accumulate(self, micro_batches: list[tuple[Any, Any, int]]) -> EstimatorSpec:
        """Gradients of ``k`` micro-batches (DDP synchronises only the last); the spec's loss is their mean."""
        count, losses = len(micro_batches), []
        for i, (features, labels, _) in enumerate(micro_batches):
            with self._ddp.no_sync() if self._ddp is not None and i < count - 1 else _NO_CONTEXT:
                spec = self._forward_backward(features, labels, count)
            assert spec.loss is not None  # a TRAIN spec has one (EstimatorSpec checks)
            losses.append(spec.loss.detach())
        return spec.replace(loss=torch.stack(losses).mean())

    def _forward_backward(self, features: Any, labels: Any, count: int) -> EstimatorSpec:
        spec = self._forward(features, labels, ModeKeys.TRAIN)
        assert spec.loss is not None  # a TRAIN spec has one (EstimatorSpec checks)
        if spec.train_op is not None:
            if count > 1:
                raise ValueError("gradient_accumulation_steps > 1 needs the Estimator's optimizer; "
                                 "a custom train_op makes its own updates.")
            spec.train_op(spec.loss)
        elif self._optimizer is None:
            raise ValueError(
                "TRAIN needs a way to step: give the Estimator an `optimizer` (e.g. optimizer=lambda p: "
                "torch.optim.SGD(p, lr=0.01)) or return EstimatorSpec(mode, loss=..., train_op=callable)."
            )
        else:
            loss = spec.loss / count if count > 1 else spec.loss
            (self._scaler.scale(loss) if self._scaler.is_enabled() else loss).backward()
        return spec

    def _forward(self, features: Any, labels: Any, mode: str) -> EstimatorSpec:
        if self._cuda_graphs:  # a new step: the graphs may reuse the memory of the previous one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        if self._autocast_dtype is None:
            return self._call_model_fn(features, labels, mode)
        with torch.autocast(self._device.type, dtype=self._autocast_dtype):
            return self._call_model_fn(features, labels, mode)

    def _apply_gradients(self) -> None:
        """Clip (after unscaling under fp16), step the optimizer, and the scheduler unless fp16 skipped the step."""
        config, optimizer, scaler = self._config, self._optimizer, self._scaler
        assert optimizer is not None  # _forward_backward refused a step with neither optimizer nor train_op
        if scaler.is_enabled():
            scaler.unscale_(optimizer)  # clip the true gradients; the overflow check below reads its flags
        if config.gradient_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._model.parameters(), config.gradient_clip_norm)
        if config.gradient_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self._model.parameters(), config.gradient_clip_value)
        stepped = True
        if scaler.is_enabled():
            stepped = not _found_inf(scaler, optimizer)  # read on the host, as scaler.step() reads it anyway
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if self._lr_scheduler is not None and stepped:
            self._lr_scheduler.step()

    # ------------------------------------------------------------------------------------------------
    # Evaluation and prediction.

    def evaluate(
        self,
        input_fn: Callable[..., Any],
        steps: int | None = None,
        hooks: list[Any] | None = None,
        checkpoint_path: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Evaluate the latest (or given) checkpoint on ``input_fn``'s batches.

        Returns:
            The ``eval_metric_ops`` values, ``loss`` (the mean of per-batch losses) and ``global_step``, scalars
            as plain Python numbers (``float``, ``int``, ``bool``); array-valued metrics stay numpy arrays.

        Raises:
            ValueError: For a non-positive ``steps``, a reserved metric name, or a missing checkpoint path.
        """
        _check_positive("steps", steps)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"`name` must be a string or None; received {name!r}.")
        hooks = check_hooks("hooks", hooks)
        used = self._prepare(checkpoint_path, ModeKeys.EVAL)
        source, batches = self._batches(input_fn, ModeKeys.EVAL)
        if self._progress_enabled() and self._dist.is_chief:
            length = _known_length(source)
            hooks.append(ProgressBarHook(min(steps, length) if steps and length else steps or length,
                                         desc="evaluate", unit="batch"))
        was_training = self._model.training  # evaluate() may run inside training (a saving listener)
        prefetcher = self._prefetcher(batches, steps)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=self._rng_devices()):
                result = self._evaluate_loop(batches if prefetcher is None else prefetcher, HookList(hooks), steps)
        finally:
            if prefetcher is not None:
                prefetcher.close()
            self._model.train(was_training)
            _close_progress_bars(hooks)
        logger.info("Saving dict for global step %d: %s", self._global_step,
                    ", ".join(f"{k} = {v}" for k, v in sorted(result.items())))
        if self._dist.is_chief:
            written = {k: v for k, v in result.items() if k != "global_step"}
            if used is not None:
                written["checkpoint_path"] = summary.Text(used)
            try:
                summary.write_summaries(self.eval_dir(name), written, self._global_step)
                summary.flush_all()
            except OSError as error:  # a read-only or full model_dir: the evaluation itself stands
                logger.warning("The evaluation summaries could not be written (the metrics are returned): %s", error)
        return result

    @contextlib.contextmanager
    def evaluate_alone(self) -> Iterator[None]:
        """Within this block, ``evaluate`` uses only this process's batches and makes no collectives: for the
        chief evaluating inside training (``train_and_evaluate``) while the other processes wait."""
        previous, self._evaluating_alone = self._evaluating_alone, True
        try:
            yield
        finally:
            self._evaluating_alone = previous

    def _evaluate_loop(self, batches: Iterable[tuple[Any, Any, int]], hooks: HookList, steps: int | None) -> dict[str, Any]:
        """Accumulate loss and metrics over this process's batches (no host sync per batch); sum the
        sufficient statistics over all processes; finalize once."""
        accumulator, loss_sum, count = MetricAccumulator(), torch.zeros((), device=self._device), 0
        run = _HookedRun(self, hooks, ModeKeys.EVAL)
        context = run.context
        for features, labels, size in batches:
            context.batch_size = size
            wanted = hooks.before_run(context)
            spec = self._forward(features, labels, ModeKeys.EVAL)
            if count == 0:
                self._check_metric_names(spec)
            assert spec.loss is not None  # an EVAL spec has one (EstimatorSpec checks)
            loss_sum = loss_sum + spec.loss.detach().float()
            accumulator.update(spec.eval_metric_ops or {})
            hooks.after_run(context, run.values(wanted, spec, self._global_step))
            count += 1
            if steps is not None and count % max(1, steps // 10) == 0:
                logger.info("Evaluation [%d/%d]", count, steps)
            if count == steps or context.stop_requested:
                break
        collective = self._dist.is_distributed and not self._evaluating_alone
        totals = torch.stack([loss_sum, torch.tensor(float(count), device=self._device),
                              torch.tensor(float(count == 0), device=self._device)])
        if collective:
            totals = distribute.all_reduce_sum(totals)
        if totals[2].item() > 0:
            raise ValueError("evaluate: input_fn yielded no batches (on at least one process); give each at least one.")
        result = accumulator.compute(reduce=distribute.all_reduce_sum if collective else None)
        result["loss"] = _to_host(totals[0] / totals[1])
        result["global_step"] = self._global_step
        result = {name: _plain(value) for name, value in result.items()}
        run.end(result)
        return result

    @staticmethod
    def _check_metric_names(spec: EstimatorSpec) -> None:
        for reserved in _RESERVED_METRICS:
            if spec.eval_metric_ops and reserved in spec.eval_metric_ops:
                raise ValueError(
                    f"eval_metric_ops may not be named {reserved!r}: the Estimator reports {reserved!r} itself. "
                    f"Rename the metric."
                )

    def _rng_devices(self) -> list[int]:
        return [self._device.index or 0] if self._device.type == "cuda" else []

    def predict(
        self,
        input_fn: Callable[..., Any],
        predict_keys: str | list[str] | None = None,
        hooks: list[Any] | None = None,
        checkpoint_path: str | None = None,
        yield_single_examples: bool = True,
    ) -> Iterator[Any]:
        """Yield predictions for ``input_fn``'s batches: one per example, or whole batches.

        Nothing runs until the generator is iterated; it ends when the input does.

        Yields:
            Per example (or per batch), a dict of numpy arrays for dict predictions, else an array.

        Raises:
            ValueError: If ``predict_keys`` is used with tensor predictions or names no prediction, or the
                predictions' batch lengths differ.
        """
        hook_list = HookList(check_hooks("hooks", hooks))
        keys = [predict_keys] if isinstance(predict_keys, str) else predict_keys
        self._prepare(checkpoint_path, ModeKeys.PREDICT)
        source, batches = self._batches(input_fn, ModeKeys.PREDICT)
        bar = ProgressBarHook(_known_length(source), desc="predict", unit="batch") if self._progress_enabled() else None
        if bar is not None:
            hook_list.extend([bar])
        prefetcher = self._prefetcher(batches, None)
        try:
            yield from self._predict_loop(batches if prefetcher is None else prefetcher, hook_list, keys,
                                          yield_single_examples, bar)
        finally:  # also when the caller stops iterating early
            if prefetcher is not None:
                prefetcher.close()
            if bar is not None:
                bar.close()

    def _predict_loop(self, batches: Iterable[tuple[Any, Any, int]], hook_list: HookList, keys: list[str] | None,
                      yield_single_examples: bool, bar: ProgressBarHook | None) -> Iterator[Any]:
        run = _HookedRun(self, hook_list, ModeKeys.PREDICT)
        context = run.context
        for features, _labels, size in batches:
            context.batch_size = size
            wanted = hook_list.before_run(context)
            with torch.no_grad():
                spec = self._forward(features, None, ModeKeys.PREDICT)
            hook_list.after_run(context, run.values(wanted, spec, self._global_step))
            if bar is None:
                yield from self._split_predictions(spec.predictions, keys, yield_single_examples)
            else:
                for prediction in self._split_predictions(spec.predictions, keys, yield_single_examples):
                    bar.clear()  # the caller's prints go below the bar's last position, not onto its line
                    yield prediction
            if context.stop_requested:
                break
        run.end({"global_step": self._global_step})

    # ------------------------------------------------------------------------------------------------
    # Export.

    def export_saved_model(
        self,
        export_dir_base: str | os.PathLike[str],
        serving_input_receiver_fn: Callable[[], Any] | None,
        assets_extra: Mapping[str, str] | None = None,
        checkpoint_path: str | None = None,
        *,
        format: str = "torchscript",
    ) -> str:
        """Export the model for serving, as TF's ``export_saved_model``: ``<export_dir_base>/<unix seconds>/``.

        ``model_fn`` runs in PREDICT mode on the receiver's features; receiver preprocessing, model and
        output selection are captured in one artifact with a declared signature per export output, which
        verifies itself before it appears under its final name. See :mod:`torch_estimator.export`.

        Args:
            export_dir_base: The directory that receives one numbered directory per export.
            serving_input_receiver_fn: Returns a ``ServingInputReceiver`` (what clients send).
            assets_extra: ``{destination relative to assets.extra/: source path}`` files to copy.
            checkpoint_path: Export this checkpoint; default the latest, else the warm-start one.
            format: ``"torchscript"`` (``model.pt``), ``"pt2"`` (``torch.export``), ``"all"`` (both) or
                ``"aoti"`` (``model.aoti.pt2``, compiled by AOTInductor: faster, tied to this torch and machine).

        Returns:
            The export directory.

        Raises:
            ValueError: If there is no trained model, or the export fails its own verification.
        """
        if not serving_input_receiver_fn:
            raise ValueError("`serving_input_receiver_fn` must be given: it declares what clients send.")
        if checkpoint_path is None and self.latest_checkpoint() is None and self._warm_start is None:
            raise ValueError(f"Couldn't find trained model at {self.model_dir}.")
        self._prepare(checkpoint_path, ModeKeys.PREDICT)

        was_training = self._model.training  # an exporter may run inside training (a saving listener)
        self._model.eval()
        try:
            return export.export_saved_model(
                export_dir_base,
                serving_input_receiver_fn,
                predict_fn=lambda features: self._call_model_fn(features, None, ModeKeys.PREDICT, _EXPORT),
                model=self._model,
                global_step=self._global_step,
                device=self._device,
                assets_extra=assets_extra,
                format=format,
            )
        finally:
            self._model.train(was_training)

    @staticmethod
    def _split_predictions(predictions: Any, keys: list[str] | None, single: bool) -> Iterator[Any]:
        if not isinstance(predictions, Mapping):
            if keys:
                raise ValueError("`predict_keys` only applies to dict predictions; model_fn returned a Tensor.")
            array = _to_host(predictions)
            if single and np.ndim(array) == 0:
                raise ValueError("Predictions must have a batch dimension to yield single examples; model_fn returned "
                                 "a 0-dimensional tensor. Use yield_single_examples=False.")
            yield from (array if single else [array])
            return
        if keys:
            missing = [k for k in keys if k not in predictions]
            if missing:
                raise ValueError(f"`predict_keys` {missing} are not among the predictions {sorted(predictions)}.")
            predictions = {k: predictions[k] for k in keys}
        arrays = {k: _to_host(v) for k, v in predictions.items()}
        if not single:
            yield arrays
            return
        lengths = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ValueError(
                f"Predictions must share their batch length (first dimension) to yield single examples; "
                f"received lengths {lengths}. Use yield_single_examples=False."
            )
        for i in range(next(iter(lengths.values()))):  # type: ignore[arg-type]
            yield {k: v[i] for k, v in arrays.items()}

