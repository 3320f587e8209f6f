"""data.source = "espeak-digits": "zero".."nine" synthesised offline by espeak-ng (every English accent x every voice
variant, each at its own speed and pitch) and flite's voices at several speeds and pitches.

Whole voices are held out for validation: a voice is an espeak variant (across all accents) or a flite voice.
Rows are the raw waveforms at the engine's rate; the audio preparation resamples, trims and centres them.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largo.data.audio_io import parse_wav, read_wav
from largo.data.sources.registry import AUDIO, DataSource, Roles, Row, SourceStats, register_source
from largo.data.split import even_subset, is_validation
from largo.errors import DataError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # awb_time is left out: it only speaks clock times
FLITE_RENDITIONS = 24  # (speed, pitch) draws per flite voice


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


def held_out_renditions(val_fraction: float, max_rows: int) -> tuple[list[Rendition], list[Rendition]]:
    """(train, val) speakers, val = whole held-out voices (every 1/val_fraction-th); max_rows keeps a voice-disjoint subset."""
    items = renditions()
    voices = sorted({r.voice for r in items})
    held = {v for i, v in enumerate(voices) if is_validation(i, val_fraction)}
    train = [r for r in items if r.voice not in held]
    val = [r for r in items if r.voice in held]
    if max_rows:  # a small but still voice-disjoint set: renditions spread over the lists
        keep = math.ceil(max_rows / len(DIGITS))
        train = [train[i] for i in even_subset(len(train), keep)]
        val = [val[i] for i in even_subset(len(val), max(1, round(keep * val_fraction / (1 - val_fraction))))]
    return train, val


class EspeakDigitsSource(DataSource):
    """Synthetic spoken digits: rows of (waveform, rate), split by voice; data.max_rows thins the speakers before synthesis."""

    label_order = list(DIGITS)

    def files(self) -> list[tuple[Path, str]]:
        return [(Path(p), Path(p).name) for p in (shutil.which("espeak-ng"), shutil.which("flite")) if p]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        train, val = held_out_renditions(self.data.val_fraction, self.data.max_rows)
        for split, items in (("train", train), ("val", val)):
            self.log(f"prepare: synthesising {len(items) * len(DIGITS):,} spoken digits with espeak-ng and flite")
            with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=4) as pool:
                results = list(pool.map(lambda r: synth(r, Path(tmp)), items))
            for words, rate in results:
                yield from ({"audio": (x, rate), "label": digit, "split": split} for x, digit in zip(words, DIGITS))


register_source("espeak-digits", EspeakDigitsSource, provides=[AUDIO])
