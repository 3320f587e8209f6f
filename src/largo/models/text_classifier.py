"""Text classifier: token embedding (token 0 = padding), the shared encoder trunk with rotary positions, pooled head."""

from __future__ import annotations

import torch
from torch import nn

from largo.models.config import ModelConfig
from largo.models.encoder import EncoderTrunk

PAD_ID = 0  # the tokenizer's first special token; prepared sequences are padded with it


class TextClassifier(nn.Module):
    """Token ids (b, t), padded with PAD_ID -> class logits (b, num_classes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be resolved (> 0) before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.trunk = EncoderTrunk(cfg, rotary=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.max_seq_len ({self.cfg.max_seq_len})")
        keep = tokens != PAD_ID  # (b, t)
        x = self.trunk.add_class_token(self.tok_emb(tokens))  # (b, [1 +] t, dim)
        if self.trunk.cls is not None:
            keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
        return self.trunk(x, keep)

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.init_std)
        self.trunk.init_weights()
