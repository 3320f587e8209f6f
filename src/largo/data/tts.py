"""Speech synthesis data: one speaker's recordings with transcripts, held out by prompt name, cached as log-mel frames,
character labels and per-character durations (in recogniser tokens of two frames), and the Dataset the loop reads.

Output folder (data.dir), per split s in train, val, test:
  s_mel.npy (float16 (frames, n_mels) end to end), s_mel_at.npy (int64 frame offsets, n + 1), s_wave/s_wave_at (float16
  waveforms, for the real-recording baselines), s_symbols.npy (uint8 labels 1..28), s_symbols_at.npy (offsets),
  s_durations.npy (int32 tokens per symbol, offsets as the symbols'; zeros for test, which is never aligned).
train = the prompts not held out whose recordings are at most data.max_seconds long; test = every held-out prompt;
val = the held-out prompts of at most data.max_seconds (the loop's held-out loss, teacher-forced durations).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from largo.data import Batch
from largo.data.arrays import Built, Prepared
from largo.data.audio_io import read_audio
from largo.data.config import DataConfig, check_non_negative
from largo.data.sources import SPEECH, SourceStats, open_source
from largo.data.speech import utterance
from largo.data.transcripts import encode, normalise
from largo.errors import ConfigError, DataError

IGNORE = -100.0  # a padded mel bin (data.Batch's convention)
# The training order is sorted by length within runs of this many prompts: consecutive micro-batches still mix short and
# long prompts. (Sorting a whole epoch, as recognition's 512 does for 478 prompts, made each epoch end on its longest
# prompts: the loss swung with the epoch and long prompts were learnt late; measured at step 400, see docs/speech.md.)
BUCKET = 64
VERSION = 2  # bump when the preparation below changes what it stores


@dataclass
class TTSDataConfig(DataConfig):
    """One speaker's recordings and transcripts; a share of the prompts, chosen by name, held out for testing."""

    source: str = "asterisk-prompts"  # rows with audio and text (the Asterisk prompts: Allison, 8 kHz)
    dir: str = "data/tts-allison"
    val_fraction: float = 0.1  # share of prompts held out (by a hash of the prompt name: the same prompts everywhere)
    max_seconds: float = 8.0  # training (and val) recordings longer than this are left out; test keeps every held-out one
    max_rows: int = 0  # keep at most this many training prompts; 0 = all (tests)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "max_rows")
        if not 1.0 <= self.max_seconds <= 30.0:
            raise ConfigError(f"data.max_seconds ({self.max_seconds}) must be in [1, 30]")


def held_out(name: str, fraction: float) -> bool:
    """Whether prompt `name` is a test prompt: its CRC-32 decides, so adding prompts never moves another."""
    return zlib.crc32(name.encode()) % 10_000 < fraction * 10_000


@dataclass
class Recording:
    """One prompt as read: name, raw transcript, waveform at the model's rate."""

    name: str
    text: str
    wave: np.ndarray


def read_recordings(d: TTSDataConfig, rate: int, log: Callable[[str], None]) -> list[Recording]:
    """Every row of the source with something spoken, resampled, trimmed and peak-normalised as the recogniser's data."""
    source = open_source(d.source, SPEECH, d, test=True, log=log)  # test=True: the prompts are this task's training set
    out = []
    for k, r in enumerate(source.rows({"audio": "audio", "text": "text"}, SourceStats())):
        name = r.get("id") or f"{d.source} row {k}"
        wave, wave_rate = r["audio"] if isinstance(r["audio"], tuple) else read_audio(r["audio"], name)
        x = utterance(wave, wave_rate, rate)
        if normalise(r["text"] or "") and len(x) > rate // 10:
            out.append(Recording(name, r["text"], x))
    return out


def split_recordings(recs: list[Recording], d: TTSDataConfig, rate: int) -> dict[str, list[Recording]]:
    """train / val / test by prompt name (see the module docstring)."""
    short = lambda r: len(r.wave) <= d.max_seconds * rate  # noqa: E731
    test = [r for r in recs if held_out(r.name, d.val_fraction)]
    train = [r for r in recs if not held_out(r.name, d.val_fraction) and short(r)]
    if d.max_rows and len(train) > d.max_rows:
        train = [train[i] for i in np.linspace(0, len(train) - 1, d.max_rows).round().astype(int)]
    return {"train": train, "val": [r for r in test if short(r)], "test": test}


Aligner = Callable[[list[np.ndarray], list[list[int]]], tuple[list[np.ndarray], dict[str, float]]]
MelOf = Callable[[np.ndarray], np.ndarray]


