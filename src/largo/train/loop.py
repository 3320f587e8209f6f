"""The training loop: data -> model init -> forward -> loss -> backward -> optimizer step, in one function."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from largo.checkpoint.store import latest_checkpoint, load_checkpoint, save_checkpoint
from largo.config import RunConfig
from largo.data import Dataset, rank_samples
from largo.dist.env import DistEnv, init_env
from largo.errors import CheckpointError, ConfigError
from largo.models import build_model
from largo.observe.metrics import MetricsLog
from largo.observe.throughput import peak_flops
from largo.train.classify import new_confusion, report_classification
from largo.train.evaluate import IGNORE, autocast, evaluate, format_result, summed_loss
from largo.train.optim import build_optimizers, build_schedulers
from largo.train.run_dir import open_run_dir
from largo.train.tasks import Task, build_task


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None, 'auto' (newest complete, if any) or an explicit folder."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder (or use --resume auto)")
    return path


def _global_batch_targets(batches: list[tuple[torch.Tensor, torch.Tensor]], env: DistEnv) -> torch.Tensor:
    """Number of non-ignored targets in the whole global batch (all micro-steps, all ranks)."""
    count = torch.tensor(float(sum(int((y != IGNORE).sum()) for _, y in batches)), device=env.device)
    if env.world > 1:
        torch.distributed.all_reduce(count)
    return count.clamp_min(1.0)


def train(
    cfg: RunConfig,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    stop_at: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run cfg to cfg.train.steps (resuming if asked) and return the final summary.

    stop_at ends the run early after that step, with a checkpoint, as a preemption would.
    """
    env = init_env(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.global_batch % (cfg.train.micro_batch * env.world) and cfg.train.global_batch % env.world:
        raise ConfigError(f"train.global_batch ({cfg.train.global_batch}) must divide by the world size ({env.world})")
    seed_everything(cfg.run.seed)
    say = log if env.is_main else (lambda _msg: None)

    # 1) data preprocessing: prepared once, cached on disk, addressed by step afterwards
    task: Task = build_task(cfg, env, log=say)
    cfg = task.cfg  # model fields resolved from the data (vocabulary size, classes)
    dataset: Dataset = task.dataset

    # 2) model initialisation: built on meta, materialised on the device, initialised from the seed
    model: nn.Module = build_model(cfg.model, env.device)
    optimizers = build_optimizers(model, cfg.optim)
    schedulers = build_schedulers(optimizers, cfg.optim, cfg.train.steps)

    run_dir = open_run_dir(cfg, resume=resume is not None, overwrite=overwrite, is_main=env.is_main)
    ckpt_root = run_dir / "checkpoints"
    start_step = 0
    ckpt = _resume_point(run_dir, resume)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizers, schedulers)
        start_step = int(state["step"])
        say(f"resumed from {ckpt} at step {start_step}")
    forward = torch.compile(model) if cfg.train.compile else model
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step) if env.is_main else None

    seq_len = task.tokens_per_sample
    tokens_per_step = cfg.train.global_batch * seq_len
    flops_per_step = task.flops_per_sample * cfg.train.global_batch
    peak = peak_flops(env.device, cfg.train.precision, cfg.train.peak_tflops) * env.world
    say(
        f"model: {sum(p.numel() for p in model.parameters()):,} params | {tokens_per_step:,} tokens/step | "
        f"{cfg.train.global_batch // (cfg.train.micro_batch * env.world) or 1} micro-steps | {cfg.train.precision} | device {env.device}"
    )

    def save(step: int) -> None:
        trainer_state = {"data": {"samples_seen": step * cfg.train.global_batch}, "config": cfg.to_dict()}
        save_checkpoint(ckpt_root, step, model_state=model.state_dict(), optimizers=optimizers, schedulers=schedulers,
                        trainer_state=trainer_state, keep_last=cfg.checkpoint.keep_last, extra_files=task.files)

    def run_eval(step: int, confusion: torch.Tensor | None = None) -> dict[str, float]:
        result = evaluate(forward, dataset.eval_batches(cfg.train.micro_batch, cfg.eval.max_batches), device=env.device,
                          precision=cfg.train.precision, confusion=confusion)
        if metrics:
            metrics.write({"kind": "eval", "step": step, **result})
        return result

    # A live bar on a terminal; in logs (CI, nohup, SLURM) one plain line per log step instead.
    live = env.is_main and sys.stderr.isatty()
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not live, dynamic_ncols=True)
    t_start = time.perf_counter()
    train_s, window_s, window_steps, loss_value = 0.0, 0.0, 0, float("nan")
    for step in range(start_step, cfg.train.steps):
        t_step = time.perf_counter()
        samples = rank_samples(step, global_batch=cfg.train.global_batch, micro_batch=cfg.train.micro_batch, rank=env.rank, world=env.world)
        batches = [dataset.train_rows(s) for s in samples]
        n_targets = _global_batch_targets(batches, env)
        loss_sum = torch.zeros((), device=env.device)
        for x, y in batches:
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            with autocast(env.device, cfg.train.precision):
                logits = forward(x)  # 3) forward
            # 4) loss: summed over this micro-batch, divided by the *global* target count, so the
            #    accumulated gradient equals one big batch whatever the micro-batch split
            loss = summed_loss(logits, y) / n_targets
            loss.backward()  # 5) backward: gradients accumulate across micro-steps
            loss_sum += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for opt in optimizers:  # 6) optimizer step
            opt.step()
            opt.zero_grad(set_to_none=True)
        for sched in schedulers:
            sched.step()
        done = step + 1
        bar.update(1)
        dt_step = time.perf_counter() - t_step  # excludes eval and checkpoint time, for honest tokens/s
        train_s, window_s, window_steps = train_s + dt_step, window_s + dt_step, window_steps + 1

        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            loss_value = loss_sum.item()  # host sync, only at log steps
            dt = window_s / window_steps
            window_s, window_steps = 0.0, 0
            record = {
                "kind": "train", "step": done, "loss": loss_value, "lr": schedulers[0].get_last_lr()[0],
                "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_step / dt, "step_time_ms": 1000 * dt,
                "mfu": flops_per_step / dt / peak, "elapsed_s": time.perf_counter() - t_start,
            }
            if metrics:
                metrics.write(record)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", mfu=f"{100 * record['mfu']:.1f}%")
            if not live:
                eta_s = (cfg.train.steps - done) * dt
                say(f"step {done}/{cfg.train.steps} | loss {loss_value:.4f} | {record['tokens_per_s']:,.0f} tok/s | "
                    f"MFU {100 * record['mfu']:.1f}% | ETA {eta_s:.0f}s")
        if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.steps:
            result = run_eval(done)
            bar.write(f"step {done}: {format_result(result)}") if live else say(f"step {done}: {format_result(result)}")
        if cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done < cfg.train.steps:
            save(done)
        if stop_at is not None and done >= stop_at and done < cfg.train.steps:
            if cfg.checkpoint.every == 0 or done % cfg.checkpoint.every:
                save(done)
            bar.close()
            say(f"stopped at step {done}; continue with --resume auto")
            return {"steps": done, "stopped": True, "run_dir": str(run_dir)}
    bar.close()

    elapsed = time.perf_counter() - t_start
    steps_run = cfg.train.steps - start_step
    confusion = new_confusion(task)  # classification: (true, predicted) counts of the final evaluation
    final = run_eval(cfg.train.steps, confusion)
    save(cfg.train.steps)
    summary = {
        "steps": cfg.train.steps, "steps_run": steps_run, "elapsed_s": elapsed, "train_loss": loss_value,
        "val_loss": final["loss"], "val_perplexity": final["perplexity"], "val_accuracy": final["accuracy"],
        "train_s": train_s, "tokens_per_s": steps_run * tokens_per_step / max(train_s, 1e-9),
        "mfu": steps_run * flops_per_step / max(train_s, 1e-9) / peak, "run_dir": str(run_dir),
    }
    if confusion is not None:  # confusion.csv, and the extra named test sets (printed below the main line)
        summary["test_sets"] = report_classification(forward, task, confusion, run_dir, device=env.device, is_main=env.is_main)
    if metrics:
        metrics.write({"kind": "summary", "step": cfg.train.steps, **summary})
        metrics.close()
    say(format_result(final))
    for name, result in summary.get("test_sets", {}).items():
        say(f"{name}: {format_result(result)}")
    say(
        f"done: {steps_run} steps in {elapsed:.1f}s | train loss {loss_value:.4f} | val loss {final['loss']:.4f} "
        f"ppl {final['perplexity']:.2f} | {summary['tokens_per_s']:,.0f} tok/s | MFU {100 * summary['mfu']:.2f}% | {run_dir}"
    )
    return summary
