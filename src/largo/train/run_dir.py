"""The run directory: refuse to mix two runs, keep the resolved config beside the checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist

from largo.config import RunConfig
from largo.errors import RunDirError
from largo.fileio import write_json_atomic

CONFIG = "config.json"
_RUN_FILES = ("checkpoints", "metrics.jsonl", CONFIG)


def _holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in _RUN_FILES)


def open_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool, is_main: bool) -> Path:
    """Create or reuse cfg.run_dir; a folder that already holds a run needs --resume or --overwrite."""
    run_dir = cfg.run_dir
    if is_main:
        if _holds_run(run_dir) and not (resume or overwrite):
            raise RunDirError(f"{run_dir} already holds a run; pass --resume auto to continue it or --overwrite to replace it")
        if overwrite and not resume:
            for name in _RUN_FILES:
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not (resume and (run_dir / CONFIG).exists()):  # the config it started with; each checkpoint keeps its own
                write_json_atomic(run_dir / CONFIG, cfg.to_dict())
        except OSError as e:
            raise RunDirError(f"run directory {run_dir} is not writable ({e.strerror}); set run.out_dir or run.name") from None
    if dist.is_initialized():
        dist.barrier()
    return run_dir


def read_run_config(run_dir: Path) -> dict:
    """The resolved config a run was started with."""
    return json.loads((run_dir / CONFIG).read_text())
