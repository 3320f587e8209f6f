"""Sharded checkpoints through torch.distributed.checkpoint (DCP): save on N ranks, resume on M.

Layout of a sharded step folder (same atomic discipline as store.py: temporary folder, rename by
rank 0 after every rank has written, `latest` last):
  checkpoints/step_000100/dcp/__<rank>_0.distcp   each rank's shards of model weights and optimizer tensors
                         dcp/index.json           DCP's index of chunks as JSON (written by rank 0)
                         rng.safetensors          torch RNG states (rank 0)
                         state.json               step, schedulers, RNG, data position, optimizer param
                                                  groups and scalars, sha256 of every file (written last)
DCP only ever sees tensors: everything else lives in state.json. DCP's index, a pickle in DCP's own
writer, is written and read by largo as checked JSON (`dcp/index.json`, see dcp_index.py): opening a
sharded checkpoint never unpickles anything.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from largo.checkpoint.state_schema import SHARDED_FORMAT, check_like, check_scalars
from largo.checkpoint.store import (
    begin_checkpoint, check_param_groups, check_shapes, checkpoint_candidates, checkpoint_name, commit_checkpoint,
    load_checkpoint, load_tensors,
    optimizer_join, read_state, restore_schedulers_and_rng,
)
from largo.checkpoint.dcp_index import IndexReader, IndexWriter, read_index
from largo.dist.env import DistEnv
from largo.errors import CheckpointError

DCP_DIR = "dcp"


def _fqn(name: str) -> str:
    """A parameter's name without wrapper prefixes (activation checkpointing, compile, DDP)."""
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod.", "module."):
        name = name.replace(prefix, "")
    return name


