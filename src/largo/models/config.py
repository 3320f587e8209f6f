"""ModelConfig: the shape of a transformer, its exact parameter count and FLOPs per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from largo.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape of the transformer; every model (text, vision, speech) is built from these fields."""

    arch: Literal["gpt"] = "gpt"  # which stem/head surrounds the shared block
    vocab_size: int = 0  # tokens in the vocabulary; 0 = take it from the prepared tokenizer
    dim: int = 256  # residual stream width (d_model)
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads; head_dim = dim / n_heads
    n_kv_heads: int = 0  # key/value heads; 0 = n_heads (multi-head), fewer = grouped-query
    mlp_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * dim rounded up to multiple_of
    multiple_of: int = 64  # rounding for the default SwiGLU width
    max_seq_len: int = 256  # context length used for training and the rotary table
    rope_theta: float = 10000.0  # rotary base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # share the token embedding with the output head
    init_std: float = 0.02  # std of weight init; output projections get std / sqrt(2 * n_layers)
    init_from: str = ""  # fine-tune: start from this checkpoint's (or run's) weights, fresh optimizer; "" = random init

    def __post_init__(self) -> None:
        for key in ("dim", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 1")
        if self.vocab_size < 0 or self.n_kv_heads < 0 or self.mlp_hidden < 0:
            raise ConfigError("model.vocab_size, model.n_kv_heads and model.mlp_hidden must be >= 0")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must divide model.dim ({self.dim})")
        if self.head_dim % 2:
            raise ConfigError(f"model.dim / model.n_heads ({self.head_dim}) must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads})")
        if self.norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ConfigError("model.norm_eps, model.rope_theta and model.init_std must be > 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden(self) -> int:
        """SwiGLU hidden width: explicit, or Llama's 2/3 * 4d rounded up to multiple_of."""
        if self.mlp_hidden:
            return self.mlp_hidden
        h = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def block_params(self) -> int:
        """Parameters in one transformer block (attention, SwiGLU, two RMSNorm weights)."""
        d, kv = self.dim, self.kv_heads * self.head_dim
        attn = d * d + 2 * d * kv + d * d  # q, k, v, o
        mlp = 3 * d * self.hidden  # gate, up, down
        return attn + mlp + 2 * d

    def num_params(self) -> int:
        """Exact trainable parameter count of the built model (tied head counted once)."""
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return embed + self.n_layers * self.block_params() + self.dim + head

    def embedding_params(self) -> int:
        """Parameters of the input embedding table (a lookup, no FLOPs)."""
        return self.vocab_size * self.dim

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 * N (matmul params incl. head) + 12 * L * d * T (attention)."""
        t = seq_len or self.max_seq_len
        n_matmul = self.n_layers * self.block_params() + self.vocab_size * self.dim
        return 6 * n_matmul + 12 * self.n_layers * self.dim * t
