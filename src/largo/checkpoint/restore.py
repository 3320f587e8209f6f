"""Rebuild a trained model from a run directory or a checkpoint folder (for eval, generate, export, fine-tuning)."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.checkpoint.checkpointer import load_weights
from largo.checkpoint.store import STATE, newest_intact, verify_checkpoint
from largo.config import RunConfig, build_config
from largo.errors import CheckpointError, ConfigError
from largo.models import build_model
from largo.models.config import ModelConfig
from largo.models.finetune import adapter_state, apply_finetune, merge_adapters


def _warn(message: str) -> None:
    print(f"largo: {message}", file=sys.stderr)


def resolve_checkpoint(path: str | Path, log: Callable[[str], None] = _warn) -> tuple[Path, dict[str, Any]]:
    """(checkpoint, verified state): a checkpoint folder itself, or the newest intact one of a run directory.

    A checkpoint folder that is damaged is refused; in a run directory a damaged newest checkpoint is named
    in a warning and the one before it is taken, as `--resume auto` does.
    """
    p = Path(path)
    if p.is_file():
        raise CheckpointError(f"{path}: a file; largo loads a run directory or a checkpoint folder of safetensors + JSON, "
                              f"never a pickle/.pt/.bin file (loading one can run code)")
    if (p / STATE).is_file():
        return p, verify_checkpoint(p)
    found = newest_intact(p / "checkpoints", log) if p.is_dir() else None
    if found is None:
        raise CheckpointError(f"{path}: neither a checkpoint folder nor a run directory with a complete checkpoint")
    return found


def restore(path: str | Path, device: torch.device | str = "cpu", *, merge: bool = True) -> tuple[nn.Module, RunConfig, Path]:
    """(model with trained weights in eval mode, the run's config, the checkpoint folder).

    An adapter checkpoint (finetune.method = "lora") is its base's weights plus the adapters: merged into
    plain weights (merge=True, what eval, generate and export use), or left as the PeftModel (merge=False).
    """
    ckpt, state = resolve_checkpoint(path)
    if state.get("user_model"):
        raise CheckpointError(f"{ckpt}: holds a user's own nn.Module; load it with largo.Trainer(model, resume={str(ckpt)!r})")
    try:
        cfg = build_config(state["config"])
    except (ConfigError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{ckpt}/{STATE}: its config is not valid for this largo ({e})") from None
    model = build_model(cfg.model, device)
    if not state.get("adapters"):
        load_weights(model, ckpt, state)
        return model.eval(), cfg, ckpt
    base, base_state = adapter_base(ckpt, state)
    load_weights(model, base, base_state)
    model = apply_finetune(model, cfg.finetune)
    load_weights(model, ckpt, state, only=set(adapter_state(model)))
    return (merge_adapters(model) if merge else model).eval(), cfg, ckpt


def adapter_base(ckpt: Path, state: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """(base checkpoint, its verified state) an adapter checkpoint was trained over: the one recorded, else model.init_from's;
    refused unless its state.json digest is the recorded one (adapters over other weights compute something else)."""
    recorded = state["adapters"]["base"] or {}
    where = recorded.get("checkpoint", "")
    init_from = state["config"].get("model", {}).get("init_from", "")
    candidates = [p for p in (where, init_from) if p and Path(p).exists()]
    if not candidates:
        raise CheckpointError(f"{ckpt}: holds LoRA adapters over the base {where or init_from or '(none recorded)'}, which is gone; "
                              f"put the base checkpoint back (model.init_from) to use them")
    for candidate in candidates:
        base, base_state = resolve_checkpoint(candidate)
        if base_state["digest"] == recorded.get("digest"):
            return base, base_state
    raise CheckpointError(f"{ckpt}: holds LoRA adapters trained over {where} (state.json digest {str(recorded.get('digest'))[:12]}...), "
                          f"but {candidates[-1]} now holds other weights; restore the original base")


# Fields free to differ from the source model: how it was initialised or fine-tuned, and the context length
# (the rotary table is rebuilt); the MLP width and kv heads are compared through what they resolve to.
_INIT_FREE = {"init_from", "init_std", "max_seq_len", "mlp_hidden", "multiple_of", "n_kv_heads"}


def load_init_weights(model: nn.Module, cfg: ModelConfig) -> tuple[Path, dict[str, Any]]:
    """Copy cfg.init_from's weights into `model` (fine-tuning), refusing a model that computes differently; (checkpoint, state)."""
    ckpt, state = resolve_checkpoint(cfg.init_from)
    theirs = build_config(state["config"]).model
    keys = ["arch"] + [f.name for f in dataclasses.fields(theirs) if f.name not in _INIT_FREE | {"arch"}] + ["hidden", "kv_heads"]
    for key in keys:
        a, b = getattr(theirs, key), getattr(cfg, key, None)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6)):  # float32-stored values
            raise CheckpointError(f"model.init_from {ckpt}: its model.{key} is {a!r}, this run's is {b!r}; set them equal")
    if state.get("adapters"):  # a LoRA run: start from its merged weights
        merged, _, _ = restore(ckpt)
        model.load_state_dict(merged.state_dict())
        return ckpt, state
    load_weights(model, ckpt, state)
    return ckpt, state
