"""data.source = "gettext": English messages and their translations from the gettext catalogs installed on this machine.

Debian packages install compiled catalogs as /usr/share/locale/<lang>/LC_MESSAGES/<domain>.mo: real translations
of software messages, made by people. Each row is one message: {"text": English, "target": translation,
"group": the catalog}. Catalogs installed twice under two names (iso_639-3.mo and iso_639_3.mo, one a link to the
other) are read once. Plural entries give their singular form, context entries ("menu\x04Open") the message without
its context; the header (empty msgid) and untranslated messages are skipped. The preparer splits by catalog.
"""

from __future__ import annotations

import gettext
import hashlib
import io
import struct
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.registry import PAIRS, DataSource, Roles, Row, SourceStats, register_source
from largo.errors import DataError

LOCALE_DIR = Path("/usr/share/locale")
CONTEXT_SEP = "\x04"  # gettext joins msgctxt and msgid with EOT in a .mo file


def installed_languages(locale_dir: Path = LOCALE_DIR) -> list[str]:
    """Languages with at least one compiled catalog under locale_dir, sorted."""
    if not locale_dir.is_dir():
        return []
    return sorted(p.name for p in locale_dir.iterdir() if any((p / "LC_MESSAGES").glob("*.mo")))


def unique_catalogs(paths: list[Path]) -> list[Path]:
    """The catalogs with twins (same bytes under two names) read once: the real file before a link, then by name."""
    seen: dict[str, Path] = {}
    for p in sorted(paths, key=lambda p: (p.is_symlink(), p.name)):
        seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
    return sorted(seen.values())


def ascii_header(data: bytes) -> bytes:
    """The .mo bytes with the header entry's non-ASCII bytes (a translator's name in the declared charset) made '?':
    the same length, so every offset holds and the messages still decode with the header's charset."""
    order = "<" if data[:4] == b"\xde\x12\x04\x95" else ">"
    count, _, translations = struct.unpack(order + "3I", data[8:20])
    for i in range(count):
        length, offset = struct.unpack(order + "2I", data[translations + 8 * i : translations + 8 * i + 8])
        if b"charset=" in data[offset : offset + length]:
            header = bytes(b if b < 128 else 63 for b in data[offset : offset + length])
            return data[:offset] + header + data[offset + length :]
    return data


def catalog_messages(path: Path) -> Iterator[tuple[str, str]]:
    """(English, translation) of one .mo file: singular forms of plural entries, context stripped, header skipped."""
    try:
        data = path.read_bytes()
        try:
            catalog = gettext.GNUTranslations(io.BytesIO(data))._catalog  # msgid -> msgstr; (msgid, n) -> plural form n
        except UnicodeDecodeError:  # Python reads the header as UTF-8 before its charset line: a Latin-1 name in it
            catalog = gettext.GNUTranslations(io.BytesIO(ascii_header(data)))._catalog
    except (OSError, UnicodeDecodeError, struct.error) as e:
        raise DataError(f"{path}: not a readable gettext catalog ({e})") from None
    for key, value in catalog.items():
        if isinstance(key, tuple):  # a plural entry: keep its singular (form 0), drop the others
            key = key[0] if key[1] == 0 else ""
        key = key.split(CONTEXT_SEP, 1)[-1]
        if key.strip() and value.strip():
            yield key, value


class GettextSource(DataSource):
    """English -> data.lang message pairs from data.catalogs, or every catalog of data.lang under /usr/share/locale."""

    settings_keys = ("lang", "catalogs")

    @property
    def lang(self) -> str:
        return str(getattr(self.data, "lang", "fr"))

    def catalog_paths(self) -> list[Path]:
        """The .mo files to read, or one line naming what is wrong (no such language, not a catalog)."""
        given = list(getattr(self.data, "catalogs", []) or [])
        if given:
            paths = [Path(p) for p in given]
            for p in paths:
                if p.suffix != ".mo" or not p.is_file():
                    raise DataError(f"data.catalogs: {str(p)!r} is not a compiled gettext catalog (.mo file); "
                                    f"give .mo files such as {LOCALE_DIR}/{self.lang}/LC_MESSAGES/tar.mo")
            return unique_catalogs(paths)
        folder = LOCALE_DIR / self.lang / "LC_MESSAGES"
        paths = sorted(folder.glob("*.mo")) if folder.is_dir() else []
        if not paths:
            have = installed_languages()
            raise DataError(f"data.lang {self.lang!r}: no gettext catalogs in {folder}; languages with catalogs here: "
                            f"{', '.join(have[:40]) or 'none (install packages with translations, e.g. apt-get install coreutils)'}")
        return unique_catalogs(paths)

    def files(self) -> list[tuple[Path, str]]:
        return [(p, f"{self.lang}/{p.name}") for p in self.catalog_paths()]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        for path, name in self.files():
            stats.files.append(name)
            for english, translated in catalog_messages(path):
                stats.documents += 1
                yield {"text": english, "target": translated, "group": path.stem, "id": f"{name}:{english[:40]!r}"}


register_source("gettext", GettextSource, provides=[PAIRS])
