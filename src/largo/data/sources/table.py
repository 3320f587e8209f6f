"""The one table reader: .jsonl, .csv and .parquet files, streamed row by row, for text corpora and labelled examples alike.

Each asked role is read from its column (data.text_column, data.label_column); a missing cell comes as None.
CSV cells are read as the text they hold (no type guessing: a label written "1" stays "1").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from largo.data.sources.registry import LABELLED_TEXT, TEXT, DataSource, Roles, Row, SourceStats, column_key, decode, register_path_kind
from largo.errors import DataError

TABULAR = (".jsonl", ".csv", ".parquet")
_BATCH_ROWS = 10_000  # rows read at once from CSV and Parquet (never the whole table in memory)


def _missing(path: object, role: str, column: str, has: list[str]) -> DataError:
    return DataError(f"{path}: no column {column!r} ({column_key(role)}); has {has}")


def _jsonl_rows(path: Path, roles: Roles, stats: SourceStats) -> Iterator[Row]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(decode(line, stats))
            except (ValueError, RecursionError):
                raise DataError(f"{path}:{lineno}: not valid JSON") from None
            if not isinstance(row, dict):
                first = next(iter(roles.items()))
                raise DataError(f"{path}:{lineno}: expected a JSON object with a {first[1]!r} key ({column_key(first[0])})")
            for role, column in roles.items():
                if column not in row:
                    raise DataError(f"{path}:{lineno}: no column {column!r} ({column_key(role)}); has {sorted(row)}")
            yield {role: row[column] for role, column in roles.items()}


def _pandas(path: object) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"{path}: reading .csv needs pandas: pip install 'largo-train[data]'") from None
    return pd


def csv_rows(f: Path | IO[bytes], roles: Roles, name: object) -> Iterator[Row]:
    """The roles' columns of a CSV file (or an open binary file, e.g. inside a zip), _BATCH_ROWS at a time."""
    pd = _pandas(name)
    for chunk in pd.read_csv(f, chunksize=_BATCH_ROWS, dtype=str, encoding_errors="replace"):
        for role, column in roles.items():
            if column not in chunk.columns:
                raise _missing(name, role, column, list(chunk.columns))
        columns = [chunk[c].astype(object).where(chunk[c].notna(), None).tolist() for c in roles.values()]
        yield from (dict(zip(roles, values)) for values in zip(*columns))


def _parquet_rows(path: Path, roles: Roles) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'largo-train[data]'") from None
    table = pq.ParquetFile(path)
    names = table.schema_arrow.names
    for role, column in roles.items():
        if column not in names:
            raise _missing(path, role, column, names)
    wanted = list(dict.fromkeys(roles.values()))
    for batch in table.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
        columns = {c: batch.column(i).to_pylist() for i, c in enumerate(wanted)}
        yield from ({role: columns[column][i] for role, column in roles.items()} for i in range(batch.num_rows))


def table_rows(path: Path, roles: Roles, stats: SourceStats) -> Iterator[Row]:
    """Rows of a .jsonl, .csv or .parquet file; a file the parser cannot read is refused in one line."""
    if path.suffix == ".jsonl":
        yield from _jsonl_rows(path, roles, stats)
        return
    try:
        yield from csv_rows(path, roles, path) if path.suffix == ".csv" else _parquet_rows(path, roles)
    except (ValueError, OSError) as e:  # pandas' and pyarrow's parse errors (ArrowInvalid is a ValueError)
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({reason})") from None


class TableSource(DataSource):
    """One .jsonl, .csv or .parquet file: a row per example (a document, or a text and its label)."""

    @property
    def path(self) -> Path:
        return Path(self.value)

    def files(self) -> list[tuple[Path, str]]:
        return [(self.path, self.path.name)]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        stats.files.append(self.path.name)
        for i, row in enumerate(table_rows(self.path, roles, stats)):
            yield {"id": f"{self.path.name}#{i}", **row}


def _is_table(value: str) -> bool:
    return Path(value).suffix in TABULAR and Path(value).is_file()


register_path_kind(TableSource, accepts=_is_table, describe={
    TEXT: "a .jsonl/.csv/.parquet file", LABELLED_TEXT: "an existing .jsonl/.csv/.parquet file with text and label columns"})
