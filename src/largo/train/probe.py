"""Time a few real training steps of a config on this machine, so `largo plan` measures instead of assuming.

The steps are the run's own: its model (compiled as the run would be), optimizer, precision,
micro-batches and loop (train/loop.py), on its data (random tokens for a corpus not prepared yet).
When the configured step would take too long to time or would not fit in memory, a proxy runs
instead: one micro-step instead of the accumulation, then smaller micro-batches, then fewer
layers; the measured utilisation (dense MFU, the planner's unit) carries over to the full step.
The result is cached (plan/measured.py) under everything that decides a step's time.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from largo.config import RunConfig
from largo.distributed import start_env
from largo.models import get_spec
from largo.observe.memory import PeakMemory
from largo.observe.progress import heartbeat
from largo.observe.throughput import peak_flops
from largo.plan import estimate as est
from largo.plan.check import device_type, step_flops
from largo.plan.measured import compiled_for, measured_step, record_step
from largo.plan.planner import config_step_key, default_mfu, device_memory_bytes
from largo.train.loop import LoopParts, seed_everything
from largo.train.optim import Schedule, build_optimizers
from largo.train.run import build_trained_model, task_steps
from largo.train.session import RunSession

WARM_STEPS = 6  # the first compiles; a compiled step stays slow for a few more (measured: 3 left the demo's step 32% high)
TIMED_STEPS = 5  # their median is the measurement
BUDGET_S = 60.0  # a proxy runs when the configured steps would take longer than this to time (at the planner's guess);
# a proxy's smaller micro-batch runs at a lower MFU (text_tiny's micro-batch 2 of 16 planned its step 2.9x too slow)


def _proxy(cfg: RunConfig, positions: int, guess_s: Callable[[RunConfig], float], fits: Callable[[RunConfig], bool]) -> tuple[RunConfig, list[str]]:
    """cfg shrunk until its steps fit the time budget and memory: one micro-step, then micro-batch halved, then layers halved."""
    changes: list[str] = []
    steps = WARM_STEPS + TIMED_STEPS
    t = cfg.train
    if t.global_batch > t.micro_batch and (steps * guess_s(cfg) > BUDGET_S or not fits(cfg)):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, global_batch=t.micro_batch))
        changes.append(f"1 micro-step of {t.global_batch // t.micro_batch}")
    while cfg.train.micro_batch > 1 and (steps * guess_s(cfg) > BUDGET_S or not fits(cfg)):
        mb = cfg.train.micro_batch // 2
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch=mb, micro_batch=mb))
    if cfg.train.micro_batch != min(t.micro_batch, t.global_batch):
        changes.append(f"micro-batch {cfg.train.micro_batch} of {t.micro_batch}")
    layers = cfg.model.n_layers
    while cfg.model.n_layers > 1 and (steps * guess_s(cfg) > BUDGET_S or not fits(cfg)):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=cfg.model.n_layers // 2))
    if cfg.model.n_layers != layers:
        changes.append(f"{cfg.model.n_layers} of {layers} layers")
    return cfg, changes


def probe_step(cfg: RunConfig, *, devices: int = 1, tokens: float | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure (or read from the cache) the dense MFU of one device's share of cfg's training step on this machine.

    `devices` and `tokens` are the plan's: each device runs global_batch / devices per step; `tokens` sets the
    run length, which decides whether train.compile = auto compiles.
    """
    env = start_env(cfg.train.device, cfg.parallel.timeout_s)
    spec = get_spec(cfg.model.arch)
    key = config_step_key(cfg, devices=devices, device_name=device_type(env.device), tokens=tokens)
    cached = measured_step(key)
    if cached is not None:
        return cached
    task = spec.probe_task(cfg.data, cfg.model, seed=cfg.run.seed, log=log)
    resolved = dataclasses.replace(cfg, model=task.model)
    steps = cfg.train.steps if tokens is None else math.ceil(tokens / (cfg.train.global_batch * task.positions))
    compiled = compiled_for(resolved, task.positions, steps, devices)
    share = cfg.train.global_batch // devices  # one device's part of the step
    full = dataclasses.replace(resolved, train=dataclasses.replace(cfg.train, global_batch=share, micro_batch=min(cfg.train.micro_batch, share)))
    positions = task.positions
    layout, peak = est.layout_for(full.train.precision), peak_flops(env.device, full.train.precision, full.train.peak_tflops, log=log)

    def guess_s(c: RunConfig) -> float:
        flops, attention, speed = step_flops(c, positions, env.device)
        mfu, _ = default_mfu(device_type(env.device), c.train.precision, None, est.count_params(c.model).total)
        return est.timing(flops, steps=1, devices=1, peak_flops=peak, mfu=mfu, checkpointing=c.parallel.ac != "none",
                          attention_flops_per_step=attention, attention_speed=speed)["step_s"]

    def fits(c: RunConfig) -> bool:
        t = c.train
        need = est.memory(c.model, seq_len=positions, micro_batch=t.micro_batch, accum_steps=max(1, t.global_batch // t.micro_batch),
                          layout=layout, optimizer=c.optim.name, strategy="none", shards=1, checkpointing=c.parallel.ac != "none",
                          device_type=env.device.type).peak
        return need <= est.USABLE_FRACTION * device_memory_bytes(env)

    probe, changes = _proxy(full, positions, guess_s, fits)
    what = "this run's step" if not changes else f"a proxy step ({', '.join(changes)})"
    log(f"plan: timing {WARM_STEPS + TIMED_STEPS} steps of {what} on {device_type(env.device)} "
        f"(compile {compiled}; cached for the next plan and the run's plan-vs-measured)")
    with heartbeat(f"plan: timing {WARM_STEPS + TIMED_STEPS} steps", log):
        step_s, peak_bytes = _time_steps(probe, task, env, compiled, peak)
    flops, attention, _ = step_flops(probe, positions, env.device)
    entry = {"step_s": step_s, "flops": flops, "attention_flops": attention, "checkpointing": probe.parallel.ac != "none",
             "when": time.strftime("%Y-%m-%d %H:%M"),
             "method": f"measured: median of {TIMED_STEPS} timed steps of {what} on this machine, compile {compiled}"}
    if not changes and peak_bytes is not None:  # the configured step itself: its peak is the run's (a proxy's is not)
        entry["peak_bytes"] = peak_bytes
    record_step(key, entry)
    return entry


def _time_steps(cfg: RunConfig, task: Any, env: Any, compiled: str, peak: float) -> tuple[float, int | None]:
    """Median seconds per optimizer step over TIMED_STEPS steps of the real loop, after WARM_STEPS, and the peak memory
    above the baseline before the model was built (measured as a run measures it; None where it cannot be)."""
    memory = PeakMemory(env.device)
    total = WARM_STEPS + TIMED_STEPS
    run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=total, log_every=1),
                              eval=dataclasses.replace(cfg.eval, every=0), checkpoint=dataclasses.replace(cfg.checkpoint, every=0))
    seed_everything(cfg.run.seed)
    model = build_trained_model(run, env, "none", full_init=True, compiled=compiled, say=lambda _m: None)[0]  # adapters too
    optimizers = build_optimizers(model, cfg.optim, cfg.train.precision)
    session = RunSession.in_memory(run, env)  # no folder, no checkpoints: the records stay in memory
    parts = LoopParts(model=model, optimizers=optimizers, schedule=Schedule(optimizers, cfg.optim, total, env.device),
                      **task_steps(run, task, model, env), evaluate=None, save=session.save, flops_per_step=0.0, peak_flops=peak)
    memory.start()
    try:
        session.run(parts)
    finally:
        peak_bytes = memory.stop()
    return statistics.median(r["step_time_ms"] for r in session.metrics.records[WARM_STEPS:]) / 1000, peak_bytes
