"""Speech with transcripts (recognition): utterances of any length cached flat at the model's rate, CTC label sequences,
the Dataset that pads a micro-batch to its longest utterance, and the training augmentation run batched on the device.

Output folder (data.dir), per split s in train, val, test:
  s_wave.npy (float16, every utterance end to end), s_wave_at.npy (int64 offsets, n + 1),
  s_labels.npy (uint8 CTC labels 1..28, end to end), s_labels_at.npy (int64 offsets, n + 1); manifest.json holds
  the raw transcripts and names of the test prompts (their references are re-normalised when scored).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from largo.data import Batch
from largo.data.arrays import Built, Prepared, cached_arrays
from largo.data.audio import AudioAugment, interpolate
from largo.data.audio_io import PEAK, read_audio, resample, trim_silence
from largo.data.config import DataConfig, check_non_negative
from largo.data.draws import SampleDraws
from largo.data.sources import SPEECH, open_source
from largo.data.split import is_validation
from largo.data.transcripts import VOCAB, encode, normalise
from largo.errors import ConfigError, DataError

BUCKET = 512  # the training order is sorted by length within runs of this many samples: a micro-batch pads little
PAD_TO = 4000  # a batch's waves are padded to a multiple of this many samples: few distinct lengths (the noise bank's cache)
IGNORE = -100  # a padded target (data.Batch's convention, models/loss.py's IGNORE)
_VERSION = 1  # bump when the preparation below changes what it stores
_AUGMENT_DRAWS = 10  # AudioAugment's own draws (speed, shift, noise, channel), before its 4 per mask
_REVERB_DRAWS = 3  # flag, RT60, impulse-response row
_SPEED_DRAWS = 1  # the playback speed (drawn only when data.speed_perturb is set: other runs draw as before)
_WARP_DRAWS = 1  # the vocal tract length factor (drawn only when data.vtlp is set)
WARP_EDGE = 0.8  # VTLP: frequencies above this share of Nyquist bend so that Nyquist stays in place


@dataclass
class SpeechDataConfig(DataConfig):
    """Utterances with transcripts: sentences synthesised offline for training, real recordings for testing."""

    source: str = "synth-sentences"  # "synth-sentences" (espeak-ng + flite, held-out voices for validation)
    test_source: str = "asterisk-prompts"  # real recordings scored at the end and by `largo eval`; "" = none
    dir: str = "data/speech-sentences"
    sentences: int = 6000  # synth-sentences: how many sentences to synthesise (each once, in one voice)
    fortune_share: float = 0.0  # synth-sentences: share of the sentences from Debian's fortune cookies (the rest: catalogs)
    max_seconds: float = 6.0  # training utterances longer than this are left out (memory: a batch pads to its longest)
    max_rows: int = 0  # keep at most this many training utterances; 0 = all (quick runs, tests)
    noise_snr_db: float = 0.0  # add noise of random colour at a random SNR down to this many dB; 0 = none
    band_limit_hz: float = 0.0  # half the training clips through a channel cut off at random above this (Hz); 0 = none
    reverb: float = 0.0  # share of training clips convolved with a synthetic room (RT60 0.1-0.6 s); 0 = none
    spec_masks: int = 0  # silenced spans (<= 60 ms) and removed bands (<= 300 Hz) per training clip (SpecAugment)
    speed_perturb: float = 0.0  # play training clips faster or slower by up to this fraction (pitch, formants, tempo; lengths follow)
    vtlp: float = 0.0  # vocal tract length perturbation: each clip's spectrum warped by a factor in [1 - vtlp, 1 + vtlp], tempo kept
    window_seconds: float = 8.0  # recognition: longer recordings are cut at pauses into windows of at most this
    baseline_run: str = ""  # a run folder (e.g. the same recipe without augmentation) whose speech_results.json is the baseline

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "sentences", "max_rows", "noise_snr_db", "band_limit_hz", "reverb", "spec_masks", "speed_perturb", "vtlp")
        if not 0.5 <= self.max_seconds <= 30.0:
            raise ConfigError(f"data.max_seconds ({self.max_seconds}) must be in [0.5, 30]")
        if not 1.0 <= self.window_seconds <= 30.0:
            raise ConfigError(f"data.window_seconds ({self.window_seconds}) must be in [1, 30]")
        if not 0.0 <= self.fortune_share <= 1.0:
            raise ConfigError(f"data.fortune_share ({self.fortune_share}) must be a share in [0, 1]")
        if self.reverb > 1.0:
            raise ConfigError(f"data.reverb ({self.reverb}) must be a share in [0, 1]")
        if self.speed_perturb >= 0.5:
            raise ConfigError(f"data.speed_perturb ({self.speed_perturb}) must be in [0, 0.5)")
        if self.vtlp >= 0.5:
            raise ConfigError(f"data.vtlp ({self.vtlp}) must be in [0, 0.5)")

    @property
    def augmented(self) -> bool:
        return bool(self.noise_snr_db or self.band_limit_hz or self.reverb or self.spec_masks or self.speed_perturb or self.vtlp)


def utterance(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resampled, trimmed of silence (30 ms margins), peak at PEAK: how every utterance is stored and recognised."""
    x = trim_silence(resample(wave, rate, target_rate), target_rate)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    return x * (PEAK / peak) if peak > 0 else x


