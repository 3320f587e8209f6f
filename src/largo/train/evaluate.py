"""Evaluation: loss, perplexity and accuracy over held-out batches (sharded over ranks, all-reduced), one printed line."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from largo.data import Batch
from largo.errors import DataError
from largo.precision import autocast
from largo.models.loss import IGNORE, summed_loss

Score = Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (outputs, targets) -> loss sum, correct, count


def score_targets(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, correct argmax predictions and the count of every non-ignored target."""
    keep = targets != IGNORE
    correct = (logits.argmax(-1)[keep] == targets[keep]).sum()
    return summed_loss(logits, targets), correct, keep.sum()


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
             rank: int = 0, world: int = 1, confusion: torch.Tensor | None = None, score: Score = score_targets) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over all targets in `batches`; adds (true, predicted) counts into `confusion` if given.

    With world > 1 every rank calls this with the same batches: rank r evaluates batches r, r + world, ...
    and the sums (and confusion counts) are all-reduced, so every rank returns the 1-process result.
    `score` turns one batch's outputs into (loss sum, correct, count): cross-entropy over targets by default.
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
            outputs = call_model(model, x)
        sums += torch.stack([v.double() for v in score(outputs, y)])
        if confusion is not None:
            n, keep = confusion.shape[0], y != IGNORE
            pred = outputs.argmax(-1)
            confusion += torch.bincount(y[keep] * n + pred[keep], minlength=n * n).view(n, n).to(confusion.device)
        mine += 1
    if world > 1:
        if spare is not None and mine < -(-total // world):
            with autocast(device, precision):  # a rank one batch short still joins FSDP's all-gathers; result unused
                call_model(model, to_device(spare[0], device))
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
