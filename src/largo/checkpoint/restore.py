"""Rebuild a trained model from a checkpoint handle (for eval, generate, export, fine-tuning)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from largo.checkpoint.checkpointer import load_weights
from largo.checkpoint.handle import Checkpoint
from largo.config import RunConfig, build_config
from largo.errors import CheckpointError
from largo.models import build_model, extends_arch
from largo.models.config import ModelConfig
from largo.models.finetune import adapter_state, apply_finetune, merge_adapters


def restore(path: str | Path | Checkpoint, device: torch.device | str = "cpu", *, merge: bool = True) -> tuple[nn.Module, RunConfig, Path]:
    """(model with trained weights in eval mode, the run's config, the checkpoint folder); see load_model."""
    ckpt = Checkpoint.find(path)
    model, cfg = load_model(ckpt, device, merge=merge)
    return model, cfg, ckpt.path


def load_model(ckpt: Checkpoint, device: torch.device | str = "cpu", *, merge: bool = True) -> tuple[nn.Module, RunConfig]:
    """(model with the checkpoint's weights in eval mode, its config).

    An adapter checkpoint (finetune.method = "lora") is its base's weights plus the adapters: merged into
    plain weights (merge=True, what eval, generate and export use), or left as the PeftModel (merge=False).
    """
    if ckpt.state.get("user_model"):
        raise CheckpointError(f"{ckpt.path}: holds a user's own nn.Module; load it with largo.Trainer(model, resume={str(ckpt.path)!r})")
    cfg = ckpt.config()
    model = build_model(cfg.model, device)
    if not ckpt.adapters:
        load_weights(model, *ckpt)
        return model.eval(), cfg
    base = adapter_base(ckpt)
    load_weights(model, *base)
    model = apply_finetune(model, cfg.finetune)
    load_weights(model, *ckpt, only=set(adapter_state(model)))
    return (merge_adapters(model) if merge else model).eval(), cfg


def adapter_base(ckpt: Checkpoint) -> Checkpoint:
    """The base checkpoint an adapter checkpoint was trained over: the one recorded, else model.init_from's;
    refused unless its state.json digest is the recorded one (adapters over other weights compute something else)."""
    recorded = ckpt.state["adapters"]["base"] or {}
    where = recorded.get("checkpoint", "")
    init_from = ckpt.state["config"].get("model", {}).get("init_from", "")
    candidates = [p for p in (where, init_from) if p and Path(p).exists()]
    if not candidates:
        raise CheckpointError(f"{ckpt.path}: holds LoRA adapters over the base {where or init_from or '(none recorded)'}, which is gone; "
                              f"put the base checkpoint back (model.init_from) to use them")
    for candidate in candidates:
        base = Checkpoint.find(candidate)
        if base.state["digest"] == recorded.get("digest"):
            return base
    raise CheckpointError(f"{ckpt.path}: holds LoRA adapters trained over {where} (state.json digest {str(recorded.get('digest'))[:12]}...), "
                          f"but {candidates[-1]} now holds other weights; restore the original base")


# Fields free to differ from the source model: how it was initialised or fine-tuned, and the context length
# (the rotary table is rebuilt); the MLP width and kv heads are compared through what they resolve to.
_INIT_FREE = {"init_from", "init_std", "max_seq_len", "mlp_hidden", "multiple_of", "n_kv_heads"}


def load_init_weights(model: nn.Module, cfg: ModelConfig) -> Checkpoint:
    """Copy cfg.init_from's weights into `model` (fine-tuning), refusing a model that computes differently; its checkpoint."""
    ckpt = Checkpoint.find(cfg.init_from)
    theirs = build_config(ckpt.state["config"]).model
    keys = ["arch"] + [f.name for f in dataclasses.fields(theirs) if f.name not in _INIT_FREE | {"arch"}] + ["hidden", "kv_heads"]
    for key in keys:
        a, b = getattr(theirs, key), getattr(cfg, key, None)
        if key == "arch" and extends_arch(b, a):  # seq2seq on a gpt: the same weights, another task
            continue
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6)):  # float32-stored values
            raise CheckpointError(f"model.init_from {ckpt.path}: its model.{key} is {a!r}, this run's is {b!r}; set them equal")
    if ckpt.adapters:  # a LoRA run: start from its merged weights
        merged, _ = load_model(ckpt)
        model.load_state_dict(merged.state_dict())
        return ckpt
    load_weights(model, *ckpt)
    return ckpt
