"""A 2-rank gloo job for test_faults: StepGuard's verdicts must be the same on every rank.

Kept apart from the test module so the spawned ranks import only torch and largo.train.faults.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def run(rank: int, world: int, rendezvous: str, out: str) -> None:
    """Three steps: all fine; a signal on rank 1 only; a NaN loss on rank 0 only."""
    from largo.distributed.env import DistEnv
    from largo.train.faults import StepGuard

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)  # no TCP listener
    guard = StepGuard(max_bad_steps=5, spike_factor=0.0, env=DistEnv(rank, rank, world), say=lambda _m: None)
    verdicts = []
    for step in (1, 2, 3):
        if step == 2 and rank == 1:
            guard.signal_name = "SIGTERM"  # what the handler sets
        loss = torch.tensor(float("nan") if step == 3 and rank == 0 else 1.0)
        guard.non_finite(step, loss, torch.tensor(0.5), iter(()))
        verdicts.append([not guard.settle(), guard.stop_requested()])
        guard.signal_name = None
    Path(out, f"rank{rank}.json").write_text(json.dumps(verdicts))
    dist.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
