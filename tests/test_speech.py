"""Sentence-level speech recognition: transcripts and their normalisation, the test prompts kept out of training, CTC
decoding and loss, jiwer's figures, long recordings in windows, and a tiny run through `largo eval --json`,
`largo transcribe` and its bad inputs."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from largo.cli import main
from largo.data.sources import asterisk_prompts
from largo.data.speech import SpeechAugment, SpeechDataConfig, augment_draws, pad_batch
from largo.data.transcripts import VOCAB, check_speakable, decode, encode, normalise, parse_transcripts, spell_number
from largo.errors import ConfigError, DataError
from largo.models.asr import ASRConfig, ASRModel, ctc_loss, greedy_decode, lifter, windows
from largo.models.ctc_beam import END, CharNgram, prefix_beam_search

SPEECH_PACKAGES = "apt-get install espeak-ng flite asterisk-core-sounds-en-wav asterisk-core-sounds-en"
needs_speech = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("flite") and asterisk_prompts.SOUNDS.is_dir()
         and asterisk_prompts.TRANSCRIPTS.is_file()),
    reason=f"needs espeak-ng, flite and Asterisk's prompts with transcripts: {SPEECH_PACKAGES} (.ci/run installs them)")


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM WAV."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
            + b"data" + struct.pack("<I", len(pcm)) + pcm)


# ---- transcripts


def test_transcripts_parse_and_a_line_without_a_colon_is_one_line() -> None:
    good = "; Core sounds\n\nagent-pass: Please enter your password followed by the pound key.\ndigits/1: one\n"
    assert parse_transcripts(good, "t.txt") == {"agent-pass": "Please enter your password followed by the pound key.", "digits/1": "one"}
    with pytest.raises(DataError, match=r"^t\.txt:3: 'this line has no colon' is not a 'name: text' line") as e:
        parse_transcripts("a: b\n\nthis line has no colon\n", "t.txt")
    assert "\n" not in str(e.value)


def test_normalisation_is_the_documented_one() -> None:
    assert normalise("Please press 1 to mute, or # for more; you'd dial 500.") == \
        "please press one to mute or pound for more you'd dial five hundred"
    assert normalise("[ascending tones]") == ""
    assert normalise("a 28.8 kilobit modem, Call-Forward * 'quoted'") == "a twenty eight point eight kilobit modem call forward star quoted"
    assert spell_number(1234) == "one thousand two hundred thirty four" and spell_number(90) == "ninety"
    assert set(normalise("Ünïcode & ASCII / 42%")) <= set(VOCAB)
    with pytest.raises(DataError, match="outside the vocabulary"):
        encode("héllo")
    with pytest.raises(DataError, match="outside the vocabulary"):
        check_speakable("日本語")


def test_training_sentences_near_a_test_prompt_are_left_out() -> None:
    pytest.importorskip("rapidfuzz", reason="jiwer's dependency: pip install jiwer (the speech extra)")
    from largo.data.sources.speech_sentences import without_test_prompts

    tests = ["Please enter your password followed by the pound key.", "Goodbye."]
    sentences = ["please enter your password, followed by the pound key", "Please enter your passwords followed by the pound key",
                 "Enter the file name", "GOODBYE!", "Good bye now, friend"]
    assert without_test_prompts(sentences, tests) == ["Enter the file name", "Good bye now, friend"]


def test_fortune_cookies_give_plain_sentences_without_art_authors_or_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from largo.data.sources import speech_sentences

    (tmp_path / "wisdom").write_text(
        "Thank you for calling. Dial zero -- Anonymous\n%\n"
        "    /\\_/\\\n          ( o.o ) a cat drawn in text\n%\n"
        "Hi.\nA \"quoted\" line is not plain. Please hold\nthe line, caller.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x02binary index. Of the cookies here")
    (tmp_path / "wisdom.u8").symlink_to(tmp_path / "wisdom")
    monkeypatch.setattr(speech_sentences, "FORTUNES", str(tmp_path / "*"))
    # sentences of 3-14 words; the author after "--" and two-word sentences dropped; the indented art skipped whole
    assert speech_sentences.fortune_sentences() == ["Please hold the line, caller.", "Thank you for calling."]


FESTIVAL_PACKAGES = "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"


def test_festival_speaks_a_batch_in_one_process_and_its_rate_factor_moves_pitch_and_tempo(tmp_path: Path) -> None:
    from largo.data.sources.speech_sentences import FESTIVAL_VOICES, Utterance, festival_batch, festival_voices

    if "kal" not in festival_voices():
        pytest.skip(f"needs festival's kal voice: {FESTIVAL_PACKAGES} (.ci/run installs it)")
    name = FESTIVAL_VOICES["kal"]
    items = [Utterance('Say "yes" \\ or no.', "festival-kal", "festival", name, 1.0, 1.0),  # quotes and a backslash
             Utterance("Open the file.", "festival-kal", "festival", name, 1.0, 1.0),
             Utterance("Open the file.", "festival-kal", "festival", name, 1.5, 1.1)]
    said = festival_batch(items, tmp_path)
    assert all(s is not None for s in said) and not list(tmp_path.iterdir())  # a quote does not end the batch early
    (x0, r0), (x1, r1), (x2, r2) = said  # type: ignore[misc]
    assert r1 == 16000 and r2 == 17600  # 1.1 x the rate: played back 10% faster and higher
    assert len(x2) > 1.3 * len(x1)  # a diphone voice follows the duration stretch


@needs_speech
def test_the_human_prompts_are_test_only_and_kept_out_of_training() -> None:
    from largo.data.sources.speech_sentences import training_sentences, usable_fortunes

    found = asterisk_prompts.prompts()
    assert len(found) > 550 and all(p.is_file() and normalise(t) for _, p, t in found)
    refs = {normalise(t) for t in asterisk_prompts.prompt_texts()} - {""}
    assert not refs & {normalise(s) for s in training_sentences(3000)}
    if not usable_fortunes():
        pytest.skip("needs Debian's fortune cookies: apt-get install fortunes (.ci/run installs them)")
    mixed = training_sentences(3000, fortune_share=0.5)
    assert len(mixed) == 3000 and not refs & {normalise(s) for s in mixed}
    assert sum(s in set(usable_fortunes()) for s in mixed) == 1500


# ---- CTC


def one_hot_logits(path: list[int], vocab: int) -> torch.Tensor:
    """(1, t, vocab) logits whose argmax is `path`."""
    return torch.nn.functional.one_hot(torch.tensor([path]), vocab).float() * 10


def label_log_probs(rows: list[dict[str, float]]) -> np.ndarray:
    """(tokens, labels) log-probabilities: each row's named characters ("" = blank) get their probability, the rest
    share what is left."""
    out = np.zeros((len(rows), len(VOCAB) + 1))
    for t, row in enumerate(rows):
        out[t] = (1.0 - sum(row.values())) / (out.shape[1] - len(row))
        for c, p in row.items():
            out[t, VOCAB.index(c) + 1 if c else 0] = p
    return np.log(out)


def test_prefix_beam_search_finds_the_most_probable_labelling_not_the_best_path() -> None:
    """Two tokens each 60% blank, 40% 'a': the best path is blank-blank (0.36), but "a" is spelt by three paths
    (0.16 + 0.24 + 0.24 = 0.64): greedy says "", the beam (no LM, no bonus) says "a"."""
    lp = label_log_probs([{"": 0.6, "a": 0.4 - 1e-6}] * 2)
    assert decode(greedy_decode(torch.from_numpy(lp)[None], torch.tensor([2]))[0]) == ""
    assert prefix_beam_search(lp, None, width=4, lm_weight=0.0, char_bonus=0.0) == "a"
    repeat = label_log_probs([{"a": 0.9}, {"": 0.9}, {"a": 0.9}])  # a blank between two a's keeps both
    assert prefix_beam_search(repeat, None, width=4, lm_weight=0.0, char_bonus=0.0) == "aa"


def test_the_character_ngram_is_a_distribution_and_steers_the_beam_to_words_it_knows() -> None:
    lm = CharNgram(["the cat sat", "a cat", "cats and dogs"], order=4)
    for history in ("", "the c", "zzz"):
        total = sum(np.exp(lm.log_prob(history, c)) for c in VOCAB + END)
        assert total == pytest.approx(1.0, abs=1e-9)
    assert lm.log_prob("the c", "a") > lm.log_prob("the c", "k")
    heard = label_log_probs([{"": 0.9}, {"c": 0.45, "k": 0.45}, {"": 0.9}, {"a": 0.9}, {"": 0.9}, {"t": 0.9}])
    assert prefix_beam_search(heard, None, width=8, lm_weight=0.0, char_bonus=0.0) in ("kat", "cat")
    assert prefix_beam_search(heard, lm, width=8, lm_weight=1.0, char_bonus=0.0) == "cat"
    heard_k = label_log_probs([{"": 0.9}, {"c": 0.05, "k": 0.9}, {"": 0.9}, {"a": 0.9}, {"": 0.9}, {"t": 0.9}])
    assert prefix_beam_search(heard_k, lm, width=8, lm_weight=0.3, char_bonus=0.0) == "kat"  # clear acoustics win


def test_greedy_decode_merges_repeats_and_drops_blanks() -> None:
    h, e, l, o = (VOCAB.index(c) + 1 for c in "helo")
    path = [0, h, h, 0, e, l, l, 0, l, o, o, 0]  # "hello": the blank between the l's keeps both
    logits = one_hot_logits(path, len(VOCAB) + 1)
    assert greedy_decode(logits, torch.tensor([len(path)])) == [[h, e, l, l, o]]
    assert greedy_decode(logits, torch.tensor([6])) == [[h, e, l]]  # positions past the length are padding


def tiny_asr(**kw: object) -> ASRModel:
    torch.manual_seed(0)
    cfg = ASRConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=128, vocab_size=len(VOCAB) + 1, **kw)
    model = ASRModel(cfg)
    model.init_weights()
    return model


def test_a_tiny_model_learns_ctc(one_thread: None) -> None:
    rng = np.random.default_rng(0)
    texts = ["ab", "ba", "abc", "cab"]
    tones = {c: 300.0 * (k + 1) for k, c in enumerate("abc")}
    waves = [np.concatenate([0.5 * np.sin(2 * np.pi * tones[c] * np.arange(1600) / 8000) for c in t]).astype(np.float32)
             + 0.01 * rng.standard_normal(1600 * len(t)).astype(np.float32) for t in texts]
    x, y = pad_batch(waves, [np.array(encode(t)) for t in texts])
    model = tiny_asr()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = ctc_loss(*model(x), y) / (y != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("norm", ["peak", "band_mean"])
def test_padding_does_not_change_an_utterances_outputs(norm: str) -> None:
    model = tiny_asr(feature_norm=norm).eval()
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    alone, _ = pad_batch([wave], [np.array([3])])
    padded, _ = pad_batch([wave, np.zeros(9000, np.float32)], [np.array([3]), np.array([3])])
    with torch.no_grad():
        a, n = model(alone)
        b, _ = model(padded)
    assert torch.allclose(a[0, : n[0]], b[0, : n[0]], atol=1e-4)


def test_band_mean_features_remove_a_fixed_colouring_of_the_channel() -> None:
    """A constant gain per band (a microphone's colouring, in the log domain) leaves band_mean features unchanged."""
    model = tiny_asr(feature_norm="band_mean").eval()
    wave = np.random.default_rng(2).standard_normal(4000).astype(np.float32) * 0.1
    x, _ = pad_batch([wave, np.zeros(6000, np.float32)], [np.array([3]), np.array([3])])
    feats, inside = model.features(x["wave"], x["lengths"])
    assert torch.allclose((feats * inside).sum(-1)[0] / inside[0].sum(), torch.zeros(feats.shape[1]), atol=1e-5)
    tilt = torch.linspace(-0.3, 0.2, feats.shape[1])[None, :, None]  # what a fixed filter adds to each log band
    model.stem.features = lambda w: type(model.stem).features(model.stem, w) + tilt  # type: ignore[method-assign]
    coloured, _ = model.features(x["wave"], x["lengths"])
    assert torch.allclose((coloured - feats) * inside, torch.zeros_like(feats), atol=1e-5)


def test_liftering_keeps_the_spectral_envelope_and_removes_the_harmonic_comb() -> None:
    """model.cepstra: a projection (applied twice = once) that keeps a smooth tilt across the bands and removes a
    pattern repeating every 2.5 bands (the harmonics of a 200 Hz voice in the low bands), and keeps padding inert."""
    s = lifter(40, 13)
    bands = torch.arange(40, dtype=torch.float32)
    tilt, comb = 1.0 - bands / 40, torch.cos(2 * math.pi * bands / 2.5)
    assert torch.allclose(s @ s, s, atol=1e-5) and torch.allclose(s, s.T, atol=1e-6)
    assert (s @ tilt - tilt).norm() < 0.05 * tilt.norm() and (s @ comb).norm() < 0.2 * comb.norm()
    model = tiny_asr(cepstra=5).eval()
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    x, _ = pad_batch([wave, np.zeros(6000, np.float32)], [np.array([3]), np.array([3])])
    plain, _ = tiny_asr().eval().features(x["wave"], x["lengths"])
    feats, _ = model.features(x["wave"], x["lengths"])
    assert torch.allclose(feats, torch.einsum("mn,bnt->bmt", lifter(feats.shape[1], 5), plain), atol=1e-5)
    with pytest.raises(ConfigError, match="model.cepstra"):
        tiny_asr(cepstra=99)


def test_augmentation_keeps_lengths_and_silent_padding() -> None:
    d = SpeechDataConfig(noise_snr_db=10.0, band_limit_hz=3000.0, reverb=1.0, spec_masks=2)
    x, _ = pad_batch([np.ones(3000, np.float32) * 0.1, np.ones(8000, np.float32) * 0.1], [np.array([1]), np.array([1])])
    x["draws"] = torch.rand(2, augment_draws(d), generator=torch.Generator().manual_seed(0))
    out = SpeechAugment(d, 8000)(x)
    assert out["wave"].shape == (2, 8000) and torch.equal(out["lengths"], torch.tensor([3000, 8000]))
    assert out["wave"][0, 3000:].abs().max() == 0 and not torch.allclose(out["wave"][1], x["wave"][1])


def test_speed_perturbation_moves_pitch_and_length_together() -> None:
    """A 500 Hz tone played at speed r lasts len / r and sounds at 500 r Hz; the transcript is unchanged, so CTC sees
    the same characters over fewer (or more) tokens."""
    d, rate = SpeechDataConfig(speed_perturb=0.2), 8000
    tone = (0.3 * np.sin(2 * np.pi * 500 * np.arange(6000) / rate)).astype(np.float32)
    x, _ = pad_batch([tone, tone[:3000]], [np.array([1]), np.array([1])], 4000)
    draws = torch.zeros(2, augment_draws(d))
    draws[:, -1] = torch.tensor([1.0, 0.0])  # speeds 1.2 and 0.8
    out = SpeechAugment(d, rate)(x | {"draws": draws})
    assert out["lengths"].tolist() == [5000, 3749]  # floor((n - 1) / r) + 1
    assert out["wave"].shape == (2, 8000) and out["wave"][0, 5000:].abs().max() == 0 and out["wave"][1, 3749:].abs().max() == 0
    for row, n, hz in ((0, 5000, 600.0), (1, 3749, 400.0)):
        spectrum = np.abs(np.fft.rfft(out["wave"][row, :n].numpy()))
        assert abs(np.argmax(spectrum) * rate / n - hz) < 3.0


def test_vtlp_moves_a_tone_by_the_warp_factor_and_keeps_its_timing() -> None:
    """Vocal tract length perturbation scales frequencies (below the bend) by the drawn factor, leaves the duration
    and the silent padding alone, and a factor of 1 gives the clip back."""
    d, rate = SpeechDataConfig(vtlp=0.1), 8000
    tone = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(6000) / rate)).astype(np.float32)
    x, _ = pad_batch([tone, tone, tone], [np.array([1])] * 3, 4000)
    draws = torch.zeros(3, augment_draws(d))
    draws[:, -1] = torch.tensor([1.0, 0.0, 0.5])  # factors 1.1, 0.9 and 1
    out = SpeechAugment(d, rate)(x | {"draws": draws})
    assert out["wave"].shape == (3, 8000) and out["lengths"].tolist() == [6000] * 3 and out["wave"][:, 6000:].abs().max() == 0
    for row, hz in ((0, 1100.0), (1, 900.0)):
        spectrum = np.abs(np.fft.rfft(out["wave"][row, :6000].numpy()))
        assert abs(np.argmax(spectrum) * rate / 6000 - hz) < 3.0
    assert torch.allclose(SpeechAugment(d, rate).warp(x["wave"], torch.tensor([0.5] * 3)), x["wave"], atol=1e-3)


