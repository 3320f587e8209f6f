"""Accelerators the planner knows: memory and dense peak FLOP/s; the CPU is measured, not listed."""

from __future__ import annotations

import os
from dataclasses import dataclass

from largo.errors import ConfigError

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class DeviceSpec:
    """One device: usable memory and dense (non-sparse) peaks; a peak of 0 means no such math unit."""

    name: str  # the --device-type name
    memory_bytes: int  # memory as the driver reports it
    peak_bf16: float  # dense bf16 tensor-core FLOP/s
    peak_fp32: float  # fp32 FLOP/s (no TF32)
    match: tuple[str, ...]  # substrings of torch.cuda.get_device_name() that identify it
    note: str = ""
    attention_speed_bf16: float = 1.0  # attention FLOP/s over GEMM FLOP/s (measured on CPU; 1 on GPUs)
    attention_speed_fp32: float = 1.0


# Vendor datasheet dense peaks; memory as nvidia-smi / rocm-smi reports it (MiB).
DEVICES: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        DeviceSpec("a100-40g", 40960 * MiB, 312e12, 19.5e12, ("A100-SXM4-40GB", "A100-PCIE-40GB")),
        DeviceSpec("a100-80g", 81920 * MiB, 312e12, 19.5e12, ("A100",)),
        DeviceSpec("h100-pcie", 81559 * MiB, 756e12, 51e12, ("H100 PCIe",)),
        DeviceSpec("h100", 81559 * MiB, 989e12, 67e12, ("H100",), "SXM"),
        DeviceSpec("h200", 143771 * MiB, 989e12, 67e12, ("H200",), "large bf16 GEMMs reach ~790e12 in practice"),
        DeviceSpec("l40s", 46068 * MiB, 362e12, 91.6e12, ("L40S",)),
        DeviceSpec("mi300x", 196608 * MiB, 1307e12, 163.4e12, ("MI300X",)),
    )
}
CPU = "cpu"


def device_names() -> list[str]:
    """Every valid --device-type, the CPU first."""
    return [CPU, *DEVICES]


def spec_for_cuda_name(cuda_name: str) -> DeviceSpec | None:
    """The table entry whose match string occurs in a CUDA device name (most specific entry first)."""
    for spec in DEVICES.values():
        if any(m in cuda_name for m in spec.match):
            return spec
    return None


def _host_memory_bytes() -> int:
    """Physical memory of this machine (the CPU 'device')."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GiB  # platforms without sysconf: a stated guess


def get_device(name: str, *, cpu_peak_bf16: float | None = None, cpu_peak_fp32: float | None = None) -> DeviceSpec:
    """The spec for --device-type; 'cpu' is this machine, its peaks measured (or given) per precision."""
    key = name.lower()
    if key == CPU:
        import torch

        from largo.observe.throughput import attention_speed, peak_flops

        cpu = torch.device("cpu")
        cpu_peak_bf16 = peak_flops(cpu, "bf16") if cpu_peak_bf16 is None else cpu_peak_bf16
        cpu_peak_fp32 = peak_flops(cpu, "fp32") if cpu_peak_fp32 is None else cpu_peak_fp32
        return DeviceSpec(CPU, _host_memory_bytes(), cpu_peak_bf16, cpu_peak_fp32, (), "this machine; peaks from a cached GEMM",
                          attention_speed(cpu, "bf16"), attention_speed(cpu, "fp32"))
    if key not in DEVICES:
        raise ConfigError(f"--device-type {name!r} is unknown; valid: {', '.join(device_names())}")
    return DEVICES[key]
