"""Rebuild a trained model from a run directory or a checkpoint folder (for eval, generate, export)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from largo.checkpoint.store import STATE, latest_checkpoint, load_model_weights, read_state
from largo.config import RunConfig, build_config
from largo.errors import CheckpointError
from largo.models import build_model


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one of a run directory."""
    p = Path(path)
    if (p / STATE).is_file():
        return p
    if p.is_dir():
        found = latest_checkpoint(p / "checkpoints")
        if found is not None:
            return found
    raise CheckpointError(f"{path}: neither a checkpoint folder nor a run directory with a complete checkpoint")


def restore(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig, Path]:
    """(model with trained weights in eval mode, the run's config, the checkpoint folder)."""
    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    if state.get("user_model"):
        raise CheckpointError(f"{ckpt}: holds a user's own nn.Module; load it with largo.Trainer(model, resume={str(ckpt)!r})")
    cfg = build_config(state["config"])
    model = build_model(cfg.model, device)
    if state.get("sharded"):  # an FSDP run's DCP shards, gathered into this one plain model
        from largo.checkpoint.sharded import load_model_sharded

        load_model_sharded(ckpt, model)
    else:
        load_model_weights(model, ckpt)
    return model.eval(), cfg, ckpt
