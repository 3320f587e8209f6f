"""Diffusion transformer (DiT) on images: class-conditional generation trained by flow matching, sampled with guidance.

The model is facebookresearch/DiT's layout on largo's shared trunk: a patch embedding with fixed 2-D sin-cos positions,
a timestep embedder and a label embedder (one extra "null" label: classifier-free guidance), and adaLN-Zero
modulation of THE block (models/block.py's Modulation, computed here from the conditioning vector). The final
layer is modulated too and unpatchifies to the image's shape.

Training is rectified flow (Liu et al. 2022; Lipman et al.'s flow matching): x_t = (1 - t) x0 + t noise, and the
model predicts the velocity noise - x0. The noise, t and the label dropout of each training example are drawn by the
data transform from (seed, sample index) (data/draws.py), so a resumed run sees exactly what an uninterrupted one does.
Sampling (models/imagegen.py's `sample`, apart from the model as in DiT) integrates dx/dt = v from t = 1 (noise) to
t = 0 with Euler or Heun steps, guided as v_uncond + w (v_cond - v_uncond); the metrics and pictures live there too.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from largo.data.arrays import ClassifyData, Prepared, Transform
from largo.data.draws import SampleDraws
from largo.data.images import ImageDataConfig, augment_images, prepare_images
from largo.errors import ConfigError
from largo.models.block import Modulation
from largo.models.config import ModelConfig
from largo.models.imagegen import generation_results, respond_pictures, write_class_grid
from largo.models.loss import Scored
from largo.models.results import GenerateRequest, TaskResults
from largo.models.spec import ArchSpec, DataShape, MemoryTerms, Task, register, resolved_field
from largo.models.trunk import Trunk
from largo.precision import Layout

# SampleDraws streams of the flow-matching draws (augment_images uses 0 and 1)
_NOISE_A, _NOISE_B, _TIME, _DROP = 10, 11, 12, 13
_EVAL_SEED = 0x5EED  # held-out batches: draws from the batch's own bytes, the same at every evaluation


@dataclass
class DiTConfig(ModelConfig):
    """A class-conditional DiT: patches, classes, label dropout, and the sampler `largo generate` and the metrics use."""

    arch: str = "dit"
    image_size: int = 0  # square image side in pixels; 0 = the data's own size
    in_channels: int = 0  # image channels; 0 = the data's
    patch_size: int = 4  # side of the square patches; must divide image_size
    num_classes: int = 0  # classes to condition on; 0 = the number of labels in the data
    class_dropout: float = 0.1  # share of training examples whose label is replaced by the null label (guidance needs it)
    time_freqs: int = 128  # sinusoidal features of the timestep before its MLP
    sampler: Literal["euler", "heun"] = "heun"  # ODE steps from noise (t = 1) to image (t = 0)
    sample_steps: int = 10  # integration steps (heun: two model calls each, the last one Euler)
    guidance: float = 2.0  # classifier-free guidance scale w: v_u + w (v_c - v_u); 1 = conditional only
    classifier: str = "runs/vision_fashion"  # the run folder (or checkpoint) of the classifier FID-F and class agreement use

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("image_size", "in_channels", "num_classes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 0 (0 = from the data)")
        if self.patch_size < 1 or self.sample_steps < 1 or self.time_freqs < 2 or self.time_freqs % 2:
            raise ConfigError("model.patch_size and model.sample_steps must be >= 1, model.time_freqs even and >= 2")
        if self.image_size and self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must divide by model.patch_size ({self.patch_size})")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"model.class_dropout ({self.class_dropout}) must be in [0, 1)")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"model.guidance ({self.guidance}) must be a finite number >= 0 (1 = no guidance)")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_pixels(self) -> int:
        return self.in_channels * self.patch_size**2


def sincos_positions(dim: int, side: int) -> torch.Tensor:
    """DiT's fixed 2-D sin-cos table (side * side, dim): half the features encode the row, half the column."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    grid = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    parts = [torch.outer(axis.flatten(), freqs) for axis in (rows, cols)]
    table = torch.cat([f(p) for p in parts for f in (torch.sin, torch.cos)], dim=1)  # (side^2, 4 * quarter)
    return nn.functional.pad(table, (0, dim - table.shape[1])).float()


