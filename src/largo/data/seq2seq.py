"""Sequence-to-sequence data: (source, target) text pairs -> token rows `source <|sep|> target <|endoftext|>`.

Any source that gives the roles text and target serves (data.source = "gettext" for translation, "docstrings" for
summarisation). Pairs are split by *group* (a catalog, a top-level package): held-out groups form the test set,
others the validation (dev) set, the rest trains, so no catalog or package is in two splits. Within a split a source
text appears once (the first pair read wins), and a source text of the test set is removed from validation and
training (and one of validation from training): no English message is in both train and test.

A byte-level BPE with <|endoftext|> and <|sep|> is trained on the training pairs (both sides). Output folder:
  train_x.npy train_src.npy train_len.npy   token rows (n, max_seq_len + 1), the <|sep|> index, the row length;
  val_x.npy   val_src.npy   val_len.npy     rows sorted by length (batches of similar rows waste little padding)
  train.jsonl test.jsonl                   the training pairs (for the retrieval baseline) and the test pairs as text,
                                           the test pairs in a fixed shuffled order (evaluation takes the first N)
  tokenizer.json manifest.json
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from largo.data import Batch
from largo.data.arrays import Built, Prepared, cached_arrays
from largo.data.config import DataConfig, check_non_negative
from largo.data.prepare import EOT, existing_tokenizer_path, load_existing_tokenizer, train_tokenizer
from largo.data.sources import PAIRS, DataSource, Row, SourceStats, open_source
from largo.data.split import even_subset
from largo.errors import ConfigError, DataError
from largo.fileio import sha256_file
from largo.rundir import TOKENIZER

IGNORE = -100  # a target that takes no part in the loss (models/loss.py's IGNORE; data sits below models)
SEP = "<|sep|>"  # between the source and the target: the model starts its output after it
TRAIN_PAIRS, TEST_PAIRS = "train.jsonl", "test.jsonl"
BASELINES = ("copy", "retrieval", "lead1")  # the source itself; the nearest training source's target; the first sentence
_VERSION = 1  # bump when the preparation below changes what it stores
_TEST_ORDER_SEED = 0  # the test pairs' fixed shuffled order (evaluation's --limit takes a prefix of it)


@dataclass
class Seq2SeqDataConfig(DataConfig):
    """Text pairs (translation, summarisation), split by group, encoded with a BPE trained on the training pairs."""

    source: str = "gettext"  # "gettext" (English -> data.lang messages), "docstrings" (stdlib body -> summary), or a source of text + target
    dir: str = "data/seq2seq"
    lang: str = "fr"  # gettext: the target language (a folder under /usr/share/locale)
    catalogs: list[str] = field(default_factory=list)  # gettext: read these .mo files instead of every catalog of data.lang
    packages: list[str] = field(default_factory=list)  # docstrings: installed site-packages whose docstrings join training
    vocab_size: int = 8192  # BPE vocabulary trained on both sides of the training pairs, special tokens included
    tokenizer: str = ""  # encode with this existing tokenizer.json (a pretrained model's, for model.init_from); "" = train a BPE
    separator: str = SEP  # the token between source and target: added to a trained BPE; one of data.tokenizer's own tokens
    test_fraction: float = 0.1  # share of the pairs in held-out groups (whole catalogs or packages) for the test set
    long_pairs: Literal["drop", "truncate"] = "drop"  # a pair longer than max_seq_len: dropped, or its source's tail cut
    bucket_rows: int = 64  # training rows drawn together from one length bucket (set it to the micro-batch)
    max_rows: int = 0  # keep at most this many training pairs; 0 = all (quick runs, tests)
    baselines: list[str] = field(default_factory=lambda: ["copy", "retrieval"])  # scored beside the model: copy, retrieval, lead1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "max_rows")
        if not 257 <= self.vocab_size <= 1 << 16:
            raise ConfigError(f"data.vocab_size ({self.vocab_size}) must be in [257, 65536]: 256 bytes + specials")
        if not 0.0 < self.test_fraction < 0.5 or self.val_fraction + self.test_fraction >= 0.5:
            raise ConfigError(f"data.test_fraction ({self.test_fraction}) must be in (0, 0.5) with data.val_fraction "
                              f"({self.val_fraction}) + data.test_fraction < 0.5")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"data.baselines: {unknown} unknown; choose from {list(BASELINES)}")
        if self.bucket_rows < 1:
            raise ConfigError(f"data.bucket_rows ({self.bucket_rows}) must be >= 1")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    group: str


def _group_order(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()  # machine-independent, unrelated to the names' alphabetical order


def held_out_groups(sizes: dict[str, int], fractions: tuple[float, ...]) -> list[set[str]]:
    """Groups for each held-out split: walked in hash order, a group joins while it fits the split's remaining room."""
    total, taken, out = sum(sizes.values()), set(), []
    for fraction in fractions:
        room, chosen = fraction * total, set()
        for g in sorted(sizes, key=_group_order):
            if g not in taken and sizes[g] <= room:
                chosen.add(g)
                room -= sizes[g]
        if not chosen:  # every group is larger than the share: take the smallest one left
            chosen = {min((g for g in sizes if g not in taken), key=lambda g: (sizes[g], _group_order(g)))}
        taken |= chosen
        out.append(chosen)
    return out


