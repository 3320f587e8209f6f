"""CTC prefix beam search over characters, with a character n-gram language model fused in (shallow fusion).

The n-gram is Witten-Bell interpolated (each order backs off to the one below in proportion to how many distinct
characters its history has been followed by) and counted on the training transcripts, so it knows English spelling
and the words of the training sentences, never the test prompts. A prefix's score is its CTC probability (blank and
non-blank endings summed, the usual prefix beam search) plus lm_weight x its LM log-probability plus char_bonus per
character (the LM alone would prefer short outputs).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np

from largo.data.transcripts import BLANK, VOCAB

START, END = "^", "$"  # outside the vocabulary (a-z, apostrophe, space)
NEG = -1e30  # log(0)
TOP_LABELS = 8  # labels tried per position: the most probable ones ...
FLOOR = -12.0  # ... above this log-probability (the rest cannot win at any sensible weight)


class CharNgram:
    """Interpolated Witten-Bell character n-gram: log P(char | the order - 1 characters before it)."""

    def __init__(self, texts: Iterable[str], order: int = 5):
        if order < 1:
            raise ValueError(f"order ({order}) must be >= 1")
        self.order = order
        self.grams: list[Counter[str]] = [Counter() for _ in range(order + 1)]  # by length: n-gram -> count
        for text in texts:
            padded = START * (order - 1) + text + END
            for n in range(1, order + 1):
                for i in range(order - 1, len(padded)):
                    self.grams[n][padded[i - n + 1 : i + 1]] += 1
        self.seen: list[Counter[str]] = [Counter() for _ in range(order + 1)]  # history -> times followed by anything
        self.kinds: list[Counter[str]] = [Counter() for _ in range(order + 1)]  # history -> distinct characters after it
        for n in range(1, order + 1):
            for gram, c in self.grams[n].items():
                self.seen[n][gram[:-1]] += c
                self.kinds[n][gram[:-1]] += 1
        self.alphabet = len(VOCAB) + 1  # the characters and END
        self._cache: dict[tuple[str, str], float] = {}

    def log_prob(self, text: str, char: str) -> float:
        """log P(char | the end of text); char is a vocabulary character or END."""
        history = (START * (self.order - 1) + text)[len(text) :]  # the last order - 1 characters, START-padded
        key = (history, char)
        if key not in self._cache:
            self._cache[key] = math.log(self._prob(history, char, self.order))
        return self._cache[key]

    def _prob(self, history: str, char: str, n: int) -> float:
        if n == 0:
            return 1.0 / self.alphabet
        h = history[len(history) - n + 1 :] if n > 1 else ""
        lower = self._prob(history, char, n - 1)
        seen = self.seen[n].get(h, 0)
        if not seen:
            return lower
        kinds = self.kinds[n][h]
        return (self.grams[n].get(h + char, 0) + kinds * lower) / (seen + kinds)


def _logsumexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi if lo <= NEG else hi + math.log1p(math.exp(lo - hi))


def prefix_beam_search(log_probs: np.ndarray, lm: CharNgram | None = None, *, width: int = 16, lm_weight: float = 0.5,
                       char_bonus: float = 1.0) -> str:
    """The best transcript of one window's per-token log-probabilities (tokens, labels), label 0 the blank."""
    beams: dict[str, tuple[float, float]] = {"": (0.0, NEG)}  # prefix -> (log P ending in blank, ... in a character)
    fused = lambda prefix, char: (lm_weight * lm.log_prob(prefix, char) if lm else 0.0) + char_bonus  # noqa: E731
    for row in log_probs:
        labels = [int(k) for k in np.argsort(row)[::-1][:TOP_LABELS] if row[k] > FLOOR and k != BLANK]
        grown: defaultdict[str, list[float]] = defaultdict(lambda: [NEG, NEG])
        for prefix, (blank, char_end) in beams.items():
            total = _logsumexp(blank, char_end)
            stay = grown[prefix]
            stay[0] = _logsumexp(stay[0], total + float(row[BLANK]))
            last = prefix[-1] if prefix else None
            for k in labels:
                c, p = VOCAB[k - 1], float(row[k])
                longer = grown[prefix + c]
                if c == last:  # a repeat merges unless a blank separated it
                    stay[1] = _logsumexp(stay[1], char_end + p)
                    longer[1] = _logsumexp(longer[1], blank + p + fused(prefix, c))
                else:
                    longer[1] = _logsumexp(longer[1], total + p + fused(prefix, c))
        ranked = sorted(grown.items(), key=lambda kv: -_logsumexp(*kv[1]))[:width]
        beams = {prefix: (b, c) for prefix, (b, c) in ranked}
    ending = lambda prefix: lm_weight * lm.log_prob(prefix, END) if lm else 0.0  # noqa: E731
    return max(beams, key=lambda prefix: _logsumexp(*beams[prefix]) + ending(prefix))


class BeamDecoder:
    """A window's log-probabilities -> its text by prefix beam search with the n-gram fused in."""

    def __init__(self, lm: CharNgram | None, *, width: int, lm_weight: float, char_bonus: float):
        self.lm, self.width, self.lm_weight, self.char_bonus = lm, width, lm_weight, char_bonus

    def __call__(self, log_probs: np.ndarray) -> str:
        return prefix_beam_search(log_probs, self.lm, width=self.width, lm_weight=self.lm_weight, char_bonus=self.char_bonus)