def timestep_features(t: torch.Tensor, n: int) -> torch.Tensor:
    """Sinusoidal features (b, n) of t in [0, 1], scaled by 1000 as DiT's integer timesteps are."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(n // 2, device=t.device, dtype=torch.float32) / (n // 2))
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class DiT(nn.Module):
    """(x_t (b, c, h, w), t (b,), labels (b,); label num_classes = none) -> predicted velocity (b, c, h, w)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.image_size < 1 or cfg.in_channels < 1 or cfg.num_classes < 1:
            raise ValueError("DiTConfig.image_size, in_channels and num_classes must be resolved (> 0) before building a DiT")
        self.cfg, d = cfg, cfg.dim
        self.patch = nn.Conv2d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_freqs, d), nn.SiLU(), nn.Linear(d, d))
        self.labels = nn.Embedding(cfg.num_classes + 1, d)  # the last row is the null label of unconditional calls
        self.trunk = Trunk(cfg, causal=False, rotary=False)
        self.ada = nn.ModuleList(nn.Linear(d, 6 * d) for _ in range(cfg.n_layers))  # conditioning -> a block's Modulation
        self.final_ada = nn.Linear(d, 2 * d)  # shift and scale of the final norm
        self.out = nn.Linear(d, cfg.patch_pixels)
        self.register_buffer("pos", sincos_positions(d, cfg.image_size // cfg.patch_size), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, c, size, _ = x.shape
        p, side = self.cfg.patch_size, size // self.cfg.patch_size
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)  # (b, patches, dim)
        cond = nn.functional.silu(self.time_mlp(timestep_features(t, self.cfg.time_freqs)) + self.labels(labels))[:, None]  # (b, 1, d)
        mods = [Modulation(*ada(cond).chunk(6, dim=-1)) for ada in self.ada]
        h = self.trunk(h, mods=mods)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        out = self.out(h * (1 + scale) + shift)  # (b, patches, c * p * p)
        out = out.view(b, side, side, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (b, c, side, p, side, p)
        return out.reshape(b, c, size, size)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Patch embedding and conditioning at unit scale, the trunk's own init; adaLN and the output zero (adaLN-Zero):
        every block starts as the identity and the first prediction is 0."""
        nn.init.normal_(self.patch.weight, std=self.cfg.patch_pixels**-0.5)
        nn.init.zeros_(self.patch.bias)
        # The conditioning starts at unit scale (DiT's 0.02 assumes 400k steps): with adaLN-Zero the gates open only as far
        # as the conditioning carries a signal, and short CPU runs otherwise learned the class late (rows alike in samples.png).
        for lin in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.labels.weight, std=1.0)
        self.trunk.init_weights()
        for lin in (*self.ada, self.final_ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.pos = sincos_positions(self.cfg.dim, self.cfg.image_size // self.cfg.patch_size).to(self.pos.device)


# ---------------------------------------------------------------- flow matching: the data's draws and the loss

def to_unit(rows: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] (the space the model generates in)."""
    return np.asarray(rows, dtype=np.float32) / 127.5 - 1.0


def gaussians(draws: SampleDraws, count: int) -> np.ndarray:
    """(b, count) standard normals by Box-Muller from two streams of the examples' uniforms."""
    u1, u2 = draws.uniform(_NOISE_A, count), draws.uniform(_NOISE_B, count)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def flow_transform(data: ImageDataConfig, class_dropout: float) -> Transform:
    """Stored uint8 rows -> {"images" x0, "noise", "t", "drop"}: every draw a function of (seed, sample) or, held out, of the batch."""

    def transform(rows: np.ndarray, draws: SampleDraws | None) -> dict[str, torch.Tensor]:
        held_out = draws is None
        if held_out:
            draws = SampleDraws(_EVAL_SEED ^ zlib.crc32(np.ascontiguousarray(rows).tobytes()), np.arange(len(rows)))
        elif data.shift_px or data.hflip:
            rows = augment_images(rows, draws, shift_px=data.shift_px, hflip=data.hflip)
        drop = np.zeros(len(rows), dtype=bool) if held_out else draws.uniform(_DROP)[:, 0] < class_dropout
        noise = gaussians(draws, int(np.prod(rows.shape[1:]))).reshape(rows.shape)
        return {"images": torch.from_numpy(to_unit(rows)), "noise": torch.from_numpy(noise.astype(np.float32)),
                "t": torch.from_numpy(draws.uniform(_TIME)[:, 0].astype(np.float32)), "drop": torch.from_numpy(drop)}

    return transform


def flow_losses(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-example mean squared error (b,) of the predicted velocity against noise - x0 at x_t = (1 - t) x0 + t noise."""
    x0, noise, t = inputs["images"], inputs["noise"], inputs["t"]
    tt = t.view(-1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    labels = torch.where(inputs["drop"], torch.full_like(labels, num_classes), labels)
    v = model(xt, t, labels)
    return (v.float() - (noise - x0)).pow(2).flatten(1).mean(1)


# ---------------------------------------------------------------- the spec

class DiTSpec(ArchSpec):
    """Class-conditional image generation: Fashion-MNIST (or any image source), flow matching, FID-F and class agreement."""

    name = "dit"
    model_config = DiTConfig
    data_config = ImageDataConfig
    about = "diffusion transformer (adaLN-Zero, flow matching, guidance) generating images of a class"
    export_formats = ("safetensors",)

    def build(self, cfg: DiTConfig) -> nn.Module:
        return DiT(cfg)

    def prepare(self, data: ImageDataConfig, model: DiTConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
        return prepare_images(data, image_size=model.image_size, in_channels=model.in_channels, patch_size=model.patch_size,
                              force=force, log=log)

    def resolve(self, model: DiTConfig, prepared: Prepared) -> DiTConfig:
        x = prepared.arrays["train_x"]  # (n, channels, size, size)
        return dataclasses.replace(model, num_classes=resolved_field("num_classes", model.num_classes, len(prepared.classes)),
                                   image_size=resolved_field("image_size", model.image_size, x.shape[-1]),
                                   in_channels=resolved_field("in_channels", model.in_channels, x.shape[1]))

    def positions(self, cfg: DiTConfig, prepared: Prepared) -> int:
        return cfg.num_patches

    def dataset(self, data: ImageDataConfig, model: DiTConfig, prepared: Prepared, *, seed: int) -> ClassifyData:
        a = prepared.arrays
        return ClassifyData((a["train_x"], a["train_y"]), (a["val_x"], a["val_y"]), seed=seed,
                            transform=flow_transform(data, model.class_dropout))

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Flow matching: the velocity error, summed over the micro-batch's examples (the loop divides by the global count)."""
        return flow_losses(model, inputs, targets, _cfg(model).num_classes).sum()

    def score(self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> Scored:
        """The held-out flow-matching loss (fixed draws per batch); there is nothing to count as correct."""
        losses = flow_losses(model, inputs, targets, _cfg(model).num_classes)
        return Scored(losses.sum(), torch.zeros((), device=losses.device), torch.tensor(len(losses), device=losses.device))

    def data_shape(self, data: ImageDataConfig, model: DiTConfig) -> DataShape:
        if not (Path(data.dir) / "manifest.json").is_file():
            raise ConfigError(f"model.arch = 'dit' takes its classes and image shape from the data; "
                              f"run `largo prepare` on this config first (data.dir {data.dir} is not prepared)")
        prepared = self.prepare(data, model, log=lambda _m: None)
        resolved = self.resolve(model, prepared)
        return DataShape(resolved, resolved.num_patches, resolved.num_patches * len(prepared.arrays["train_y"]))

    def extra_matmul_params(self, cfg: DiTConfig, seq_len: int) -> int:
        per_example = cfg.dim * (cfg.time_freqs + cfg.dim) + 6 * cfg.n_layers * cfg.dim**2 + 2 * cfg.dim**2
        return 2 * cfg.patch_pixels * cfg.dim + per_example // max(1, seq_len)  # patch in and out per position; conditioning per example

    def memory_terms(self, cfg: DiTConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        pixels = cfg.in_channels * cfg.image_size**2
        tokens = micro_batch * seq_len
        residual = 2 if layout.name == "mixed" else 4
        return MemoryTerms(
            buffers=4 * seq_len * cfg.dim,  # the sin-cos positions
            inputs=micro_batch * (2 * 4 * pixels + 4 + 1 + 8),  # images, noise, t, drop, label
            stem_saved=micro_batch * 4 * 3 * pixels + tokens * cfg.dim * 4 + micro_batch * 8 * cfg.n_layers * cfg.dim * 4,  # x_t, patches, conditioning
            head_saved=tokens * cfg.dim * (4 + residual) * 2,  # final norm and its modulation
            output_rows=tokens, outputs=cfg.patch_pixels, head_params=(cfg.dim + 1) * cfg.patch_pixels,
            residual_bytes=residual, rotary=False, causal=False,
            logits=tokens * cfg.patch_pixels * 4, loss_grads=3 * micro_batch * pixels * 4,
        )

    # ---- the task's results, pictures and `largo generate` (models/imagegen.py)
    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults:
        return generation_results(model, task, device=device, precision=precision, limit=limit, log=log)

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        path = run_dir / "samples.png"
        write_class_grid(model, list(range(task.model.num_classes)), 10, path, task.prepared.classes, seed=0, precision=precision)
        log(f"samples: 10 per class -> {path}")
        return {"samples": str(path)}

    def respond(self, model: nn.Module, ckpt: Any, cfg: Any, request: GenerateRequest) -> list[str]:
        return respond_pictures(model, cfg, request)


def _cfg(model: nn.Module) -> DiTConfig:
    """The DiTConfig of a model, through any wrapper (torch.compile, DDP)."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "module", inner).cfg


register(DiTSpec())
