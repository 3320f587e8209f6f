"""Run configuration: TOML sections mapped one-to-one onto typed dataclasses, with dotted overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from largo.errors import ConfigError
from largo.models.config import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class RunSection:
    """Where the run lives and how it is seeded."""

    name: str = "run"  # run folder name under out_dir
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 1337  # seeds python, numpy and torch; same seed -> identical run

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name or "\0" in self.name:
            raise ConfigError(f"run.name {self.name!r} must be one folder name (no '/', not '.' or '..'); "
                              f"the run goes to run.out_dir/run.name")


@dataclass
class DataConfig:
    """What to train on and how it is prepared into token shards."""

    source: str = "stdlib"  # "stdlib", a folder, a glob, or a .jsonl/.csv/.parquet file
    text_column: str = "text"  # column holding the text in .jsonl/.csv/.parquet sources
    dir: str = "data/stdlib"  # prepared data folder (tokenizer, shards, manifest)
    vocab_size: int = 4096  # BPE vocabulary size, special tokens included
    tokenizer: str = ""  # encode with this existing tokenizer.json (e.g. an imported model's); "" = train a BPE
    val_fraction: float = 0.02  # share of the corpus held out for validation
    max_bytes: int = 0  # stop reading the source after this many bytes; 0 = all
    tokenizer_train_bytes: int = 200_000_000  # bytes of text the BPE tokenizer learns from
    shard_tokens: int = 50_000_000  # tokens per shard file
    # Classification (model.arch vit / audio / text_classifier). source is then "fashion-mnist",
    # "digits", "espeak-digits", "imdb", a folder with one subfolder per class, or a .csv/.parquet file.
    label_column: str = "label"  # .csv/.parquet sources: column holding the class label
    test_source: str = ""  # an extra labelled test set reported on its own at the end ("asterisk-digits", a folder); "" = none
    max_rows: int = 0  # keep at most this many training examples; 0 = all (quick runs, tests)
    clip_seconds: float = 1.0  # audio: clips are trimmed of silence, centred, and padded or cut to this length
    shift_px: int = 0  # images: translate training images by up to this many pixels (zero fill)
    hflip: bool = False  # images: mirror half of the training images left-right
    time_shift_s: float = 0.0  # audio: shift training clips in time by up to this many seconds
    noise_snr_db: float = 0.0  # audio: add noise to training clips at a random SNR down to this many dB; 0 = none
    band_limit_hz: float = 0.0  # audio: pass half the training clips through a channel cut off at random above this (Hz); 0 = none
    spec_masks: int = 0  # audio: silenced time spans (<= 60 ms) and removed frequency bands (<= 300 Hz) per training clip (SpecAugment)
    speed_perturb: float = 0.0  # audio: play training clips faster or slower by up to this fraction (tempo, pitch and formants move together)

    def __post_init__(self) -> None:
        for key in ("max_rows", "shift_px", "time_shift_s", "noise_snr_db", "band_limit_hz", "speed_perturb", "spec_masks"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} ({getattr(self, key)}) must be >= 0")
        if self.speed_perturb >= 0.5:
            raise ConfigError(f"data.speed_perturb ({self.speed_perturb}) must be in [0, 0.5)")
        if not 0.0 < self.clip_seconds <= 30.0:
            raise ConfigError(f"data.clip_seconds ({self.clip_seconds}) must be in (0, 30]")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction ({self.val_fraction}) must be in (0, 0.5)")
        if not 257 <= self.vocab_size <= 1 << 20:
            raise ConfigError(f"data.vocab_size ({self.vocab_size}) must be in [257, 1048576]: 256 bytes + specials")
        for key in ("max_bytes", "tokenizer_train_bytes", "shard_tokens"):
            if getattr(self, key) < 0 or (key != "max_bytes" and getattr(self, key) == 0):
                raise ConfigError(f"data.{key} ({getattr(self, key)}) must be > 0")


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and clipping."""

    name: Literal["adamw", "muon"] = "adamw"  # muon: Muon on 2-D hidden weights, AdamW on the rest
    lr: float = 1e-3  # peak learning rate (Muon's update is RMS-matched to AdamW, so one lr serves both)
    weight_decay: float = 0.1  # applied to 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # after linear warmup
    warmup_steps: int = 20  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # final lr as a fraction of the peak
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr ({self.lr}) must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0 or self.eps <= 0:
            raise ConfigError("optim.weight_decay, optim.grad_clip and optim.warmup_steps must be >= 0")
        for key in ("beta1", "beta2", "min_lr_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"optim.{key} ({getattr(self, key)}) must be in [0, 1]")


@dataclass
class TrainConfig:
    """The training loop: length, batch, precision and compilation."""

    steps: int = 200  # optimizer steps
    global_batch: int = 16  # sequences per optimizer step, over all ranks and micro-steps
    micro_batch: int = 16  # sequences per forward/backward on one rank
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast; params and optimizer stay fp32
    compile: bool = False  # torch.compile the model
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    log_every: int = 10  # steps between metric lines
    peak_tflops: float = 0.0  # device peak for MFU; 0 = measure a large GEMM once and cache it
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default

    def __post_init__(self) -> None:
        for key in ("steps", "global_batch", "micro_batch", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} ({getattr(self, key)}) must be >= 1")
        if self.peak_tflops < 0 or self.threads < 0:
            raise ConfigError("train.peak_tflops and train.threads must be >= 0")


@dataclass
class EvalConfig:
    """Periodic evaluation on held-out data."""

    every: int = 100  # steps between evaluations; 0 = only at the end
    max_batches: int = 20  # micro-batches per evaluation; 0 = the whole validation split

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_batches < 0:
            raise ConfigError("eval.every and eval.max_batches must be >= 0")


@dataclass
class CheckpointConfig:
    """Periodic checkpoints in step-numbered folders of the run directory."""

    every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # complete checkpoints kept; older ones are pruned after a newer one lands

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep_last < 1:
            raise ConfigError(f"checkpoint.every must be >= 0 and checkpoint.keep_last ({self.keep_last}) >= 1")


@dataclass
class FaultsConfig:
    """What the loop does about bad steps (preemption signals need no settings: see RELIABILITY.md)."""

    max_bad_steps: int = 5  # consecutive steps with a non-finite loss or grad norm (each skipped) before the run stops
    spike_factor: float = 4.0  # log a loss above this multiple of its running average; 0 = never

    def __post_init__(self) -> None:
        if self.max_bad_steps < 1:
            raise ConfigError(f"faults.max_bad_steps ({self.max_bad_steps}) must be >= 1")
        if self.spike_factor != 0 and not self.spike_factor > 1:
            raise ConfigError(f"faults.spike_factor ({self.spike_factor}) must be > 1, or 0 to turn spike logging off")


@dataclass
class ParallelConfig:
    """How the job spreads over processes (torchrun): data parallelism, sharding, recompute."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: none on 1 process, ddp if states fit, else fsdp
    ddp_memory_fraction: float = 0.4  # auto picks ddp when params+grads+AdamW states take at most this share of a device
    fsdp_reshard_after_forward: bool = True  # free gathered params after forward (less memory, one more all-gather)
    ac: Literal["none", "full", "every_k"] = "none"  # activation checkpointing: recompute blocks' activations in backward
    ac_every: int = 2  # every_k: checkpoint every k-th block
    timeout_s: float = 600.0  # a collective waiting longer than this fails the job (a peer rank died or hung)

    def __post_init__(self) -> None:
        if not 0.0 < self.ddp_memory_fraction <= 1.0:
            raise ConfigError(f"parallel.ddp_memory_fraction ({self.ddp_memory_fraction}) must be in (0, 1]")
        if self.ac_every < 1:
            raise ConfigError(f"parallel.ac_every ({self.ac_every}) must be >= 1")
        if not self.timeout_s > 0:
            raise ConfigError(f"parallel.timeout_s ({self.timeout_s}) must be > 0")


@dataclass
class RunConfig:
    """A whole run: one field per TOML section."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        t = self.train
        if t.global_batch % t.micro_batch:
            raise ConfigError(
                f"train.global_batch ({t.global_batch}) must divide by train.micro_batch ({t.micro_batch})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    return typing.get_type_hints(cls)


def _sections() -> dict[str, type]:
    """Section name -> its dataclass, in RunConfig's order."""
    return _hints(RunConfig)


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid: {', '.join(valid)}"


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Return value if it fits the annotated type (ints widen to floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} is not a finite number")
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key} = {value!r} has type {type(value).__name__}; expected {hint.__name__}")
    return value


def _parse_override(key: str, text: str, hint: Any) -> Any:
    """Turn a command-line string into the annotated type of `key`."""
    base = str if typing.get_origin(hint) is Literal else hint
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if base is int:
            return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
        return base(text)
    except ValueError:
        raise ConfigError(f"--{key} {text!r} is not a valid {base.__name__}") from None


def build_config(raw: dict[str, Any], overrides: dict[str, str] | None = None) -> RunConfig:
    """Validate a nested dict (from TOML) plus dotted overrides into a RunConfig."""
    sections = _sections()
    merged: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]{_closest(name, list(sections))}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {table!r}")
        merged[name] = dict(table)
    for dotted, text in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in sections or not key:
            raise ConfigError(f"unknown override --{dotted}; use --section.key with a section of {', '.join(sections)}")
        hints = _hints(sections[section])
        if key not in hints:
            raise ConfigError(f"unknown key {dotted}{_closest(key, list(hints))}")
        merged.setdefault(section, {})[key] = _parse_override(dotted, text, hints[key])
    built = {}
    for name, cls in sections.items():
        hints = _hints(cls)
        values = {}
        for key, value in merged.get(name, {}).items():
            if key not in hints:
                raise ConfigError(f"unknown key {name}.{key}{_closest(key, list(hints))}")
            values[key] = _check_value(f"{name}.{key}", value, hints[key])
        built[name] = cls(**values)
    return RunConfig(**built)


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> RunConfig:
    """Read a TOML (or a run's config.json) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        kind = "JSON" if p.suffix == ".json" else "TOML"
        try:
            raw = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{p}: malformed {kind}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a {kind} config must be an object of sections such as {{\"train\": {{...}}}}, got a {type(raw).__name__}")
    return build_config(raw, overrides)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ['--optim.lr', '3e-4', '--train.steps=5'] into {'optim.lr': '3e-4', 'train.steps': '5'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args):
            key, value = arg[2:], args[i + 1]
            i += 2
        else:
            raise ConfigError(f"override {arg} needs a value")
        out[key] = value
    return out
