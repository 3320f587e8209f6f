"""Parallelism applied from outside the model: wrap for data parallelism, control gradient sync."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from largo.dist.env import DistEnv


def parallelize(model: nn.Module, env: DistEnv) -> nn.Module:
    """The module the loop trains: the model itself on one process, DDP-wrapped on several."""
    if env.world == 1:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any wrapper (DDP, torch.compile)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
    if enabled or not isinstance(model, DDP):
        yield
        return
    with model.no_sync():
        yield
