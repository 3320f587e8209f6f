"""Audio: WAV (and, with soundfile, FLAC/OGG/MP3) reading, resampling, silence trimming; spoken digits synthesised offline;
audio folders and "hf:" datasets with an audio column.

"espeak-digits" synthesises "zero".."nine" with espeak-ng (every English accent x every voice
variant, each at its own speed and pitch) and flite's voices at several speeds and pitches.
Whole voices are held out for validation: a voice is an espeak variant (across all accents) or
a flite voice. "asterisk-digits" is a real human speaker (Debian's Asterisk prompts) for testing.
Clips are stored as float16 (n, clip_samples) at model.sample_rate, speech centred.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, files_fingerprint, labels_to_ids
from largo.data.hf import fingerprint, hf_source, is_hf, read_hf_media
from largo.data.images import class_folders
from largo.data.prepare import is_validation
from largo.data.config import ClassDataConfig, check_non_negative
from largo.data.draws import SampleDraws
from largo.errors import ConfigError, DataError
from largo.optional import require

if TYPE_CHECKING:  # the run config is handed in at run time; only its [data] and [model] fields are read
    from largo.config import RunConfig

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


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # awb_time is left out: it only speaks clock times
FLITE_RENDITIONS = 24  # (speed, pitch) draws per flite voice
ASTERISK_DIGITS = Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}  # .wav read here; the rest through soundfile (libsndfile)
PEAK = 0.5  # stored clips are scaled to this peak amplitude
_VERSION = 1  # bump when the preparation below changes what it stores


# ---- reading, resampling, trimming -------------------------------------------------------------

def parse_wav(data: bytes, name: str = "<wav>") -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the rate of a PCM (8/16/24/32-bit) or float32 WAV.

    A data chunk whose size field overruns the file (as written by streaming encoders) runs to the end.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DataError(f"{name}: not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            code, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if code == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real code starts the sub-format GUID
                code = struct.unpack("<H", body[24:26])[0]
            fmt = (code, channels, rate, bits)
        elif tag == b"data":
            if fmt is None:
                raise DataError(f"{name}: data chunk before fmt chunk")
            return _decode_pcm(body, *fmt, name=name), fmt[2]
        pos += 8 + size + (size & 1)
    raise DataError(f"{name}: no data chunk")


def _decode_pcm(body: bytes, code: int, channels: int, rate: int, bits: int, *, name: str) -> np.ndarray:
    width = bits // 8
    body = body[: len(body) // (width * channels) * width * channels]
    if code == 3 and bits == 32:
        x = np.frombuffer(body, dtype="<f4").astype(np.float32)
    elif code == 1 and bits == 8:
        x = (np.frombuffer(body, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif code == 1 and bits in (16, 32):
        x = np.frombuffer(body, dtype=f"<i{width}").astype(np.float32) / float(1 << (bits - 1))
    elif code == 1 and bits == 24:
        b = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / float(1 << 23)
    else:
        raise DataError(f"{name}: WAV format {code} with {bits}-bit samples is not supported; use PCM 8/16/24/32-bit or float32")
    return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        return parse_wav(path.read_bytes(), str(path))
    except (OSError, struct.error) as e:
        raise DataError(f"{path}: not a readable WAV file ({e})") from None


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate of an encoded file: WAV here, FLAC/OGG/MP3 (and more) with soundfile."""
    if data[:4] == b"RIFF":
        try:
            return parse_wav(data, name)
        except struct.error as e:
            raise DataError(f"{name}: not a readable WAV file ({e})") from None
    sf = require("soundfile", f"{name}: reading FLAC, OGG or MP3 audio")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{name}: not a readable audio file ({' '.join(str(e).split())})") from None
    return x.mean(axis=1), int(rate)


