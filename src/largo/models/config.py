"""ModelConfig: the shape of the shared trunk (width, depth, heads, MLP, positions), validated; every architecture extends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from largo.errors import ConfigError


@dataclass
class ModelConfig:
    """The trunk every model shares; an architecture's config (models/<arch>.py) adds its stem and head fields."""

    decoding_keys: ClassVar[tuple[str, ...]] = ()  # how outputs are decoded, not what was trained: `largo eval` may override them
    arch: str = "gpt"  # which architecture's spec builds the model: gpt, vit, audio, text_classifier, or one registered
    dim: int = 256  # residual stream width (d_model)
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads; head_dim = dim / n_heads
    n_kv_heads: int = 0  # key/value heads; 0 = n_heads (multi-head), fewer = grouped-query
    mlp_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * dim rounded up to multiple_of
    multiple_of: int = 64  # rounding for the default SwiGLU width
    max_seq_len: int = 256  # positions per example (context length), and the rotary table's length
    rope_theta: float = 10000.0  # rotary base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    init_std: float = 0.02  # std of weight init; output projections get std / sqrt(2 * n_layers)
    attention: Literal["auto", "sdpa", "math"] = "auto"  # kernel: sdpa (flash on GPU), math (matmul + softmax); auto = math for bf16 on CPU up to 192 keys
    init_from: str = ""  # fine-tune: start from this checkpoint's (or run's) weights, fresh optimizer; "" = random init

    def __post_init__(self) -> None:
        for key in ("dim", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 1")
        if self.n_kv_heads < 0 or self.mlp_hidden < 0:
            raise ConfigError("model.n_kv_heads and model.mlp_hidden must be >= 0")
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
        """Parameters in one transformer block (attention, SwiGLU, two RMSNorm weights): the N of 6N FLOPs per block."""
        d, kv = self.dim, self.kv_heads * self.head_dim
        attn = d * d + 2 * d * kv + d * d  # q, k, v, o
        mlp = 3 * d * self.hidden  # gate, up, down
        return attn + mlp + 2 * d

    def trunk_flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per position of the blocks: 6 * their weights + 12 * L * d * T for attention (PaLM, nanoGPT)."""
        return 6 * self.n_layers * self.block_params() + 12 * self.n_layers * self.dim * seq_len
