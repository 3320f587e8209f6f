"""data.source = "synth-sentences": English sentences spoken by espeak-ng (every accent x every voice variant), flite
(every voice) and, where installed, festival (an HTS statistical voice and two diphone voices), each utterance at its own
speed and pitch: a recogniser's training set made offline, no human voice in it.

The sentences are the English messages (msgids) of the installed gettext catalogs (/usr/share/locale/*/LC_MESSAGES/*.mo):
plain ones (letters, digits, simple punctuation, 2-14 words), deduplicated by their normalised form, and never equal or
near-equal (rapidfuzz ratio >= 80 on normalised text) to a transcript of the test prompts (asterisk_prompts.py). With
data.fortune_share, that share of them are instead sentences of Debian's fortune cookies (everyday English: the
catalogs are software messages, which never say "thank you" or "dial"), filtered and kept from the test prompts alike.
Whole voices are held out for validation (an espeak variant over all its accents, or a flite voice; festival's few all
train), and each sentence is spoken once, so validation sentences are unseen too. Rows are (waveform, rate) at the
engine's rate.
"""

from __future__ import annotations

import gettext
import glob
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from largo.data.audio_io import parse_wav, read_wav
from largo.data.sources.asterisk_prompts import prompt_texts
from largo.data.sources.espeak_digits import ESPEAK_ACCENTS, FLITE_VOICES, _need, espeak_variants
from largo.data.sources.registry import SPEECH, DataSource, Roles, Row, SourceStats, register_source
from largo.data.split import is_validation
from largo.data.transcripts import normalise
from largo.errors import DataError
from largo.optional import require

CATALOGS = "/usr/share/locale/*/LC_MESSAGES/*.mo"
FORTUNES = "/usr/share/games/fortunes/*"  # apt-get install fortunes (the offensive set, in off/, is not read)
PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9 ,.'?!;:()-]*$")
NEAR_TEST = 80.0  # rapidfuzz ratio (0-100) on normalised text at or above which a sentence is too close to a test prompt
FLITE_SHARE = 0.4  # share of utterances spoken by flite (5 voices, closer to a human voice than espeak's formant synthesis)
# festival's voices, where installed (apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k):
# an HTS voice trained on a woman's recordings and two diphone voices made of human speech; they take FESTIVAL_SHARE of
# the utterances and flite FLITE_SHARE_WITH_FESTIVAL, espeak the rest
FESTIVAL_VOICES = {"slt": "cmu_us_slt_arctic_hts", "kal": "kal_diphone", "ked": "ked_diphone"}
FESTIVAL_DIRS = "/usr/share/festival/voices/*/"
FESTIVAL_SHARE = 0.6  # 0.4 -> 0.6 took 1.1 points of CER off the human voice (docs/speech.md): the closest voices to it
FLITE_SHARE_WITH_FESTIVAL = 0.25
CHUNK = 32  # utterances synthesised per batch of subprocess calls


@dataclass(frozen=True)
class Utterance:
    """One sentence in one voice at one speed and pitch."""

    text: str
    voice: str  # the held-out unit: an espeak variant, "flite-<voice>" or "festival-<voice>"
    engine: str  # "espeak", "flite" or "festival"
    name: str  # espeak "en-gb+f3", a flite voice, or a festival voice ("cmu_us_slt_arctic_hts")
    speed: float  # espeak words per minute, or flite/festival duration stretch
    pitch: float  # espeak pitch 0..99, flite mean F0 in Hz, or festival's playback-rate factor (pitch and formants)


def largest_per_domain(paths: list[str]) -> list[str]:
    """One catalog per text domain (file name): its languages share the msgids, and the largest has the most."""
    best: dict[str, str] = {}
    for p in sorted(paths):
        name = Path(p).name
        if name not in best or Path(p).stat().st_size > Path(best[name]).stat().st_size:
            best[name] = p
    return sorted(best.values())


