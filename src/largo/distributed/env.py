"""Who am I in the job: rank, world size, device; the process group when launched by torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    local_world: int = 1  # processes on this node (they share its memory)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """cuda:<local_rank> when asked for or available under 'auto', else cpu."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_env(requested_device: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Read torchrun's variables; start the process group (NCCL on CUDA, gloo on CPU) if world > 1 (see start_env).

    timeout_s bounds every collective: a rank that dies or hangs fails its peers after that long.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), device_id=device if backend == "nccl" else None)
    return DistEnv(rank, local_rank, world, device, local_world)


def restart_count() -> int:
    """How often torchrun (--max-restarts) has restarted this job's workers; 0 on a first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

