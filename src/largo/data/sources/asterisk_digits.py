"""data.test_source = "asterisk-digits": a real human speaker saying 0..9 (Debian's Asterisk prompts, 8 kHz), for testing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.espeak_digits import DIGITS
from largo.data.sources.registry import AUDIO, DataSource, Roles, Row, SourceStats, register_source
from largo.errors import DataError

ASTERISK_DIGITS = Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits")


def asterisk_files() -> list[Path]:
    """0.wav .. 9.wav, or a one-line error naming the Debian package."""
    files = [ASTERISK_DIGITS / f"{d}.wav" for d in range(10)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"data.test_source 'asterisk-digits': {missing[0]} is missing; install it with: apt-get install asterisk-core-sounds-en-wav")
    return files


class AsteriskDigitsSource(DataSource):
    """Ten recordings, one per digit, labelled "zero".."nine"."""

    label_order = list(DIGITS)

    def files(self) -> list[tuple[Path, str]]:
        return [(f, f.name) for f in (ASTERISK_DIGITS / f"{d}.wav" for d in range(10)) if f.is_file()]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        for path, digit in zip(asterisk_files(), DIGITS):
            yield {"id": str(path), "audio": path, "label": digit}


register_source("asterisk-digits", AsteriskDigitsSource, provides=[AUDIO], test_only=True)
