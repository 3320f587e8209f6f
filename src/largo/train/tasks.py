"""A task ties a config to its data: it prepares the dataset and resolves data-dependent model fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

from largo.config import RunConfig
from largo.data import Batch, Dataset
from largo.data.prepare import prepare
from largo.data.text import TextLMData
from largo.dist.env import DistEnv
from largo.errors import ConfigError

T = TypeVar("T")


@dataclass
class Task:
    """Everything the loop needs that depends on the modality."""

    cfg: RunConfig  # with model fields resolved from the data
    dataset: Dataset
    tokens_per_sample: int  # sequence positions per example (for tokens/s)
    flops_per_sample: int  # training FLOPs per example (for MFU)
    files: dict[str, Path] = field(default_factory=dict)  # copied into every checkpoint (e.g. tokenizer.json)
    classes: list[str] = field(default_factory=list)  # classification: class names; a confusion matrix is written at the end
    test_sets: dict[str, Callable[[int], Iterator[Batch]]] = field(default_factory=dict)  # extra named sets: micro_batch -> batches


def _on_main_first(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 while the others wait, then let the others run it (a cache hit for them)."""
    if env.world > 1 and not env.is_main:
        dist.barrier()
    out = fn()
    if env.world > 1 and env.is_main:
        dist.barrier()
    return out


def language_model_task(cfg: RunConfig, env: DistEnv, log: Callable[[str], None]) -> Task:
    """GPT pre-training on prepared token shards."""
    _on_main_first(env, lambda: prepare(cfg.data, log=log))
    data = TextLMData(cfg.data.dir, cfg.model.max_seq_len, cfg.run.seed)
    if cfg.model.vocab_size not in (0, data.vocab_size):
        raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) differs from the tokenizer's {data.vocab_size}; set it to 0 or {data.vocab_size}")
    model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size)
    cfg = dataclasses.replace(cfg, model=model)
    seq = model.max_seq_len
    return Task(cfg, data, seq, model.flops_per_token(seq) * seq, {"tokenizer.json": Path(cfg.data.dir) / "tokenizer.json"})


def classification_task(cfg: RunConfig, env: DistEnv, log: Callable[[str], None]) -> Task:
    """Image, speech or text classification on cached arrays (largo.train.classify)."""
    from largo.train.classify import build_classification_task

    return build_classification_task(cfg, env, log)


TASKS: dict[str, Callable[[RunConfig, DistEnv, Callable[[str], None]], Task]] = {
    "gpt": language_model_task, "vit": classification_task, "audio": classification_task, "text_classifier": classification_task,
}


def prepare_data(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> None:
    """`largo prepare`: make the data cfg's task trains on, unless an up-to-date cache is there."""
    if cfg.model.arch == "gpt":
        prepare(cfg.data, force=force, log=log)
    else:
        from largo.train.classify import prepare_classification

        prepare_classification(cfg, force=force, log=log)


def build_task(cfg: RunConfig, env: DistEnv, log: Callable[[str], None] = print) -> Task:
    """The task for cfg.model.arch."""
    return TASKS[cfg.model.arch](cfg, env, log)
