"""What a speech synthesiser reports and writes: synthesis of the held-out prompts (predicted durations, Griffin-Lim),
their intelligibility (model.recogniser's CER on them, jiwer) next to the recogniser's CER on the real recordings of the
same prompts (the floor) and on flite's synthesis of them (a reference synthesiser), mel-cepstral distortion against
the real recordings (DTW by librosa), WAVs and spectrograms of 8 held-out prompts, and `largo speak`.
`model` is a models/tts.py TTSModel (not imported here: tts.py imports this module).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import wave as wavfile
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.data.arrays import Prepared
from largo.data.audio_io import read_wav
from largo.data.speech import utterance
from largo.data.transcripts import check_speakable, encode, normalise
from largo.data.tts import count, piece
from largo.errors import ConfigError, DataError
from largo.models.asr import jiwer_scores, transcribe
from largo.models.results import GenerateRequest, TaskResults
from largo.models.recogniser import load_recogniser
from largo.models.vocoder import griffin_lim, mcd
from largo.optional import require

RESULTS_FILE = "tts_results.json"  # {"metrics", "baselines"} of the finished run
PROMPTS_CSV = "tts_prompts.csv"  # per held-out prompt: name, reference, hypothesis, cer, mcd
SAMPLES_DIR = "tts_samples"  # <name>_real.wav, <name>_synth.wav, <name>.png for SAMPLE_COUNT held-out prompts
SAMPLE_COUNT = 8
FLITE_VOICE = "slt"  # flite's US English female voice (the speaker is a US English woman)
WINDOW_S = 8.0  # the recogniser hears long clips in windows of at most this (its data.window_seconds default)


def synthesise(model: nn.Module, text: str) -> np.ndarray:
    """Raw text -> waveform at the model's rate (normalised as the recogniser's transcripts, Griffin-Lim)."""
    spoken = check_speakable(text)
    try:
        mel = model.infer(encode(spoken))
    except ValueError as e:
        raise DataError(f"text {text[:60]!r}: too long to say in one go ({e} > model.max_seq_len "
                        f"{model.cfg.max_seq_len}); split it into sentences") from None
    return griffin_lim(mel.cpu(), model.cfg.analysis, iterations=model.cfg.griffin_lim_iters)


def flite_wave(text: str, rate: int, workdir: Path) -> np.ndarray:
    """flite's synthesis of the normalised text (voice FLITE_VOICE) at `rate`, trimmed and peak-normalised like the data."""
    if shutil.which("flite") is None:
        raise DataError("flite is not installed; the flite baseline needs it: apt-get install flite")
    path = workdir / "flite.wav"
    subprocess.run(["flite", "-voice", FLITE_VOICE, "-t", normalise(text), "-o", str(path)], capture_output=True,
                   check=True, timeout=120)
    x, wave_rate = read_wav(path)
    return utterance(x, wave_rate, rate)


def recognised(judge: torch.nn.Module, waves: list[np.ndarray], refs: list[str], device: torch.device) -> tuple[list[str], dict[str, float]]:
    """The recogniser's transcripts of waves and their corpus CER/WER (jiwer) against refs."""
    hyps = transcribe(judge, waves, window_s=WINDOW_S, device=device)
    return hyps, jiwer_scores(refs, hyps)