def catalog_sentences() -> list[str]:
    """Plain English msgids of every installed gettext catalog, sorted, one per normalised form."""
    found: dict[str, str] = {}
    for path in largest_per_domain(glob.glob(CATALOGS)):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except (OSError, ValueError, LookupError):  # UnicodeDecodeError is a ValueError; bad headers raise Index/KeyError
            continue  # an unreadable catalog is skipped: the others hold tens of thousands of messages
        for key in catalog:
            text = " ".join((key[0] if isinstance(key, tuple) else key).split())
            if PLAIN.match(text) and 2 <= len(text.split()) <= 14:
                found.setdefault(normalise(text), text)
    return [found[k] for k in sorted(found) if k]


def fortune_sentences() -> list[str]:
    """Plain sentences (3-14 words) of Debian's fortune cookies, sorted, one per normalised form; none where not installed."""
    found: dict[str, str] = {}
    for path in sorted(Path(p) for p in glob.glob(FORTUNES)):
        if not path.is_file() or path.is_symlink() or path.suffix == ".dat":
            continue  # .u8 links name the same files; .dat files are fortune's indexes
        cookies = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
        for cookie in cookies:
            if any(len(line) - len(line.lstrip()) > 8 for line in cookie.splitlines()):
                continue  # ASCII art, tables and verse laid out by indentation
            for text in re.split(r"(?<=[.!?])\s+|\s--\s", " ".join(cookie.split())):  # sentences; "-- Author" apart
                if PLAIN.match(text) and 3 <= len(text.split()) <= 14:
                    found.setdefault(normalise(text), text)
    return [found[k] for k in sorted(found) if k]


def without_test_prompts(sentences: list[str], tests: list[str]) -> list[str]:
    """Sentences whose normalised form is not equal or near-equal (ratio >= NEAR_TEST) to any test transcript."""
    fuzz = require("rapidfuzz", "data.source 'synth-sentences' (keeping training sentences away from the test prompts)")
    refs = sorted({normalise(t) for t in tests} - {""})
    if not refs or not sentences:
        return list(sentences)
    normal = [normalise(s) for s in sentences]
    # ratio 100 covers equality; one C call scores every pair (sentences x prompts), scores under the cutoff are 0
    near = fuzz.process.cdist(normal, refs, scorer=fuzz.fuzz.ratio, score_cutoff=NEAR_TEST, dtype=np.uint8).max(axis=1)
    return [s for s, close in zip(sentences, near) if close == 0]


@lru_cache(maxsize=1)
def usable_sentences() -> tuple[str, ...]:
    """Catalog sentences without the test prompts (read once per process: ~5 s of catalogs and fuzzy matching)."""
    return tuple(without_test_prompts(catalog_sentences(), prompt_texts()))


@lru_cache(maxsize=1)
def usable_fortunes() -> tuple[str, ...]:
    """Fortune sentences without the test prompts and without the catalogs' (read once per process)."""
    catalogs = {normalise(s) for s in usable_sentences()}
    return tuple(s for s in without_test_prompts(fortune_sentences(), prompt_texts()) if normalise(s) not in catalogs)


def training_sentences(count: int, fortune_share: float = 0.0) -> list[str]:
    """`count` sentences (all if fewer), test prompts excluded, in a fixed shuffled order: fortune_share of them from
    the fortune cookies (as many as there are), the rest from the catalogs."""
    sentences = usable_sentences()
    if not sentences:
        raise DataError(f"data.source 'synth-sentences': no usable English messages in {CATALOGS}; "
                        f"install some translated packages (e.g. apt-get install coreutils-l10n) or use another source")
    order = np.random.default_rng(0).permutation(len(sentences))
    if not fortune_share:
        return [sentences[i] for i in order[:count]]
    fortunes = usable_fortunes()
    n_fortunes = min(len(fortunes), round(count * fortune_share))
    picked = [fortunes[i] for i in np.random.default_rng(1).permutation(len(fortunes))[:n_fortunes]]
    picked += [sentences[i] for i in order[: count - n_fortunes]]
    return [picked[i] for i in np.random.default_rng(2).permutation(len(picked))]


def festival_voices() -> list[str]:
    """Short names of the festival voices installed here (none without text2wave)."""
    if shutil.which("text2wave") is None:
        return []
    installed = {Path(d).name for d in glob.glob(FESTIVAL_DIRS + "*")}
    return [short for short, name in FESTIVAL_VOICES.items() if name in installed]


def voices() -> tuple[list[str], list[str], list[str]]:
    """(espeak variants, flite voices, festival voices) available here."""
    _need("flite", "flite")
    return espeak_variants(), list(FLITE_VOICES), festival_voices()


