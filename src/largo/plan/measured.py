"""Step times measured on this machine (`largo plan`'s probe, train/probe.py), cached under everything that decides them.

A plan for a config that was measured uses that measurement instead of the MFU history or an
assumption; the run's own plan-vs-measured table uses it too, so a first run is compared with a
prediction made on the same machine.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from largo.models import get_spec
from largo.observe.throughput import cache_file
from largo.plan.estimate import RECOMPUTE, compile_decision, weighted_flops

_PROBES = "step_probes.json"
_KEEP = 64  # most recent measurements kept


def compiled_for(cfg: Any, positions: int, steps: int, devices: int) -> str:
    """The compile mode a run of `steps` steps would use (train.compile auto decides from its training FLOPs)."""
    flops = steps * cfg.train.global_batch * get_spec(cfg.model.arch).flops_per_token(cfg.model, positions) * positions
    return compile_decision(cfg.train.compile, flops, "none" if devices == 1 else "ddp", cfg.train.time_budget_s)[0]


def step_key(cfg: Any, *, positions: int, devices: int, device_name: str, compiled: str) -> str:
    """What a step's time depends on, as canonical JSON: the model, batch split, precision, kernels and device."""
    t, model = cfg.train, cfg.model
    return json.dumps({
        "model": {k: getattr(model, k) for k in sorted(vars(model))}, "positions": positions,
        "per_device_batch": t.global_batch // devices, "micro_batch": t.micro_batch, "precision": t.precision,
        "compile": compiled, "optimizer": cfg.optim.name, "ac": cfg.parallel.ac, "device": device_name,
        "threads": t.threads or torch.get_num_threads(), "torch": torch.__version__,
    }, sort_keys=True, default=str)


def _read() -> dict[str, Any]:
    try:
        cache = json.loads(cache_file(_PROBES).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return cache if isinstance(cache, dict) else {}


def measured_step(key: str) -> dict[str, Any] | None:
    """The cached measurement for this key: {"step_s", "flops", "attention_flops", "method", ...}, or None."""
    entry = _read().get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
        return None
    numbers = [entry.get(k) for k in ("step_s", "flops", "attention_flops")]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers) or not numbers[0] > 0:
        return None  # a damaged cache entry: measure again
    return entry


def measured_dense_mfu(entry: dict[str, Any], peak_flops: float, attention_speed: float) -> float:
    """The dense MFU with which timing() gives back the measured step (scaled by FLOPs when a proxy was timed)."""
    recompute = RECOMPUTE if entry.get("checkpointing") else 1.0  # timing() adds it back for a run that recomputes
    return weighted_flops(entry["flops"], entry["attention_flops"], attention_speed) * recompute / (entry["step_s"] * peak_flops)


def record_step(key: str, entry: dict[str, Any]) -> None:
    """Keep a measurement (the most recent _KEEP)."""
    cache = _read()
    cache.pop(key, None)
    cache[key] = entry
    path = cache_file(_PROBES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(list(cache.items())[-_KEEP:]), indent=1))
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
