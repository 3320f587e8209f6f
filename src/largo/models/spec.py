"""Architectures as specs: one object per `model.arch` owns everything a modality needs, in one module.

A spec (torchtitan's ModelSpec, for largo's pipeline) names its model and data config classes and
answers every question the rest of largo asks about an architecture: how to build the model, how
to prepare and read its data, which model fields the data decides, how many positions an example
has, its FLOPs and memory terms for the planner, and which files go into its checkpoints. The loop,
planner, checkpoints, export and CLI ask the spec; nothing outside the specs branches on the name.

Adding an architecture is one module: subclass ArchSpec (or ClassifierSpec for stem + pooled head),
then `register(MySpec())`. The built-in ones are registered when `largo.models` is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from largo.data import Batch, Dataset
from largo.data.config import DataConfig
from largo.errors import CheckpointError, ConfigError
from largo.models.config import ModelConfig
from largo.models.loss import Scored, score_targets, summed_loss
from largo.models.results import GenerateRequest, TaskResults
from largo.precision import Layout


@dataclass
class Task:
    """What the training loop needs from an architecture and its prepared data, built once per run."""

    model: ModelConfig  # the [model] section with the fields the data decides resolved
    dataset: Dataset
    positions: int  # transformer positions per example (tokens/s counts these)
    flops_per_sample: int  # training FLOPs per example (for MFU)
    files: dict[str, Path] = field(default_factory=dict)  # copied into every checkpoint (e.g. tokenizer.json)
    classes: list[str] = field(default_factory=list)  # classification: class names; a confusion matrix is written at the end
    test_sets: dict[str, Callable[[int], Iterator[Batch]]] = field(default_factory=dict)  # extra named sets: micro_batch -> batches
    # A training micro-batch, on the device -> the model's input: augmentation that runs batched where the model runs
    # (audio's resampling and spectral noise), so the loader only slices rows.
    augment: Callable[[Any], torch.Tensor] = lambda x: x
    prepared: Any = None  # what spec.prepare returned: results() and after_training() read their test examples from it


@dataclass(frozen=True)
class DataShape:
    """What `largo plan` needs from the data before any training: the resolved model and its positions."""

    model: ModelConfig
    positions: int  # per example
    dataset_positions: int | None  # training positions in the prepared data (tokens for text); None before preparing


@dataclass(frozen=True)
class MemoryTerms:
    """Bytes an architecture adds around the shared blocks for one micro-batch (the planner's memory model)."""

    buffers: int  # non-parameter tensors of the model (rotary table, audio frontend tables)
    inputs: int  # the micro-batch alive for the whole step (inputs and targets), where not counted in head_saved
    stem_saved: int  # what the stem saves for backward beyond the inputs
    head_saved: int  # what the head saves for backward
    output_rows: int  # rows of the output logits (positions for a language model, examples for a classifier)
    outputs: int  # logits per row (vocabulary or classes)
    head_params: int  # the head's parameters (its gradient exists from the first backward on)
    residual_bytes: int = 4  # bytes per element of the residual stream the blocks see
    rotary: bool = True  # the blocks rotate q and k (autocast keeps bf16 casts of the table)
    padding_mask: bool = False  # the blocks' attention keeps a padding mask (b, 1, 1, t)
    causal: bool = True  # the blocks attend causally (a language model) or both ways (a classifier)
    extra_phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # other peaks: name -> (activations, temporaries)
    logits: int | None = None  # bytes alive for the outputs at the end of the forward; None = rows x outputs in the compute dtype
    loss_grads: int | None = None  # temporaries of the loss's backward; None = two fp32 rows x outputs


@dataclass
class Attribution:
    """What `largo explain` attributes for one batch of an architecture's inputs, and how the result is drawn.

    The spec decides the modality's part (which tensor, the baseline, the map, the view); largo/explain does the rest
    (integrated gradients with Captum, the completeness check, attention rollout, rendering) for any spec.
    """

    view: Literal["image", "spectrogram", "tokens", "values"]  # how a map is drawn: over the image, the spectrogram, the text
    forward: Callable[..., torch.Tensor]  # (inputs, *extra) -> scores (b, outputs): class logits, or next-token logits
    inputs: torch.Tensor  # (b, ...) what is attributed: pixels, log-mel frames, token ids (for `layer`)
    baseline: torch.Tensor  # like inputs: where the integration path starts (a black image, the mel floor, padding tokens)
    to_map: Callable[[torch.Tensor], torch.Tensor]  # attributions -> the drawn map (b, ...): channels or embedding summed
    layer: nn.Module | None = None  # attribute to this module's output (a token embedding: layer integrated gradients)
    extra: tuple[Any, ...] = ()  # further forward arguments, held fixed along the path (a padding mask)
    rollout: Callable[[torch.Tensor], torch.Tensor] | None = None  # trunk rollout (b, T, T) -> scores on the map's grid
    shown: torch.Tensor | None = None  # (b, positions): where a token map is drawn (padding left out); None = everywhere
    seconds_per_column: float = 0.0  # spectrogram: time per frame, for the axis


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a model, taken from the model built on the meta device (the one count largo makes)."""

    total: int  # trainable parameters, a tied head counted once
    embedding: int  # token embedding tables (lookups, no FLOPs)
    per_block: int
    hidden_matrices: int  # 2-D weights inside the blocks (what Muon takes)
    block_matmul: int  # matmul weights of one block (autocast keeps a bf16 copy of each per forward)
    frozen: int = 0  # weights held but not trained (the base under LoRA adapters): parameter bytes, no gradient or optimizer state


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """2-D weights inside the trunk's blocks; embeddings, stems and heads stay with AdamW (as Muon's authors advise)."""
    return p.dim() == 2 and ".blocks." in f".{name}"


class ArchSpec:
    """One architecture: its configs, model, data, planner terms and checkpoint files. Subclasses fill these in."""

    name: ClassVar[str]  # the value of model.arch that selects it
    model_config: ClassVar[type[ModelConfig]]  # the [model] section's class (ModelConfig + its own fields)
    data_config: ClassVar[type[DataConfig]]  # the [data] section's class
    about: ClassVar[str] = ""  # one line for listings
    export_formats: ClassVar[tuple[str, ...]] = ("onnx", "safetensors")  # what `largo export` writes for it
    hf_names: ClassVar[dict[str, str]] = {}  # parameter name -> Hugging Face name ({i}: block index), for --format hf
    generates: ClassVar[bool] = False  # a language model that `largo generate` can sample from
    feeds_mfu_history: ClassVar[bool] = False  # its measured MFU becomes the default of `largo plan` on the device

    def check_export(self, fmt: str) -> None:
        """One line when `largo export --format fmt` cannot write this architecture (export_formats lists what it can)."""
        if fmt not in self.export_formats:
            raise CheckpointError(f"model.arch = {self.name!r} does not export as --format {fmt}; "
                                  f"it exports as --format {' or '.join(self.export_formats)}")

    # ---- model
    def build(self, cfg: ModelConfig) -> nn.Module:
        """The model for a resolved config, on the current default device (build_model uses meta)."""
        raise NotImplementedError

    # ---- data: specs see the [data] and [model] sections (and the run seed where batches depend on it), never the run
    def prepare(self, data: DataConfig, model: ModelConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Any:
        """Prepare the data (cached on disk): `largo prepare`, and the first step of training."""
        raise NotImplementedError

    def resolve(self, model: ModelConfig, prepared: Any) -> ModelConfig:
        """model with the fields the data decides filled in (0 = take the data's; anything else must equal it)."""
        return model

    def positions(self, cfg: ModelConfig, prepared: Any) -> int:
        """Transformer positions per example."""
        return cfg.max_seq_len

    def dataset(self, data: DataConfig, model: ModelConfig, prepared: Any, *, seed: int) -> Dataset:
        """The loop's Dataset over the prepared data (batches addressed by sample index, shuffled from the seed)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch, summed over its targets (the loop divides by the global count)."""
        return summed_loss(model(inputs), targets)

    def score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Scored:
        """One held-out batch's summed loss, correct predictions and count (evaluation runs it under autocast, no grad):
        cross-entropy and argmax accuracy by default; an architecture that trains on another loss scores with it here."""
        return score_targets(model(inputs), targets)

    def task(self, data: DataConfig, model: ModelConfig, prepared: Any, *, seed: int) -> Task:
        """Everything the loop needs, from the prepared data; Task.model is `model` resolved."""
        model = self.resolve(model, prepared)
        t = self.positions(model, prepared)
        return Task(model, self.dataset(data, model, prepared, seed=seed), t, self.flops_per_token(model, t) * t,
                    self.checkpoint_files(data), prepared=prepared)

    def data_shape(self, data: DataConfig, model: ModelConfig) -> DataShape:
        """The resolved model and positions for `largo plan`, from the prepared data if there is any."""
        raise NotImplementedError

    def probe_task(self, data: DataConfig, model: ModelConfig, *, seed: int, log: Callable[[str], None] = print) -> Task:
        """The Task whose steps `largo plan` times on this machine: the prepared data's (prepared now if need be)."""
        return self.task(data, model, self.prepare(data, model, log=log), seed=seed)

    def checkpoint_files(self, data: DataConfig) -> dict[str, Path]:
        """Files copied into every checkpoint beside the weights (a tokenizer)."""
        return {}

    # ---- the task's own metrics, pictures and outputs (`largo eval --json/--predictions`, the end of training, `largo generate`)
    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults | None:
        """The task's metrics, baselines and per-example predictions on its held-out test set (at most `limit` examples);
        None where loss and accuracy are the task's metrics (`largo eval` then reports those)."""
        return None

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        """What a finished run writes beside its checkpoints (samples.png, detections.png, audio); returns summary entries."""
        return {}

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        """`largo generate`: the lines to print for the request (a sample, a translation, a picture's path).
        ckpt is the verified `Checkpoint` handle, cfg the run's config."""
        raise CheckpointError(f"{ckpt.path}: model.arch = {self.name!r} does not generate; `largo generate` samples from "
                              f"language models, sequence-to-sequence and generative models")

    # ---- planner terms
    def extra_matmul_params(self, cfg: ModelConfig, seq_len: int) -> int:
        """Weights multiplied per position outside the blocks (stem and head), for 6N FLOPs."""
        return 0

    def flops_per_token(self, cfg: ModelConfig, seq_len: int | None = None) -> int:
        """Training FLOPs per position: 6 * (blocks + stem + head weights) + 12 * L * d * T."""
        t = seq_len or cfg.max_seq_len
        return cfg.trunk_flops_per_token(t) + 6 * self.extra_matmul_params(cfg, t)

    def memory_terms(self, cfg: ModelConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        """What the stem, head, inputs and buffers hold for one micro-batch (see plan/estimate.py)."""
        raise NotImplementedError

    # ---- explanations (`largo explain`)
    example_suffixes: ClassVar[tuple[str, ...]] = ()  # input files `largo explain` picks out of a folder

    def read_example(self, data: DataConfig, model: ModelConfig, ckpt: Path, source: str) -> np.ndarray:
        """One input as the data stores it (an image's uint8 pixels, a clip, token ids), from a file or literal text."""
        raise ConfigError(f"model.arch = {self.name!r} does not read single inputs for `largo explain`; use --split")

    def attribution(self, model: nn.Module, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        """What to attribute for a batch of model inputs; blank = the inputs of all-zero stored examples."""
        raise ConfigError(f"model.arch = {self.name!r} has no explanation view; its spec does not define attribution()")

    def token_pieces(self, ckpt: Path, ids: list[int]) -> list[str]:
        """The text of each token, for token views (architectures whose checkpoints carry a tokenizer)."""
        raise NotImplementedError


# ---------------------------------------------------------------- the registry

_SPECS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Make `spec` selectable as model.arch = spec.name (a later registration of the same name replaces it)."""
    if spec.model_config.arch != spec.name:
        raise ValueError(f"{type(spec).__name__}: its model config's arch default ({spec.model_config.arch!r}) must be {spec.name!r}")
    _SPECS[spec.name] = spec
    _count_params.cache_clear()
    return spec


def spec_names() -> list[str]:
    return list(_SPECS)


def extends_arch(mine: Any, theirs: Any) -> bool:
    """Whether architecture `mine` is built on `theirs`'s model (seq2seq on gpt): the same weights, another task."""
    if not isinstance(mine, str) or not isinstance(theirs, str) or mine == theirs or not {mine, theirs} <= set(_SPECS):
        return False
    return issubclass(_SPECS[mine].model_config, _SPECS[theirs].model_config)


def get_spec(name: str) -> ArchSpec:
    """The spec registered as `name`, or a one-line error listing the valid names."""
    if name not in _SPECS:
        close = difflib.get_close_matches(name, list(_SPECS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.arch = {name!r} is not valid{hint}; choose one of {', '.join(map(repr, _SPECS))}")
    return _SPECS[name]


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Build on the meta device (no memory), materialise on `device`, then init weights from the seed."""
    spec = get_spec(cfg.arch)
    with torch.device("meta"):
        model = spec.build(cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model


def trainable(model: nn.Module) -> int:
    """Trainable parameters of a live module (a tied weight once; a sharded one at its full size)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact counts of cfg's model, built on the meta device (nothing is allocated); cached per config."""
    return _count_params(type(cfg), tuple(dataclasses.asdict(cfg).items()))


@lru_cache(maxsize=64)
def _count_params(cls: type[ModelConfig], fields: tuple[tuple[str, Any], ...]) -> ParamCount:
    cfg = cls(**dict(fields))
    with torch.device("meta"):
        model = get_spec(cfg.arch).build(cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "blocks" and isinstance(m, nn.ModuleList)]
    block = list(blocks[0][0].parameters()) if blocks and len(blocks[0]) else []
    return ParamCount(
        total=sum(p.numel() for _, p in named),
        embedding=sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)),
        per_block=sum(p.numel() for p in block),
        hidden_matrices=sum(p.numel() for n, p in named if is_hidden_matrix(n, p)),
        block_matmul=sum(p.numel() for p in block if p.dim() == 2),
    )


def resolved_field(key: str, configured: int, found: int) -> int:
    """A model field the data decides: 0 takes the data's value, anything else must equal it."""
    if configured not in (0, found):
        raise ConfigError(f"model.{key} ({configured}) differs from the data's {found}; set it to 0 or {found}")
    return found