def _split_state(state: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Optimizer state keyed by parameter name -> (tensors for DCP, JSON scalars)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, st in state.items():
        for key, value in st.items():
            (tensors if isinstance(value, torch.Tensor) else scalars).setdefault(fqn, {})[key] = value
    return tensors, scalars


def _rank0_pid(env: DistEnv) -> int:
    """Rank 0's process id on every rank: it names the shared temporary folder (and proves it alive to prune)."""
    pid = torch.tensor([os.getpid()], dtype=torch.int64, device=env.device)
    if env.world > 1:
        dist.broadcast(pid, src=0)
    return int(pid.item())


def save_sharded(root: Path, step: int, *, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedulers: list[Any],
                 trainer_state: dict[str, Any], keep_last: int, env: DistEnv, extra_files: dict[str, Path] | None = None) -> Path:
    """Every rank writes its shards with DCP into one temporary folder; rank 0 commits it (a collective)."""
    pid = _rank0_pid(env)
    tmp = root / f".tmp-{checkpoint_name(step)}-{pid}"
    if env.is_main:
        begin_checkpoint(root, step, pid)
    if env.world > 1:
        dist.barrier()  # the folder exists before anyone writes into it
    model_sd, optim_sd = get_state_dict(model, optimizers)
    tensors, scalars = _split_state(optim_sd["state"])
    dcp.save({"model": model_sd, "optim": tensors}, storage_writer=IndexWriter(tmp / DCP_DIR))
    if env.is_main:  # dcp.save returns once every rank's shards and the index are written
        state = {"sharded": {"format": SHARDED_FORMAT, "world": env.world}, "optimizer_groups": optim_sd["param_groups"],
                 "optimizer_scalars": scalars, "schedulers": [s.state_dict() for s in schedulers], **trainer_state}
        commit_checkpoint(tmp, root, step, state=state, keep_last=keep_last, extra_files=extra_files)
    if env.world > 1:
        dist.barrier()  # nobody runs ahead of a checkpoint that is not yet in place
    return root / checkpoint_name(step)


def _dcp_load(target: dict[str, Any], path: Path) -> None:
    """Fill `target` in place from the DCP folder of checkpoint `path`, with a one-line error on mismatch."""
    try:
        with warnings.catch_warnings():  # one process (eval, export, a 1-rank resume) is a case DCP supports but warns about
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(target, storage_reader=IndexReader(path / DCP_DIR), no_dist=not dist.is_initialized())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP wraps per-rank failures in a BaseException; its first line names the tensor
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: sharded checkpoint does not fit this model or is unreadable: {first}") from None


def load_sharded(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedulers: list[Any],
                 state: dict[str, Any]) -> None:
    """Resume from a DCP checkpoint on any number of ranks and any strategy: DCP reshards to this model's layout."""
    model_sd, optim_sd = get_state_dict(model, optimizers)  # templates, laid out like this run's model
    tensors, _ = _split_state(optim_sd["state"])
    try:  # the JSON halves of the optimizer state must look like this run's, before torch reads them
        groups = state.get("optimizer_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise CheckpointError("optimizer_groups must be a list of groups")
        check_like([{k: v for k, v in g.items() if k != "params"} for g in groups],
                   [{k: v for k, v in g.items() if k != "params"} for g in optim_sd["param_groups"]], "optimizer_groups")
        check_scalars(state.get("optimizer_scalars"), "optimizer_scalars")
    except CheckpointError as e:
        raise _does_not_fit(path, e) from None
    try:
        target = {"model": model_sd, "optim": tensors}
        _dcp_load(target, path)
        optim_state = {fqn: {**target["optim"].get(fqn, {}), **state["optimizer_scalars"].get(fqn, {})} for fqn in
                       set(target["optim"]) | set(state["optimizer_scalars"])}
        set_state_dict(model, optimizers, model_state_dict=target["model"],
                       optim_state_dict={"state": optim_state, "param_groups": state["optimizer_groups"]})
        restore_schedulers_and_rng(path, state, schedulers)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise _does_not_fit(path, e) from None


def _optim_by_name(model: nn.Module, optimizers: list[torch.optim.Optimizer], saved: list[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer state dicts keyed by parameter index (torch's layout) -> one keyed by parameter name."""
    names = {id(p): _fqn(n) for n, p in model.named_parameters()}
    state: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for opt, sd in zip(optimizers, saved, strict=True):
        order = [names[id(p)] for g in opt.param_groups for p in g["params"]]  # index i -> name, as torch numbers them
        state.update({order[int(i)]: st for i, st in sd["state"].items()})
        groups += [{**g, "params": [order[int(i)] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_full_into_sharded(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedulers: list[Any],
                           state: dict[str, Any]) -> None:
    """Resume a sharded run from a 1-process (safetensors) checkpoint: every rank keeps only its shards."""
    weights = load_tensors(path / "model.safetensors")
    check_shapes(model.state_dict(), weights, path)  # DTensor shapes are the full (global) shapes
    try:
        saved = optimizer_join(state["optimizers"], load_tensors(path / "optim.safetensors"))
        for i, (opt, sd) in enumerate(zip(optimizers, saved, strict=True)):
            check_param_groups(sd["param_groups"], opt, f"optimizers[{i}]")
        set_state_dict(model, optimizers, model_state_dict=weights, optim_state_dict=_optim_by_name(model, optimizers, saved),
                       options=StateDictOptions(full_state_dict=True))
        restore_schedulers_and_rng(path, state, schedulers)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError, CheckpointError) as e:
        raise _does_not_fit(path, e) from None


def _does_not_fit(path: Path, e: BaseException) -> CheckpointError:
    """One line for optimizer/scheduler/RNG state that does not fit the live run (the same words as store.load_checkpoint)."""
    return CheckpointError(f"{path}: optimizer, scheduler or RNG state does not fit this run "
                           f"(was optim.name changed?): {' '.join(str(e).splitlines())}")


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """state.json (digest, schema, file hashes) and, for a sharded checkpoint, its JSON index: what "intact" means."""
    state = read_state(path)
    if state.get("sharded"):
        read_index(path / DCP_DIR)
    return state


def newest_intact(root: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint, verified state) of the newest intact checkpoint under root; each damaged newer one is named in a warning.

    None when root holds no complete checkpoint; an error when every one of them is damaged.
    """
    damaged = []
    for ckpt in checkpoint_candidates(root):
        try:
            return ckpt, verify_checkpoint(ckpt)
        except CheckpointError as e:
            log(f"warning: {e}; trying an older checkpoint")
            damaged.append(ckpt.name)
    if damaged:
        raise CheckpointError(f"{root}: every checkpoint is damaged ({', '.join(damaged)}); move them away to start over")
    return None


def load_for_resume(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer], schedulers: list[Any], *,
                    sharded_model: bool, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore model, optimizers, schedulers and RNG from any checkpoint into any layout; return its state.json.

    `state` is the verified state.json when the caller has it (resume_point verified it), else it is verified here.
    """
    state = state if state is not None else verify_checkpoint(path)
    if state.get("sharded"):
        load_sharded(path, model, optimizers, schedulers, state)
    elif sharded_model:
        load_full_into_sharded(path, model, optimizers, schedulers, state)
    else:
        from largo.dist.parallelize import unwrap

        load_checkpoint(path, unwrap(model), optimizers, schedulers, state=state)
    return state


def load_model_sharded(path: Path, model: nn.Module) -> None:
    """Only the weights of a sharded checkpoint, into a plain model (eval, generate, export)."""
    target = {"model": model.state_dict()}
    _dcp_load(target, path)
    model.load_state_dict(target["model"])


def consolidate(path: Path, out: Path, state: dict[str, Any]) -> Path:
    """Write a verified checkpoint's full model weights as one safetensors file (sharded or not), without building the model."""
    if not state.get("sharded"):
        weights = load_tensors(path / "model.safetensors")
    else:
        index = read_index(path / DCP_DIR).state_dict_metadata
        weights = {key[len("model."):]: torch.empty(meta.size, dtype=meta.properties.dtype)
                   for key, meta in index.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
        target = {"model": weights}
        _dcp_load(target, path)
        weights = target["model"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out),
              metadata={"largo_checkpoint": str(path), "step": str(state["step"])})
    return out