def split_pairs(rows: list[Row], test_fraction: float, val_fraction: float) -> dict[str, list[Pair]]:
    """train / val / test pairs: held-out groups, each source text once per split, test > val > train on overlaps."""
    pairs = [Pair(str(r["text"]).strip(), str(r["target"]).strip(), str(r.get("group") or "")) for r in rows
             if r.get("text") and r.get("target")]
    fixed = {str(r.get("group") or "") for r in rows if r.get("split") == "train"}  # groups the source keeps in training
    sizes: dict[str, int] = {}
    for p in pairs:
        if p.group not in fixed:
            sizes[p.group] = sizes.get(p.group, 0) + 1
    if len(sizes) < 3:
        raise DataError(f"{len(sizes)} groups (catalogs, packages) in the pairs; a split by group needs at least 3")
    test, val = held_out_groups(sizes, (test_fraction, val_fraction))
    out: dict[str, list[Pair]] = {"test": [], "val": [], "train": []}
    seen: set[str] = set()
    for name, keep in (("test", test), ("val", val), ("train", None)):
        for p in pairs:
            in_split = p.group in keep if keep is not None else p.group not in test | val
            if in_split and p.source not in seen:
                out[name].append(p)
                seen.add(p.source)
    return out


def encode_pairs(tok: Tokenizer, pairs: list[Pair], seq_len: int, long_pairs: str, separator: str = SEP) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows (n, seq_len + 1) `source <|sep|> target <|endoftext|>` sorted by length, the <|sep|> index and the length of
    each, and how many pairs did not fit (dropped, or with a target too long to leave room for any source)."""
    sep, eot = tok.token_to_id(separator), tok.token_to_id(EOT)
    sources = tok.encode_batch([p.source for p in pairs])
    targets = tok.encode_batch([p.target for p in pairs])
    rows, dropped = [], 0
    for s, t in zip(sources, targets):
        src, tgt = s.ids, t.ids
        room = seq_len + 1 - len(tgt) - 2  # tokens left for the source in a row
        if long_pairs == "truncate" and len(src) > room >= 8:
            src = src[:room]  # the body's head: the signature and the first paragraphs
        if not src or len(src) > room:
            dropped += 1
            continue
        rows.append(src + [sep] + tgt + [eot])
    rows.sort(key=len)
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    x = np.zeros((len(rows), seq_len + 1), dtype=dtype)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    src_len = np.array([r.index(sep) for r in rows], dtype=np.int32)
    return x, src_len, np.array([len(r) for r in rows], dtype=np.int32), dropped


def fits_test(tok: Tokenizer, pairs: list[Pair], seq_len: int, long_pairs: str) -> list[Pair]:
    """Test pairs a model of this context can answer: with "drop", a source of at most half the context (the other half
    is for the output); with "truncate" every pair (its source is cut at decoding)."""
    if long_pairs == "truncate":
        return pairs
    lengths = [len(e.ids) for e in tok.encode_batch([p.source for p in pairs])]
    return [p for p, n in zip(pairs, lengths) if 0 < n <= seq_len // 2]


def padded_positions(lengths: np.ndarray, bucket_rows: int) -> int:
    """Mean positions of a training batch: each bucket of similar rows is padded to its longest (minus the shifted token)."""
    if len(lengths) == 0:
        return 1
    maxima = [int(lengths[i : i + bucket_rows].max()) - 1 for i in range(0, len(lengths), bucket_rows)]
    return max(1, int(np.ceil(np.mean(maxima))))


def _jsonl(pairs: list[Pair]) -> bytes:
    return "".join(json.dumps({"source": p.source, "reference": p.target, "group": p.group}, ensure_ascii=False) + "\n"
                   for p in pairs).encode()


def pair_source(d: Seq2SeqDataConfig, log: Callable[[str], None] = print) -> DataSource:
    return open_source(d.source, PAIRS, d, log=log)


def _build(d: Seq2SeqDataConfig, seq_len: int, source: DataSource, log: Callable[[str], None]) -> Callable[[], Built]:
    def build() -> Built:
        stats = SourceStats()
        splits = split_pairs(list(source.rows({"text": "text", "target": "target"}, stats)), d.test_fraction, d.val_fraction)
        train = [splits["train"][i] for i in even_subset(len(splits["train"]), d.max_rows)]
        if not train or not splits["val"] or not splits["test"]:
            raise DataError(f"data.source {d.source!r}: {len(train)} train, {len(splits['val'])} val, {len(splits['test'])} "
                            f"test pairs; every split needs at least one")
        tok = pair_tokenizer(d, train, log)
        arrays, meta = {}, {"classes": [], "vocab_size": tok.get_vocab_size(), "sep_id": tok.token_to_id(d.separator), "eot_id": 0}
        for name in ("train", "val"):
            x, src_len, length, dropped = encode_pairs(tok, train if name == "train" else splits["val"], seq_len, d.long_pairs,
                                                       d.separator)
            arrays.update({f"{name}_x": x, f"{name}_src": src_len, f"{name}_len": length})
            meta[f"{name}_dropped"] = dropped
        order = np.random.default_rng(_TEST_ORDER_SEED).permutation(len(splits["test"]))
        test = fits_test(tok, [splits["test"][i] for i in order], seq_len, d.long_pairs)
        target_tokens = [int(n - s - 2) for n, s in zip(arrays["train_len"], arrays["train_src"])]
        meta.update(max_target_tokens=max(target_tokens), positions=padded_positions(arrays["train_len"], d.bucket_rows),
                    pairs={"train": len(arrays["train_x"]), "val": len(arrays["val_x"]), "test": len(test)},
                    test_pairs_before_length_filter=len(splits["test"]),
                    groups={k: sorted({p.group for p in v}) for k, v in splits.items()})
        tokenizer = tok.to_str().encode()
        meta["tokenizer_sha256"] = hashlib.sha256(tokenizer).hexdigest()
        log(f"prepare: {meta['pairs']['train']:,} train / {meta['pairs']['val']:,} val / {meta['pairs']['test']:,} test pairs "
            f"({len(meta['groups']['test'])} held-out groups; {meta['train_dropped']:,} training pairs longer than "
            f"{seq_len + 1} tokens dropped) -> {d.dir}")
        return Built(arrays, meta, {TOKENIZER: tokenizer, TRAIN_PAIRS: _jsonl(train), TEST_PAIRS: _jsonl(test)})

    return build


def pair_tokenizer(d: Seq2SeqDataConfig, train: list[Pair], log: Callable[[str], None]) -> Tokenizer:
    """data.tokenizer (a pretrained model's, which must hold data.separator), else a BPE trained on both sides of the pairs."""
    if d.tokenizer:
        tok = load_existing_tokenizer(d.tokenizer)
        if tok.token_to_id(d.separator) is None:
            raise ConfigError(f"data.separator {d.separator!r} is not a token of data.tokenizer {d.tokenizer}; name one of its "
                              f"special tokens (e.g. <|im_start|> for SmolLM2)")
        log(f"prepare: encoding with {d.tokenizer} ({tok.get_vocab_size():,} tokens), {d.separator} between source and target")
    else:
        log(f"prepare: training a {d.vocab_size}-token BPE on {len(train):,} training pairs (both sides)")
        tok = train_tokenizer(iter([p.source for p in train] + [p.target for p in train]), d.vocab_size - 1)
        tok.add_special_tokens([d.separator])
    if tok.token_to_id(EOT) != 0:
        raise DataError(f"the tokenizer puts {EOT} at id {tok.token_to_id(EOT)}, not the padding id 0")
    return tok


def prepare_pairs(d: Seq2SeqDataConfig, *, seq_len: int, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) d's pairs as token rows of at most seq_len + 1 tokens (the model's max_seq_len)."""
    source = pair_source(d, log)
    settings = {"kind": "seq2seq", "version": _VERSION, "source": d.source, "fingerprint": source.fingerprint(),
                **{k: getattr(d, k) for k in ("lang", "catalogs", "packages", "vocab_size", "test_fraction", "val_fraction",
                                              "long_pairs", "bucket_rows", "max_rows")}, "seq_len": seq_len}
    if d.separator != SEP:  # only then: caches prepared before the key existed stay valid
        settings["separator"] = d.separator
    if d.tokenizer:  # a given tokenizer is identified by its content, not its path
        settings["tokenizer_sha256"] = sha256_file(existing_tokenizer_path(d.tokenizer))
    prepared = cached_arrays(d.dir, settings, _build(d, seq_len, source, log), force=force, log=lambda _m: None)
    path = Path(d.dir) / TOKENIZER
    if not path.is_file() or sha256_file(path) != prepared.meta.get("tokenizer_sha256"):
        raise DataError(f"{path}: missing or does not match manifest.json's tokenizer hash; rebuild with `largo prepare <config> --force`")
    return prepared


def read_pairs(data_dir: str | Path, name: str) -> list[dict[str, str]]:
    """The pairs of train.jsonl or test.jsonl in a prepared folder, in their stored order."""
    path = Path(data_dir) / name
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); run `largo prepare <config> --force`") from None


def pair_batch(x: np.ndarray, src_len: np.ndarray, length: np.ndarray) -> Batch:
    """Rows -> (inputs, targets) cut to the longest row: targets are the tokens after <|sep|>, the rest IGNORE."""
    t = int(length.max())
    tokens = torch.from_numpy(np.asarray(x[:, :t], dtype=np.int64))  # (b, t)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()  # (b, t - 1)
    pos = torch.arange(t - 1)
    keep = (pos[None] >= torch.from_numpy(np.asarray(src_len, dtype=np.int64))[:, None]) & (
        pos[None] < torch.from_numpy(np.asarray(length, dtype=np.int64))[:, None] - 1)
    targets[~keep] = IGNORE
    return inputs, targets


class PairData:
    """Training and validation rows as a `Dataset`.

    Rows are stored sorted by length. Sample s of epoch e is a pure function of (seed, e, s): the rows are cut into
    buckets of data.bucket_rows neighbours, the buckets shuffled and each shuffled inside, so a micro-batch holds rows
    of similar length and is padded only to its longest, and a resumed run sees the rows an uninterrupted one sees.
    """

    def __init__(self, prepared: Prepared, *, seed: int, bucket_rows: int):
        a = prepared.arrays
        self.train = (a["train_x"], a["train_src"], a["train_len"])
        self.val = (a["val_x"], a["val_src"], a["val_len"])
        if len(self.train[0]) == 0 or len(self.val[0]) == 0:
            raise DataError(f"{len(self.train[0])} training and {len(self.val[0])} validation pairs; both splits need at least one")
        self.seed, self.bucket_rows = seed, bucket_rows
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            n, rng = len(self.train[0]), np.random.default_rng([self.seed, epoch])
            starts = np.arange(0, n, self.bucket_rows)[rng.permutation(-(-n // self.bucket_rows))]
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = np.concatenate([s + rng.permutation(min(self.bucket_rows, n - s)) for s in starts])
        return self._perms[epoch]

    def train_rows(self, samples: range) -> Batch:
        index = np.arange(samples.start, samples.stop)
        epochs, offsets = np.divmod(index, len(self.train[0]))
        rows = np.concatenate([self._perm(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
        return pair_batch(*(a[rows] for a in self.train))

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        """Validation rows in stored order (by length); when capped, spread evenly over the split."""
        n = len(self.val[0])
        total = min(n, max_batches * micro_batch) if max_batches else n
        rows = even_subset(n, total)
        for i in range(0, total, micro_batch):
            yield pair_batch(*(a[rows[i : i + micro_batch]] for a in self.val))

