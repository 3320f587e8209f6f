"""Contender: a plain PyTorch loop, AdamW with warm-up then cosine decay, compiled, on largo's GPT used as a plain nn.Module.

The model is the peers' (common.PEER_MODEL, text_tiny's old shape: 4 layers, width 256, grouped-query attention,
tied head, context 256, batch 16; --extra model.KEY=VALUE changes it; compile=false runs it eagerly, warmup_steps=N); the
loop is nanoGPT's: fused AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), clipping at 1.0, 30 warm-up steps,
cosine to lr/10 over the steps that fit the budget (fixed after the first timed steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from largo.models.gpt import GPT, GPTConfig

from benchmarks.race.common import SEED, Clock, Corpus, extra, model_shape, parse_args, the_held_out, write_result
from benchmarks.race.heldout import score

WARMUP_STEPS, BATCH = 30, 16


def cosine_lr(step: int, peak: float, total: int | None, warmup: int = WARMUP_STEPS) -> float:
    """Linear warm-up to peak, then cosine to peak / 10 at `total` (peak until total is known)."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if total is None:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak / 10 + (peak - peak / 10) * 0.5 * (1 + math.cos(math.pi * progress))


def build(shape: GPTConfig, vocab: int) -> GPT:
    """The model as a plain nn.Module, its usual init."""
    model = GPT(dataclasses.replace(shape, vocab_size=vocab))
    model.init_weights()
    return model


def main() -> None:
    a = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    held = the_held_out(a.held_bytes)
    shape = model_shape(a)
    seq_len = shape.max_seq_len
    corpus = Corpus(Path(a.data), seq_len)
    model = build(shape, corpus.vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=True)
    compiled = torch.compile(model) if extra(a).get("compile", "true") == "true" else model
    autocast = torch.autocast("cpu", torch.bfloat16) if a.precision == "bf16" else contextlib.nullcontext()

    def evaluate() -> float:
        model.eval()
        with autocast:
            bpb = score(lambda x: model(x), held, corpus.encode, corpus.eot, seq_len)
        model.train()
        return bpb

    clock = Clock(a.budget_s, a.points, evaluate)
    setup_s, step, total = time.perf_counter() - t0, 0, None
    warmup = int(extra(a).get("warmup_steps", WARMUP_STEPS))
    while total is None or step < total:
        clock.start()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, a.lr, total, warmup)
        x, y = corpus.batch(step, BATCH)
        with autocast:
            logits = compiled(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if clock.stop():
            break
        total = total or clock.planned_steps()
    if not clock.points or clock.points[-1][0] != round(clock.train_s, 3):
        clock.points.append([round(clock.train_s, 3), evaluate()])
    write_result(a, "plain_adamw_cosine", clock, params=sum(p.numel() for p in model.parameters()), setup_s=setup_s)


if __name__ == "__main__":
    main()
