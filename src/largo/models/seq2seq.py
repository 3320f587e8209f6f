"""Sequence to sequence on the shared trunk: a decoder-only model reads `source <|sep|>` and writes the target after it.

The model is the language model's (models/gpt.py: token embedding -> causal trunk -> tied head); only the data
differs: each row is `source <|sep|> target <|endoftext|>` and the loss counts the target's tokens only (the
source's positions are IGNORE). Why decoder-only rather than an encoder with cross-attention: it is the shared block
as it stands (no second attention path in the block), the KV cache and sampling already serve it, and one stack of
blocks reads both languages through one tied vocabulary. The price is causal attention over the source (a prefix-LM
mask would let the source attend both ways). Decoding (greedy, beam search, both with the KV cache) is models/decode.py;
scores and baselines are models/text_metrics.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from largo.data.arrays import Prepared
from largo.data.prepare import EOT, read_text_input, token_pieces
from largo.data.seq2seq import SEP, TEST_PAIRS, TRAIN_PAIRS, PairData, Seq2SeqDataConfig, prepare_pairs, read_pairs
from largo.errors import CheckpointError, ConfigError, DataError
from largo.models.decode import Hypothesis, beam_search, greedy
from largo.models.gpt import GPT, GPTConfig, GPTSpec
from largo.models.layers import KVCache
from largo.models.loss import IGNORE, Scored, linear_cross_entropy, linear_scores, score_targets
from largo.models.pointer import Pointer
from largo.models.results import GenerateRequest, TaskResults
from largo.models.spec import ArchSpec, Attribution, DataShape, MemoryTerms, Task, register
from largo.models.text_metrics import baseline_outputs, placeholders, score_texts
from largo.precision import Layout
from largo.rundir import TOKENIZER

DEFAULT_TEST_LIMIT = 1000  # `largo eval` scores the first 1000 test pairs of their fixed shuffled order unless --limit says
EXAMPLES = "examples.md"  # written into the run folder at the end of training
EXAMPLES_SHOWN = 10
WIDEN = 16  # a source whose placeholders no beam kept is searched again 16x wider (docs/seq2seq.md: placeholders kept)


@dataclass
class Seq2SeqConfig(GPTConfig):
    """The language model's shape, plus how evaluation and the end of training decode."""

    arch: str = "seq2seq"
    decoding_keys = ("beam", "length_penalty", "keep_placeholders", "no_repeat_ngram")
    beam: int = 4  # beam width of evaluation's outputs (1 = greedy)
    length_penalty: float = 1.0  # beam search ranks by log-probability / length ** this (0 = plain log-probability)
    keep_placeholders: bool = False  # beam search keeps the source's placeholders (%s, {name}, \n): only such outputs end it
    no_repeat_ngram: int = 0  # decoding never repeats an n-gram of its own output (0 = off): a copying model's loops
    # training only: weight of a language-model loss on the source's tokens beside the target's (0 = the target's
    # alone). A summarisation source is most of a row; predicting it teaches the language the summary is written in.
    # The training loss then reads target + weight x source (each per token); the dev loss stays the target's.
    source_loss: float = 0.0
    # a pointer beside the vocabulary head (models/pointer.py): each output token generated or copied from a position
    # read so far, the source's above all (a summary names what its body names)
    pointer: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam < 1 or not self.length_penalty >= 0:
            raise ConfigError(f"model.beam ({self.beam}) must be >= 1 and model.length_penalty ({self.length_penalty}) >= 0")
        if self.no_repeat_ngram < 0:
            raise ConfigError(f"model.no_repeat_ngram ({self.no_repeat_ngram}) must be >= 0 (0 = off, 3 = no 3-gram twice)")
        if not self.source_loss >= 0:
            raise ConfigError(f"model.source_loss ({self.source_loss}) must be >= 0 (0 = the target's loss only)")


