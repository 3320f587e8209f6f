"""Sequence to sequence under `largo explain`: why this output.

Each source is decoded greedily (models/decode.py, as `largo eval` decodes), or --target's text is taken as the output;
then every output token's log-probability, the stop token's included, is attributed to the tokens it reads: the source
and the output before it (layer integrated gradients on the token embeddings, with the completeness check). The
baseline is <|endoftext|> everywhere but at the separator: with the separator blanked too, most of the attribution
went to it (on 4 sources of the test's toy model: 73-89% of the first token's), which says that an output is due, not
which source tokens it follows. One page per source: the source x output matrix, the attention rollout the
same way, a row per output token; one record per output token in explain.json.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.config import RunConfig
from largo.data.prepare import token_pieces
from largo.data.seq2seq import TEST_PAIRS, read_pairs
from largo.errors import ConfigError
from largo.explain import render
from largo.explain.attribute import Attributed, completeness, integrated_gradients, scores
from largo.explain.inputs import expand_sources, output_name
from largo.explain.rollout import attention_rollout
from largo.models.decode import greedy
from largo.models.seq2seq import Codec, PrefixLM, Seq2SeqSpec
from largo.rundir import TOKENIZER

PARTS = ("source", "target_prefix")  # what an output token reads (the separator between them: 0, it is in the baseline)


@dataclass
class Source:
    """One input to explain: its name, its `source <|sep|>` ids, and the reference output when a test pair gave it."""

    name: str
    prefix: list[int]
    reference: str | None = None


@dataclass
class Explained:
    """One source's output tokens and their attributions: maps (outputs, positions read by the last one)."""

    out: list[int]
    result: Attributed
    rolled: np.ndarray | None
    top: tuple[torch.Tensor, torch.Tensor]  # (probabilities, ids) of the top-k tokens at each output step


def seq2seq_sources(spec: Seq2SeqSpec, cfg: RunConfig, ckpt: Path, codec: Codec, sources: list[str], split: str | None,
                    limit: int) -> list[Source]:
    """The first `limit` test pairs (with --split test), then each text, file or folder's .txt files."""
    found = []
    if split is not None:
        if split != "test":
            raise ConfigError(f"--split {split}: a sequence-to-sequence run's prepared data has its 'test' pairs to explain")
        pairs = read_pairs(cfg.data.dir, TEST_PAIRS)[:limit]
        found += [Source(f"test[{i}]", codec.prefix(p["source"]), p["reference"]) for i, p in enumerate(pairs)]
    for src in expand_sources(spec, sources, limit):
        found.append(Source(src, spec.read_example(cfg.data, cfg.model, ckpt, src).tolist()))
    return found


def output_tokens(model: PrefixLM, codec: Codec, prefix: list[int], target: str | None) -> list[int]:
    """The tokens to attribute: greedy decoding's and its stop token when it stopped, or --target's and the stop token."""
    if target is None:
        device = next(model.parameters()).device
        hyp = greedy(model, torch.tensor([prefix], device=device), stop_id=codec.stop, max_new_tokens=codec.room(prefix),
                     no_repeat_ngram=model.cfg.no_repeat_ngram)[0]
        return hyp.tokens + [codec.stop] * int(hyp.finished)
    out = codec.tok.encode(target).ids + [codec.stop]
    if len(prefix) + len(out) - 1 > codec.max_seq_len:  # the stop token is scored, never read
        raise ConfigError(f"--target: {len(out) - 1} tokens; after this source the context (model.max_seq_len "
                          f"{codec.max_seq_len}) has room for {codec.max_seq_len - len(prefix)}")
    return out


def attribute_outputs(spec: Seq2SeqSpec, model: PrefixLM, prefix: list[int], out: list[int], *, stop: int, steps: int,
                      max_steps: int, top_k: int) -> Explained:
    """Integrated gradients of every output token's log-probability, one batch row each: each row holds the whole
    sequence, since causal attention keeps a token from reading the ones after the position it is scored at."""
    device = next(model.parameters()).device
    ids = torch.tensor(prefix + out[:-1], device=device).repeat(len(out), 1)  # (outputs, positions)
    at = torch.arange(len(out), device=device) + len(prefix) - 1  # output token k is predicted at its previous position
    blank = torch.full_like(ids, stop)
    blank[:, len(prefix) - 1] = ids[:, len(prefix) - 1]  # the separator is kept (see the module's docstring)
    att = spec.attribution(model, ids, blank, at=at)
    result = integrated_gradients(att, torch.tensor(out, device=device), steps=steps, max_steps=max_steps)
    rolled = att.rollout(attention_rollout(model, lambda: att.forward(att.inputs, *att.extra))) if att.rollout else None
    probs, top = scores(att).exp().topk(min(top_k, model.cfg.vocab_size), dim=-1)
    return Explained(out, result, None if rolled is None else rolled.cpu().numpy(), (probs.cpu(), top.cpu()))


def shares(values: np.ndarray, prefix_len: int) -> dict[str, float]:
    """The share of |attribution| on the source and on the output before the token (they sum to 1)."""
    magnitude = np.abs(values)
    total = max(float(magnitude.sum()), 1e-30)
    return {"source_share": float(magnitude[: prefix_len - 1].sum()) / total,
            "target_prefix_share": float(magnitude[prefix_len:].sum()) / total}


