"""`largo prepare`: train a byte-level BPE tokenizer (or take data.tokenizer) and encode a corpus into memmap token shards.

Output folder:
  tokenizer.json        Hugging Face `tokenizers` file
  train_000.bin ...     raw uint16 (or uint32) tokens, documents separated by <|endoftext|>
  val_000.bin ...       the held-out split (every 1/val_fraction-th document)
  manifest.json         settings, tokenizer hash, dtype, per-shard token counts and sha256
Both passes stream: the source is read twice, never held in memory.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from largo.data.config import TextDataConfig
from largo.data.sources import TEXT, DataSource, SourceStats, open_source
from largo.data.split import is_validation
from largo.data.staging import staged_dir
from largo.errors import DataError
from largo.observe.progress import Progress, heartbeat
from largo.fileio import read_json, sha256_file, write_json_atomic

EOT = "<|endoftext|>"
MANIFEST = "manifest.json"
_OWNS = (MANIFEST, "tokenizer.json", "train_*.bin", "val_*.bin")  # what a preparation writes (data.dir may hold more)
FORMAT = "largo-tokens-v1"
_SETTINGS = ("source", "text_column", "vocab_size", "val_fraction", "max_bytes", "tokenizer_train_bytes", "shard_tokens")
_ENCODE_BATCH_BYTES = 4 << 20  # texts handed to the Rust encoder at once (it parallelises inside)


def text_source(cfg: TextDataConfig, log: Callable[[str], None] = print) -> DataSource:
    """The corpus data.source names, opened for text rows."""
    return open_source(cfg.source, TEXT, cfg, log=log)


def documents(source: DataSource, text_column: str, stats: SourceStats, max_bytes: int = 0) -> Iterator[tuple[str, str]]:
    """Stream (doc_id, text) from a source, stopping after max_bytes (0 = no limit); empty and missing texts are skipped.

    Tables and datasets give one document per row; text files one per piece (the whole file when small).
    """
    for row in source.rows({"text": text_column}, stats):
        text = row["text"]
        if text is None or text == "":
            continue
        text = str(text)
        stats.documents += 1
        stats.bytes += len(text.encode())
        yield row.get("id", ""), text
        if max_bytes and stats.bytes >= max_bytes:
            return


def prepare_settings(cfg: TextDataConfig, source: DataSource | None = None) -> dict[str, Any]:
    """The data settings that determine the prepared output (a change means re-preparing), with the source's fingerprint."""
    source = source or text_source(cfg)
    settings = {k: v for k, v in asdict(cfg).items() if k in _SETTINGS}
    settings.update({k: getattr(cfg, k) for k in source.settings_keys}, fingerprint=source.fingerprint())
    if cfg.tokenizer:  # a given tokenizer is identified by its content, not its path
        settings["tokenizer_sha256"] = sha256_file(existing_tokenizer_path(cfg.tokenizer))
    return settings


def existing_tokenizer_path(path: str) -> Path:
    """data.tokenizer as a file, or a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.tokenizer {path}: no such file; give a tokenizer.json (e.g. from an imported checkpoint folder)")
    return p


def load_existing_tokenizer(path: str) -> Tokenizer:
    """A tokenizer.json to encode with instead of training one; it must know <|endoftext|>."""
    try:
        tok = Tokenizer.from_file(str(existing_tokenizer_path(path)))
    except Exception as e:  # the Rust parser raises its own exception type
        raise DataError(f"data.tokenizer {path}: not a Hugging Face tokenizer.json ({e})") from None
    if tok.token_to_id(EOT) is None:
        raise DataError(f"data.tokenizer {path}: has no {EOT} token, which largo uses to separate documents")
    return tok


def token_pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    """The text each token stands for, decoded one token at a time (a piece of a multi-byte character shows as U+FFFD)."""
    return [tok.decode([i], skip_special_tokens=False) for i in ids]


def read_text_input(source: str) -> str:
    """`largo explain`'s text input: the contents of a file, or the argument itself when no such file exists."""
    p = Path(source)
    if p.is_file():
        try:
            return p.read_text(errors="replace")
        except OSError as e:
            raise DataError(f"{p}: unreadable ({e.strerror})") from None
    return source


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) with <|endoftext|> as its one special token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),  # tokenizers' own bar on a terminal
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class ShardWriter:
    """Appends token arrays to numbered shard files, rolling over every `shard_tokens` tokens."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int, vocab_size: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.counts = np.zeros(vocab_size, dtype=np.int64)  # unigram statistics for the baseline
        self._file = None
        self._hash = hashlib.sha256()
        self._n = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._file = open(self.out_dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})
        self._hash, self._n = hashlib.sha256(), 0

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.shards[-1].update(tokens=self._n, sha256=self._hash.hexdigest())
            self._file = None

    def write(self, tokens: np.ndarray) -> None:
        self.counts += np.bincount(tokens, minlength=len(self.counts))
        tokens = tokens.astype(self.dtype)
        while len(tokens):
            if self._file is None or self._n >= self.shard_tokens:
                self._close()
                self._open()
            take = tokens[: self.shard_tokens - self._n]
            data = take.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._n += len(take)
            tokens = tokens[len(take):]

    def finish(self) -> dict[str, Any]:
        self._close()
        return {"tokens": int(sum(s["tokens"] for s in self.shards)), "shards": self.shards}


def _batched(docs: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc[1])
        if size >= _ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def unigram_loss(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Cross-entropy (nats/token) of the validation tokens under add-one-smoothed train frequencies."""
    p = (train_counts + 1) / (train_counts.sum() + len(train_counts))
    return float(-(val_counts * np.log(p)).sum() / max(1, val_counts.sum()))


