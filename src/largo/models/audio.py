"""Audio classifier: a log-mel frontend (STFT + mel filterbank in torch, batched) and a conv stem before the trunk.

The frontend has no parameters: it turns raw waveforms into features on the model's device, so the
data pipeline (data/audio.py) only moves and augments samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from largo.data.arrays import Prepared, Transform
from largo.data.audio import AudioAugment, AudioDataConfig, audio_transform, prepare_audio
from largo.data.audio_io import read_wav, to_clip
from largo.errors import ConfigError
from largo.models.classifier import Classifier, ClassifierConfig, ClassifierSpec, StemTerms, pooled_relevance
from largo.models.spec import Attribution, Task, register
from largo.precision import Layout

TOP_DB = 8.0  # log10 units (80 dB) kept below each clip's loudest bin; quieter bins are clamped
# Frontend peak per STFT bin (b x freqs x frames): complex64 output (8) + real^2, imag^2 and their sum (4 each).
STFT_BYTES_PER_BIN = 20


@dataclass
class AudioConfig(ClassifierConfig):
    """Waveforms at sample_rate, seen as log-mel frames (25 ms windows, 10 ms hop) halved by a stride-2 conv."""

    arch: str = "audio"
    sample_rate: int = 16000  # waveform rate (Hz) of the model's input; data are resampled to it
    n_mels: int = 64  # mel bands of the log-mel frontend
    f_max: float = 0.0  # top edge of the mel filterbank in Hz; 0 = sample_rate / 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_mels < 1:
            raise ConfigError(f"model.n_mels ({self.n_mels}) must be >= 1")
        if self.sample_rate < 1000:
            raise ConfigError(f"model.sample_rate ({self.sample_rate}) must be >= 1000 Hz")
        if not 0 <= self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"model.f_max ({self.f_max}) must be in [0, sample_rate / 2 = {self.sample_rate / 2}]")

    @property
    def win_length(self) -> int:
        """Samples per 25 ms analysis window."""
        return self.sample_rate // 40

    @property
    def hop_length(self) -> int:
        """Samples between frames (10 ms)."""
        return self.sample_rate // 100

    @property
    def n_fft(self) -> int:
        return 2 ** math.ceil(math.log2(self.win_length))

    def audio_tokens(self, num_samples: int) -> int:
        """Transformer positions for a clip: frames (centred STFT), halved by the stem's stride."""
        frames = num_samples // self.hop_length + 1
        return (frames + 1) // 2


def hz_to_mel(hz: float) -> float:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 0.0) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_fft // 2 + 1, n_mels), unnormalised (peak 1)."""
    f_max = f_max or sample_rate / 2
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))  # (n_mels + 2,) Hz
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    rising = (freqs[:, None] - lo) / (mid - lo)  # (n_freqs, n_mels)
    falling = (hi - freqs[:, None]) / (hi - mid)
    return torch.minimum(rising, falling).clamp_min(0.0).float()


