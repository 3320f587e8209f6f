"""How a run computes below fp32: the choice of precision (measured on CPUs), the autocast context of the loop, and the
byte layouts the planner counts with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from largo.observe.throughput import matmul_rates


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


AUTO_MIN_SPEEDUP = 1.2  # a CPU trains in bf16 only when its bf16 matmul beats fp32 by this much (casts cost the rest)
SLOW_FACTOR = 2.0  # an explicit bf16 this many times slower than fp32 is said to be the wrong choice


@dataclass(frozen=True)
class Choice:
    """The precision a run computes in, and the one line that says why (plus a warning for a slow explicit bf16)."""

    precision: str  # "fp32" or "bf16"
    line: str
    warning: str = ""


def choose(asked: str, device: torch.device, shape: tuple[int, int, int], log: Callable[[str], None] | None = print) -> Choice:
    """train.precision resolved on this device: 'auto' measures (once per CPU and shape) whether bf16 pays; an explicit
    choice is kept, with a warning when bf16 is more than SLOW_FACTOR times slower than fp32 here.

    shape = (rows, dim, hidden): one of the run's own matmuls; small or skinny ones gain less from bf16 than a square peak.
    """
    if asked == "fp32":
        return Choice("fp32", "precision: fp32 (train.precision)")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if asked == "bf16":
            return Choice("bf16", "precision: bf16 (train.precision)")
        return Choice("bf16" if ok else "fp32", f"precision: {'bf16' if ok else 'fp32'} (auto: this GPU "
                      f"{'computes' if ok else 'does not compute'} in bf16)")
    rates = matmul_rates(device, *shape, log=log)
    bf16, fp32 = rates["bf16"] / 1e9, rates["fp32"] / 1e9
    figures = f"bf16 matmul {bf16:,.1f} vs fp32 {fp32:,.1f} GFLOP/s on this CPU at {'x'.join(map(str, rates['shape']))}"
    if asked == "bf16":
        slow = fp32 > SLOW_FACTOR * bf16
        warning = (f"warning: train.precision = 'bf16' runs {fp32 / bf16:,.0f}x slower than fp32 here ({figures}); "
                   f"--train.precision auto (or fp32) trains faster" if slow else "")
        return Choice("bf16", f"precision: bf16 (train.precision; {figures})", warning)
    chosen = "bf16" if bf16 >= AUTO_MIN_SPEEDUP * fp32 else "fp32"
    return Choice(chosen, f"precision: {chosen} (auto: {figures})")
