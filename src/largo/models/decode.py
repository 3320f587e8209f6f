"""Decoding a sequence-to-sequence model's output after its source prefix: greedy and beam search, with the KV cache.

The model is any causal token model taking `cache=` and giving `new_cache()` (models/gpt.py's GPT): the prefix `source <|sep|>` runs once, then
each new token costs one position's forward through the cached keys and values. `use_cache=False` recomputes the
whole sequence at every step instead: the reference the cached path must match token for token (tests check it).
The search never knows which model runs it (as in Hugging Face's generation utilities).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn



@dataclass(frozen=True)
class Hypothesis:
    """One decoded output: its tokens (the stop token left out) and their summed log-probability under the model."""

    tokens: list[int]
    logprob: float
    finished: bool  # ended with the stop token (else cut at the length limit)

    def score(self, length_penalty: float) -> float:
        """Beam search's ranking: logprob / length ** length_penalty (the stop token counts; 0 = plain log-probability)."""
        return self.logprob / (len(self.tokens) + int(self.finished)) ** length_penalty


class Constraint(Protocol):
    """A rule on outputs the model does not know (e.g. keep the source's placeholders), applied inside beam search."""

    def viable(self, tokens: list[int]) -> bool:
        """Can these tokens, extended, still end in an accepted output? (False prunes the beam.)"""

    def accepts(self, tokens: list[int]) -> bool:
        """May these tokens be the output? (False: the stop token does not end the search there.)"""


class Stepper:
    """Next-token log-probabilities (rows, vocab) for growing rows of tokens, through a KV cache or recomputed in full."""

    def __init__(self, model: nn.Module, prefix: torch.Tensor, *, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.tokens = prefix  # (rows, t)
        self.cache = model.new_cache() if use_cache else None
        self.logprobs = self._forward(prefix)

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model(tokens, cache=self.cache)[:, -1].float(), dim=-1)  # (rows, vocab)

    def advance(self, rows: torch.Tensor, nxt: torch.Tensor) -> None:
        """Keep `rows` (indices of the current rows, repeats allowed), append nxt (len(rows),) and step the model."""
        self.tokens = torch.cat([self.tokens[rows], nxt[:, None]], dim=1)
        if self.cache is None:
            self.logprobs = self._forward(self.tokens)
            return
        for c in self.cache:  # the beams that survive carry their own past
            c.k, c.v = c.k[rows], c.v[rows]
        self.logprobs = self._forward(nxt[:, None])


def ban_repeats(logprobs: torch.Tensor, outputs: list[list[int]], n: int) -> torch.Tensor:
    """logprobs (rows, vocab) with -inf at every token that would repeat an n-gram already in its row's output (the
    source may be copied again; n = 0 leaves them as they are). Hugging Face's no_repeat_ngram_size, on the output."""
    rows, tokens = [], []
    for r, out in enumerate(outputs if n > 0 else []):
        head = out[len(out) - n + 1 :] if n > 1 else []
        for i in range(len(out) - n + 1):
            if out[i : i + n - 1] == head:
                rows.append(r)
                tokens.append(out[i + n - 1])
    if not rows:
        return logprobs
    banned = logprobs.clone()
    banned[rows, tokens] = float("-inf")
    return banned


@torch.no_grad()
def greedy(model: nn.Module, prefixes: torch.Tensor, *, stop_id: int, max_new_tokens: int, use_cache: bool = True,
           no_repeat_ngram: int = 0) -> list[Hypothesis]:
    """The most likely token at each step for a batch of equally long prefixes (b, t), until each has stopped; with
    no_repeat_ngram n, never a token that repeats an n-gram of the row's output (ban_repeats)."""
    step = Stepper(model, prefixes, use_cache=use_cache)
    b = prefixes.shape[0]
    out: list[list[int]] = [[] for _ in range(b)]
    logprob, done = [0.0] * b, [False] * b
    for i in range(max_new_tokens):
        best = ban_repeats(step.logprobs, out, no_repeat_ngram).max(dim=-1)  # values, indices (b,)
        for r in range(b):
            if not done[r]:
                logprob[r] += float(best.values[r])
                done[r] = int(best.indices[r]) == stop_id
                if not done[r]:
                    out[r].append(int(best.indices[r]))
        if all(done) or i == max_new_tokens - 1:
            break
        step.advance(torch.arange(b, device=prefixes.device), best.indices)
    return [Hypothesis(o, lp, d) for o, lp, d in zip(out, logprob, done)]


