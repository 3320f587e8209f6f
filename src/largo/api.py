"""`largo.Trainer`: train a user's own nn.Module on the user's own data with largo's one loop.

    trainer = largo.Trainer(model, loss=nn.CrossEntropyLoss(), optimizer=lambda p: optim.Adam(p, lr=1e-3), epochs=10)
    trainer.fit(train_loader, val_loader)
    print(trainer.evaluate(test_loader))   # {"loss": ..., "accuracy": ...}

Data may be any re-iterable of (inputs, targets) pairs or of dicts (targets under "labels",
"targets", "label" or "y"; the other keys become keyword arguments of the model), or NumPy
arrays / pandas objects given as an (inputs, targets) tuple.

LoRA on a pretrained module: `largo.Trainer(model, finetune={"method": "lora", "rank": 8,
"target_modules": ["q_proj", "v_proj"]})` freezes the module, trains and checkpoints PEFT's adapters
only, and `trainer.merged_model()` returns the module with the adapters folded in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from largo.config import build_config
from largo.data import Batch
from largo.distributed import start_env
from largo.distributed.parallelize import parallelize
from largo.errors import ConfigError, DataError
from largo.models.finetune import FinetuneConfig, apply_finetune, as_finetune, merge_adapters
from largo.models.loss import Scored
from largo.observe.throughput import peak_flops
from largo.precision import choose as choose_precision
from largo.train.evaluate import call_model, evaluate
from largo.train.loop import LoopParts, run_steps, seed_everything
from largo.train.optim import Schedule, build_optimizers
from largo.train.report import finish
from largo.train.session import RunSession

TARGET_KEYS = ("labels", "targets", "label", "y")
_END = object()  # sentinel for an exhausted iterator


def _split_batch(batch: Any) -> Batch:
    """(inputs, targets) from a pair or from a dict holding one of TARGET_KEYS."""
    if isinstance(batch, dict):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        if key is None:
            raise DataError(f"a dict batch needs its targets under one of {', '.join(TARGET_KEYS)}; got keys {sorted(batch)}")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(f"a batch must be an (inputs, targets) pair or a dict; got {type(batch).__name__}")


def _as_tensor(name: str, values: Any) -> torch.Tensor:
    """A NumPy array / pandas object as a tensor: floats -> float32, integers -> int64."""
    if hasattr(values, "to_numpy"):  # pandas DataFrame / Series
        values = values.to_numpy()
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))
    if array.dtype.kind in "iub":
        return torch.from_numpy(array.astype(np.int64))
    raise DataError(f"{name} has dtype {array.dtype}; expected numbers (float or integer), e.g. encode text or categories first")


def as_loader(data: Any, *, batch_size: int, shuffle: bool) -> Iterable[Any]:
    """Iterables pass through; an (array, array) tuple of NumPy/pandas data becomes a DataLoader."""
    if isinstance(data, tuple) and len(data) == 2 and all(hasattr(v, "shape") for v in data) and not isinstance(data[0], torch.Tensor):
        x, y = _as_tensor("inputs", data[0]), _as_tensor("targets", data[1])
        if len(x) != len(y):
            raise DataError(f"inputs have {len(x)} rows but targets have {len(y)}; they must match")
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(v, torch.Tensor) for v in data):
        if len(data[0]) != len(data[1]):
            raise DataError(f"inputs have {len(data[0])} rows but targets have {len(data[1])}; they must match")
        return DataLoader(TensorDataset(*data), batch_size=batch_size, shuffle=shuffle)
    if not hasattr(data, "__iter__"):
        raise DataError(f"training data must be iterable (a DataLoader, a list of batches) or an (inputs, targets) tuple; got {type(data).__name__}")
    return data


class RankBatches(Sampler[list[int]]):
    """Every world-th batch of a batch sampler, starting at rank: a DistributedSampler for whole batches.

    The wrapped sampler is iterated in full on every rank (cheap: indices only), so a shuffled order
    seeded alike on every rank is split without any rank loading another's examples. The last
    len % world batches are dropped so that every rank steps the same number of times.
    """

    def __init__(self, batches: Sampler[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches) // self.world

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i >= len(self) * self.world:
                return
            if i % self.world == self.rank:
                yield batch


def shard_by_rank(loader: Iterable[Any], rank: int, world: int) -> tuple[Iterable[Any], int]:
    """(this rank's loader, stride): a map-style DataLoader is re-made over RankBatches (stride 1); any other
    iterable is read whole on every rank and rank r takes positions r, r + world, ... (stride world)."""
    if world == 1:
        return loader, 1
    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        extra = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers) if loader.num_workers else {}
        return DataLoader(loader.dataset, batch_sampler=RankBatches(loader.batch_sampler, rank, world), num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                          worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                          generator=loader.generator, **extra), 1
    return loader, world


class BatchStream:
    """Batches of a re-iterable loader addressed by position, replayable after a resume.

    Each epoch's iterator is created under a fixed seed (seed + epoch), so a shuffling DataLoader
    yields the same order again when a resumed run rebuilds it, without touching the global RNG.
    """

    def __init__(self, loader: Iterable[Any], seed: int):
        self.loader, self.seed = loader, seed
        self.epoch, self.offset, self._it, self._pending = -1, 0, None, []

    def _start(self, epoch: int) -> None:
        # A DataLoader draws its shuffle seed lazily, on the first next(): take that batch here too.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + epoch)
            self._it = iter(self.loader)
            self._pending = [batch for batch in (next(self._it, _END),) if batch is not _END]
        self.epoch, self.offset = epoch, 0

    def _next(self) -> Any:
        return self._pending.pop() if self._pending else next(self._it)

    def at(self, position: int, per_epoch: int | None) -> Any:
        """The batch at a global position (epoch-major); positions are normally asked in order."""
        epoch, offset = divmod(position, per_epoch) if per_epoch else (0, position)
        if epoch != self.epoch or offset < self.offset:
            self._start(epoch)
        while self.offset < offset:  # skip ahead (only after a resume)
            self._next()
            self.offset += 1
        try:
            batch = self._next()
        except StopIteration:
            raise DataError(f"the training data ran out at batch {offset} of epoch {epoch}; pass steps= or fix len()") from None
        self.offset += 1
        return batch


def _precision(asked: str, model: nn.Module, batch_size: int, device: torch.device, log: Callable[[str], None]) -> str:
    """precision='auto' decided on the model's largest matrix (a batch of rows through it), as a config-built run decides."""
    if asked != "auto":
        return asked
    matrices = [p for p in model.parameters() if p.dim() == 2]
    out_dim, in_dim = max((p.shape for p in matrices), key=lambda s: s[0] * s[1], default=(1024, 1024))
    choice = choose_precision(asked, device, (max(batch_size, 256), in_dim, out_dim), log=log)
    log(choice.line)
    return choice.precision


class Trainer:
    """Fit a user's nn.Module with largo's loop: checkpoints/resume, accumulation, precision, DDP, metrics."""

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: Callable[[Any, Any], torch.Tensor] | None = None,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        epochs: int = 1,
        steps: int | None = None,
        lr: float = 1e-3,
        grad_accum: int = 1,
        batch_size: int = 32,
        precision: str = "fp32",  # or "bf16", or "auto": bf16 where this device's bf16 matmul is measured faster
        device: str = "auto",
        grad_clip: float = 0.0,
        run_dir: str | Path = "runs/trainer",
        resume: str | None = None,
        overwrite: bool = True,
        eval_every: int = 0,
        checkpoint_every: int = 0,
        log_every: int = 50,
        seed: int = 0,
        finetune: FinetuneConfig | dict[str, Any] | None = None,
        trackers: Iterable[str] = (),
        log: Callable[[str], None] = print,
    ):
        run_dir = Path(run_dir)
        self.cfg = build_config({
            "run": {"name": run_dir.name, "out_dir": str(run_dir.parent), "seed": seed},
            "optim": {"lr": lr, "schedule": "constant", "warmup_steps": 0, "grad_clip": grad_clip},
            "train": {"precision": precision, "device": device, "log_every": log_every, "global_batch": grad_accum, "micro_batch": 1},
            "eval": {"every": eval_every}, "checkpoint": {"every": checkpoint_every}, "observe": {"trackers": list(trackers)},
        })
        if epochs < 1 or (steps is not None and steps < 1):
            raise ConfigError(f"epochs ({epochs}) and steps ({steps}) must be >= 1")
        self.finetune = as_finetune(finetune)  # e.g. {"method": "lora", "rank": 8, "target_modules": ["q", "v"]}
        self.env = start_env(device)
        self.log = log if self.env.is_main else (lambda _m: None)
        self.cfg.train.precision = _precision(precision, model, batch_size, self.env.device, self.log)
        seed_everything(seed)
        # LoRA wraps the model in PEFT's PeftModel: the user's weights frozen, adapters trained (and checkpointed) alone
        self.model = apply_finetune(model.to(self.env.device), self.finetune)
        self.loss_fn = loss or nn.CrossEntropyLoss()
        self.make_optimizer = optimizer
        self.epochs, self.steps, self.grad_accum, self.batch_size = epochs, steps, grad_accum, batch_size
        self.resume, self.overwrite = resume, overwrite

    def _steps(self, per_epoch: int | None) -> int:
        if self.steps is not None:
            return self.steps
        if per_epoch is None:
            raise ConfigError("the training data has no len(); pass steps= to Trainer")
        return max(1, math.ceil(self.epochs * per_epoch / self.grad_accum))

    def fit(self, train_data: Any, val_data: Any = None) -> dict[str, Any]:
        """Train for the configured epochs/steps; evaluate on val_data every eval_every steps and at the end.

        Under torchrun each rank trains on its own share of the batches (grad_accum micro-batches per rank
        per step), so a step's global batch is world x grad_accum loader batches.
        """
        cfg, env = self.cfg, self.env
        loader, stride = shard_by_rank(as_loader(train_data, batch_size=self.batch_size, shuffle=True), env.rank, env.world)
        per_epoch = len(loader) // stride if hasattr(loader, "__len__") else None  # this rank's batches per epoch
        cfg.train.steps = self._steps(per_epoch)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        optimizers = [self.make_optimizer(trained)] if self.make_optimizer else build_optimizers(self.model, cfg.optim, cfg.train.precision)
        schedule = Schedule(optimizers, cfg.optim, cfg.train.steps, env.device)
        session = RunSession.resolve(cfg, env, resume=self.resume, say=self.log)
        with session.open(cfg, overwrite=self.overwrite):  # locked until the end
            return self._fit_in(session, loader, stride, per_epoch, optimizers, schedule, val_data)

    def _fit_in(self, session: RunSession, loader: Iterable[Any], stride: int, per_epoch: int | None,
                optimizers: list[torch.optim.Optimizer], schedule: Schedule, val_data: Any) -> dict[str, Any]:
        """The loop over this rank's batches, inside the locked run directory."""
        cfg, env, accum = self.cfg, self.env, self.grad_accum
        adapters = {"adapters": {"method": self.finetune.method, "base": None}} if self.finetune.adapters else {}
        session.attach(self.model, optimizers, schedule, position=lambda step: {"batches_seen": step * accum},
                       extra={"user_model": True, **adapters}, adapters=self.finetune.adapters)
        stream = BatchStream(loader, cfg.run.seed)
        at = (lambda q: stream.at(q, per_epoch)) if stride == 1 else (lambda q: stream.at(q * stride + env.rank, per_epoch * stride if per_epoch else None))
        parts_model = parallelize(self.model, env)
        parts = LoopParts(
            model=parts_model, optimizers=optimizers, schedule=schedule,
            micro_batches=lambda step: [_split_batch(at(step * accum + i)) for i in range(accum)],
            normaliser=lambda batches: float(len(batches)),  # the user's loss is a mean: average the micro-steps
            forward_loss=lambda x, y: self.loss_fn(call_model(parts_model, x), y),
            evaluate=(lambda: self.evaluate(val_data)) if val_data is not None else None,
            save=session.save, tokens_per_step=self.batch_size * accum * env.world, flops_per_step=0.0,
            peak_flops=peak_flops(env.device, cfg.train.precision, cfg.train.peak_tflops, log=self.log) * env.world,
            throughput_unit="samples",
        )
        progress = session.run(parts)
        return finish(parts, cfg, session.run_dir, progress, metrics=session.metrics, say=self.log)

    def merged_model(self) -> nn.Module:
        """The trained model as a plain module: adapters (finetune LoRA) folded into its weights; the model itself otherwise."""
        return merge_adapters(self.model)

    def evaluate(self, data: Any) -> dict[str, float]:
        """Mean loss (weighted by batch size) and, for class logits, accuracy over `data`; shared by the ranks, all-reduced."""
        loader = as_loader(data, batch_size=self.batch_size, shuffle=False)
        result = evaluate(self.model, (_split_batch(b) for b in loader), device=self.env.device, precision=self.cfg.train.precision,
                          rank=self.env.rank, world=self.env.world, score=self._score)
        return {"loss": result["loss"], "accuracy": result["accuracy"], "samples": result["targets"]}

    def _score(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> Scored:
        """(the user's mean loss x batch size, correct argmax predictions for class logits, batch size)."""
        outputs = call_model(model, inputs)
        n = torch.tensor(len(targets), device=targets.device)
        with torch.autocast(targets.device.type, enabled=False):  # the user's loss on fp32 outputs, as written
            loss = self.loss_fn(outputs.float() if isinstance(outputs, torch.Tensor) else outputs, targets).detach() * n
        correct = torch.zeros((), device=targets.device)
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
            correct = (outputs.argmax(-1) == targets).sum()
        return Scored(loss, correct, n)