def tts_results(model: nn.Module, prepared: Prepared, *, device: torch.device, limit: int | None,
                log: Callable[[str], None]) -> TaskResults:
    """Intelligibility and MCD of the synthesised held-out prompts, with the real_recordings and flite baselines."""
    cfg, n = model.cfg, count(prepared, "test") if limit is None else min(limit, count(prepared, "test"))
    judge, judge_path = load_recogniser(cfg.recogniser, sample_rate=cfg.sample_rate, device=device, log=log)
    names, texts = prepared.meta["test_names"][:n], prepared.meta["test_texts"][:n]
    refs = [normalise(t) for t in texts]
    model.eval()
    real = [piece(prepared, "test", "wave", i).astype(np.float32) for i in range(n)]
    synth = [synthesise(model, t) for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        flite = [flite_wave(t, cfg.sample_rate, Path(tmp)) for t in texts]
    hyps, ours = recognised(judge, synth, refs, device)
    _, floor = recognised(judge, real, refs, device)
    _, theirs = recognised(judge, flite, refs, device)
    analysis = cfg.analysis
    mcds = [mcd(r, s, analysis) for r, s in zip(real, synth)]
    flite_mcd = float(np.mean([mcd(r, f, analysis) for r, f in zip(real, flite)]))
    jiwer = require("jiwer", "intelligibility (CER)")
    predictions = [{"input": t, "reference": f"{name}: {r}", "output": h, "cer": 100.0 * jiwer.cer(r, h), "mcd": m}
                   for name, t, r, h, m in zip(names, texts, refs, hyps, mcds)]
    metrics = {"intelligibility_cer": ours["cer"], "intelligibility_wer": ours["wer"], "mcd": float(np.mean(mcds)),
               "test_prompts": float(n)}
    baselines = {"real_recordings": {"intelligibility_cer": floor["cer"], "intelligibility_wer": floor["wer"]},
                 "flite": {"intelligibility_cer": theirs["cer"], "intelligibility_wer": theirs["wer"], "mcd": flite_mcd}}
    lines = [f"intelligibility: the recogniser {judge_path} (greedy CTC) on {n} held-out prompts; CER/WER by jiwer "
             f"{package_version('jiwer')} over normalised text (data/transcripts.py)",
             f"MCD: c1..c13 of the cosine series of natural-log mel amplitudes ({cfg.n_mels} bands), dB, along librosa "
             f"{package_version('librosa')}'s DTW path; flite voice {FLITE_VOICE}; Griffin-Lim {cfg.griffin_lim_iters} iterations"]
    return TaskResults(metrics, baselines, predictions, lines)


def write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    """16-bit PCM mono WAV (stdlib wave), written to a temporary name and renamed: no half file on failure."""
    pcm = (np.clip(wave, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
    tmp = path.with_name(f".{path.name}.tmp")
    with wavfile.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    os.replace(tmp, path)


def draw_pair(path: Path, real: torch.Tensor, synth: torch.Tensor, title: str, hop_s: float) -> bool:
    """Log-mel of the real recording above the synthesised one's, one PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.6), constrained_layout=True)
    low = float(min(real.min(), synth.min()))
    for ax, mel, label in zip(axes, (real, synth), ("real recording", "synthesised")):
        ax.imshow(mel.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=low, extent=(0, len(mel) * hop_s, 0, mel.shape[1]))
        ax.set_ylabel(f"{label}\nmel band", fontsize=8)
    axes[0].set_title(title[:150], fontsize=8, loc="left")
    axes[1].set_xlabel("seconds")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_run_files(model: nn.Module, prepared: Prepared, run_dir: Path, *, device: torch.device,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """tts_results.json, tts_prompts.csv, and WAVs (real, synthesised) and spectrograms of SAMPLE_COUNT held-out prompts."""
    results = tts_results(model, prepared, device=device, limit=None, log=log)
    (run_dir / RESULTS_FILE).write_text(json.dumps(results.as_json(), indent=1, sort_keys=True) + "\n")
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["name", "reference", "hypothesis", "cer", "mcd"])
    for p in results.predictions:
        out.writerow([p["reference"].split(":")[0], p["reference"].split(": ", 1)[1], p["output"], f"{p['cer']:.2f}", f"{p['mcd']:.2f}"])
    (run_dir / PROMPTS_CSV).write_text(buf.getvalue())
    samples = run_dir / SAMPLES_DIR
    samples.mkdir(exist_ok=True)
    cfg, n = model.cfg, count(prepared, "test")
    for i in np.linspace(0, n - 1, min(SAMPLE_COUNT, n)).round().astype(int):
        name, text = prepared.meta["test_names"][i].replace("/", "_"), prepared.meta["test_texts"][i]  # "digits/day-3"
        real, synth = piece(prepared, "test", "wave", int(i)).astype(np.float32), synthesise(model, text)
        write_wav(samples / f"{name}_real.wav", real, cfg.sample_rate)
        write_wav(samples / f"{name}_synth.wav", synth, cfg.sample_rate)
        p = results.predictions[int(i)]
        draw_pair(samples / f"{name}.png", cfg.analysis.log_mel(real), cfg.analysis.log_mel(synth),
                  f"{name}: {p['input']}\nheard in the synthesis: {p['output']} (CER {p['cer']:.0f}%, MCD {p['mcd']:.1f} dB)",
                  cfg.analysis.hop / cfg.sample_rate)
    log(f"tts: {min(SAMPLE_COUNT, n)} held-out prompts (real and synthesised WAVs, spectrograms) in {samples}")
    log("tts: " + " | ".join(f"{k} {v:.2f}" for k, v in results.metrics.items()))
    for base, figures in results.baselines.items():
        log(f"  baseline {base}: " + " | ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    return {"tts": results.as_json()}


def speak(model: nn.Module, ckpt: Any, request: GenerateRequest) -> list[str]:
    """`largo speak RUN TEXT --out say.wav` / `largo generate RUN --input TEXT --out say.wav`: one WAV, one line."""
    if not request.input or not request.out:
        raise ConfigError(f"{ckpt.path}: a speech synthesiser says text; give the text (--input TEXT) and --out say.wav")
    out = Path(request.out)
    if out.suffix.lower() != ".wav" or not out.parent.is_dir():
        raise ConfigError(f"--out {out}: give a .wav path in an existing folder")
    model.eval()
    wave = synthesise(model, request.input)
    write_wav(out, wave, model.cfg.sample_rate)
    return [f"{out}: {len(wave) / model.cfg.sample_rate:.2f} s at {model.cfg.sample_rate} Hz ({normalise(request.input)!r})"]
