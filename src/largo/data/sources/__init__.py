"""Data sources: the registry (registry.py) and one module per source, each registering itself when imported.

Path kinds, tried in this order after the names and the "hf:" prefix: a .jsonl/.csv/.parquet table (table.py),
a folder (files.py), a file or a glob (files.py). Built-in corpora: stdlib, fashion-mnist, digits, imdb,
espeak-digits, asterisk-digits. Another source registers itself with `register_source` from its own module,
inside or outside src/ (tests/_toy_source.py is one).
"""

from __future__ import annotations

from largo.data.sources import table, files, hf  # noqa: I001,F401  (path kinds and prefixes: this order is the order tried)
from largo.data.sources import stdlib, fashion_mnist, digits, imdb, espeak_digits, asterisk_digits  # noqa: F401  (listing order)
from largo.data.sources import gettext_catalogs, docstrings  # noqa: F401  (sequence-to-sequence pairs)
from largo.data.sources import fashion_scenes, coco  # noqa: F401  (detection: composed scenes, COCO JSON)
from largo.data.sources import asterisk_prompts, speech_sentences  # noqa: F401  (speech: human test prompts, synthesised sentences)
from largo.data.sources.registry import (
    AUDIO, IMAGES, LABELLED_TEXT, PAIRS, SPEECH, TEXT, DataSource, Roles, Row, SourceStats, open_source, register_path_kind, register_prefix,
    register_source, source_names,
)

__all__ = ["AUDIO", "IMAGES", "LABELLED_TEXT", "PAIRS", "SPEECH", "TEXT", "DataSource", "Roles", "Row", "SourceStats", "open_source",
           "register_path_kind", "register_prefix", "register_source", "source_names"]
