"""Audio: any audio source (spoken digits synthesised offline, class folders, "hf:" datasets with an audio column) as cached
clips; the training augmentation (speed, shift, noise, channel, SpecAugment masks), run batched on the model's device.

Clips are stored as float16 (n, clip_samples) at the model's sample rate (handed in: the data layer reads no [model]
field), trimmed of silence, speech centred. Reading, resampling and trimming live in audio_io.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, labelled_rows, labels_to_ids, split_arrays, test_ids
from largo.data.audio_io import read_audio, to_clip
from largo.data.config import ClassDataConfig, check_non_negative
from largo.data.draws import SampleDraws
from largo.data.sources import AUDIO, DataSource, Row, open_source
from largo.errors import ConfigError


@dataclass
class AudioDataConfig(ClassDataConfig):
    """Audio clips: spoken digits synthesised offline, a folder with one subfolder of audio files per class, or a dataset."""

    source: str = "espeak-digits"  # "espeak-digits", a folder with one subfolder of .wav/.flac/.ogg/.mp3 files per class, or "hf:NAME"
    dir: str = "data/audio"
    audio_column: str = "audio"  # hf: sources: column holding the audio (encoded files, decoded by largo)
    clip_seconds: float = 1.0  # clips are trimmed of silence, centred, and padded or cut to this length
    time_shift_s: float = 0.0  # shift training clips in time by up to this many seconds
    noise_snr_db: float = 0.0  # add noise to training clips at a random SNR down to this many dB; 0 = none
    band_limit_hz: float = 0.0  # pass half the training clips through a channel cut off at random above this (Hz); 0 = none
    spec_masks: int = 0  # silenced time spans (<= 60 ms) and removed frequency bands (<= 300 Hz) per training clip (SpecAugment)
    speed_perturb: float = 0.0  # play training clips faster or slower by up to this fraction (tempo, pitch and formants move together)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "time_shift_s", "noise_snr_db", "band_limit_hz", "speed_perturb", "spec_masks")
        if self.speed_perturb >= 0.5:
            raise ConfigError(f"data.speed_perturb ({self.speed_perturb}) must be in [0, 0.5)")
        if not 0.0 < self.clip_seconds <= 30.0:
            raise ConfigError(f"data.clip_seconds ({self.clip_seconds}) must be in (0, 30]")


_VERSION = 1  # bump when the preparation below changes what it stores


def _source(value: str, d: AudioDataConfig, *, test: bool = False, log: Callable[[str], None] = print) -> DataSource:
    return open_source(value, AUDIO, d, test=test, log=log)


def _clips(source: DataSource, rows: list[Row], rate: int, clip_samples: int) -> np.ndarray:
    """The rows' audio ((waveform, rate) pairs, files or encoded bytes) as float16 (n, clip_samples) clips at `rate`."""
    clips = []
    for k, r in enumerate(rows):
        wave, wave_rate = r["audio"] if isinstance(r["audio"], tuple) else read_audio(r["audio"], r.get("id") or f"{source.value} row {k}")
        clips.append(to_clip(wave, wave_rate, rate, clip_samples))
    return np.stack(clips).astype(np.float16)


def audio_folder(root: Path, rate: int, clip_samples: int) -> tuple[np.ndarray, list[str]]:
    """Every audio file under root/<class>/ as a clip, and its class name."""
    source = _source(str(root), AudioDataConfig(source=str(root)))
    rows = labelled_rows(source, {"audio": "audio", "label": "label"})
    return _clips(source, rows, rate, clip_samples), [r["label"] for r in rows]


def _build(d: AudioDataConfig, rate: int, clip_samples: int, log: Callable[[str], None]) -> Callable[[], Built]:
    roles = {"audio": d.audio_column, "label": d.label_column}

    def build() -> Built:
        source = _source(d.source, d, log=log)
        rows = labelled_rows(source, roles)
        y, classes = labels_to_ids([r["label"] for r in rows], source.label_order)
        splits = [r.get("split") for r in rows]
        arrays = split_arrays(_clips(source, rows, rate, clip_samples), y, splits, d.val_fraction)
        if not all(splits):  # a source that splits itself (by voice) thins its own rows for data.max_rows
            keep = even_subset(len(arrays["train_y"]), d.max_rows)
            arrays["train_x"], arrays["train_y"] = arrays["train_x"][keep], arrays["train_y"][keep]
        if d.test_source:
            test = _source(d.test_source, d, test=True, log=log)
            test_rows = labelled_rows(test, roles)
            arrays["test_x"] = _clips(test, test_rows, rate, clip_samples)
            arrays["test_y"] = test_ids([r["label"] for r in test_rows], classes, d.test_source)
        return Built(arrays, {"classes": classes})

    return build


