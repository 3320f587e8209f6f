"""Experiment trackers fed from MetricsLog.write: every record the run logs reaches them too (rank 0 only).

metrics.jsonl stays the record; a tracker is a view of it. Each tracker is one `Tracker` entry in a registry:
its name (observe.trackers), the optional package it needs (missing: largo.optional.require's one line), what
it writes into a run folder, and how its sink opens. TensorBoard (through PyTorch's SummaryWriter, which
writes the `tensorboard` package's event format) is built in; W&B (offline), MLflow (a local file store) and
trackio are used when installed. Adding a tracker is one `register(Tracker(...))`, in src/ or outside it.
A resumed run continues the same tracker run:
- TensorBoard: the new writer starts with purge_step = the resumed step + 1, so the event reader drops what the
  first attempt logged after its checkpoint and keeps each step once;
- W&B, MLflow, trackio (no purge): steps the first attempt already logged are not sent again (a resumed run
  repeats them bitwise on CPU, see test_resume_is_bitwise_identical); their run ids live in trackers.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largo.errors import ConfigError
from largo.observe.metrics import MetricsLog, Sink, last_step
from largo.rundir import RunDir
from largo.optional import require

IDS = "trackers.json"  # run ids of the trackers that have them, so a resumed run continues its own
TB_DIR = "tensorboard"


@dataclass
class Opening:
    """What a tracker's sink opens with."""

    name: str  # the tracker's registered name
    run_dir: Path
    config: dict[str, Any]  # the resolved run config
    project: str  # observe.project
    resume_step: int | None  # the checkpoint a resumed run restarts after; None = a new run
    skip_through: int  # the last step an earlier attempt already sent (-1: none)
    ids: dict[str, str] = field(default_factory=dict)  # trackers.json: a tracker with a run id reads and sets ids[name]


@dataclass(frozen=True)
class Tracker:
    """One experiment tracker: its name, the package it needs, what it writes into a run folder, how its sink opens."""

    name: str  # the value in observe.trackers / --tracker
    module: str  # the optional package it imports (checked through largo.optional.require before opening)
    outputs: tuple[str, ...]  # files and folders it writes into a run directory (--overwrite clears them)
    open: Callable[[Opening], Sink]


_TRACKERS: dict[str, Tracker] = {}


def register(tracker: Tracker) -> Tracker:
    """Make `tracker` selectable in observe.trackers (a later registration of the same name replaces it)."""
    _TRACKERS[tracker.name] = tracker
    return tracker