class PrefixLM(GPT):
    """The language model whose loss reads the target positions only: the head runs on them, not on the source or padding
    (the vocabulary head is most of a small model's work; the source is about half of a row). With model.pointer its
    outputs are log-probabilities of the generate-or-copy mixture (models/pointer.py) rather than logits."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__(cfg)
        self.pointer = Pointer(cfg.dim, cfg.head_dim, cfg.init_std) if cfg.pointer else None

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        if self.pointer is not None:
            self.pointer.init_weights()

    def new_cache(self) -> list[KVCache]:
        """The blocks' caches, and the pointer's (keys and token ids of the positions read) last."""
        return super().new_cache() + ([KVCache()] if self.pointer is not None else [])

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                score: bool = False) -> torch.Tensor | Scored:
        if targets is None and self.pointer is None:
            return super().forward(tokens, cache=cache)
        start = cache[0].length if cache else 0
        x = self.trunk(self.tok_emb(tokens), cache=cache)  # (b, t, dim)
        w = self.head.weight if self.head is not None else self.tok_emb.weight
        if targets is None:  # the pointer's mixture at every position
            b, t = tokens.shape
            keys, ids = self.pointer.keys(x, tokens, self.trunk.rope, cache[-1] if cache else None)
            rows = torch.arange(b, device=x.device).repeat_interleave(t)
            pos = start + torch.arange(t, device=x.device).repeat(b)
            return self.pointer.log_probs(x.flatten(0, 1), rows, pos, keys, ids, self.trunk.rope, F.linear(x, w).flatten(0, 1)).view(b, t, -1)
        keep = targets != IGNORE  # (b, t) the target's positions
        if self.pointer is not None:
            return self._pointer_loss(x, w, tokens, targets, keep, score)
        if not score:
            loss = linear_cross_entropy(x[keep], w, targets[keep])
            weight = self.cfg.source_loss if self.training else 0.0
            return loss if not weight else loss + weight * self.source_loss(x, w, tokens, keep)
        scored = linear_scores(x[keep], w, targets[keep])
        predicted = torch.full_like(targets, IGNORE)
        predicted[keep] = scored.predicted.to(predicted.dtype)
        return scored._replace(predicted=predicted)

    def _pointer_loss(self, x: torch.Tensor, w: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                      score: bool) -> torch.Tensor | Scored:
        """forward's summed loss (or evaluation's Scored) of the generate-or-copy mixture at the target's positions."""
        rows, pos = keep.nonzero(as_tuple=True)
        keys, ids = self.pointer.keys(x, tokens, self.trunk.rope, None)
        hq = x[keep]
        if score:
            scored = score_targets(self.pointer.log_probs(hq, rows, pos, keys, ids, self.trunk.rope, F.linear(hq, w)), targets[keep])
            predicted = torch.full_like(targets, IGNORE)
            predicted[keep] = scored.predicted.to(predicted.dtype)
            return scored._replace(predicted=predicted)
        loss = -self.pointer.target_log_prob(hq, rows, pos, keys, ids, self.trunk.rope, F.linear(hq, w), targets[keep]).sum()
        weight = self.cfg.source_loss if self.training else 0.0
        return loss if not weight else loss + weight * self.source_loss(x, w, tokens, keep)

    def source_loss(self, x: torch.Tensor, w: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The summed next-token loss over the source's positions (those before a row's first target, each predicting
        the next input: a source token or the separator), rescaled to the target's token count so that the sum the
        trainer divides by that count reads as a per-token mean."""
        first = keep.int().argmax(dim=1)  # (b,) the separator's position: the first target
        source = torch.arange(tokens.shape[1], device=tokens.device)[None] < first[:, None]  # (b, t)
        nxt = tokens.roll(-1, dims=1)  # position p predicts input p + 1 (< first + 1 <= t - 1: never wraps)
        count = source.sum().clamp(min=1)
        return linear_cross_entropy(x[source], w, nxt[source]) * (keep.sum() / count)

    def logits_at(self, tokens: torch.Tensor, at: torch.Tensor, copy_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, vocab) of the token after position at[i] of row i: the head on those positions only (explanations
        run it on many rows of path points; full logits would be (rows, t, vocab)). With the pointer, log-probabilities
        of the mixture, copying the tokens copy_ids (default: tokens) names: an explanation holds the tokens it may copy
        fixed while it moves the embeddings from the baseline's to the input's, so the path ends where the scores do."""
        x = self.trunk(self.tok_emb(tokens))  # (b, t, dim)
        w = self.head.weight if self.head is not None else self.tok_emb.weight
        rows = torch.arange(len(at), device=x.device)
        if self.pointer is None:
            return F.linear(x[rows, at], w)
        keys, ids = self.pointer.keys(x, tokens if copy_ids is None else copy_ids, self.trunk.rope, None)
        return self.pointer.log_probs(x[rows, at], rows, at, keys, ids, self.trunk.rope, F.linear(x[rows, at], w))


