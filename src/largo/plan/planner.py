"""`largo plan`: from a config or a named size to parameters, FLOPs, data, memory, time and a recommendation."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from largo.distributed.env import DistEnv
from largo.errors import ConfigError
from largo.models import get_spec
from largo.models.config import ModelConfig
from largo.models.finetune import FinetuneConfig, finetune_counts
from largo.observe.throughput import measured_mfu
from largo.plan import estimate as est
from largo.plan.devices import CPU, DeviceSpec
from largo.plan.estimate import Layout, ParamCount
from largo.plan.measured import compiled_for, measured_dense_mfu, measured_step, step_key
from largo.plan.sizes import model_size

# Without a timed step or history. CPU: the dense MFU (against this CPU's measured matmul peak in the run's precision)
# of the compiled text_tiny step on both CPU classes: 0.57 in bf16 with AVX-512 BF16, 0.77 in fp32 with AVX2 only;
# 0.66 plans both within 25% (eager steps run ~1.5x slower). GPU: between torchtitan and llm-foundry.
ASSUMED_MFU = {CPU: 0.66, "gpu": 0.40}


@dataclass(frozen=True)
class Workload:
    """What is being planned: a model shape, its batch, how many tokens, on which devices."""

    name: str  # the config path or the named size
    model: ModelConfig  # vocabulary resolved
    global_batch: int  # sequences per optimizer step
    micro_batch: int  # sequences per forward on one device; 0 = the planner chooses
    tokens: int  # training tokens
    tokens_source: str
    layout: Layout
    optimizer: str
    devices: int
    device: DeviceSpec
    mfu: float
    mfu_source: str
    dataset_tokens: int | None = None  # train tokens of the prepared data, when it exists
    configured_micro_batch: int = 0  # the config's train.micro_batch, shown next to the planner's choice
    positions: int = 0  # classifiers: transformer positions per example (patches, audio frames, tokens); 0 = max_seq_len
    finetune: FinetuneConfig | None = None  # what trains: adapters (LoRA) hold gradients and optimizer states, the base is frozen
    measured_peak: int | None = None  # peak bytes of the configured step, measured by the step probe (plan/measured.py)

    @property
    def seq_len(self) -> int:
        return self.positions or self.model.max_seq_len

    @property
    def precision(self) -> str:
        return "fp32" if self.layout.name == "fp32" else "bf16"

    @property
    def peak_flops(self) -> float:
        return self.device.peak_fp32 if self.precision == "fp32" else self.device.peak_bf16

    @property
    def attention_speed(self) -> float:
        return self.device.attention_speed_fp32 if self.precision == "fp32" else self.device.attention_speed_bf16


def default_mfu(device_type: str, precision: str, given: float | None, params: int,
                step: tuple[str, float, float] | None = None) -> tuple[float, str]:
    """--mfu, else steps of this very run timed on this machine, else the measured run of the nearest model size on this
    device type, else a stated assumption. `step` = (step key, peak FLOP/s, attention speed) looks up a timed step."""
    if given is not None:
        if not 0 < given <= 1:
            raise ConfigError(f"--mfu ({given}) must be in (0, 1]")
        return given, "given with --mfu"
    probe = measured_step(step[0]) if step else None
    if probe is not None:
        return measured_dense_mfu(probe, step[1], step[2]), str(probe["method"])
    measured = measured_mfu(device_type, precision, params)
    if measured:
        return measured, f"measured on the {device_type} {precision} run of the nearest model size"
    assumed = ASSUMED_MFU[CPU if device_type == CPU else "gpu"]
    return assumed, "assumed: no measured run on this device type yet"


def config_step_key(cfg: Any, *, devices: int, device_name: str, tokens: float | None = None) -> str:
    """The key a timed step of this config is cached under (model resolved from the data, compile mode from the run length)."""
    shape = get_spec(cfg.model.arch).data_shape(cfg.data, cfg.model)
    cfg = dataclasses.replace(cfg, model=shape.model)
    tokens_per_step = cfg.train.global_batch * shape.positions
    steps = cfg.train.steps if tokens is None else math.ceil(tokens / tokens_per_step)
    return step_key(cfg, positions=shape.positions, devices=devices, device_name=device_name,
                    compiled=compiled_for(cfg, shape.positions, steps, devices))


def workload_from_config(cfg: Any, *, devices: int, device: DeviceSpec, tokens: float | None = None, mfu: float | None = None,
                         layout: str | None = None, optimizer: str | None = None) -> Workload:
    """A RunConfig as a workload: the fields the data decides from the prepared data (its spec says how), budget from steps."""
    shape = get_spec(cfg.model.arch).data_shape(cfg.data, cfg.model)
    model, positions, dataset_tokens = shape.model, shape.positions, shape.dataset_positions
    seq = positions
    if tokens is None:
        n_tokens, source = cfg.train.steps * cfg.train.global_batch * seq, "config: train.steps x global_batch x seq_len"
    else:
        n_tokens, source = int(tokens), "given (--tokens)"
    lay = est.LAYOUTS[layout] if layout else est.layout_for(cfg.train.precision)
    as_configured = (layout is None or lay.name == est.layout_for(cfg.train.precision).name) and optimizer in (None, cfg.optim.name)
    precision = "fp32" if lay.name == "fp32" else "bf16"
    step = None
    if as_configured:
        peak = device.peak_fp32 if precision == "fp32" else device.peak_bf16
        speed = device.attention_speed_fp32 if precision == "fp32" else device.attention_speed_bf16
        step = (config_step_key(cfg, devices=devices, device_name=device.name, tokens=tokens), peak, speed)
    m, m_source = default_mfu(device.name, precision, mfu, est.count_params(model).total, step)
    probe = measured_step(step[0]) if step else None
    return Workload(str(cfg.run.name), model, cfg.train.global_batch, 0, n_tokens, source, lay,
                    optimizer or cfg.optim.name, devices, device, m, m_source, dataset_tokens, cfg.train.micro_batch, positions,
                    cfg.finetune, probe.get("peak_bytes") if probe else None)


def workload_from_size(name: str, *, devices: int, device: DeviceSpec, tokens: float | None = None, mfu: float | None = None,
                       layout: str | None = None, optimizer: str | None = None, precision: str = "bf16") -> Workload:
    """A named size (Llama-style shape and its recipe's batch); no budget given means Chinchilla's 20 tokens/param."""
    size = model_size(name)
    if tokens is None:
        n_tokens = est.CHINCHILLA_TOKENS_PER_PARAM * est.count_params(size.model).total
        source = "Chinchilla: 20 tokens per parameter (no --tokens given)"
    else:
        n_tokens, source = int(tokens), "given (--tokens)"
    lay = est.LAYOUTS[layout] if layout else est.layout_for(precision)
    m, m_source = default_mfu(device.name, "fp32" if lay.name == "fp32" else "bf16", mfu, est.count_params(size.model).total)
    return Workload(f"{name} ({size.source})", size.model, size.global_batch, 0, n_tokens, source, lay, optimizer or "adamw",
                    devices, device, m, m_source)


def strategies(devices: int) -> list[str]:
    """The strategies worth comparing: one device has none; several compare a replica (DDP) with FSDP."""
    return ["none"] if devices == 1 else ["ddp", "fsdp"]


def _option(w: Workload, counts: ParamCount, strategy: str, checkpointing: bool) -> dict[str, Any]:
    """Memory for one strategy and recompute choice: at the configured micro-batch, or the largest that fits."""
    per_rank = w.global_batch // w.devices
    kw = dict(seq_len=w.seq_len, layout=w.layout, optimizer=w.optimizer, strategy=strategy, shards=w.devices,
              checkpointing=checkpointing, counts=counts, device_type="cpu" if w.device.name == CPU else "cuda")
    usable = int(est.USABLE_FRACTION * w.device.memory_bytes)
    if w.micro_batch:
        m = est.memory(w.model, micro_batch=w.micro_batch, accum_steps=max(1, per_rank // w.micro_batch), **kw)
        return {**m.to_dict(), "fits": m.peak <= usable}
    best = est.largest_fitting(w.model, per_rank_batch=per_rank, memory_bytes=w.device.memory_bytes, **kw)
    if best is None:
        m = est.memory(w.model, micro_batch=1, accum_steps=per_rank, **kw)
        return {**m.to_dict(), "fits": False}
    return {**best.to_dict(), "fits": True}


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def recommend(w: Workload, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """First option that fits, preferring no recompute, then the replica: why, one line per choice."""
    usable = est.USABLE_FRACTION * w.device.memory_bytes
    order = [(s, ac) for ac in (False, True) for s in strategies(w.devices)]
    chosen = next(((s, ac) for s, ac in order if options[_key(s, ac)]["fits"]), None)
    if chosen is None:
        worst = options[_key(strategies(w.devices)[-1], True)]
        return {"fits": False, "strategy": None, "checkpointing": None, "micro_batch": None, "accum_steps": None,
                "reasons": {"fits": f"even {_key(strategies(w.devices)[-1], True)} at micro-batch 1 needs {_gib(worst['peak'])} per device "
                                    f"> {_gib(usable)} usable: add devices, shorten the sequence or shrink the model"}}
    s, ac = chosen
    o = options[_key(s, ac)]
    replica = options[_key(strategies(w.devices)[0], ac)]
    reasons = {}
    if s == "none":
        reasons["strategy"] = "one device: no data parallelism"
    elif s == "ddp":
        reasons["strategy"] = (f"a full replica fits ({_gib(o['peak'])} of {_gib(usable)}); "
                               "DDP communicates least (one gradient all-reduce per step)")
    else:
        reasons["strategy"] = (f"a full replica does not fit ({_gib(replica['peak'])} > {_gib(usable)} usable); FSDP keeps 1/{w.devices} "
                               f"of weights, grads and optimizer states ({_gib(o['params'] + o['grads'] + o['optimizer'])} per device)")
    if ac:
        plain = options[_key(s, False)]
        reasons["checkpointing"] = (f"on: without recompute even micro-batch 1 needs {_gib(plain['peak'])}; recompute keeps one "
                                    f"residual per block and costs one extra forward (+33% compute)")
    else:
        reasons["checkpointing"] = "off: activations fit without recompute, which would cost one extra forward (+33% compute)"
    if w.micro_batch:
        reasons["micro_batch"] = f"as configured; {o['accum_steps']} accumulation step(s) reach the global batch of {w.global_batch}"
    else:
        reasons["micro_batch"] = (f"{o['micro_batch']}: the largest that fits ({_gib(o['peak'])} of {_gib(usable)}); "
                                  f"{o['accum_steps']} accumulation step(s) reach the global batch of {w.global_batch}")
    notes = []
    if s == "fsdp" and w.layout.autocast:
        notes.append("autocast keeps a bf16 copy of every gathered weight until its backward (2 bytes/param, unsharded); "
                     "the mixed layout (FSDP2 MixedPrecisionPolicy, --layout mixed) avoids it")
    return {"fits": True, "strategy": s, "checkpointing": ac, "micro_batch": o["micro_batch"], "accum_steps": o["accum_steps"],
            "peak_bytes": o["peak"], "reasons": reasons, "notes": notes}


def _key(strategy: str, checkpointing: bool) -> str:
    return f"{strategy}+ac" if checkpointing else strategy


def build_plan(w: Workload) -> dict[str, Any]:
    """Everything `largo plan` prints, as one JSON-able dict."""
    if w.global_batch % w.devices:
        raise ConfigError(f"global batch ({w.global_batch}) must divide by --devices ({w.devices})")
    if w.micro_batch and (w.global_batch // w.devices) % w.micro_batch:
        raise ConfigError(f"per-device batch ({w.global_batch // w.devices}) must divide by train.micro_batch ({w.micro_batch})")
    counts = finetune_counts(w.model, w.finetune) if w.finetune else est.count_params(w.model)
    tokens_per_step = w.global_batch * w.seq_len
    steps = math.ceil(w.tokens / tokens_per_step)
    fl = est.flops(w.model, w.seq_len, w.tokens)
    options = {_key(s, ac): _option(w, counts, s, ac) for s in strategies(w.devices) for ac in (False, True)}
    rec = recommend(w, options)
    configured = None
    if w.configured_micro_batch and not w.micro_batch:
        configured = _option(dataclasses.replace(w, micro_batch=w.configured_micro_batch), counts, strategies(w.devices)[0], False)
        configured["measured_peak"] = w.measured_peak
    time = None
    if rec["fits"]:
        time = est.timing(fl["per_token"] * tokens_per_step, steps=steps, devices=w.devices, peak_flops=w.peak_flops,
                          mfu=w.mfu, checkpointing=rec["checkpointing"], attention_speed=w.attention_speed,
                          attention_flops_per_step=fl["attention_per_token"] * tokens_per_step)
    lay = w.layout
    return {
        "workload": w.name,
        "model": {k: getattr(w.model, k) for k in ("arch", "dim", "n_layers", "n_heads", "kv_heads", "hidden", "vocab_size",
                                                    "max_seq_len", "tie_embeddings", "num_classes") if hasattr(w.model, k)},
        "params": {"total": counts.total, "embedding": counts.embedding, "non_embedding": counts.total - counts.embedding,
                   "per_block": counts.per_block, "frozen": counts.frozen, "counted_on": "meta device"},
        "flops": fl,
        "batch": {"global_batch": w.global_batch, "seq_len": w.seq_len, "tokens_per_step": tokens_per_step, "steps": steps},
        "data": {**est.data_budget(counts.total + counts.frozen, w.tokens, w.dataset_tokens, fl["total"]), "tokens_source": w.tokens_source},
        "device": {"type": w.device.name, "count": w.devices, "memory_bytes": w.device.memory_bytes,
                   "usable_bytes": int(est.USABLE_FRACTION * w.device.memory_bytes), "peak_flops": w.peak_flops, "precision": w.precision},
        "layout": {"name": lay.name, "about": lay.about,
                   "bytes_per_param": {"params": lay.param_bytes, "grads": lay.grad_bytes,
                                       "optimizer": est.optimizer_bytes(counts, w.optimizer, lay) / counts.total},
                   "optimizer": w.optimizer},
        "memory": options,
        "recommendation": rec,
        "time": None if time is None else {**time, "mfu": w.mfu, "mfu_source": w.mfu_source, "attention_speed": w.attention_speed},
        "configured": configured,
    }


def device_memory_bytes(env: DistEnv) -> int:
    """Memory one rank may use: its GPU's, or this node's RAM shared by the node's ranks."""
    if env.device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(env.device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, env.local_world)


def choose_strategy(cfg: Any, *, positions: int, env: DistEnv) -> tuple[str, str]:
    """(strategy, reason) for a run: 'auto' is none on one process, ddp when a replica's planned peak fits, else fsdp.

    The replica's peak is the planner's memory model of this very run (weights, gradients, optimizer
    states, activations at the configured micro-batch, the DDP buckets): one memory model for both.
    """
    p = cfg.parallel
    if env.world == 1:
        asked = "" if p.strategy in ("auto", "none") else f"; parallel.strategy = {p.strategy!r} needs >= 2 processes"
        return "none", f"1 process{asked}"
    if p.strategy == "none":
        raise ConfigError(f"parallel.strategy = 'none' with {env.world} processes would train {env.world} unrelated copies; "
                          "use 'auto', 'ddp' or 'fsdp', or launch 1 process")
    if p.strategy != "auto":
        return p.strategy, "parallel.strategy"
    t = cfg.train
    accum = max(1, t.global_batch // (t.micro_batch * env.world))
    need = est.memory(cfg.model, seq_len=positions, micro_batch=t.micro_batch, accum_steps=accum, layout=est.layout_for(t.precision),
                      optimizer=cfg.optim.name, strategy="ddp", shards=env.world, checkpointing=p.ac != "none",
                      device_type=env.device.type, counts=finetune_counts(cfg.model, cfg.finetune)).peak
    have = device_memory_bytes(env)
    share = f"a replica's planned peak {need / 2**30:.2f} GiB = {100 * need / have:.1f}% of {have / 2**30:.1f} GiB per rank"
    if need <= p.ddp_memory_fraction * have:
        return "ddp", f"auto: {share} <= {100 * p.ddp_memory_fraction:.0f}%"
    return "fsdp", f"auto: {share} > {100 * p.ddp_memory_fraction:.0f}%, shard it over {env.world} ranks"
