"""`largo train --nproc N`: become torchrun (torch.distributed.run) on this machine; no launcher of our own."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE` (the workers must not relaunch themselves)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str], *, max_restarts: int = 0) -> list[str]:
    """python -m torch.distributed.run --standalone ... -m largo <argv without --nproc/--max-restarts>."""
    largo_args = strip_flag(strip_flag(argv, "--nproc"), "--max-restarts")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "largo", *largo_args]


def relaunch_with_torchrun(nproc: int, argv: list[str], *, max_restarts: int = 0) -> NoReturn:
    """Replace this process by torchrun running `largo <argv>` on nproc local processes.

    exec, not a child: signals (Ctrl-C, SLURM's SIGTERM) reach torchrun directly, and its exit
    status, which names any failed rank, is ours.
    """
    cmd = torchrun_command(nproc, argv, max_restarts=max_restarts)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, restart_safe_env(os.environ))


def restart_safe_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """env with torchrun's rendezvous store kept apart from the workers' store.

    When torchrun shares its store with the workers, a restarted attempt can read the previous
    attempt's gloo/NCCL addresses and fail to connect (pytorch/pytorch#135712); with a store of
    their own per attempt, `--max-restarts` restarts come up cleanly.
    """
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **env}