@dataclass
class PreparedPairs:
    """What prepare returns: the token rows and the [data] section that names the folder (test pairs, tokenizer)."""

    arrays: Prepared
    data: Seq2SeqDataConfig

    @property
    def meta(self) -> dict[str, Any]:
        return self.arrays.meta


@dataclass(frozen=True)
class Codec:
    """Text <-> the model's tokens for decoding: the tokenizer, its separator and stop ids, and the source budget."""

    tok: Tokenizer
    max_seq_len: int
    max_target_tokens: int  # the longest training target: outputs never need more
    truncate: bool  # long sources are cut (summarisation) rather than refused
    separator: str = SEP  # the token between source and output (data.separator)

    @property
    def sep(self) -> int:
        return self.tok.token_to_id(self.separator)

    @property
    def stop(self) -> int:
        return self.tok.token_to_id(EOT)

    def prefix(self, text: str) -> list[int]:
        """`source <|sep|>` token ids; a source cut to leave room for the longest target where the data truncates."""
        ids = self.tok.encode(text).ids
        if self.truncate:
            ids = ids[: max(1, self.max_seq_len - self.max_target_tokens - 2)]
        return ids + [self.sep]

    def room(self, prefix: list[int]) -> int:
        """New tokens the context and the longest target allow after a prefix (the stop token included)."""
        return max(1, min(self.max_seq_len - len(prefix), self.max_target_tokens + 1))

    def checked_prefix(self, text: str, what: str = "--input") -> list[int]:
        """prefix(text) of a user's source, or one line when it is empty or longer than the context."""
        text = text.strip()
        if not text:
            raise ConfigError(f"{what}: give the source text, e.g. --input 'Save the file?' (it is empty)")
        n = len(self.tok.encode(text).ids)
        if n + 2 > self.max_seq_len:
            raise ConfigError(f"{what}: {n} tokens; this model reads sources of at most {self.max_seq_len - 2} tokens "
                              f"(model.max_seq_len {self.max_seq_len}, one separator, one output token)")
        return self.prefix(text)

    def text(self, hyp: Hypothesis) -> str:
        return self.tok.decode(hyp.tokens).strip()


class KeepPlaceholders:
    """Beam search's constraint: the output holds the source's placeholders, each as often (text_metrics.placeholders);
    a beam that already holds one more often than the source (or one it lacks) is pruned."""

    def __init__(self, codec: Codec, source: str):
        self.codec, self.want = codec, placeholders(source)

    def _have(self, tokens: list[int]) -> Counter[str]:
        return placeholders(self.codec.text(Hypothesis(tokens, 0.0, True)))

    def viable(self, tokens: list[int]) -> bool:
        # placeholders only accumulate as tokens are appended (an unfinished '%' or '{' matches nothing yet)
        return not (self._have(tokens) - self.want)

    def accepts(self, tokens: list[int]) -> bool:
        return self._have(tokens) == self.want


