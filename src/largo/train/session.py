"""One run session around the loop: the locked run folder, its checkpoints and resume point, the metrics log and trackers.

The CLI's training (train/run.py), the Python API (largo.Trainer) and `largo plan`'s step probe
(train/probe.py) all run the one loop (train/loop.py) inside a session; the probe's keeps nothing
on disk. In order:

    session = RunSession.resolve(cfg, env, resume=..., say=say)  # the resume point, verified; nothing written yet
    with session.open(resolved_cfg, overwrite=...):              # the lock and config.json; unlocked on leaving
        session.attach(model, optimizers, schedule, ...)         # checkpointer, restored state, metrics + trackers
        progress = session.run(parts)                            # parts.save = session.save
"""

from __future__ import annotations

import dataclasses

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.checkpoint.checkpointer import Checkpointer
from largo.config import RunConfig
from largo.distributed.env import DistEnv
from largo.observe.metrics import MetricsLog
from largo.observe.trackers import open_metrics
from largo.train.loop import LoopParts, run_steps
from largo.train.optim import Schedule
from largo.train.run_dir import open_run_dir, release_run_dir, resume_point


class Records:
    """A metrics sink kept in memory (the probe's: nothing of a timing run is written)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


class RunSession:
    """What a run keeps around its loop: folder lock, checkpointer, resume point, metrics log and trackers."""

    def __init__(self, cfg: RunConfig, env: DistEnv, *, run_dir: Path | None, resume: str | None,
                 resumed: tuple[Path, dict[str, Any]] | None, say: Callable[[str], None]):
        self.cfg, self.env, self.say = cfg, env, say
        self.run_dir, self.resume, self.resumed = run_dir, resume, resumed  # resumed: (checkpoint, its verified state)
        self.checkpoints: Checkpointer | None = None
        self.metrics: MetricsLog | Records | None = None  # rank 0 only
        self.start_step = 0
        self._position: Callable[[int], dict[str, Any]] = lambda _step: {}
        self._extra: dict[str, Any] = {}

    @classmethod
    def resolve(cls, cfg: RunConfig, env: DistEnv, *, resume: str | None, say: Callable[[str], None]) -> RunSession:
        """The session of cfg.run_dir with its resume point found and verified: a bad --resume fails here, nothing written."""
        return cls(cfg, env, run_dir=cfg.run_dir, resume=resume, resumed=resume_point(cfg.run_dir, resume, log=say), say=say)

    @classmethod
    def in_memory(cls, cfg: RunConfig, env: DistEnv) -> RunSession:
        """A session that keeps nothing on disk: no folder, no checkpoints, metrics as a list in `metrics.records`."""
        session = cls(cfg, env, run_dir=None, resume=None, resumed=None, say=lambda _m: None)
        session.metrics = Records()
        return session

    @property
    def finished_step(self) -> int | None:
        """The resume point's step when it already reached train.steps (nothing is left to train), else None."""
        step = self.resumed[1]["step"] if self.resumed is not None else None
        return step if step is not None and step >= self.cfg.train.steps else None

    def finished(self) -> dict[str, Any]:
        """One line saying the run is already done, and its summary: a requeued job of a finished run ends here, exit 0."""
        step = self.finished_step
        self.say(f"{self.run_dir} already finished at step {step} (train.steps = {self.cfg.train.steps}); nothing to do: "
                 f"raise --train.steps to train further")
        return {"step": step, "steps_run": 0, "stopped": False, "preempted": False, "finished": True, "run_dir": str(self.run_dir)}

    @contextmanager
    def open(self, cfg: RunConfig, *, overwrite: bool) -> Iterator[RunSession]:
        """Lock the run folder and write config.json (cfg: the resolved config); on leaving, flush the trackers, unlock."""
        self.cfg = cfg
        open_run_dir(cfg, resume=self.resume is not None, overwrite=overwrite, is_main=self.env.is_main)
        try:
            yield self
        finally:
            try:
                if self.metrics is not None:
                    self.metrics.close()  # the trackers flush
            finally:
                release_run_dir(cfg.run_dir)

    def attach(self, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedule: Schedule, *,
               position: Callable[[int], dict[str, Any]], extra: dict[str, Any] | None = None, sharded: bool = False,
               files: dict[str, Path] | None = None, adapters: bool = False) -> int:
        """Checkpoint these objects (with the data position at a step and `extra`), restore them from the resume point,
        and open the metrics log (and trackers) from that step on; returns the step the loop starts at."""
        self._position, self._extra = position, extra or {}
        if self.run_dir is None:
            return self.start_step
        cfg = self.cfg
        self.checkpoints = Checkpointer(self.run_dir / "checkpoints", model=model, optimizers=optimizers, schedule=schedule,
                                        env=self.env, sharded=sharded, keep_last=cfg.checkpoint.keep_last, files=files,
                                        adapters=adapters)
        if self.resumed is not None:
            self.start_step = self.checkpoints.load(*self.resumed)
            self.say(f"resumed from {self.resumed[0]} at step {self.start_step}")
        if self.env.is_main:
            self.metrics = open_metrics(self.run_dir, trackers=cfg.observe.trackers, config=cfg.to_dict(),
                                        project=cfg.observe.project, start_step=self.start_step)
        return self.start_step

    def refit_steps(self, steps: int) -> None:
        """A budgeted run's re-fitted train.steps (train/budget.py): its next checkpoints record it, so a resume heads there."""
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, steps=steps))

    def save(self, step: int) -> None:
        """Checkpoint `step`: the data position, the config and the caller's extra state (a collective; none in memory)."""
        if self.checkpoints is not None:
            self.checkpoints.save(step, {"data": self._position(step), "config": self.cfg.to_dict(), **self._extra})

    def run(self, parts: LoopParts, *, stop_at: int | None = None) -> dict[str, Any]:
        """The loop from the session's start step to train.steps (or stop_at), logging into the session's metrics."""
        return run_steps(parts, self.cfg, self.env, start_step=self.start_step, stop_at=stop_at, metrics=self.metrics,
                         say=self.say)
