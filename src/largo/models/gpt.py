"""Decoder-only language model: token embedding -> causal blocks -> RMSNorm -> vocabulary head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from largo.models.block import Block, BlockConfig
from largo.models.config import ModelConfig
from largo.models.layers import KVCache, RMSNorm, rope_tables


def block_config(cfg: ModelConfig, *, causal: bool) -> BlockConfig:
    """The shared block's shape from a model config."""
    return BlockConfig(cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.hidden, cfg.norm_eps, causal)


class GPT(nn.Module):
    """GPT-style causal LM; logits (b, t, vocab) for tokens (b, t)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be resolved (> 0) before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(block_config(cfg, causal=True)) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Tied: the head reuses tok_emb.weight in forward (no aliased Parameter to survive to_empty/FSDP).
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Not a parameter and not saved: rebuilt by init_weights(), so the model can be built on meta.
        self.register_buffer("rope", rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta), persistent=False)

    def forward(self, tokens: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        """Logits for tokens (b, t); with a cache, tokens continue the cached positions."""
        end = tokens.shape[1] + (cache[0].length if cache else 0)
        if end > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {end} exceeds model.max_seq_len ({self.cfg.max_seq_len})")
        x = self.tok_emb(tokens)  # (b, t, dim)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rope, cache=cache[i] if cache else None)
        x = self.norm(x)
        return self.head(x) if self.head is not None else F.linear(x, self.tok_emb.weight)  # (b, t, vocab)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fill every parameter and the rotary table; used after to_empty() on a meta-built model."""
        self.rope = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, self.rope.device)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.init_std)
        for block in self.blocks:
            block.init_weights(self.cfg.init_std, self.cfg.n_layers)
        self.norm.reset_parameters()
        if self.head is not None:
            nn.init.normal_(self.head.weight, mean=0.0, std=self.cfg.init_std)
