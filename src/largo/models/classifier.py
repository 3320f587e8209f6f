"""Classifiers: a modality's stem -> [class token] -> the trunk (bidirectional) -> pooled head; and the spec they share.

A classifier architecture (vit.py, audio.py, text_classifier.py, or one registered from outside) is
a ClassifierSpec that supplies only what its modality decides: the stem module, how its data is
prepared and turned into model inputs, the model fields the data decides, positions per example,
and the stem's planner terms. Training, evaluation (with a confusion matrix), extra test sets,
checkpoints and export come from here and the shared loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from largo.data.arrays import ClassifyData, Prepared, Transform, fixed_batches
from largo.data.config import ClassDataConfig
from largo.errors import ConfigError
from largo.models.config import ModelConfig
from largo.models.spec import ArchSpec, Attribution, DataShape, MemoryTerms, Task, resolved_field
from largo.models.trunk import Trunk
from largo.precision import Layout


@dataclass
class ClassifierConfig(ModelConfig):
    """The trunk plus what every classifier has: its classes and how token states become one vector."""

    arch: str = ""  # a classifier architecture's config sets its own name
    num_classes: int = 0  # classifier outputs; 0 = the number of labels found in the data
    pooling: Literal["mean", "cls"] = "mean"  # token states -> one vector: mean over tokens, or a learned class token

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes ({self.num_classes}) must be >= 0 (0 = from the data)")

    @property
    def extra_positions(self) -> int:
        """1 for the class token when pooling = 'cls'."""
        return 1 if self.pooling == "cls" else 0


class Classifier(nn.Module):
    """Inputs -> class logits (b, num_classes): stem, class token, learned positions (if any), trunk, pool, head.

    The stem returns token states (b, t, dim) and which positions are real (b, t) or None (no padding).
    """

    def __init__(self, cfg: ClassifierConfig, stem: nn.Module, *, learned_positions: int = 0, positions_std: float = 1.0):
        super().__init__()
        if cfg.num_classes < 2:
            raise ValueError("ClassifierConfig.num_classes must be resolved (>= 2) before building a classifier")
        self.cfg, self.positions_std = cfg, positions_std
        self.stem = stem
        self.cls = nn.Parameter(torch.empty(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.pos = nn.Parameter(torch.empty(learned_positions + cfg.extra_positions, cfg.dim)) if learned_positions else None
        # Stems without learned positions (audio frames, text tokens) get rotary ones, with room for the class token.
        self.trunk = Trunk(cfg, causal=False, rotary=not learned_positions, extra_positions=cfg.extra_positions)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_states(*self.stem(inputs))

    def forward_states(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Everything after the stem: token states (b, t, dim) and real positions (b, t) or None -> logits (b, classes).

        Explanations enter here with states they made themselves (from log-mel frames, or a fixed padding mask).
        """
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (b, 1 + t, dim)
            keep = None if keep is None else torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
        if self.pos is not None:
            x = x + self.pos.to(x.dtype)
        mask = None if keep is None else keep[:, None, None, :]  # (b, 1, 1, t): every query sees the real keys
        x = self.trunk(x, mask=mask)
        if self.cls is not None:
            pooled = x[:, 0]
        elif keep is None:
            pooled = x.mean(dim=1)
        else:
            w = keep.to(x.dtype).unsqueeze(-1)  # (b, t, 1)
            pooled = (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)  # (b, num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Stem; learned positions; trunk; class token small normal; head zero, so the first loss is exactly ln(classes)."""
        self.stem.init_weights()
        if self.pos is not None:
            nn.init.normal_(self.pos, std=self.positions_std)
        self.trunk.init_weights()
        if self.cls is not None:
            nn.init.normal_(self.cls, std=self.cfg.init_std)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)


@dataclass(frozen=True)
class StemTerms:
    """A stem's share of the planner's memory model, per micro-batch (bytes)."""

    input_bytes: int  # one example's input as the loader hands it over (the int64 label is added by the spec)
    saved: int  # what the stem saves for backward beyond the inputs (its casts, conv activations)
    buffers: int = 0  # the stem's non-parameter tensors (an audio frontend's window and filterbank)
    bf16_residual: bool = False  # under autocast the stem hands the blocks a bf16 residual stream (it ends in a matmul or conv)
    padding_mask: bool = False  # inputs are padded: attention keeps a mask and mean pooling weights the real positions
    extra_phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # peaks before the blocks: name -> (activations, temporaries)


def pooled_head_bytes(cfg: ClassifierConfig, samples: int, seq_len: int, layout: Layout, *, residual: int, masked: bool) -> int:
    """Saved at a classifier's head: final norm at every position, pooling weights, the (b, d) head input."""
    tokens = samples * seq_len
    norm = tokens * ((4 + residual) * cfg.dim + 4)  # fp32 input (or copy), output in the residual dtype (for the weight), rstd
    if cfg.pooling == "cls" and not layout.autocast:
        head_in = tokens * cfg.dim * layout.compute_bytes  # x[:, 0] is a view: the whole (b, t, d) norm output stays
    else:
        head_in = samples * cfg.dim * layout.compute_bytes  # the pooled (b, d), or its bf16 cast under autocast
    weights = samples * (seq_len + 1) * residual if masked and cfg.pooling == "mean" else 0  # padding weights (b, t, 1), sums (b, 1)
    return norm + head_in + weights


def test_set_name(test_source: str) -> str:
    """A short name for an extra test set: the built-in's name or the folder/file stem."""
    return Path(test_source).stem or test_source


