"""Parallelism applied from outside the model, in torchtitan's order: apply_ac -> apply_compile -> apply_fsdp | apply_ddp.

The model only has to keep its repeated blocks in a `blocks` ModuleList; everything here works on
that list and on the root, never inside the model code.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from largo.config import ParallelConfig, RunConfig
from largo.distributed.env import DistEnv
from largo.errors import ConfigError
from largo.models import build_model

def blocks_of(model: nn.Module) -> nn.ModuleList | None:
    """The model's repeated blocks (the unit of recompute, compile and sharding), if it exposes them."""
    for name, module in model.named_modules():  # GPT: model.blocks; classifiers: model.trunk.blocks
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, nn.ModuleList):
            return module
    return None


def apply_ac(model: nn.Module, mode: str, *, every: int = 1) -> nn.Module:
    """Recompute activations in backward: every block ('full') or every k-th block ('every_k')."""
    if mode == "none":
        return model
    blocks = blocks_of(model)
    if blocks is None:
        raise ConfigError(f"parallel.ac = {mode!r} needs a model with a `blocks` ModuleList; set parallel.ac = 'none'")
    step = 1 if mode == "full" else every
    for i, block in enumerate(blocks):
        if i % step == 0:
            blocks[i] = checkpoint_wrapper(block)  # state-dict keys stay unchanged (the wrapper strips its prefix)
    return model


def apply_compile(model: nn.Module, *, mode: str) -> nn.Module:
    """torch.compile in place (names and state-dict keys do not change): "model" as one graph, its loss included
    (fewest graph breaks, fastest), "blocks" each block (FSDP hooks run between blocks), "off" nothing."""
    if mode == "model":
        model.compile()
    elif mode == "blocks":
        for block in blocks_of(model) or [model]:
            block.compile()  # repeated blocks reuse one graph
    return model


def apply_fsdp(model: nn.Module, env: DistEnv, *, bf16: bool, reshard_after_forward: bool) -> nn.Module:
    """Shard each block, then the root (FSDP2); bf16 params with fp32 reductions when bf16."""
    mesh = init_device_mesh(env.device.type, (env.world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    blocks = list(blocks_of(model) or [])
    for i, block in enumerate(blocks):
        # The last block's params are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)  # the root (embedding, norm, head)
    return model


def apply_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """Replicate the model; gradients are averaged over ranks in buckets during backward."""
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def parallelize(model: nn.Module, env: DistEnv, *, strategy: str = "ddp", cfg: ParallelConfig | None = None,
                compile: str = "off", bf16: bool = False) -> nn.Module:
    """The module the loop trains: apply_ac -> apply_compile -> apply_fsdp | apply_ddp (none on one process)."""
    cfg = cfg or ParallelConfig()
    model = apply_compile(apply_ac(model, cfg.ac, every=cfg.ac_every), mode=compile)
    if env.world == 1 or strategy == "none":
        return model
    if strategy == "fsdp":
        return apply_fsdp(model, env, bf16=bf16, reshard_after_forward=cfg.fsdp_reshard_after_forward)
    return apply_ddp(model, env)


def materialise(model: nn.Module, device: torch.device, full_init: Callable[[], dict[str, torch.Tensor]] | None) -> None:
    """Give a meta-built, sharded model real storage, then the 1-process init values.

    init_weights() fills every shard and the non-persistent buffers (the rotary table). Its random
    values differ from a 1-process run (and on CPU DTensor repeats one shard's draws), so when
    full_init is given, rank 0 calls it (the full model's state dict, built in host memory) and
    each rank receives only its shards: the device never holds the whole model.
    """
    model.to_empty(device=device)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DTensor random operators")
        model.init_weights()
    if full_init is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = full_init() if torch.distributed.get_rank() == 0 else {}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def build_parallel_model(cfg: RunConfig, env: DistEnv, strategy: str, *, full_init: bool = True, compile: str = "off",
                         adapt: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """The module to train under `strategy`; unwrap() it for the model itself.

    fsdp: build on the meta device, shard, then materialise (full_init: the 1-process init values,
    else leave the values to a checkpoint about to be loaded). none/ddp: init on the device, then
    adapt (load pretrained weights, add adapters: what DDP must see before it wraps), then wrap.
    """
    options = dict(cfg=cfg.parallel, compile=compile, bf16=cfg.train.precision == "bf16")
    if strategy != "fsdp":
        model = build_model(cfg.model, env.device)
        return parallelize(adapt(model) if adapt else model, env, strategy=strategy, **options)
    if adapt is not None:
        raise ConfigError("model.init_from (and finetune.method = 'lora') work with parallel.strategy none or ddp: the "
                          "source's weights load into the whole model before it is wrapped; use parallel.strategy = 'ddp'")
    if cfg.optim.name == "muon":
        raise ConfigError("optim.name = 'muon' orthogonalises whole matrices, which FSDP shards; use parallel.strategy = 'ddp' or optim.name = 'adamw'")
    model = parallelize(build_model(cfg.model, torch.device("meta")), env, strategy="fsdp", **options)
    materialise(model, env.device, (lambda: build_model(cfg.model, "cpu").state_dict()) if full_init else None)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any wrapper (DDP, torch.compile); an FSDP2 model is its own module."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    if enabled or not isinstance(model, DDP):
        yield
        return
    with model.no_sync():
        yield


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns it as a plain tensor (FSDP's norm is a DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
