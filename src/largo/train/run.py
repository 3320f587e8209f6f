"""One training run from a config: prepare the data, build the model, resume, run the loop, report at the end.

    1) data preprocessing   the architecture's spec prepares (and caches) the data on rank 0 first
    2) model init           meta build, parallelize (ac -> compile -> fsdp | ddp), materialise, init or resume
    3-6) the loop           forward, loss, backward, optimizer step (train/loop.py)
    then                    final evaluation and checkpoint, classifier reports, plan vs measured (train/report.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from largo.checkpoint.restore import load_init_weights
from largo.checkpoint.store import check_data_files
from largo.config import RunConfig
from largo.data import Batch, rank_samples
from largo.distributed import start_env
from largo.distributed.env import DistEnv
from largo.distributed.memory import log_memory, report_after_steps
from largo.distributed.parallelize import build_parallel_model, unwrap
from largo.errors import CheckpointError, ConfigError
from largo.models import Task, get_spec, trainable
from largo.models.finetune import apply_finetune, check_finetune
from largo.observe.memory import PeakMemory
from largo.observe.throughput import peak_flops
from largo.plan.estimate import compile_decision
from largo.plan.check import planned_step
from largo.plan.planner import choose_strategy
from largo.precision import choose as choose_precision
from largo.train.budget import StepBudget
from largo.train.evaluate import evaluate
from largo.train.loop import LoopParts, run_steps, seed_everything
from largo.models.loss import IGNORE
from largo.train.optim import Schedule, build_optimizers
from largo.train.report import end_of_run
from largo.train.session import RunSession

T = TypeVar("T")


def on_main_first(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 while the others wait, then let the others run it (a cache hit for them)."""
    if env.world > 1 and not env.is_main:
        dist.barrier()
    out = fn()
    if env.world > 1 and env.is_main:
        dist.barrier()
    return out


def build_task(cfg: RunConfig, env: DistEnv, log: Callable[[str], None] = print) -> Task:
    """1) data preprocessing: the architecture's data, prepared once (rank 0 first) and cached on disk."""
    spec = get_spec(cfg.model.arch)
    prepared = on_main_first(env, lambda: spec.prepare(cfg.data, cfg.model, log=log))
    return spec.task(cfg.data, cfg.model, prepared, seed=cfg.run.seed)


def global_target_count(batches: list[Batch], env: DistEnv) -> torch.Tensor:
    """The loss divisor, on the device: non-ignored targets in the whole global batch (all micro-steps, all ranks) / world.

    DDP and FSDP average gradients over ranks, so dividing each rank's summed loss by count / world
    makes that average the gradient of the global batch's mean loss, whatever the world size. The
    count never leaves the device (the targets are counted on the host before they move).
    """
    count = sum((y != IGNORE).sum() for _, y in batches).to(env.device, torch.float32)
    if env.world > 1:
        dist.all_reduce(count)
    return count.clamp_min(1.0) / env.world


def resolve_precision(cfg: RunConfig, device: torch.device, positions: int, say: Callable[[str], None]) -> RunConfig:
    """cfg with train.precision = 'auto' decided on this device (measured once per CPU and matmul shape); says the choice."""
    t, model = cfg.train, cfg.model
    choice = choose_precision(t.precision, device, (min(t.micro_batch, t.global_batch) * positions, model.dim, model.hidden), log=say)
    say(choice.line)
    if choice.warning:
        say(choice.warning)
    precision = "bf16" if rank0_value(float(choice.precision == "bf16"), device) else "fp32"  # every rank computes alike
    return dataclasses.replace(cfg, train=dataclasses.replace(t, precision=precision))


