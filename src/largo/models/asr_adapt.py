"""Test-time adaptation of a speech recogniser to one recording (SUTA: Lin et al., Interspeech 2022).

A recogniser trained on synthetic voices meets a voice unlike them. Before a recording is decoded, a few AdamW steps
lower the entropy of the model's own output distribution over that recording's frames (those whose most likely label
is a character, not the blank), moving only the audio stem and the norms' gains; the weights are put back before the
next recording. No transcript is read and nothing carries from one recording to the next: each is decoded by the
trained model plus its own few steps, as if by a slower decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from largo.data.transcripts import BLANK
from largo.precision import autocast

TEMPERATURE = 2.5  # logits are divided by this before the entropy (SUTA's smoothing: a sharper model barely moves)


def adaptable(model: nn.Module) -> list[nn.Parameter]:
    """What adaptation moves: the audio stem (the front end meets the new voice first) and every norm's gain."""
    return [p for name, p in model.named_parameters() if name.startswith("stem.") or "norm" in name]


def frame_entropy(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the tempered output distribution over the real frames whose best label is not the blank
    (the blank's certainty would otherwise dominate); 0 when there are none."""
    logits = logits.float() / TEMPERATURE
    inside = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
    chosen = inside & (logits.argmax(-1) != BLANK)
    if not chosen.any():
        return logits.sum() * 0.0
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)[chosen].mean()


@contextmanager
def restored(params: list[nn.Parameter]) -> Iterator[None]:
    """The parameters' values and requires_grad flags as they were, whatever happens inside."""
    saved = [(p.detach().clone(), p.requires_grad) for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, (value, flag) in zip(params, saved):
                p.copy_(value)
                p.requires_grad_(flag)
                p.grad = None


def adapt(forward: Callable[[], tuple[torch.Tensor, torch.Tensor]], params: list[nn.Parameter], *, steps: int, lr: float,
          device: torch.device, precision: str) -> list[float]:
    """steps AdamW steps on params that lower frame_entropy of forward()'s (logits, lengths); the entropy before each."""
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            with autocast(device, precision):
                loss = frame_entropy(*forward())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            history.append(float(loss.detach()))
    return history