def decode_texts(model: nn.Module, codec: Codec, sources: list[str], *, beam: int, length_penalty: float,
                 keep_placeholders: bool = False, no_repeat_ngram: int = 0, log: Callable[[str], None] = print) -> list[str]:
    """The model's outputs for the sources: greedy in batches of equally long prefixes, or beam search one by one."""
    device = next(model.parameters()).device
    prefixes = [codec.prefix(s) for s in sources]
    out: list[str] = [""] * len(sources)
    if beam == 1:
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            by_length.setdefault(len(p), []).append(i)
        for n, rows in by_length.items():
            batch = torch.tensor([prefixes[i] for i in rows], device=device)
            for i, hyp in zip(rows, greedy(model, batch, stop_id=codec.stop, max_new_tokens=codec.room(prefixes[rows[0]]),
                                           no_repeat_ngram=no_repeat_ngram)):
                out[i] = codec.text(hyp)
        return out
    for i, p in enumerate(prefixes):
        rule = KeepPlaceholders(codec, sources[i]) if keep_placeholders else None
        out[i] = codec.text(beam_search(model, p, beam=beam, stop_id=codec.stop, max_new_tokens=codec.room(p),
                                        length_penalty=length_penalty, constraint=rule, no_repeat_ngram=no_repeat_ngram,
                                        widen=WIDEN))
        if (i + 1) % 250 == 0:
            log(f"decode: {i + 1:,}/{len(prefixes):,} beam-{beam} outputs")
    return out


