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
    sf = require("soundfile", f"{name}: reading FLAC, OGG or MP3 audio", DataError)
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


def audio_transform(*, rate: int, time_shift_s: float, noise_snr_db: float, band_limit_hz: float,
                    speed_perturb: float = 0.0, spec_masks: int = 0) -> Transform:
    """float16 clips (b, n) -> float32; training clips sped up or slowed, shifted in time, mixed with noise, band-limited."""
    max_shift = round(time_shift_s * rate)

    def transform(rows: np.ndarray, rngs: list[np.random.Generator] | None) -> torch.Tensor:
        x = rows.astype(np.float32)
        if rngs is not None:
            x = augment_audio(x, rngs, rate=rate, max_shift=max_shift, noise_snr_db=noise_snr_db, band_limit_hz=band_limit_hz,
                              speed_perturb=speed_perturb, spec_masks=spec_masks)
        return torch.from_numpy(x)

    return transform


def augment_audio(
    x: np.ndarray, rngs: list[np.random.Generator], *, rate: int, max_shift: int, noise_snr_db: float, band_limit_hz: float,
    speed_perturb: float = 0.0, spec_masks: int = 0,
) -> np.ndarray:
    """Per clip: played at a speed in [1 - speed_perturb, 1 + speed_perturb]; a shift in [-max_shift, max_shift] samples;
    noise of random colour at an SNR in [noise_snr_db, 40] dB; then, for half the clips, a channel that passes only
    [0..300 Hz, band_limit_hz..Nyquist] (a telephone line); last, spec_masks silenced spans and removed bands."""
    out = np.zeros_like(x)
    n = x.shape[1]
    for i, rng in enumerate(rngs):
        clip = change_speed(x[i], rng.uniform(1 - speed_perturb, 1 + speed_perturb)) if speed_perturb else x[i]
        shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
        src = clip[max(0, -shift) : n - max(0, shift)]
        out[i, max(0, shift) : max(0, shift) + len(src)] = src
        if noise_snr_db:
            out[i] += coloured_noise(rng, n, float((out[i] ** 2).mean()), rng.uniform(noise_snr_db, 40.0))
        if band_limit_hz and rng.random() < 0.5:
            out[i] = band_pass(out[i], rate, rng.uniform(0.0, 300.0), rng.uniform(band_limit_hz, rate / 2))
        if spec_masks:
            out[i] = spec_mask(out[i], rng, rate, spec_masks)
    return out


def spec_mask(x: np.ndarray, rng: np.random.Generator, rate: int, count: int, *, max_s: float = 0.06,
              max_hz: float = 300.0, top_hz: float = 4000.0) -> np.ndarray:
    """SpecAugment on the waveform: `count` spans of up to max_s silenced and `count` bands of up to max_hz
    (below top_hz, where speech carries the digits) removed for the whole clip."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    for _ in range(count):
        low = rng.uniform(0.0, top_hz)
        spec[(freqs >= low) & (freqs < low + rng.uniform(0.0, max_hz))] = 0.0
    out = np.fft.irfft(spec, len(x)).astype(np.float32)
    for _ in range(count):
        width = int(rng.uniform(0.0, max_s) * rate)
        start = int(rng.integers(0, max(1, len(x) - width)))
        out[start : start + width] = 0.0
    return out


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """x played `factor` times faster, about its centre (linear interpolation), in the same number of samples.

    Like a tape run fast or slow: duration, pitch and formants scale together, the classic
    speed perturbation that imitates a different speaker (Ko et al., 2015).
    """
    n = len(x)
    t = (np.arange(n) - n / 2) * factor + n / 2  # output sample i reads input time t[i]
    return np.interp(t, np.arange(n), x, left=0.0, right=0.0).astype(np.float32)


def band_pass(x: np.ndarray, rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero the spectrum outside [low_hz, high_hz], with 100 Hz raised-cosine edges (an FFT filter)."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    rise = np.clip((freqs - low_hz + 50.0) / 100.0, 0.0, 1.0)
    fall = np.clip((high_hz + 50.0 - freqs) / 100.0, 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return np.fft.irfft(spec * gain, len(x)).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, signal_power: float, snr_db: float) -> np.ndarray:
    """n samples of noise with amplitude spectrum ~ f^-a, a uniform in [0, 1] (white to brown), at the given SNR."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec *= np.maximum(np.arange(len(spec)), 1.0) ** -rng.uniform(0.0, 1.0)
    noise = np.fft.irfft(spec, n)
    scale = math.sqrt(signal_power / (float((noise**2).mean()) + 1e-12) / 10 ** (snr_db / 10))
    return (noise * scale).astype(np.float32)
