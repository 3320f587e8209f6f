"""Optimizers (AdamW with decay groups, Muon for hidden matrices) and the warmup + decay schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from largo.config import OptimConfig
from largo.models import is_hidden_matrix


def build_optimizers(model: nn.Module, cfg: OptimConfig, precision: str = "fp32") -> list[torch.optim.Optimizer]:
    """AdamW (weight decay on >= 2-D weights only); with 'muon', Muon takes the hidden matrices.

    precision is the run's resolved train.precision: Muon orthogonalises in bf16 only where the run found bf16 pays."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_params = [p for n, p in params if cfg.name == "muon" and is_hidden_matrix(n, p)]
    taken = {id(p) for p in muon_params}
    embeds = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]
    if cfg.embed_lr_mult != 1.0:  # a group of their own, at their own rate (one group when equal: old checkpoints load)
        taken |= {id(p) for p in embeds}
    decay = [p for _, p in params if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.embed_lr_mult != 1.0 and embeds:
        groups.append({"params": embeds, "weight_decay": cfg.weight_decay, "lr": cfg.lr * cfg.embed_lr_mult})
    device = next(model.parameters()).device.type
    # fused kernels exist for CPU and CUDA; they give the same result on every run (resume-safe).
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=device in ("cpu", "cuda"))
    if not muon_params:
        return [adamw]
    muon = Muon(muon_params, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw",
                ns_dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    return [adamw, muon]


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in ns_dtype (torch's always casts to bf16).

    Why: on a CPU without fast bf16 matmuls (AVX2) torch's bf16 iteration cost 1.0 s of a 1.4 s step for a 0.9M-parameter
    detector; in fp32 the same step is exactly as exact and ~0.05 s. With ns_dtype bf16 this is torch's Muon, unchanged.
    The state (momentum_buffer) and param groups are torch's, so checkpoints are interchangeable.
    """

    def __init__(self, params: Any, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            lr, momentum = float(group["lr"]), group["momentum"]
            for p, grad, buf in zip(params, grads, buffers):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Jordan et al. 2024) towards U V^T of g = U S V^T, computed in dtype."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def muon_lr(lr: float, adjust: str | None, shape: torch.Size) -> float:
    """The learning rate a matrix of this shape takes: torch's Muon scaling (match_rms_adamw: 0.2 sqrt(max side))."""
    rows, cols = shape[:2]
    if adjust is None or adjust == "original":
        return lr * math.sqrt(max(1, rows / cols))
    return lr * (0.2 * math.sqrt(max(rows, cols)) if adjust == "match_rms_adamw" else 1.0)


def lr_multiplier(step: float | torch.Tensor, cfg: OptimConfig, total_steps: int) -> float | torch.Tensor:
    """Linear warmup to 1, then cosine to min_lr_ratio, or warmup-stable-decay, or constant.

    `step` (applied steps so far) is a number, or a 0-d tensor on the device, so the loop can move the
    learning rate without reading anything back from the device.
    """
    if isinstance(step, torch.Tensor):
        warm = (step + 1) / (cfg.warmup_steps + 1)
        return torch.where(step < cfg.warmup_steps, warm, _decayed(step, cfg, total_steps, torch))
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    return float(_decayed(step, cfg, total_steps, math))


def _decayed(step: Any, cfg: OptimConfig, total_steps: int, ops: Any) -> Any:
    """The multiplier after warmup; `ops` is math for numbers or torch for tensors (the same formula for both)."""
    if cfg.schedule == "constant":
        return step * 0 + 1.0
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(cfg.decay_fraction * total_steps))
        into_decay = (step - (total_steps - decay_steps)) / decay_steps
        into_decay = min(max(into_decay, 0.0), 1.0) if ops is math else into_decay.clamp(0.0, 1.0)
        return 1.0 - (1.0 - cfg.min_lr_ratio) * into_decay
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    progress = min(progress, 1.0) if ops is math else progress.clamp(max=1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + ops.cos(math.pi * progress))


def takes_found_inf(opt: torch.optim.Optimizer) -> bool:
    """Fused Adam/AdamW skip their own update when told a step was not finite (found_inf), and take a tensor lr."""
    return isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and bool(opt.defaults.get("fused"))


class Schedule:
    """Every param group's learning rate as base lr x lr_multiplier(applied steps); a skipped step does not advance it.

    When every optimizer takes found_inf (fused AdamW), the applied-step count and the learning rates
    live on the device: the loop steps, skips and moves the schedule without waiting for the device.
    Otherwise (Muon, a user's optimizer) the host decides each step and sets float learning rates.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], cfg: OptimConfig, total_steps: int, device: torch.device):
        self.optimizers, self.cfg, self.total_steps = optimizers, cfg, total_steps
        self.on_device = bool(optimizers) and all(takes_found_inf(opt) for opt in optimizers)
        self.base = [[float(g["lr"]) for g in opt.param_groups] for opt in optimizers]
        self.applied: int | torch.Tensor = torch.zeros((), dtype=torch.float64, device=device) if self.on_device else 0
        if self.on_device:
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
        self.set_lrs()

    def set_lrs(self) -> None:
        """Every group's learning rate for the next step."""
        mult = lr_multiplier(self.applied, self.cfg, self.total_steps)
        for opt, bases in zip(self.optimizers, self.base):
            for g, base in zip(opt.param_groups, bases):
                if not self.on_device:
                    g["lr"] = base * mult
                elif isinstance(g["lr"], torch.Tensor):
                    g["lr"].copy_(mult * base)
                else:  # a checkpoint's load_state_dict put a number back
                    g["lr"] = (mult * base).to(torch.float32)

    def fixed_until(self, total_steps: int) -> int:
        """Applied steps whose rates do not depend on total_steps: up to the decay's start (WSD), every one (constant),
        the warm-up (cosine). A run may change its total up to this step without changing any rate it already used."""
        if self.cfg.schedule == "constant":
            return total_steps
        if self.cfg.schedule == "wsd":
            return total_steps - max(1, int(self.cfg.decay_fraction * total_steps))
        return min(self.cfg.warmup_steps, total_steps)

    def refit(self, total_steps: int) -> None:
        """Lay the schedule out for another total (a time-budgeted run re-fitted to its measured step time)."""
        self.total_steps = total_steps
        self.set_lrs()

    def advance(self, skipped: torch.Tensor | bool) -> None:
        """After an optimizer step: one more applied step unless it was skipped; set the next rates."""
        self.applied = self.applied + (1 - skipped.double()) if self.on_device else self.applied + (0 if skipped else 1)
        self.set_lrs()

    def lr(self) -> float | torch.Tensor:
        """The first group's learning rate (a device tensor when on the device: read it at a logging step only)."""
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else 0.0

    def state_dict(self) -> dict[str, int]:
        return {"applied_steps": int(self.applied)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        applied = int(state["applied_steps"])
        self.applied = self.applied.fill_(applied) if self.on_device else applied
        self.set_lrs()
