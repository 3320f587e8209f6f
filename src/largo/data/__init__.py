"""Data: preparation into shards or arrays, and datasets that hand out batches addressed by step."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets); targets == -100 are ignored


class Dataset(Protocol):
    """What the training loop needs from any modality."""

    def train_rows(self, samples: range) -> Batch:
        """Inputs and targets for the given global sample indices (a pure function of the index)."""
        ...

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        """Held-out batches in a fixed order; max_batches = 0 means all of them."""
        ...


def rank_samples(step: int, *, global_batch: int, micro_batch: int, rank: int, world: int) -> list[range]:
    """This rank's micro-batches of global sample indices for `step`.

    The global batch is the same whatever the world size: rank r takes the r-th contiguous slice.
    """
    per_rank = global_batch // world
    start = step * global_batch + rank * per_rank
    return [range(s, min(s + micro_batch, start + per_rank)) for s in range(start, start + per_rank, micro_batch)]
