"""Run configuration: TOML sections mapped one-to-one onto typed dataclasses, with dotted overrides.

[model] and [data] take their classes from the architecture that model.arch names (its spec, in
models/): a key that architecture does not have is a one-line error listing the ones it has.
"""

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

from largo.checkpoint.store import locate
from largo.data.config import DataConfig, TextDataConfig
from largo.presets import preset_names, preset_path
from largo.errors import ConfigError
from largo.models import extends_arch, get_spec, spec_names
from largo.models.config import ModelConfig
from largo.models.finetune import FinetuneConfig
from largo.models.gpt import GPTConfig
from largo.observe.trackers import check_names

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
    embed_lr_mult: float = 1.0  # token embeddings' lr as a multiple of lr (AdamW): each row sees few tokens a step

    def __post_init__(self) -> None:
        for key in ("lr", "embed_lr_mult"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"optim.{key} ({getattr(self, key)}) must be > 0")
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
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 = autocast (params and optimizer stay fp32); auto = bf16 on GPUs, on CPUs where a bf16 matmul of the run's shape is measured >= 1.2x fp32
    compile: Literal["auto", "true", "false"] = "auto"  # torch.compile; auto = on for runs of >= 1e13 training FLOPs (see train/run.py)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    log_every: int = 10  # steps between metric lines
    peak_tflops: float = 0.0  # device peak for MFU; 0 = measure a large GEMM once and cache it
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    time_budget_s: float = 0.0  # 0 = off; else train.steps is lowered to what fits this many seconds at the planned step time (largo plan measures it)

    def __post_init__(self) -> None:
        for key in ("steps", "global_batch", "micro_batch", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} ({getattr(self, key)}) must be >= 1")
        if self.peak_tflops < 0 or self.threads < 0 or not 0 <= self.time_budget_s < float("inf"):
            raise ConfigError("train.peak_tflops, train.threads and train.time_budget_s must be finite and >= 0")


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
    ddp_memory_fraction: float = 0.4  # auto picks ddp when the planner's peak of a replica takes at most this share of a device
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
class ObserveConfig:
    """Experiment trackers: every metrics record also goes to these (rank 0 only); metrics.jsonl stays the record."""

    # any of "tensorboard" (event files in the run directory), "wandb" (offline), "mlflow" (local file store under
    # the run directory), "trackio"; all but tensorboard are optional installs. CLI: largo train ... --tracker NAME
    trackers: list[str] = field(default_factory=list)
    project: str = "largo"  # the project (W&B, trackio) or experiment (MLflow) the run is filed under

    def __post_init__(self) -> None:
        self.trackers = check_names(self.trackers)
        if not self.project:
            raise ConfigError("observe.project must not be empty")


@dataclass
class RunConfig:
    """A whole run: one field per TOML section."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=TextDataConfig)  # the class model.arch's spec names
    model: ModelConfig = field(default_factory=GPTConfig)  # the class model.arch's spec names
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)

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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what tensors, numpy and the C code below take


def _check_int_range(section: str, obj: Any) -> None:
    """Every integer key of a built section fits 64 bits (its own checks have bounded it from below already)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, int) or INT64_MIN <= value <= INT64_MAX:
            continue
        bound = f"at most {INT64_MAX}" if value > 0 else f"at least {INT64_MIN}"
        raise ConfigError(f"{section}.{f.name} ({value}) must be {bound}: integer keys take 64-bit values")


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Return value if it fits the annotated type (ints widen to floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin is list:  # list[str]: a TOML array of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} = {value!r} must be a list of strings, e.g. [\"a\", \"b\"]")
        return list(value)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and {"true", "false"} <= set(choices):  # TOML's true/false for a switch with an "auto"
            value = str(value).lower()
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
    if typing.get_origin(hint) is list:  # --observe.trackers tensorboard,wandb
        return [part.strip() for part in text.split(",") if part.strip()]
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


def _arch_sections(arch: Any) -> dict[str, type]:
    """Section name -> dataclass, with [model] and [data] those of the architecture `arch` names."""
    if not isinstance(arch, str):
        raise ConfigError(f"model.arch = {arch!r} has type {type(arch).__name__}; expected str")
    spec = get_spec(arch)
    return {**_sections(), "model": spec.model_config, "data": spec.data_config}


def _unknown(section: str, key: str, valid: list[str], arch: str) -> ConfigError:
    """The error for a key a section lacks: a near miss, or (for [model] and [data]) which architectures have it."""
    owners = [name for name in spec_names() if section in ("model", "data") and key in _hints(
        getattr(get_spec(name), f"{section}_config"))]
    if owners:
        return ConfigError(f"{section}.{key} is a key of model.arch = {' or '.join(map(repr, owners))}, not {arch!r}; "
                           f"the [{section}] keys of {arch!r}: {', '.join(valid)}")
    return ConfigError(f"unknown key {section}.{key}{_closest(key, valid)}")


# Model fields that stay the run's own when model.init_from gives the model its shape: how the weights start,
# their init scale (unused), and the training context (the rotary table is rebuilt for any length).
_INIT_OWN = ("init_from", "init_std", "max_seq_len")
# Fields compared through what they resolve to (the MLP width, the kv heads), not as written.
_INIT_RESOLVED = ("mlp_hidden", "multiple_of", "n_kv_heads")


def _source_model(init_from: str) -> dict[str, Any]:
    """The [model] section of the checkpoint model.init_from names (a checkpoint folder or a run's newest intact one), verified."""
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from {init_from!r}: no largo checkpoint folder or run directory there "
                          f"(a Hugging Face folder or GGUF file becomes one with `largo import`)")
    found = locate(init_from, log=lambda _m: None)  # a damaged newer checkpoint is named when training loads the weights
    model = found[1]["config"].get("model") if found is not None else None
    if not isinstance(model, dict):
        raise ConfigError(f"model.init_from {init_from!r}: its checkpoint holds no [model] section to take the model's shape from "
                          f"(a Hugging Face folder or GGUF file becomes a largo run with `largo import`)")
    return model