def build_tts(d: TTSDataConfig, rate: int, mel_of: MelOf, align: Aligner, log: Callable[[str], None]) -> Callable[[], Built]:
    """The preparation: read, split, analyse; durations from `align` (waves, labels) -> (tokens per label, stats)."""

    def build() -> Built:
        splits = split_recordings(read_recordings(d, rate, log), d, rate)
        if not splits["train"] or not splits["val"]:
            raise DataError(f"data.source {d.source!r}: {len(splits['train'])} training and {len(splits['val'])} held-out "
                            f"prompts of at most data.max_seconds ({d.max_seconds:g} s); both need at least one")
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, object] = {"classes": [], "sample_rate": rate}
        for split, recs in splits.items():
            labels = [encode(normalise(r.text)) for r in recs]
            spans, stats = align([r.wave for r in recs], labels) if split != "test" else ([np.zeros(len(x), np.int32) for x in labels], {})
            store(arrays, split, recs, labels, spans, mel_of)
            meta[f"{split}_names"], meta[f"{split}_texts"] = [r.name for r in recs], [r.text for r in recs]
            meta.update({f"{split}_{k}": v for k, v in stats.items()})
        train_mel = arrays["train_mel"].astype(np.float64)
        meta["mel_mean"], meta["mel_std"] = float(train_mel.mean()), float(train_mel.std())  # the model's output scale
        log("prepare: prompts " + ", ".join(f"{s} {len(v)}" for s, v in splits.items()) +
            f" (test = every prompt held out by name; train and val at most {d.max_seconds:g} s)")
        return Built(arrays, meta)

    return build


def store(arrays: dict[str, np.ndarray], split: str, recs: list[Recording], labels: list[list[int]], spans: list[np.ndarray],
          mel_of: MelOf) -> None:
    """A split's mel frames, waves, labels and durations, each end to end with offsets."""
    for key, pieces, dtype in (("mel", [mel_of(r.wave) for r in recs], np.float16), ("wave", [r.wave for r in recs], np.float16),
                               ("symbols", [np.array(x) for x in labels], np.uint8), ("durations", spans, np.int32)):
        at = np.zeros(len(pieces) + 1, dtype=np.int64)
        at[1:] = np.cumsum([len(p) for p in pieces])
        arrays[f"{split}_{key}"] = np.concatenate(pieces).astype(dtype)
        arrays[f"{split}_{key}_at"] = at
    arrays[f"{split}_durations_at"] = arrays[f"{split}_symbols_at"]  # one duration per symbol


def count(prepared: Prepared, split: str) -> int:
    return len(prepared.arrays[f"{split}_symbols_at"]) - 1


def piece(prepared: Prepared, split: str, key: str, i: int) -> np.ndarray:
    """Row i of a split's flat array `key` (mel, wave, symbols, durations)."""
    at = prepared.arrays[f"{split}_{key}_at"]
    return np.asarray(prepared.arrays[f"{split}_{key}"][at[i] : at[i + 1]])


def pad_tts(prepared: Prepared, split: str, rows: list[int]) -> Batch:
    """({"symbols": (b, S) 0-padded, "durations": (b, S) tokens}, mel targets (b, 2 * tokens, n_mels) IGNORE-padded)."""
    syms = [piece(prepared, split, "symbols", r).astype(np.int64) for r in rows]
    durs = [piece(prepared, split, "durations", r).astype(np.int64) for r in rows]
    mels = [piece(prepared, split, "mel", r).astype(np.float32) for r in rows]
    s_len, frames = max(len(s) for s in syms), 2 * max(int(d.sum()) for d in durs)
    symbols, durations = torch.zeros(len(rows), s_len, dtype=torch.long), torch.zeros(len(rows), s_len, dtype=torch.long)
    mel = torch.full((len(rows), frames, mels[0].shape[1]), IGNORE)
    for i, (s, d, m) in enumerate(zip(syms, durs, mels)):
        symbols[i, : len(s)], durations[i, : len(d)] = torch.from_numpy(s), torch.from_numpy(d)
        n = min(len(m), 2 * int(d.sum()))  # two frames per token; a clip's odd last frame has no token of its own
        mel[i, :n] = torch.from_numpy(m[:n])
    return {"symbols": symbols, "durations": durations}, mel


class TTSData:
    """Training prompts as a `Dataset`: sample s is row perm_e[s mod n], perm_e seeded by (seed, epoch) and sorted by
    length within runs of BUCKET (a micro-batch pads little); a pure function of (seed, s), so resumes are exact."""

    def __init__(self, prepared: Prepared, *, seed: int):
        self.prepared, self.seed, self.n = prepared, seed, count(prepared, "train")
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            lengths = np.diff(self.prepared.arrays["train_mel_at"])
            runs = [perm[i : i + BUCKET] for i in range(0, self.n, BUCKET)]
            self._perms = {epoch: np.concatenate([r[np.argsort(lengths[r], kind="stable")] for r in runs])}
        return self._perms[epoch]

    def train_rows(self, samples: range) -> Batch:
        rows = [int(self._perm(s // self.n)[s % self.n]) for s in samples]
        return pad_tts(self.prepared, "train", rows)

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        total = count(self.prepared, "val") if not max_batches else min(count(self.prepared, "val"), max_batches * micro_batch)
        for start in range(0, total, micro_batch):
            yield pad_tts(self.prepared, "val", list(range(start, min(start + micro_batch, total))))
