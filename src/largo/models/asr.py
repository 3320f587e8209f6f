"""Speech recognition (model.arch = "asr"): the log-mel front end and conv stem of audio.py, the shared trunk
(bidirectional, padding masked), and a CTC head over characters; greedy decoding or a prefix beam search with a character
n-gram (models/ctc_beam.py); WER and CER from jiwer.

Trained on synthesised sentences only (data/speech.py, sources/speech_sentences.py), scored on held-out synthetic voices
and on real recordings of a human speaker (sources/asterisk_prompts.py), with the normalisation of data/transcripts.py.
Recordings longer than data.window_seconds are cut at their quietest 10 ms frames into windows, so a long file
(an hour) is recognised window by window.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from importlib.metadata import version as package_version
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from largo.data.arrays import Prepared
from largo.data.audio_io import read_audio, resample
from largo.data.speech import SpeechAugment, SpeechData, SpeechDataConfig, augment_draws, count, prepare_speech, utterance, wave_of
from largo.data.transcripts import BLANK, VOCAB, decode, normalise
from largo.errors import ConfigError, DataError
from largo.models.asr_adapt import adapt, adaptable, restored
from largo.models.audio import STFT_BYTES_PER_BIN, AudioStem
from largo.models.config import ModelConfig
from largo.models.ctc_beam import BeamDecoder, CharNgram
from largo.models.loss import IGNORE, Scored
from largo.models.results import GenerateRequest, TaskResults
from largo.models.spec import ArchSpec, DataShape, MemoryTerms, Task, register, resolved_field
from largo.models.trunk import Trunk
from largo.optional import require
from largo.precision import Layout, autocast
from largo.rundir import RunDir

RESULTS_FILE = "speech_results.json"  # a finished run's figures, read as a baseline by another run (data.baseline_run)
PROMPTS_CSV = "asr_prompts.csv"  # per test prompt: name, reference, hypothesis, cer, wer
SPECTROGRAMS = "spectrograms.png"  # the model's log-mel input for a few human test prompts, reference and hypothesis above
LM_TEXTS = "lm_transcripts.txt"  # the training transcripts the beam's n-gram counts (written by after_training, for transcribe)
FEATURE_NORMS = ("peak", "band_mean")
RESAMPLE_CHUNK_S = 60.0  # long recordings are resampled a minute at a time (memory stays flat for an hour-long file)


@dataclass
class ASRConfig(ModelConfig):
    """Waveforms at sample_rate -> log-mel frames (25 ms windows, 10 ms hop) -> 20 ms tokens -> characters + blank."""

    decoding_keys = ("beam", "lm_order", "lm_weight", "char_bonus", "adapt_steps", "adapt_lr")
    arch: str = "asr"
    sample_rate: int = 8000  # waveform rate (Hz); telephone band, as the real test speaker is recorded
    n_mels: int = 40  # mel bands of the log-mel frontend
    f_max: float = 0.0  # top edge of the mel filterbank in Hz; 0 = sample_rate / 2
    vocab_size: int = 0  # CTC outputs (characters + blank); 0 = from the data
    beam: int = 1  # CTC prefix beam width of eval and transcribe (1 = greedy)
    lm_order: int = 6  # beam search: a character n-gram of this order, counted on the training transcripts (0 = none)
    lm_weight: float = 0.8  # beam search: weight of the n-gram's log-probability (0.8 and 1.5: chosen on held-out voices)
    char_bonus: float = 1.5  # beam search: added per character (the n-gram alone favours short outputs)
    # "peak": log-mel scaled per clip from its loudest cell; "band_mean": then each band's mean over the clip removed
    # (cepstral mean normalisation: a fixed microphone or line colouring is a constant per band in the log domain)
    feature_norm: str = "peak"
    # keep the first `cepstra` DCT coefficients of each log-mel frame and transform back (liftering, as MFCCs keep 13):
    # the spectral envelope without the comb of the voice's harmonics, which differ between speakers; 0 = all kept
    cepstra: int = 0
    # test-time adaptation (models/asr_adapt.py): before decoding a recording, this many AdamW steps at adapt_lr lower
    # the entropy of the model's outputs on it (stem and norm gains only), undone before the next; 0 = none
    adapt_steps: int = 0
    adapt_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam < 1 or self.lm_order < 0 or not self.lm_weight >= 0 or not math.isfinite(self.char_bonus):
            raise ConfigError(f"model.beam ({self.beam}) must be >= 1, model.lm_order ({self.lm_order}) >= 0, "
                              f"model.lm_weight ({self.lm_weight}) >= 0 and model.char_bonus ({self.char_bonus}) finite")
        if self.n_mels < 1 or self.sample_rate < 1000 or self.vocab_size < 0:
            raise ConfigError(f"model.n_mels ({self.n_mels}) must be >= 1, model.sample_rate ({self.sample_rate}) >= 1000 Hz "
                              f"and model.vocab_size ({self.vocab_size}) >= 0")
        if self.adapt_steps < 0 or not self.adapt_lr > 0:
            raise ConfigError(f"model.adapt_steps ({self.adapt_steps}) must be >= 0 and model.adapt_lr ({self.adapt_lr}) > 0")
        if not 0 <= self.cepstra <= self.n_mels:
            raise ConfigError(f"model.cepstra ({self.cepstra}) must be in [0, n_mels = {self.n_mels}] (0 = no liftering)")
        if self.feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"model.feature_norm ({self.feature_norm!r}) must be one of {', '.join(FEATURE_NORMS)}")
        if not 0 <= self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"model.f_max ({self.f_max}) must be in [0, sample_rate / 2 = {self.sample_rate / 2}]")

    win_length = property(lambda self: self.sample_rate // 40)  # 25 ms
    hop_length = property(lambda self: self.sample_rate // 100)  # 10 ms
    n_fft = property(lambda self: 2 ** math.ceil(math.log2(self.sample_rate // 40)))

    def tokens(self, samples: torch.Tensor | int) -> torch.Tensor | int:
        """Trunk positions of a clip: centred STFT frames, halved by the stem's stride-2 conv."""
        frames = samples // self.hop_length + 1
        return (frames + 1) // 2


