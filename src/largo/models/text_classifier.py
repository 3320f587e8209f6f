"""Text classifier: a token-embedding stem (padding masked) before the bidirectional trunk; labelled texts from data/text_classes.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from largo.data.arrays import Prepared, Transform
from largo.data.prepare import read_text_input, token_pieces
from largo.data.text_classes import (
    PAD_ID, TOKENIZER, TextClassDataConfig, clean_text, encode_rows, prepare_text_classes, token_transform,
)
from largo.errors import ConfigError
from largo.models.classifier import Classifier, ClassifierConfig, ClassifierSpec, StemTerms, pooled_relevance
from largo.models.spec import Attribution, register, resolved_field
from largo.precision import Layout


@dataclass
class TextClassifierConfig(ClassifierConfig):
    """Token ids (padded with PAD_ID) from a BPE trained on the training texts."""

    arch: str = "text_classifier"
    vocab_size: int = 0  # tokens in the vocabulary; 0 = take it from the prepared tokenizer

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size ({self.vocab_size}) must be >= 0 (0 = from the tokenizer)")


class TokenStem(nn.Module):
    """Token ids (b, t), padded with PAD_ID -> token states (b, t, dim) and the real positions (b, t)."""

    def __init__(self, cfg: TextClassifierConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("TextClassifierConfig.vocab_size must be resolved (> 0) before building the model")
        self.init_std = cfg.init_std
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tok_emb(tokens), tokens != PAD_ID

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.init_std)


class TextClassifierSpec(ClassifierSpec):
    """Sentiment and other text classification: IMDB reviews or a .csv/.parquet table."""

    name = "text_classifier"
    model_config = TextClassifierConfig
    data_config = TextClassDataConfig
    about = "text classifier (BPE token embedding, padding masked) on labelled texts"

    def stem(self, cfg: TextClassifierConfig) -> nn.Module:
        return TokenStem(cfg)

    def prepare(self, data: TextClassDataConfig, model: TextClassifierConfig, *, force: bool = False,
                log: Callable[[str], None] = print) -> Prepared:
        return prepare_text_classes(data, seq_len=model.max_seq_len, force=force, log=log)

    def resolve_fields(self, cfg: TextClassifierConfig, prepared: Prepared) -> dict[str, Any]:
        return {"vocab_size": resolved_field("vocab_size", cfg.vocab_size, int(prepared.meta["vocab_size"]))}

    def transform(self, data: TextClassDataConfig, prepared: Prepared) -> Transform:
        return token_transform()

    def checkpoint_files(self, data: TextClassDataConfig) -> dict[str, Path]:
        return {TOKENIZER: Path(data.dir) / TOKENIZER}

    # ---- explanations: layer integrated gradients on the token embeddings, drawn over the text
    example_suffixes = (".txt",)

    def read_example(self, data: TextClassDataConfig, model: TextClassifierConfig, ckpt: Path, source: str) -> np.ndarray:
        """A .txt file or the text itself, cleaned and encoded as the data's rows are (head and tail kept, padded)."""
        tok = Tokenizer.from_file(str(ckpt / TOKENIZER))
        return encode_rows(tok, [clean_text(read_text_input(source))], model.max_seq_len)[0]

    def token_pieces(self, ckpt: Path, ids: list[int]) -> list[str]:
        return token_pieces(Tokenizer.from_file(str(ckpt / TOKENIZER)), ids)

    def attribution(self, model: Classifier, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        # The input's own padding mask, held fixed along the path (the blank is all padding). Padding positions have the
        # same embedding at the input and the baseline, so their attributions are exactly zero.
        keep = inputs != PAD_ID

        def forward(ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return model.forward_states(model.stem.tok_emb(ids), keep)

        return Attribution("tokens", forward, inputs, blank, lambda a: a.sum(-1), layer=model.stem.tok_emb, extra=(keep,), shown=keep,
                           rollout=lambda r: pooled_relevance(model.cfg, r, keep))

    def stem_terms(self, cfg: TextClassifierConfig, micro_batch: int, seq_len: int, layout: Layout) -> StemTerms:
        positions = seq_len - cfg.extra_positions
        # int64 ids (the embedding's backward keeps these, no copy); an embedding lookup saves nothing new
        return StemTerms(input_bytes=8 * positions, saved=0, padding_mask=True)


register(TextClassifierSpec())
