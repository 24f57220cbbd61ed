"""Optimizers for canned estimators: TF's optimizer names, an FTRL-Proximal optimizer, and one optimizer
over two parameter sets (wide & deep).

``optimizer`` arguments of canned estimators take a name (``'Adagrad'``, ``'Adam'``, ``'Ftrl'``,
``'RMSProp'``, ``'SGD'``, TF's names), an optimizer factory ``parameters -> Optimizer`` (e.g.
``lambda p: torch.optim.Adam(p, lr=0.01)``), or an Optimizer class. A name builds the optimizer with Keras's
settings (TF2's canned estimators used Keras optimizers) and the estimator's default learning rate:

=========  ===========================================================================
name       optimizer
=========  ===========================================================================
Adagrad    ``torch.optim.Adagrad(initial_accumulator_value=0.1, eps=1e-7)`` (Keras's)
Adam       ``torch.optim.Adam(eps=1e-7)``
Ftrl       :class:`Ftrl` (FTRL-Proximal, as ``tf.keras.optimizers.Ftrl``)
RMSProp    ``torch.optim.RMSprop(alpha=0.9, eps=1e-7)`` (Keras's rho 0.9)
SGD        ``torch.optim.SGD``
=========  ===========================================================================

Learning rates for names (TF2's, ``est/canned/*.py``): DNN, each optimizer's Keras default (0.001; SGD 0.01);
linear 0.2; baseline 0.3; wide & deep 0.001 for the DNN and ``min(0.005, 1/sqrt(number of linear columns))``
for the linear part.

Example:
    >>> import torch
    >>> factory = get_optimizer_factory("Adagrad", learning_rate=0.05)
    >>> optimizer = factory(torch.nn.Linear(2, 1).parameters())
    >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"]
    ('Adagrad', 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["Ftrl", "CombinedOptimizer", "OPTIMIZER_NAMES", "KERAS_DEFAULT_LEARNING_RATES", "get_optimizer_factory"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]

OPTIMIZER_NAMES = ("Adagrad", "Adam", "Ftrl", "RMSProp", "SGD")
KERAS_DEFAULT_LEARNING_RATES = {"Adagrad": 0.001, "Adam": 0.001, "Ftrl": 0.001, "RMSProp": 0.001, "SGD": 0.01}


class Ftrl(torch.optim.Optimizer):
    """FTRL-Proximal (McMahan et al. 2013), with ``tf.keras.optimizers.Ftrl``'s update and defaults.

    Per coordinate, with accumulator ``n`` and linear term ``z``::

        n' = n + g^2
        z  = z + g - (n'^-p - n^-p) / lr * w          (p = learning_rate_power, -0.5 by default)
        w  = 0 if |z| <= l1 else (sign(z) * l1 - z) / (n'^-p / lr + 2 * l2)

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        learning_rate_power: ``<= 0``; -0.5 is the usual per-coordinate rate.
        initial_accumulator_value: ``>= 0``, the starting ``n``.
        l1_regularization_strength: ``>= 0``; makes weights exactly zero.
        l2_regularization_strength: ``>= 0``.

    Raises:
        ValueError: For an out-of-range setting.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = Ftrl([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0])
        >>> optimizer.step()
        >>> round(w.detach().item(), 4)  # -(1) / (sqrt(1.1) / 0.1)
        -0.0953
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.001,
        learning_rate_power: float = -0.5,
        initial_accumulator_value: float = 0.1,
        l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Ftrl `lr` must be > 0; received {lr!r}.")
        if not learning_rate_power <= 0:
            raise ValueError(f"Ftrl `learning_rate_power` must be <= 0; received {learning_rate_power!r}.")
        for name, value in (("initial_accumulator_value", initial_accumulator_value),
                            ("l1_regularization_strength", l1_regularization_strength),
                            ("l2_regularization_strength", l2_regularization_strength)):
            if not value >= 0:
                raise ValueError(f"Ftrl `{name}` must be >= 0; received {value!r}.")
        defaults = {"lr": lr, "learning_rate_power": learning_rate_power, "initial_accumulator_value": initial_accumulator_value,
                    "l1": l1_regularization_strength, "l2": l2_regularization_strength}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One FTRL update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, power, l1, l2 = group["lr"], group["learning_rate_power"], group["l1"], group["l2"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["accumulator"] = torch.full_like(param, group["initial_accumulator_value"])
                    state["linear"] = torch.zeros_like(param)
                accumulator, linear = state["accumulator"], state["linear"]
                new_accumulator = accumulator + grad * grad
                new_power = new_accumulator.pow(-power)
                sigma = (new_power - accumulator.pow(-power)) / lr
                linear.add_(grad - sigma * param)
                quadratic = new_power / lr + 2 * l2
                shrunk = (torch.sign(linear) * l1 - linear) / quadratic
                param.copy_(torch.where(linear.abs() > l1, shrunk, torch.zeros_like(param)))
                accumulator.copy_(new_accumulator)
        return loss


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameter sets, stepped together: one Optimizer for the Estimator
    (wide & deep trains its linear part with one optimizer and its DNN with another).

    ``param_groups`` are the children's groups (the same dicts, so a scheduler or the learning-rate summary
    sees them), each named after its optimizer (a ``"name"`` entry: the learning-rate summaries are
    ``learning_rate/<name>``); ``state_dict`` holds each child's under its name.

    Args:
        optimizers: ``{name: optimizer}``, at least one.

    Raises:
        ValueError: If empty, or a parameter is in two optimizers.
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer.")
        params = [p for optimizer in optimizers.values() for group in optimizer.param_groups for p in group["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("CombinedOptimizer: a parameter is updated by two optimizers.")
        super().__init__(params, {})
        self.optimizers = dict(optimizers)
        self._collect_groups()

    def _collect_groups(self) -> None:
        """Share the children's group dicts (again after loading, which replaces them), named after their optimizer."""
        for name, optimizer in self.optimizers.items():
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                group.setdefault("name", name if len(groups) == 1 else f"{name}/{i}")
        self.param_groups = [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step every optimizer (a closure is evaluated once, before)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = sorted(set(self.optimizers) - set(state_dict))
        if missing:
            raise ValueError(f"CombinedOptimizer state lacks the optimizers {missing}; it has {sorted(state_dict)}.")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])
        self._collect_groups()


def _named(name: str, learning_rate: float) -> OptimizerFactory:
    if name == "Adagrad":
        return lambda params: torch.optim.Adagrad(params, lr=learning_rate, initial_accumulator_value=0.1, eps=1e-7)
    if name == "Adam":
        return lambda params: torch.optim.Adam(params, lr=learning_rate, eps=1e-7)
    if name == "Ftrl":
        return lambda params: Ftrl(params, lr=learning_rate)
    if name == "RMSProp":
        return lambda params: torch.optim.RMSprop(params, lr=learning_rate, alpha=0.9, eps=1e-7)
    return lambda params: torch.optim.SGD(params, lr=learning_rate)


def get_optimizer_factory(optimizer: Any, learning_rate: float | None = None, *, argument: str = "optimizer") -> OptimizerFactory | torch.optim.Optimizer:
    """What a canned estimator's ``optimizer`` argument means, as the Estimator's ``optimizer``.

    Args:
        optimizer: A name in :data:`OPTIMIZER_NAMES`, an ``Optimizer`` subclass (built with its own defaults
            unless ``learning_rate`` is given), a factory ``parameters -> Optimizer``, or an Optimizer.
        learning_rate: For names (and classes): None uses the Keras default of that optimizer.
        argument: The argument's name, for messages.

    Returns:
        A factory ``parameters -> Optimizer``, or the given Optimizer.

    Raises:
        ValueError: For an unknown name or a value of another kind.

    Example:
        >>> get_optimizer_factory("Adadelta")
        Traceback (most recent call last):
        ...
        ValueError: Unsupported optimizer name: 'Adadelta'. Supported names are: ('Adagrad', 'Adam', 'Ftrl', 'RMSProp', 'SGD'); or pass a factory, e.g. optimizer=lambda p: torch.optim.Adam(p, lr=0.01).
    """
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"Unsupported optimizer name: {optimizer!r}. Supported names are: {OPTIMIZER_NAMES}; or pass a "
                f"factory, e.g. {argument}=lambda p: torch.optim.Adam(p, lr=0.01)."
            )
        rate = KERAS_DEFAULT_LEARNING_RATES[optimizer] if learning_rate is None else learning_rate
        if not (isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate)):
            raise ValueError(f"`learning_rate` must be a positive number; received {rate!r}.")
        return _named(optimizer, float(rate))
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls: Callable[..., torch.optim.Optimizer] = optimizer  # a subclass, taking its own arguments
        return (lambda params: cls(params)) if learning_rate is None else (lambda params: cls(params, lr=learning_rate))
    if isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer):
        return optimizer
    raise ValueError(
        f"`{argument}` must be one of the names {OPTIMIZER_NAMES}, an Optimizer factory (e.g. lambda p: "
        f"torch.optim.Adam(p, lr=0.01)) or an Optimizer; received {optimizer!r}."
    )
