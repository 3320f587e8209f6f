"""Another run's model that scores this one (the image classifier behind FID-F, the speech recogniser behind
durations and intelligibility): named by a config key, verified like any checkpoint, plain weights only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from largo.checkpoint.store import load_tensors, locate
from largo.errors import CheckpointError, ConfigError
from largo.models.spec import build_model

T = TypeVar("T")


def locate_scorer(where: str, key: str, need: str, *, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint of the run (or the checkpoint) config key `key` names, and its state; `need` says
    what the scorer is for and how to get one. One ConfigError line when it is missing, damaged, sharded or adapters."""
    if not where or not Path(where).exists():
        raise ConfigError(f"{key} ({where or 'unset'}): no such run folder; {need}")
    try:
        path, state = locate(where, log=log)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}; {need}") from None
    if state.get("sharded") or state.get("adapters"):
        raise ConfigError(f"{key} {path}: a sharded or adapter checkpoint; export it to plain safetensors first")
    return path, state


def saved_section(cls: type[T], raw: dict[str, Any]) -> T:
    """A config dataclass from a saved config's section: the keys cls has (others, from newer or older largo, ignored)."""
    return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})  # type: ignore[arg-type]


def load_scorer(cfg: Any, path: Path, device: torch.device) -> nn.Module:
    """The scorer's model built from its config, its checkpoint's weights loaded, in eval mode."""
    model = build_model(cfg, device)
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    return model.eval()
