"""Distributed execution on torch.distributed: the process environment, liveness of ranks, and parallelisation steps."""

from __future__ import annotations

from largo.distributed.env import DistEnv, init_env
from largo.distributed.health import start_heartbeat


def start_env(requested_device: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """This process's place in the job; under torchrun the process group starts and each rank's heartbeat begins.

    timeout_s bounds every collective: a rank that dies or hangs fails its peers after that long, and
    the heartbeat lets the failing rank name the one that stopped.
    """
    env = init_env(requested_device, timeout_s)
    if env.world > 1:
        start_heartbeat(env)
    return env


__all__ = ["DistEnv", "start_env"]
