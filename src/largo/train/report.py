"""The end of a run: final evaluation and checkpoint, the summary, then what a finished run reports beside it.

`finish` is shared with largo.Trainer; `end_of_run` adds what a config-built run reports: a CPU
peak re-measured when MFU read above 100%, confusion matrices and extra test sets for classifiers,
and the plan next to what was measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.config import RunConfig, TrainConfig
from largo.distributed.env import DistEnv
from largo.distributed.memory import local_bytes, optimizer_tensors
from largo.models import Task, get_spec
from largo.observe.confusion import write_confusion
from largo.observe.memory import PeakMemory
from largo.observe.metrics import MetricsLog
from largo.observe.plots import plot_run
from largo.observe.progress import heartbeat
from largo.observe.throughput import remeasure_peak
from largo.plan.check import check_run, format_rows
from largo.train.evaluate import evaluate, format_result
from largo.train.faults import PREEMPTED_EXIT
from largo.train.loop import LoopParts


def finish(parts: LoopParts, cfg: RunConfig, run_dir: Path, progress: dict[str, Any], *,
           metrics: MetricsLog | None, say: Callable[[str], None]) -> dict[str, Any]:
    """After the last step: final evaluation, final checkpoint, summary line and record."""
    if progress["step"] < cfg.train.steps:
        why = f"preempted (exit {PREEMPTED_EXIT})" if progress["preempted"] else "stopped"
        say(f"{why} at step {progress['step']}; continue with --resume auto")
        return {**progress, "stopped": True, "run_dir": str(run_dir)}
    with heartbeat("final evaluation", say):
        final = parts.evaluate() if parts.evaluate else {}
    parts.save(cfg.train.steps)
    summary = {**progress, "stopped": False, "val_loss": final.get("loss"), "val_perplexity": final.get("perplexity"),
               "val_accuracy": final.get("accuracy"), "run_dir": str(run_dir)}
    if metrics:
        if final:
            metrics.write({"kind": "eval", "step": cfg.train.steps, **final})
        metrics.write({"kind": "summary", **summary})
        plot_run(run_dir)
    if final:
        say(format_result(final))
    val = f"val loss {final['loss']:.4f} | " if final else ""
    mfu = f" | MFU {100 * progress['mfu']:.2f}%" if parts.flops_per_step else ""
    say(f"done: {progress['steps_run']} steps in {progress['train_s']:.1f}s | train loss {progress['train_loss']:.4f} | "
        f"{val}{progress['tokens_per_s']:,.0f} {parts.throughput_unit}/s{mfu} | {run_dir}")
    return summary


def end_of_run(parts: LoopParts, cfg: RunConfig, task: Task, progress: dict[str, Any], *, model: nn.Module, run_dir: Path, env: DistEnv,
               memory: PeakMemory, confusion: torch.Tensor | None, metrics: MetricsLog | None,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Everything after the last step of a config-built run, in order; returns the summary."""
    t = cfg.train
    peak_bytes = memory.stop()  # before the final evaluation and checkpoint write
    if progress["mfu"] > 1.0 and env.device.type == "cpu" and env.world == 1 and not t.peak_tflops:  # the cached peak was measured under load
        old_peak, parts.peak_flops = parts.peak_flops, remeasure_peak(env.device, t.precision) * env.world
        progress["mfu"] *= old_peak / parts.peak_flops
        say(f"MFU above 100%: the cached CPU peak ({old_peak / 1e9:,.0f} GFLOP/s) read low; re-measured "
            f"{parts.peak_flops / 1e9:,.0f} GFLOP/s and cached it")
    summary = finish(parts, cfg, run_dir, progress, metrics=metrics, say=say)
    if summary["stopped"]:
        return summary
    if confusion is not None:  # the final evaluation's confusion matrix, then the extra named test sets
        summary["test_sets"] = report_classification(model, t, task, confusion, run_dir, env=env)
        for name, result in summary["test_sets"].items():
            say(f"{name}: {format_result(result)}")
            if metrics:
                metrics.write({"kind": "test_set", "name": name, "step": t.steps, **result})
    if env.is_main:  # the task's own pictures and outputs (samples.png, detections.png, audio), then plan vs measured
        summary.update(get_spec(cfg.model.arch).after_training(model, task, run_dir, device=env.device, precision=t.precision,
                                                                 log=say))
    if env.is_main:  # plan vs measured: what `largo plan` predicts next to what this run did
        summary["plan_vs_measured"] = check_run(
            cfg, run_dir, model=model, world=env.world, device=env.device, peak_flops_per_device=parts.peak_flops / env.world,
            seq_len=task.positions, peak_bytes=peak_bytes, memory_method=memory.method,
            step_s=progress["steady_step_s"], mfu=parts.flops_per_step / progress["steady_step_s"] / parts.peak_flops,
            steps_run=progress["steps_run"], optimizer_bytes=local_bytes(optimizer_tensors(parts.optimizers)))
        metrics.write({"kind": "plan_vs_measured", "step": t.steps, "rows": summary["plan_vs_measured"]})
        source = str(json.loads((run_dir / "plan_vs_measured.json").read_text()).get("mfu_source", ""))
        hint = "" if source.startswith("measured: ") else f"\nstep time planned from {source}: `largo plan` on this config first times its steps here"
        say(f"plan vs measured ({memory.method}):\n{format_rows(summary['plan_vs_measured'])}{hint}")
    return summary


def report_classification(model: nn.Module, t: TrainConfig, task: Task, confusion: torch.Tensor, run_dir: Path, *,
                          env: DistEnv) -> dict[str, dict[str, float]]:
    """Write the held-out confusion matrix, then score each extra test set and write its matrix."""
    if env.is_main:
        write_confusion(run_dir / "confusion", confusion.numpy(), task.classes)
    results = {}
    for name, batches in task.test_sets.items():
        counts = torch.zeros_like(confusion)
        results[name] = evaluate(model, batches(t.micro_batch), device=env.device, precision=t.precision,
                                 rank=env.rank, world=env.world, confusion=counts, score=get_spec(task.model.arch).score)
        if env.is_main:
            write_confusion(run_dir / f"confusion_{name}", counts.numpy(), task.classes)
    return results