def power_spectrogram(wave: torch.Tensor, window: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT|^2 of (b, samples), centred frames zero-padded by n_fft // 2: (b, n_fft // 2 + 1, frames)."""
    spec = torch.stft(wave, n_fft, hop_length=hop, win_length=window.numel(), window=window,
                      center=True, pad_mode="constant", return_complex=True)
    return spec.real.square() + spec.imag.square()


def log_mel(wave: torch.Tensor, window: torch.Tensor, filterbank: torch.Tensor, hop: int) -> torch.Tensor:
    """Log-mel features (b, n_mels, frames), scaled per clip to about [-1, 1] (loudness-invariant)."""
    n_fft = 2 * (filterbank.shape[0] - 1)
    mel = torch.einsum("bft,fm->bmt", power_spectrogram(wave.float(), window, n_fft, hop), filterbank)
    logs = mel.clamp_min(1e-10).log10()
    top = logs.amax(dim=(1, 2), keepdim=True)
    return (logs.maximum(top - TOP_DB) - top + TOP_DB / 2) / (TOP_DB / 2)


class AudioStem(nn.Module):
    """Waveforms (b, samples) at cfg.sample_rate -> frame states (b, frames / 2, dim): log-mel, then Whisper's two convs."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, 0.0, cfg.f_max), persistent=False)
        # Kernel-3 convolutions, the second with stride 2 (10 ms frames -> 20 ms tokens).
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.encode(self.features(wave))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms (b, samples) -> log-mel frames (b, n_mels, frames), in fp32 whatever the training precision."""
        with torch.autocast(wave.device.type, enabled=False):
            return log_mel(wave, self.window, self.filterbank, self.cfg.hop_length)

    def encode(self, feats: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Log-mel frames (b, n_mels, frames) -> token states (b, tokens, dim): the two convolutions."""
        x = F.gelu(self.conv1(feats))
        return F.gelu(self.conv2(x)).transpose(1, 2), None  # (b, tokens, dim)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Rebuild the frontend tables (buffers built on meta); convolutions as linear layers of their fan-in."""
        device = self.window.device
        self.window = torch.hann_window(self.cfg.win_length, device=device)
        self.filterbank = mel_filterbank(self.cfg.n_fft, self.cfg.n_mels, self.cfg.sample_rate, 0.0, self.cfg.f_max).to(device)
        for conv in (self.conv1, self.conv2):
            fan_in = conv.in_channels * conv.kernel_size[0]
            nn.init.normal_(conv.weight, std=fan_in**-0.5)
            nn.init.zeros_(conv.bias)


def audio_frames(cfg: AudioConfig, seq_len: int) -> int:
    """Log-mel frames behind seq_len positions (the stem's stride-2 conv halves them; a class token adds one)."""
    return 2 * (seq_len - cfg.extra_positions) - 1


class AudioSpec(ClassifierSpec):
    """Spoken-word classification: digits synthesised with espeak-ng/flite, or an audio folder."""

    name = "audio"
    model_config = AudioConfig
    data_config = AudioDataConfig
    about = "audio classifier (log-mel frontend, conv stem) on waveforms"

    def stem(self, cfg: AudioConfig) -> nn.Module:
        return AudioStem(cfg)

    def prepare(self, data: AudioDataConfig, model: AudioConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
        return prepare_audio(data, sample_rate=model.sample_rate, force=force, log=log)

    def resolve_fields(self, cfg: AudioConfig, prepared: Prepared) -> dict[str, Any]:
        tokens = cfg.audio_tokens(prepared.arrays["train_x"].shape[1])
        if tokens > cfg.max_seq_len:
            raise ConfigError(f"model.max_seq_len ({cfg.max_seq_len}) is below the {tokens} tokens of a "
                              f"{prepared.arrays['train_x'].shape[1] / cfg.sample_rate:g} s clip; raise it or shorten data.clip_seconds")
        return {}

    def stem_positions(self, cfg: AudioConfig, prepared: Prepared) -> int:
        return cfg.audio_tokens(prepared.arrays["train_x"].shape[1])

    def transform(self, data: AudioDataConfig, prepared: Prepared) -> Transform:
        return audio_transform(spec_masks=data.spec_masks)

    def task(self, data: AudioDataConfig, model: AudioConfig, prepared: Prepared, *, seed: int) -> Task:
        task = super().task(data, model, prepared, seed=seed)
        d = data
        task.augment = AudioAugment(rate=model.sample_rate, time_shift_s=d.time_shift_s, noise_snr_db=d.noise_snr_db,
                                    band_limit_hz=d.band_limit_hz, speed_perturb=d.speed_perturb, spec_masks=d.spec_masks)
        return task

    def stem_matmul_params(self, cfg: AudioConfig) -> int:
        return 2 * cfg.n_mels * 3 * cfg.dim + 3 * cfg.dim * cfg.dim  # conv1 runs at twice the token rate

    # ---- explanations: integrated gradients on the log-mel frames, drawn over the spectrogram
    example_suffixes = (".wav",)

    def read_example(self, data: AudioDataConfig, model: AudioConfig, ckpt: Path, source: str) -> np.ndarray:
        clip_samples = round(data.clip_seconds * model.sample_rate)
        return to_clip(*read_wav(Path(source)), model.sample_rate, clip_samples)  # as the data's clips are made

    def attribution(self, model: Classifier, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        cfg, stem = model.cfg, model.stem
        feats = stem.features(inputs)  # (b, n_mels, frames): what is attributed

        def to_frames(r: torch.Tensor) -> torch.Tensor:  # rollout over tokens -> (b, frames): a token covers two frames
            return pooled_relevance(cfg, r, None).repeat_interleave(2, dim=1)[:, : feats.shape[-1]]

        # The baseline is the feature floor (80 dB under the clip's peak) at every bin: silence as the model sees it.
        # (The blank clip, all zeros, is no baseline here: per-clip scaling makes a silent clip's features its own peak.)
        return Attribution("spectrogram", lambda f: model.forward_states(*stem.encode(f)), feats, torch.full_like(feats, -1.0),
                           lambda a: a, rollout=to_frames, seconds_per_column=cfg.hop_length / cfg.sample_rate)

    def stem_terms(self, cfg: AudioConfig, micro_batch: int, seq_len: int, layout: Layout) -> StemTerms:
        c, d = layout.compute_bytes, cfg.dim
        frames, t, freqs = audio_frames(cfg, seq_len), seq_len - cfg.extra_positions, cfg.n_fft // 2 + 1
        # log-mel (conv1's input, cast from fp32), conv1 out (GELU's input), GELU out (conv2's input), conv2 out (GELU's)
        saved = micro_batch * c * (cfg.n_mels * frames + 2 * d * frames + d * t)
        casts = 2 * 3 * d * (cfg.n_mels + d) if layout.autocast else 0  # bf16 kernel-3 conv weights
        wave = 4 * (frames - 1) * cfg.hop_length  # fp32 waveform: a frame every hop
        # The STFT's transients come before anything is saved; they top long clips on small models.
        frontend = (micro_batch * (wave + 8), STFT_BYTES_PER_BIN * micro_batch * freqs * frames)
        return StemTerms(input_bytes=wave, saved=saved + casts, buffers=4 * cfg.win_length + 4 * freqs * cfg.n_mels,
                         bf16_residual=True, extra_phases={"frontend": frontend})


register(AudioSpec())
