"""The training loop: data -> forward -> loss -> backward -> optimizer step, in one function, `run_steps`.

`train.run.train(cfg)` builds its parts from a config (the CLI path); `largo.Trainer` builds the same
parts from a user's own module and loaders. Both run this one loop.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from largo.config import RunConfig
from largo.data import Batch
from largo.distributed.env import DistEnv
from largo.distributed.parallelize import clip_grad_norm, grad_sync
from largo.observe.metrics import MetricsLog
from largo.observe.progress import PLAIN_EVERY_S, beating_through_first, heartbeat
from largo.precision import autocast
from largo.train.budget import StepBudget
from largo.train.evaluate import format_result, to_device
from largo.train.faults import StepGuard
from largo.train.optim import Schedule

ForwardLoss = Callable[[Any, Any], torch.Tensor]  # (inputs, targets) -> the micro-batch's loss, before the normaliser


@dataclass
class LoopParts:
    """Everything the loop touches; built from a config (train) or from user objects (Trainer)."""

    model: nn.Module  # what runs backward (may be DDP-wrapped, compiled inside)
    optimizers: list[torch.optim.Optimizer]
    schedule: Schedule  # learning rates as a function of applied steps
    micro_batches: Callable[[int], list[Batch]]  # this rank's micro-batches for a step
    normaliser: Callable[[list[Batch]], float | torch.Tensor]  # divides each micro-batch loss (global targets, or micro-steps)
    forward_loss: ForwardLoss  # forward and loss of one micro-batch (compiled as one graph when compiling)
    evaluate: Callable[[], dict[str, float]] | None  # held-out metrics (loss, accuracy, ...); None = no held-out data
    save: Callable[[int], None]  # checkpoint at a step
    tokens_per_step: int  # tokens (or samples, see throughput_unit) per optimizer step
    flops_per_step: float  # for MFU; 0 = unknown
    peak_flops: float  # device peak over all ranks
    throughput_unit: str = "tok"  # what tokens_per_step counts: "tok" or "samples"
    budget: StepBudget | None = None  # a fresh time-budgeted run: its total re-fitted to the measured step time


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_steps(parts: LoopParts, cfg: RunConfig, env: DistEnv, *, start_step: int, stop_at: int | None,
              metrics: MetricsLog | None, say: Callable[[str], None]) -> dict[str, Any]:
    """The loop itself, from start_step to cfg.train.steps (or stop_at); returns throughput figures.

    Nothing is read back from the device between sync points (a logging, evaluation or checkpoint
    step, the last one, a stop): losses, gradient norms and skip flags stay on the device until then,
    so a GPU never waits for the host to queue the next step. Optimizers that cannot skip a step by
    themselves (Schedule.on_device false) make the host read each step's flag instead.
    """
    live = env.is_main and sys.stderr.isatty()  # a bar on a terminal; plain lines in logs (CI, nohup, SLURM)
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not live, dynamic_ncols=True)
    model, total, schedule = parts.model, cfg.train.steps, parts.schedule
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    train_s, window_steps, loss_value = 0.0, 0, float("nan")
    windows: list[float] = []  # seconds per step in each window between sync points
    done = start_step
    guard = StepGuard(max_bad_steps=cfg.faults.max_bad_steps, spike_factor=cfg.faults.spike_factor, env=env, say=say,
                      record=metrics.write if metrics else None)
    preempted, window_start = False, time.perf_counter()
    last_line = window_start  # when the last plain progress line went out
    # the first step compiles a compiled model (20-40 s on 2 cores): it says it still runs rather than look like a hang
    last = parts.budget.cap if parts.budget else total  # a budgeted run may be re-fitted up to its configured steps
    steps = beating_through_first(guard.steps(start_step, last), f"step {start_step + 1} (compiles a compiled model)",
                                  bar.write if live else say)
    for step in steps:  # SIGTERM/SIGUSR1 are caught while the loop runs
        # 1) data: a pure function of the step, so a resumed run reads exactly the same batches
        batches = parts.micro_batches(step)
        norm = parts.normaliser(batches)
        loss_sum = torch.zeros((), device=env.device)
        for i, (x, y) in enumerate(batches):
            x, y = to_device(x, env.device), to_device(y, env.device)
            with grad_sync(model, enabled=i == len(batches) - 1):  # all-reduce on the last micro-step only
                with autocast(env.device, cfg.train.precision):
                    loss = parts.forward_loss(x, y) / norm  # 3) forward, 4) loss normalised over the global batch
                loss.backward()  # 5) backward: gradients accumulate across micro-steps
            loss_sum += loss.detach()
        grad_norm = clip_grad_norm(model.parameters(), clip)
        skipped = guard.non_finite(step + 1, loss_sum, grad_norm, model.parameters())  # a device flag, not read here
        lr = schedule.lr()  # the rate this step uses (the schedule moves it after the step)
        # 6) optimizer step; a non-finite step is skipped whole: no update, the schedule does not advance
        if schedule.on_device:
            for opt in parts.optimizers:
                opt.found_inf = skipped  # fused AdamW skips its own update on this flag
                opt.step()
        elif not guard.settle():  # the host decides for optimizers that cannot skip by themselves
            for opt in parts.optimizers:
                opt.step()
        for opt in parts.optimizers:
            opt.zero_grad(set_to_none=True)
        schedule.advance(skipped if schedule.on_device else bool(skipped.item()))
        done, window_steps = step + 1, window_steps + 1
        bar.update(1)

        log_now = done % cfg.train.log_every == 0 or done == total
        if not live and not log_now and time.perf_counter() - last_line > PLAIN_EVERY_S:  # slow steps: a line, no device read
            say(f"step {done}/{total} | {(time.perf_counter() - window_start) / window_steps:.2f} s/step")
            last_line = time.perf_counter()
        eval_now = bool(parts.evaluate and cfg.eval.every and done % cfg.eval.every == 0 and done < total)
        save_now = bool(cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done < total)
        stop_now = stop_at is not None and stop_at <= done < total
        if not (log_now or eval_now or save_now or stop_now or (env.world == 1 and guard.signal_name)):
            continue
        # ---- a sync point: read the window's flags (skips, spikes, divergence) and the stop vote, then log, evaluate, save
        guard.settle()
        stop = guard.stop_requested()  # taken before the logging below: a signal arriving during it stops after the next step
        if env.world > 1:  # each rank holds its share of the global batch's loss
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= env.world
        loss_value = loss_sum.item()
        dt = (time.perf_counter() - window_start) / window_steps  # device work included: the settle waited for it
        if parts.budget:  # re-fitted from the seconds trained so far, while the schedule's rates do not depend on it
            total = bar.total = parts.budget.refit(done, total, window_steps, dt, schedule)
        train_s, window_steps = train_s + dt * window_steps, 0
        windows.append(dt)
        if log_now:
            record = {
                "kind": "train", "step": done, "loss": loss_value, "lr": float(lr), "grad_norm": float(grad_norm),
                "tokens_per_s": parts.tokens_per_step / dt, "step_time_ms": 1000 * dt,
                "mfu": parts.flops_per_step / dt / parts.peak_flops, "elapsed_s": train_s,
            }
            if metrics:
                metrics.write(record)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", mfu=f"{100 * record['mfu']:.1f}%")
            if not live:
                mfu = f" | MFU {100 * record['mfu']:.1f}%" if parts.flops_per_step else ""
                last_line = time.perf_counter()
                say(f"step {done}/{total} | loss {loss_value:.4f} | {record['tokens_per_s']:,.0f} {parts.throughput_unit}/s"
                    f"{mfu} | ETA {(total - done) * dt:.0f}s")
        if eval_now:
            with heartbeat(f"step {done}: evaluating", bar.write if live else say):
                result = parts.evaluate()
            if metrics:
                metrics.write({"kind": "eval", "step": done, **result})
            (bar.write if live else say)(f"step {done}: {format_result(result)}")
        saved = save_now and not guard.bad_streak
        if saved:  # not at a skipped step: a run of bad steps never pushes good checkpoints out
            parts.save(done)
        if (stop or stop_now) and done < total:
            if not saved:
                parts.save(done)
            preempted = stop
            if preempted:
                say(f"step {done}: {guard.signal_name} received; checkpoint written, stopping")
            break
        window_start = time.perf_counter()  # evaluation and checkpoint time stay out of tokens/s
        if done >= total:
            break
    bar.close()
    steps_run = done - start_step
    return {
        "step": done, "steps_run": steps_run, "train_s": train_s, "train_loss": loss_value, "preempted": preempted,
        "skipped_steps": guard.skipped,
        # the steady state: compiling and warm-up fall in the first window, so it is left out when there are others
        "steady_step_s": statistics.median(windows[1:] or windows) if windows else float("nan"),
        "tokens_per_s": steps_run * parts.tokens_per_step / max(train_s, 1e-9),
        "mfu": steps_run * parts.flops_per_step / max(train_s, 1e-9) / parts.peak_flops,
    }
