"""Audio in: WAV parsing (PCM 8/16/24/32-bit, float32), FLAC/OGG/MP3 through soundfile, band-limited resampling,
silence trimming and the fixed-length clips every audio preparation stores."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import torch

from largo.errors import DataError
from largo.optional import require

PEAK = 0.5  # stored clips are scaled to this peak amplitude


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
