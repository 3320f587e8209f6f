"""The trunk every model shares: THE blocks, a final RMSNorm, the rotary table, the length guard and the init.

A language model puts a token embedding before it (causal) and a vocabulary head after it; a
classifier puts a stem before it (bidirectional) and a pooled head after it.
"""

from __future__ import annotations

import torch
from torch import nn

from largo.models.block import Block, BlockConfig, Modulation
from largo.models.config import ModelConfig
from largo.models.layers import KVCache, RMSNorm, rope_tables


class Trunk(nn.Module):
    """Token states (b, t, dim) -> normalised states (b, t, dim) through cfg.n_layers blocks."""

    def __init__(self, cfg: ModelConfig, *, causal: bool, rotary: bool = True, extra_positions: int = 0):
        super().__init__()
        self.cfg, self.extra = cfg, extra_positions  # extra: positions beyond max_seq_len (a class token)
        block = BlockConfig(cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.hidden, cfg.norm_eps, causal, cfg.attention)
        self.blocks = nn.ModuleList(Block(block) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Not a parameter and not saved: rebuilt by init_weights(), so the model can be built on meta.
        self.register_buffer("rope", self._rope_table() if rotary else None, persistent=False)

    def _rope_table(self, device: torch.device | None = None) -> torch.Tensor:
        return rope_tables(self.cfg.head_dim, self.cfg.max_seq_len + self.extra, self.cfg.rope_theta, device)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                mods: list[Modulation] | None = None) -> torch.Tensor:
        """x (b, t, dim); mask broadcastable to (b, heads, t, t) (True = attend); a cache continues its positions;
        mods: one adaLN modulation per block (a conditioned model), None for the plain blocks."""
        end = x.shape[1] + (cache[0].length if cache else 0)
        if end > self.cfg.max_seq_len + self.extra:
            raise ValueError(f"sequence length {end - self.extra} exceeds model.max_seq_len ({self.cfg.max_seq_len})")
        for i, block in enumerate(self.blocks):
            x = block(x, self.rope, mask, cache[i] if cache else None, mods[i] if mods else None)
        return self.norm(x)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The rotary table (a buffer, built on meta like everything else), then every block and the norm."""
        if self.rope is not None:
            self.rope = self._rope_table(self.rope.device)
        for block in self.blocks:
            block.init_weights(self.cfg.init_std, self.cfg.n_layers)
        self.norm.reset_parameters()
