"""Warm start: initialise a fresh model's tensors from another checkpoint (ours or TensorFlow's)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch

from .format import read_checkpoint
from .index import latest_checkpoint, read_latest_checkpoint
from .renames import Rule, check_rules, renamed
from .restore import warn_about_casts

__all__ = ["WarmStartSettings", "warm_start"]

logger = logging.getLogger("torch_estimator")


@dataclasses.dataclass(frozen=True)
class WarmStartSettings:
    r"""Which model tensors to initialise from which checkpoint (applied only to a fresh ``model_dir``).

    Args:
        ckpt_to_initialize_from: A checkpoint file, or a directory whose latest checkpoint is used.
        vars_to_warm_start: A regex (or list of regexes) matched in full against the model's
            ``state_dict()`` names; ``".*"`` takes everything.
        var_name_to_prev_var_name: Names in the model mapped to different names in the checkpoint (TF's field);
            they take precedence over ``rename``.
        rename: ``(regex, replacement)`` pairs: a checkpoint name the regex matches in full becomes ``re.sub``'s
            replacement, a model name; the first rule that matches applies (see :mod:`.renames`). For a TF
            checkpoint, the regexes match TF's names (``dense/kernel``) and layouts are converted after.

    Raises:
        TypeError: If ``rename`` is not a list of pairs of strings.
        ValueError: If the path is empty or a regex is invalid.

    Example:
        >>> settings = WarmStartSettings("/runs/old", rename=[(r"encoder\.(.*)", r"backbone.\1")])
        >>> settings.rename
        (('encoder\\.(.*)', 'backbone.\\1'),)
    """

    ckpt_to_initialize_from: str
    vars_to_warm_start: str | Sequence[str] = ".*"
    var_name_to_prev_var_name: Mapping[str, str] = dataclasses.field(default_factory=dict)
    rename: Sequence[Rule] = ()

    def __post_init__(self) -> None:
        path = os.fspath(self.ckpt_to_initialize_from) if self.ckpt_to_initialize_from is not None else ""
        if not path:
            raise ValueError("WarmStartSettings `ckpt_to_initialize_from` must be a non-empty path.")
        object.__setattr__(self, "ckpt_to_initialize_from", path)
        patterns = [self.vars_to_warm_start] if isinstance(self.vars_to_warm_start, str) else list(self.vars_to_warm_start)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ValueError(f"WarmStartSettings `vars_to_warm_start` has an invalid regex {pattern!r}: {error}.") from error
        object.__setattr__(self, "rename", check_rules(self.rename, "WarmStartSettings `rename`"))

    def resolve_path(self) -> str:
        """The checkpoint file to read.

        Raises:
            ValueError: If the path does not exist or a directory holds no checkpoint.
        """
        path = self.ckpt_to_initialize_from
        if os.path.isdir(path):
            latest = latest_checkpoint(path)
            if latest is None:
                raise ValueError(f"warm_start_from: directory {path} holds no checkpoint.")
            return latest
        if not os.path.exists(path):
            raise ValueError(f"warm_start_from: {path} does not exist; give a checkpoint file or a model_dir.")
        return path


def warm_start(model: torch.nn.Module, settings: WarmStartSettings) -> list[str]:
    """Copy the selected tensors from ``settings``' checkpoint into ``model``.

    A TensorFlow ``model_dir`` or checkpoint prefix is read and mapped by :mod:`.tf_convert`.

    Returns:
        The names that were initialised.

    Raises:
        ValueError: If nothing matches, a selected name is missing from the checkpoint, or shapes differ.
    """
    from .. import tf_checkpoint, tf_convert

    if tf_checkpoint.is_tf_checkpoint(settings.ckpt_to_initialize_from):  # a TensorFlow model_dir or prefix
        return tf_convert.warm_start_from_tf(model, settings)
    if os.path.isdir(settings.ckpt_to_initialize_from):  # its newest intact checkpoint, past damaged ones
        checkpoint = read_latest_checkpoint(settings.ckpt_to_initialize_from)
        if checkpoint is None:
            raise ValueError(f"warm_start_from: directory {settings.ckpt_to_initialize_from} holds no checkpoint.")
        path = checkpoint.path
    else:
        path = settings.resolve_path()
        checkpoint = read_checkpoint(path)
    patterns = [settings.vars_to_warm_start] if isinstance(settings.vars_to_warm_start, str) else list(settings.vars_to_warm_start)
    own = model.state_dict()
    selected = [name for name in own if any(re.fullmatch(p, name) for p in patterns)]
    if not selected:
        raise ValueError(f"warm_start_from: no model tensor matches {patterns}; model tensors are {sorted(own)}.")
    sources = renamed(checkpoint.model, own, settings.rename, where=f"warm_start_from {path}")
    values, problems = {}, []
    for name in selected:
        source = settings.var_name_to_prev_var_name.get(name, sources.get(name, name))
        if source not in checkpoint.model:
            problems.append(f"{name} (as {source!r}) is not in the checkpoint")
        elif checkpoint.model[source].shape != own[name].shape:
            renaming = "" if source == name else f" (as {source!r})"
            problems.append(f"{name}{renaming}: checkpoint {tuple(checkpoint.model[source].shape)} vs model "
                            f"{tuple(own[name].shape)}")
        else:
            values[name] = checkpoint.model[source]
    if problems:
        raise ValueError(f"warm_start_from {path}: " + "; ".join(problems) + ".")
    warn_about_casts(values, own, path)
    model.load_state_dict(values, strict=False)
    logger.info("Warm-started %d tensors from %s.", len(values), path)
    return selected
