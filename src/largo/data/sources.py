"""Text sources: the Python standard library, folders and globs of text, .jsonl/.csv/.parquet files, and "hf:" datasets.

Each source streams (doc_id, text) pairs so a corpus larger than memory never sits in RAM.
Bytes that are not valid UTF-8 are replaced with U+FFFD (and counted), never silently dropped:
a stray Latin-1 byte should not abort a multi-hour preparation.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from largo.data.hf import HFSource, is_hf, texts
from largo.errors import DataError

TABULAR = (".jsonl", ".csv", ".parquet")
PIECE_BYTES = 256 << 10  # large text files are read, split and tokenized in pieces of this size
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass
class SourceStats:
    """What was read: documents, bytes and invalid UTF-8 sequences replaced."""

    documents: int = 0
    bytes: int = 0
    replaced_chars: int = 0
    files: list[str] = field(default_factory=list)


def stdlib_files() -> list[Path]:
    """The standard library's own .py files (no site-packages, no test suites), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(out)


def _resolve_files(source: str) -> list[tuple[Path, str]]:
    """(file, stable id) pairs named by 'stdlib', a folder (recursive), a glob or a single file.

    Ids are relative to the source root so the train/validation split is the same on every machine.
    """
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return [(p, str(p.relative_to(root))) for p in stdlib_files()]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [(p, str(p.relative_to(path))) for p in files]
    if path.is_file():
        return [(path, path.name)]
    matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not matches:
        raise DataError(f"data.source {source!r}: no such file, folder or glob match")
    return [(p, str(p)) for p in matches]


def source_bytes(source: str) -> int | None:
    """Expected bytes of text in a source (its files' sizes), for progress; None for datasets and compressed tables."""
    if is_hf(source):
        return None
    files = _resolve_files(source)
    if any(p.suffix == ".parquet" for p, _ in files):
        return None
    return sum(p.stat().st_size for p, _ in files)


def _file_pieces(path: Path, stats: SourceStats) -> Iterator[str]:
    """A text file in pieces of about PIECE_BYTES, cut after a newline, so huge files stream."""
    try:
        with path.open("rb") as f:
            carry = b""
            while chunk := f.read(PIECE_BYTES):
                chunk = carry + chunk
                cut = chunk.rfind(b"\n") + 1 or len(chunk)
                carry = chunk[cut:]
                yield _decode(chunk[:cut], stats)
            if carry:
                yield _decode(carry, stats)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _decode(raw: bytes, stats: SourceStats) -> str:
    text = raw.decode("utf-8", errors="replace")
    stats.replaced_chars += text.count("\ufffd") - raw.count("\ufffd".encode())
    return text


def _tabular_texts(path: Path, column: str, stats: SourceStats) -> Iterator[str]:
    """Rows of one text column from a .jsonl, .csv or .parquet file, streamed."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(_decode(line, stats))
                except (ValueError, RecursionError):
                    raise DataError(f"{path}:{lineno}: not valid JSON") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object with a {column!r} key (data.text_column)")
                if column not in row:
                    raise DataError(f"{path}:{lineno}: no column {column!r} (data.text_column); has {sorted(row)}")
                yield str(row[column])
        return
    try:
        if path.suffix == ".csv":
            yield from _csv_texts(path, column)
        else:
            yield from _parquet_texts(path, column)
    except (ValueError, OSError) as e:  # pandas' and pyarrow's parse errors (ArrowInvalid is a ValueError)
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({reason})") from None


def _csv_texts(path: Path, column: str) -> Iterator[str]:
    """One column of a CSV file, 10,000 rows at a time."""
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"{path}: reading .csv needs pandas: pip install 'largo-train[data]'") from None
    for chunk in pd.read_csv(path, chunksize=10_000, encoding_errors="replace"):
        if column not in chunk.columns:
            raise DataError(f"{path}: no column {column!r} (data.text_column); has {list(chunk.columns)}")
        yield from chunk[column].astype(str)


def _parquet_texts(path: Path, column: str) -> Iterator[str]:
    """One column of a Parquet file, a record batch at a time (never the whole table in memory)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'largo-train[data]'") from None
    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise DataError(f"{path}: no column {column!r} (data.text_column); has {table.schema_arrow.names}")
    for batch in table.iter_batches(batch_size=10_000, columns=[column]):
        yield from (str(v) for v in batch.column(0).to_pylist())


def _file_documents(source: str, text_column: str, stats: SourceStats) -> Iterator[Iterator[tuple[str, str]]]:
    """One stream of (doc_id, text) per file of a source."""
    for path, file_id in _resolve_files(source):
        stats.files.append(file_id)
        if path.suffix in TABULAR:
            yield ((f"{file_id}#{i}", text) for i, text in enumerate(_tabular_texts(path, text_column, stats)))
        else:
            yield ((f"{file_id}@{i}", text) for i, text in enumerate(_file_pieces(path, stats)))


def iter_documents(source: str, text_column: str, stats: SourceStats, max_bytes: int = 0, *,
                   dataset: HFSource | None = None) -> Iterator[tuple[str, str]]:
    """Stream (doc_id, text) from a source, stopping after max_bytes (0 = no limit).

    Tabular files and datasets give one document per row; text files one per piece (whole file when small).
    An "hf:" source reads `dataset` (its split, config, files, streaming), or its split "train".
    """
    if is_hf(source):
        dataset = dataset or HFSource(source, "train")
        stats.files.append(source)
        groups = iter([((f"{dataset.name}#{i}", text) for i, text in enumerate(texts(dataset, text_column)))])
    else:
        groups = _file_documents(source, text_column, stats)
    for docs in groups:
        for doc_id, text in docs:
            if not text:
                continue
            stats.documents += 1
            stats.bytes += len(text.encode())
            yield doc_id, text
            if max_bytes and stats.bytes >= max_bytes:
                return