def token_records(src: Source, ex: Explained, pieces: list[str], output: str, stem: str) -> list[dict[str, Any]]:
    """One record per output token: the token, its probability, the shares, completeness, the attributions it reads."""
    maps, p = ex.result.maps.cpu().numpy(), len(src.prefix)
    records = []
    for k, token in enumerate(ex.out):
        read = maps[k, : p + k]  # the source, the separator and the k output tokens before it
        records.append({"input": src.name, "output": output, "reference": src.reference, "position": k,
                        "token": pieces[p + k], "probability": float(np.exp(float(ex.result.score[k]))),
                        **completeness(ex.result, k), **shares(read, p),
                        "attribution": [[piece, float(v)] for piece, v in zip(pieces, read)], "file": f"{stem}.html"})
    return records


def explain_seq2seq(model: PrefixLM, cfg: RunConfig, ckpt: Path, spec: Seq2SeqSpec, sources: list[str], out_dir: Path, *,
                    split: str | None, limit: int, target: str | None, steps: int, max_steps: int, top_k: int,
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One HTML page per source (source x output attributions, rollout, a row per output token); a record per output token."""
    codec = spec.run_codec(ckpt / TOKENIZER, cfg.model, cfg.data)
    if target is not None and not codec.tok.encode(target).ids:
        raise ConfigError(f"--target {target!r} encodes to no token; give the output text to attribute")
    records = []
    for i, src in enumerate(seq2seq_sources(spec, cfg, ckpt, codec, sources, split, limit)):
        out = output_tokens(model, codec, src.prefix, target)
        ex = attribute_outputs(spec, model, src.prefix, out, stop=codec.stop, steps=steps, max_steps=max_steps, top_k=top_k)
        pieces = token_pieces(codec.tok, src.prefix + out)
        output = codec.tok.decode([t for t in out if t != codec.stop]).strip()
        stem = output_name(i, src.name, "")
        mine = token_records(src, ex, pieces, output, stem)
        top = [", ".join(f"{piece!r} {float(q):.2f}" for piece, q in zip(token_pieces(codec.tok, ids.tolist()), probs))
               for probs, ids in zip(*ex.top)]
        (out_dir / f"{stem}.html").write_text(seq2seq_page(stem, src, pieces, mine, ex, top, forced=target is not None))
        records += mine
        worst = max(r["completeness_error"] for r in mine)
        log(f"{src.name}: {output!r} ({len(out)} tokens attributed, the stop token included) | completeness: max error "
            f"{100 * worst:.1f}% -> {out_dir / f'{stem}.html'}")
    return records


def matrix(maps: np.ndarray, prefix_len: int) -> np.ndarray:
    """(positions, outputs): column k = output token k's map over the positions it reads, NaN where it reads nothing."""
    values = maps.T.astype(np.float64).copy()
    for k in range(values.shape[1]):
        values[prefix_len + k :, k] = np.nan
    return values


def seq2seq_page(title: str, src: Source, pieces: list[str], records: list[dict[str, Any]], ex: Explained, top: list[str], *,
                 forced: bool) -> str:
    """The source x output attribution matrix, the rollout the same way, and a row of figures per output token."""
    p, first = len(src.prefix), records[0]
    rows = [f"{part} {piece!r}" for part, piece in
            zip(["source"] * (p - 1) + ["separator"] + ["output"] * (len(pieces) - p), pieces[: len(pieces) - 1])]
    columns = [f"{r['position']}: {r['token']!r} p={r['probability']:.2f}" for r in records]
    how = "--target's text, scored token by token" if forced else "greedy decoding"
    body = [f"<p>source: {html.escape(repr(''.join(pieces[: p - 1])))}<br>output ({how}): {html.escape(repr(first['output']))}"
            + (f"<br>reference: {html.escape(repr(src.reference))}" if src.reference is not None else "") + "</p>",
            "<h2>Integrated gradients: what each output token reads</h2>",
            "<p class=\"small\">column = an output token (the stop token included); cell = the attribution of its "
            "log-probability to the token of the row (layer integrated gradients on the token embeddings from "
            "&lt;|endoftext|&gt; everywhere but the separator, which therefore has none); green = raises it, red = lowers "
            "it; each column coloured against its own largest |value|; blank = a position the token does not read (causal "
            "attention)</p>",
            render.heat_table(rows, columns, matrix(ex.result.maps.cpu().numpy()[:, : len(rows)], p))]
    if ex.rolled is not None:
        body += ["<h2>Attention rollout into the position each output token is predicted at</h2>",
                 render.heat_table(rows, columns, matrix(ex.rolled[:, : len(rows)], p))]
    table = [[r["position"], repr(r["token"]), f"{r['probability']:.3f}", top[k],
              " / ".join(f"{100 * r[f'{part}_share']:.0f}%" for part in PARTS),
              f"{r['attribution_sum']:.4f} vs {r['score'] - r['baseline_score']:.4f}", f"{100 * r['completeness_error']:.2f}%"]
             for k, r in enumerate(records)]
    body += ["<h2>Output tokens</h2>",
             render.table(["#", "token", "probability", f"top-{len(ex.top[1][0])} at this step",
                           "share of |attribution|: source / output before", "sum vs log-probability difference",
                           "completeness error"], table)]
    return render.page(title, "\n".join(body))
