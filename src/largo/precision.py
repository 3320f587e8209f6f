"""How a run computes below fp32: the autocast context of the loop, and the byte layouts the planner counts with."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (params stay fp32), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass(frozen=True)
class Layout:
    """Bytes per parameter for weights, gradients and optimizer extras, and the matmul dtype."""

    name: str
    param_bytes: int  # the weights the model computes with
    grad_bytes: int
    master_bytes: int  # fp32 master copy kept by the optimizer (mixed precision only)
    compute_bytes: int  # dtype of matmul inputs/outputs (2 = bf16)
    autocast: bool  # weights cast to bf16 on every forward (torch.autocast)
    about: str


LAYOUTS: dict[str, Layout] = {
    "fp32": Layout("fp32", 4, 4, 0, 4, False, "fp32 weights, grads and math"),
    "autocast": Layout("autocast", 4, 4, 0, 2, True, "largo's bf16: fp32 weights/grads/states, bf16 matmuls via autocast"),
    "mixed": Layout("mixed", 2, 2, 4, 2, False,
                    "bf16 weights/grads + fp32 master copy in the optimizer (Megatron/DeepSpeed, FSDP2 param_dtype=bf16)"),
}


def layout_for(precision: str, *, mixed: bool = False) -> Layout:
    """The layout a config trains with: fp32, or bf16 as autocast (largo) or as bf16 weights (mixed)."""
    if precision == "fp32":
        return LAYOUTS["fp32"]
    return LAYOUTS["mixed" if mixed else "autocast"]
