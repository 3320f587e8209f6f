"""Device peak FLOP/s (measured once with a large GEMM and cached) and MFU."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

_CACHE = Path(os.environ.get("LARGO_CACHE", Path.home() / ".cache" / "largo")) / "peak_flops.json"


def _device_key(device: torch.device, precision: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    return f"{name}|{precision}"


def measure_gemm_flops(device: torch.device, precision: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul in `precision` on `device` (best of `repeats`)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype, generator=None)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, precision: str, configured_tflops: float = 0.0) -> float:
    """Configured peak, else a published GPU peak, else a cached or fresh GEMM measurement."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        from largo.plan.devices import spec_for_cuda_name  # the one table of published GPU peaks

        spec = spec_for_cuda_name(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec.peak_bf16 if precision == "bf16" else spec.peak_fp32
    key = _device_key(device, precision)
    try:
        cache = json.loads(_CACHE.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key not in cache:
        # The GEMM must not disturb the run's random stream (resume equality depends on it).
        with torch.random.fork_rng(devices=[]):
            cache[key] = measure_gemm_flops(device, precision)
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            _CACHE.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    return float(cache[key])


_MFU_HISTORY = _CACHE.with_name("mfu_history.json")
_MFU_KEEP = 20  # most recent runs kept per device type and precision


def record_mfu(device_type: str, precision: str, mfu: float) -> None:
    """Append a finished run's measured MFU to the history `largo plan` defaults to."""
    key = f"{device_type}|{precision}"
    try:
        history = json.loads(_MFU_HISTORY.read_text())
    except (OSError, json.JSONDecodeError):
        history = {}
    history[key] = (history.get(key, []) + [mfu])[-_MFU_KEEP:]
    try:
        _MFU_HISTORY.parent.mkdir(parents=True, exist_ok=True)
        _MFU_HISTORY.write_text(json.dumps(history, indent=1))
    except OSError:
        pass  # history is a convenience; the plan falls back to its stated assumption


def measured_mfu(device_type: str, precision: str) -> float | None:
    """The MFU of the most recent finished run on this device type and precision, if any."""
    try:
        runs = json.loads(_MFU_HISTORY.read_text()).get(f"{device_type}|{precision}", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(runs[-1]) if runs else None
