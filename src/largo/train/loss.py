"""The training loss: cross-entropy summed over targets, so the loop can divide by the global batch's count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # target value that takes no part in loss or accuracy


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every non-ignored target (the caller divides by the global count).

    logits (..., classes) and targets (...): a language model's (b, t, vocab) over (b, t), or a
    classifier's (b, classes) over (b,). Computed in fp32 whatever the autocast dtype.
    """
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum")