def rank0_value(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank (decisions measured per rank may differ; the ranks must agree); as is on one process."""
    if not dist.is_initialized():
        return value
    box = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(box, src=0)
    return float(box.item())


def fit_time_budget(cfg: RunConfig, positions: int, device: torch.device, world: int, say: Callable[[str], None]) -> RunConfig:
    """cfg with train.steps lowered to what fits train.time_budget_s at the planned step time on this device."""
    t = cfg.train
    step_s, _, source = planned_step(cfg, world=world, device=device, seq_len=positions,
                                     peak_flops_per_device=peak_flops(device, t.precision, t.peak_tflops, log=say))
    steps = int(rank0_value(max(1, min(t.steps, int(t.time_budget_s / step_s))), device))  # each rank timed its own
    say(f"time budget: {steps} of {t.steps} steps fit train.time_budget_s = {t.time_budget_s:g} at {step_s:.3g} s per step "
        f"({source})")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, steps=steps))


def as_started(cfg: RunConfig, resumed: tuple[Path, dict[str, Any]], say: Callable[[str], None]) -> RunConfig:
    """cfg with the choices a resumed run made when it started: the train.steps a time-budgeted run laid its schedule
    out for, and the precision 'auto' chose (measured again on a busy machine it may differ, and the resume with it)."""
    t, started = cfg.train, (resumed[1].get("config") or {}).get("train") or {}
    if t.time_budget_s:
        t = dataclasses.replace(t, steps=int(started.get("steps") or t.steps))
        say(f"time budget: {t.steps} steps, as the run started with")
    if t.precision == "auto" and started.get("precision") in ("fp32", "bf16"):
        t = dataclasses.replace(t, precision=started["precision"])
        say(f"precision: {t.precision} chosen when the run started (train.precision = auto)")
    return dataclasses.replace(cfg, train=t)


def compile_mode(cfg: RunConfig, task: Task, strategy: str) -> tuple[str, str]:
    """("model" | "blocks" | "off", reason): train.compile, with auto deciding from the run's training FLOPs."""
    return compile_decision(cfg.train.compile, cfg.train.steps * cfg.train.global_batch * task.flops_per_sample, strategy,
                            cfg.train.time_budget_s)


def train(cfg: RunConfig, *, resume: str | None = None, overwrite: bool = False, stop_at: int | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train cfg to cfg.train.steps (resuming if asked) and return the summary.

    stop_at ends the run early after that step, with a checkpoint, as a preemption would.
    """
    env = start_env(cfg.train.device, cfg.parallel.timeout_s)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t = cfg.train
    if t.global_batch % env.world:
        raise ConfigError(f"train.global_batch ({t.global_batch}) must divide by the number of processes ({env.world})")
    seed_everything(cfg.run.seed)
    say = log if env.is_main else (lambda _msg: None)
    if cfg.finetune.adapters and not cfg.model.init_from:
        raise ConfigError("finetune.method = 'lora' trains adapters over pretrained weights; set model.init_from "
                          "(a run directory or checkpoint, e.g. one made by largo import)")

    session = RunSession.resolve(cfg, env, resume=resume, say=say)  # a bad --resume fails before anything is prepared or written
    if session.resumed is not None:  # towards the steps a budgeted run started with, in the precision it chose
        session.cfg = cfg = as_started(cfg, session.resumed, say)
        t = cfg.train
    if session.finished_step is not None:
        return session.finished()  # a requeued job of a run that already reached train.steps: one line, exit 0
    task = build_task(cfg, env, log=say)
    if session.resumed is not None:  # the ids it trained on: a data folder prepared again may hold others
        check_data_files(*session.resumed, task.files)
    cfg = dataclasses.replace(cfg, model=task.model)  # model fields resolved from the data (vocabulary size, classes)
    cfg = resolve_precision(cfg, env.device, task.positions, say)
    check_finetune(cfg.model, cfg.finetune)  # adapter targets name real modules: checked before the run directory is touched
    strategy, why = choose_strategy(cfg, positions=task.positions, env=env)
    say(f"parallel: {strategy} ({why})")
    cap = None  # a fresh budgeted run: the configured steps, the most its re-fits may give it
    if t.time_budget_s and session.resumed is None:
        cap, cfg = t.steps, fit_time_budget(cfg, task.positions, env.device, env.world, say)
        t = cfg.train
    compiled, why = compile_mode(cfg, task, strategy)
    say(f"compile: {compiled} ({why})")
    with session.open(cfg, overwrite=overwrite):  # locked until the end
        return _train_in(session, task, env, strategy, compiled, stop_at=stop_at, step_cap=cap, say=say)


def build_trained_model(cfg: RunConfig, env: DistEnv, strategy: str, *, full_init: bool, compiled: str,
                        say: Callable[[str], None]) -> tuple[nn.Module, nn.Module, dict[str, str] | None]:
    """2) model init: meta build, materialise, init from the seed; fine-tuning: model.init_from's weights, then adapters;
    parallelize (ac -> compile -> fsdp | ddp). Returns the module to train, the model inside it, and the base it adapts."""
    base: dict[str, str] = {}

    def adapt(model: nn.Module) -> nn.Module:
        if cfg.model.init_from:  # optimizer, schedule and step start fresh
            ckpt, state = load_init_weights(model, cfg.model)
            base.update(checkpoint=str(ckpt.resolve()), digest=state["digest"])
            say(f"initialised from {ckpt}")
        return apply_finetune(model, cfg.finetune)

    fine_tuning = bool(cfg.model.init_from) or cfg.finetune.adapters
    trained = build_parallel_model(cfg, env, strategy, full_init=full_init, compile=compiled, adapt=adapt if fine_tuning else None)
    model = unwrap(trained)
    if cfg.finetune.adapters:
        total = sum(p.numel() for p in model.parameters())
        say(f"finetune: LoRA rank {cfg.finetune.rank} on {', '.join(cfg.finetune.target_modules)}: {trainable(model):,} of "
            f"{total:,} parameters train ({100 * trainable(model) / total:.2f}%); only they are checkpointed")
    return trained, model, base or None


def task_steps(cfg: RunConfig, task: Task, trained: nn.Module, env: DistEnv) -> dict[str, Any]:
    """The loop's parts that come from a config-built task: this rank's micro-batches, the loss divisor, the spec's loss."""
    spec, t = get_spec(cfg.model.arch), cfg.train
    return dict(
        micro_batches=lambda step: [task.dataset.train_rows(s) for s in
                                    rank_samples(step, global_batch=t.global_batch, micro_batch=t.micro_batch, rank=env.rank, world=env.world)],
        normaliser=lambda batches: global_target_count(batches, env),
        forward_loss=lambda x, y: spec.loss(trained, task.augment(x), y),
        tokens_per_step=t.global_batch * task.positions,
    )


def check_adapters_base(resumed: tuple[Path, dict[str, Any]] | None, cfg: RunConfig, base: dict[str, str] | None) -> None:
    """Adapters resume only over the base they were trained over (model.init_from's state.json digest)."""
    if resumed is None or not cfg.finetune.adapters:
        return
    trained_over = (resumed[1].get("adapters") or {}).get("base") or {}
    if trained_over.get("digest") != (base or {}).get("digest"):
        raise CheckpointError(f"{resumed[0]}: its adapters were trained over another base than the one model.init_from "
                              f"({cfg.model.init_from}) holds now; their state.json digests differ")


def _train_in(session: RunSession, task: Task, env: DistEnv, strategy: str, compiled: str, *, stop_at: int | None,
              step_cap: int | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Everything after the run directory is opened and locked: model, optimizers, checkpoints, the loop, the reports."""
    cfg, t = session.cfg, session.cfg.train
    memory = PeakMemory(env.device)  # baseline before the model exists, for plan vs measured
    trained, model, base = build_trained_model(cfg, env, strategy, full_init=session.resumed is None, compiled=compiled, say=say)
    optimizers = build_optimizers(model, cfg.optim, cfg.train.precision)
    schedule = Schedule(optimizers, cfg.optim, t.steps, env.device)
    check_adapters_base(session.resumed, cfg, base)
    start_step = session.attach(model, optimizers, schedule, position=lambda step: {"samples_seen": step * t.global_batch},
                                extra={"adapters": {"method": cfg.finetune.method, "base": base}} if cfg.finetune.adapters else {},
                                sharded=strategy == "fsdp", files=task.files, adapters=cfg.finetune.adapters)
    metrics = session.metrics
    report_after_steps(optimizers[0], {1, t.steps - start_step}, model, optimizers, env,
                       lambda n, record: log_memory(start_step + n, record, metrics, say if n == 1 else None))
    confusion = torch.zeros(len(task.classes), len(task.classes), dtype=torch.long) if task.classes else None
    parts = LoopParts(
        model=trained, optimizers=optimizers, schedule=schedule, **task_steps(cfg, task, trained, env),
        evaluate=lambda: evaluate(model, task.dataset.eval_batches(t.micro_batch, cfg.eval.max_batches), device=env.device,
                                  precision=t.precision, rank=env.rank, world=env.world, score=get_spec(cfg.model.arch).score,
                                  confusion=confusion.zero_() if confusion is not None else None),
        save=session.save,
        flops_per_step=t.global_batch * task.flops_per_sample,
        peak_flops=peak_flops(env.device, t.precision, t.peak_tflops, log=say) * env.world,
        budget=StepBudget(t.time_budget_s, step_cap, agree=lambda n: int(rank0_value(n, env.device)),
                          on_refit=session.refit_steps) if step_cap else None,
    )
    say(f"model: {trainable(model):,} params | {parts.tokens_per_step:,} tokens/step | "
        f"{-(-t.global_batch // env.world // t.micro_batch)} micro-steps | {t.precision} | device {env.device} | world {env.world}")
    memory.start()
    progress = session.run(parts, stop_at=stop_at)
    if session.cfg.train.steps != t.steps:
        say(f"time budget: the measured step time re-fitted the run from {t.steps} to {session.cfg.train.steps} steps")
    return end_of_run(parts, session.cfg, task, progress, model=model, run_dir=session.run_dir, env=env, memory=memory, confusion=confusion,
                      metrics=metrics, say=say)