class ASRModel(nn.Module):
    """{"wave": (b, n), "lengths": (b,)} -> (CTC logits (b, t, vocab), token lengths (b,))."""

    def __init__(self, cfg: ASRConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("ASRConfig.vocab_size must be resolved (>= 2) before building")
        self.cfg = cfg
        self.stem = AudioStem(cfg)  # type: ignore[arg-type]  (reads sample_rate, n_mels, f_max, dim and the STFT sizes)
        self.trunk = Trunk(cfg, causal=False, rotary=True)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem_states(inputs["wave"], inputs["lengths"])  # (b, t, dim)
        lengths = self.cfg.tokens(inputs["lengths"]).clamp_max(x.shape[1])
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (b, t) real positions
        return self.head(self.trunk(x, mask=keep[:, None, None, :])), lengths

    def stem_states(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The audio stem with the frames past each clip's end zeroed before each convolution, as its own zero padding:
        an utterance's outputs do not depend on how much padding its batch adds."""
        feats, inside = self.features(wave, lengths)
        x = F.gelu(self.stem.conv1(feats * inside)) * inside
        return F.gelu(self.stem.conv2(x)).transpose(1, 2)

    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel frames (b, n_mels, frames) normalised as cfg.feature_norm says, and the mask (b, 1, frames) of each
        clip's own frames."""
        feats = self.stem.features(wave)
        inside = (torch.arange(feats.shape[-1], device=wave.device)[None, :] < (lengths // self.cfg.hop_length + 1)[:, None])[:, None, :]
        if self.cfg.feature_norm == "band_mean":  # each band's mean over the clip's own frames (not its padding)
            feats = feats - (feats * inside).sum(-1, keepdim=True) / inside.sum(-1, keepdim=True).clamp_min(1)
        if 0 < self.cfg.cepstra < self.cfg.n_mels:
            feats = torch.einsum("mn,bnt->bmt", lifter(self.cfg.n_mels, self.cfg.cepstra, feats.device), feats)
        return feats, inside

    @torch.no_grad()
    def init_weights(self) -> None:
        """Stem and trunk as theirs; the head small, so the first outputs are near uniform over the characters and blank."""
        self.stem.init_weights()
        self.trunk.init_weights()
        nn.init.normal_(self.head.weight, std=self.cfg.init_std)
        nn.init.zeros_(self.head.bias)


def lifter(n_mels: int, keep: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_mels, n_mels) projection of a log-mel frame onto its first `keep` orthonormal DCT-II coefficients."""
    n = torch.arange(n_mels, dtype=torch.float64, device=device)
    dct = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * n[None, :]) * math.sqrt(2.0 / n_mels)  # (band, coefficient)
    dct[:, 0] /= math.sqrt(2.0)
    return (dct[:, :keep] @ dct[:, :keep].T).float()


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CTC loss summed over the batch (the loop divides by the characters of the global batch); fp32."""
    keep = targets != IGNORE
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (t, b, vocab)
    return F.ctc_loss(log_probs, targets[keep], lengths, keep.sum(1), blank=BLANK, reduction="sum", zero_infinity=True)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best label per position, repeats merged, blanks dropped: one label list per utterance."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        path = torch.unique_consecutive(row[:n])
        out.append([int(k) for k in path if k != BLANK])
    return out


def windows(wave: np.ndarray, rate: int, max_seconds: float) -> list[np.ndarray]:
    """A recording cut into pieces of at most max_seconds, each cut at the quietest 10 ms frame of its second half."""
    size, hop, out, start = int(max_seconds * rate), rate // 100, [], 0
    while len(wave) - start > size:
        piece = wave[start : start + size]
        frames = len(piece) // hop
        energy = (piece[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1)
        half = energy[frames // 2 :]
        quiet = int(np.argmin(half))
        end = quiet
        while end + 1 < len(half) and half[end + 1] <= half[quiet] * 1.01 + 1e-12:
            end += 1  # the quietest run of frames: cut in its middle, not at its first frame
        cut = (frames // 2 + (quiet + end + 1) // 2) * hop
        out.append(piece[:cut])
        start += cut
    out.append(wave[start:])
    return [w for w in out if len(w) > hop]


def at_rate(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resampled a minute at a time (memory stays flat for long files), trimmed, peak-normalised like the training data."""
    step = int(RESAMPLE_CHUNK_S * rate)
    pieces = [resample(wave[i : i + step], rate, target) for i in range(0, len(wave), step)]
    return utterance(np.concatenate(pieces) if pieces else wave, target, target)


def _padded(waves: list[np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Waves as one zero-padded batch {"wave", "lengths"} on device."""
    x = torch.zeros(len(waves), max(len(w) for w in waves))
    for j, w in enumerate(waves):
        x[j, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return {"wave": x.to(device), "lengths": torch.tensor([len(w) for w in waves], device=device)}


@torch.no_grad()
def _log_probs(model: ASRModel, batch: dict[str, torch.Tensor], device: torch.device, precision: str) -> list[np.ndarray]:
    """Each row's (tokens, labels) log-probabilities in fp32, cut to its own length."""
    with autocast(device, precision):
        logits, lengths = model(batch)
    log_probs = F.log_softmax(logits.float(), dim=-1).cpu().numpy()
    return [log_probs[j, :n] for j, n in enumerate(lengths.tolist())]


def window_log_probs(model: ASRModel, waves: list[np.ndarray], *, window_s: float, device: torch.device,
                     precision: str = "fp32", batch: int = 16, adapt_steps: int = 0, adapt_lr: float = 1e-3) -> list[list[np.ndarray]]:
    """Per recording (already at the model's rate), per window, the (tokens, labels) log-probabilities in fp32: windows
    batched by length, or, with adapt_steps, one recording at a time after adapting to it (models/asr_adapt.py)."""
    cfg = model.cfg
    pieces = [(i, w) for i, wave in enumerate(waves) for w in windows(wave, cfg.sample_rate, window_s)]
    out: list[np.ndarray | None] = [None] * len(pieces)
    was_training = model.training
    model.eval()
    if adapt_steps:
        params = adaptable(model)
        for i in range(len(waves)):
            mine = [k for k, (owner, _) in enumerate(pieces) if owner == i]
            inputs = _padded([pieces[k][1] for k in mine], device)
            with restored(params):
                adapt(lambda: model(inputs), params, steps=adapt_steps, lr=adapt_lr, device=device, precision=precision)
                for k, lp in zip(mine, _log_probs(model, inputs, device, precision)):
                    out[k] = lp
    else:
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            for k, lp in zip(chosen, _log_probs(model, _padded([pieces[k][1] for k in chosen], device), device, precision)):
                out[k] = lp
    model.train(was_training)
    per_wave: list[list[np.ndarray]] = [[] for _ in waves]
    for (i, _), lp in zip(pieces, out):
        per_wave[i].append(lp)
    return per_wave


def texts_of(per_wave: list[list[np.ndarray]], decoder: BeamDecoder | None = None) -> list[str]:
    """One line per recording: its windows decoded (greedily, or by the beam decoder) and joined."""
    def one(lp: np.ndarray) -> str:
        if decoder is not None:
            return decoder(lp)
        return decode(greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(lp)]))[0])
    return [" ".join(" ".join(one(lp) for lp in windows_).split()) for windows_ in per_wave]


def transcribe(model: ASRModel, waves: list[np.ndarray], *, window_s: float, device: torch.device, precision: str = "fp32",
               decoder: BeamDecoder | None = None, adapt_steps: int = 0, adapt_lr: float = 1e-3) -> list[str]:
    """Texts of recordings already at the model's rate: recognised window by window (after adapting to each, with
    adapt_steps), greedily or by the beam decoder."""
    return texts_of(window_log_probs(model, waves, window_s=window_s, device=device, precision=precision,
                                     adapt_steps=adapt_steps, adapt_lr=adapt_lr), decoder)


def training_transcripts(prepared: Prepared) -> list[str]:
    """The training split's transcripts (what the beam's n-gram counts: never a test prompt)."""
    labels, at = prepared.arrays["train_labels"], prepared.arrays["train_labels_at"]
    return [decode(np.asarray(labels[at[i] : at[i + 1]]).tolist()) for i in range(len(at) - 1)]


def beam_decoder(cfg: ASRConfig, lm_texts: list[str] | None) -> BeamDecoder | None:
    """model.beam's decoder (None: greedy), with the n-gram of lm_texts when model.lm_order > 0 and texts are given."""
    if cfg.beam <= 1:
        return None
    lm = CharNgram(lm_texts, cfg.lm_order) if cfg.lm_order and lm_texts else None
    return BeamDecoder(lm, width=cfg.beam, lm_weight=cfg.lm_weight, char_bonus=cfg.char_bonus)


def decoding(cfg: ASRConfig) -> str:
    """How transcripts are decoded, in words."""
    adapted = f" after {cfg.adapt_steps} entropy steps on each recording (lr {cfg.adapt_lr:g})" if cfg.adapt_steps else ""
    if cfg.beam <= 1:
        return "greedy CTC" + adapted
    lm = f", character {cfg.lm_order}-gram of the training transcripts at weight {cfg.lm_weight:g}" if cfg.lm_order else ""
    return f"CTC prefix beam search, width {cfg.beam}{lm}, {cfg.char_bonus:g} per character" + adapted


def jiwer_scores(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus CER and WER in % (jiwer), over normalised references and hypotheses."""
    jiwer = require("jiwer", "speech recognition metrics (WER, CER)")
    return {"cer": 100.0 * jiwer.cer(refs, hyps), "wer": 100.0 * jiwer.wer(refs, hyps)}


@dataclass
class SpeechSet:
    """What the spec's task keeps for results(): the prepared arrays and the [data] section."""

    prepared: Prepared
    data: SpeechDataConfig


class ASRSpec(ArchSpec):
    """Sentence-level speech recognition with CTC over characters."""

    name = "asr"
    model_config = ASRConfig
    data_config = SpeechDataConfig
    about = "speech recognition: log-mel frontend, conv stem, bidirectional trunk, CTC over characters"
    export_formats = ("safetensors",)

    def build(self, cfg: ASRConfig) -> nn.Module:
        return ASRModel(cfg)

    def prepare(self, data: SpeechDataConfig, model: ASRConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
        return prepare_speech(data, sample_rate=model.sample_rate, force=force, log=log)

    def resolve(self, model: ASRConfig, prepared: Prepared) -> ASRConfig:
        tokens = self.positions(model, prepared)
        if tokens > model.max_seq_len:
            raise ConfigError(f"model.max_seq_len ({model.max_seq_len}) is below the {tokens} tokens of the longest training "
                              f"utterance; raise it or lower data.max_seconds")
        return dataclasses.replace(model, vocab_size=resolved_field("vocab_size", model.vocab_size, len(VOCAB) + 1))

    def positions(self, cfg: ASRConfig, prepared: Prepared) -> int:
        """Tokens of the longest training utterance (a micro-batch pads to its longest)."""
        return int(cfg.tokens(int(np.diff(prepared.arrays["train_wave_at"]).max())))

    def dataset(self, data: SpeechDataConfig, model: ASRConfig, prepared: Prepared, *, seed: int) -> SpeechData:
        return SpeechData(prepared, seed=seed, draws=augment_draws(data))

    def task(self, data: SpeechDataConfig, model: ASRConfig, prepared: Prepared, *, seed: int) -> Task:
        task = super().task(data, model, prepared, seed=seed)
        if data.window_seconds * model.sample_rate // model.hop_length // 2 + 1 > model.max_seq_len:
            raise ConfigError(f"data.window_seconds ({data.window_seconds:g}) makes more tokens than model.max_seq_len "
                              f"({model.max_seq_len}) holds; lower it or raise model.max_seq_len")
        task.augment = SpeechAugment(data, model.sample_rate) if data.augmented else (lambda x: x)
        task.prepared = SpeechSet(prepared, data)
        return task

    def data_shape(self, data: SpeechDataConfig, model: ASRConfig) -> DataShape:
        if not (Path(data.dir) / "manifest.json").is_file():
            raise ConfigError(f"model.arch = 'asr' takes its input lengths from the data; run `largo prepare` on this config "
                              f"first (data.dir {data.dir} is not prepared)")
        prepared = self.prepare(data, model, log=lambda _m: None)
        resolved = self.resolve(model, prepared)
        positions = self.positions(resolved, prepared)
        return DataShape(resolved, positions, positions * count(prepared, "train"))

    # ---- loss and scores
    def loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return ctc_loss(*model(inputs), targets)

    def score(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> Scored:
        """CTC loss; "correct" = characters minus the greedy transcript's edit operations (accuracy = 1 - CER)."""
        logits, lengths = model(inputs)
        keep = targets != IGNORE
        refs = [decode(t[k].tolist()) for t, k in zip(targets, keep)]
        hyps = [decode(h) for h in greedy_decode(logits, lengths)]
        jiwer = require("jiwer", "speech recognition metrics (WER, CER)")
        out = jiwer.process_characters(refs, hyps)
        edits = out.substitutions + out.deletions + out.insertions
        chars = keep.sum()
        return Scored(ctc_loss(logits, lengths, targets), (chars - edits).clamp_min(0), chars)

    # ---- results: WER/CER on held-out voices and on the human recordings; per-prompt CSV; transcription
    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults:
        spoken: SpeechSet = task.prepared
        p, d = spoken.prepared, spoken.data
        metrics: dict[str, float] = {}
        predictions: list[dict[str, Any]] = []
        cfg: ASRConfig = task.model  # with any decoding settings `largo eval` was given
        decoder = beam_decoder(cfg, training_transcripts(p))
        recognise = lambda split, n: window_log_probs(model, [wave_of(p, split, i) for i in range(n)], window_s=d.window_seconds,  # noqa: E731
                                                      device=device, precision=precision, adapt_steps=cfg.adapt_steps, adapt_lr=cfg.adapt_lr)
        if "test_wave_at" in p.arrays:
            n = count(p, "test") if limit is None else min(limit, count(p, "test"))
            names, refs = p.meta["test_names"][:n], [normalise(t) for t in p.meta["test_texts"][:n]]
            log_probs = recognise("test", n)
            hyps = texts_of(log_probs, decoder)
            metrics.update(jiwer_scores(refs, hyps))
            if decoder is not None:
                metrics.update({f"{k}_greedy": v for k, v in jiwer_scores(refs, texts_of(log_probs)).items()})
            jiwer = require("jiwer", "speech recognition metrics (WER, CER)")
            predictions = [{"input": name, "reference": r, "output": h, "cer": 100.0 * jiwer.cer(r, h), "wer": 100.0 * jiwer.wer(r, h)}
                           for name, r, h in zip(names, refs, hyps)]
            metrics["test_prompts"] = float(n)
        n_val = count(p, "val") if limit is None else min(limit, count(p, "val"))
        val_refs = [normalise(t) for t in p.meta["val_texts"][:n_val]]
        log_probs = recognise("val", n_val)
        metrics.update({f"val_{k}": v for k, v in jiwer_scores(val_refs, texts_of(log_probs, decoder)).items()})
        if decoder is not None:
            metrics.update({f"val_{k}_greedy": v for k, v in jiwer_scores(val_refs, texts_of(log_probs)).items()})
        baselines = self.baselines(d, log)
        lines = [f"normalisation: data/transcripts.py (lowercase, [bracketed] dropped, # * & read out, numbers spelled, "
                 f"punctuation but inner apostrophes dropped); jiwer {package_version('jiwer')}",
                 f"decoding: {decoding(cfg)}",
                 f"held-out synthetic voices: {', '.join(p.meta.get('val_voices', []))} ({n_val} utterances)"]
        return TaskResults(metrics, baselines, predictions, lines)

    def baselines(self, d: SpeechDataConfig, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
        """data.baseline_run's figures on the same test set (written by that run's after_training), as no_augmentation."""
        if not d.baseline_run:
            return {}
        path = Path(d.baseline_run) / RESULTS_FILE
        try:
            figures = json.loads(path.read_text())["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            log(f"baseline: {path} is not there yet (train the baseline run first); no_augmentation left out")
            return {}
        log(f"baseline no_augmentation: {path}, that run's own evaluation on its whole test set (not limited by --limit)")
        return {"no_augmentation": {k: float(v) for k, v in figures.items() if k in ("cer", "wer", "val_cer", "val_wer")}}

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        """speech_results.json (metrics, baselines) and asr_prompts.csv (one row per test prompt) in the run folder."""
        (run_dir / LM_TEXTS).write_text("".join(t + "\n" for t in training_transcripts(task.prepared.prepared)))
        results = self.results(model, task, device=device, precision=precision, log=log)
        (run_dir / RESULTS_FILE).write_text(json.dumps(results.as_json(), indent=1, sort_keys=True) + "\n")
        if results.predictions:
            write_prompts_csv(run_dir / PROMPTS_CSV, results.predictions)
        if results.predictions and draw_spectrograms(model, task.prepared.prepared, results.predictions, run_dir / SPECTROGRAMS):
            log(f"speech: log-mel spectrograms of 4 test prompts with their transcripts -> {run_dir / SPECTROGRAMS}")
        log("speech: " + " | ".join(f"{k} {v:.2f}" for k, v in results.metrics.items()))
        for base, figures in results.baselines.items():
            log(f"  baseline {base}: " + " | ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        return {"speech": results.as_json()}

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        """`largo generate RUN --audio clip.wav` (and `largo transcribe`): the clip's text, one line."""
        if not request.audio:
            raise ConfigError(f"{ckpt.path}: a speech recogniser transcribes audio; give --audio clip.wav")
        path = Path(request.audio)
        if not path.is_file():
            raise DataError(f"{path}: no such audio file")
        wave, rate = read_audio(path)
        if len(wave) == 0:
            raise DataError(f"{path}: holds no samples; give a recording of speech")
        device = next(model.parameters()).device
        clip = at_rate(wave, rate, model.cfg.sample_rate)
        if len(clip) == 0:
            return [""]  # silence: nothing said
        run = RunDir.of_checkpoint(ckpt.path)
        texts = run.path / LM_TEXTS if run else None
        decoder = beam_decoder(cfg.model, texts.read_text().splitlines() if texts and texts.is_file() else None)
        return transcribe(model, [clip], window_s=cfg.data.window_seconds, device=device, decoder=decoder,
                          adapt_steps=cfg.model.adapt_steps, adapt_lr=cfg.model.adapt_lr)

    # ---- planner terms
    def extra_matmul_params(self, cfg: ASRConfig, seq_len: int) -> int:
        return 2 * cfg.n_mels * 3 * cfg.dim + 3 * cfg.dim * cfg.dim + cfg.dim * cfg.vocab_size  # conv1 at twice the token rate

    def memory_terms(self, cfg: ASRConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        c, d, frames = layout.compute_bytes, cfg.dim, 2 * seq_len
        freqs = cfg.n_fft // 2 + 1
        wave = 4 * frames * cfg.hop_length
        saved = micro_batch * c * (cfg.n_mels * frames + 2 * d * frames + d * seq_len)  # log-mel, conv1 in/out, conv2 out
        return MemoryTerms(
            buffers=4 * cfg.win_length + 4 * freqs * cfg.n_mels + 2 * seq_len * cfg.head_dim * 4,
            inputs=micro_batch * (wave + 8 + 8 * seq_len), stem_saved=saved,
            head_saved=micro_batch * seq_len * (4 + 4 + c) * d,  # final norm in and out, head input
            output_rows=micro_batch * seq_len, outputs=cfg.vocab_size, head_params=(d + 1) * cfg.vocab_size,
            residual_bytes=2 if layout.autocast else 4, rotary=True, padding_mask=True, causal=False,
            extra_phases={"frontend": (micro_batch * wave, STFT_BYTES_PER_BIN * micro_batch * freqs * frames)},
        )


@torch.no_grad()
def draw_spectrograms(model: ASRModel, prepared: Prepared, predictions: list[dict[str, Any]], path: Path, count: int = 4) -> bool:
    """The model's log-mel frames of `count` test prompts (spread over the set) with reference and hypothesis; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    picks = np.linspace(0, len(predictions) - 1, min(count, len(predictions))).round().astype(int)
    fig, axes = plt.subplots(len(picks), 1, figsize=(11, 2.3 * len(picks)), constrained_layout=True, squeeze=False)
    cfg, device = model.cfg, next(model.parameters()).device
    for ax, i in zip(axes[:, 0], picks):
        wave = torch.from_numpy(wave_of(prepared, "test", int(i)))[None].to(device)
        feats = model.stem.features(wave)[0].float().cpu().numpy()
        ax.imshow(feats, origin="lower", aspect="auto", cmap="magma", extent=(0, feats.shape[1] * cfg.hop_length / cfg.sample_rate, 0, cfg.n_mels))
        p = predictions[int(i)]
        ax.set_title(f"{p['input']} (CER {p['cer']:.0f}%)\nref: {p['reference'][:110]}\nhyp: {p['output'][:110]}", fontsize=8, loc="left")
        ax.set_ylabel("mel band")
    axes[-1, 0].set_xlabel("seconds")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_prompts_csv(path: Path, predictions: list[dict[str, Any]]) -> None:
    """name, reference, hypothesis, cer, wer (in %) per prompt."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "reference", "hypothesis", "cer", "wer"])
    for p in predictions:
        writer.writerow([p["input"], p["reference"], p["output"], f"{p['cer']:.2f}", f"{p['wer']:.2f}"])
    path.write_text(buf.getvalue())


register(ASRSpec())
