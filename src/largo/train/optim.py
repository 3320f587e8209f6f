"""Optimizers (AdamW with decay groups, Muon for hidden matrices) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from largo.config import OptimConfig
from largo.models import is_hidden_matrix


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """AdamW (weight decay on >= 2-D weights only); with 'muon', Muon takes the hidden matrices."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_params = [p for n, p in params if cfg.name == "muon" and is_hidden_matrix(n, p)]
    taken = {id(p) for p in muon_params}
    decay = [p for _, p in params if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    device = next(model.parameters()).device.type
    # fused kernels exist for CPU and CUDA; they give the same result on every run (resume-safe).
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=device in ("cpu", "cuda"))
    if not muon_params:
        return [adamw]
    muon = torch.optim.Muon(muon_params, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return [adamw, muon]


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup to 1, then cosine to min_lr_ratio, or warmup-stable-decay, or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(cfg.decay_fraction * total_steps))
        into_decay = step - (total_steps - decay_steps)
        if into_decay <= 0:
            return 1.0
        return 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, into_decay / decay_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedulers(optimizers: list[torch.optim.Optimizer], cfg: OptimConfig, total_steps: int) -> list[LambdaLR]:
    """One LambdaLR per optimizer, all following the same multiplier of their own peak lr."""
    return [LambdaLR(opt, lambda step: lr_multiplier(step, cfg, total_steps)) for opt in optimizers]
