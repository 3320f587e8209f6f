"""The [finetune] section: train every weight ("full") or low-rank adapters on chosen projections ("lora", through PEFT).

largo's projections are plain nn.Linear modules (models/layers.py: attention wq, wk, wv, wo; SwiGLU
gate, up, down), so PEFT's LoRA applies to any largo model, and to a user's own module in largo.Trainer,
from outside the model, like parallelism. `apply_finetune` wraps the model (PeftModel: the base weights
frozen, adapters trainable); `merge_adapters` folds the adapters back into plain weights (export, eval).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import nn

from largo.errors import ConfigError
from largo.models.config import ModelConfig
from largo.models.spec import ParamCount, count_params, get_spec
from largo.optional import require

LORA_TARGETS = ["wq", "wv"]  # the LoRA paper's choice (and PEFT's default for Llama's q_proj / v_proj)


@dataclass
class FinetuneConfig:
    """What a run trains: all weights, or LoRA adapters on the named nn.Linear modules (the rest frozen)."""

    method: Literal["full", "lora"] = "full"  # full: every weight; lora: low-rank adapters only (needs model.init_from on the CLI)
    rank: int = 8  # LoRA rank r: each adapted d_out x d_in weight gains B (d_out x r) @ A (r x d_in)
    alpha: float = 16.0  # LoRA scale numerator: the update is (alpha / rank) * B @ A
    dropout: float = 0.0  # dropout on the adapters' input during training
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # nn.Linear names (or name endings) to adapt

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"finetune.rank ({self.rank}) must be >= 1")
        if not self.alpha > 0:
            raise ConfigError(f"finetune.alpha ({self.alpha}) must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune.dropout ({self.dropout}) must be in [0, 1)")
        if self.method == "lora" and not self.target_modules:
            raise ConfigError("finetune.target_modules is empty; name the nn.Linear modules to adapt, e.g. [\"wq\", \"wv\"]")

    @property
    def adapters(self) -> bool:
        """Whether the run trains adapters over frozen weights (only they are checkpointed)."""
        return self.method == "lora"


def as_finetune(value: FinetuneConfig | dict[str, Any] | None) -> FinetuneConfig:
    """A FinetuneConfig from itself, a dict of [finetune] keys (checked like the TOML section) or None (full)."""
    if value is None or isinstance(value, FinetuneConfig):
        return value or FinetuneConfig()
    if not isinstance(value, dict):
        raise ConfigError(f"finetune must be a dict of [finetune] keys or a FinetuneConfig, got {type(value).__name__}")
    valid = [f.name for f in dataclasses.fields(FinetuneConfig)]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key finetune.{unknown[0]}; valid: {', '.join(valid)}")
    return FinetuneConfig(**value)


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's nn.Linear modules (what target_modules may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def lora_config(cfg: FinetuneConfig) -> Any:
    """PEFT's LoraConfig for the section (no bias adapters; PEFT's own initialisation: A random, B zero)."""
    peft = require("peft", "finetune.method = 'lora'")
    return peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), bias="none")


def check_targets(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Every target_modules entry names (or ends the name of) an nn.Linear of the model, else one line listing them."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in cfg.target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise ConfigError(f"finetune.target_modules {missing} name no nn.Linear of this model; "
                          f"its nn.Linear names: {', '.join(linear_names(model))}")


def check_finetune(model_cfg: ModelConfig, cfg: FinetuneConfig) -> None:
    """The section's checks that need the model, on a meta-built one (before a run touches its directory)."""
    if cfg.adapters:
        with torch.device("meta"):
            check_targets(get_spec(model_cfg.arch).build(model_cfg), cfg)


def apply_finetune(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """The model to train: itself for "full"; for "lora", a PeftModel whose only trainable weights are the adapters.

    The adapters' initialisation draws from torch's generator (seeded by the run), so a run is reproducible.
    """
    if not cfg.adapters:
        return model
    peft = require("peft", "finetune.method = 'lora'")
    check_targets(model, cfg)
    try:
        return peft.get_peft_model(model, lora_config(cfg))
    except ValueError as e:  # PEFT's own refusals (a module type it cannot adapt), in one line
        raise ConfigError(f"finetune: PEFT refused the model: {' '.join(str(e).split())[:300]}") from None


def is_adapted(model: nn.Module) -> bool:
    """Whether the model carries PEFT adapters (a PeftModel)."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merge_adapters(model: nn.Module) -> nn.Module:
    """The plain model with every adapter folded into its weights (W + alpha / r * B @ A); other models unchanged."""
    return model.merge_and_unload() if is_adapted(model) else model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of an adapted model, keyed by the model's own parameter names."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def finetune_counts(model_cfg: ModelConfig, cfg: FinetuneConfig) -> ParamCount:
    """count_params for what a run trains: with adapters, `total` counts the adapters and `frozen` the base weights."""
    base = count_params(model_cfg)
    if not cfg.adapters:
        return base
    return _adapter_counts(type(model_cfg), tuple(dataclasses.asdict(model_cfg).items()), cfg.rank, tuple(cfg.target_modules), base)


@lru_cache(maxsize=16)
def _adapter_counts(cls: type[ModelConfig], fields: tuple[tuple[str, Any], ...], rank: int, targets: tuple[str, ...],
                    base: ParamCount) -> ParamCount:
    """Adapter parameters of the model built on the meta device: rank * (d_in + d_out) per adapted nn.Linear."""
    model_cfg = cls(**dict(fields))
    with torch.device("meta"):
        model = get_spec(model_cfg.arch).build(model_cfg)
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)
               and any(name == t or name.endswith(f".{t}") for t in targets)]
    per = {name: rank * (m.in_features + m.out_features) for name, m in adapted}
    blocks = [n for n in per if ".blocks.0." in f".{n}"]
    in_blocks = sum(v for n, v in per.items() if ".blocks." in f".{n}")
    return dataclasses.replace(base, total=sum(per.values()), embedding=0, per_block=sum(per[n] for n in blocks),
                               hidden_matrices=in_blocks, frozen=base.total)
