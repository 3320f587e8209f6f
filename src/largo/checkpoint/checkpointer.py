"""One Checkpointer per run: what a checkpoint holds, written replicated or sharded, and restored into any layout.

Both layouts hold the same state, taken with torch.distributed.checkpoint's state-dict helpers, so
parameters and optimizer states are keyed by parameter name whatever wraps the model (DDP, FSDP2,
compile, activation checkpointing):
  replicated  rank 0 writes model.safetensors (weights) and optim.safetensors ("<name>/<key>" tensors)
  sharded     every rank writes its shards through DCP (dcp/, see sharded.py)
and state.json holds the rest: optimizer param groups and non-tensor state, the schedule, RNG, the
data position and the config (store.py writes the folder atomically). A run that trains adapters over
frozen weights (finetune.method = "lora") saves only the trainable tensors: the frozen base is
model.init_from's, named with its digest in state.json's `adapters`. A checkpoint of either layout
loads into a run of either layout, on any number of ranks: DCP reshards, and a replicated
checkpoint is split into shards by set_state_dict.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict,
)

from largo.checkpoint.reader import OPTIM_SEP, Reader
from largo.checkpoint.sharded import dcp_save
from largo.checkpoint.state_schema import SHARDED_FORMAT, check_like, check_scalars
from largo.checkpoint.store import (
    begin_checkpoint, checkpoint_name, commit_checkpoint, failed_save, load_tensors, save_tensors, set_rng_state,
)
from largo.distributed.env import DistEnv
from largo.errors import CheckpointError



def _split(state: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Optimizer state keyed by parameter name -> (its tensors, its JSON scalars)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, st in state.items():
        for key, value in st.items():
            (tensors if isinstance(value, torch.Tensor) else scalars).setdefault(fqn, {})[key] = value
    return tensors, scalars


def _without_params(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]


def _does_not_fit(path: Path, e: BaseException) -> CheckpointError:
    """One line for optimizer/scheduler/RNG state that does not fit the live run."""
    return CheckpointError(f"{path}: optimizer, schedule or RNG state does not fit this run "
                           f"(was optim.name changed?): {' '.join(str(e).splitlines())}")


class Checkpointer:
    """Saves and restores one run's training state under root (checkpoints/), replicated or sharded."""

    def __init__(self, root: Path, *, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedule: Any | None,
                 env: DistEnv, sharded: bool, keep_last: int, files: dict[str, Path] | None = None, adapters: bool = False):
        self.root, self.model, self.optimizers, self.schedule = root, model, optimizers, schedule
        self.env, self.sharded, self.keep_last, self.files = env, sharded, keep_last, files or {}
        # adapters: the model's weights in a checkpoint are only its trainable ones (the frozen base comes from elsewhere)
        self.trained = {name for name, p in model.named_parameters() if p.requires_grad} if adapters else None

    def _state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model state, optimizer state) keyed by parameter name, in this run's layout (DTensor shards when sharded)."""
        if not self.optimizers:
            model_sd, optim_sd = get_model_state_dict(self.model), {"state": {}, "param_groups": []}
        else:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizers)
        if self.trained is not None:
            model_sd = {k: v for k, v in model_sd.items() if k in self.trained}
        return model_sd, optim_sd

    # ---- save
    def save(self, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write checkpoint `step` (a collective under several ranks: call on every rank)."""
        model_sd, optim_sd = self._state_dicts()
        tensors, scalars = _split(optim_sd["state"])
        groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in g.items()} for g in optim_sd["param_groups"]]
        state = {"optimizer_groups": groups, "optimizer_scalars": scalars,  # a learning rate kept on the device is saved as a number
                 "schedule": self.schedule.state_dict() if self.schedule else {"applied_steps": 0}, **trainer_state}
        if self.sharded:
            self._save_sharded(step, model_sd, tensors, {**state, "sharded": {"format": SHARDED_FORMAT, "world": self.env.world}})
        elif self.env.is_main:  # replicas hold the same state: rank 0 writes it
            self._save_replicated(step, model_sd, tensors, state)
        if self.env.world > 1:
            dist.barrier()  # nobody runs ahead of a checkpoint that is not yet in place
        return self.root / checkpoint_name(step)

    def _save_replicated(self, step: int, model_sd: dict[str, torch.Tensor], tensors: dict[str, dict[str, torch.Tensor]],
                         state: dict[str, Any]) -> None:
        write_replicated(self.root, step, model_sd, tensors, state, keep_last=self.keep_last, files=self.files)

    def _save_sharded(self, step: int, model_sd: dict[str, Any], tensors: dict[str, Any], state: dict[str, Any]) -> None:
        """Every rank writes its shards into one temporary folder (named after rank 0's pid); rank 0 commits it."""
        pid = torch.tensor([os.getpid()], dtype=torch.int64, device=self.env.device)
        if self.env.world > 1:
            dist.broadcast(pid, src=0)
        tmp = self.root / f".tmp-{checkpoint_name(step)}-{int(pid.item())}"
        if self.env.is_main:
            begin_checkpoint(self.root, step, int(pid.item()))
        if self.env.world > 1:
            dist.barrier()  # the folder exists before anyone writes into it
        dcp_save(tmp, {"model": model_sd, "optim": tensors})
        if self.env.is_main:  # dcp_save returns once every rank's shards and the index are written
            commit_checkpoint(tmp, self.root, step, state=state, keep_last=self.keep_last, extra_files=self.files)

    # ---- load
    def load(self, path: Path, state: dict[str, Any]) -> int:
        """Restore model, optimizers, schedule and RNG from a verified checkpoint of either layout; its step."""
        model_sd, optim_sd = self._state_dicts()  # templates laid out like this run's model
        live_tensors, _ = _split(optim_sd["state"])
        try:  # the JSON halves must look like this run's before torch reads them
            check_like(_without_params(state["optimizer_groups"]), _without_params(optim_sd["param_groups"]), "optimizer_groups")
            check_scalars(state["optimizer_scalars"], "optimizer_scalars")
        except CheckpointError as e:
            raise _does_not_fit(path, e) from None
        reader = Reader(path, state)
        weights, tensors = reader.load(model_sd, live_tensors)  # resharded to this run's layout, or full tensors
        # replicated: each rank keeps its shards of the full tensors; adapters: the frozen base is already in place
        options = StateDictOptions() if reader.sharded else StateDictOptions(full_state_dict=True, strict=self.trained is None)
        scalars = state["optimizer_scalars"]
        optim_state = {fqn: {**tensors.get(fqn, {}), **scalars.get(fqn, {})} for fqn in set(tensors) | set(scalars)}
        try:
            if self.optimizers:
                set_state_dict(self.model, self.optimizers, model_state_dict=weights, options=options,
                               optim_state_dict={"state": optim_state, "param_groups": state["optimizer_groups"]})
            else:
                set_model_state_dict(self.model, weights, options=options)
            restore_schedule_and_rng(path, state, self.schedule)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError, CheckpointError) as e:
            raise _does_not_fit(path, e) from None
        return int(state["step"])


def write_replicated(root: Path, step: int, weights: dict[str, torch.Tensor], optim_tensors: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any], *, keep_last: int, files: dict[str, Path]) -> Path:
    """A replicated checkpoint from this process: model.safetensors, optim.safetensors, then store.py's commit."""
    tmp = begin_checkpoint(root, step, os.getpid())
    try:
        save_tensors(tmp / "model.safetensors", weights)
        save_tensors(tmp / "optim.safetensors", {f"{fqn}{OPTIM_SEP}{k}": v for fqn, st in optim_tensors.items() for k, v in st.items()})
    except (OSError, SafetensorError) as e:  # a full disk: one line, nothing half-written left
        raise failed_save(e, tmp, root / checkpoint_name(step)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(tmp, root, step, state=state, keep_last=keep_last, extra_files=files)


def restore_schedule_and_rng(path: Path, state: dict[str, Any], schedule: Any | None) -> None:
    """The schedule's position (applied optimizer steps) and the RNG streams."""
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    tensors = load_tensors(path / "rng.safetensors")
    cpu = tensors.get("torch_cpu")
    if cpu is None or cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        raise CheckpointError(f"rng.safetensors holds no torch CPU generator state of {tuple(torch.get_rng_state().shape)} bytes")
    set_rng_state(state["rng"], tensors)


def load_weights(model: nn.Module, path: Path, state: dict[str, Any], *, only: set[str] | None = None) -> None:
    """Only the weights of a verified checkpoint of either layout, into a plain model (eval, generate, export, fine-tuning).

    only: the names the checkpoint holds when it is not the whole model (an adapter checkpoint's trainable tensors).
    """
    expected = model.state_dict() if only is None else {k: v for k, v in model.state_dict().items() if k in only}
    weights, _ = Reader(path, state).load(expected)  # an FSDP run's DCP shards are gathered into this one plain model
    model.load_state_dict(weights, strict=only is None)
