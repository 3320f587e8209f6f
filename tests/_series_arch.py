"""A new architecture in one module, registered from outside src/: time series classified by their dominant frequency.

Everything largo needs from a modality is here: the config (model and data), the stem, the data
preparation (synthetic, cached like any classifier's arrays), the fields the data decides, and the
stem's FLOP and memory terms for the planner. The shared trunk, head, loop, checkpoints, planner and
exporters do the rest. test_new_architecture.py trains, resumes, plans, evaluates and exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.data.arrays import Built, Prepared, Transform, cached_arrays
from largo.data.config import ClassDataConfig
from largo.models import register
from largo.models.classifier import ClassifierConfig, ClassifierSpec, StemTerms
from largo.models.spec import resolved_field
from largo.precision import Layout

CLASSES = ["slow", "medium", "fast"]  # cycles per window: 1-2, 4-5, 8-9


@dataclass
class SeriesConfig(ClassifierConfig):
    arch: str = "series"
    n_features: int = 0  # channels per time step; 0 = the data's


@dataclass
class SeriesData(ClassDataConfig):
    source: str = "synthetic"
    dir: str = "data/series"
    length: int = 24  # time steps per example
    examples: int = 900
    seed: int = 3  # draws the synthetic examples (the spec sees [data] and [model], not the run's seed)


class SeriesStem(nn.Module):
    """(b, time, features) -> (b, time, dim): one linear map per time step; positions come from the trunk's rotary table."""

    def __init__(self, cfg: SeriesConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.n_features, cfg.dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(x), None

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.proj.weight, std=self.proj.in_features**-0.5)
        nn.init.zeros_(self.proj.bias)


def synthetic(d: SeriesData, seed: int) -> Built:
    """Two noisy channels, a sine and a cosine of a class's frequency at a random phase; every 5th example held out."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), d.examples)
    cycles = 1 + 3.5 * y + rng.uniform(0, 1, d.examples)
    t = np.arange(d.length) / d.length
    phase = 2 * np.pi * (cycles[:, None] * t + rng.uniform(0, 1, (d.examples, 1)))
    x = np.stack([np.sin(phase), np.cos(phase)], axis=-1) + 0.3 * rng.standard_normal((d.examples, d.length, 2))
    val = np.arange(d.examples) % 5 == 0
    arrays = {"train_x": x[~val].astype(np.float32), "train_y": y[~val], "val_x": x[val].astype(np.float32), "val_y": y[val]}
    return Built(arrays, {"classes": CLASSES})


class SeriesSpec(ClassifierSpec):
    name = "series"
    model_config = SeriesConfig
    data_config = SeriesData

    def stem(self, cfg: SeriesConfig) -> nn.Module:
        return SeriesStem(cfg)

    def prepare(self, data: SeriesData, model: SeriesConfig, *, force: bool = False, log: Any = print) -> Prepared:
        settings = {"kind": "series", "length": data.length, "examples": data.examples, "seed": data.seed}
        return cached_arrays(data.dir, settings, lambda: synthetic(data, data.seed), force=force, log=log)

    def resolve_fields(self, cfg: SeriesConfig, prepared: Prepared) -> dict[str, Any]:
        return {"n_features": resolved_field("n_features", cfg.n_features, prepared.arrays["train_x"].shape[-1])}

    def stem_positions(self, cfg: SeriesConfig, prepared: Prepared) -> int:
        return prepared.arrays["train_x"].shape[1]

    def transform(self, data: SeriesData, prepared: Prepared) -> Transform:
        return lambda rows, _rngs: torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def stem_matmul_params(self, cfg: SeriesConfig) -> int:
        return cfg.n_features * cfg.dim

    def stem_terms(self, cfg: SeriesConfig, micro_batch: int, seq_len: int, layout: Layout) -> StemTerms:
        steps = seq_len - cfg.extra_positions
        bf16_inputs = 2 * micro_batch * steps * cfg.n_features if layout.compute_bytes == 2 else 0  # the matmul's bf16 input
        weight_cast = 2 * cfg.n_features * cfg.dim if layout.autocast else 0
        return StemTerms(input_bytes=4 * steps * cfg.n_features, saved=bf16_inputs + weight_cast, bf16_residual=True)


SPEC = register(SeriesSpec())
