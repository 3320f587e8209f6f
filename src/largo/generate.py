"""Sampling from a language model: temperature and top-k, reproducible under a seed."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: list[int],
    *,
    max_new_tokens: int,
    max_seq_len: int,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    stop_id: int | None = None,
) -> list[int]:
    """Append up to max_new_tokens sampled tokens to prompt (greedy when temperature == 0)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, t)
    for _ in range(max_new_tokens):
        logits = model(tokens[:, -max_seq_len:])[:, -1].float()  # (1, vocab)
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        tokens = torch.cat([tokens, nxt], dim=1)
        if stop_id is not None and int(nxt) == stop_id:
            break
    return tokens[0].tolist()
