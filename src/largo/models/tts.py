"""Speech synthesis (model.arch = "tts"): characters -> log-mel frames, non-autoregressive with durations (FastSpeech):
a symbol embedding and the shared trunk as encoder, a duration predictor on log durations, a length regulator that
repeats each symbol's state for its duration, the shared trunk again as decoder over time, and a head that writes two
10 ms mel frames per position (a 20 ms token, the recogniser's). Waveforms by Griffin-Lim (models/vocoder.py).

Durations come from a CTC forced alignment (models/align.py) of each training recording to its transcript by a trained
recogniser (model.recogniser, an "asr" run); model.durations = "uniform" spreads each recording's tokens evenly over its
characters instead. Results (intelligibility by that recogniser, MCD, baselines, files) are in models/tts_eval.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from largo.data.arrays import Prepared, cached_arrays
from largo.data.sources import SPEECH, open_source
from largo.data.transcripts import VOCAB
from largo.data.tts import IGNORE, VERSION, TTSData, TTSDataConfig, build_tts
from largo.errors import ConfigError
from largo.models.align import durations, forced_path, heard_share, uniform_durations
from largo.models.config import ModelConfig
from largo.models.loss import Scored
from largo.models.recogniser import load_recogniser, recogniser_fingerprint, recogniser_log_probs
from largo.models.results import GenerateRequest, TaskResults
from largo.models.spec import ArchSpec, DataShape, MemoryTerms, Task, register, resolved_field
from largo.models.trunk import Trunk
from largo.models.tts_eval import speak, tts_results, write_run_files
from largo.models.vocoder import MelAnalysis
from largo.precision import Layout

CLOSE_NATS = 0.5  # a mel bin "correct" in score(): within 0.5 nat of the recording's (about 2.2 dB of power)


@dataclass
class TTSConfig(ModelConfig):
    """Characters (the recogniser's alphabet) -> durations in 20 ms tokens -> two log-mel frames per token."""

    arch: str = "tts"
    sample_rate: int = 8000  # waveform rate (Hz); the recordings' and the recogniser's
    n_mels: int = 64  # mel bands the model writes (Griffin-Lim inverts them)
    vocab_size: int = 0  # symbols: the characters + padding; 0 = from the data
    recogniser: str = "runs/asr_sentences"  # an "asr" run folder (or checkpoint): durations by alignment, intelligibility
    durations: str = "ctc"  # "ctc": forced alignment by the recogniser; "uniform": tokens spread evenly over characters
    griffin_lim_iters: int = 60  # Griffin-Lim iterations per synthesised clip
    mel_mean: float = 0.0  # the training frames' mean log-mel (nats): the head writes mean + std * its output; 0 = from the data
    mel_std: float = 0.0  # their standard deviation; 0 = from the data (unit-scale outputs: Adam's steps fit the targets' range)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mel_std < 0:
            raise ConfigError(f"model.mel_std ({self.mel_std}) must be >= 0 (0 = from the data)")
        if self.durations not in ("ctc", "uniform"):
            raise ConfigError(f"model.durations ({self.durations!r}) must be 'ctc' or 'uniform'")
        if self.n_mels < 8 or self.sample_rate < 1000 or self.vocab_size < 0 or self.griffin_lim_iters < 1:
            raise ConfigError(f"model.n_mels ({self.n_mels}) must be >= 8, model.sample_rate ({self.sample_rate}) >= 1000, "
                              f"model.vocab_size ({self.vocab_size}) >= 0 and model.griffin_lim_iters ({self.griffin_lim_iters}) >= 1")

    @property
    def analysis(self) -> MelAnalysis:
        return MelAnalysis(self.sample_rate, self.n_mels)


def regulate(states: torch.Tensor, spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The length regulator: states (b, S, d) repeated by spans (b, S) -> (b, T, d) zero-padded, and lengths (b,)."""
    ends = spans.cumsum(1)  # (b, S)
    lengths = ends[:, -1]
    t = torch.arange(max(int(lengths.max()), 1), device=states.device)
    index = torch.searchsorted(ends, t.expand(len(states), -1).contiguous(), right=True).clamp_max(states.shape[1] - 1)
    out = states.gather(1, index[..., None].expand(-1, -1, states.shape[2]))
    return out * (t[None, :] < lengths[:, None])[..., None], lengths


class DurationPredictor(nn.Module):
    """Encoder states (b, S, d) -> log(1 + tokens) per symbol (b, S): two kernel-3 convolutions and a linear layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        m = keep[:, None, :].to(x.dtype)
        h = F.gelu(self.conv1(x.transpose(1, 2) * m)) * m  # padding stays zero: a symbol's prediction ignores its batch
        h = F.gelu(self.conv2(h)) * m
        return self.out(h.transpose(1, 2))[..., 0]


class TTSModel(nn.Module):
    """{"symbols": (b, S), "durations": (b, S)} -> (log-mel (b, 2 T, n_mels), predicted log(1 + durations) (b, S))."""

    def __init__(self, cfg: TTSConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("TTSConfig.vocab_size must be resolved (>= 2) before building")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.encoder = Trunk(cfg, causal=False)
        self.duration = DurationPredictor(cfg.dim)
        self.decoder = Trunk(cfg, causal=False)
        self.head = nn.Linear(cfg.dim, 2 * cfg.n_mels)

    def encode(self, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder states (b, S, d), the symbol mask (b, S) and predicted log durations (b, S)."""
        keep = symbols != 0
        states = self.encoder(self.embed(symbols), mask=keep[:, None, None, :])
        return states, keep, self.duration(states, keep)

    def decode(self, states: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """Encoder states and tokens per symbol -> log-mel frames (b, 2 T, n_mels)."""
        x, lengths = regulate(states, spans)
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        y = self.head(self.decoder(x, mask=keep[:, None, None, :]))  # (b, T, 2 n_mels)
        return y.reshape(len(y), -1, self.cfg.n_mels) * self.cfg.mel_std + self.cfg.mel_mean

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        states, keep, log_durations = self.encode(inputs["symbols"])
        return self.decode(states, inputs["durations"] * keep), log_durations

    @torch.no_grad()
    def infer(self, symbols: list[int]) -> torch.Tensor:
        """One utterance's log-mel (frames, n_mels) with the predicted durations (at least one token per symbol)."""
        device = self.head.weight.device
        states, keep, log_durations = self.encode(torch.tensor([symbols], device=device))
        spans = (log_durations.float().exp() - 1).round().clamp_min(1).long()
        if int(spans.sum()) > self.cfg.max_seq_len:
            raise ValueError(f"{int(spans.sum())} tokens")
        return self.decode(states, spans)[0].float()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Trunks as theirs; embedding, predictor and head normal(init_std), biases zero (the head starts at the mean frame;
        the predictor at about 2.7 tokens per character, log(1 + d) = 1.3)."""
        self.encoder.init_weights()
        self.decoder.init_weights()
        for w in (self.embed.weight, self.head.weight, self.duration.out.weight):
            nn.init.normal_(w, std=self.cfg.init_std)
        for conv in (self.duration.conv1, self.duration.conv2):
            nn.init.normal_(conv.weight, std=(conv.in_channels * 3) ** -0.5)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.duration.out.bias, 1.3)
        nn.init.zeros_(self.head.bias)


def tts_loss(mel: torch.Tensor, log_durations: torch.Tensor, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """L1 over the mel bins, summed; plus the mean squared error of log(1 + durations) weighted by the bins (the loop
    divides by the bins: the sum is mean L1 + mean duration MSE)."""
    keep = targets != IGNORE
    l1 = ((mel.float() - targets) * keep).abs().sum()
    symbols = inputs["symbols"] != 0
    err = (log_durations.float() - torch.log1p(inputs["durations"].float())) * symbols
    return l1 + err.square().sum() / symbols.sum().clamp_min(1) * keep.sum()


# ---------------------------------------------------------------- durations by the recogniser

def make_aligner(cfg: TTSConfig, log: Callable[[str], None]) -> Callable[[list[np.ndarray], list[list[int]]], tuple[list[np.ndarray], dict[str, float]]]:
    """(waves, labels) -> (tokens per label, alignment statistics), by forced alignment or evenly (cfg.durations)."""

    def align(waves: list[np.ndarray], labels: list[list[int]]) -> tuple[list[np.ndarray], dict[str, float]]:
        model, _ = load_recogniser(cfg.recogniser, sample_rate=cfg.sample_rate, device=torch.device("cpu"), log=log)
        out, heard_ctc, heard_even, failed = [], [], [], 0
        for wave, lab in zip(waves, labels):
            lp = recogniser_log_probs(model, wave)
            even = uniform_durations(len(lp), len(lab))
            path = forced_path(lp, lab) if cfg.durations == "ctc" else None
            spans = durations(path, len(lab)) if path is not None else even
            failed += cfg.durations == "ctc" and path is None
            heard_ctc.append(heard_share(lp, lab, spans))
            heard_even.append(heard_share(lp, lab, even))
            out.append(spans.astype(np.int32))
        stats = {"heard_aligned": float(np.mean(heard_ctc)), "heard_uniform": float(np.mean(heard_even)), "align_failed": failed}
        log(f"prepare: durations ({cfg.durations}) of {len(waves)} recordings: characters the recogniser ranks first inside "
            f"their span {100 * stats['heard_aligned']:.1f}% (uniform spans: {100 * stats['heard_uniform']:.1f}%); "
            f"{failed} without a forced path (uniform)")
        return out, stats

    return align


# ---------------------------------------------------------------- the spec

class TTSSpec(ArchSpec):
    """Text-to-speech of one speaker: FastSpeech-style durations on the shared trunk, Griffin-Lim waveforms."""

    name = "tts"
    model_config = TTSConfig
    data_config = TTSDataConfig
    about = "speech synthesis: characters -> log-mel with durations (CTC-aligned), shared trunk, Griffin-Lim"
    export_formats = ("safetensors",)

    def build(self, cfg: TTSConfig) -> nn.Module:
        return TTSModel(cfg)

    def prepare(self, data: TTSDataConfig, model: TTSConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
        settings = {"kind": "tts", "version": VERSION, "source": data.source, "val_fraction": data.val_fraction,
                    "max_seconds": data.max_seconds, "max_rows": data.max_rows, "sample_rate": model.sample_rate,
                    "n_mels": model.n_mels, "durations": model.durations, "recogniser": recogniser_fingerprint(model.recogniser),
                    "fingerprint": open_source(data.source, SPEECH, data, test=True).fingerprint()}
        mel_of = lambda w: model.analysis.log_mel(w).numpy()  # noqa: E731
        build = build_tts(data, model.sample_rate, mel_of, make_aligner(model, log), log)
        return cached_arrays(data.dir, settings, build, force=force, log=lambda m: None if "classes" in m else log(m))

    def resolve(self, model: TTSConfig, prepared: Prepared) -> TTSConfig:
        tokens = self.positions(model, prepared)
        if tokens > model.max_seq_len:
            raise ConfigError(f"model.max_seq_len ({model.max_seq_len}) is below the {tokens} tokens of the longest training "
                              f"recording; raise it or lower data.max_seconds")
        scale = {"mel_mean": model.mel_mean or prepared.meta["mel_mean"], "mel_std": model.mel_std or prepared.meta["mel_std"]}
        return dataclasses.replace(model, vocab_size=resolved_field("vocab_size", model.vocab_size, len(VOCAB) + 1), **scale)

    def positions(self, cfg: TTSConfig, prepared: Prepared) -> int:
        """Decoder positions of the longest training recording (its tokens)."""
        return int((np.diff(prepared.arrays["train_mel_at"]).max() + 1) // 2)

    def dataset(self, data: TTSDataConfig, model: TTSConfig, prepared: Prepared, *, seed: int) -> TTSData:
        return TTSData(prepared, seed=seed)

    def task(self, data: TTSDataConfig, model: TTSConfig, prepared: Prepared, *, seed: int) -> Task:
        task = super().task(data, model, prepared, seed=seed)
        task.prepared = prepared
        return task

    def data_shape(self, data: TTSDataConfig, model: TTSConfig) -> DataShape:
        if not (Path(data.dir) / "manifest.json").is_file():
            raise ConfigError(f"model.arch = 'tts' takes its lengths from the data; run `largo prepare` on this config first "
                              f"(data.dir {data.dir} is not prepared)")
        prepared = self.prepare(data, model, log=lambda _m: None)
        resolved = self.resolve(model, prepared)
        positions = self.positions(resolved, prepared)
        return DataShape(resolved, positions, int(prepared.arrays["train_mel_at"][-1]) // 2)

    def loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return tts_loss(*model(inputs), inputs, targets)

    def score(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> Scored:
        """The training loss; "correct" = mel bins within CLOSE_NATS of the recording's (teacher-forced durations)."""
        mel, log_durations = model(inputs)
        keep = targets != IGNORE
        close = (((mel.float() - targets).abs() < CLOSE_NATS) & keep).sum()
        return Scored(tts_loss(mel, log_durations, inputs, targets), close, keep.sum())

    # ---- results, files and `largo generate` / `largo speak`: models/tts_eval.py
    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults:
        return tts_results(model, task.prepared, device=device, limit=limit, log=log)

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        return write_run_files(model, task.prepared, run_dir, device=device, log=log)

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        return speak(model, ckpt, request)

    # ---- planner terms
    def extra_matmul_params(self, cfg: TTSConfig, seq_len: int) -> int:
        """The second trunk (the decoder runs over every token), the head, and the predictor's share per token."""
        blocks = cfg.n_layers * (4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.hidden)
        return blocks + 2 * cfg.n_mels * cfg.dim + 6 * cfg.dim * cfg.dim // 4

    def memory_terms(self, cfg: TTSConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        c, d = layout.compute_bytes, cfg.dim
        return MemoryTerms(
            buffers=2 * 2 * cfg.max_seq_len * cfg.head_dim * 4,
            inputs=micro_batch * (16 * seq_len + 8 * seq_len * cfg.n_mels), stem_saved=micro_batch * c * d * seq_len,
            head_saved=micro_batch * seq_len * (8 + c) * d, output_rows=micro_batch * seq_len, outputs=2 * cfg.n_mels,
            head_params=(d + 1) * 2 * cfg.n_mels, residual_bytes=2 if layout.autocast else 4, rotary=True, padding_mask=True,
            causal=False,
        )


register(TTSSpec())
