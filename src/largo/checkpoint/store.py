"""Step-numbered checkpoints: safetensors for tensors, JSON for everything else, never pickle.

Layout of a run directory:
  checkpoints/step_000100/model.safetensors   model weights
                         optim.safetensors    optimizer tensors (moments, step counters)
                         rng.safetensors      torch RNG states
                         state.json           step, schedulers, python/numpy RNG, data position,
                                              optimizer param groups, sha256 of every file (written last)
  checkpoints/latest                          name of the newest complete checkpoint
A checkpoint is written into a hidden temporary folder, fsync'ed, then renamed into place; the
`latest` pointer moves after that and old checkpoints are pruned last. A kill at any instant
leaves the previous checkpoint whole. Sharded (FSDP) checkpoints use the same folders and
state.json, with DCP files instead of model/optim.safetensors (see sharded.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from largo.fileio import fsync_dir, sha256_file, write_json_atomic
from largo.errors import CheckpointError

FORMAT = "largo-checkpoint-v1"
STATE = "state.json"
LATEST = "latest"
PREFIX = "step_"


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and numpy RNG states as JSON, torch (CPU and CUDA) states as tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}, tensors


def set_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state() captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_split(optimizers: list[torch.optim.Optimizer]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Optimizer state dicts split into JSON (groups, scalars) and flat tensors 'i.param.key'."""
    meta, tensors = [], {}
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{i}.{pid}.{key}"] = value
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return meta, tensors


def optimizer_join(meta: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Inverse of optimizer_split: one torch state dict per optimizer."""
    out = []
    for i, m in enumerate(meta):
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            idx, pid, key = name.split(".", 2)
            if int(idx) == i:
                state.setdefault(int(pid), {})[key] = value
        for pid, scalars in m["scalars"].items():
            state.setdefault(int(pid), {}).update(scalars)
        out.append({"state": state, "param_groups": m["param_groups"]})
    return out


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizers: list[torch.optim.Optimizer],
    schedulers: list[Any],
    trainer_state: dict[str, Any],
    keep_last: int,
    extra_files: dict[str, Path] | None = None,
    is_main: bool = True,
) -> Path:
    """Write checkpoint `step` atomically under root, move `latest` to it, prune beyond keep_last.

    In a job of several ranks holding the same (replicated) state, only rank 0 writes (is_main);
    the others wait for it, so no rank runs ahead of a checkpoint still being written.
    """
    final = root / checkpoint_name(step)
    if is_main:
        tmp = begin_checkpoint(root, step, os.getpid())
        try:
            optim_meta, optim_tensors = optimizer_split(optimizers)
            _save_tensors(tmp / "model.safetensors", model_state)
            _save_tensors(tmp / "optim.safetensors", optim_tensors)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        commit_checkpoint(tmp, root, step, state={"optimizers": optim_meta, "schedulers": [s.state_dict() for s in schedulers],
                                                   **trainer_state}, keep_last=keep_last, extra_files=extra_files)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final


def begin_checkpoint(root: Path, step: int, owner_pid: int) -> Path:
    """A fresh hidden temporary folder for checkpoint `step`, named after the process that will commit it."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{checkpoint_name(step)}-{owner_pid}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_checkpoint(tmp: Path, root: Path, step: int, *, state: dict[str, Any], keep_last: int,
                      extra_files: dict[str, Path] | None = None) -> Path:
    """Add RNG, extra files and state.json (sha256 of every file, written last) to tmp; rename it into place."""
    final = root / checkpoint_name(step)
    try:
        rng_json, rng_tensors = rng_state()
        _save_tensors(tmp / "rng.safetensors", rng_tensors)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        _pause_for_tests("save")
        files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json_atomic(tmp / STATE, {"format": FORMAT, "step": step, "rng": rng_json, "files": files, **state})
        fsync_dir(tmp)  # state.json is the last file: a folder without it is never a checkpoint
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json_atomic(root / LATEST, final.name)
    prune(root, keep_last)
    return final


def _pause_for_tests(point: str) -> None:
    """Fault-injection hook: LARGO_PAUSE_IN=save sleeps mid-save so a test can kill us there."""
    if os.environ.get("LARGO_PAUSE_IN") == point:
        import time

        marker = os.environ.get("LARGO_PAUSE_MARKER")
        if marker:
            Path(marker).write_text(point)
        time.sleep(float(os.environ.get("LARGO_PAUSE_SECONDS", "30")))


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders (state.json present), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def prune(root: Path, keep_last: int) -> None:
    """Remove all but the newest keep_last complete checkpoints, and stale temporary folders."""
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a writer of a temporary folder may still be at work)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint: the `latest` pointer if it names one, else the highest step."""
    pointer = root / LATEST
    if pointer.is_file():
        try:
            named = root / str(json.loads(pointer.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            named = root / "missing"
        if named.name.startswith(PREFIX) and (named / STATE).is_file() and named.parent == root:
            return named
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder, after checking every listed file's sha256."""
    state_file = path / STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE})")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{state_file}: not valid JSON") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file}: format {state.get('format')!r}, expected {FORMAT!r}")
    for name, digest in state["files"].items():
        f = path / name
        if name.startswith("/") or ".." in PurePosixPath(name).parts or not f.is_file():
            raise CheckpointError(f"{path}: file {name!r} listed in {STATE} is missing or outside the checkpoint")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: sha256 does not match {STATE}; the file is truncated or corrupt")
    return state


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, with a one-line error when it is not one (no pickle ever)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: Path) -> None:
    """Raise a CheckpointError listing every missing, unexpected or differently shaped tensor."""
    problems = [f"{k} missing" for k in expected if k not in found]
    problems += [f"{k} unexpected" for k in found if k not in expected]
    problems += [
        f"{k} {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointError(f"{source}: checkpoint does not fit this model: {shown}")


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy a checkpoint's model.safetensors into `model`, refusing a different shape."""
    weights = load_tensors(path / "model.safetensors")
    check_shapes(model.state_dict(), weights, path)
    model.load_state_dict(weights)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], schedulers: list[Any],
    *, state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore model, optimizers, schedulers and RNG from `path`; return its state.json (pass it if already read)."""
    state = state if state is not None else read_state(path)
    load_model_weights(model, path)
    for opt, sd in zip(optimizers, optimizer_join(state["optimizers"], load_tensors(path / "optim.safetensors")), strict=True):
        opt.load_state_dict(sd)
    for sched, sd in zip(schedulers, state["schedulers"], strict=True):
        sched.load_state_dict(sd)
    set_rng_state(state["rng"], load_tensors(path / "rng.safetensors"))
    return state
