"""The classic hand-written PyTorch loop: batch -> forward -> loss -> backward -> clip -> AdamW step.

The model is largo's GPT module with attention = "sdpa" (plain PyTorch: RMSNorm, rotary, SwiGLU,
F.scaled_dot_product_attention, tied embedding), so its parameter count is the shape's by
construction; `--attention auto` lends it largo's kernel choice, leaving the loop as the only
difference from `largo`. bf16 autocast like every other contender;
`--precision fp32` gives the fp32 loop as a reference point (the `plain_fp32` contender).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks.contenders.common import GRAD_CLIP, SHAPES, TokenWindows, adamw, count_params, parse_args, peak_rss_bytes, write_result
from largo.models.gpt import GPT


class LossModel(nn.Module):
    """The GPT and its loss in one module, so torch.compile sees (and can fuse) the loss as well."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.gpt(x)  # (b, t, vocab)
        return self.loss(logits.float().flatten(0, 1), y.flatten())  # fp32 log-softmax, as every contender does


def train(args: argparse.Namespace, name: str, *, compiled: bool) -> None:
    """Train the shape for args.steps steps, timing each one (batch read included), and write the result."""
    shape = SHAPES[args.shape]
    torch.manual_seed(args.seed)
    gpt = GPT(shape.model_config(args.attention))
    gpt.init_weights()
    model = LossModel(gpt)
    step_fn = torch.compile(model) if compiled else model
    optimizer = adamw(model)
    windows = TokenWindows(args.data, shape.context, args.seed)
    bf16 = args.precision == "bf16"
    times, losses = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        x, y = windows.batch(step, shape.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read after the loop: no extra host sync inside the timed step
        times.append(time.perf_counter() - t0)
    write_result(args, name, params=count_params(model), step_times_s=times, losses=[float(v) for v in losses],
                 peak_rss=peak_rss_bytes(), precision=args.precision, compiled=compiled)


ATTENTION = ("--attention", {"choices": ["sdpa", "auto"], "default": "sdpa",
                             "help": "sdpa (a hand-written model's) or auto (largo's kernel choice: the loop alone is compared)"})


def name_for(base: str, args: argparse.Namespace) -> str:
    """The contender's row name: plain_fp32 for the fp32 loop, a _largo_attention suffix with largo's kernel choice."""
    name = base if args.precision == "bf16" else "plain_fp32"
    return name + ("_largo_attention" if args.attention == "auto" else "")


if __name__ == "__main__":
    cli = parse_args(__doc__.splitlines()[0], [ATTENTION])
    train(cli, name_for("plain_eager", cli), compiled=False)
