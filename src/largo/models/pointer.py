"""A pointer beside the vocabulary head: each next token is either generated or copied from a position read so far.

Why: a summary names what its source names (the function, its arguments, what it returns). A small model trained
from scratch on 26k docstrings learns the language of summaries but rarely the rare words of the one in front of it
(its outputs are fluent lines about the wrong thing, docs/seq2seq.md). The pointer-generator (See et al. 2017, "Get To
The Point") lets it copy them: from each position i one attention head over the positions j <= i (every position, as
Merity et al. 2016's pointer sentinel, so that no separator id is needed), and a gate g_i between the two outputs:

    P(w | i) = g_i softmax(head(h_i))_w + (1 - g_i) sum_{j <= i, x_j = w} a_ij,    g_i = sigmoid(gate(h_i))

Queries and keys are rotated by their positions (the trunk's rotary table), so that the pointer can find a position by
its distance (copy the word two after the one just copied) as well as by what it holds.

Queries come flattened (n, dim) with their row and position, so that training reads the target positions alone, and a
KV cache holds the keys and token ids of the positions already read (decoding adds one position a step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from largo.models.layers import KVCache

MASKED = -1e30  # a finite "minus infinity": logsumexp over no matching position must keep finite gradients


class Pointer(nn.Module):
    """Copy attention (queries and keys from the trunk's final states) and the generate-or-copy gate."""

    def __init__(self, dim: int, head_dim: int, init_std: float):
        super().__init__()
        self.init_std = init_std  # one head of the trunk's head size (its rotary table): finding a position needs no more
        self.q = nn.Linear(dim, head_dim, bias=False)
        self.k = nn.Linear(dim, head_dim, bias=False)
        self.gate = nn.Linear(dim, 1)

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.q.weight, std=self.init_std)
        nn.init.normal_(self.k.weight, std=self.init_std)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # g = 0.5: generating and copying start even

    def keys(self, h: torch.Tensor, tokens: torch.Tensor, rope: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (b, T, head_dim) and token ids (b, T, 1) of every position so far: the cache's, then these."""
        start = cache.length if cache is not None else 0
        pos = torch.arange(start, start + h.shape[1], device=h.device)
        k, ids = rotated(self.k(h).float(), rope, pos), tokens[..., None]
        return (k, ids) if cache is None else cache.extend(k, ids)

    def log_attention(self, hq: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor,
                      rope: torch.Tensor) -> torch.Tensor:
        """log a (n, T) of queries hq (n, dim) of rows `rows` at positions `pos` over their row's positions j <= pos."""
        q = rotated(self.q(hq).float(), rope, pos)  # (n, head_dim)
        scores = torch.einsum("nd,ntd->nt", q, keys[rows]) / math.sqrt(q.shape[-1])
        later = torch.arange(keys.shape[1], device=hq.device)[None] > pos[:, None]
        return torch.log_softmax(scores.masked_fill(later, MASKED), dim=-1)

    def target_log_prob(self, hq: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor,
                        ids: torch.Tensor, rope: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(target) (n,) of the mixture, without forming the copy distribution over the vocabulary (training)."""
        gen = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
        match = ids[rows, :, 0] == targets[:, None]  # (n, T) positions holding the target token
        copy = torch.logsumexp(self.log_attention(hq, rows, pos, keys, rope).masked_fill(~match, MASKED), dim=-1)
        g = self.gate(hq).float()[:, 0]
        return torch.logaddexp(F.logsigmoid(g) + gen, F.logsigmoid(-g) + copy)

    def log_probs(self, hq: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor,
                  rope: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log P (n, vocab): the whole mixture (decoding, evaluation and explanations)."""
        g = torch.sigmoid(self.gate(hq).float())  # (n, 1)
        p = g * torch.softmax(logits.float(), -1)
        copied = (1 - g) * self.log_attention(hq, rows, pos, keys, rope).exp()  # (n, T)
        p = p.scatter_add(1, ids[rows, :, 0], copied)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def rotated(x: torch.Tensor, rope: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x (..., t, d) or (n, d) rotated by the rotary table's angles at positions pos (t,) or (n,) (layers.apply_rope's
    half-split layout, each row at its own position)."""
    cos, sin = rope[0, pos], rope[1, pos]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
