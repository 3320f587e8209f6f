"""Speech synthesis: CTC forced alignment, the length regulator, Griffin-Lim, a loss that falls, and a tiny run through
`largo eval --json`, `largo speak` / `largo generate` and their bad inputs."""

from __future__ import annotations

import json
import shutil
import wave as wavfile
from pathlib import Path

import numpy as np
import pytest
import torch

from largo.cli import main
from largo.data.sources import asterisk_prompts
from largo.data.speech import utterance
from largo.data.audio_io import read_wav
from largo.data.transcripts import VOCAB, encode
from largo.data.tts import held_out
from largo.models.align import durations, forced_path, heard_share, uniform_durations
from largo.models.tts import TTSConfig, TTSModel, regulate, tts_loss
from largo.models.vocoder import MelAnalysis, griffin_lim

SPEECH_PACKAGES = "apt-get install espeak-ng flite asterisk-core-sounds-en-wav asterisk-core-sounds-en"
needs_speech = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("flite") and asterisk_prompts.SOUNDS.is_dir()
         and asterisk_prompts.TRANSCRIPTS.is_file()),
    reason=f"needs espeak-ng, flite and Asterisk's prompts with transcripts: {SPEECH_PACKAGES} (.ci/run installs them)")


def lattice_for(text: str, spans: list[int], gap_after: set[int], rng: np.random.Generator) -> np.ndarray:
    """Log-probs (T, vocab) whose best labels spell `text` for `spans` frames each (the last frame of character k a blank
    where k is in gap_after), under noise."""
    labels, frames = encode(text), []
    for k, (lab, d) in enumerate(zip(labels, spans)):
        frames += [lab] * (d - 1) + [0 if k in gap_after else lab]
    logits = rng.normal(0.0, 1.0, (len(frames), len(VOCAB) + 1))
    logits[np.arange(len(frames)), frames] += 6.0
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def test_forced_alignment_recovers_known_durations() -> None:
    rng = np.random.default_rng(0)
    text, spans = "hello you", [3, 2, 2, 4, 5, 2, 3, 1, 6]
    lp = lattice_for(text, spans, gap_after={2}, rng=rng)  # "ll": a blank must part the two l's
    path = forced_path(lp, encode(text))
    assert path is not None and path[0] in (0, 1) and path[-1] in (2 * len(text), 2 * len(text) - 1)
    got = durations(path, len(text))
    assert got.tolist() == spans and got.sum() == len(lp)
    assert heard_share(lp, encode(text), got) == 1.0 > heard_share(lp, encode(text), uniform_durations(len(lp), len(text)))
    # blanks between two characters are split between them; leading and trailing ones go to the first and last
    assert durations(np.array([0, 0, 1, 2, 2, 2, 2, 3, 4]), 2).tolist() == [5, 4]
    assert forced_path(lp[:3], encode(text)) is None  # fewer frames than characters: no path
    assert forced_path(lp[:10], encode(text)) is not None and forced_path(lp[:9], encode(text)) is None  # "ll" takes a blank


def test_length_regulator_expands_by_durations_exactly() -> None:
    states = torch.randn(2, 4, 3)
    spans = torch.tensor([[2, 0, 3, 1], [1, 1, 1, 0]])
    out, lengths = regulate(states, spans)
    assert lengths.tolist() == [6, 3] and out.shape == (2, 6, 3)
    for b in range(2):
        expected = states[b].repeat_interleave(spans[b], dim=0)
        assert torch.equal(out[b, : len(expected)], expected) and not out[b, len(expected):].any()


@needs_speech
def test_griffin_lim_rebuilds_a_real_recording_closer_than_noise() -> None:
    x, rate = read_wav(asterisk_prompts.SOUNDS / "agent-pass.wav")
    wave = utterance(x, rate, 8000)
    analysis = MelAnalysis(8000, 64)
    mel = analysis.log_mel(wave)
    rebuilt = griffin_lim(mel, analysis, iterations=16)
    noise = np.random.default_rng(0).standard_normal(len(wave)).astype(np.float32) * 0.1
    distance = lambda y: float((analysis.log_mel(y)[: len(mel)] - mel).abs().mean())  # noqa: E731
    assert len(rebuilt) == (len(mel) - 1) * analysis.hop
    assert distance(rebuilt) < 0.5 * distance(noise)


