"""Sampling from a language model: temperature and top-k, reproducible under a seed."""

from __future__ import annotations

import torch
from torch import nn

from largo.models.layers import KVCache


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
    """Append up to max_new_tokens sampled tokens to prompt (greedy when temperature == 0).

    Past keys and values are cached, so each new token costs one position's forward pass.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, t)
    n_layers = len(model.trunk.blocks)
    cache: list[KVCache] = []
    for _ in range(max_new_tokens):
        if not cache or cache[0].length >= max_seq_len:
            # (re)fill the cache from the last context window: keep half of it so refills are rare
            cache = [KVCache() for _ in range(n_layers)]
            context = tokens[:, -(max_seq_len // 2 if tokens.shape[1] >= max_seq_len else max_seq_len):]
            logits = model(context, cache=cache)[:, -1].float()  # (1, vocab)
        else:
            logits = model(tokens[:, -1:], cache=cache)[:, -1].float()
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
