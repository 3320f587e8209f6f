"""Accelerators by their published figures: memory and dense peak FLOP/s (the CPU is measured, see observe/throughput.py)."""

from __future__ import annotations

from dataclasses import dataclass

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


def spec_for_cuda_name(cuda_name: str) -> DeviceSpec | None:
    """The table entry whose match string occurs in a CUDA device name (most specific entry first)."""
    for spec in DEVICES.values():
        if any(m in cuda_name for m in spec.match):
            return spec
    return None