def tracker_outputs() -> tuple[str, ...]:
    """Everything trackers write into a run directory: what --overwrite clears beside the run's own files."""
    return (IDS, *dict.fromkeys(out for t in _TRACKERS.values() for out in t.outputs))


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record as tracker scalars: train/*, val/*, memory/* (MiB, the largest rank), test/<set>/*."""
    kind, out = record.get("kind"), {}
    if kind == "train":
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time_ms"):
            if _number(record.get(key)) is not None:
                out[f"train/{key}"] = _number(record[key])
        if "train/loss" in out:
            out["train/perplexity"] = math.exp(min(out["train/loss"], 50.0))
    elif kind == "eval":
        out = {f"val/{k}": _number(record.get(k)) for k in ("loss", "perplexity", "accuracy") if _number(record.get(k)) is not None}
    elif kind == "test_set":
        out = {f"test/{record.get('name')}/{k}": _number(record.get(k)) for k in ("loss", "accuracy")
               if _number(record.get(k)) is not None}
    elif kind == "memory":
        for key, name in (("rank_param_bytes", "params"), ("rank_optim_bytes", "optimizer"), ("rank_peak_bytes", "peak")):
            values = [v for v in record.get(key) or [] if _number(v) is not None]
            if values:
                out[f"memory/{name}_MiB"] = max(values) / 2**20
    return out


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'dim': 64}} -> {'model.dim': 64}; lists and None as text (trackers take numbers, text and bools)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def check_names(names: list[str]) -> list[str]:
    """The tracker names, each known, duplicates dropped (order kept); a one-line error otherwise."""
    for name in names:
        if name not in _TRACKERS:
            raise ConfigError(f"observe.trackers: {name!r} is not a tracker; choose among {', '.join(map(repr, _TRACKERS))}")
    return list(dict.fromkeys(names))


class _Stepped:
    """Shared by the trackers without purge: skip records at steps the first attempt of a resumed run already sent."""

    def __init__(self, skip_through: int) -> None:
        self.skip_through = skip_through

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        values = scalars(record)
        if isinstance(step, int) and values and step > self.skip_through:
            self.log(values, step)

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError


class TensorBoardSink:
    """Scalars to run_dir/tensorboard; the resolved config as hyperparameters (and as text) when the run starts."""

    def __init__(self, o: Opening):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        purge = o.resume_step + 1 if o.resume_step is not None else None  # the event reader drops older events from here on
        self.writer = SummaryWriter(log_dir=str(o.run_dir / TB_DIR), purge_step=purge)
        if o.resume_step is None:
            flat = flat_config(o.config)
            for summary in hparams(flat, {"val/loss": 0.0, "val/accuracy": 0.0}):  # metric names only; values come as scalars
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(o.config, indent=2) + "\n```", 0)
        self.writer.flush()

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        values = scalars(record)
        if not isinstance(step, int) or not values:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a few records per second at most; a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbSink(_Stepped):
    """W&B in offline mode (files under run_dir/wandb; `wandb sync` uploads them later)."""

    def __init__(self, o: Opening):
        import wandb

        super().__init__(o.skip_through)
        o.ids.setdefault(o.name, f"{o.run_dir.name}-{os.urandom(4).hex()}")
        self.run = wandb.init(project=o.project, name=o.run_dir.name, id=o.ids[o.name], dir=str(o.run_dir), mode="offline",
                              resume="allow", config=o.config)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink(_Stepped):
    """MLflow with a local file store under run_dir/mlruns; params = the flattened resolved config."""

    def __init__(self, o: Opening):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        super().__init__(o.skip_through)
        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=(o.run_dir / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name(o.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(o.project)
        if o.name not in o.ids:
            self.run_id = self.client.create_run(experiment_id, run_name=o.run_dir.name).info.run_id
            params = [Param(k, str(v)[:500]) for k, v in flat_config(o.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        else:
            self.run_id = o.ids[o.name]
            self.client.update_run(self.run_id, status="RUNNING")
        o.ids[o.name] = self.run_id

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioSink(_Stepped):
    """trackio, stored locally (TRACKIO_DIR); the run resumes by name."""

    def __init__(self, o: Opening):
        import trackio

        super().__init__(o.skip_through)
        self.run = trackio.init(project=o.project, name=o.run_dir.name, config=o.config, resume="allow")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


register(Tracker("tensorboard", module="tensorboard", outputs=(TB_DIR,), open=TensorBoardSink))
register(Tracker("wandb", module="wandb", outputs=("wandb",), open=WandbSink))
register(Tracker("mlflow", module="mlflow", outputs=("mlruns",), open=MlflowSink))
register(Tracker("trackio", module="trackio", outputs=(), open=TrackioSink))


def _ids(run_dir: Path) -> dict[str, str]:
    try:
        ids = json.loads((run_dir / IDS).read_text())
        return ids if isinstance(ids, dict) else {}
    except (OSError, ValueError):
        return {}


def open_trackers(names: list[str], run_dir: Path, *, config: dict[str, Any], project: str, resume_step: int | None,
                  last_step: int) -> list[Sink]:
    """The sinks for observe.trackers; resume_step: the checkpoint a resumed run restarts after (None = a new run);
    last_step: the last step the metrics file held before it was truncated to resume_step."""
    ids, sinks = (_ids(run_dir) if resume_step is not None else {}), []
    skip = last_step if resume_step is not None else -1
    for name in check_names(names):
        tracker = _TRACKERS[name]
        require(tracker.module, f"observe.trackers {name!r}")  # a missing package: one line naming how to install it
        sinks.append(tracker.open(Opening(name, run_dir, config, project, resume_step, skip, ids)))
    if ids:
        (run_dir / IDS).write_text(json.dumps(ids, indent=1) + "\n")
    return sinks


def open_metrics(run_dir: Path, *, trackers: list[str], config: dict[str, Any], project: str = "largo",
                 start_step: int = 0) -> MetricsLog:
    """run_dir/metrics.jsonl, cut back to start_step (records past a resumed checkpoint are redone), with the trackers
    named as its sinks; an earlier attempt's tracker run is continued, not duplicated."""
    path = RunDir(run_dir).metrics
    earlier = path.exists()  # an attempt before this one logged here: continue its tracker runs
    first_attempt_end = last_step(path)  # before the truncation drops it
    sinks = open_trackers(trackers, run_dir, config=config, project=project, resume_step=start_step if earlier else None,
                          last_step=first_attempt_end) if trackers else []
    return MetricsLog(path, resume_step=start_step, sinks=sinks)
