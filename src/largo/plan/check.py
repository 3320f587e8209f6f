"""Plan vs measured for a finished run: the planner's estimate of this exact run next to what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.models import get_spec, trainable
from largo.models.finetune import finetune_counts
from largo.observe.throughput import attention_speed, record_mfu
from largo.plan import estimate as est
from largo.plan.devices import CPU, spec_for_cuda_name
from largo.plan.measured import compiled_for, measured_step, step_key
from largo.plan.planner import default_mfu
from largo.plan.report import comparison_rows, format_rows, write_comparison


# What a whole-model compiled step keeps of the eager model's activations and temporaries: text_tiny measured 0.50 of
# them (bf16, AVX-512 BF16 CPU: 283 MiB of 504 MiB modelled) and 0.66 (fp32, AVX2-only CPU: 419 of 602); 0.58 is within
# 15% of both. `largo plan` measures the configured step's own peak, which replaces this whenever it ran.
COMPILED_KEEPS = 0.58


def device_type(device: torch.device) -> str:
    """The planner's --device-type name for the device a run used ('cpu', 'h100', ... or the CUDA name)."""
    if device.type != "cuda":
        return CPU
    spec = spec_for_cuda_name(torch.cuda.get_device_name(device))
    return spec.name if spec else torch.cuda.get_device_name(device).lower().replace(" ", "-")


def _run_strategy(cfg: Any, world: int) -> tuple[str, bool]:
    """(strategy, activation checkpointing) the run used, read from an optional [parallel] section."""
    parallel = getattr(cfg, "parallel", None)
    strategy = getattr(parallel, "strategy", "auto")
    # parallel.ac is a mode name, and "none" is truthy: read as a bool it planned every run with recompute.
    # every_k is planned as full recompute (the estimate has no partial mode): a lower bound on its peak.
    checkpointing = getattr(parallel, "ac", "none") != "none"
    if strategy not in est.STRATEGIES:  # 'auto': a replica per rank unless told otherwise
        strategy = "ddp" if world > 1 else "none"
    return strategy, checkpointing


def step_flops(cfg: Any, seq_len: int, device: torch.device) -> tuple[float, float, float]:
    """(FLOPs, attention FLOPs) of one optimizer step, and attention's speed relative to GEMMs on this device."""
    tokens = seq_len * cfg.train.global_batch
    attention = 12 * cfg.model.n_layers * cfg.model.dim * seq_len * tokens
    speed = 1.0 if cfg.train.peak_tflops else attention_speed(device, cfg.train.precision)  # a configured peak: unknown device
    return float(get_spec(cfg.model.arch).flops_per_token(cfg.model, seq_len) * tokens), float(attention), speed


def planned_step(cfg: Any, *, world: int, device: torch.device, peak_flops_per_device: float, seq_len: int) -> tuple[float, float, str]:
    """(step seconds, MFU, where the utilisation came from) that `largo plan` predicts for cfg's step on `device`."""
    _, checkpointing = _run_strategy(cfg, world)
    counts = finetune_counts(cfg.model, cfg.finetune)
    key = step_key(cfg, positions=seq_len, devices=world, device_name=device_type(device),
                   compiled=compiled_for(cfg, seq_len, cfg.train.steps, world))
    flops, attention, speed = step_flops(cfg, seq_len, device)
    mfu, mfu_source = default_mfu(device_type(device), cfg.train.precision, None, counts.total, (key, peak_flops_per_device, speed))
    t = est.timing(flops, steps=1, devices=world, peak_flops=peak_flops_per_device, mfu=mfu, checkpointing=checkpointing,
                   attention_flops_per_step=attention, attention_speed=speed)
    return t["step_s"], t["mfu_model"], mfu_source


