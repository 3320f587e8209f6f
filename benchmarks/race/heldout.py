"""The race's yardstick: one fixed held-out text from the stdlib corpus, scored in bits per byte whatever the tokenizer.

The held-out text is the first documents (file pieces) of largo's validation split of the stdlib source (every
20th document; no contender trains on them) up to `max_bytes` of UTF-8. A contender's tokenizer turns it into one
stream: <eot> doc_1 <eot> doc_2 <eot> ...; every token after the first is predicted once, from the tokens before
it in its window of `seq_len`. bits per byte = total nats / ln 2 / UTF-8 bytes of the documents, so a
tokenizer that cuts the text into fewer, longer tokens earns no advantage by that alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from largo.data.config import TextDataConfig
from largo.data.prepare import documents, text_source
from largo.data.sources.registry import SourceStats
from largo.data.split import is_validation

HELD_OUT_BYTES = 65_536  # about 20k tokens of a 4k-token BPE: a few seconds to score a 4M-parameter model on one core

Logits = Callable[[torch.Tensor], torch.Tensor]  # tokens (b, t) -> logits (b, t, vocab)


@dataclass(frozen=True)
class HeldOut:
    """The held-out documents and what identifies them."""

    docs: tuple[str, ...]

    @property
    def n_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.docs)

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\0".join(self.docs).encode("utf-8")).hexdigest()


def held_out(data: TextDataConfig, max_bytes: int = HELD_OUT_BYTES) -> HeldOut:
    """The first validation documents of data's source (largo's split rule) until max_bytes of UTF-8."""
    docs: list[str] = []
    total = 0
    for index, (_, text) in enumerate(documents(text_source(data, log=lambda _m: None), data.text_column, SourceStats())):
        if not is_validation(index, data.val_fraction):
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return HeldOut(tuple(docs))


def token_stream(docs: Sequence[str], encode: Callable[[str], list[int]], eot: int) -> list[int]:
    """<eot> doc_1 <eot> doc_2 <eot> ...: each document encoded alone, the boundary predicted like any token."""
    ids = [eot]
    for d in docs:
        ids += encode(d) + [eot]
    return ids


@torch.no_grad()
def stream_nats(logits: Logits, ids: Sequence[int], seq_len: int, batch: int = 8) -> float:
    """Total negative log-likelihood (nats) of ids[1:], each token predicted from its window of up to seq_len tokens."""
    stream = torch.tensor(ids, dtype=torch.long)
    n = len(ids) - 1  # predicted tokens
    starts = list(range(0, n, seq_len))
    total = 0.0
    full = [s for s in starts if s + seq_len <= n]
    for i in range(0, len(full), batch):  # full windows in batches, then the short last one alone
        x = torch.stack([stream[s : s + seq_len] for s in full[i : i + batch]])
        y = torch.stack([stream[s + 1 : s + seq_len + 1] for s in full[i : i + batch]])
        total += _nats(logits, x, y)
    for s in (s for s in starts if s + seq_len > n):
        total += _nats(logits, stream[s:n].unsqueeze(0), stream[s + 1 : n + 1].unsqueeze(0))
    return total


def _nats(logits: Logits, x: torch.Tensor, y: torch.Tensor) -> float:
    """Summed cross-entropy of targets y (b, t) under logits(x), in fp32."""
    out = logits(x).float()  # (b, t, vocab)
    return float(F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum"))


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Nats of a text -> bits per UTF-8 byte of it."""
    return nats / math.log(2) / n_bytes


def score(logits: Logits, held: HeldOut, encode: Callable[[str], list[int]], eot: int, seq_len: int) -> float:
    """The held-out text's bits per byte under a model and its tokenizer."""
    return bits_per_byte(stream_nats(logits, token_stream(held.docs, encode, eot), seq_len), held.n_bytes)
