"""data.source = "hf:NAME" (Hugging Face datasets) for the language model and the classifiers, and FLAC/OGG/MP3 audio.

Every dataset is built here from local files (no hub): each hf: preparation is checked against the
same examples read through largo's own readers (a .jsonl file, an image folder, an audio folder).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from largo.cli import main
from largo.config import build_config
from largo.data.prepare import prepare
from largo.data.tokens import TokenShards
from largo.errors import ConfigError, DataError, MissingDependencyError

pd = pytest.importorskip("pandas")


def _datasets():
    return pytest.importorskip("datasets", reason="hf: sources need datasets: pip install 'largo-train[hfdata]'")


def _docs(n: int = 60, offset: int = 0) -> list[str]:
    return [f"def f{i}(x):\n    return x * {i} + {i % 7}\n# note {i}\n" for i in range(offset, offset + n)]


def _lm(source: str, out: Path, **data: object):
    return build_config({"data": {"source": source, "dir": str(out), "vocab_size": 300, "val_fraction": 0.1, **data}}).data


def _tokens(folder: Path) -> list[int]:
    return [t for split in ("train", "val") for t in TokenShards(folder, split).read(0, len(TokenShards(folder, split))).tolist()]


def test_lm_reads_every_kind_of_dataset_like_the_plain_file_reader(tmp_path: Path) -> None:
    datasets = _datasets()
    docs = _docs()
    with open(tmp_path / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    pd.DataFrame({"text": docs}).to_parquet(tmp_path / "docs.parquet")
    pd.DataFrame({"text": docs}).to_csv(tmp_path / "docs.csv", index=False)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "validation": datasets.Dataset.from_dict({"text": _docs(30, offset=500)})}).save_to_disk(tmp_path / "saved")
    quiet = {"log": lambda _m: None}
    reference = prepare(_lm(str(tmp_path / "docs.jsonl"), tmp_path / "ref"), **quiet)  # largo's own .jsonl reader
    cases = {
        "parquet": _lm("hf:parquet", tmp_path / "p", data_files=[str(tmp_path / "docs.parquet")]),
        "json": _lm("hf:json", tmp_path / "j", data_files=[str(tmp_path / "docs.jsonl")]),
        "csv": _lm("hf:csv", tmp_path / "c", data_files=[str(tmp_path / "docs.csv")]),
        "saved": _lm(f"hf:{tmp_path / 'saved'}", tmp_path / "s"),
        "streamed": _lm("hf:parquet", tmp_path / "st", data_files=[str(tmp_path / "docs.parquet")], streaming=True),
        "streamed saved": _lm(f"hf:{tmp_path / 'saved'}", tmp_path / "ss", streaming=True),
    }
    for name, cfg in cases.items():
        manifest = prepare(cfg, **quiet)
        assert manifest["source"]["documents"] == len(docs), name
        assert manifest["tokenizer"]["sha256"] == reference["tokenizer"]["sha256"], name  # the same BPE, learnt from the same texts
        assert _tokens(Path(cfg.dir)) == _tokens(tmp_path / "ref"), name
        assert len(manifest["settings"]["fingerprint"]) == 64, name
    other = prepare(_lm(f"hf:{tmp_path / 'saved'}", tmp_path / "v", split="validation"), **quiet)
    assert other["source"]["documents"] == 30
    # data.config: a folder whose README declares two configurations (datasets' own convention for local data)
    for name, n in (("small", 20), ("large", 40)):
        (tmp_path / "configs" / name).mkdir(parents=True)
        pd.DataFrame({"text": _docs(n, offset=1000)}).to_parquet(tmp_path / "configs" / name / "train.parquet")
    (tmp_path / "configs" / "README.md").write_text("---\nconfigs:\n- config_name: small\n  data_files: small/*.parquet\n"
                                                    "- config_name: large\n  data_files: large/*.parquet\n---\n")
    for name, n in (("small", 20), ("large", 40)):
        found = prepare(_lm(f"hf:{tmp_path / 'configs'}", tmp_path / f"cfg_{name}", config=name), **quiet)
        assert found["source"]["documents"] == n and found["settings"]["config"] == name
    with pytest.raises(DataError, match=r"BuilderConfig 'medium' not found. Available: \['small', 'large'\]"):
        prepare(_lm(f"hf:{tmp_path / 'configs'}", tmp_path / "cfg_medium", config="medium"), **quiet)
    with pytest.raises(DataError, match=r"no split 'test'; it has train, validation \(set data.split\)"):
        prepare(_lm(f"hf:{tmp_path / 'saved'}", tmp_path / "x", split="test"), **quiet)


def test_a_changed_dataset_is_prepared_again(tmp_path: Path) -> None:
    datasets = _datasets()
    quiet = {"log": lambda _m: None}
    pd.DataFrame({"text": _docs()}).to_parquet(tmp_path / "a.parquet")
    cfg = _lm("hf:parquet", tmp_path / "p", data_files=[str(tmp_path / "a.parquet")])
    first = prepare(cfg, **quiet)
    shard = tmp_path / "p" / "train_000.bin"
    stamp = shard.stat().st_mtime_ns
    assert prepare(cfg, **quiet) == first and shard.stat().st_mtime_ns == stamp  # unchanged: the cache is used
    pd.DataFrame({"text": _docs(90)}).to_parquet(tmp_path / "a.parquet")  # same name, new content
    second = prepare(cfg, **quiet)
    assert second["settings"]["fingerprint"] != first["settings"]["fingerprint"]
    assert second["source"]["documents"] == 90

    datasets.Dataset.from_dict({"text": _docs(40)}).save_to_disk(tmp_path / "saved")
    saved = _lm(f"hf:{tmp_path / 'saved'}", tmp_path / "s")
    before = prepare(saved, **quiet)
    datasets.Dataset.from_dict({"text": _docs(50)}).save_to_disk(tmp_path / "saved2")
    os.replace(tmp_path / "saved2" / "data-00000-of-00001.arrow", tmp_path / "saved" / "data-00000-of-00001.arrow")
    (tmp_path / "saved" / "state.json").write_text((tmp_path / "saved2" / "state.json").read_text())
    after = prepare(saved, **quiet)
    assert after["settings"]["fingerprint"] != before["settings"]["fingerprint"] and after["source"]["documents"] == 50


def test_bad_hf_sources_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _datasets()
    pd.DataFrame({"text": _docs(10)}).to_parquet(tmp_path / "a.parquet")
    cases = [
        ({"source": "hf:someone/corpus"}, "data.source 'hf:someone/corpus': 'someone/corpus' is not a local folder or file, and the "
                                          "Hugging Face Hub is offline (HF_HUB_OFFLINE=1, largo's default)"),
        ({"source": "hf:parquet"}, "data.source 'hf:parquet': the parquet builder reads local files; list them in data.data_files"),
        ({"source": "hf:parquet", "data_files": [str(tmp_path / "a.parquet")], "text_column": "body"},
         "data.source 'hf:parquet': no column 'body' (data.text_column); has ['text']"),
        ({"source": "hf:parquet", "data_files": [str(tmp_path / "missing.parquet")]}, "data.source 'hf:parquet' (split 'train'): "),
    ]
    for data, message in cases:
        config = tmp_path / "bad.toml"
        config.write_text("[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()) + f'dir = "{tmp_path / "out"}"\n')
        assert main(["prepare", str(config)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"largo: error: {message}"), err
    with pytest.raises(ConfigError, match="data.data_files is read by 'hf:' sources"):
        build_config({"data": {"source": "stdlib", "data_files": ["a.parquet"]}})
    assert not (tmp_path / "out" / "manifest.json").exists()


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _tone(freq: float, rate: int = 8000, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t))).astype(np.float32)


def _prepare(cfg: Any, **kw: Any) -> Any:
    """A config's data, prepared by its architecture's spec (which sees the [data] and [model] sections)."""
    from largo.models import get_spec

    return get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, **kw)


def test_classifiers_read_hf_datasets_like_their_own_readers(tmp_path: Path) -> None:
    """Text, images and audio from datasets equal the same examples read from a table or class folders."""
    datasets = _datasets()
    from largo.models import get_spec

    sf = pytest.importorskip("soundfile", reason="FLAC audio needs soundfile: pip install 'largo-train[audio]'")
    quiet = {"log": lambda _m: None}
    rng = np.random.default_rng(0)
    classes = ["cat", "dog"]
    # text: a parquet file through the builder vs the same file through largo's table reader
    texts = [f"review {i}: {'great fun' if i % 2 else 'dull and slow'} {'!' * (i % 3)}" for i in range(40)]
    labels = [classes[i % 2] for i in range(40)]
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(tmp_path / "reviews.parquet")
    text_model = {"arch": "text_classifier", "dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
    a = _prepare(build_config({"model": text_model, "data": {
        "source": "hf:parquet", "data_files": [str(tmp_path / "reviews.parquet")], "dir": str(tmp_path / "t1"), "vocab_size": 300,
        "val_fraction": 0.2}}), **quiet)
    b = _prepare(build_config({"model": text_model, "data": {
        "source": str(tmp_path / "reviews.parquet"), "dir": str(tmp_path / "t2"), "vocab_size": 300, "val_fraction": 0.2}}), **quiet)
    assert a.classes == b.classes == classes
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in b.arrays)

    # images: a saved dataset (Image feature, ClassLabel) vs an image folder holding the same PNG files
    pictures = [(rng.random((8, 8)) * 255).astype(np.uint8) for _ in range(12)]
    names = [classes[i // 6] for i in range(12)]
    for i, (p, c) in enumerate(zip(pictures, names)):
        (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / c / f"{i:02d}.png").write_bytes(_png(p))
    images = datasets.Dataset.from_dict({"img": [{"bytes": _png(p), "path": None} for p in pictures], "label": [classes.index(c) for c in names]})
    images.cast_column("img", datasets.Image()).cast_column("label", datasets.ClassLabel(names=classes)).save_to_disk(tmp_path / "img_ds")
    vit = {"arch": "vit", "dim": 32, "n_layers": 1, "n_heads": 2, "patch_size": 4, "max_seq_len": 16}
    a = _prepare(build_config({"model": vit, "data": {"source": f"hf:{tmp_path / 'img_ds'}", "image_column": "img",
                                                                      "dir": str(tmp_path / "i1"), "val_fraction": 0.2}}), **quiet)
    b = _prepare(build_config({"model": vit, "data": {"source": str(tmp_path / "imgs"), "dir": str(tmp_path / "i2"),
                                                                      "val_fraction": 0.2}}), **quiet)
    assert a.classes == b.classes == classes
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in b.arrays)

    # audio: a saved dataset of FLAC bytes (Audio feature, string labels) vs a folder of the same FLAC files
    tones = [_tone(300 + 40 * i) for i in range(10)]
    names = [classes[i // 5] for i in range(10)]
    blobs = []
    for i, (x, c) in enumerate(zip(tones, names)):
        (tmp_path / "clips" / c).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "clips" / c / f"{i:02d}.flac", x, 8000)
        blobs.append((tmp_path / "clips" / c / f"{i:02d}.flac").read_bytes())
    clips = datasets.Dataset.from_dict({"audio": [{"bytes": blob, "path": None} for blob in blobs], "label": names})
    clips.cast_column("audio", datasets.Audio()).save_to_disk(tmp_path / "audio_ds")
    audio = {"arch": "audio", "dim": 32, "n_layers": 1, "n_heads": 2, "sample_rate": 8000, "n_mels": 16}
    source = {"clip_seconds": 0.5, "val_fraction": 0.2}
    a = _prepare(build_config({"model": audio, "data": {"source": f"hf:{tmp_path / 'audio_ds'}", "streaming": True,
                                                                          "dir": str(tmp_path / "a1"), **source}}), **quiet)
    b = _prepare(build_config({"model": audio, "data": {"source": str(tmp_path / "clips"), "dir": str(tmp_path / "a2"),
                                                                          **source}}), **quiet)
    assert a.classes == b.classes == classes
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in b.arrays)
    assert float(np.abs(a.arrays["train_x"].astype(np.float32)).max()) > 0.1  # real clips, not silence


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_audio_folders_read_flac_ogg_mp3_and_wav_needs_no_soundfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf = pytest.importorskip("soundfile", reason="FLAC/OGG/MP3 need soundfile: pip install 'largo-train[audio]'")
    from largo.data import audio_io as audio
    from largo.data.audio import audio_folder
    from largo.data.audio_io import read_audio

    rate, tones = 16000, {"low": 440.0, "high": 1250.0}
    for label, freq in tones.items():
        (tmp_path / "mixed" / label).mkdir(parents=True)
        x = np.round(_tone(freq, rate, 0.5) * 32767).astype(np.int16)  # the same 16-bit samples into every file
        for fmt, ext in (("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")):
            sf.write(tmp_path / "mixed" / label / f"clip.{ext}", x, rate, format=fmt)
    for label, freq in tones.items():
        folder = tmp_path / "mixed" / label
        wav, wav_rate = read_audio(folder / "clip.wav")  # largo's own WAV parser
        flac, flac_rate = read_audio(folder / "clip.flac")
        assert wav_rate == flac_rate == rate and np.array_equal(wav, flac)  # lossless: the same samples
        for lossy in ("clip.ogg", "clip.mp3"):
            y, y_rate = read_audio(folder / lossy)
            assert y_rate == rate and abs(_peak_hz(y, rate) - freq) < 5 and 0.3 < np.abs(y).max() < 0.7
    clips, names = audio_folder(tmp_path / "mixed", rate, rate // 2)
    assert names == ["high"] * 4 + ["low"] * 4 and clips.shape == (8, rate // 2)
    assert [round(_peak_hz(c.astype(np.float32), rate)) for c in clips] == [1250] * 4 + [440] * 4

    real_import = audio.require.__globals__["importlib"].import_module

    def no_soundfile(name: str, *args: object):
        if name == "soundfile":
            raise ImportError("No module named 'soundfile'")
        return real_import(name, *args)

    monkeypatch.setattr(audio.require.__globals__["importlib"], "import_module", no_soundfile)
    with pytest.raises(MissingDependencyError) as info:  # every missing optional package: one error type
        read_audio(tmp_path / "mixed" / "low" / "clip.flac")
    assert str(info.value) == f"{tmp_path / 'mixed' / 'low' / 'clip.flac'}: reading FLAC, OGG or MP3 audio needs soundfile: pip install 'largo-train[audio]'"
    assert read_audio(tmp_path / "mixed" / "low" / "clip.wav")[1] == rate  # WAV keeps working without it
