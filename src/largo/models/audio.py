"""Audio classifier: log-mel frontend (STFT + mel filterbank in torch, batched) -> conv stem -> shared encoder trunk.

The frontend has no parameters: it turns raw waveforms into features on the model's device,
so the data pipeline only moves (and augments) samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from largo.models.config import ModelConfig
from largo.models.encoder import EncoderTrunk

TOP_DB = 8.0  # log10 units (80 dB) kept below each clip's loudest bin; quieter bins are clamped


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


class AudioClassifier(nn.Module):
    """Waveforms (b, samples) at cfg.sample_rate -> class logits (b, num_classes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_fft = 2 ** math.ceil(math.log2(cfg.win_length))
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(self.n_fft, cfg.n_mels, cfg.sample_rate, 0.0, cfg.f_max), persistent=False)
        # Whisper's stem: two kernel-3 convolutions, the second with stride 2 (10 ms frames -> 20 ms tokens).
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)
        self.trunk = EncoderTrunk(cfg, rotary=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # features in fp32, whatever the training precision
            feats = log_mel(wave, self.window, self.filterbank, self.cfg.hop_length)  # (b, n_mels, frames)
        x = F.gelu(self.conv1(feats))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (b, tokens, dim)
        if x.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"{x.shape[1]} audio tokens exceed model.max_seq_len ({self.cfg.max_seq_len}); shorten data.clip_seconds")
        return self.trunk(self.trunk.add_class_token(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Rebuild the frontend tables; convolutions as linear layers of their fan-in; then the trunk."""
        device = self.window.device
        self.window = torch.hann_window(self.cfg.win_length, device=device)
        self.filterbank = mel_filterbank(self.n_fft, self.cfg.n_mels, self.cfg.sample_rate, 0.0, self.cfg.f_max).to(device)
        for conv in (self.conv1, self.conv2):
            fan_in = conv.in_channels * conv.kernel_size[0]
            nn.init.normal_(conv.weight, std=fan_in**-0.5)
            nn.init.zeros_(conv.bias)
        self.trunk.init_weights()