class Seq2SeqSpec(ArchSpec):
    """Translation and summarisation: text pairs, the source as the prefix of a causal model's output."""

    name = "seq2seq"
    model_config = Seq2SeqConfig
    data_config = Seq2SeqDataConfig
    about = "sequence to sequence (decoder-only, source as prefix): translation, summarisation"
    export_formats = ("safetensors",)
    example_suffixes = (".txt",)  # `largo explain` reads each text file of a folder as one source

    def build(self, cfg: Seq2SeqConfig) -> nn.Module:
        return PrefixLM(cfg)

    def prepare(self, data: Seq2SeqDataConfig, model: Seq2SeqConfig, *, force: bool = False,
                log: Callable[[str], None] = print) -> PreparedPairs:
        return PreparedPairs(prepare_pairs(data, seq_len=model.max_seq_len, force=force, log=log), data)

    def resolve(self, model: Seq2SeqConfig, prepared: PreparedPairs) -> Seq2SeqConfig:
        vocab = int(prepared.meta["vocab_size"])
        if model.vocab_size not in (0, vocab):
            raise ConfigError(f"model.vocab_size ({model.vocab_size}) differs from the tokenizer's {vocab}; set it to 0 or {vocab}")
        return dataclasses.replace(model, vocab_size=vocab)

    def positions(self, cfg: Seq2SeqConfig, prepared: PreparedPairs) -> int:
        return int(prepared.meta["positions"])  # rows are cut to their batch's longest: the mean of that, not max_seq_len

    def dataset(self, data: Seq2SeqDataConfig, model: Seq2SeqConfig, prepared: PreparedPairs, *, seed: int) -> PairData:
        return PairData(prepared.arrays, seed=seed, bucket_rows=data.bucket_rows)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model(inputs, targets=targets)  # IGNORE on the source's positions: the loss is the target's

    def score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Scored:
        return model(inputs, targets=targets, score=True)

    def checkpoint_files(self, data: Seq2SeqDataConfig) -> dict[str, Path]:
        return {TOKENIZER: Path(data.dir) / TOKENIZER}

    def data_shape(self, data: Seq2SeqDataConfig, model: Seq2SeqConfig) -> DataShape:
        """Vocabulary and positions from the prepared manifest, or data.vocab_size and max_seq_len before preparing."""
        vocab, positions, tokens = data.vocab_size, model.max_seq_len, None
        try:
            meta = json.loads((Path(data.dir) / "manifest.json").read_text())["meta"]
            vocab, positions = int(meta["vocab_size"]), int(meta["positions"])
            tokens = int(meta["pairs"]["train"]) * positions
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not prepared yet (or another preparation's folder): plan from the config
        model = model if model.vocab_size else dataclasses.replace(model, vocab_size=vocab)
        return DataShape(model, positions, tokens)

    # ---- the task's figures, examples and outputs
    def codec(self, tokenizer: Path, cfg: Seq2SeqConfig, data: Seq2SeqDataConfig, max_target_tokens: int) -> Codec:
        return Codec(Tokenizer.from_file(str(tokenizer)), cfg.max_seq_len, max_target_tokens, data.long_pairs == "truncate",
                     data.separator)

    def run_codec(self, tokenizer: Path, cfg: Seq2SeqConfig, data: Seq2SeqDataConfig) -> Codec:
        """A trained run's codec: its checkpoint's tokenizer, the longest training target from its data's manifest."""
        manifest = Path(data.dir) / "manifest.json"
        meta = json.loads(manifest.read_text())["meta"] if manifest.is_file() else {}
        return self.codec(tokenizer, cfg, data, int(meta.get("max_target_tokens", cfg.max_seq_len // 2)))

    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults:
        """chrF, BLEU, ROUGE and placeholders kept on the first `limit` (default 1000) test pairs, next to the baselines."""
        prepared: PreparedPairs = task.prepared
        data, cfg = prepared.data, task.model
        test = read_pairs(data.dir, TEST_PAIRS)[: DEFAULT_TEST_LIMIT if limit is None else max(0, limit)]
        if not test:
            raise DataError(f"{data.dir}/{TEST_PAIRS}: no test pairs to score (--limit {limit})")
        sources, refs = [p["source"] for p in test], [p["reference"] for p in test]
        codec = self.codec(Path(data.dir) / TOKENIZER, cfg, data, int(prepared.meta["max_target_tokens"]))
        model.eval()
        log(f"decode: {len(test):,} test pairs of {prepared.meta['pairs']['test']:,} (beam {cfg.beam}, length penalty {cfg.length_penalty:g})")
        outputs = decode_texts(model, codec, sources, beam=cfg.beam, length_penalty=cfg.length_penalty,
                               keep_placeholders=cfg.keep_placeholders, no_repeat_ngram=cfg.no_repeat_ngram, log=log)
        metrics, lines = score_texts(outputs, refs)
        if cfg.beam > 1:  # greedy on the same pairs, for the beam-vs-greedy comparison
            greedy_out = decode_texts(model, codec, sources, beam=1, length_penalty=0.0, no_repeat_ngram=cfg.no_repeat_ngram, log=log)
            metrics.update({f"{k}_greedy": v for k, v in score_texts(greedy_out, refs)[0].items() if k in ("chrf", "rougeL")})
        train_pairs = read_pairs(data.dir, TRAIN_PAIRS)
        baselines = {name: score_texts(baseline_outputs(name, sources, train_pairs), refs)[0] for name in data.baselines}
        predictions = [{"input": s, "reference": r, "output": o, "group": p["group"]} for s, r, o, p in zip(sources, refs, outputs, test)]
        lines.append(f"test set: the first {len(test):,} of {prepared.meta['pairs']['test']:,} pairs of the held-out groups "
                     f"{', '.join(prepared.meta['groups']['test'])} (a fixed shuffled order)")
        return TaskResults(metrics, baselines, predictions, lines)

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        """examples.md in the run folder: the first test pairs (source, reference, the model's output)."""
        prepared: PreparedPairs = task.prepared
        data, cfg = prepared.data, task.model
        test = read_pairs(data.dir, TEST_PAIRS)[:EXAMPLES_SHOWN]
        codec = self.codec(Path(data.dir) / TOKENIZER, cfg, data, int(prepared.meta["max_target_tokens"]))
        model.eval()
        outputs = decode_texts(model, codec, [p["source"] for p in test], beam=cfg.beam, length_penalty=cfg.length_penalty,
                               keep_placeholders=cfg.keep_placeholders, no_repeat_ngram=cfg.no_repeat_ngram)
        parts = [f"# Test examples (beam {cfg.beam})\n"]
        for p, out in zip(test, outputs):
            parts.append(f"- **source** ({p['group']}): {_inline(p['source'])}\n  - reference: {_inline(p['reference'])}\n"
                         f"  - output: {_inline(out)}\n")
        path = run_dir / EXAMPLES
        path.write_text("\n".join(parts), encoding="utf-8")
        log(f"examples: {len(test)} test pairs with the model's outputs in {path}")
        return {"examples": str(path)}

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        """The translation or summary of --input: greedy, or beam search with --beam and --length-penalty."""
        if ckpt.tokenizer is None:
            raise CheckpointError(f"{ckpt.path}: no tokenizer.json; a sequence-to-sequence checkpoint carries its tokenizer")
        codec = self.run_codec(ckpt.tokenizer, cfg.model, cfg.data)
        prefix = codec.checked_prefix(request.input or "")
        room = min(codec.room(prefix), request.max_new_tokens)
        model.eval()
        rule = KeepPlaceholders(codec, request.input or "") if cfg.model.keep_placeholders else None
        hyp = beam_search(model, prefix, beam=request.beam, stop_id=codec.stop, max_new_tokens=room,
                          length_penalty=request.length_penalty, constraint=rule, no_repeat_ngram=cfg.model.no_repeat_ngram,
                          widen=WIDEN)
        return [codec.text(hyp)]

    # ---- `largo explain`: an output token's log-probability attributed to the tokens it reads (explain/seq2seq.py)
    def read_example(self, data: Seq2SeqDataConfig, model: Seq2SeqConfig, ckpt: Path, source: str) -> np.ndarray:
        """A text file or the text itself as the `source <|sep|>` ids decoding starts from (refused as `largo generate` does)."""
        codec = self.run_codec(ckpt / TOKENIZER, model, data)
        return np.array(codec.checked_prefix(read_text_input(source), repr(source)), dtype=np.int64)

    def token_pieces(self, ckpt: Path, ids: list[int]) -> list[str]:
        return token_pieces(Tokenizer.from_file(str(ckpt / TOKENIZER)), ids)

    def attribution(self, model: PrefixLM, inputs: torch.Tensor, blank: torch.Tensor, at: torch.Tensor | None = None) -> Attribution:
        """Scores = the log-probabilities of the token after position at[i] of row i (default: the last), so that one batch
        holds every output token of a sequence; baseline = blank (explain/seq2seq.py: <|endoftext|> but at the separator)."""
        at = torch.full((len(inputs),), inputs.shape[1] - 1, device=inputs.device) if at is None else at
        rows = torch.arange(len(inputs), device=inputs.device)
        return Attribution("tokens", lambda ids, where, copy: torch.log_softmax(model.logits_at(ids, where, copy).float(), -1),
                           inputs, blank, lambda a: a.sum(-1), layer=model.tok_emb, extra=(at, inputs), rollout=lambda r: r[rows, at])

    # ---- planner terms: the language model's
    def extra_matmul_params(self, cfg: Seq2SeqConfig, seq_len: int) -> int:
        return cfg.vocab_size * cfg.dim + (2 * cfg.dim * cfg.head_dim + cfg.dim if cfg.pointer else 0)  # head, pointer

    def memory_terms(self, cfg: Seq2SeqConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        return GPTSpec.memory_terms(self, cfg, micro_batch, seq_len, layout)  # type: ignore[arg-type]


def _inline(text: str) -> str:
    """Text on one markdown line: newlines shown as ⏎."""
    return text.replace("\n", " ⏎ ")


register(Seq2SeqSpec())
