"""Data-parallel training on ``torch.distributed``: the launcher's environment, the process group,
DistributedDataParallel, and the few collectives the Estimator makes.

The launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, set by ``torchrun``) are read here and
nowhere else, by :func:`context_from_env`, when an Estimator is built.

Example:
    >>> context = context_from_env({})
    >>> context.world_size, context.is_chief, context.is_distributed
    (1, True, False)
    >>> context_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).is_chief
    False
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "context_from_env",
    "ensure_process_group",
    "wrap_ddp",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
]

logger = logging.getLogger("torch_estimator")


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes, and its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        """Rank 0 writes checkpoints, summaries, exports and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"Environment variable {name} must be an integer; received {value!r}.") from error


def context_from_env(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: one process).

    Raises:
        ValueError: If they are not integers or are inconsistent.
    """
    environ = os.environ if environ is None else environ
    world_size = _int(environ, "WORLD_SIZE", 1)
    rank = _int(environ, "RANK", 0)
    local_rank = _int(environ, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"Inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}.")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def ensure_process_group(context: DistributedContext, device: torch.device, timeout_secs: float) -> bool:
    """Initialise the default process group (nccl on CUDA, gloo otherwise) unless it exists.

    Returns:
        True if this call created it.

    Raises:
        ValueError: If an existing group's size or rank disagrees with the environment.
    """
    if not context.is_distributed:
        return False
    if dist.is_initialized():
        if dist.get_world_size() != context.world_size or dist.get_rank() != context.rank:
            raise ValueError(
                f"The process group has rank {dist.get_rank()} of {dist.get_world_size()}, but the environment "
                f"says rank {context.rank} of {context.world_size}."
            )
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_secs)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    logger.info("Initialised the %s process group: rank %d of %d.", backend, context.rank, context.world_size)
    return True


class _DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP that forwards attribute lookups to the wrapped module, so ``model_fn`` can write ``model.fc``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool = False, static_graph: bool = False) -> torch.nn.Module:
    """Wrap ``model`` for data-parallel training (parameters are broadcast from rank 0)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return _DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, static_graph=static_graph
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a copy; the input is untouched). A no-op with one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    result = tensor.clone()
    dist.all_reduce(result, op=dist.ReduceOp.SUM)
    return result


def barrier() -> None:
    """Wait for every process (a no-op with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` on every process (a no-op with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
