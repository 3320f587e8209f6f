"""Accelerators the planner knows: memory and dense peak FLOP/s; the CPU is measured, not listed."""

from __future__ import annotations

import os
from collections.abc import Callable

from largo.errors import ConfigError
from largo.hardware import DEVICES, GiB, DeviceSpec, spec_for_cuda_name
from largo.observe.throughput import attention_speed, peak_flops

__all__ = ["CPU", "DEVICES", "DeviceSpec", "device_names", "get_device", "spec_for_cuda_name"]

CPU = "cpu"


def device_names() -> list[str]:
    """Every valid --device-type, the CPU first."""
    return [CPU, *DEVICES]


def _host_memory_bytes() -> int:
    """Physical memory of this machine (the CPU 'device')."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GiB  # platforms without sysconf: a stated guess


def get_device(name: str, *, cpu_peak_bf16: float | None = None, cpu_peak_fp32: float | None = None,
               log: Callable[[str], None] | None = print) -> DeviceSpec:
    """The spec for --device-type; 'cpu' is this machine, its peaks measured (or given) per precision; `log` announces a measurement."""
    key = name.lower()
    if key == CPU:
        import torch

        cpu = torch.device("cpu")
        cpu_peak_bf16 = peak_flops(cpu, "bf16", log=log) if cpu_peak_bf16 is None else cpu_peak_bf16
        cpu_peak_fp32 = peak_flops(cpu, "fp32", log=log) if cpu_peak_fp32 is None else cpu_peak_fp32
        return DeviceSpec(CPU, _host_memory_bytes(), cpu_peak_bf16, cpu_peak_fp32, (), "this machine; peaks from a cached GEMM",
                          attention_speed(cpu, "bf16", log=log), attention_speed(cpu, "fp32", log=log))
    if key not in DEVICES:
        raise ConfigError(f"--device-type {name!r} is unknown; valid: {', '.join(device_names())}")
    return DEVICES[key]
