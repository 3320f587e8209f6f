"""THE transformer block, shared by every model: pre-norm attention then pre-norm SwiGLU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from largo.models.layers import Attention, KVCache, RMSNorm, SwiGLU


@dataclass(frozen=True)
class BlockConfig:
    """What one block needs to know; causal for decoders, bidirectional for encoders."""

    dim: int
    n_heads: int
    n_kv_heads: int
    hidden: int
    norm_eps: float
    causal: bool
    attention: str = "auto"  # the attention kernel: "auto", "sdpa" or "math" (models/layers.py)


class Modulation(NamedTuple):
    """adaLN-Zero's per-example conditioning of one block (DiT), each (b, 1, dim): shift = scale = 0 with gate = 1 is the
    plain block; all zero (a DiT's start) is the identity."""

    shift_attn: torch.Tensor
    scale_attn: torch.Tensor
    gate_attn: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)). Modality lives in stems and heads, never here.

    A conditioned model (a diffusion transformer) passes a Modulation: each branch's normalised input is scaled and
    shifted, and its output gated, by what the model computed from its conditioning (timestep, class).
    """

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, causal=cfg.causal, kernel=cfg.attention)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None = None, mask: torch.Tensor | None = None, cache: KVCache | None = None,
        mod: Modulation | None = None,
    ) -> torch.Tensor:
        if mod is None:
            x = x + self.attn(self.attn_norm(x), rope, mask, cache)
            return x + self.mlp(self.mlp_norm(x))
        x = x + mod.gate_attn * self.attn(self.attn_norm(x) * (1 + mod.scale_attn) + mod.shift_attn, rope, mask, cache)
        return x + mod.gate_mlp * self.mlp(self.mlp_norm(x) * (1 + mod.scale_mlp) + mod.shift_mlp)

    def init_weights(self, std: float, n_layers: int) -> None:
        """Normal(0, std) inputs; output projections scaled by 1/sqrt(2 * n_layers) (GPT-2 style)."""
        out_std = std / math.sqrt(2 * n_layers)
        for lin in (self.attn.wq, self.attn.wk, self.attn.wv, self.mlp.gate, self.mlp.up):
            nn.init.normal_(lin.weight, mean=0.0, std=std)
        for lin in (self.attn.wo, self.mlp.down):
            nn.init.normal_(lin.weight, mean=0.0, std=out_std)
        self.attn_norm.reset_parameters()
        self.mlp_norm.reset_parameters()