def _flat(pieces: list[np.ndarray], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Arrays end to end and their offsets (n + 1)."""
    at = np.zeros(len(pieces) + 1, dtype=np.int64)
    at[1:] = np.cumsum([len(p) for p in pieces])
    return (np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)), at


def _rows(value: str, d: SpeechDataConfig, rate: int, test: bool, log: Callable[[str], None]) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """(waves at rate, raw transcripts, row info) of a source; training rows over max_seconds or silent are left out."""
    source = open_source(value, SPEECH, d, test=test, log=log)
    waves, texts, info, long = [], [], [], 0
    for k, r in enumerate(source.rows({"audio": "audio", "text": "text"}, _stats())):
        name = r.get("id") or f"{value} row {k}"
        wave, wave_rate = r["audio"] if isinstance(r["audio"], tuple) else read_audio(r["audio"], name)
        x = utterance(wave, wave_rate, rate)
        if not normalise(r["text"] or "") or len(x) == 0:
            continue
        if not test and len(x) > d.max_seconds * rate:
            long += 1
            continue
        waves.append(x)
        texts.append(r["text"])
        info.append({"id": name, "split": r.get("split"), "voice": r.get("voice", "")})
    if long:
        log(f"prepare: {long} utterances over data.max_seconds ({d.max_seconds:g} s) left out")
    return waves, texts, info


def _stats():  # noqa: ANN202  (SourceStats, imported late to keep this module's imports short)
    from largo.data.sources import SourceStats

    return SourceStats()


def _build(d: SpeechDataConfig, rate: int, log: Callable[[str], None]) -> Callable[[], Built]:
    def build() -> Built:
        waves, texts, info = _rows(d.source, d, rate, False, log)
        splits = {"train": [], "val": []}
        for i, row in enumerate(info):
            split = row["split"] if row["split"] in splits else ("val" if is_validation(i, d.val_fraction) else "train")
            splits[split].append(i)
        if d.max_rows:
            keep = np.linspace(0, len(splits["train"]) - 1, min(d.max_rows, len(splits["train"]))).round().astype(int)
            splits["train"] = [splits["train"][k] for k in keep]
        arrays, meta = {}, {"classes": list(VOCAB), "sample_rate": rate}
        for split, index in splits.items():
            _store(arrays, split, [waves[i] for i in index], [texts[i] for i in index])
            meta[f"{split}_voices"] = sorted({info[i]["voice"] for i in index} - {""})
        if d.test_source:
            test_waves, test_texts, test_info = _rows(d.test_source, d, rate, True, log)
            _store(arrays, "test", test_waves, test_texts)
            meta["test_names"], meta["test_texts"] = [r["id"] for r in test_info], test_texts
        meta["val_texts"] = [texts[i] for i in splits["val"]]
        counts = ", ".join(f"{s} {len(arrays[f'{s}_wave_at']) - 1:,}" for s in ("train", "val", "test") if f"{s}_wave_at" in arrays)
        hours = ", ".join(f"{s} {len(arrays[f'{s}_wave']) / rate / 3600:.2f} h" for s in ("train", "val", "test") if f"{s}_wave" in arrays)
        log(f"prepare: utterances {counts} ({hours})")
        return Built(arrays, meta)

    return build


def _store(arrays: dict[str, np.ndarray], split: str, waves: list[np.ndarray], texts: list[str]) -> None:
    arrays[f"{split}_wave"], arrays[f"{split}_wave_at"] = _flat(waves, np.float16)
    labels = [np.array(encode(normalise(t)), dtype=np.uint8) for t in texts]
    arrays[f"{split}_labels"], arrays[f"{split}_labels_at"] = _flat(labels, np.uint8)


def prepare_speech(d: SpeechDataConfig, *, sample_rate: int, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) d's utterances at the model's sample_rate."""
    fingerprint = open_source(d.source, SPEECH, d).fingerprint()
    test = open_source(d.test_source, SPEECH, d, test=True).fingerprint() if d.test_source else ""
    settings = {"kind": "speech", "version": _VERSION, "source": d.source, "test_source": d.test_source, "sentences": d.sentences,
                "fingerprint": fingerprint + test, "val_fraction": d.val_fraction, "max_rows": d.max_rows,
                "max_seconds": d.max_seconds, "sample_rate": sample_rate}
    prepared = cached_arrays(d.dir, settings, _build(d, sample_rate, log), force=force, log=lambda m: None if "classes" in m else log(m))
    if len(prepared.arrays["train_wave_at"]) < 2 or len(prepared.arrays["val_wave_at"]) < 2:
        raise DataError(f"data.dir {d.dir}: {len(prepared.arrays['train_wave_at']) - 1} training and "
                        f"{len(prepared.arrays['val_wave_at']) - 1} held-out utterances; both splits need at least one")
    return prepared


def count(prepared: Prepared, split: str) -> int:
    return len(prepared.arrays[f"{split}_wave_at"]) - 1


def wave_of(prepared: Prepared, split: str, i: int) -> np.ndarray:
    at = prepared.arrays[f"{split}_wave_at"]
    return np.asarray(prepared.arrays[f"{split}_wave"][at[i] : at[i + 1]], dtype=np.float32)


def labels_of(prepared: Prepared, split: str, i: int) -> np.ndarray:
    at = prepared.arrays[f"{split}_labels_at"]
    return np.asarray(prepared.arrays[f"{split}_labels"][at[i] : at[i + 1]], dtype=np.int64)


def pad_batch(waves: list[np.ndarray], labels: list[np.ndarray], multiple: int = 1) -> Batch:
    """({"wave": (b, longest rounded up to `multiple`) zero-padded, "lengths": (b,)}, targets (b, longest label) padded with IGNORE)."""
    n = -(-max(len(w) for w in waves) // multiple) * multiple
    x = torch.zeros(len(waves), n)
    y = torch.full((len(labels), max(1, max(len(t) for t in labels))), IGNORE, dtype=torch.long)
    for i, (w, t) in enumerate(zip(waves, labels)):
        x[i, : len(w)] = torch.from_numpy(w)
        y[i, : len(t)] = torch.from_numpy(t)
    return {"wave": x, "lengths": torch.tensor([len(w) for w in waves])}, y


class SpeechData:
    """Utterances as a `Dataset`: sample s of training is row perm_e[s mod n], perm_e a permutation seeded by (seed, epoch)
    and sorted by length within runs of BUCKET samples (a micro-batch of neighbours pads little), with its augmentation
    draws a pure function of (seed, s), so a resumed run sees exactly what an uninterrupted one sees."""

    def __init__(self, prepared: Prepared, *, seed: int, draws: int):
        self.prepared, self.seed, self.draws = prepared, seed, draws
        self.n = count(prepared, "train")
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            lengths = np.diff(self.prepared.arrays["train_wave_at"])
            runs = [perm[i : i + BUCKET] for i in range(0, self.n, BUCKET)]
            self._perms[epoch] = np.concatenate([r[np.argsort(lengths[r], kind="stable")] for r in runs])
        return self._perms[epoch]

    def train_rows(self, samples: range) -> Batch:
        index = np.arange(samples.start, samples.stop)
        rows = [int(self._perm(int(s // self.n))[s % self.n]) for s in index]
        x, y = pad_batch([wave_of(self.prepared, "train", r) for r in rows], [labels_of(self.prepared, "train", r) for r in rows], PAD_TO)
        if self.draws:
            x["draws"] = torch.from_numpy(SampleDraws(self.seed, index).uniform(10, self.draws)).float()
        return x, y

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        return split_batches(self.prepared, "val", micro_batch, max_batches)


def split_batches(prepared: Prepared, split: str, micro_batch: int, max_batches: int = 0) -> Iterator[Batch]:
    """A split's utterances in stored order, micro_batch at a time; max_batches = 0 means all."""
    total = count(prepared, split) if not max_batches else min(count(prepared, split), max_batches * micro_batch)
    for start in range(0, total, micro_batch):
        rows = range(start, min(start + micro_batch, total))
        yield pad_batch([wave_of(prepared, split, r) for r in rows], [labels_of(prepared, split, r) for r in rows])


def augment_draws(d: SpeechDataConfig) -> int:
    """Uniform draws per training utterance the augmentation reads (0 = none)."""
    if not d.augmented:
        return 0
    return _AUGMENT_DRAWS + 4 * d.spec_masks + _REVERB_DRAWS + (_SPEED_DRAWS if d.speed_perturb else 0) + (_WARP_DRAWS if d.vtlp else 0)


IR_BANK = 64  # room impulse responses' noise drawn once (seeded); each clip picks one and its own decay


class SpeechAugment:
    """A training batch {"wave", "lengths", "draws"} -> {"wave", "lengths"}, on the batch's device: a change of playback
    speed (each clip's length follows: its transcript is the same), a warp of its frequency axis (another vocal tract
    length, tempo kept), a synthetic room (exponentially decaying noise,
    RT60 0.1-0.6 s, for a `reverb` share of clips), then AudioAugment's noise of random colour, telephone channel and
    SpecAugment masks (AudioAugment's own speed change, about the centre of a fixed-length clip, is not used)."""

    def __init__(self, d: SpeechDataConfig, rate: int):
        self.rate, self.reverb, self.masks, self.speed, self.vtlp = rate, d.reverb, d.spec_masks, d.speed_perturb, d.vtlp
        self.audio = AudioAugment(rate=rate, time_shift_s=0.0, noise_snr_db=d.noise_snr_db, band_limit_hz=d.band_limit_hz,
                                  spec_masks=d.spec_masks)
        self.ir_noise = torch.randn(IR_BANK, int(0.6 * rate), generator=torch.Generator().manual_seed(rate))

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "draws" not in batch:
            return batch
        x, u, lengths = batch["wave"], batch["draws"], batch["lengths"]
        own = _AUGMENT_DRAWS + 4 * self.masks
        if self.speed:
            x, lengths = self.play(x, u[:, own + _REVERB_DRAWS], lengths)
        if self.vtlp:
            x = self.warp(x, u[:, -1])
        if self.reverb:
            x = self.room(x, u[:, own:], lengths)
        x = self.audio({"wave": x, "draws": u[:, :own]})
        inside = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return {"wave": x * inside, "lengths": lengths}  # noise stays out of the padding the model masks anyway

    def play(self, x: torch.Tensor, u: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clip played at a speed in [1 - speed_perturb, 1 + speed_perturb] from its start (linear interpolation),
        its length divided by the speed; the batch widens to hold the longest in whole PAD_TO blocks."""
        speed = 1.0 + self.speed * (2.0 * u - 1.0)  # (b,)
        out = torch.floor((lengths - 1) / speed).long() + 1  # the last output sample reads at most the last input one
        width = -(-int(out.max()) // PAD_TO) * PAD_TO
        t = torch.arange(width, device=x.device)[None, :] * speed[:, None]
        x = torch.nn.functional.pad(x, (0, max(0, width - x.shape[1])))[:, : max(width, x.shape[1])]
        inside = torch.arange(width, device=x.device)[None, :] < out[:, None]
        return interpolate(x, t) * inside, out

    def warp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Vocal tract length perturbation (Jaitly & Hinton, 2013) on the waveform: each short-time spectrum's frequency
        axis scaled by a in [1 - vtlp, 1 + vtlp] up to WARP_EDGE x Nyquist (a, bent linearly above so that Nyquist
        stays), magnitudes read by linear interpolation with the phase of the nearest source bin, then overlap-added."""
        n_fft = 2 ** math.ceil(math.log2(self.rate // 32))  # 256 at 8 kHz: 32 ms
        window = torch.hann_window(n_fft, device=x.device)
        spec = torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True)  # (b, bins, frames)
        bins = spec.shape[1]
        alpha = (1.0 + self.vtlp * (2.0 * u - 1.0))[:, None]  # (b, 1)
        out_edge = WARP_EDGE * torch.clamp(alpha, max=1.0)  # as shares of Nyquist: where the bend starts, after ...
        in_edge = out_edge / alpha  # ... and before the warp
        f = torch.linspace(0.0, 1.0, bins, device=x.device)[None, :]  # each output bin's frequency / Nyquist
        source = torch.where(f <= out_edge, f / alpha, 1.0 - (1.0 - f) * (1.0 - in_edge) / (1.0 - out_edge))
        at = (source * (bins - 1)).clamp(0, bins - 1)  # (b, bins): fractional source bins
        lo = at.floor().long()
        hi = (lo + 1).clamp_max(bins - 1)
        mag, hop = spec.abs(), n_fft // 4
        pick = lambda t, i: torch.gather(t, 1, i[..., None].expand_as(t))  # noqa: E731  (b, bins, frames) rows at bins i
        warped = torch.lerp(pick(mag, lo), pick(mag, hi), (at - lo)[..., None])
        # phase vocoder: each bin's unwrapped phase (its expected advance per hop plus the wrapped deviation), scaled by
        # a, so the warped bin turns at the warped frequency and overlapping frames add up in phase
        expected = 2 * math.pi * hop * torch.arange(bins, device=x.device)[None, :, None] / n_fft
        step = torch.diff(spec.angle(), dim=2, prepend=torch.zeros_like(mag[..., :1])) - expected
        step = expected + step - 2 * math.pi * torch.round(step / (2 * math.pi))
        phase = pick(torch.cumsum(step, dim=2), at.round().long()) * alpha[..., None]
        return torch.istft(torch.polar(warped, phase), n_fft, hop, window=window, length=x.shape[1])

    def room(self, x: torch.Tensor, u: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x convolved (by FFT) with a decaying-noise impulse response where u[:, 0] < reverb; loudness kept."""
        b, n = x.shape
        noise = self.ir_noise.to(x.device)[(u[:, 2] * IR_BANK).long().clamp_max(IR_BANK - 1)]  # (b, taps)
        t = torch.arange(noise.shape[1], device=x.device) / self.rate
        rt60 = 0.1 + 0.5 * u[:, 1:2]
        ir = noise * torch.exp(-6.9 * t / rt60) * 0.3  # -60 dB at RT60
        ir[:, 0] = 1.0  # the direct path
        size = 2 ** math.ceil(math.log2(n + ir.shape[1]))
        wet = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(ir, size), size)[:, :n]
        wet = wet * (x.abs().amax(1, keepdim=True) / wet.abs().amax(1, keepdim=True).clamp_min(1e-8))
        return torch.where(u[:, :1] < self.reverb, wet, x)

