"""The classifier trunk shared by every encoder: [class token] -> bidirectional blocks -> RMSNorm -> pool -> head.

A modality only adds a stem that turns its input into (b, t, dim) token states; the blocks are
the same `Block` the language model uses, built with causal=False.
"""

from __future__ import annotations

import torch
from torch import nn

from largo.models.block import Block
from largo.models.config import ModelConfig
from largo.models.gpt import block_config
from largo.models.layers import RMSNorm, rope_tables


class EncoderTrunk(nn.Module):
    """Token states (b, t, dim) -> class logits (b, num_classes)."""

    def __init__(self, cfg: ModelConfig, *, rotary: bool = False):
        super().__init__()
        if cfg.num_classes < 2:
            raise ValueError("ModelConfig.num_classes must be resolved (>= 2) before building a classifier")
        self.cfg = cfg
        self.cls = nn.Parameter(torch.empty(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.blocks = nn.ModuleList(Block(block_config(cfg, causal=False)) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        # Stems without learned positions (audio frames, text tokens) get rotary ones, with room for the class token.
        self.register_buffer("rope", self._rope_table() if rotary else None, persistent=False)

    def _rope_table(self, device: torch.device | None = None) -> torch.Tensor:
        extra = 1 if self.cfg.pooling == "cls" else 0
        return rope_tables(self.cfg.head_dim, self.cfg.max_seq_len + extra, self.cfg.rope_theta, device)

    def add_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the learned class token when pooling = 'cls': (b, t, d) -> (b, 1 + t, d)."""
        if self.cls is None:
            return x
        return torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, t, d) with the class token already in place; keep (b, t) marks real (non-padding) positions."""
        mask = None if keep is None else keep[:, None, None, :]  # (b, 1, 1, t): every query sees the real keys
        for block in self.blocks:
            x = block(x, self.rope, mask)
        x = self.norm(x)
        if self.cls is not None:
            pooled = x[:, 0]
        elif keep is None:
            pooled = x.mean(dim=1)
        else:
            w = keep.to(x.dtype).unsqueeze(-1)  # (b, t, 1)
            pooled = (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)  # (b, num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Rotary table; blocks as in the LM; class token small normal; head zero, so the first loss is exactly ln(classes)."""
        if self.rope is not None:  # a buffer: built on meta like everything else, so computed here
            self.rope = self._rope_table(self.rope.device)
        for block in self.blocks:
            block.init_weights(self.cfg.init_std, self.cfg.n_layers)
        self.norm.reset_parameters()
        if self.cls is not None:
            nn.init.normal_(self.cls, std=self.cfg.init_std)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
