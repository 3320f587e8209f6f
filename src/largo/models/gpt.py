"""The language model: token embedding -> the trunk (causal) -> RMSNorm -> vocabulary head; its spec and data.

Data: a text corpus prepared into BPE token shards (data/prepare.py); an example is a window of
max_seq_len tokens and its next-token targets. The tokenizer travels in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from largo.data.config import TextDataConfig
from largo.data.prepare import checked_tokenizer_file, prepare, read_manifest, read_text_input, token_pieces
from largo.data.text import RandomTokens, TextLMData
from largo.errors import CheckpointError, ConfigError, DataError
from largo.models.config import ModelConfig
from largo.models.layers import KVCache
from largo.models.loss import Scored, chunk_rows, linear_cross_entropy, linear_scores
from largo.models.results import GenerateRequest
from largo.models.spec import ArchSpec, Attribution, DataShape, MemoryTerms, Task, register
from largo.models.trunk import Trunk
from largo.precision import Layout
from largo.rundir import TOKENIZER

# Saved bytes per token and d at the head (final norm + head input), excluding the fp32 log-softmax.
HEAD_COEFFS = {"fp32": 12, "autocast": 10, "mixed": 8}


@dataclass
class GPTConfig(ModelConfig):
    """A decoder-only language model (Llama-shaped: exports to Hugging Face as LlamaForCausalLM)."""

    arch: str = "gpt"
    vocab_size: int = 0  # tokens in the vocabulary; 0 = take it from the prepared tokenizer
    tie_embeddings: bool = True  # share the token embedding with the output head
    zero_init_head: bool = False  # an untied head starts at zero: uniform first predictions (modded-nanogpt's speedrun)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size ({self.vocab_size}) must be >= 0 (0 = from the tokenizer)")
        if self.zero_init_head and self.tie_embeddings:
            raise ConfigError("model.zero_init_head needs model.tie_embeddings = false (a zero tied head is a zero embedding)")


class GPT(nn.Module):
    """GPT-style causal LM; logits (b, t, vocab) for tokens (b, t)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("GPTConfig.vocab_size must be resolved (> 0) before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.trunk = Trunk(cfg, causal=True)
        # Tied: the head reuses tok_emb.weight in forward (no aliased Parameter to survive to_empty/FSDP).
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                score: bool = False) -> torch.Tensor | Scored:
        """Logits (b, t, vocab) for tokens (b, t); with targets (b, t), the summed cross-entropy instead (score: evaluation's
        Scored: that loss, correct argmax predictions and the count).

        With targets the head and the loss run together (models/loss.py), in chunks when the logits
        would be large, so neither training nor evaluation holds (b * t) x vocab logits. With a cache,
        tokens continue the cached positions. Evaluation passes through forward too, where FSDP gathers.
        """
        x = self.trunk(self.tok_emb(tokens), cache=cache)  # (b, t, dim)
        w = self.head.weight if self.head is not None else self.tok_emb.weight  # tied: the embedding is the head
        if targets is not None and score:
            return linear_scores(x.flatten(0, 1), w, targets.flatten())
        if targets is not None:
            return linear_cross_entropy(x.flatten(0, 1), w, targets.flatten())
        return F.linear(x, w)  # (b, t, vocab)

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache for decoding: one per block."""
        return [KVCache() for _ in self.trunk.blocks]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fill every parameter and the rotary table; used after to_empty() on a meta-built model."""
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.init_std)
        self.trunk.init_weights()
        if self.head is not None and self.cfg.zero_init_head:
            nn.init.zeros_(self.head.weight)
        elif self.head is not None:
            nn.init.normal_(self.head.weight, mean=0.0, std=self.cfg.init_std)


