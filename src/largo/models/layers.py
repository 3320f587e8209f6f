"""Transformer building blocks: RMSNorm, rotary embeddings, SwiGLU and SDPA attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (as Llama does), scaled by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)
        return normed * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Rotary (cos, sin) table, shape (2, seq_len, head_dim), half-split layout as in HF Llama."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (t, head_dim): each frequency used by both halves
    return torch.stack([angles.cos(), angles.sin()])


def apply_rope(x: torch.Tensor, rope: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotate (b, h, t, d) queries or keys by positions start .. start + t of the table."""
    t = x.shape[-2]
    cos, sin = rope[0, start : start + t].to(x.dtype), rope[1, start : start + t].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Keys and values of the positions seen so far by one attention layer (for generation)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (b, kv_heads, length, head_dim)
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


# On CPU in bf16, torch's flash-attention kernel costs 2.6-2.8x the plain matmul-softmax-matmul form at 128
# keys (fwd+bwd, 16x4 heads, one thread: 27-34 vs 10-12 ms), breaks even at 256 and wins beyond (512 keys:
# 202 vs 225 ms compiled). In fp32 the flash kernel is the faster one (16.6 vs 19.2 ms at 128 keys).
# "auto" takes the matmul form for bf16 on CPU up to this many keys; GPUs always use SDPA.
CPU_MATH_MAX_KEYS = 192


def uses_math_attention(kernel: str, device_type: str, bf16: bool, keys: int) -> bool:
    """Whether attention takes the matmul form: asked for, or "auto" for bf16 on CPU up to CPU_MATH_MAX_KEYS keys."""
    return kernel == "math" or (kernel == "auto" and device_type == "cpu" and bf16 and keys <= CPU_MATH_MAX_KEYS)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [+ mask]) v with the scores in fp32; k, v may have fewer (grouped) heads than q."""
    if k.shape[1] != q.shape[1]:
        k, v = (z.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for z in (k, v))  # (b, h, s, d)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (b, h, t, s)
    if causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v  # (b, h, t, d)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention: F.scaled_dot_product_attention, or the matmul form for short CPU sequences."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, *, causal: bool, kernel: str = "auto"):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.causal, self.kernel = causal, kernel
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        start = cache.length if cache is not None else 0
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (b, h, t, d)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (b, kv, t, d)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, rope, start), apply_rope(k, rope, start)
        if cache is not None:
            k, v = cache.extend(k, v)  # (b, kv, start + t, d)
            if self.causal and start and t > 1:  # queries at start.. see keys up to their own position
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
        is_causal = self.causal and mask is None and not (start and t == 1)
        keys = k.shape[-2]
        if uses_math_attention(self.kernel, x.device.type, q.dtype == torch.bfloat16, keys):
            y = math_attention(q, k, v, mask, is_causal)
        else:
            gqa = self.n_kv_heads != self.n_heads
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))  # (b, t, dim)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, rope: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights forward() lets SDPA keep to itself, recomputed from q and k: (b, heads, t, t), rows sum to 1.

        For explanations (attention rollout) of a whole sequence, without a cache; fp32 whatever the weights' dtype.
        """
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2).float()  # (b, h, t, d)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2).float()  # (b, kv, t, d)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (b, h, t, d): each kv head serves its group
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5  # (b, h, t, t)
        if self.causal:
            scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        if mask is not None:  # True = attend, broadcast over heads and queries
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