def read_audio(ref: Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """An audio file (.wav read by largo's parser, others by soundfile) or encoded bytes, as mono float32 and its rate."""
    if isinstance(ref, Path):
        if ref.suffix.lower() == ".wav":
            return read_wav(ref)
        try:
            data = ref.read_bytes()
        except OSError as e:
            raise DataError(f"{ref}: cannot read ({e.strerror})") from None
        return decode_audio(data, name or str(ref))
    return decode_audio(ref, name or "<audio>")


def resample(x: np.ndarray, orig: int, new: int, *, zeros: int = 16, rolloff: float = 0.99) -> np.ndarray:
    """Band-limited (Hann-windowed sinc) resampling of a 1-D signal from `orig` Hz to `new` Hz.

    Polyphase: after dividing both rates by their gcd, output phase j of every block of `new`
    samples is a dot product of the input with its own sinc kernel, computed as one conv1d.
    """
    if orig == new:
        return x.astype(np.float32)
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates
    width = math.ceil(zeros * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (k,) input offsets in input periods
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + taps[None]) * cutoff  # (new, k)
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (cutoff / orig)
    wave_t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    padded = torch.nn.functional.pad(wave_t[None, None], (width, width + orig))
    out = torch.nn.functional.conv1d(padded, kernels[:, None], stride=orig)  # (1, new, blocks)
    out = out[0].t().reshape(-1)[: math.ceil(new * len(x) / orig)]
    return out.float().numpy()


def trim_silence(x: np.ndarray, rate: int, *, floor_db: float = -40.0, margin_s: float = 0.03) -> np.ndarray:
    """The span from the first to the last 10 ms frame within floor_db of the loudest, plus a margin."""
    hop = max(1, rate // 100)
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt((x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    if rms.max() == 0 or len(loud) == 0:
        return x[:0]
    margin = int(margin_s * rate)
    return x[max(0, loud[0] * hop - margin) : min(len(x), (loud[-1] + 1) * hop + margin)]


def fit_clip(x: np.ndarray, n: int) -> np.ndarray:
    """Centre x in n samples: zero padding around a short clip, the middle n samples of a long one."""
    out = np.zeros(n, dtype=np.float32)
    if len(x) >= n:
        start = (len(x) - n) // 2
        out[:] = x[start : start + n]
    else:
        start = (n - len(x)) // 2
        out[start : start + len(x)] = x
    peak = np.abs(out).max()
    return out * (PEAK / peak) if peak > 0 else out


def to_clip(x: np.ndarray, rate: int, target_rate: int, clip_samples: int) -> np.ndarray:
    """Resample, trim silence, centre into the clip, normalise the peak."""
    return fit_clip(trim_silence(resample(x, rate, target_rate), target_rate), clip_samples)


# ---- synthesis ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rendition:
    """One synthetic speaker at one speed and pitch, saying all ten digits."""

    voice: str  # the held-out unit: an espeak variant (over all accents) or a flite voice
    engine: str  # "espeak" or "flite"
    name: str  # espeak "en-us+klatt3", or a flite voice name
    speed: float  # espeak words per minute, or flite duration stretch
    pitch: float  # espeak pitch 0..99, or flite mean F0 in Hz


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise DataError(f"data.source 'espeak-digits' needs {tool}; install it with: apt-get install {package}")
    return path


def espeak_variants() -> list[str]:
    """Voice variant names espeak-ng knows (the '!v/' voices), sorted."""
    out = subprocess.run([_need("espeak-ng", "espeak-ng"), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[4].split("/", 1)[1] for line in out.splitlines()[1:] if len(line.split()) >= 5 and "/" in line.split()[4]}
    return sorted(names)


def renditions() -> list[Rendition]:
    """Every speaker of the synthetic set; speeds and pitches are drawn from a generator seeded by the name."""
    out = []
    for variant in espeak_variants():
        for accent in ESPEAK_ACCENTS:
            rng = np.random.default_rng(zlib.crc32(f"{accent}+{variant}".encode()))
            out.append(Rendition(variant, "espeak", f"{accent}+{variant}", float(rng.integers(90, 201)), float(rng.integers(15, 86))))
    _need("flite", "flite")
    for voice in FLITE_VOICES:
        rng = np.random.default_rng(zlib.crc32(voice.encode()))
        for _ in range(FLITE_RENDITIONS):
            out.append(Rendition(f"flite-{voice}", "flite", voice, float(rng.uniform(0.9, 1.6)), float(rng.uniform(80, 220))))
    return out


def _split_words(x: np.ndarray, rate: int, count: int) -> list[np.ndarray] | None:
    """Cut speech separated by >= 250 ms pauses into `count` pieces; None if the count differs."""
    hop = rate // 100
    n = len(x) // hop
    rms = np.sqrt((x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))
    loud = rms >= rms.max() * 10 ** (-45 / 20)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    spans = list(zip(edges[::2], edges[1::2]))  # [start, stop) frames of loud runs
    merged = [list(spans[0])] if spans else []
    for start, stop in spans[1:]:
        if start - merged[-1][1] < 25:  # a gap under 250 ms is inside a word (a stop consonant)
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    if len(merged) != count:
        return None
    # Quiet word edges (an /s/ or /f/) sit below the loudness test: keep half of each pause on both sides.
    bounds = [0] + [(a[1] + b[0]) // 2 for a, b in zip(merged, merged[1:])] + [n]
    return [x[bounds[i] * hop : bounds[i + 1] * hop] for i in range(count)]


def synth(r: Rendition, workdir: Path) -> tuple[list[np.ndarray], int]:
    """The ten digits in rendition r, as raw waveforms at the engine's rate."""
    if r.engine == "espeak":
        ssml = "<speak>" + "<break time='600ms'/>".join(DIGITS) + "</speak>"
        cmd = ["espeak-ng", "-m", "-v", r.name, "-s", str(int(r.speed)), "-p", str(int(r.pitch)), "--stdout", ssml]
        x, rate = parse_wav(subprocess.run(cmd, capture_output=True, check=True).stdout, r.name)
        words = _split_words(x, rate, len(DIGITS))
        if words is not None:
            return words, rate
        cmds = [cmd[:-1] + [w] for w in DIGITS]  # a voice that pauses inside a word: one call per digit
        pieces = [parse_wav(subprocess.run(c, capture_output=True, check=True).stdout, r.name) for c in cmds]
        return [p for p, _ in pieces], pieces[0][1]
    out, rate = [], 16000
    for word in DIGITS:
        path = workdir / f"{r.name}-{r.speed:.3f}-{r.pitch:.1f}-{word}.wav"
        subprocess.run(["flite", "-voice", r.name, "--setf", f"duration_stretch={r.speed}", "--setf",
                        f"int_f0_target_mean={r.pitch}", "-t", word, "-o", str(path)], capture_output=True, check=True)
        x, rate = read_wav(path)
        path.unlink()
        out.append(x)
    return out, rate


def synthesise(items: list[Rendition], rate: int, clip_samples: int, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """All renditions' digits as (n, clip_samples) float16 clips and int64 labels, in the order given."""
    log(f"prepare: synthesising {len(items) * len(DIGITS):,} spoken digits with espeak-ng and flite")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda r: synth(r, Path(tmp)), items))
    clips = [to_clip(x, src_rate, rate, clip_samples) for words, src_rate in results for x in words]
    labels = np.tile(np.arange(len(DIGITS), dtype=np.int64), len(items))
    return np.stack(clips).astype(np.float16), labels


# ---- sources -----------------------------------------------------------------------------------

def espeak_digits(cfg: RunConfig, clip_samples: int, log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Synthetic train/val sets, validation = whole held-out voices (every 1/val_fraction-th voice)."""
    items = renditions()
    voices = sorted({r.voice for r in items})
    held = {v for i, v in enumerate(voices) if is_validation(i, cfg.data.val_fraction)}
    train = [r for r in items if r.voice not in held]
    val = [r for r in items if r.voice in held]
    if cfg.data.max_rows:  # a small but still voice-disjoint set: renditions spread over the lists
        keep = math.ceil(cfg.data.max_rows / len(DIGITS))
        train = [train[i] for i in even_subset(len(train), keep)]
        val = [val[i] for i in even_subset(len(val), max(1, round(keep * cfg.data.val_fraction / (1 - cfg.data.val_fraction))))]
    tx, ty = synthesise(train, cfg.model.sample_rate, clip_samples, log)
    vx, vy = synthesise(val, cfg.model.sample_rate, clip_samples, log)
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}, list(DIGITS)


def asterisk_digits(rate: int, clip_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """A real human speaker saying 0..9 (8 kHz telephone prompts), as clips at `rate`."""
    files = [ASTERISK_DIGITS / f"{d}.wav" for d in range(10)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"data.test_source 'asterisk-digits': {missing[0]} is missing; install it with: apt-get install asterisk-core-sounds-en-wav")
    clips = [to_clip(*read_wav(f), rate, clip_samples) for f in files]
    return np.stack(clips).astype(np.float16), np.arange(10, dtype=np.int64)


def audio_folder(root: Path, rate: int, clip_samples: int) -> tuple[np.ndarray, list[str]]:
    """Every audio file under root/<class>/ as a clip, and its class name."""
    files = class_folders(root, AUDIO_SUFFIXES, "audio")
    clips = [to_clip(*read_audio(f), rate, clip_samples) for f, _ in files]
    return np.stack(clips).astype(np.float16), [c for _, c in files]


def audio_clips(source: str, cfg: RunConfig, rate: int, clip_samples: int, *, test: bool = False) -> tuple[np.ndarray, list[str]]:
    """A folder or a dataset split with an audio column: clips and their class names."""
    if not is_hf(source):
        return audio_folder(Path(source), rate, clip_samples)
    d = cfg.data
    refs, names = read_hf_media(hf_source(d, test=test), d.audio_column, "audio", d.label_column, "audio_column")
    clips = [to_clip(*read_audio(r, f"{source} row {i}"), rate, clip_samples) for i, r in enumerate(refs)]
    return np.stack(clips).astype(np.float16), names


def _fingerprint(source: str, cfg: RunConfig, *, test: bool = False) -> str:
    if is_hf(source):
        return fingerprint(hf_source(cfg.data, test=test))
    return files_fingerprint(_source_files(source))


def _source_files(source: str) -> list[Path]:
    if source == "espeak-digits":
        return [Path(p) for p in (shutil.which("espeak-ng"), shutil.which("flite")) if p]
    if source == "asterisk-digits":
        return [f for f in (ASTERISK_DIGITS / f"{d}.wav" for d in range(10)) if f.is_file()]
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"data.source {source!r}: use 'espeak-digits', a folder with one subfolder of audio files per class, or 'hf:NAME'")
    return [p for p in path.rglob("*") if p.is_file()]


def _build(cfg: RunConfig, clip_samples: int, log: Callable[[str], None]) -> Callable[[], Built]:
    d, rate = cfg.data, cfg.model.sample_rate

    def build() -> Built:
        if d.source == "espeak-digits":
            arrays, classes = espeak_digits(cfg, clip_samples, log)
        else:
            x, names = audio_clips(d.source, cfg, rate, clip_samples)
            y, classes = labels_to_ids(names)
            val = np.array([is_validation(i, d.val_fraction) for i in range(len(y))], dtype=bool)
            keep = np.flatnonzero(~val)[even_subset(int((~val).sum()), d.max_rows)]
            arrays = {"train_x": x[keep], "train_y": y[keep], "val_x": x[val], "val_y": y[val]}
        if d.test_source:
            if d.test_source == "asterisk-digits":
                tx, names = asterisk_digits(rate, clip_samples)[0], [DIGITS[i] for i in range(10)]
            else:
                tx, names = audio_clips(d.test_source, cfg, rate, clip_samples, test=True)
            unknown = sorted(set(names) - set(classes))
            if unknown:
                raise DataError(f"data.test_source {d.test_source!r}: classes {unknown} are not among the training classes {classes}")
            arrays["test_x"], arrays["test_y"] = tx, np.array([classes.index(n) for n in names], dtype=np.int64)
        return Built(arrays, {"classes": classes})

    return build


def prepare_audio(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the audio clips for cfg."""
    d = cfg.data
    clip_samples = round(d.clip_seconds * cfg.model.sample_rate)
    test = _fingerprint(d.test_source, cfg, test=True) if d.test_source else ""
    settings = {
        "kind": "audio", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": _fingerprint(d.source, cfg) + test, "val_fraction": d.val_fraction, "max_rows": d.max_rows,
        "sample_rate": cfg.model.sample_rate, "clip_samples": clip_samples,
    }
    return cached_arrays(d.dir, settings, _build(cfg, clip_samples, log), force=force, log=log)


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
        x = _interpolate(x, t)  # sample j reads time t_j
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


def _interpolate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x (b, n) read at fractional times t (b, n) by linear interpolation, zero outside the clip."""
    n = x.shape[1]
    padded = torch.nn.functional.pad(x, (1, 1))  # zeros either side: out-of-range reads land on them
    t = t.clamp(-1.0, float(n))  # beyond the clip both neighbours are the zero pads
    i0 = t.floor()
    index = (i0 + 1).long()  # padded index of floor(t), in [0, n + 1]
    left, right = torch.gather(padded, 1, index), torch.gather(padded, 1, (index + 1).clamp(max=n + 1))
    return torch.lerp(left, right, t - i0)