@torch.no_grad()
def beam_search(model: nn.Module, prefix: list[int], *, beam: int, stop_id: int, max_new_tokens: int,
                length_penalty: float = 1.0, use_cache: bool = True, constraint: Constraint | None = None,
                no_repeat_ngram: int = 0, widen: int = 1) -> Hypothesis:
    """The best of `beam` hypotheses kept at each step, ranked by Hypothesis.score; the greedy output is always a
    candidate too, so the result never scores below greedy decoding's under the same ranking. The search ends when a
    finished hypothesis outscores every live beam as it stands, or at max_new_tokens (live beams then count, unfinished).
    With a `constraint`, live beams it finds not viable give their place to the next candidates, only finished
    hypotheses it accepts can end the search, and the best accepted one wins (the best of all when none is accepted).
    no_repeat_ngram bans repeated n-grams from every beam and from the greedy candidate (ban_repeats). widen w: when
    the constraint accepts no output found, search once more w times wider, and keep that output if it is accepted."""
    device = next(model.parameters()).device
    first = greedy(model, torch.tensor([prefix], device=device), stop_id=stop_id, max_new_tokens=max_new_tokens,
                   use_cache=use_cache, no_repeat_ngram=no_repeat_ngram)[0]
    if beam == 1:
        return first
    accepts = constraint.accepts if constraint is not None else None
    step = Stepper(model, torch.tensor([prefix], device=device), use_cache=use_cache)
    live_lp = torch.zeros(1, device=device)  # (rows,) summed log-probabilities of the live beams
    live: list[list[int]] = [[]]
    finished = [first]
    best_done = first.score(length_penalty) if accepts is None or accepts(first.tokens) else float("-inf")  # accepted only
    width = 2 * beam if constraint is None else 4 * beam  # candidates read per step: pruned ones take no place
    for i in range(max_new_tokens):
        total = (live_lp[:, None] + ban_repeats(step.logprobs, live, no_repeat_ngram)).flatten()  # (rows * vocab,)
        values, flat = total.topk(min(width, total.numel()))
        vocab = step.logprobs.shape[-1]
        rows, keep, nxt_lp, seen = [], [], [], 0
        for v, f in zip(values.tolist(), flat.tolist()):
            r, tok = divmod(f, vocab)
            if seen == 2 * beam:  # the unconstrained search's 2 x beam candidates, less the pruned
                break
            if tok == stop_id:
                seen += 1
                finished.append(Hypothesis(live[r], v, True))
                if accepts is None or accepts(live[r]):
                    best_done = max(best_done, finished[-1].score(length_penalty))
            elif constraint is None or constraint.viable(live[r] + [tok]):
                seen += 1
                if len(rows) < beam:
                    rows.append(r)
                    keep.append(live[r] + [tok])
                    nxt_lp.append(v)
        # stop once a finished hypothesis beats every live beam as it stands (Hugging Face's early_stopping=False rule)
        bound = max(nxt_lp, default=float("-inf")) / (i + 1) ** length_penalty
        if not rows or i == max_new_tokens - 1 or best_done >= bound:
            finished += [Hypothesis(k, lp, False) for k, lp in zip(keep, nxt_lp)] if i == max_new_tokens - 1 else []
            break
        live, live_lp = keep, torch.tensor(nxt_lp, device=device)
        index = torch.tensor(rows, device=device)
        step.advance(index, torch.tensor([k[-1] for k in keep], device=device))
    best = best_of(finished, length_penalty, accepts)
    if accepts is None or widen <= 1 or accepts(best.tokens):
        return best
    wide = beam_search(model, prefix, beam=beam * widen, stop_id=stop_id, max_new_tokens=max_new_tokens,
                       length_penalty=length_penalty, use_cache=use_cache, constraint=constraint, no_repeat_ngram=no_repeat_ngram)
    return wide if accepts(wide.tokens) else best


def best_of(candidates: list[Hypothesis], length_penalty: float, accept: Callable[[list[int]], bool] | None) -> Hypothesis:
    """The highest-scoring candidate that `accept` accepts; when none is, the highest-scoring finished one (a search the
    constraint kept going may end in beams cut at the length limit), else the highest-scoring of all."""
    ranked = sorted(candidates, key=lambda h: h.score(length_penalty), reverse=True)
    if accept is None:
        return ranked[0]
    return next((h for h in ranked if accept(h.tokens)), next((h for h in ranked if h.finished), ranked[0]))
