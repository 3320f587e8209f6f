"""Attention rollout (Abnar & Zuidema 2020) across the trunk's blocks: what Captum does not have.

SDPA never returns its weights, so a forward hook on every attention module recomputes them from the
same q and k (`Attention.probabilities`). Each block's head-averaged weights A become 0.5 A + 0.5 I (the
residual path carries half), and their product over the blocks says how much each input position
feeds each output position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from largo.models.layers import Attention


def attention_maps(model: nn.Module, run: Callable[[], Any]) -> list[torch.Tensor]:
    """Call run() (a forward of `model`) and return each attention layer's weights (b, heads, t, t), in block order."""
    maps: list[torch.Tensor] = []

    def hook(module: Attention, args: tuple[Any, ...], _out: Any) -> None:
        x, rope, mask = (list(args) + [None, None])[:3]  # Block calls attn(norm(x), rope, mask, cache)
        maps.append(module.probabilities(x, rope, mask))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return maps


def rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """(b, T, T): row i = the share of position i's final state that flows from each input position (rows sum to 1)."""
    if not maps:
        raise ValueError("no attention layers ran; attention rollout needs a model built on the shared trunk")
    b, _, t, _ = maps[0].shape
    eye = torch.eye(t, device=maps[0].device)
    out = eye.expand(b, t, t)
    for a in maps:
        out = (0.5 * a.mean(1) + 0.5 * eye) @ out  # heads averaged; the residual stream keeps half
    return out


def attention_rollout(model: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """Rollout of the attention that run() (a forward of `model`) computes: (b, T, T)."""
    return rollout(attention_maps(model, run))