def chunked_head_bytes(cfg: GPTConfig, tokens: int, rows: int, layout: Layout) -> dict[str, int]:
    """Head and loss computed chunk by chunk (models/loss.py): the gradients of the head's input and weight are kept
    instead of the fp32 log-softmax; at the forward's high point one chunk's logits and one weight-gradient product live."""
    d, v, c = cfg.dim, cfg.vocab_size, layout.compute_bytes
    h = 2 if layout.name == "mixed" else 4  # the head's input: the residual dtype
    grads = tokens * d * h + v * d * 4  # grad_h, grad_w (fp32), saved for the backward
    saved = tokens * ((HEAD_COEFFS[layout.name] - c) * d + 20) + grads  # the final norm's tensors, targets and ids
    chunk = rows * v * (4 + (2 * c if c == 2 else 0)) + v * d * (4 + (c if c == 2 else 0))  # logits, bf16 copies, a grad_w product
    return {"head_saved": saved, "logits": chunk + tokens * d * h, "loss_grads": grads}


def head_activation_bytes(cfg: GPTConfig, tokens: int, layout: Layout) -> int:
    """Saved at the head: final norm, head input, fp32 log-softmax (T x V), targets, input ids."""
    return tokens * (HEAD_COEFFS[layout.name] * cfg.dim + 4 * cfg.vocab_size + 4 + 8 + 8)


# largo parameter name -> Hugging Face LlamaForCausalLM name; {i} is the block index (what `largo export --format hf` renames).
HF_NAMES: dict[str, str] = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "trunk.blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "trunk.blocks.{i}.attn.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "trunk.blocks.{i}.attn.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "trunk.blocks.{i}.attn.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "trunk.blocks.{i}.attn.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "trunk.blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "trunk.blocks.{i}.mlp.gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "trunk.blocks.{i}.mlp.up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "trunk.blocks.{i}.mlp.down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "trunk.norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",  # untied models only
}