def test_the_loss_falls(one_thread: None) -> None:
    torch.manual_seed(0)
    cfg = TTSConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=64, n_mels=8, vocab_size=len(VOCAB) + 1, mel_mean=-4.0, mel_std=1.0)
    model = TTSModel(cfg)
    model.init_weights()
    symbols = torch.randint(1, len(VOCAB) + 1, (4, 6))
    spans = torch.randint(1, 4, (4, 6))
    table = torch.randn(len(VOCAB) + 1, cfg.n_mels) - 4  # each symbol's own spectrum: learnable from the text
    targets = regulate(table[symbols], spans)[0].repeat_interleave(2, dim=1)
    targets[regulate(torch.ones(4, 6, 1), spans)[0].repeat_interleave(2, dim=1)[..., 0] == 0] = -100.0
    inputs = {"symbols": symbols, "durations": spans}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = tts_loss(*model(inputs), inputs, targets) / (targets != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_held_out_prompts_are_chosen_by_name() -> None:
    names = [f"prompt-{i}" for i in range(2000)]
    held = [n for n in names if held_out(n, 0.1)]
    assert 150 < len(held) < 250 and held == [n for n in names if held_out(n, 0.1)]


# ---- a tiny run: a tiny recogniser, then a tiny synthesiser aligned by it


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tts")
    torch.set_num_threads(1)
    common = ["--run.out_dir", str(root / "runs"), "--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2",
              "--train.steps", "2", "--train.global_batch", "4", "--train.micro_batch", "4", "--eval.every", "0",
              "--checkpoint.every", "0", "--train.precision", "fp32", "--train.threads", "1"]
    assert main(["train", "asr_sentences", "--data.dir", str(root / "asr"), "--data.sentences", "30", "--data.test_source", "",
                 "--data.baseline_run", "", *common]) == 0
    assert main(["train", "tts_allison", "--data.dir", str(root / "tts"), "--data.max_rows", "8", "--data.val_fraction", "0.02",
                 "--model.recogniser", str(root / "runs" / "asr_sentences"), "--model.max_seq_len", "4096",
                 "--model.n_mels", "16", "--model.griffin_lim_iters", "4", *common]) == 0
    return root / "runs" / "tts_allison"


@needs_speech
def test_a_tiny_run_reports_its_figures_and_writes_its_samples(tiny_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (tiny_runs / "tts_results.json").is_file() and (tiny_runs / "tts_prompts.csv").is_file()
    samples = sorted(p.name for p in (tiny_runs / "tts_samples").iterdir())
    held = int(json.loads((tiny_runs / "tts_results.json").read_text())["metrics"]["test_prompts"])
    assert sum(n.endswith("_synth.wav") for n in samples) == sum(n.endswith("_real.wav") for n in samples) == min(8, held) > 0
    capsys.readouterr()
    assert main(["eval", str(tiny_runs), "--json", "--limit", "3", "--predictions", str(tmp_path / "p.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"intelligibility_cer", "mcd"} <= set(result["metrics"]) and result["metrics"]["test_prompts"] == 3
    assert set(result["baselines"]) == {"real_recordings", "flite"} and result["metrics"]["mcd"] > 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {"input", "reference", "output", "cer", "mcd"} <= set(lines[0])


@needs_speech
def test_speak_writes_a_wav_of_the_predicted_length_and_refuses_bad_text(tiny_runs: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from largo.checkpoint.handle import Checkpoint
    from largo.checkpoint.restore import load_model

    text = "Please enter your password."
    model, _ = load_model(Checkpoint.find(str(tiny_runs)), torch.device("cpu"))
    frames = len(model.infer(encode("please enter your password")))
    assert main(["speak", str(tiny_runs), text, "--out", str(tmp_path / "say.wav")]) == 0
    assert main(["generate", str(tiny_runs), "--input", text, "--out", str(tmp_path / "gen.wav")]) == 0
    for name in ("say.wav", "gen.wav"):
        with wavfile.open(str(tmp_path / name)) as w:
            assert w.getframerate() == 8000 and w.getnframes() == (frames - 1) * 80
    capsys.readouterr()
    for argv, message in ((["speak", str(tiny_runs), "héllo wörld", "--out", str(tmp_path / "bad.wav")], "outside the vocabulary"),
                          (["speak", str(tiny_runs), "...", "--out", str(tmp_path / "bad.wav")], "nothing to say"),
                          (["generate", str(tiny_runs), "--input", text], "--out say.wav")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.wav", "say.wav"]  # nothing else written
