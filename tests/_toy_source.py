"""A new data source in one module, registered from outside src/: counting in English words.

Everything largo needs from a source is here: its rows (documents for a language model, or texts with a label
for a text classifier), and its fingerprint (what identifies its content, so a change re-prepares). The
registry, the preparations, the loop, checkpoints and exporters do the rest. test_new_data_source.py trains a
language model on it, resumes, evaluates and exports.
"""

from __future__ import annotations

from collections.abc import Iterator

from largo.data.sources import LABELLED_TEXT, TEXT, DataSource, Roles, Row, SourceStats, register_source

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DOCUMENTS = 400


def counting(start: int, length: int) -> str:
    """'three four five ...': the digits of start, start + 1, ... spelled out, one number per word group."""
    return " ".join(" ".join(WORDS[int(c)] for c in str(n)) + "," for n in range(start, start + length))


class CountingSource(DataSource):
    """DOCUMENTS counting sentences, each labelled by whether it starts on an even number."""

    def fingerprint(self) -> str:
        return f"counting-v1-{DOCUMENTS}"  # generated, not read: its version is its content

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        stats.files.append(self.value)
        for i in range(DOCUMENTS):
            start = (37 * i) % 500
            yield {"id": f"count#{i}", "text": counting(start, 8 + i % 5), "label": "even" if start % 2 == 0 else "odd"}


register_source("toy-counting", CountingSource, provides=[TEXT, LABELLED_TEXT])