def prepare(cfg: TextDataConfig, *, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare cfg.source into cfg.dir unless an up-to-date manifest is already there."""
    out = Path(cfg.dir)
    try:
        existing = read_manifest(out) if (out / MANIFEST).exists() else None
    except DataError:
        existing = None  # a damaged manifest is rebuilt, not trusted
    source = text_source(cfg, log)
    settings = prepare_settings(cfg, source)
    if existing and not force and existing.get("settings") == settings:
        return existing
    if next(documents(source, cfg.text_column, SourceStats(), max_bytes=1), None) is None:
        raise DataError(f"data.source {cfg.source!r} holds no text")  # checked before anything in data.dir is touched
    with staged_dir(out, owns=_OWNS) as tmp:  # the old folder stays whole until the new one is complete
        manifest, stats = _write_prepared(cfg, source, tmp, settings, log=log, shown=out)
    log(
        f"prepare: {stats.documents} documents, {stats.bytes / 1e6:.1f} MB -> "
        f"{manifest['splits']['train']['tokens']:,} train / {manifest['splits']['val']['tokens']:,} val tokens "
        f"(unigram loss {manifest['unigram_val_loss']:.3f}, ppl {math.exp(manifest['unigram_val_loss']):.1f})"
        + (f"; {stats.replaced_chars} invalid UTF-8 sequences replaced with U+FFFD" if stats.replaced_chars else "")
    )
    return manifest


def _write_prepared(cfg: TextDataConfig, source: DataSource, tmp: Path, settings: dict[str, Any], *,
                    log: Callable[[str], None], shown: Path) -> tuple[dict[str, Any], SourceStats]:
    """Tokenizer, shards and manifest of cfg.source, written into the staging folder tmp (`shown` in messages)."""
    if cfg.tokenizer:
        log(f"prepare: encoding {cfg.source!r} with the tokenizer {cfg.tokenizer}")
        tok = load_existing_tokenizer(cfg.tokenizer)
        shutil.copyfile(cfg.tokenizer, tmp / "tokenizer.json")  # byte for byte: it travels on into checkpoints
    else:
        log(f"prepare: training a {cfg.vocab_size}-token BPE tokenizer on {cfg.source!r}")
        sample = SourceStats()
        texts = (t for _, t in documents(source, cfg.text_column, sample, cfg.tokenizer_train_bytes))
        with heartbeat("prepare: training the tokenizer", log):
            tok = train_tokenizer(texts, cfg.vocab_size)
        if sample.documents == 0:
            raise DataError(f"data.source {cfg.source!r} holds no text")
        tok.save(str(tmp / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    eot = tok.token_to_id(EOT)
    dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)

    log(f"prepare: encoding into {dtype.name} shards in {shown}")
    stats = SourceStats()
    writers = {s: ShardWriter(tmp, s, dtype, cfg.shard_tokens, vocab) for s in ("train", "val")}
    index, tokens = 0, 0
    total = source.expected_bytes()
    progress = Progress("prepare: encoding", min(total, cfg.max_bytes) if total and cfg.max_bytes else total, log=log)
    for batch in _batched(documents(source, cfg.text_column, stats, cfg.max_bytes)):
        for enc in tok.encode_batch([t for _, t in batch]):
            split = "val" if is_validation(index, cfg.val_fraction) else "train"
            writers[split].write(np.asarray(enc.ids + [eot], dtype=np.int64))
            index, tokens = index + 1, tokens + len(enc.ids) + 1
        progress.update(stats.documents, stats.bytes, tokens)
    progress.close()
    splits = {s: w.finish() for s, w in writers.items()}
    for s, info in splits.items():
        if info["tokens"] < 2:
            raise DataError(f"data.source {cfg.source!r}: the {s} split is empty; add documents or raise data.val_fraction")

    manifest = {
        "format": FORMAT,
        "settings": settings,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(tmp / "tokenizer.json"), "vocab_size": vocab, "eot_id": eot},
        "dtype": dtype.name,
        "splits": splits,
        "source": {"documents": stats.documents, "bytes": stats.bytes, "files": len(stats.files), "replaced_invalid_utf8": stats.replaced_chars},
        "unigram_val_loss": unigram_loss(writers["train"].counts, writers["val"].counts),
    }
    write_json_atomic(tmp / MANIFEST, manifest)  # appears last, only once every shard is complete
    return manifest, stats


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Load and sanity-check a prepared folder's manifest."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: missing; run `largo prepare` first")
    manifest = read_json(path, DataError, "; delete the folder and run `largo prepare` again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a largo token manifest (format {FORMAT!r} expected)")
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}; rebuild with `largo prepare <config> --force`")
    return manifest


def _manifest_problem(m: dict[str, Any]) -> str | None:
    """What is structurally wrong with a manifest (hand-edited, or from another tool), else None."""
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("vocab_size"), int) or not isinstance(tok.get("sha256"), str):
        return "'tokenizer' must hold an integer vocab_size and a sha256"
    if m.get("dtype") not in ("uint16", "uint32"):
        return f"dtype {m.get('dtype')!r} is not 'uint16' or 'uint32'"
    splits = m.get("splits")
    if not isinstance(splits, dict):
        return "'splits' must map split names to their shards"
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("tokens"), int) and s["tokens"] >= 0
            and isinstance(s.get("sha256"), str) for s in shards
        ):
            return f"split {name!r}: each shard needs a file name, a token count >= 0 and a sha256"
    return None


def checked_tokenizer_file(data_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """tokenizer.json, after checking it is the one the shards were encoded with (the manifest's hash)."""
    path = Path(data_dir) / "tokenizer.json"
    if not path.is_file() or sha256_file(path) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{path}: missing or does not match manifest.json's tokenizer hash; rebuild with `largo prepare <config> --force`")
    return path
