"""Loading a checkpoint into its named parts (model, optimizer, scheduler, ...), checking that they fit first."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from .encoding import set_rng_state
from .format import Checkpoint, read_checkpoint
from .index import read_latest_checkpoint
from .parts import MODEL, Parts, check_parts

__all__ = ["apply_rng_state", "restore_checkpoint", "restore_latest", "warn_about_casts"]

logger = logging.getLogger("torch_estimator")


def _load_model(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(tensors)
        if tensors[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"Checkpoint {path} does not match the model: missing keys {missing}, unexpected keys "
            f"{unexpected}, mis-shaped {mis_shaped}. Was it written by a different model?"
        )
    warn_about_casts(tensors, own, path)
    model.load_state_dict(tensors)


def warn_about_casts(tensors: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: str) -> None:
    """Warn when floating-point tensors are loaded into a model of another floating-point dtype (load_state_dict
    casts silently: float64 loses precision, float16 range)."""
    cast = sorted(f"{k} ({str(tensors[k].dtype).replace('torch.', '')} -> {str(own[k].dtype).replace('torch.', '')})"
                  for k in tensors if k in own and tensors[k].dtype != own[k].dtype
                  and tensors[k].is_floating_point() and own[k].is_floating_point())
    if cast:
        logger.warning("Checkpoint %s holds tensors of another dtype than the model's; they are cast: %s%s.",
                       path, ", ".join(cast[:8]), " …" if len(cast) > 8 else "")


def _apply(checkpoint: Checkpoint, parts: Parts, what: str) -> Checkpoint:
    """Load ``checkpoint`` into ``parts``: optimizers are checked against their saved state, then the model is
    loaded strictly, then every other part its state (a part the checkpoint lacks keeps its own; an optimizer
    says so)."""
    model = check_parts(parts, what, restoring=True)
    state, path = checkpoint.state, checkpoint.path
    others = {name: part for name, part in parts.items() if name != MODEL and part is not None}
    for name, part in others.items():  # before anything is loaded
        if isinstance(part, torch.optim.Optimizer) and name in state:
            _check_optimizer(part, state[name], path)
    _load_model(model, checkpoint.model, path)
    for name, part in others.items():
        if name not in state:
            if isinstance(part, torch.optim.Optimizer):
                logger.warning("Checkpoint %s has no %s state; the %s starts fresh.", path, name, name)
        elif isinstance(part, torch.optim.Optimizer):
            try:
                part.load_state_dict(state[name])
            except (KeyError, ValueError, TypeError, RuntimeError) as error:
                raise ValueError(_optimizer_mismatch(part, path, f"loading its state failed: {error!r}")) from error
        else:
            part.load_state_dict(state[name])
    return checkpoint


def _optimizer_mismatch(optimizer: torch.optim.Optimizer, path: str, detail: str) -> str:
    return (
        f"Checkpoint {path} holds the state of a different optimizer than this Estimator's "
        f"{type(optimizer).__name__} ({detail}). To continue this model_dir, use the optimizer it was trained "
        f"with; to switch optimizers, train into a new model_dir with warm_start_from=<this model_dir> (the "
        f"weights only). evaluate and predict need only the weights and work as they are."
    )


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: Any, path: str) -> None:
    """Refuse optimizer state written by another kind of optimizer, before anything is loaded: torch would
    load it and fail later (``KeyError: 'step'``) or run with the other optimizer's settings."""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    ours = optimizer.state_dict().get("param_groups")
    if not isinstance(groups, list) or not isinstance(ours, list):  # an optimizer with a state of its own kind
        return
    if len(groups) != len(ours):
        raise ValueError(_optimizer_mismatch(optimizer, path, f"{len(groups)} parameter groups saved, {len(ours)} expected"))
    for index, (group, theirs) in enumerate(zip(ours, groups)):
        expected = set(group) - {"params"}
        found = set(theirs) - {"params"} if isinstance(theirs, Mapping) else set()
        if expected - found:  # extra saved settings may be a scheduler's (initial_lr); missing ones never fit
            raise ValueError(_optimizer_mismatch(
                optimizer, path, f"parameter group {index} lacks its settings {sorted(expected - found)} and has "
                                 f"{sorted(found - expected)}"))


def restore_checkpoint(path: str, parts: Parts) -> Checkpoint:
    """Load a checkpoint into ``parts`` (``{"model": model, "optimizer": optimizer, ...}``, see :mod:`.parts`);
    RNG and input state are returned, not applied.

    Raises:
        TypeError: If a part has no ``load_state_dict``.
        FileNotFoundError: If the file does not exist.
        CheckpointCorruptError: If the file is damaged (a ``ValueError``; nothing is loaded).
        ValueError: If the checkpoint does not match the model (nothing is loaded).
    """
    return _apply(read_checkpoint(path), parts, "restore_checkpoint")


def apply_rng_state(checkpoint: Checkpoint) -> None:
    """Restore the python, numpy, torch and CUDA RNG states saved in ``checkpoint``."""
    if "rng" in checkpoint.state:
        set_rng_state(checkpoint.state["rng"])


def restore_latest(model_dir: str | None, parts: Parts) -> Checkpoint | None:
    """Load the newest intact checkpoint of ``model_dir`` into ``parts`` (as :func:`restore_checkpoint`); None if
    there is none.

    Falls back past damaged checkpoints (with a warning naming each) and past ones rotated away while being
    read, as :func:`read_latest_checkpoint`. RNG and input state are returned, not applied.

    Raises:
        CheckpointCorruptError: If every checkpoint present is damaged.
        ValueError: If the checkpoint does not match the model (nothing is loaded; no fallback).
    """
    checkpoint = read_latest_checkpoint(model_dir)
    if checkpoint is None:
        return None
    return _apply(checkpoint, parts, "restore_latest")
