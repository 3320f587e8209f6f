"""largo.Trainer alone or under torchrun: a small MLP on seeded synthetic data, for test_distributed.

The global batch is the same whatever the world size: grad_accum = 2 // world loader batches per rank
per step. Rank 0 writes the held-out evaluation to <run_dir>.eval.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import largo


def main(run_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    trainer = largo.Trainer(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), grad_accum=2 // world, epochs=2,
                            batch_size=8, run_dir=run_dir, log_every=1, device="cpu", log=lambda _m: None)
    trainer.fit(DataLoader(TensorDataset(x[:192], y[:192]), batch_size=8, shuffle=True))
    result = trainer.evaluate(DataLoader(TensorDataset(x[192:], y[192:]), batch_size=8))
    if trainer.env.is_main:
        with open(f"{run_dir}.eval.json", "w") as f:
            json.dump(result, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
