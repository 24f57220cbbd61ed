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

import copy
import inspect
import logging
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from . import summary
from .hooks import (
    HookList,
    LoggingTensorHook,
    NanLossDuringTrainingError,
    NanTensorHook,
    ProgressBarHook,
    RunContext,
    StepCounterHook,
    StopAtStepHook,
    SummarySaverHook,
    check_hooks,
)
from .inputs import InputContext, batch_size_of, call_input_fn, iterate_batches, to_device
from .metrics import MetricAccumulator
from .run_config import RunConfig
from .spec import EstimatorSpec, ModeKeys

__all__ = ["Estimator"]

logger = logging.getLogger("torch_estimator")

_MODEL_FN_ARGS = ("features", "labels", "mode", "params", "config", "model")
_RESERVED_METRICS = ("loss", "global_step")
_NO_VALUES: Mapping[str, Any] = {}


def _model_fn_args(model_fn: Callable[..., Any], params: Any) -> frozenset[str]:
    if model_fn is None or not callable(model_fn):
        raise ValueError(f"`model_fn` must be a callable returning an EstimatorSpec; received {model_fn!r}.")
    names = set()
    for name, parameter in inspect.signature(model_fn).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
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


def _to_host(value: Any) -> Any:
    """A fetched value as numpy (scalars as numpy scalars), as TF's session.run returned."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        array = value.cpu().numpy()
        return array[()] if array.ndim == 0 else array
    return value


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"`{name}` must be an int > 0 or None; received {value!r}.")


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
        self._config = config.replace(model_dir=self._resolve_model_dir(model_dir, config))
        self._warm_start = self._resolve_warm_start(warm_start_from)
        self._device = _resolve_device(config.device)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if config.random_seed is not None:
            _seed_everything(config.random_seed)
        self._model = self._build_model(model)
        self._optimizer = self._build_optimizer(optimizer)
        self._lr_scheduler = self._build_lr_scheduler(lr_scheduler)
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self._scaler = torch.amp.GradScaler(self._device.type, enabled=config.precision == "fp16")
        self._global_step = 0
        self._synced: tuple[str, int, int] | None = None  # identity of the checkpoint equal to memory
        self._pending_rng: ckpt.Checkpoint | None = None  # RNG state of a restore, for the next train()
        self._input_state: dict[str, Any] | None = None  # where the training input stopped
        self._warm_started = False
        self._checkpoints: ckpt.CheckpointManager | None = None
        self._fn_kwargs = {mode: self._static_kwargs(mode) for mode in ModeKeys.ALL}
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
        return model.to(self._device)

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

    def _static_kwargs(self, mode: str) -> dict[str, Any]:
        available = {"mode": mode, "params": self._params, "config": self._config, "model": self._model}
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

    @staticmethod
    def _identity(path: str) -> tuple[str, int, int]:
        stat = os.stat(path)
        return (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)

    def _prepare(self, checkpoint_path: str | None = None, mode: str = ModeKeys.TRAIN) -> str | None:
        """Restore ``checkpoint_path`` (default: the latest) unless memory already holds it; warm-start a
        fresh model. Returns the checkpoint the model now holds, or None."""
        path = checkpoint_path or self.latest_checkpoint()
        if path is None:
            if self._warm_start is not None and not self._warm_started:
                ckpt.warm_start(self._model, self._warm_start)
                self._warm_started = True
            if mode != ModeKeys.TRAIN and self._global_step == 0:
                logger.info("Could not find trained model in model_dir: %s, running initialization to %s.",
                            self.model_dir, "evaluate" if mode == ModeKeys.EVAL else "predict")
            return None
        if not os.path.exists(path):
            raise ValueError(f"`checkpoint_path` {path} does not exist.")
        identity = self._identity(path)
        if identity != self._synced:
            checkpoint = ckpt.restore_checkpoint(
                path, model=self._model, optimizer=self._optimizer,
                lr_scheduler=self._lr_scheduler, grad_scaler=self._scaler,
            )
            self._global_step, self._synced, self._pending_rng = checkpoint.global_step, identity, checkpoint
            self._input_state = checkpoint.state.get("input")
            logger.info("Restoring parameters from %s", path)
        return path

    def _save(self, global_step: int, source: Any) -> str:
        if self._checkpoints is None:
            self._checkpoints = ckpt.CheckpointManager(
                self.model_dir, self._config.keep_checkpoint_max, self._config.keep_checkpoint_every_n_hours
            )
        if not bool(self._finite):  # the loop checks first; this guards every write
            raise NanLossDuringTrainingError("Refusing to save a checkpoint of non-finite weights.")
        path = self._checkpoints.save(
            global_step, model=self._model, optimizer=self._optimizer, lr_scheduler=self._lr_scheduler,
            grad_scaler=self._scaler, input_state=self._capture_input(source),
        )
        self._synced = self._identity(path)
        return path

    @staticmethod
    def _capture_input(source: Any) -> dict[str, Any] | None:
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

    def _call_model_fn(self, features: Any, labels: Any, mode: str) -> EstimatorSpec:
        kwargs = self._fn_kwargs[mode]
        if "labels" in self._fn_args:
            spec = self._model_fn(features=features, labels=labels, **kwargs)
        elif labels is not None and mode != ModeKeys.PREDICT:
            raise ValueError("model_fn does not declare `labels`, but input_fn returns labels.")
        else:
            spec = self._model_fn(features=features, **kwargs)
        if not isinstance(spec, EstimatorSpec):
            raise TypeError(f"model_fn must return an EstimatorSpec; it returned {type(spec).__name__}.")
        if spec.mode != mode:
            raise ValueError(f"model_fn was called in mode {mode!r} but returned an EstimatorSpec for {spec.mode!r}.")
        return spec

    def _batches(self, input_fn: Callable[..., Any], mode: str) -> tuple[Any, Iterator[tuple[Any, Any]]]:
        source = call_input_fn(
            input_fn, mode=mode, params=copy.deepcopy(self._params), config=self._config, input_context=InputContext()
        )
        return source, iterate_batches(source)

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
                available = sorted({"loss", "global_step", "learning_rate", *predictions, *(spec.fetches or {})})
                raise ValueError(f"A hook requested {name!r}, which this step does not have; available: {available}.")
        return values

    def _summaries(self, spec: EstimatorSpec) -> dict[str, Any]:
        """Host values of the default summaries (TRAIN: loss and learning rates) and the spec's own."""
        values: dict[str, Any] = {}
        if spec.mode == ModeKeys.TRAIN:
            values["loss"] = _to_host(spec.loss)
            groups = self._optimizer.param_groups if self._optimizer is not None else []
            for i, group in enumerate(groups):
                values["learning_rate" if len(groups) == 1 else f"learning_rate/{i}"] = _to_host(group["lr"])
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
        path = self._prepare()
        if max_steps is not None and max_steps <= self._global_step:
            logger.info("Skipping training since max_steps has already saved.")
            return self
        source, batches = self._batches(input_fn, ModeKeys.TRAIN)
        self._resume(source)
        stop = [StopAtStepHook(num_steps=steps, last_step=max_steps)] if steps or max_steps else []
        total = steps if steps else (max_steps - self._global_step if max_steps else None)
        defaults = self._default_training_hooks(total)
        if any(isinstance(h, NanTensorHook) for h in hooks):  # the user's NaN policy replaces the default
            defaults = [h for h in defaults if not isinstance(h, NanTensorHook)]
        hook_list = HookList([*hooks, *stop, *defaults])
        saver = None
        if self._config.checkpointing_enabled:
            saver = ckpt.CheckpointSaver(
                lambda step: self._save(step, source), self._config.save_checkpoints_steps,
                self._config.save_checkpoints_secs, listeners,
            )
        last_loss = self._train_loop(batches, hook_list, saver, already_saved=path is not None and self._synced is not None)
        self._input_state = self._capture_input(source)
        if last_loss is None:
            logger.warning("Training with estimator made no steps. Perhaps input is empty or misspecified.")
        else:
            logger.info("Loss for final step: %s.", last_loss)
        return self

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

    def _default_training_hooks(self, total: int | None) -> list[Any]:
        """TF's defaults from RunConfig: NaN check, loss/step logging, step counter, summaries; a progress bar."""
        config, hooks = self._config, [NanTensorHook()]
        if config.log_step_count_steps is not None:
            hooks.append(LoggingTensorHook({"loss": "loss", "step": "global_step"}, every_n_iter=config.log_step_count_steps))
            hooks.append(StepCounterHook(config.log_step_count_steps, output_dir=self.model_dir))
        if config.save_summary_steps:
            hooks.append(SummarySaverHook(save_steps=config.save_summary_steps, output_dir=self.model_dir))
        if self._progress_enabled():
            hooks.append(ProgressBarHook(total, desc="train"))
        return hooks

    def _train_loop(self, batches: Iterator[tuple[Any, Any]], hooks: HookList, saver: Any, already_saved: bool) -> float | None:
        """The step loop: one batch, one step, the hooks, maybe a save; until the input ends or a stop."""
        context = RunContext(ModeKeys.TRAIN, self._global_step, self.model_dir)
        hooks.begin()
        self._model.train()
        self._start_finite_tracking(hooks)
        hooks.after_restore(context)
        if saver is not None and saver.begin(self._global_step, already_saved):
            context.request_stop()
        self._synced, spec = None, None  # from here on, memory runs ahead of disk
        while not context.stop_requested:
            batch = next(batches, None)
            if batch is None:
                break
            features, labels = batch
            context.batch_size = batch_size_of(features, labels)
            wanted = hooks.before_run(context)
            spec = self._train_step(to_device(features, self._device), to_device(labels, self._device))
            if context.global_step == self._finite_base:
                wanted = self._join_spec_hooks(hooks, spec.training_hooks + spec.training_chief_hooks, context, wanted)
            values = self._fetch(wanted, spec, context.global_step) if wanted else _NO_VALUES
            context.global_step = self._global_step = self._global_step + 1
            if "loss" in values and not self._finite_or_stop(context):
                break
            hooks.after_run(context, values)
            if saver is not None and saver.should_save(self._global_step) and self._finite_or_stop(context):
                if saver.save(self._global_step):
                    context.request_stop()
        finite = self._finite_or_stop(context)
        if saver is not None:
            saver.end(self._global_step, save=finite)
        last_loss = None if spec is None else float(_to_host(spec.loss))
        context.results = {"loss": last_loss, "global_step": self._global_step}
        hooks.end(context)
        summary.flush_all()
        return last_loss

    def _train_step(self, features: Any, labels: Any) -> EstimatorSpec:
        """Forward through model_fn, then the update: the spec's train_op, or the Estimator's optimizer."""
        if self._autocast_dtype is None:
            spec = self._call_model_fn(features, labels, ModeKeys.TRAIN)
        else:
            with torch.autocast(self._device.type, dtype=self._autocast_dtype):
                spec = self._call_model_fn(features, labels, ModeKeys.TRAIN)
        loss = spec.loss
        if spec.train_op is not None:
            spec.train_op(loss)
        elif self._optimizer is None:
            raise ValueError(
                "TRAIN needs a way to step: give the Estimator an `optimizer` (e.g. optimizer=lambda p: "
                "torch.optim.SGD(p, lr=0.01)) or return EstimatorSpec(mode, loss=..., train_op=callable)."
            )
        else:
            self._optimizer.zero_grad(set_to_none=True)
            if self._scaler.is_enabled():
                self._scaler.scale(loss).backward()
                self._scaler.step(self._optimizer)
                self._scaler.update()
            else:
                loss.backward()
                self._optimizer.step()
            if self._lr_scheduler is not None:
                self._lr_scheduler.step()
        self._finite_count.add_(self._finite.logical_and_(torch.isfinite(loss.detach())))
        return spec

    def _join_spec_hooks(self, hooks: HookList, new: tuple[Any, ...], context: RunContext, wanted: set[str] | None) -> set[str] | None:
        """Hooks named in the first step's spec begin now, in time for this step's ``after_run``."""
        if not new:
            return wanted
        joined = HookList(new)
        joined.begin()
        joined.after_restore(context)
        hooks.extend(new)
        more = joined.before_run(context)
        return more if wanted is None else wanted | (more or set())

    def _start_finite_tracking(self, hooks: HookList) -> None:
        # A device-side "all finite so far" flag and the count of finite steps before the first bad one:
        # the host reads them only where it waits anyway (fetched losses, saves, the end), never per step.
        self._finite = torch.ones((), dtype=torch.bool, device=self._device)
        self._finite_count = torch.zeros((), dtype=torch.int64, device=self._device)
        self._finite_base = self._global_step
        policies = [h.fail_on_nan_loss for h in hooks.hooks if isinstance(h, NanTensorHook)]
        self._fail_on_nan = not policies or any(policies)

    def _finite_or_stop(self, context: RunContext) -> bool:
        """True while every loss so far was finite; else raise, or (``NanTensorHook(False)``) log and stop."""
        if bool(self._finite):
            return True
        self._synced = None  # memory holds broken weights: restore from disk next time
        step = self._finite_base + int(self._finite_count) + 1
        if self._fail_on_nan:
            raise NanLossDuringTrainingError(
                f"NaN or infinite loss at global step {step} (the first bad step); training stopped and no "
                f"checkpoint of the broken weights was written. Lower the learning rate or check the input."
            )
        logger.error("Model diverged with loss = NaN at global step %d; stopping without saving.", step)
        context.request_stop()
        return False

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
            The ``eval_metric_ops`` values, ``loss`` (the mean of per-batch losses) and ``global_step``.

        Raises:
            ValueError: For a non-positive ``steps``, a reserved metric name, or a missing checkpoint path.
        """
        _check_positive("steps", steps)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"`name` must be a string or None; received {name!r}.")
        hooks = check_hooks("hooks", hooks)
        used = self._prepare(checkpoint_path, ModeKeys.EVAL)
        _, batches = self._batches(input_fn, ModeKeys.EVAL)
        if self._progress_enabled():
            hooks.append(ProgressBarHook(steps, desc="evaluate", unit="batch"))
        with torch.no_grad(), torch.random.fork_rng(devices=self._rng_devices()):
            result = self._evaluate_loop(batches, HookList(hooks), steps)
        logger.info("Saving dict for global step %d: %s", self._global_step,
                    ", ".join(f"{k} = {v}" for k, v in sorted(result.items())))
        written = {k: v for k, v in result.items() if k != "global_step"}
        if used is not None:
            written["checkpoint_path"] = summary.Text(used)
        summary.write_summaries(self.eval_dir(name), written, self._global_step)
        summary.flush_all()
        return result

    def _evaluate_loop(self, batches: Iterator[tuple[Any, Any]], hooks: HookList, steps: int | None) -> dict[str, Any]:
        """Accumulate loss and metrics over the batches (no host sync per batch); finalize once."""
        context = RunContext(ModeKeys.EVAL, self._global_step, self.model_dir)
        accumulator, loss_sum, count = MetricAccumulator(), None, 0
        hooks.begin()
        self._model.eval()
        hooks.after_restore(context)
        for features, labels in batches:
            context.batch_size = batch_size_of(features, labels)
            wanted = hooks.before_run(context)
            spec = self._eval_step(to_device(features, self._device), to_device(labels, self._device))
            if count == 0:
                wanted = self._join_spec_hooks(hooks, spec.evaluation_hooks, context, wanted)
                self._check_metric_names(spec)
            loss = spec.loss.detach().float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            accumulator.update(spec.eval_metric_ops or {})
            hooks.after_run(context, self._fetch(wanted, spec, self._global_step) if wanted else _NO_VALUES)
            count += 1
            if steps is not None and count % max(1, steps // 10) == 0:
                logger.info("Evaluation [%d/%d]", count, steps)
            if count == steps or context.stop_requested:
                break
        if count == 0:
            raise ValueError("evaluate: input_fn yielded no batches; give it at least one.")
        result = accumulator.compute()
        result["loss"] = _to_host(loss_sum / count)
        result["global_step"] = np.int64(self._global_step)
        context.results = result
        hooks.end(context)
        return result

    def _eval_step(self, features: Any, labels: Any) -> EstimatorSpec:
        if self._autocast_dtype is None:
            return self._call_model_fn(features, labels, ModeKeys.EVAL)
        with torch.autocast(self._device.type, dtype=self._autocast_dtype):
            return self._call_model_fn(features, labels, ModeKeys.EVAL)

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
        if self._progress_enabled():
            hook_list.extend([ProgressBarHook(None, desc="predict", unit="batch")])
        keys = [predict_keys] if isinstance(predict_keys, str) else predict_keys
        self._prepare(checkpoint_path, ModeKeys.PREDICT)
        _, batches = self._batches(input_fn, ModeKeys.PREDICT)
        context = RunContext(ModeKeys.PREDICT, self._global_step, self.model_dir)
        hook_list.begin()
        self._model.eval()
        hook_list.after_restore(context)
        first = True
        for features, _labels in batches:
            context.batch_size = batch_size_of(features)
            wanted = hook_list.before_run(context)
            with torch.no_grad():
                spec = self._predict_step(to_device(features, self._device))
            if first:
                wanted, first = self._join_spec_hooks(hook_list, spec.prediction_hooks, context, wanted), False
            hook_list.after_run(context, self._fetch(wanted, spec, self._global_step) if wanted else _NO_VALUES)
            yield from self._split_predictions(spec.predictions, keys, yield_single_examples)
            if context.stop_requested:
                break
        context.results = {"global_step": self._global_step}
        hook_list.end(context)

    def _predict_step(self, features: Any) -> EstimatorSpec:
        if self._autocast_dtype is None:
            return self._call_model_fn(features, None, ModeKeys.PREDICT)
        with torch.autocast(self._device.type, dtype=self._autocast_dtype):
            return self._call_model_fn(features, None, ModeKeys.PREDICT)

    @staticmethod
    def _split_predictions(predictions: Any, keys: list[str] | None, single: bool) -> Iterator[Any]:
        if not isinstance(predictions, Mapping):
            if keys:
                raise ValueError("`predict_keys` only applies to dict predictions; model_fn returned a Tensor.")
            array = _to_host(predictions)
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