def estimate_run(cfg: Any, *, model: nn.Module, world: int, device: torch.device, peak_flops_per_device: float,
                 seq_len: int) -> dict[str, Any]:
    """What `largo plan` predicts for this run: params, peak bytes per device, step time and MFU."""
    strategy, checkpointing = _run_strategy(cfg, world)
    layout = est.layout_for(cfg.train.precision)
    counts = finetune_counts(cfg.model, cfg.finetune)  # with adapters: they train, the base is held frozen
    accum = max(1, cfg.train.global_batch // (cfg.train.micro_batch * world))
    mem = est.memory(cfg.model, seq_len=seq_len, micro_batch=cfg.train.micro_batch, accum_steps=accum, layout=layout,
                     optimizer=cfg.optim.name, strategy=strategy, shards=world, checkpointing=checkpointing, counts=counts,
                     device_type=device.type)
    step_s, mfu, mfu_source = planned_step(cfg, world=world, device=device, peak_flops_per_device=peak_flops_per_device, seq_len=seq_len)
    compiled = compiled_for(cfg, seq_len, cfg.train.steps, world)
    probe = measured_step(step_key(cfg, positions=seq_len, devices=world, device_name=device_type(device), compiled=compiled))
    peak, peak_source = mem.peak, "the memory model (plan/estimate.py)"
    if probe and isinstance(probe.get("peak_bytes"), int) and probe["peak_bytes"] > 0:  # largo plan timed this very step
        peak, peak_source = probe["peak_bytes"], "measured by largo plan's timed steps of this configuration"
    elif compiled == "model":  # the memory model counts what eager autograd keeps; a whole-model graph keeps less
        fixed = mem.params + mem.grads_at_peak + mem.optimizer
        peak = fixed + int(COMPILED_KEEPS * (mem.peak - fixed))
        peak_source = f"the memory model (plan/estimate.py), activations and temporaries x {COMPILED_KEEPS} under whole-model compile"
    return {"params": counts.total, "optimizer_bytes": mem.optimizer, "peak_bytes": peak, "step_s": step_s, "mfu": mfu,
            "context": {"strategy": strategy, "layout": layout.name, "peak_phase": mem.peak_phase, "mfu_source": mfu_source,
                        "peak_source": peak_source, "modelled_peak_bytes": mem.peak}}


def check_run(cfg: Any, run_dir: Path, *, model: nn.Module, world: int, device: torch.device, peak_flops_per_device: float,
              seq_len: int, peak_bytes: int | None, memory_method: str, step_s: float, mfu: float, steps_run: int,
              optimizer_bytes: int | None = None) -> list[dict[str, Any]]:
    """Write plan_vs_measured.json/.md, record this run's MFU for future plans, return the rows.

    optimizer_bytes: what the optimizers' states hold on this rank at the end (moments, step counters).
    """
    estimate = estimate_run(cfg, model=model, world=world, device=device, peak_flops_per_device=peak_flops_per_device, seq_len=seq_len)
    context = estimate.pop("context")
    measured = {"params": trainable(model), "optimizer_bytes": optimizer_bytes, "peak_bytes": peak_bytes,
                "step_s": step_s, "mfu": mfu}
    rows = comparison_rows(estimate, measured)
    context |= {"memory_method": memory_method, "steps": steps_run, "device": device_type(device), "world": world,
                "step_s": "median over the logging windows after the first (compiling and warm-up excluded)"}
    write_comparison(run_dir, rows, context)
    # Short runs say little about throughput; an MFU against a configured peak is not comparable with the table's.
    # The history feeds language-model plans (keyed by device and precision only): a classifier's stem and pooled
    # head run at another MFU, so only architectures whose spec says so record theirs.
    if steps_run >= 5 and not cfg.train.peak_tflops and get_spec(cfg.model.arch).feeds_mfu_history:
        flops, attention, speed = step_flops(cfg, seq_len, device)
        record_mfu(device_type(device), cfg.train.precision, est.dense_mfu(mfu, flops, attention, speed), est.count_params(cfg.model).total)
    return rows


__all__ = ["check_run", "estimate_run", "format_rows", "planned_step"]
