"""Labelled text: any labelled-text source (IMDB reviews, .jsonl/.csv/.parquet tables, "hf:" datasets) as fixed-length token rows.

Texts are cleaned (HTML tags and entities removed, whitespace collapsed, lower-cased), a
byte-level BPE is trained on the training split only, and each text becomes max_seq_len token
ids: the head and the tail of a long text (where reviews state their verdict), 0-padded.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, labelled_rows, labels_to_ids, test_ids
from largo.data.config import ClassDataConfig
from largo.data.prepare import EOT, train_tokenizer
from largo.data.sources import LABELLED_TEXT, DataSource, open_source
from largo.data.split import is_validation
from largo.errors import ConfigError, DataError
from largo.fileio import sha256_file
from largo.rundir import TOKENIZER

PAD_ID = 0  # the tokenizer's first special token (<|endoftext|>); rows are padded with it and the model masks it
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # a tag must start with a letter: "a < b" and "<3" survive
_SPACE = re.compile(r"\s+")
_VERSION = 2  # bump when the preparation below changes what it stores


@dataclass
class TextClassDataConfig(ClassDataConfig):
    """Labelled texts: IMDB reviews or a .csv/.parquet file with text and label columns, encoded with a BPE trained here."""

    source: str = "imdb"  # "imdb", a .jsonl/.csv/.parquet file with text and label columns, or "hf:NAME" (Hugging Face datasets)
    dir: str = "data/text_classes"
    text_column: str = "text"  # .jsonl/.csv/.parquet and hf: sources: column holding the text
    vocab_size: int = 4096  # BPE vocabulary trained on the training split, special tokens included

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 257 <= self.vocab_size <= 1 << 20:
            raise ConfigError(f"data.vocab_size ({self.vocab_size}) must be in [257, 1048576]: 256 bytes + specials")


def clean_text(text: str) -> str:
    """HTML tags -> spaces, entities decoded, whitespace collapsed, lower case."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip().lower()


def encode_rows(tok: Tokenizer, texts: list[str], seq_len: int) -> np.ndarray:
    """Token ids (n, seq_len): texts longer than seq_len keep their head and tail halves; PAD_ID fills."""
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    out = np.full((len(texts), seq_len), PAD_ID, dtype=dtype)
    for i, enc in enumerate(tok.encode_batch(texts)):
        ids = enc.ids
        if len(ids) > seq_len:
            ids = ids[: seq_len - seq_len // 2] + ids[len(ids) - seq_len // 2 :]
        out[i, : len(ids)] = ids
    return out


def _source(value: str, d: TextClassDataConfig, *, test: bool = False) -> DataSource:
    return open_source(value, LABELLED_TEXT, d, test=test)


def _texts(value: str, d: TextClassDataConfig, *, test: bool = False) -> tuple[list[str], list[str]]:
    """(texts, labels) of a source, rows with a missing cell left out."""
    rows = labelled_rows(_source(value, d, test=test), {"text": d.text_column, "label": d.label_column})
    return [str(r["text"]) for r in rows], [str(r["label"]) for r in rows]


def _build(d: TextClassDataConfig, seq_len: int, log: Callable[[str], None]) -> Callable[[], Built]:
    def build() -> Built:
        texts, labels = _texts(d.source, d)
        texts = [clean_text(t) for t in texts]
        y, classes = labels_to_ids(labels)
        val = np.array([is_validation(i, d.val_fraction) for i in range(len(y))], dtype=bool)
        train_rows = np.flatnonzero(~val)[even_subset(int((~val).sum()), d.max_rows)]
        train_texts = [texts[i] for i in train_rows]
        log(f"prepare: training a {d.vocab_size}-token BPE on {len(train_texts):,} training texts")
        tok = train_tokenizer(iter(train_texts), d.vocab_size)
        if tok.token_to_id(EOT) != PAD_ID:
            raise DataError(f"the tokenizer put {EOT} at id {tok.token_to_id(EOT)}, not the padding id {PAD_ID}")
        arrays = {"train_x": encode_rows(tok, train_texts, seq_len), "train_y": y[train_rows],
                  "val_x": encode_rows(tok, [t for t, v in zip(texts, val) if v], seq_len), "val_y": y[val]}
        if d.test_source:
            test_texts, test_labels = _texts(d.test_source, d, test=True)
            arrays["test_x"] = encode_rows(tok, [clean_text(t) for t in test_texts], seq_len)
            arrays["test_y"] = test_ids(test_labels, classes, d.test_source, "labels")
        lengths = [len(e.ids) for e in tok.encode_batch(train_texts[:2000])]
        tokenizer = tok.to_str().encode()
        meta = {"classes": classes, "vocab_size": tok.get_vocab_size(), "median_tokens": float(np.median(lengths)),
                "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest()}  # the token ids mean nothing with another one
        return Built(arrays, meta, {TOKENIZER: tokenizer})

    return build


def prepare_text_classes(d: TextClassDataConfig, *, seq_len: int, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the token rows of d, seq_len tokens each (the model's max_seq_len)."""
    test = _source(d.test_source, d, test=True).fingerprint() if d.test_source else ""
    settings = {
        "kind": "text_classes", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": _source(d.source, d).fingerprint() + test,
        "text_column": d.text_column, "label_column": d.label_column, "val_fraction": d.val_fraction,
        "max_rows": d.max_rows, "vocab_size": d.vocab_size, "seq_len": seq_len,
    }
    prepared = cached_arrays(d.dir, settings, _build(d, seq_len, log), force=force, log=log)
    path = Path(d.dir) / TOKENIZER
    if not path.is_file() or sha256_file(path) != prepared.meta.get("tokenizer_sha256"):
        raise DataError(f"{path}: missing or does not match manifest.json's tokenizer hash; rebuild with `largo prepare <config> --force`")
    return prepared


def token_transform() -> Transform:
    """Stored token rows -> int64 ids (no augmentation for text)."""
    return lambda rows, _rngs: torch.from_numpy(rows.astype(np.int64))
