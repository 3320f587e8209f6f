"""From waveform to log-mel and back: the synthesiser's mel analysis (natural-log mel power, 25 ms windows, 10 ms hop),
Griffin-Lim on torch.stft / torch.istft (with the "fast" momentum of Perraudin et al. 2013), mel-cepstra and the
mel-cepstral distortion against a reference under dynamic time warping (librosa.sequence.dtw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from largo.models.audio import mel_filterbank, power_spectrogram
from largo.optional import require

FLOOR = 1e-5  # mel power floor before the log (-11.5 in natural log): silence
MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)  # MCD in dB from natural-log cepstral differences (Kubichek 1993)
CEPSTRA = 14  # mel-cepstral coefficients c0..c13; MCD takes c1..c13 (c0, loudness, left out)


@dataclass(frozen=True)
class MelAnalysis:
    """STFT sizes and filterbank of the synthesiser's frames at one sample rate."""

    sample_rate: int
    n_mels: int

    @property
    def hop(self) -> int:
        return self.sample_rate // 100  # 10 ms (the recogniser's hop: its tokens are two of these frames)

    @property
    def win(self) -> int:
        return self.sample_rate // 40  # 25 ms

    @property
    def n_fft(self) -> int:
        return 2 ** math.ceil(math.log2(self.win))

    def window(self) -> torch.Tensor:
        return torch.hann_window(self.win)

    def filterbank(self) -> torch.Tensor:
        """(n_fft // 2 + 1, n_mels) triangular HTK filters, as the recognisers' front end."""
        return mel_filterbank(self.n_fft, self.n_mels, self.sample_rate)

    def frames(self, samples: int) -> int:
        """Centred STFT frames of a clip."""
        return samples // self.hop + 1

    def log_mel(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A waveform (n,) -> natural-log mel power (frames, n_mels), fp32."""
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))[None]
        power = power_spectrogram(x, self.window(), self.n_fft, self.hop)[0]  # (freqs, frames)
        return (self.filterbank().T @ power).clamp_min(FLOOR).log().T.contiguous()


def griffin_lim(log_mel: torch.Tensor, analysis: MelAnalysis, *, iterations: int = 60, momentum: float = 0.99,
                seed: int = 0) -> np.ndarray:
    """A waveform whose log-mel is close to log_mel (frames, n_mels): the mel power mapped back to linear frequencies by
    the filterbank's pseudo-inverse, then Griffin-Lim's phase estimate with momentum; peak-normalised to 0.5."""
    fb = analysis.filterbank().double()
    power = (torch.linalg.pinv(fb.T) @ log_mel.double().exp().T).clamp_min(0.0)  # (freqs, frames)
    magnitude = power.sqrt().float()
    window, n_fft, hop = analysis.window(), analysis.n_fft, analysis.hop
    length = (magnitude.shape[1] - 1) * hop
    gen = torch.Generator().manual_seed(seed)
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * torch.rand(magnitude.shape, generator=gen))
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        wave = torch.istft(magnitude * angles, n_fft, hop, analysis.win, window, center=True, length=length)
        rebuilt = torch.stft(wave, n_fft, hop, analysis.win, window, center=True, pad_mode="constant", return_complex=True)
        angles = rebuilt - momentum / (1 + momentum) * previous  # the fast variant: a step past the projection
        previous = rebuilt
        angles = angles / angles.abs().clamp_min(1e-16)
    wave = torch.istft(magnitude * angles, n_fft, hop, analysis.win, window, center=True, length=length).numpy()
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    return (wave * (0.5 / peak) if peak > 0 else wave).astype(np.float32)


def mel_cepstra(wave: np.ndarray, analysis: MelAnalysis) -> np.ndarray:
    """Mel-cepstra c0..c13 per frame (frames, 14): the cosine series of the natural-log mel amplitude over the mel axis,
    log A = c0 + 2 sum c_k cos(pi k (m + 1/2) / M), i.e. scipy's DCT-II divided by 2 M (the scale MCD's formula assumes)."""
    fft = require("scipy.fft", "mel-cepstral distortion")
    log_amplitude = 0.5 * analysis.log_mel(wave).double().numpy()
    return fft.dct(log_amplitude, type=2, axis=1)[:, :CEPSTRA] / (2 * analysis.n_mels)


def mcd(reference: np.ndarray, synthesised: np.ndarray, analysis: MelAnalysis) -> float:
    """Mel-cepstral distortion in dB (c1..c13) along librosa's DTW path between two waveforms' mel-cepstra."""
    librosa = require("librosa", "mel-cepstral distortion (its DTW)")
    a, b = mel_cepstra(reference, analysis)[:, 1:], mel_cepstra(synthesised, analysis)[:, 1:]
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    diff = a[path[:, 0]] - b[path[:, 1]]
    return float(MCD_SCALE * np.sqrt((diff**2).sum(axis=1)).mean())
