"""Transcripts as a recogniser hears them: the written-down normalisation, the character vocabulary, and CTC labels.

Normalisation (the same for training sentences, test references and every hypothesis scored):
  1. text in square brackets is dropped ("[ascending tones]", "at [@]"): it is not spoken;
  2. "#" reads "pound", "*" reads "star", "&" reads "and", "%" reads "percent", "@" reads "at";
  3. numbers are spelled as cardinals ("500" -> "five hundred", "28.8" -> "twenty eight point eight");
  4. lowercase; hyphens, slashes and underscores become spaces; every character but a-z, the apostrophe
     and the space is dropped; an apostrophe only stays inside a word ("you'd"); spaces collapse.
A prompt whose normalised transcript is empty (a tone, a beep) has nothing to recognise and is not scored.
"""

from __future__ import annotations

import re

from largo.errors import DataError

VOCAB = " 'abcdefghijklmnopqrstuvwxyz"  # CTC label k + 1 is VOCAB[k]; label 0 is the blank
BLANK = 0
SPOKEN_SYMBOLS = {"#": " pound ", "*": " star ", "&": " and ", "%": " percent ", "@": " at ", "+": " plus ", "=": " equals "}
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_BRACKETS = re.compile(r"\[[^\]]*\]")


def spell_number(n: int) -> str:
    """A non-negative integer as English cardinal words without "and": 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{spell_number(head)} {word}" + ("" if rest == 0 else " " + spell_number(rest))
    raise AssertionError(n)  # unreachable: every n >= 100 meets a scale


def _spell(match: re.Match[str]) -> str:
    whole, _, frac = match.group(0).partition(".")
    words = spell_number(int(whole)) if len(whole) <= 12 else " ".join(_ONES[int(d)] for d in whole)
    return f" {words}" + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "") + " "


def normalise(text: str) -> str:
    """The transcript as scored and trained on (the steps in this module's docstring)."""
    text = _BRACKETS.sub(" ", text)
    for symbol, words in SPOKEN_SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _NUMBER.sub(_spell, text).lower()
    text = re.sub(r"[-/_]", " ", text)
    text = re.sub(r"[^a-z' ]", "", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", "", text)  # quotes, not contractions
    return " ".join(text.split())


def encode(text: str) -> list[int]:
    """CTC labels (1..len(VOCAB)) of normalised text; a character outside VOCAB is one line."""
    bad = sorted(set(text) - set(VOCAB))
    if bad:
        raise DataError(f"text {text[:60]!r}: characters {''.join(bad)!r} are outside the vocabulary {VOCAB!r}")
    return [VOCAB.index(c) + 1 for c in text]


def decode(labels: list[int]) -> str:
    """Labels 1..len(VOCAB) back to text (blanks and anything out of range skipped)."""
    return "".join(VOCAB[k - 1] for k in labels if 1 <= k <= len(VOCAB))


def check_speakable(text: str) -> str:
    """Raw text a user typed -> its normalised form; characters no rule reads (non-ASCII, control) are one line."""
    bad = sorted({c for c in text if not (c.isascii() and (c.isprintable() or c.isspace()))})
    if bad:
        raise DataError(f"text {text[:60]!r}: characters {''.join(bad)!r} are outside the vocabulary (ASCII letters, "
                        f"digits, punctuation and # * & % @ + =)")
    spoken = normalise(text)
    if not spoken:
        raise DataError(f"text {text[:60]!r}: nothing to say once normalised (letters a-z, digits and # * & % @ + = are read)")
    return spoken


def parse_transcripts(text: str, name: str) -> dict[str, str]:
    """`name: text` lines (';' comments and blank lines skipped) -> {name: raw text}; a line without a colon is one line."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        key, colon, value = line.partition(":")
        if not colon or not key.strip():
            raise DataError(f"{name}:{number}: {line[:60]!r} is not a 'name: text' line (no colon)")
        out[key.strip()] = value.strip()
    return out