def prepare_audio(d: AudioDataConfig, *, sample_rate: int, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the clips of d at the model's sample_rate."""
    clip_samples = round(d.clip_seconds * sample_rate)
    test = _source(d.test_source, d, test=True).fingerprint() if d.test_source else ""
    settings = {
        "kind": "audio", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": _source(d.source, d).fingerprint() + test, "val_fraction": d.val_fraction, "max_rows": d.max_rows,
        "sample_rate": sample_rate, "clip_samples": clip_samples,
    }
    return cached_arrays(d.dir, settings, _build(d, sample_rate, clip_samples, log), force=force, log=log)


NOISE_BANK = 256  # white-noise clips drawn once (seeded); each example colours one of them
_DRAWS = 10  # uniforms per example besides the 4 per mask: speed, shift, noise row/colour/SNR, channel flag/low/high


def audio_transform(*, spec_masks: int = 0, **_settings: object) -> Transform:
    """float16 clips (b, n) -> float32; a training batch also carries each clip's draws (b, 10 + 4 * spec_masks), so the
    augmentation (AudioAugment) runs vectorised on the model's device, where it costs a fraction of a step."""

    def transform(rows: np.ndarray, draws: SampleDraws | None) -> torch.Tensor | dict[str, torch.Tensor]:
        rows = np.asarray(rows)
        # torch widens float16 4x faster than numpy (vectorised): the largest cost of a speech batch on the host
        x = torch.from_numpy(rows if rows.flags.writeable else rows.copy()).float()
        if draws is None:
            return x
        return {"wave": x, "draws": torch.from_numpy(draws.uniform(10, _DRAWS + 4 * spec_masks)).float()}

    return transform


class AudioAugment:
    """A training batch {"wave", "draws"} -> augmented waves, on whatever device they are on; held-out waves pass through.

    Each clip, with its own draws: played at a speed in [1 - speed_perturb, 1 + speed_perturb] about its centre
    and shifted by up to time_shift_s (one resampling); noise of random colour (f^-a, a in [0, 1]) at an SNR
    in [noise_snr_db, 40] dB; for half the clips a channel that passes only [0..300 Hz, band_limit_hz..Nyquist]
    (a telephone line, smooth 100 Hz edges); spec_masks removed bands (< 300 Hz wide, below 4 kHz) and
    silenced spans (< 60 ms). Noise, channel and bands are one pass over the spectrum (one rfft, one irfft).
    """

    def __init__(self, *, rate: int, time_shift_s: float, noise_snr_db: float, band_limit_hz: float,
                 speed_perturb: float = 0.0, spec_masks: int = 0):
        self.rate, self.max_shift, self.snr_db, self.band_hz = rate, round(time_shift_s * rate), noise_snr_db, band_limit_hz
        self.speed, self.masks = speed_perturb, spec_masks
        self._banks: dict[tuple[int, str], NoiseBank] = {}

    def __call__(self, batch: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(batch, dict):
            return batch
        x, u = batch["wave"], batch["draws"]  # (b, n), (b, draws)
        b, n = x.shape
        between = lambda k, lo, hi: lo + (hi - lo) * u[:, k : k + 1]  # noqa: E731  (b, 1)
        t = (torch.arange(n, device=x.device) - torch.floor(between(1, -self.max_shift, self.max_shift + 1)) - n / 2) \
            * between(0, 1 - self.speed, 1 + self.speed) + n / 2
        x = interpolate(x, t)  # sample j reads time t_j
        spec = torch.fft.rfft(x)  # (b, freqs)
        freqs = torch.fft.rfftfreq(n, 1.0 / self.rate, device=x.device)
        if self.snr_db:
            key = (n, str(x.device))
            if key not in self._banks:
                self._banks[key] = NoiseBank(n, x.device)
            bank = self._banks[key]
            spec = spec + bank.coloured(u[:, 2:5], (x**2).mean(dim=1, keepdim=True), self.snr_db)
        if self.band_hz:
            low, high = between(6, 0.0, 300.0), between(7, self.band_hz, self.rate / 2)
            edge = torch.minimum((freqs - low + 50.0) / 100.0, (high + 50.0 - freqs) / 100.0).clamp(0.0, 1.0)
            gain = edge * edge * (3.0 - 2.0 * edge)  # smoothstep: 0 outside, 1 inside, 100 Hz S-shaped edges
            spec = spec * torch.where(u[:, 5:6] < 0.5, gain, 1.0)  # half the clips
        if self.masks:
            m = self.masks
            low, width = 4000.0 * u[:, _DRAWS : _DRAWS + m], 300.0 * u[:, _DRAWS + m : _DRAWS + 2 * m]  # (b, masks) Hz
            spec = spec.masked_fill(_spans(low / self.rate * n, width / self.rate * n, spec.shape[1]), 0.0)
        x = torch.fft.irfft(spec, n)
        if self.masks:
            span = torch.floor(0.06 * self.rate * u[:, _DRAWS + 2 * m : _DRAWS + 3 * m])  # (b, masks) samples
            start = torch.floor(u[:, _DRAWS + 3 * m :] * (n - span).clamp_min(1.0))
            x = x.masked_fill(_spans(start, span, n), 0.0)
        return x


def _spans(start: torch.Tensor, length: torch.Tensor, n: int) -> torch.Tensor:
    """(b, n) bool: inside any of each row's [start, start + length) spans (b, spans), by a cumulative sum, not b x spans x n."""
    marks = torch.zeros(start.shape[0], n + 1, device=start.device)
    first = start.ceil().clamp(0, n).long()
    last = (start + length).ceil().clamp(0, n).long()
    marks.scatter_add_(1, first, torch.ones_like(start)).scatter_add_(1, last, -torch.ones_like(start))
    return marks.cumsum(dim=1)[:, :n] > 0


class NoiseBank:
    """NOISE_BANK white-noise clips of n samples, kept as spectra, with each one's power per frequency bin."""

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        white = torch.randn(NOISE_BANK, n, generator=torch.Generator().manual_seed(n))
        self.spectra = torch.fft.rfft(white).to(device)  # (K, freqs)
        weight = torch.full((self.spectra.shape[1],), 2.0, device=device)  # one-sided: every bin but DC (and Nyquist) twice
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        self.power = self.spectra.abs() ** 2 * weight / n**2  # (K, freqs): sums to a clip's mean square (Parseval)
        self.log_k = torch.arange(self.spectra.shape[1], dtype=torch.float32, device=device).clamp_min(1.0).log()

    def coloured(self, u: torch.Tensor, signal_power: torch.Tensor, snr_floor_db: float) -> torch.Tensor:
        """(b, freqs) noise spectra from draws u (b, 3): a bank clip, coloured f^-a (a in [0, 1]), at an SNR in [floor, 40] dB."""
        row = (u[:, 0] * NOISE_BANK).long().clamp_max(NOISE_BANK - 1)
        tilt = torch.exp(-u[:, 1:2] * self.log_k)  # (b, freqs): f^-a
        snr_db = snr_floor_db + (40.0 - snr_floor_db) * u[:, 2:3]
        power = (self.power[row] * tilt**2).sum(dim=1, keepdim=True)
        return self.spectra[row] * (tilt * torch.sqrt(signal_power / (power + 1e-12) / 10 ** (snr_db / 10)))


def interpolate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x (b, n) read at fractional times t (b, n) by linear interpolation, zero outside the clip."""
    n = x.shape[1]
    padded = torch.nn.functional.pad(x, (1, 1))  # zeros either side: out-of-range reads land on them
    t = t.clamp(-1.0, float(n))  # beyond the clip both neighbours are the zero pads
    i0 = t.floor()
    index = (i0 + 1).long()  # padded index of floor(t), in [0, n + 1]
    left, right = torch.gather(padded, 1, index), torch.gather(padded, 1, (index + 1).clamp(max=n + 1))
    return torch.lerp(left, right, t - i0)
