"""Per-rank memory: bytes of parameters and optimizer states each rank holds, and its peak memory."""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from largo.distributed.env import DistEnv
from largo.observe.metrics import MetricsLog


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank stores for `tensors` (its shard of a DTensor, all of a plain tensor)."""
    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def optimizer_tensors(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[torch.Tensor]:
    """Every tensor in the optimizers' state (moments, step counters)."""
    for opt in optimizers:
        for state in opt.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gather(values: list[float], env: DistEnv) -> list[list[float]]:
    """values from every rank, indexed by rank (float64 so byte counts stay exact)."""
    mine = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.world == 1:
        return [mine.tolist()]
    everyone = [torch.empty_like(mine) for _ in range(env.world)]
    dist.all_gather(everyone, mine)
    return [t.tolist() for t in everyone]


def memory_record(model: nn.Module, optimizers: list[torch.optim.Optimizer], env: DistEnv) -> dict[str, Any]:
    """Per-rank lists of parameter bytes, optimizer-state bytes and peak memory (a collective: call on every rank)."""
    mine = [local_bytes(model.parameters()), local_bytes(optimizer_tensors(optimizers)), peak_memory_bytes(env.device)]
    params, optim, peak = zip(*gather([float(v) for v in mine], env))
    return {"rank_param_bytes": [int(v) for v in params], "rank_optim_bytes": [int(v) for v in optim],
            "rank_peak_bytes": [int(v) for v in peak]}


def report_after_steps(optimizer: torch.optim.Optimizer, steps: set[int], model: nn.Module,
                       optimizers: list[torch.optim.Optimizer], env: DistEnv, write: Callable[[int, dict[str, Any]], None]) -> None:
    """After the n-th optimizer step of this process for n in `steps`, gather memory_record and write(n, record).

    A step hook, so the loop stays untouched; every rank steps together, so the gather is safe there.
    """
    count = 0

    def hook(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        nonlocal count
        count += 1
        if count in steps:
            write(count, memory_record(model, optimizers, env))

    optimizer.register_step_post_hook(hook)


def log_memory(step: int, record: dict[str, Any], metrics: MetricsLog | None, say: Callable[[str], None] | None) -> None:
    """Write a per-rank memory record (rank 0) and, if say is given, one line with the largest rank's figures."""
    if metrics:
        metrics.write({"kind": "memory", "step": step, **record})
    if say:
        mib = {k: max(v) / 2**20 for k, v in record.items()}
        say(f"memory per rank (max): params {mib['rank_param_bytes']:.1f} MiB | optimizer {mib['rank_optim_bytes']:.1f} MiB | "
            f"peak {mib['rank_peak_bytes']:.0f} MiB")
