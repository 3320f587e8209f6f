"""The data-source registry: what `data.source` (and `data.test_source`) may name, and the one protocol every source speaks.

A source hands out rows: dicts keyed by *role* ("text", "label", "image", "audio", "target", "boxes") that the preparer asks
for, each role read from the column the [data] section names (tables and datasets) or filled by the source itself (a built-in
corpus). A row may also carry "id" (how messages name it) and "split" ("train" or "val", where the source fixes the
held-out set itself, as Fashion-MNIST's official test set or whole held-out voices). Besides rows a source lists the
files it reads and a fingerprint of its content, which goes into the prepared manifest: a changed source re-prepares.

Three kinds of entries resolve a value, in this order: a registered name ("stdlib", "digits", or one registered from
outside src/), a prefix ("hf:"), then path kinds tried in turn (a table file, a folder, a glob). A value nothing
accepts is refused in one line listing what is valid for the roles asked for.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largo.data.config import DataConfig
from largo.errors import DataError

Row = dict[str, Any]  # role -> value, plus optional "id" and "split"
Roles = dict[str, str]  # role -> the column holding it in tables and datasets (built-in corpora ignore the column)
TEXT, LABELLED_TEXT = frozenset({"text"}), frozenset({"text", "label"})
IMAGES, AUDIO = frozenset({"image", "label"}), frozenset({"audio", "label"})
PAIRS = frozenset({"text", "target"})  # sequence to sequence: a source text and its target (a translation, a summary)
DETECTION = frozenset({"image", "boxes"})  # "boxes": a list of (class name, x0, y0, x1, y1) in the image's pixels
SPEECH = frozenset({"audio", "text"})  # a recording and what it says (speech recognition and synthesis)


@dataclass
class SourceStats:
    """What was read: documents, bytes and invalid UTF-8 sequences replaced."""

    documents: int = 0
    bytes: int = 0
    replaced_chars: int = 0
    files: list[str] = field(default_factory=list)


def decode(raw: bytes, stats: SourceStats) -> str:
    """UTF-8 with invalid sequences replaced by U+FFFD (and counted): a stray Latin-1 byte must not abort a preparation."""
    text = raw.decode("utf-8", errors="replace")
    stats.replaced_chars += text.count("\ufffd") - raw.count("\ufffd".encode())
    return text


def files_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over (name, size, mtime) of files: changes when any source file is added, removed or touched."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def column_key(role: str) -> str:
    """The [data] key that names a role's column, for messages: data.text_column, data.label_column, ..."""
    return f"data.{role}_column"


class DataSource(ABC):
    """One value of data.source, opened: its files, its rows, its fingerprint."""

    label_order: list[str] | None = None  # class names in id order, where the source fixes one (else sorted)
    settings_keys: tuple[str, ...] = ()  # [data] keys besides data.source that decide its rows (a change re-prepares)
    fixed_shape: bool = False  # its images come decoded at their own size: the model's size is checked, not applied

    def __init__(self, value: str, data: DataConfig, *, test: bool = False, log: Callable[[str], None] = print):
        self.value, self.data, self.test, self.log = value, data, test, log

    @property
    def key(self) -> str:
        """How messages name this source."""
        return f"data.source {self.value!r}"

    def files(self) -> list[tuple[Path, str]]:
        """(file, stable id) pairs the source reads, sorted; ids are machine-independent where the source allows."""
        return []

    def fingerprint(self) -> str:
        """What identifies the content: by default the files' names, sizes and modification times."""
        return files_fingerprint(p for p, _ in self.files())

    def expected_bytes(self) -> int | None:
        """Bytes of text the rows will hold, for progress; None when unknown (compressed tables, datasets, synthesis)."""
        files = self.files()
        return None if any(p.suffix == ".parquet" for p, _ in files) else sum(p.stat().st_size for p, _ in files)

    @abstractmethod
    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        """The examples, streamed in a fixed order, each holding the asked roles (None where a cell is missing)."""


Opener = Callable[..., DataSource]  # (value, data, *, test, log) -> DataSource: a DataSource subclass itself


@dataclass(frozen=True)
class Entry:
    """How one kind of source is found and described."""

    opener: Opener
    provides: tuple[frozenset[str], ...]  # the role sets its rows can fill
    describe: str  # how a refusal lists it: "'digits'", "a folder with one subfolder of images per class"
    accepts: Callable[[str], bool] = lambda _value: True  # path kinds: whether a value is theirs
    test_only: bool = False  # offered as data.test_source only (a handful of real recordings)

    def serves(self, roles: frozenset[str]) -> bool:
        return roles in self.provides


_NAMED: dict[str, Entry] = {}
_PREFIXED: dict[str, Entry] = {}
_PATHS: list[Entry] = []


def register_source(name: str, opener: Opener, *, provides: Iterable[frozenset[str]], test_only: bool = False) -> None:
    """Make data.source = name open `opener` (a later registration of the same name replaces it)."""
    _NAMED[name] = Entry(opener, tuple(provides), repr(name), test_only=test_only)


def register_prefix(prefix: str, opener: Opener, *, provides: Iterable[frozenset[str]], describe: str) -> None:
    """Make every data.source starting with `prefix` open `opener`."""
    _PREFIXED[prefix] = Entry(opener, tuple(provides), describe)


def register_path_kind(opener: Opener, *, accepts: Callable[[str], bool], describe: dict[frozenset[str], str]) -> None:
    """A kind of path (a folder, a table file, a glob) tried in registration order; `describe` says what it is per role set."""
    for roles, words in describe.items():
        _PATHS.append(Entry(opener, (roles,), words, accepts))


def source_names() -> list[str]:
    return list(_NAMED)


def open_source(value: str, roles: frozenset[str], data: DataConfig, *, test: bool = False,
                log: Callable[[str], None] = print) -> DataSource:
    """The source `value` names for rows holding `roles`, or one line listing what is valid for them."""
    named = _NAMED.get(value)
    if named is not None and named.serves(roles) and (test or not named.test_only):
        return named.opener(value, data, test=test, log=log)
    for prefix, entry in _PREFIXED.items():
        if value.startswith(prefix):
            return entry.opener(value, data, test=test, log=log)
    for entry in _PATHS:
        if entry.serves(roles) and entry.accepts(value):
            return entry.opener(value, data, test=test, log=log)
    valid = [e.describe for e in _NAMED.values() if e.serves(roles) and not e.test_only]
    valid += [e.describe for e in _PATHS if e.serves(roles)]
    valid += [e.describe for e in _PREFIXED.values() if e.serves(roles)]
    if not valid:
        raise DataError(f"data.source {value!r}: no registered source gives rows with {sorted(roles)}")
    raise DataError(f"data.source {value!r}: use {', '.join(valid[:-1])}, or {valid[-1]}" if len(valid) > 1 else
                    f"data.source {value!r}: use {valid[0]}")
