"""Evaluation: loss, perplexity and accuracy over held-out batches (sharded over ranks, all-reduced), one printed line.

Each batch is scored by a `Score` (model, inputs, targets) -> Scored: the architecture's own (`ArchSpec.score`,
which runs its training loss's path) for a config-built run, cross-entropy over the model's outputs otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from largo.data import Batch
from largo.errors import DataError
from largo.precision import autocast
from largo.models.loss import IGNORE, Scored, score_targets

Score = Callable[[nn.Module, Any, torch.Tensor], Scored]  # (model, inputs, targets) -> summed loss, correct, count[, predicted]


def score_outputs(model: nn.Module, inputs: Any, targets: torch.Tensor) -> Scored:
    """Cross-entropy and argmax accuracy over the model's outputs (ArchSpec.score's default, for any module)."""
    return score_targets(call_model(model, inputs), targets)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """model(**inputs) for dict inputs, model(inputs) otherwise."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors, and tensors inside dicts/lists/tuples, to device."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], *, device: torch.device, precision: str = "fp32",
             rank: int = 0, world: int = 1, confusion: torch.Tensor | None = None, score: Score = score_outputs) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over all targets in `batches`; adds (true, predicted) counts into `confusion` if given.

    With world > 1 every rank calls this with the same batches: rank r evaluates batches r, r + world, ...
    and the sums (and confusion counts) are all-reduced, so every rank returns the 1-process result.
    `score` runs the model on one batch and sums its loss, correct predictions and targets (under autocast).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, targets
    mine, total, spare = 0, 0, None
    for i, (x, y) in enumerate(batches):
        total, spare = i + 1, spare or (x, y)
        if i % world != rank:
            continue
        x, y = to_device(x, device), to_device(y, device)
        with autocast(device, precision):
            scored = score(model, x, y)
        sums += torch.stack([v.double() for v in scored[:3]])
        if confusion is not None:
            if scored.predicted is None:
                raise ValueError("a confusion matrix needs the score's predictions: return Scored(..., predicted=argmax per target)")
            n, keep = confusion.shape[0], y != IGNORE
            confusion += torch.bincount(y[keep] * n + scored.predicted[keep], minlength=n * n).view(n, n).to(confusion.device)
        mine += 1
    if world > 1:
        if spare is not None and mine < -(-total // world):
            with autocast(device, precision):  # a rank one batch short still joins FSDP's all-gathers; result unused
                score(model, to_device(spare[0], device), to_device(spare[1], device))
        torch.distributed.all_reduce(sums)
        if confusion is not None:
            counts = confusion.to(device)
            torch.distributed.all_reduce(counts)
            confusion.copy_(counts.to(confusion.device))
    model.train(was_training)
    loss_sum, correct, count = sums.tolist()
    if count == 0:
        raise DataError("the evaluation data holds no examples; give at least one batch")
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / count, "targets": int(count)}


def format_result(result: dict[str, float]) -> str:
    """The classic one-liner: `Test Loss: 2.345 | Acc: 41.200% (0.412)`."""
    acc = result["accuracy"]
    return f"Test Loss: {result['loss']:.3f} | Acc: {100 * acc:.3f}% ({acc:.3f})"
