"""Device peak FLOP/s (measured once with a large GEMM and cached), attention's relative speed, and MFU."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from largo.hardware import spec_for_cuda_name  # the one table of published GPU peaks

_CACHE = Path(os.environ.get("LARGO_CACHE", Path.home() / ".cache" / "largo")) / "peak_flops.json"


def cache_file(name: str) -> Path:
    """A file in largo's cache folder ($LARGO_CACHE, else ~/.cache/largo): measurements kept between runs."""
    return _CACHE.with_name(name)


def _device_key(device: torch.device, precision: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    return f"{name}|{precision}"


def _best_time(fn, device: torch.device, repeats: int, clock) -> float:
    """Shortest of `repeats` timed calls after one warm-up."""
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, clock() - t0)
    return best


def measure_gemm_flops(device: torch.device, precision: str, n: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP/s of an n x n x n matmul in `precision` on `device` (best of `repeats`)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype, generator=None)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _best_time(lambda: a @ b, device, repeats, clock)


def measure_attention_speed(device: torch.device, precision: str, repeats: int = 5, clock=time.perf_counter) -> float:
    """Causal SDPA forward+backward FLOP/s (counted as 12 * d * t per token) over the GEMM's FLOP/s.

    On CPU attention runs at ~1/4 of the GEMM rate, so one FLOP budget cannot time both (a
    t = 512 model spent 30% of its FLOPs but ~half its time in attention).
    """
    b, h, t, hd = 4, 4, 256, 64  # a mid-sized layer: d = 256
    q, k, v = (torch.randn(b, h, t, hd, device=device, requires_grad=True) for _ in range(3))

    def fwd_bwd() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().sum().backward()

    attention = 12 * (h * hd) * t * (b * t) / _best_time(fwd_bwd, device, repeats, clock)
    return attention / measure_gemm_flops(device, precision, repeats=repeats, clock=clock)


def peak_flops(device: torch.device, precision: str, configured_tflops: float = 0.0) -> float:
    """Configured peak, else a published GPU peak, else a cached or fresh GEMM measurement."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        spec = spec_for_cuda_name(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec.peak_bf16 if precision == "bf16" else spec.peak_fp32
    return _cached(_device_key(device, precision), lambda: measure_gemm_flops(device, precision))


def attention_speed(device: torch.device, precision: str) -> float:
    """Attention FLOPs' speed relative to GEMM FLOPs: measured once per CPU and cached; 1.0 on GPUs.

    On GPUs the flash kernels run near GEMM efficiency in this FLOP convention (which counts the
    masked half of causal attention), so the plain MFU model stands there.
    """
    if device.type == "cuda":
        return 1.0
    return _cached("attention|" + _device_key(device, precision), lambda: measure_attention_speed(device, precision))


def remeasure_peak(device: torch.device, precision: str) -> float:
    """Measure the CPU GEMM peak again and cache the larger of old and new (a peak measured on a busy CPU reads low)."""
    key = _device_key(device, precision)
    return _cached(key, lambda: max(measure_gemm_flops(device, precision), _read_cache().get(key, 0.0)), refresh=True)


def _read_cache() -> dict[str, float]:
    try:
        cache = json.loads(_CACHE.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _cached(key: str, measure, *, refresh: bool = False) -> float:
    """A measurement from the cache file, or measured now (always, with refresh) and stored."""
    cache = _read_cache()
    if refresh or key not in cache:
        # The measurement must not disturb the run's random stream (resume equality depends on it).
        with torch.random.fork_rng(devices=[]):
            cache[key] = measure()
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            _CACHE.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    return float(cache[key])


_MFU_HISTORY = _CACHE.with_name("mfu_history.json")
_MFU_KEEP = 20  # most recent runs kept per device type and precision


def record_mfu(device_type: str, precision: str, mfu: float, params: int) -> None:
    """Append a finished run's measured MFU (with its model size) to the history `largo plan` defaults to."""
    key = f"{device_type}|{precision}"
    try:
        history = json.loads(_MFU_HISTORY.read_text())
    except (OSError, ValueError, RecursionError):
        history = {}
    history = history if isinstance(history, dict) else {}
    runs = [r for r in history.get(key, []) if isinstance(r, list)]  # [mfu, params]; older plain floats are dropped
    history[key] = (runs + [[mfu, params]])[-_MFU_KEEP:]
    try:
        _MFU_HISTORY.parent.mkdir(parents=True, exist_ok=True)
        _MFU_HISTORY.write_text(json.dumps(history, indent=1))
    except OSError:
        pass  # history is a convenience; the plan falls back to its stated assumption


def measured_mfu(device_type: str, precision: str, params: int) -> float | None:
    """The MFU of the recorded run whose model size is closest to `params` (MFU depends strongly on size)."""
    try:
        runs = json.loads(_MFU_HISTORY.read_text()).get(f"{device_type}|{precision}", [])
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    runs = [r for r in runs if isinstance(r, list) and len(r) == 2 and r[1] > 0]
    if not runs:
        return None
    return float(min(reversed(runs), key=lambda r: abs(math.log(r[1] / max(params, 1))))[0])
