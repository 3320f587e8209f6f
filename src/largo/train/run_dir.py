"""The run directory: one run at a time (an OS lock), never two runs mixed, the resolved config beside the checkpoints,
and which of its checkpoints a run resumes from."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from largo.checkpoint.handle import Checkpoint
from largo.config import RunConfig
from largo.errors import RunDirError
from largo.fileio import write_json_atomic
from largo.observe.trackers import tracker_outputs
from largo.rundir import CHECKPOINTS, CONFIG, METRICS, RunDir

_RUN_FILES = (CHECKPOINTS, METRICS, CONFIG)  # what --overwrite clears, with the trackers' outputs
_held: dict[Path, int] = {}  # run directory -> the open lock file descriptor of this process


def lock_run_dir(run_dir: Path) -> None:
    """Take run_dir's exclusive lock or raise naming the PID that holds it.

    flock: the kernel releases it when the holder exits in any way (SIGKILL included), so no stale
    lock is ever left behind; the PID in the file is only for the message.
    """
    key = run_dir.resolve()
    if key in _held:
        raise RunDirError(f"{run_dir} is already in use by this process; one run per run directory")
    fd = os.open(RunDir(run_dir).lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another largo run (pid {holder}); wait for it to end, or set another run.name") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on run_dir (no-op if it holds none)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool, is_main: bool) -> Path:
    """Create or reuse cfg.run_dir and lock it (rank 0); a folder that already holds a run needs --resume or --overwrite.

    The caller releases the lock with release_run_dir when the run ends. Every rank raises if rank 0 could not open it.
    """
    run_dir, error = cfg.run_dir, None
    if is_main:
        try:
            _open_as_main(cfg, run_dir, resume=resume, overwrite=overwrite)
        except RunDirError as e:
            error = e
    if dist.is_initialized():  # one verdict for every rank, so none waits at a barrier rank 0 never reaches
        failed = torch.tensor([float(error is not None)])
        dist.all_reduce(failed)
        if failed.item() and error is None:
            raise RunDirError(f"rank 0 could not open the run directory {run_dir}; its error says why")
    if error is not None:
        raise error
    return run_dir


def _open_as_main(cfg: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs, take the lock before anything is written, clear for --overwrite, write config.json."""
    if RunDir(run_dir).holds_run() and not (resume or overwrite):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume auto to continue it or --overwrite to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} is not writable ({e.strerror}); set run.out_dir or run.name") from None
    try:
        if overwrite and not resume:
            for name in _RUN_FILES + tracker_outputs():
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if not (resume and RunDir(run_dir).config.exists()):  # the config it started with; each checkpoint keeps its own
            write_json_atomic(RunDir(run_dir).config, cfg.to_dict())
    except OSError as e:
        release_run_dir(run_dir)
        raise RunDirError(f"run directory {run_dir} is not writable ({e.strerror}); set run.out_dir or run.name") from None
    except BaseException:
        release_run_dir(run_dir)
        raise


def resume_point(run_dir: Path, resume: str | None, log: Callable[[str], None] = print) -> Checkpoint | None:
    """The verified checkpoint --resume names for this run (None, 'auto' or a checkpoint folder); see Checkpoint.resume."""
    return Checkpoint.resume(resume, RunDir(run_dir), log=log)
