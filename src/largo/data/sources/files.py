"""Folders, globs and single files: a text corpus (every file, tables row by row), or one subfolder per class of media files.

Text files are read in pieces of about PIECE_BYTES, cut after a newline, so a corpus larger than memory streams;
ids are relative to the source root so the train/validation split is the same on every machine.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.registry import AUDIO, IMAGES, TEXT, DataSource, Roles, Row, SourceStats, decode, register_path_kind
from largo.data.sources.table import TABULAR, table_rows
from largo.errors import DataError

PIECE_BYTES = 256 << 10  # large text files are read, split and tokenized in pieces of this size
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}  # .wav read by largo; the rest through soundfile (libsndfile)
_MEDIA = {"image": (IMAGE_SUFFIXES, "images"), "audio": (AUDIO_SUFFIXES, "audio files")}


def file_pieces(path: Path, stats: SourceStats) -> Iterator[str]:
    """A text file in pieces of about PIECE_BYTES, cut after a newline, so huge files stream."""
    try:
        with path.open("rb") as f:
            carry = b""
            while chunk := f.read(PIECE_BYTES):
                chunk = carry + chunk
                cut = chunk.rfind(b"\n") + 1 or len(chunk)
                carry = chunk[cut:]
                yield decode(chunk[:cut], stats)
            if carry:
                yield decode(carry, stats)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def text_rows(files: list[tuple[Path, str]], roles: Roles, stats: SourceStats) -> Iterator[Row]:
    """One row per piece of a text file, one per row of a table file, file by file."""
    for path, file_id in files:
        stats.files.append(file_id)
        if path.suffix in TABULAR:
            yield from ({"id": f"{file_id}#{i}", **row} for i, row in enumerate(table_rows(path, roles, stats)))
        else:
            yield from ({"id": f"{file_id}@{i}", "text": text} for i, text in enumerate(file_pieces(path, stats)))


def class_folders(root: Path, suffixes: set[str], what: str) -> list[tuple[Path, str]]:
    """(file, class name) for every file with a matching suffix under root/<class>/, sorted."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [(f, c.name) for c in classes for f in sorted(c.rglob("*")) if f.is_file() and f.suffix.lower() in suffixes]
    if len({c for _, c in found}) < 2:
        raise DataError(f"data.source {str(root)!r}: needs one subfolder of {what} per class, at least two classes with {sorted(suffixes)} files")
    return found


class FolderSource(DataSource):
    """A folder: every file under it as text (recursively), or, for labelled media, one subfolder of files per class."""

    def files(self) -> list[tuple[Path, str]]:
        root = Path(self.value)
        found = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [(p, str(p.relative_to(root))) for p in found]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        media = [r for r in roles if r in _MEDIA]
        if not media:
            yield from text_rows(self.files(), roles, stats)
            return
        suffixes, what = _MEDIA[media[0]]
        for path, label in class_folders(Path(self.value), suffixes, what):
            yield {"id": str(path), media[0]: path, "label": label}


class GlobSource(DataSource):
    """A single text file, or a glob of files (recursive with **) read as one corpus."""

    def files(self) -> list[tuple[Path, str]]:
        path = Path(self.value)
        if path.is_file():
            return [(path, path.name)]
        matches = sorted(Path(p) for p in glob.glob(self.value, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"data.source {self.value!r}: no such file, folder or glob match")
        return [(p, str(p)) for p in matches]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        yield from text_rows(self.files(), roles, stats)


register_path_kind(FolderSource, accepts=lambda value: Path(value).is_dir(), describe={
    TEXT: "a folder of text files", IMAGES: "a folder with one subfolder of images per class",
    AUDIO: "a folder with one subfolder of audio files per class"})
register_path_kind(GlobSource, accepts=lambda _value: True, describe={TEXT: "a file or a glob"})