def test_adaptation_lowers_the_entropy_and_leaves_no_trace(one_thread: None) -> None:
    """Test-time adaptation: the entropy it minimises falls over its steps; a recording's outputs do not depend on
    which recordings were adapted to before it; the weights are the trained ones afterwards; outputs differ from
    the unadapted model's."""
    from largo.models.asr import window_log_probs
    from largo.models.asr_adapt import adapt, adaptable, restored

    model, rng = tiny_asr(), np.random.default_rng(5)
    waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 5000)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(window_s=8.0, device=torch.device("cpu"), adapt_steps=5, adapt_lr=1e-2)
    both = window_log_probs(model, waves, **kw)
    alone = window_log_probs(model, waves[1:], **kw)
    plain = window_log_probs(model, waves[1:], window_s=8.0, device=torch.device("cpu"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert np.allclose(both[1][0], alone[0][0], atol=1e-5) and not np.allclose(alone[0][0], plain[0][0], atol=1e-3)
    x = torch.from_numpy(waves[1])[None]
    params = adaptable(model)
    with restored(params):
        history = adapt(lambda: model({"wave": x, "lengths": torch.tensor([x.shape[1]])}), params, steps=5, lr=1e-2,
                        device=torch.device("cpu"), precision="fp32")
    assert history[-1] < history[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ---- metrics and long recordings


def test_jiwer_figures_are_percentages() -> None:
    pytest.importorskip("jiwer", reason="pip install jiwer (the speech extra)")
    from largo.models.asr import jiwer_scores

    scores = jiwer_scores(["hello world", "good bye"], ["hello word", "good bye"])
    assert scores["wer"] == pytest.approx(100 * 1 / 4) and scores["cer"] == pytest.approx(100 * 1 / 19)


def test_a_long_recording_is_cut_at_pauses_into_windows() -> None:
    rate, rng = 8000, np.random.default_rng(3)
    speech = [np.concatenate([0.3 * rng.standard_normal(int(rng.uniform(0.5, 3.0) * rate)), np.zeros(rate // 4)]) for _ in range(400)]
    wave = np.concatenate(speech).astype(np.float32)  # ~12 minutes
    pieces = windows(wave, rate, 8.0)
    assert sum(len(p) for p in pieces) == len(wave) and max(len(p) for p in pieces) <= 8 * rate
    assert all(np.abs(p[-40:]).max() == 0 for p in pieces[:-1])  # every cut falls in a pause


# ---- a tiny run: eval --json, predictions, transcribe and its bad inputs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("asr")
    torch.set_num_threads(1)
    argv = ["train", "asr_sentences", "--run.out_dir", str(root / "runs"), "--data.dir", str(root / "data"),
            "--data.sentences", "40", "--data.baseline_run", "", "--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2",
            "--train.steps", "3", "--train.global_batch", "4", "--train.micro_batch", "4", "--eval.every", "0",
            "--checkpoint.every", "0", "--train.precision", "fp32", "--train.threads", "1", "--model.beam", "4"]
    assert main(argv) == 0
    return root / "runs" / "asr_sentences"


@needs_speech
def test_a_tiny_run_reports_its_figures_and_prompts(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (tiny_run / "speech_results.json").is_file()
    header = (tiny_run / "asr_prompts.csv").read_text().splitlines()[0]
    assert header == "name,reference,hypothesis,cer,wer"
    assert (tiny_run / "spectrograms.png").is_file() or not __import__("importlib").util.find_spec("matplotlib")
    capsys.readouterr()
    assert main(["eval", str(tiny_run), "--json", "--limit", "4", "--predictions", str(tmp_path / "p.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"cer", "wer", "val_cer", "val_wer", "cer_greedy", "val_cer_greedy"} <= set(result["metrics"])
    assert result["baselines"] == {}
    transcripts = (tiny_run / "lm_transcripts.txt").read_text().splitlines()  # what the beam's n-gram counted
    assert transcripts and all(set(t) <= set(VOCAB) for t in transcripts)
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"input", "reference", "output", "cer", "wer"} <= set(lines[0])
    assert main(["eval", str(tiny_run), "--json", "--limit", "4", "--model.beam", "1"]) == 0  # another decoding, same weights
    greedy = json.loads(capsys.readouterr().out)["metrics"]
    assert "cer_greedy" not in greedy and greedy["cer"] == result["metrics"]["cer_greedy"]
    assert main(["eval", str(tiny_run), "--json", "--limit", "4", "--model.beam", "1", "--model.adapt_steps", "2"]) == 0
    out = capsys.readouterr()
    assert "after 2 entropy steps on each recording" in out.err and json.loads(out.out)["metrics"]["test_prompts"] == 4
    assert main(["eval", str(tiny_run), "--model.dim", "64"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "largo: error: --model.dim: a trained model takes overrides only of how it decodes (--model.beam, --model.lm_order, "
        "--model.lm_weight, --model.char_bonus, --model.adapt_steps, --model.adapt_lr); the rest is the checkpoint's"]


@needs_speech
def test_transcribe_answers_one_line_and_refuses_bad_clips(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["transcribe", str(tiny_run), str(asterisk_prompts.SOUNDS / "agent-pass.wav")]) == 0
    assert main(["generate", str(tiny_run), "--audio", str(asterisk_prompts.SOUNDS / "agent-pass.wav")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0] == out[1] and set(out[0]) <= set(VOCAB)
    clip = str(asterisk_prompts.SOUNDS / "agent-pass.wav")
    assert main(["transcribe", str(tiny_run), clip, "--model.beam", "1"]) == 0  # greedy, as eval's cer_greedy decodes
    assert main(["transcribe", str(tiny_run), clip, "--model.n_layers", "2"]) == 2
    assert "a trained model takes overrides only of how it decodes" in capsys.readouterr().err
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(np.zeros(0), 8000))
    for argv, message in ((["transcribe", str(tiny_run), str(empty)], "holds no samples"),
                          (["transcribe", str(tiny_run), str(tmp_path / "missing.wav")], "no such audio file"),
                          (["generate", str(tiny_run)], "give --audio clip.wav")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav"]  # nothing written