def pooled_relevance(cfg: ClassifierConfig, rollout: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Attention rollout (b, T, T) -> how much each stem position feeds the pooled vector (b, T - class token).

    The head sees the class token's row, or the mean of the real positions' rows; the class token's own column is dropped.
    """
    if cfg.pooling == "cls":
        rows = rollout[:, 0]
    else:
        w = torch.ones(rollout.shape[:2], device=rollout.device) if keep is None else keep.float()
        w = torch.cat([w.new_ones(w.shape[0], cfg.extra_positions), w], dim=1) if cfg.extra_positions else w
        rows = (rollout * w[:, :, None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)  # (b, T)
    return rows[:, cfg.extra_positions:]


class ClassifierSpec(ArchSpec):
    """Classification on cached arrays; a subclass supplies the stem, the preparation and the stem's planner terms."""

    data_config: ClassVar[type[ClassDataConfig]] = ClassDataConfig
    positions_std: ClassVar[float] = 1.0  # init std of learned positions, where the stem asks for them

    # ---- what a modality supplies
    def stem(self, cfg: ClassifierConfig) -> nn.Module:
        """inputs -> (token states (b, t, dim), real positions (b, t) or None); with an init_weights() method."""
        raise NotImplementedError

    def learned_positions(self, cfg: ClassifierConfig) -> int:
        """Positions with a learned embedding (0 = rotary positions in the trunk instead)."""
        return 0

    def stem_positions(self, cfg: ClassifierConfig, prepared: Prepared) -> int:
        """Token states the stem makes from one stored example."""
        return cfg.max_seq_len

    def resolve_fields(self, cfg: ClassifierConfig, prepared: Prepared) -> dict[str, Any]:
        """Model fields besides num_classes that the prepared data decides."""
        return {}

    def transform(self, data: ClassDataConfig, prepared: Prepared) -> Transform:
        """Stored rows -> model input, with augmentation (the [data] section's settings) for training rows (draws given)."""
        return lambda rows, _rngs: torch.from_numpy(rows)

    def stem_terms(self, cfg: ClassifierConfig, micro_batch: int, seq_len: int, layout: Layout) -> StemTerms:
        raise NotImplementedError

    def stem_matmul_params(self, cfg: ClassifierConfig) -> int:
        """Stem weights multiplied per transformer position (0 for a lookup)."""
        return 0

    def attribution(self, model: Classifier, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        """By default: integrated gradients on the model inputs from the blank input; a map per stem position."""
        def to_positions(a: torch.Tensor) -> torch.Tensor:
            return a.flatten(2).sum(-1) if a.dim() > 2 else a  # (b, positions)
        return Attribution("values", model, inputs, blank, to_positions,
                           rollout=lambda r: pooled_relevance(model.cfg, r, None))

    # ---- what every classifier shares
    def build(self, cfg: ClassifierConfig) -> nn.Module:
        return Classifier(cfg, self.stem(cfg), learned_positions=self.learned_positions(cfg), positions_std=self.positions_std)

    def resolve(self, model: ClassifierConfig, prepared: Prepared) -> ClassifierConfig:
        updates = {"num_classes": resolved_field("num_classes", model.num_classes, len(prepared.classes))}
        return dataclasses.replace(model, **updates, **self.resolve_fields(model, prepared))  # re-runs validation

    def positions(self, cfg: ClassifierConfig, prepared: Prepared) -> int:
        return self.stem_positions(cfg, prepared) + cfg.extra_positions

    def dataset(self, data: ClassDataConfig, model: ClassifierConfig, prepared: Prepared, *, seed: int) -> ClassifyData:
        a = prepared.arrays
        return ClassifyData((a["train_x"], a["train_y"]), (a["val_x"], a["val_y"]), seed=seed, transform=self.transform(data, prepared))

    def task(self, data: ClassDataConfig, model: ClassifierConfig, prepared: Prepared, *, seed: int) -> Task:
        task = super().task(data, model, prepared, seed=seed)
        a, transform = prepared.arrays, task.dataset.transform
        if "test_x" in a:
            task.test_sets[test_set_name(data.test_source)] = partial(fixed_batches, a["test_x"], a["test_y"], transform)
        task.classes = prepared.classes
        return task

    def data_shape(self, data: ClassDataConfig, model: ClassifierConfig) -> DataShape:
        if not (Path(data.dir) / "manifest.json").is_file():
            raise ConfigError(f"model.arch = {model.arch!r} takes its classes and input shape from the data; "
                              f"run `largo prepare` on this config first (data.dir {data.dir} is not prepared)")
        prepared = self.prepare(data, model, log=lambda _m: None)  # the cache: a memmap open
        resolved = self.resolve(model, prepared)
        positions = self.positions(resolved, prepared)
        return DataShape(resolved, positions, positions * len(prepared.arrays["train_y"]))

    def extra_matmul_params(self, cfg: ClassifierConfig, seq_len: int) -> int:
        return self.stem_matmul_params(cfg) + cfg.dim * cfg.num_classes // seq_len  # the head runs once per example

    def memory_terms(self, cfg: ClassifierConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        stem = self.stem_terms(cfg, micro_batch, seq_len, layout)
        residual = 2 if layout.name == "mixed" or (layout.autocast and stem.bf16_residual) else 4
        rotary = not self.learned_positions(cfg)
        rope = 2 * (cfg.max_seq_len + cfg.extra_positions) * cfg.head_dim * 4 if rotary else 0
        return MemoryTerms(
            buffers=rope + stem.buffers,
            inputs=micro_batch * (stem.input_bytes + 8),  # + the int64 label
            stem_saved=stem.saved,
            head_saved=pooled_head_bytes(cfg, micro_batch, seq_len, layout, residual=residual, masked=stem.padding_mask),
            output_rows=micro_batch, outputs=cfg.num_classes, head_params=(cfg.dim + 1) * cfg.num_classes,
            residual_bytes=residual, rotary=rotary,
            padding_mask=stem.padding_mask, causal=False,
            extra_phases=stem.extra_phases,
        )

