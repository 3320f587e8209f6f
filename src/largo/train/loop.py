"""The training loop: data -> model init -> forward -> loss -> backward -> optimizer step, in one function.

`train(cfg)` builds everything from a config (the CLI path); `largo.Trainer` builds the same parts
from a user's own module and loaders. Both run the one loop in `run_steps`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from largo.checkpoint.restore import load_init_weights
from largo.checkpoint.sharded import load_for_resume, newest_intact, save_sharded, verify_checkpoint
from largo.checkpoint.store import save_checkpoint
from largo.config import RunConfig
from largo.data import Batch, rank_samples
from largo.dist.env import DistEnv, init_env
from largo.dist.memory import log_memory, report_after_steps
from largo.dist.parallelize import build_parallel_model, choose_strategy, clip_grad_norm, grad_sync, unwrap
from largo.errors import CheckpointError, ConfigError, RunDirError
from largo.observe.memory import PeakMemory
from largo.observe.metrics import MetricsLog
from largo.observe.plots import plot_run
from largo.observe.throughput import peak_flops, remeasure_peak
from largo.plan.check import check_run, format_rows
from largo.train.classify import new_confusion, report_classification
from largo.train.evaluate import IGNORE, autocast, call_model, evaluate, format_result, summed_loss, to_device
from largo.train.faults import PREEMPTED_EXIT, StepGuard
from largo.train.optim import build_optimizers, build_schedulers
from largo.train.run_dir import open_run_dir, release_run_dir
from largo.train.tasks import build_task

LossFn = Callable[[Any, Any, float], torch.Tensor]  # (outputs, targets, normaliser) -> loss to backward


@dataclass
class LoopParts:
    """Everything the loop touches; built from a config (train) or from user objects (Trainer)."""

    model: nn.Module  # what runs forward/backward (may be DDP- or compile-wrapped)
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    micro_batches: Callable[[int], list[Batch]]  # this rank's micro-batches for a step
    normaliser: Callable[[list[Batch]], float]  # divides each micro-batch loss (global targets, or micro-steps)
    loss: LossFn
    evaluate: Callable[[], dict[str, float]] | None  # held-out metrics (loss, accuracy, ...); None = no held-out data
    save: Callable[[int], None]  # checkpoint at a step
    tokens_per_step: int  # tokens (or samples, see throughput_unit) per optimizer step
    flops_per_step: float  # for MFU; 0 = unknown
    peak_flops: float  # device peak over all ranks
    throughput_unit: str = "tok"  # what tokens_per_step counts: "tok" or "samples"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_steps(parts: LoopParts, cfg: RunConfig, env: DistEnv, *, start_step: int, stop_at: int | None,
              metrics: MetricsLog | None, say: Callable[[str], None]) -> dict[str, Any]:
    """The loop itself, from start_step to cfg.train.steps (or stop_at); returns throughput figures."""
    live = env.is_main and sys.stderr.isatty()  # a bar on a terminal; plain lines in logs (CI, nohup, SLURM)
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", disable=not live, dynamic_ncols=True)
    model, total = parts.model, cfg.train.steps
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    train_s, window_s, window_steps, loss_value = 0.0, 0.0, 0, float("nan")
    done = start_step
    guard = StepGuard(max_bad_steps=cfg.faults.max_bad_steps, spike_factor=cfg.faults.spike_factor, env=env, say=say,
                      record=metrics.write if metrics else None)
    preempted = False
    for step in guard.steps(start_step, total):  # SIGTERM/SIGUSR1 are caught while the loop runs
        t_step = time.perf_counter()
        # 1) data: a pure function of the step, so a resumed run reads exactly the same batches
        batches = parts.micro_batches(step)
        norm = parts.normaliser(batches)
        loss_sum = torch.zeros((), device=env.device)
        for i, (x, y) in enumerate(batches):
            x, y = to_device(x, env.device), to_device(y, env.device)
            with grad_sync(model, enabled=i == len(batches) - 1):  # all-reduce on the last micro-step only
                with autocast(env.device, cfg.train.precision):
                    outputs = call_model(model, x)  # 3) forward
                loss = parts.loss(outputs, y, norm)  # 4) loss, normalised over the global batch
                del outputs  # the logits die now, not when the next micro-step's forward reassigns them
                loss.backward()  # 5) backward: gradients accumulate across micro-steps
            loss_sum += loss.detach()
        grad_norm = clip_grad_norm(model.parameters(), clip)
        verdict = guard.check(step + 1, loss_sum, grad_norm, model.parameters())  # host sync: finite? preempted?
        lr = parts.optimizers[0].param_groups[0]["lr"]  # the rate this step used (schedulers move it next)
        for opt in parts.optimizers:  # 6) optimizer step; a non-finite step is skipped whole (schedulers too)
            if verdict.apply:
                opt.step()
            opt.zero_grad(set_to_none=True)
        for sched in parts.schedulers if verdict.apply else []:
            sched.step()
        done = step + 1
        bar.update(1)
        dt_step = time.perf_counter() - t_step  # excludes eval and checkpoint time, for honest tokens/s
        train_s, window_s, window_steps = train_s + dt_step, window_s + dt_step, window_steps + 1

        if done % cfg.train.log_every == 0 or done == total:
            if env.world > 1:  # each rank holds its share of the global batch's loss
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= env.world
            loss_value = loss_sum.item()  # host sync, only at log steps
            dt, window_s, window_steps = window_s / window_steps, 0.0, 0
            record = {
                "kind": "train", "step": done, "loss": loss_value, "lr": lr,
                "grad_norm": float(grad_norm), "tokens_per_s": parts.tokens_per_step / dt, "step_time_ms": 1000 * dt,
                "mfu": parts.flops_per_step / dt / parts.peak_flops, "elapsed_s": train_s,
            }
            if metrics:
                metrics.write(record)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", mfu=f"{100 * record['mfu']:.1f}%")
            if not live:
                mfu = f" | MFU {100 * record['mfu']:.1f}%" if parts.flops_per_step else ""
                say(f"step {done}/{total} | loss {loss_value:.4f} | {record['tokens_per_s']:,.0f} {parts.throughput_unit}/s"
                    f"{mfu} | ETA {(total - done) * dt:.0f}s")
        if parts.evaluate and cfg.eval.every and done % cfg.eval.every == 0 and done < total:
            result = parts.evaluate()
            if metrics:
                metrics.write({"kind": "eval", "step": done, **result})
            (bar.write if live else say)(f"step {done}: {format_result(result)}")
        saved = bool(cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done < total and not guard.bad_streak)
        if saved:  # not at a skipped step: a run of bad steps never pushes good checkpoints out
            parts.save(done)
        if (verdict.stop or stop_at is not None and stop_at <= done) and done < total:
            if not saved:
                parts.save(done)
            preempted = verdict.stop
            if preempted:
                say(f"step {done}: {guard.signal_name} received; checkpoint written, stopping")
            break
    bar.close()
    steps_run = done - start_step
    return {
        "step": done, "steps_run": steps_run, "train_s": train_s, "train_loss": loss_value, "preempted": preempted,
        "skipped_steps": guard.skipped,
        "tokens_per_s": steps_run * parts.tokens_per_step / max(train_s, 1e-9),
        "mfu": steps_run * parts.flops_per_step / max(train_s, 1e-9) / parts.peak_flops,
    }


def finish(parts: LoopParts, cfg: RunConfig, run_dir: Path, progress: dict[str, Any], *,
           metrics: MetricsLog | None, say: Callable[[str], None]) -> dict[str, Any]:
    """After the last step: final evaluation, final checkpoint, summary line and record."""
    if progress["step"] < cfg.train.steps:
        why = f"preempted (exit {PREEMPTED_EXIT})" if progress["preempted"] else "stopped"
        say(f"{why} at step {progress['step']}; continue with --resume auto")
        return {**progress, "stopped": True, "run_dir": str(run_dir)}
    final = parts.evaluate() if parts.evaluate else {}
    parts.save(cfg.train.steps)
    summary = {**progress, "stopped": False, "val_loss": final.get("loss"), "val_perplexity": final.get("perplexity"),
               "val_accuracy": final.get("accuracy"), "run_dir": str(run_dir)}
    if metrics:
        if final:
            metrics.write({"kind": "eval", "step": cfg.train.steps, **final})
        metrics.write({"kind": "summary", **summary})
        metrics.flush()
        plot_run(run_dir)
    if final:
        say(format_result(final))
    val = f"val loss {final['loss']:.4f} | " if final else ""
    mfu = f" | MFU {100 * progress['mfu']:.2f}%" if parts.flops_per_step else ""
    say(f"done: {progress['steps_run']} steps in {progress['train_s']:.1f}s | train loss {progress['train_loss']:.4f} | "
        f"{val}{progress['tokens_per_s']:,.0f} {parts.throughput_unit}/s{mfu} | {run_dir}")
    return summary


def resume_point(run_dir: Path, resume: str | None, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint, its verified state) to resume from: None, 'auto' (newest intact one, if any) or an explicit folder."""
    if resume is None:
        return None
    root = run_dir / "checkpoints"
    if resume == "auto":
        linked = sorted(p.name for p in root.glob("step_*") if p.is_symlink()) if root.is_dir() else []
        if linked:  # largo renames, replaces and prunes these folders; a link would be followed into someone else's files
            raise CheckpointError(f"{root / linked[0]}: a symbolic link; largo writes and prunes its checkpoint folders itself, "
                                  f"so replace the link with a copy of the folder")
        return newest_intact(root, log)  # digest, schema, hashes: a checkpoint damaged or edited is passed over
    path = Path(resume)
    if path.is_file():
        raise CheckpointError(f"--resume {resume}: a file, not a checkpoint folder; largo resumes only from its own "
                              f"safetensors checkpoint folders (it never loads pickle files)")
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder (or use --resume auto)")
    return path, verify_checkpoint(path)


