"""ModelConfig: the shape of a transformer, its exact parameter count and FLOPs per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from largo.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape of the transformer; every model (text, vision, speech) is built from these fields."""

    arch: Literal["gpt", "vit", "audio", "text_classifier"] = "gpt"  # which stem/head surrounds the shared block
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

    # Classifiers (vit, audio, text_classifier): the same blocks, bidirectional, with a pooled head.
    num_classes: int = 0  # classifier outputs; 0 = the number of labels found in the data
    pooling: Literal["mean", "cls"] = "mean"  # token states -> one vector: mean over tokens, or a learned class token
    image_size: int = 0  # vit: square input side in pixels; 0 = the data's own size
    in_channels: int = 0  # vit: image channels; 0 = the data's (1 grey, 3 colour)
    patch_size: int = 4  # vit: side of the square patches cut by the stem; must divide image_size
    sample_rate: int = 16000  # audio: waveform rate (Hz) of the model's input; data are resampled to it
    n_mels: int = 64  # audio: mel bands of the log-mel frontend (25 ms windows, 10 ms hop)
    f_max: float = 0.0  # audio: top edge of the mel filterbank in Hz; 0 = sample_rate / 2

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
        self._check_classifier()

    def _check_classifier(self) -> None:
        """Validate the stem/head fields of the classifier architectures."""
        for key in ("num_classes", "image_size", "in_channels"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 0 (0 = from the data)")
        if self.patch_size < 1 or self.n_mels < 1:
            raise ConfigError(f"model.patch_size ({self.patch_size}) and model.n_mels ({self.n_mels}) must be >= 1")
        if self.image_size and self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must divide by model.patch_size ({self.patch_size})")
        if self.sample_rate < 1000:
            raise ConfigError(f"model.sample_rate ({self.sample_rate}) must be >= 1000 Hz")
        if not 0 <= self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"model.f_max ({self.f_max}) must be in [0, sample_rate / 2 = {self.sample_rate / 2}]")

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

    @property
    def is_classifier(self) -> bool:
        return self.arch != "gpt"

    @property
    def num_patches(self) -> int:
        """vit: patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def win_length(self) -> int:
        """audio: samples per 25 ms analysis window."""
        return self.sample_rate // 40

    @property
    def hop_length(self) -> int:
        """audio: samples between frames (10 ms)."""
        return self.sample_rate // 100

    def audio_tokens(self, num_samples: int) -> int:
        """audio: transformer positions for a clip: frames (centred STFT), halved by the stem's stride."""
        frames = num_samples // self.hop_length + 1
        return (frames + 1) // 2

    def stem_params(self) -> int:
        """Classifiers: parameters before the blocks (stem, positions, class token)."""
        d, cls = self.dim, self.dim if self.pooling == "cls" else 0
        if self.arch == "vit":
            positions = (self.num_patches + (1 if self.pooling == "cls" else 0)) * d
            return self.in_channels * self.patch_size**2 * d + d + positions + cls
        if self.arch == "audio":
            return (self.n_mels * 3 * d + d) + (d * 3 * d + d) + cls  # two 1-D convolutions, kernel 3
        return self.vocab_size * d + cls  # text_classifier: token embedding

    def stem_matmul_params(self) -> int:
        """Classifiers: stem weights multiplied per transformer position (the audio stem's first conv runs at twice the rate)."""
        if self.arch == "vit":
            return self.in_channels * self.patch_size**2 * self.dim
        if self.arch == "audio":
            return 2 * self.n_mels * 3 * self.dim + 3 * self.dim * self.dim
        return 0  # an embedding lookup

    def num_params(self) -> int:
        """Exact trainable parameter count of the built model (tied head counted once)."""
        if self.is_classifier:
            head = self.dim * self.num_classes + self.num_classes
            return self.stem_params() + self.n_layers * self.block_params() + self.dim + head
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return embed + self.n_layers * self.block_params() + self.dim + head

    def embedding_params(self) -> int:
        """Parameters of the input embedding table (a lookup, no FLOPs)."""
        return self.vocab_size * self.dim

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 * N (matmul params incl. head) + 12 * L * d * T (attention)."""
        t = seq_len or self.max_seq_len
        if self.is_classifier:  # the head runs once per example: spread over its positions
            n_matmul = self.n_layers * self.block_params() + self.stem_matmul_params() + self.dim * self.num_classes // t
            return 6 * n_matmul + 12 * self.n_layers * self.dim * t
        n_matmul = self.n_layers * self.block_params() + self.vocab_size * self.dim
        return 6 * n_matmul + 12 * self.n_layers * self.dim * t
