"""Named model sizes for `largo plan --model`: Llama-style shapes with the batch their recipes used."""

from __future__ import annotations

from dataclasses import dataclass

from largo.errors import ConfigError
from largo.models.gpt import GPTConfig


@dataclass(frozen=True)
class ModelSize:
    """A named shape plus the training batch its reference recipe used."""

    model: GPTConfig
    global_batch: int  # sequences per optimizer step
    source: str  # where the shape comes from


def _m(dim: int, layers: int, heads: int, hidden: int, vocab: int, seq: int, *, kv: int = 0, tied: bool = False) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, mlp_hidden=hidden,
                       max_seq_len=seq, tie_embeddings=tied)


# One table; shapes as published (hidden = SwiGLU width), batches as in the papers (tokens = batch * seq).
MODEL_SIZES: dict[str, ModelSize] = {
    "124m": ModelSize(_m(768, 12, 12, 2048, 50257, 1024, tied=True), 512, "the gpt2_124m preset (GPT-2 small shape)"),
    "350m": ModelSize(_m(1024, 24, 16, 2816, 50257, 1024, tied=True), 512, "GPT-2 medium shape, SwiGLU at 8/3 d"),
    "1b": ModelSize(_m(2048, 22, 32, 5632, 32000, 2048, kv=4), 1024, "TinyLlama-1.1B"),
    "7b": ModelSize(_m(4096, 32, 32, 11008, 32000, 4096), 1024, "Llama-2 7B"),
    "13b": ModelSize(_m(5120, 40, 40, 13824, 32000, 4096), 1024, "Llama-2 13B"),
    "70b": ModelSize(_m(8192, 80, 64, 28672, 32000, 4096, kv=8), 1024, "Llama-2 70B"),
}


def model_size(name: str) -> ModelSize:
    """The named size, or a one-line error listing the valid names."""
    if name.lower() not in MODEL_SIZES:
        raise ConfigError(f"--model {name!r} is unknown; valid: {', '.join(MODEL_SIZES)}")
    return MODEL_SIZES[name.lower()]