class GPTSpec(ArchSpec):
    """Language modelling on token shards."""

    name = "gpt"
    model_config = GPTConfig
    data_config = TextDataConfig
    about = "decoder-only language model (Llama-shaped) on a text corpus"
    export_formats = ("hf", "onnx", "safetensors")
    hf_names = HF_NAMES
    generates = True
    feeds_mfu_history = True  # `largo plan`'s default MFU is the nearest-sized language model's

    def build(self, cfg: GPTConfig) -> nn.Module:
        return GPT(cfg)

    def prepare(self, data: TextDataConfig, model: GPTConfig, *, force: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
        """The prepared folder's manifest, its tokenizer checked (it is copied into every checkpoint: it must match the ids)."""
        manifest = prepare(data, force=force, log=log)
        checked_tokenizer_file(data.dir, manifest)
        return manifest

    def resolve(self, model: GPTConfig, prepared: dict[str, Any]) -> GPTConfig:
        vocab = int(prepared["tokenizer"]["vocab_size"])
        if model.vocab_size not in (0, vocab):
            raise ConfigError(f"model.vocab_size ({model.vocab_size}) differs from the tokenizer's {vocab}; set it to 0 or {vocab}")
        return dataclasses.replace(model, vocab_size=vocab)

    def dataset(self, data: TextDataConfig, model: GPTConfig, prepared: dict[str, Any], *, seed: int) -> TextLMData:
        return TextLMData(data.dir, model.max_seq_len, seed, prepared)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model(inputs, targets=targets)  # the head and the loss together, without materialising large logits

    def score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Scored:
        scored = model(inputs, targets=targets, score=True)  # the training loss's path: no (tokens x vocab) logits at once
        return scored._replace(predicted=scored.predicted.view_as(targets))

    def checkpoint_files(self, data: TextDataConfig) -> dict[str, Path]:
        return {TOKENIZER: Path(data.dir) / TOKENIZER}

    def data_shape(self, data: TextDataConfig, model: GPTConfig) -> DataShape:
        """Vocabulary and token count from the prepared manifest, or data.vocab_size before `largo prepare`."""
        vocab, tokens = data.vocab_size, None
        if (Path(data.dir) / "manifest.json").is_file():
            try:
                manifest = read_manifest(data.dir)
                vocab, tokens = int(manifest["tokenizer"]["vocab_size"]), int(manifest["splits"]["train"]["tokens"])
            except DataError:
                pass  # a damaged manifest: plan from the config, `largo prepare` will rebuild it
        model = model if model.vocab_size else dataclasses.replace(model, vocab_size=vocab)
        return DataShape(model, model.max_seq_len, tokens)

    def probe_task(self, data: TextDataConfig, model: GPTConfig, *, seed: int, log: Callable[[str], None] = print) -> Task:
        """Steps cost the same on any tokens: random ones of the planned vocabulary when the corpus is not prepared yet."""
        if (Path(data.dir) / "manifest.json").is_file():
            return super().probe_task(data, model, seed=seed, log=log)
        model = self.data_shape(data, model).model
        t = model.max_seq_len
        return Task(model, RandomTokens(model.vocab_size, t, seed), t, self.flops_per_token(model, t) * t)

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        """A sample continuing request.prompt (temperature, top-k; greedy at temperature 0), with the KV cache."""
        from largo.models.generate import generate

        if ckpt.tokenizer is None:
            raise CheckpointError(f"{ckpt.path}: no tokenizer.json; generate needs a language-model checkpoint")
        tok = Tokenizer.from_file(str(ckpt.tokenizer))
        prompt = tok.encode(request.prompt).ids or [tok.token_to_id("<|endoftext|>")]
        out = generate(model, prompt, max_new_tokens=request.max_new_tokens, max_seq_len=cfg.model.max_seq_len,
                       temperature=request.temperature, top_k=request.top_k, seed=request.seed)
        return [tok.decode(out)]

    # ---- explanations: a next token attributed to the prompt's token embeddings (layer integrated gradients)
    example_suffixes = (".txt", ".py", ".md")

    def read_example(self, data: TextDataConfig, model: GPTConfig, ckpt: Path, source: str) -> np.ndarray:
        """A text file or the text itself as token ids, its last max_seq_len tokens at most."""
        ids = Tokenizer.from_file(str(ckpt / TOKENIZER)).encode(read_text_input(source)).ids
        if not ids:
            raise DataError(f"{source!r}: encodes to no tokens; give some text")
        return np.array(ids[-model.max_seq_len :], dtype=np.int64)

    def token_pieces(self, ckpt: Path, ids: list[int]) -> list[str]:
        return token_pieces(Tokenizer.from_file(str(ckpt / TOKENIZER)), ids)

    def attribution(self, model: GPT, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        """Scores = the logits of the token after the prompt; baseline = <|endoftext|> (id 0) at every position."""
        return Attribution("tokens", lambda ids: model(ids)[:, -1].float(), inputs, blank, lambda a: a.sum(-1),
                           layer=model.tok_emb, rollout=lambda r: r[:, -1])  # causal: the last position's row

    def extra_matmul_params(self, cfg: GPTConfig, seq_len: int) -> int:
        return cfg.vocab_size * cfg.dim  # the head (tied or not: the matmul runs either way)

    def memory_terms(self, cfg: GPTConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        tokens = micro_batch * seq_len
        terms = MemoryTerms(
            buffers=2 * cfg.max_seq_len * cfg.head_dim * 4,  # the fp32 rotary table
            inputs=0,  # the ids and targets are counted with the head
            stem_saved=0,  # an embedding lookup saves nothing new
            head_saved=head_activation_bytes(cfg, tokens, layout),
            output_rows=tokens, outputs=cfg.vocab_size, head_params=cfg.vocab_size * cfg.dim,
            # the fp32 embedding output promotes every residual add to fp32, unless the weights themselves are bf16
            residual_bytes=2 if layout.name == "mixed" else 4,
        )
        rows = chunk_rows(cfg.vocab_size)
        return terms if tokens <= rows else dataclasses.replace(terms, **chunked_head_bytes(cfg, tokens, rows, layout))


register(GPTSpec())

