"""Evaluation: summed cross-entropy and accuracy over held-out batches, one printed line."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from largo.data import Batch

IGNORE = -100  # target value that takes no part in loss or accuracy


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (params stay fp32), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every non-ignored target (the caller divides by the global count)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum")


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], *, device: torch.device, precision: str = "fp32", confusion: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over all targets in `batches`; adds (true, predicted) counts into `confusion` if given."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits = model(x)
        keep = y != IGNORE
        loss_sum += summed_loss(logits, y).item()
        pred = logits.argmax(-1)
        correct += (pred[keep] == y[keep]).sum().item()
        if confusion is not None:
            n = confusion.shape[0]
            confusion += torch.bincount(y[keep] * n + pred[keep], minlength=n * n).view(n, n).to(confusion.device)
        count += keep.sum().item()
    model.train(was_training)
    loss = loss_sum / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(1, count), "targets": count}


def format_result(result: dict[str, float]) -> str:
    """The classic one-liner: `Test Loss: 2.345 | Acc: 41.200% (0.412)`."""
    acc = result["accuracy"]
    return f"Test Loss: {result['loss']:.3f} | Acc: {100 * acc:.3f}% ({acc:.3f})"