def _explicit_model_keys(raw: dict[str, Any], overrides: dict[str, str]) -> set[str]:
    return set(raw.get("model", {})) | {k.partition(".")[2] for k in overrides if k.startswith("model.")}


def _init_source(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any] | None:
    """The source's [model] section when model.init_from is set and the config leaves some of its shape to it, else None."""
    model = raw.get("model", {})
    init_from = overrides.get("model.init_from", model.get("init_from", ""))
    if not init_from or not isinstance(init_from, str):
        return None
    arch = overrides.get("model.arch", model.get("arch"))
    if isinstance(arch, str):  # every field written out (a saved run's config): nothing to take, the weights are checked on load
        shape = {f.name for f in dataclasses.fields(get_spec(arch).model_config)} - set(_INIT_OWN)
        if shape <= _explicit_model_keys(raw, overrides):
            return None
    return _source_model(init_from)


def _same(a: Any, b: Any) -> bool:
    """Equal, floats within float32 round-off (a source's config may hold float32-stored values)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _contradiction(key: str, mine: Any, theirs: Any, init_from: str) -> ConfigError:
    return ConfigError(f"model.{key} = {mine!r} contradicts model.init_from {init_from!r}, whose model.{key} is {theirs!r}; "
                       f"drop the key (the model's shape comes from the source) or set it to {theirs!r}")


def _with_source(model: dict[str, Any], source: dict[str, Any], cls: type[ModelConfig], init_from: str) -> dict[str, Any]:
    """The [model] keys with every shape field the config leaves out taken from the source; a written one must agree."""
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in _INIT_OWN and f.name in source]
    for key in fields:
        if key == "arch" and extends_arch(model.get("arch"), source[key]):
            continue
        if key in model and key not in _INIT_RESOLVED and not _same(model[key], source[key]):
            raise _contradiction(key, model[key], source[key], init_from)
    return {**{k: source[k] for k in fields if k not in model}, **model}


def _check_resolved(built: ModelConfig, source: dict[str, Any], init_from: str) -> None:
    """The MLP width and kv heads must resolve as the source's do (mlp_hidden 0 + multiple_of may equal an explicit width)."""
    theirs = type(built)(**{k: v for k, v in source.items() if k in _hints(type(built))})
    for key, field_name in (("hidden", "mlp_hidden"), ("kv_heads", "n_kv_heads")):
        if getattr(built, key) != getattr(theirs, key):
            raise _contradiction(field_name, getattr(built, field_name), getattr(theirs, field_name), init_from)


def build_config(raw: dict[str, Any], overrides: dict[str, str] | None = None) -> RunConfig:
    """Validate a nested dict (from TOML) plus dotted overrides into a RunConfig.

    With model.init_from, the [model] keys the config leaves out come from the source checkpoint's config.
    """
    for name, table in raw.items():
        if name not in _sections():
            raise ConfigError(f"unknown section [{name}]{_closest(name, list(_sections()))}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {table!r}")
    overrides = overrides or {}
    source = _init_source(raw, overrides)
    default_arch = source.get("arch", GPTConfig.arch) if source else GPTConfig.arch
    arch = overrides.get("model.arch", raw.get("model", {}).get("arch", default_arch))
    sections = _arch_sections(arch)
    merged: dict[str, dict[str, Any]] = {name: dict(table) for name, table in raw.items()}
    for dotted, text in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in sections or not key:
            raise ConfigError(f"unknown override --{dotted}; use --section.key with a section of {', '.join(sections)}")
        hints = _hints(sections[section])
        if key not in hints:
            raise _unknown(section, key, list(hints), arch)
        merged.setdefault(section, {})[key] = _parse_override(dotted, text, hints[key])
    if source is not None:
        merged["model"] = _with_source(merged.get("model", {}), source, sections["model"], merged["model"]["init_from"])
    built = {}
    for name, cls in sections.items():
        hints = _hints(cls)
        values = {}
        for key, value in merged.get(name, {}).items():
            if key not in hints:
                raise _unknown(name, key, list(hints), arch)
            values[key] = _check_value(f"{name}.{key}", value, hints[key])
        built[name] = cls(**values)
        _check_int_range(name, built[name])  # before anything converts a value to a tensor or a C integer
    if source is not None:
        _check_resolved(built["model"], source, built["model"].init_from)
    return RunConfig(**built)


def with_decoding(cfg: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """cfg with `largo eval`'s overrides of how the model decodes (its config's decoding_keys); any other key is refused."""
    allowed, model = type(cfg.model).decoding_keys, cfg.model
    values: dict[str, Any] = {}
    for key, text in overrides.items():
        section, _, name = key.partition(".")
        if section != "model" or name not in allowed:
            choices = ", ".join(f"--model.{k}" for k in allowed) or f"none for model.arch = {model.arch!r}"
            raise ConfigError(f"--{key}: a trained model takes overrides only of how it decodes ({choices}); the rest is the checkpoint's")
        values[name] = _parse_override(key, text, _hints(type(model))[name])
    return dataclasses.replace(cfg, model=dataclasses.replace(model, **values)) if values else cfg


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> RunConfig:
    """Read a TOML (or a run's config.json), or a preset by name (`text_tiny`), and apply dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            preset = preset_path(str(path))
            if preset is None:
                raise ConfigError(f"config {path}: no such file, and no preset of that name; presets: {', '.join(preset_names())} "
                                  f"(largo presets lists them)")
            p = preset
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
