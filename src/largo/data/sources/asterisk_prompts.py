"""data.test_source = "asterisk-prompts": 568 telephone prompts read by one professional speaker (Allison Smith), 8 kHz WAV,
with their transcripts (Debian's asterisk-core-sounds-en-wav and asterisk-core-sounds-en). Test only: never trained on.

Rows are {"id": prompt name, "audio": path, "text": raw transcript}; a prompt whose transcript holds nothing spoken
("[ascending tones]") or whose recording is missing is left out, and the count is logged.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.registry import SPEECH, DataSource, Roles, Row, SourceStats, register_source
from largo.data.transcripts import normalise, parse_transcripts
from largo.errors import DataError

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


def read_transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """{prompt name: raw text} from a `name: text` file (gzip or plain), or one line naming the Debian package."""
    if not path.is_file():
        raise DataError(f"{path} is missing; install it with: apt-get install asterisk-core-sounds-en")
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", errors="replace")
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    return parse_transcripts(text, str(path))


def prompts(sounds: Path = SOUNDS, transcripts: Path = TRANSCRIPTS) -> list[tuple[str, Path, str]]:
    """(name, wav, raw text) of every prompt with a recording and something spoken, sorted by name."""
    if not sounds.is_dir():
        raise DataError(f"{sounds} is missing; install it with: apt-get install asterisk-core-sounds-en-wav")
    texts = read_transcripts(transcripts)
    return [(name, sounds / f"{name}.wav", text) for name, text in sorted(texts.items())
            if (sounds / f"{name}.wav").is_file() and normalise(text)]


def prompt_texts() -> list[str]:
    """Every transcript's raw text (those without recordings too): what training sentences must not be near."""
    return list(read_transcripts().values()) if TRANSCRIPTS.is_file() else []


class AsteriskPromptsSource(DataSource):
    """The human test set for sentence-level recognition."""

    def files(self) -> list[tuple[Path, str]]:
        wavs = sorted(SOUNDS.rglob("*.wav")) if SOUNDS.is_dir() else []
        return [(p, str(p.relative_to(SOUNDS))) for p in wavs] + ([(TRANSCRIPTS, TRANSCRIPTS.name)] if TRANSCRIPTS.is_file() else [])

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        found = prompts()
        self.log(f"prepare: {len(found)} asterisk prompts with a recording and spoken text (tones and missing files left out)")
        for name, path, text in found:
            yield {"id": name, "audio": path, "text": text}


register_source("asterisk-prompts", AsteriskPromptsSource, provides=[SPEECH], test_only=True)