def utterances(sentences: list[str], variants: list[str], flites: list[str], festivals: list[str] = ()) -> list[Utterance]:
    """Each sentence once, in a voice, speed and pitch drawn from a generator seeded by the sentence."""
    festival_share = FESTIVAL_SHARE if festivals else 0.0
    flite_share = FLITE_SHARE_WITH_FESTIVAL if festivals else FLITE_SHARE
    out = []
    for text in sentences:
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        draw = rng.random()
        if draw < festival_share:
            voice = festivals[rng.integers(len(festivals))]
            out.append(Utterance(text, f"festival-{voice}", "festival", FESTIVAL_VOICES[voice], float(rng.uniform(0.85, 1.3)),
                                 float(rng.uniform(0.88, 1.14))))
        elif draw < festival_share + flite_share:
            voice = flites[rng.integers(len(flites))]
            out.append(Utterance(text, f"flite-{voice}", "flite", voice, float(rng.uniform(0.8, 1.4)), float(rng.uniform(90, 220))))
        else:
            variant, accent = variants[rng.integers(len(variants))], ESPEAK_ACCENTS[rng.integers(len(ESPEAK_ACCENTS))]
            out.append(Utterance(text, variant, "espeak", f"{accent}+{variant}", float(rng.integers(120, 201)), float(rng.integers(20, 81))))
    return out


def held_out_voices(all_voices: list[str], val_fraction: float) -> set[str]:
    """Every 1/val_fraction-th voice of the sorted list."""
    return {v for i, v in enumerate(sorted(all_voices)) if is_validation(i, val_fraction)}