def global_target_count(batches: list[Batch], env: DistEnv) -> float:
    """The loss divisor: non-ignored targets in the whole global batch (all micro-steps, all ranks) / world.

    DDP and FSDP average gradients over ranks, so dividing each rank's summed loss by count / world
    makes that average the gradient of the global batch's mean loss, whatever the world size.
    """
    count = torch.tensor(float(sum(int((y != IGNORE).sum()) for _, y in batches)), device=env.device)
    if env.world > 1:
        torch.distributed.all_reduce(count)
    return max(1.0, count.item()) / env.world


def train(cfg: RunConfig, *, resume: str | None = None, overwrite: bool = False, stop_at: int | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train cfg to cfg.train.steps (resuming if asked) and return the summary.

    stop_at ends the run early after that step, with a checkpoint, as a preemption would.
    """
    env = init_env(cfg.train.device, cfg.parallel.timeout_s)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t = cfg.train
    if t.global_batch % env.world:
        raise ConfigError(f"train.global_batch ({t.global_batch}) must divide by the number of processes ({env.world})")
    seed_everything(cfg.run.seed)
    say = log if env.is_main else (lambda _msg: None)

    task = build_task(cfg, env, log=say)  # 1) data preprocessing: prepared once, cached on disk
    cfg = task.cfg  # model fields resolved from the data (vocabulary size, classes)
    strategy, why = choose_strategy(cfg.parallel, num_params=cfg.model.num_params(), env=env)
    say(f"parallel: {strategy} ({why})")
    resumed = resume_point(cfg.run_dir, resume, log=say)  # a bad --resume fails before the run directory is touched
    if resumed is not None and resumed[1]["step"] >= t.steps:
        raise RunDirError(f"{cfg.run_dir} already finished at step {resumed[1]['step']} (train.steps = {t.steps}); "
                          f"nothing to do: raise --train.steps to train further")
    run_dir = open_run_dir(cfg, resume=resume is not None, overwrite=overwrite, is_main=env.is_main)  # locked until the end
    try:
        return _train_in(run_dir, cfg, env, task, strategy, resumed, stop_at=stop_at, say=say, log=log)
    finally:
        release_run_dir(run_dir)


def _train_in(run_dir: Path, cfg: RunConfig, env: DistEnv, task: Any, strategy: str, resumed: tuple[Path, dict[str, Any]] | None,
              *, stop_at: int | None, say: Callable[[str], None], log: Callable[[str], None]) -> dict[str, Any]:
    """Everything after the run directory is opened and locked: model, optimizers, the loop, the end-of-run reports."""
    t = cfg.train
    memory = PeakMemory(env.device)  # baseline before the model exists, for plan vs measured
    # 2) model init: meta build, parallelize (ac -> compile -> fsdp | ddp), materialise, init from the seed
    trained = build_parallel_model(cfg, env, strategy, full_init=resumed is None)
    model = unwrap(trained)
    if cfg.model.init_from:  # fine-tuning: start from these weights; optimizer, schedule and step start fresh
        if strategy == "fsdp":
            raise ConfigError("model.init_from works with parallel.strategy none or ddp; export the weights with largo import first")
        say(f"initialised from {load_init_weights(model, cfg.model)}")
    optimizers = build_optimizers(model, cfg.optim)
    schedulers = build_schedulers(optimizers, cfg.optim, t.steps)
    start_step = 0
    if resumed is not None:
        ckpt, state = resumed
        start_step = int(load_for_resume(ckpt, trained, optimizers, schedulers, sharded_model=strategy == "fsdp", state=state)["step"])
        say(f"resumed from {ckpt} at step {start_step}")
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step) if env.is_main else None
    report_after_steps(optimizers[0], {1, t.steps - start_step}, model, optimizers, env,
                       lambda n, record: log_memory(start_step + n, record, metrics, say if n == 1 else None))

    confusion = new_confusion(task)  # classifiers: (true, predicted) counts of the latest evaluation

    def save(step: int) -> None:
        trainer_state = {"data": {"samples_seen": step * t.global_batch}, "config": cfg.to_dict()}
        common = dict(optimizers=optimizers, schedulers=schedulers, trainer_state=trainer_state,
                      keep_last=cfg.checkpoint.keep_last, extra_files=task.files)
        if strategy == "fsdp":  # every rank writes its shards
            save_sharded(run_dir / "checkpoints", step, model=model, env=env, **common)
        else:  # replicas: rank 0 writes one safetensors checkpoint
            save_checkpoint(run_dir / "checkpoints", step, model_state=model.state_dict(), is_main=env.is_main, **common)

    parts = LoopParts(
        model=trained, optimizers=optimizers, schedulers=schedulers,
        micro_batches=lambda step: [task.dataset.train_rows(s) for s in
                                    rank_samples(step, global_batch=t.global_batch, micro_batch=t.micro_batch, rank=env.rank, world=env.world)],
        normaliser=lambda batches: global_target_count(batches, env),
        loss=lambda logits, y, norm: summed_loss(logits, y) / norm,
        evaluate=lambda: evaluate(model, task.dataset.eval_batches(t.micro_batch, cfg.eval.max_batches), device=env.device,
                                  precision=t.precision, rank=env.rank, world=env.world,
                                  confusion=confusion.zero_() if confusion is not None else None),
        save=save,
        tokens_per_step=t.global_batch * task.tokens_per_sample,
        flops_per_step=t.global_batch * task.flops_per_sample,
        peak_flops=peak_flops(env.device, t.precision, t.peak_tflops) * env.world,
    )
    say(f"model: {sum(p.numel() for p in model.parameters()):,} params | {parts.tokens_per_step:,} tokens/step | "
        f"{-(-t.global_batch // env.world // t.micro_batch)} micro-steps | {t.precision} | device {env.device} | world {env.world}")
    memory.start()
    progress = run_steps(parts, cfg, env, start_step=start_step, stop_at=stop_at, metrics=metrics, say=say)
    peak_bytes = memory.stop()  # before the final evaluation and checkpoint write
    if progress["mfu"] > 1.0 and env.device.type == "cpu" and env.world == 1 and not t.peak_tflops:  # the cached peak was measured under load
        old_peak, parts.peak_flops = parts.peak_flops, remeasure_peak(env.device, t.precision) * env.world
        progress["mfu"] *= old_peak / parts.peak_flops
        say(f"MFU above 100%: the cached CPU peak ({old_peak / 1e9:,.0f} GFLOP/s) read low; re-measured "
            f"{parts.peak_flops / 1e9:,.0f} GFLOP/s and cached it")
    summary = finish(parts, cfg, run_dir, progress, metrics=metrics, say=say)
    if confusion is not None and not summary["stopped"]:  # confusion matrices, then the extra named test sets
        summary["test_sets"] = report_classification(model, task, confusion, run_dir, env=env)
        for name, result in summary["test_sets"].items():
            say(f"{name}: {format_result(result)}")
            if metrics:
                metrics.write({"kind": "test_set", "name": name, "step": cfg.train.steps, **result})
    if env.is_main and not summary["stopped"]:  # plan vs measured: what `largo plan` predicts next to what this run did
        summary["plan_vs_measured"] = check_run(
            cfg, run_dir, model=model, world=env.world, device=env.device, peak_flops_per_device=parts.peak_flops / env.world,
            seq_len=task.tokens_per_sample, peak_bytes=peak_bytes, memory_method=memory.method,
            step_s=progress["train_s"] / max(progress["steps_run"], 1), mfu=progress["mfu"], steps_run=progress["steps_run"])
        metrics.write({"kind": "plan_vs_measured", "step": cfg.train.steps, "rows": summary["plan_vs_measured"]})
        say(f"plan vs measured ({memory.method}):\n{format_rows(summary['plan_vs_measured'])}")
    if metrics:
        metrics.close()
    return summary
