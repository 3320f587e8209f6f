"""Device peak FLOP/s (measured once with a large GEMM and cached), attention's relative speed, and MFU."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from largo.hardware import spec_for_cuda_name  # the one table of published GPU peaks

_CACHE = Path(os.environ.get("LARGO_CACHE", Path.home() / ".cache" / "largo")) / "peak_flops.json"


def cache_file(name: str) -> Path:
    """A file in largo's cache folder ($LARGO_CACHE, else ~/.cache/largo): measurements kept between runs."""
    return _CACHE.with_name(name)


def cpu_identity() -> str:
    """What decides this CPU's matmul speeds: model, instruction-set flags, ISA limits set in the environment, torch."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass  # not Linux: the processor string and torch's capability below still tell the classes apart
    limits = ",".join(f"{k}={os.environ[k]}" for k in _ISA_LIMITS if k in os.environ)
    digest = hashlib.sha1(flags.encode()).hexdigest()[:10]
    return f"{model}|flags {digest}|{torch.backends.cpu.get_cpu_capability()}|{limits}|torch {torch.__version__}"


_ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # they change which kernels run


def _device_key(device: torch.device, precision: str) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}|{precision}"
    return f"cpu-{torch.get_num_threads()}threads|{cpu_identity()}|{precision}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeats: int, clock, budget_s: float = float("inf")) -> float:
    """Shortest of up to `repeats` timed calls after one warm-up; stops early once `budget_s` is spent (one call at least)."""
    fn()
    best, start = float("inf"), clock()
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        best = min(best, clock() - t0)
        if clock() - start > budget_s:
            break
    return best


def _sized(make, sizes: list[int], device: torch.device, clock, growth: float) -> tuple[int, Callable[[], None], float]:
    """The largest size whose call stays under CALL_S, found from one timing per size (smallest first).

    A size is tried only when the previous call's time times `growth` (how much longer the next size
    runs) stays under CALL_S, so no call is ever much longer than CALL_S on any CPU.
    """
    size, fn, took = sizes[0], make(sizes[0]), 0.0
    for i, n in enumerate(sizes):
        candidate = make(n)
        _sync(device)
        t0 = clock()
        candidate()  # includes warm-up, so it reads high: the sizing errs towards shorter calls
        _sync(device)
        took_n = clock() - t0
        if i and took_n > CALL_S:
            break
        size, fn, took = n, candidate, took_n
        if took_n * growth > CALL_S:
            break
    return size, fn, took


CALL_S = 0.25  # longest single timed call of a measurement: sizes grow from small until the next would pass it
BUDGET_S = 1.0  # a measurement's repeats stop after about this long


def measure_gemm_flops(device: torch.device, precision: str, n: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP/s of an n x n x n matmul in `precision` (best of `repeats`); n shrinks where a call would take over CALL_S."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    sizes = [s for s in (256, 512, 1024, 2048, 4096) if s < n] + [n]

    def make(k: int) -> Callable[[], None]:
        a, b = torch.randn(k, k, device=device, dtype=dtype), torch.randn(k, k, device=device, dtype=dtype)
        return lambda: a @ b

    k, fn, _ = _sized(make, sizes, device, clock, growth=8.0)
    return 2 * k**3 / _best_time(fn, device, repeats, clock, BUDGET_S)


def measure_matmul_rates(device: torch.device, rows: int, k: int, n: int, clock=time.perf_counter) -> dict[str, float]:
    """FLOP/s of (rows x k) @ (k x n) in bf16 and in fp32 at the same size: rows shrink until a bf16 call is short.

    The run's own matmul shape, not a square peak: small GEMMs and bf16's casts cost what large
    square ones hide. Sized on bf16, the slower of the two wherever the choice matters.
    """
    sizes = sorted({min(rows, r) for r in (64, 256, 1024, 4096, 16384)} | {rows})

    def make(dtype: torch.dtype) -> Callable[[int], Callable[[], None]]:
        def at(m: int) -> Callable[[], None]:
            a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
            return lambda: a @ b
        return at

    m, bf16, _ = _sized(make(torch.bfloat16), sizes, device, clock, growth=4.0)
    fp32 = make(torch.float32)(m)
    best = {"bf16": float("inf"), "fp32": float("inf")}
    start = clock()
    for _ in range(5):  # interleaved, so a burst of load from elsewhere slows both and the ratio holds
        for name, fn in (("bf16", bf16), ("fp32", fp32)):
            best[name] = min(best[name], _best_time(fn, device, 1, clock))
        if clock() - start > BUDGET_S:
            break
    flops = 2 * m * k * n
    return {"bf16": flops / best["bf16"], "fp32": flops / best["fp32"], "shape": [m, k, n]}


def measure_attention_speed(device: torch.device, precision: str, repeats: int = 5, clock=time.perf_counter) -> float:
    """Causal SDPA forward+backward FLOP/s (counted as 12 * d * t per token) over the GEMM's FLOP/s.

    On CPU attention runs at ~1/4 of the GEMM rate, so one FLOP budget cannot time both (a
    t = 512 model spent 30% of its FLOPs but ~half its time in attention). The batch grows from 1
    to 4 only while a call stays short (bf16 attention is ~6x slower than fp32 on CPUs without AVX-512 BF16).
    """
    h, t, hd = 4, 256, 64  # a mid-sized layer: d = 256

    def make(b: int) -> Callable[[], None]:
        q, k, v = (torch.randn(b, h, t, hd, device=device, requires_grad=True) for _ in range(3))

        def fwd_bwd() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.float().sum().backward()
        return fwd_bwd

    b, fn, _ = _sized(make, [1, 4], device, clock, growth=4.0)
    attention = 12 * (h * hd) * t * (b * t) / _best_time(fn, device, repeats, clock, BUDGET_S)
    return attention / measure_gemm_flops(device, precision, repeats=repeats, clock=clock)


Log = Callable[[str], None]


def peak_flops(device: torch.device, precision: str, configured_tflops: float = 0.0, log: Log | None = print) -> float:
    """Configured peak, else a published GPU peak, else a cached or fresh GEMM measurement (announced on `log`)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        spec = spec_for_cuda_name(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec.peak_bf16 if precision == "bf16" else spec.peak_fp32
    return float(_cached(_device_key(device, precision), lambda: measure_gemm_flops(device, precision),
                         about=f"{precision} matmul peak", log=log))


def attention_speed(device: torch.device, precision: str, log: Log | None = print) -> float:
    """Attention FLOPs' speed relative to GEMM FLOPs: measured once per CPU and cached; 1.0 on GPUs.

    On GPUs the flash kernels run near GEMM efficiency in this FLOP convention (which counts the
    masked half of causal attention), so the plain MFU model stands there.
    """
    if device.type == "cuda":
        return 1.0
    return float(_cached("attention|" + _device_key(device, precision), lambda: measure_attention_speed(device, precision),
                         about=f"{precision} attention speed", log=log))


def matmul_rates(device: torch.device, rows: int, k: int, n: int, log: Log | None = print) -> dict[str, float]:
    """bf16 and fp32 FLOP/s of a (rows x k) @ (k x n) matmul on this CPU, measured once per shape and cached."""
    key = f"matmul {rows}x{k}x{n}|{_device_key(device, 'both')}"
    return _cached(key, lambda: measure_matmul_rates(device, rows, k, n), about=f"bf16 vs fp32 matmul at {rows}x{k}x{n}", log=log,
                   valid=_rates)


def remeasure_peak(device: torch.device, precision: str, log: Log | None = print) -> float:
    """Measure the CPU GEMM peak again and cache the larger of old and new (a peak measured on a busy CPU reads low)."""
    key = _device_key(device, precision)
    return float(_cached(key, lambda: max(measure_gemm_flops(device, precision), _read_cache().get(key) or 0.0), refresh=True,
                         about=f"{precision} matmul peak again", log=log))


def _read_cache() -> dict[str, Any]:
    try:
        cache = json.loads(_CACHE.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _load() -> float | None:
    """The 1-minute load average when it exceeds this machine's cores (others' work would skew a timing), else None."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    return load if load > (os.cpu_count() or 1) + 0.5 else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _rates(value: Any) -> bool:
    return isinstance(value, dict) and _positive(value.get("bf16")) and _positive(value.get("fp32"))


def _cached(key: str, measure: Callable[[], Any], *, refresh: bool = False, about: str = "", log: Log | None = None,
            valid: Callable[[Any], bool] = _positive) -> Any:
    """A measurement from the cache file, or measured now (always, with refresh; announced first: never a silent wait) and stored."""
    cache = _read_cache()
    if refresh or not valid(cache.get(key)):  # a damaged entry is measured again
        if log is not None and about:
            log(f"measuring this machine once (cached in {_CACHE.parent}): {about}, about {BUDGET_S:.0f} s")
        # The measurement must not disturb the run's random stream (resume equality depends on it).
        with torch.random.fork_rng(devices=[]):
            cache[key] = measure()
        load = _load()
        if load is not None:  # others' threads make small timings read 10-100x slow: use it now, measure again next time
            if log is not None and about:
                log(f"this machine is busy (load {load:.1f} on {os.cpu_count()} cores): the measurement is used but not cached")
            return cache[key]
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            _CACHE.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    return cache[key]


_MFU_HISTORY = _CACHE.with_name("mfu_history.json")
_MFU_KEEP = 20  # most recent runs kept per device type and precision
_NEAR = math.log(4)  # a run 30x smaller says little: a 4M model's MFU planned a 135M fine-tune's step 2.4x too fast


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
    """The MFU of the recorded run whose model size is closest to `params`, within 4x (MFU depends strongly on size)."""
    try:
        runs = json.loads(_MFU_HISTORY.read_text()).get(f"{device_type}|{precision}", [])
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    runs = [r for r in runs if isinstance(r, list) and len(r) == 2 and r[1] > 0 and abs(math.log(r[1] / max(params, 1))) <= _NEAR]
    if not runs:
        return None
    return float(min(reversed(runs), key=lambda r: abs(math.log(r[1] / max(params, 1))))[0])