def speak(u: Utterance, workdir: Path) -> tuple[np.ndarray, int] | None:
    """The utterance's waveform at the engine's rate; None where the engine fails or says nothing."""
    try:
        if u.engine == "espeak":
            cmd = ["espeak-ng", "-v", u.name, "-s", str(int(u.speed)), "-p", str(int(u.pitch)), "--stdout", u.text]
            x, rate = parse_wav(subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout, u.name)
        elif u.engine == "festival":
            return festival_batch([u], workdir)[0]
        else:
            path = workdir / f"{zlib.crc32((u.name + u.text).encode())}.wav"
            subprocess.run(["flite", "-voice", u.name, "--setf", f"duration_stretch={u.speed:.3f}", "--setf",
                            f"int_f0_target_mean={u.pitch:.1f}", "-t", u.text, "-o", str(path)], capture_output=True, check=True, timeout=60)
            x, rate = read_wav(path)
            path.unlink()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, DataError):
        return None
    return (x, rate) if len(x) > rate // 10 else None


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_batch(items: list[Utterance], workdir: Path) -> list[tuple[np.ndarray, int] | None]:
    """festival's renditions of utterances in one voice, from one festival process (its start-up costs more than a
    sentence). `pitch` scales the rate each wave claims, so resampling moves its pitch, formants and tempo together (a
    longer or shorter vocal tract): one recorded speaker becomes many (HTS voices ignore the duration stretch)."""
    paths = [workdir / f"{zlib.crc32((u.name + u.text).encode())}-{i}.wav" for i, u in enumerate(items)]  # a text may recur
    script = [f"(voice_{items[0].name})"] + [
        f"(Parameter.set 'Duration_Stretch {u.speed:.3f})\n(utt.save.wave (utt.synth (Utterance Text {_scheme_string(u.text)})) "
        f"{_scheme_string(str(path))} 'riff)" for u, path in zip(items, paths)]
    try:
        subprocess.run(["festival", "--pipe"], input="\n".join(script).encode(), capture_output=True, timeout=60 + 10 * len(items))
    except subprocess.TimeoutExpired:
        pass  # the files written so far are kept
    out: list[tuple[np.ndarray, int] | None] = []
    for u, path in zip(items, paths):
        try:
            x, rate = read_wav(path)
            path.unlink()
        except (OSError, DataError):
            out.append(None)
            continue
        # the claimed rate is a multiple of 100 Hz: resampling it to 8 or 16 kHz then takes a short polyphase filter
        out.append((x, int(round(rate * u.pitch / 100)) * 100) if len(x) > rate // 10 else None)
    return out


def render(chunk: list[Utterance], workdir: Path, pool: ThreadPoolExecutor) -> list[tuple[np.ndarray, int] | None]:
    """Every utterance of the chunk spoken, in order: festival's grouped by voice (one process each), the others one by one."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(chunk):
        if u.engine == "festival":
            groups.setdefault(u.name, []).append(i)
    batches = {name: pool.submit(festival_batch, [chunk[i] for i in idx], workdir) for name, idx in groups.items()}
    singles = {i: pool.submit(speak, u, workdir) for i, u in enumerate(chunk) if u.engine != "festival"}
    out: list[tuple[np.ndarray, int] | None] = [None] * len(chunk)
    for name, idx in groups.items():
        for i, spoken in zip(idx, batches[name].result()):
            out[i] = spoken
    for i, future in singles.items():
        out[i] = future.result()
    return out


class SynthSentencesSource(DataSource):
    """Synthesised sentences split by voice; data.sentences decides how many (synthesis costs CPU time: ~30 ms espeak,
    ~150 ms flite, ~100 ms festival per sentence)."""

    settings_keys = ("sentences", "fortune_share")

    def fortune_share(self) -> float:
        """data.fortune_share where Debian's fortunes are installed, else 0 (prepare says so)."""
        return float(getattr(self.data, "fortune_share", 0.0)) if glob.glob(FORTUNES) else 0.0

    def fingerprint(self) -> str:
        mix = f"festival{FESTIVAL_SHARE}-all-train/flite{FLITE_SHARE_WITH_FESTIVAL}" if festival_voices() else f"flite{FLITE_SHARE}"
        text = f":fortunes{self.fortune_share()}" if self.fortune_share() else ""
        return super().fingerprint() + f":{getattr(self.data, 'sentences', 0)}:{mix}{text}"

    def files(self) -> list[tuple[Path, str]]:
        tools = [Path(p) for p in (shutil.which("espeak-ng"), shutil.which("flite")) if p]
        voices_dirs = [Path(d) for d in sorted(glob.glob(FESTIVAL_DIRS + "*")) if Path(d).name in FESTIVAL_VOICES.values()]
        festival = [Path(shutil.which("text2wave") or "")] + voices_dirs if festival_voices() else []
        return [(p, p.name) for p in tools + festival]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        variants, flites, festivals = voices()
        if getattr(self.data, "fortune_share", 0.0) and not self.fortune_share():
            self.log("prepare: Debian's fortune cookies are not installed, so every sentence is a catalog message "
                     "(apt-get install fortunes adds everyday English)")
        count = int(getattr(self.data, "sentences", 0)) or 10**9
        items = utterances(training_sentences(count, self.fortune_share()), variants, flites, festivals)
        # festival's voices all train: the closest to a human's and only three (one held out took 13% of the sentences
        # and cost the human test a voice of its kind); validation holds out espeak and flite voices as before
        held = held_out_voices(variants + [f"flite-{v}" for v in flites], self.data.val_fraction)
        if not festivals:
            self.log("prepare: festival's voices are not installed, so espeak-ng and flite speak every sentence "
                     "(apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k adds voices closer to a human's)")
        self.log(f"prepare: synthesising {len(items):,} sentences with espeak-ng ({len(variants)} variants x {len(ESPEAK_ACCENTS)} "
                 f"accents), flite ({len(flites)} voices) and festival ({len(festivals)} voices); held-out voices: {', '.join(sorted(held))}")
        failed = 0
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(items), CHUNK):
                chunk = items[start : start + CHUNK]
                for u, spoken in zip(chunk, render(chunk, Path(tmp), pool)):
                    if spoken is None:
                        failed += 1
                        continue
                    yield {"id": f"{u.name}:{u.text[:40]}", "audio": spoken, "text": u.text, "voice": u.voice,
                           "split": "val" if u.voice in held else "train"}
                if start // CHUNK % 25 == 24:
                    self.log(f"prepare: {start + len(chunk):,}/{len(items):,} sentences synthesised")
        if failed:
            self.log(f"prepare: {failed} utterances left out (the engine failed or said nothing)")


register_source("synth-sentences", SynthSentencesSource, provides=[SPEECH])
