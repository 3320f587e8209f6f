"""Every path of a run folder, named once: what largo writes there, and the file names a checkpoint carries.

A run folder (run.out_dir/run.name) holds:
  config.json           the resolved config the run started with (each checkpoint keeps its own in state.json)
  metrics.jsonl         one JSON record per logged step and evaluation
  lm_eval.json          lm-evaluation-harness scores (`largo eval --tasks`)
  .lock                 the PID of the run holding the folder (the lock itself is the kernel's flock)
  checkpoints/step_N/   step folders (store.py), checkpoints/latest names the newest
Tracker outputs (tensorboard/, wandb/, ...) are the trackers' own (observe/trackers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LM_EVAL = "lm_eval.json"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # inside checkpoints/
STATE = "state.json"  # inside a checkpoint folder
TOKENIZER = "tokenizer.json"  # in a prepared data folder, copied into each checkpoint of a model that reads tokens


@dataclass(frozen=True)
class RunDir:
    """One run folder and the paths inside it."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def lm_eval(self) -> Path:
        return self.path / LM_EVAL

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    def holds_run(self) -> bool:
        """Whether a run has written here (its config, metrics or checkpoints)."""
        return any(p.exists() for p in (self.checkpoints, self.metrics, self.config))

    @classmethod
    def of_checkpoint(cls, ckpt: Path) -> RunDir | None:
        """The run folder holding a checkpoint folder (<run>/checkpoints/step_N), if it is one."""
        return cls(ckpt.parent.parent) if ckpt.parent.name == CHECKPOINTS else None
