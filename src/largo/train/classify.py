"""Classification tasks: images (vit), speech (audio) and text (text_classifier) on the one trainer.

Each prepares its arrays (cached), resolves the model fields the data decides (classes, image
size, channels, vocabulary), and hands the loop a `ClassifyData`. At the end of training,
`report_classification` writes confusion matrices and scores any extra named test sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.config import RunConfig
from largo.data.arrays import ClassifyData, Prepared, Transform, fixed_batches
from largo.data.audio import audio_transform, prepare_audio
from largo.data.images import image_transform, prepare_images
from largo.data.text_classes import TOKENIZER, prepare_text_classes, token_transform
from largo.dist.env import DistEnv
from largo.errors import ConfigError
from largo.models import ModelConfig
from largo.observe.confusion import write_confusion
from largo.train.evaluate import evaluate
from largo.train.tasks import Task, _on_main_first

PREPARERS: dict[str, Callable[..., Prepared]] = {"vit": prepare_images, "audio": prepare_audio, "text_classifier": prepare_text_classes}


def prepare_classification(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the arrays of cfg's classification task."""
    return PREPARERS[cfg.model.arch](cfg, force=force, log=log)


def _resolved(key: str, configured: int, found: int) -> int:
    """A model field the data decides: 0 takes the data's value, anything else must equal it."""
    if configured not in (0, found):
        raise ConfigError(f"model.{key} ({configured}) differs from the data's {found}; set it to 0 or {found}")
    return found


def resolve_model(cfg: RunConfig, prepared: Prepared) -> ModelConfig:
    """cfg.model with num_classes, image size/channels or vocabulary taken from the prepared data."""
    m, x = cfg.model, prepared.arrays["train_x"]
    updates: dict[str, Any] = {"num_classes": _resolved("num_classes", m.num_classes, len(prepared.classes))}
    if m.arch == "vit":
        updates["image_size"] = _resolved("image_size", m.image_size, x.shape[-1])
        updates["in_channels"] = _resolved("in_channels", m.in_channels, x.shape[1])
    elif m.arch == "text_classifier":
        updates["vocab_size"] = _resolved("vocab_size", m.vocab_size, int(prepared.meta["vocab_size"]))
    model = dataclasses.replace(m, **updates)  # re-runs validation (e.g. image_size divisible by patch_size)
    if m.arch == "audio" and model.audio_tokens(x.shape[1]) > model.max_seq_len:
        raise ConfigError(f"model.max_seq_len ({model.max_seq_len}) is below the {model.audio_tokens(x.shape[1])} tokens "
                          f"of a {cfg.data.clip_seconds} s clip; raise it or shorten data.clip_seconds")
    return model


def positions_per_sample(model: ModelConfig, prepared: Prepared) -> int:
    """Transformer positions per example (patches, audio tokens or text tokens, plus a class token)."""
    extra = 1 if model.pooling == "cls" else 0
    if model.arch == "vit":
        return model.num_patches + extra
    if model.arch == "audio":
        return model.audio_tokens(prepared.arrays["train_x"].shape[1]) + extra
    return model.max_seq_len + extra


def make_transform(cfg: RunConfig, prepared: Prepared) -> Transform:
    """Stored rows -> model input, with the data section's augmentation for training rows."""
    d = cfg.data
    if cfg.model.arch == "vit":
        return image_transform(prepared.meta["mean"], prepared.meta["std"], shift_px=d.shift_px, hflip=d.hflip)
    if cfg.model.arch == "audio":
        return audio_transform(rate=cfg.model.sample_rate, time_shift_s=d.time_shift_s, noise_snr_db=d.noise_snr_db,
                               band_limit_hz=d.band_limit_hz, speed_perturb=d.speed_perturb, spec_masks=d.spec_masks)
    return token_transform()


def test_set_name(test_source: str) -> str:
    """A short name for an extra test set: the built-in's name or the folder/file stem."""
    return Path(test_source).stem or test_source


def build_classification_task(cfg: RunConfig, env: DistEnv, log: Callable[[str], None]) -> Task:
    """Prepare on rank 0 first, resolve the model, and wrap the arrays as the loop's Dataset."""
    prepared = _on_main_first(env, lambda: prepare_classification(cfg, log=log))
    cfg = dataclasses.replace(cfg, model=resolve_model(cfg, prepared))
    transform = make_transform(cfg, prepared)
    a = prepared.arrays
    data = ClassifyData((a["train_x"], a["train_y"]), (a["val_x"], a["val_y"]), seed=cfg.run.seed, transform=transform)
    tests = {}
    if "test_x" in a:
        tests[test_set_name(cfg.data.test_source)] = partial(fixed_batches, a["test_x"], a["test_y"], transform)
    files = {TOKENIZER: Path(cfg.data.dir) / TOKENIZER} if cfg.model.arch == "text_classifier" else {}
    t = positions_per_sample(cfg.model, prepared)
    return Task(cfg, data, t, cfg.model.flops_per_token(t) * t, files, prepared.classes, tests)


def new_confusion(task: Task) -> torch.Tensor | None:
    """A zero (classes x classes) count matrix for a classification task, None otherwise."""
    return torch.zeros(len(task.classes), len(task.classes), dtype=torch.long) if task.classes else None


def report_classification(model: nn.Module, task: Task, confusion: torch.Tensor, run_dir: Path, *,
                          env: DistEnv) -> dict[str, dict[str, float]]:
    """Write the held-out confusion matrix, then score each extra test set and write its matrix."""
    cfg = task.cfg
    if env.is_main:
        write_confusion(run_dir / "confusion", confusion.numpy(), task.classes)
    results = {}
    for name, batches in task.test_sets.items():
        counts = new_confusion(task)
        results[name] = evaluate(model, batches(cfg.train.micro_batch), device=env.device, precision=cfg.train.precision,
                                 rank=env.rank, world=env.world, confusion=counts)
        if env.is_main:
            write_confusion(run_dir / f"confusion_{name}", counts.numpy(), task.classes)
    return results
