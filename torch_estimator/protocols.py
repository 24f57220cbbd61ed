"""The shapes of the objects users hand to the Estimator, as type-checkable protocols.

The Estimator calls hooks, saving listeners and exporters by their methods, not by their class: a user's
object with the right methods works without subclassing :class:`~torch_estimator.Hook` and friends (those
base classes give no-op defaults). These protocols say which methods, so that signatures can be checked
(``mypy``) without naming a class a user need not use. They sit below every module that takes such objects.
:class:`EstimatorLike` is the other direction: what exporters and early stopping use of the Estimator they
are handed, so those lower modules never import the Estimator's.

Example:
    >>> class Counter:  # a hook without subclassing Hook
    ...     def begin(self): pass
    ...     def before_run(self, run_context): return None
    ...     def after_run(self, run_context, run_values): pass
    ...     def end(self, run_context): pass
    >>> isinstance(Counter(), HookLike)
    True
    >>> import torch
    >>> isinstance(torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1)], lr=0.1), 1), Stateful)
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["HookLike", "SaverListenerLike", "ExporterLike", "Stateful", "EstimatorLike"]


@runtime_checkable
class HookLike(Protocol):
    """What the loops call on a hook (:class:`~torch_estimator.Hook` is the base class with no-op methods).

    ``after_restore(run_context)`` is called too where a hook has it. ``run_context`` is the run's
    :class:`~torch_estimator.hooks.RunContext`.
    """

    def begin(self) -> None: ...

    def before_run(self, run_context: Any) -> Sequence[str] | None: ...

    def after_run(self, run_context: Any, run_values: Mapping[str, Any]) -> None: ...

    def end(self, run_context: Any) -> None: ...


@runtime_checkable
class SaverListenerLike(Protocol):
    """What the checkpoint saver calls around each save (:class:`~torch_estimator.CheckpointSaverListener`).

    ``after_save`` returning True asks training to stop.
    """

    def begin(self) -> None: ...

    def before_save(self, global_step: int) -> None: ...

    def after_save(self, global_step: int) -> bool | None: ...

    def end(self, global_step: int) -> None: ...


@runtime_checkable
class ExporterLike(Protocol):
    """What ``train_and_evaluate`` calls after an evaluation (:class:`~torch_estimator.exporters.Exporter`)."""

    @property
    def name(self) -> str: ...

    def export(
        self,
        estimator: EstimatorLike,
        export_path: str,
        checkpoint_path: str | None,
        eval_result: Mapping[str, Any],
        is_the_final_export: bool,
    ) -> str | None: ...


@runtime_checkable
class Stateful(Protocol):
    """A part of the training state a checkpoint holds: an LR scheduler, a grad scaler, an input position
    (the protocol of ``torch.distributed.checkpoint.stateful.Stateful``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class EstimatorLike(Protocol):
    """What early stopping and the exporters use of an :class:`~torch_estimator.Estimator`: where it writes,
    and its export."""

    @property
    def model_dir(self) -> str: ...

    def eval_dir(self, name: str | None = None) -> str: ...

    def export_saved_model(
        self,
        export_dir_base: str | os.PathLike[str],
        serving_input_receiver_fn: Callable[[], Any] | None,
        assets_extra: Mapping[str, str] | None = None,
        checkpoint_path: str | None = None,
    ) -> str: ...
