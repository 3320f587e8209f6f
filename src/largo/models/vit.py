"""Vision transformer: a patchify stem and learned positions before the bidirectional trunk; images from data/images.py."""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.data.arrays import Prepared, Transform
from largo.data.images import IMAGE_SUFFIXES, ImageDataConfig, image_transform, prepare_images, read_image
from largo.errors import ConfigError
from largo.models.classifier import Classifier, ClassifierConfig, ClassifierSpec, StemTerms, pooled_relevance
from largo.models.spec import Attribution, register, resolved_field
from largo.precision import Layout


@dataclass
class ViTConfig(ClassifierConfig):
    """A ViT: square images cut into square patches."""

    arch: str = "vit"
    image_size: int = 0  # square input side in pixels; 0 = the data's own size
    in_channels: int = 0  # image channels; 0 = the data's (1 grey, 3 colour)
    patch_size: int = 4  # side of the square patches cut by the stem; must divide image_size

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("image_size", "in_channels"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 0 (0 = from the data)")
        if self.patch_size < 1:
            raise ConfigError(f"model.patch_size ({self.patch_size}) must be >= 1")
        if self.image_size and self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must divide by model.patch_size ({self.patch_size})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class PatchStem(nn.Module):
    """Images (b, channels, size, size), already normalised -> patch states (b, patches, dim)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size < 1 or cfg.in_channels < 1:
            raise ValueError("ViTConfig.image_size and in_channels must be resolved (> 0) before building a ViT")
        self.fan_in = cfg.in_channels * cfg.patch_size**2
        # A convolution with stride = kernel = patch is the linear patch embedding of ViT.
        self.patch = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.patch(images).flatten(2).transpose(1, 2), None  # (b, dim, h/p, w/p) -> (b, patches, dim)

    @torch.no_grad()
    def init_weights(self) -> None:
        """As a linear layer of fan-in in_channels * patch^2: unit-scale outputs for normalised pixels."""
        nn.init.normal_(self.patch.weight, std=self.fan_in**-0.5)
        nn.init.zeros_(self.patch.bias)


class ConvStem(nn.Module):
    """Images (b, channels, size, size) -> patch states (b, patches, dim) through stacked small convolutions, one per prime
    factor of the patch side (12: strides 2, 2, 3), widths dim/8 .. dim/2, GELU, then a 1x1 projection to dim.

    Why: "Early convolutions help transformers see better" (Xiao et al. 2021): a few convolutions in place of the
    linear patchify make a ViT learn faster and more stably, for about a tenth more compute at these widths."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size < 1 or cfg.in_channels < 1:
            raise ValueError("image_size and in_channels must be resolved (> 0) before building a convolutional stem")
        layers: list[nn.Module] = []
        for c_in, c_out, s in conv_stem_layers(cfg):
            k = 2 * s - 1  # overlapping windows: 3 for stride 2, 5 for stride 3
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2 - (s - 1) // 2), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(layers[-2].out_channels, cfg.dim, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(self.convs(images)).flatten(2).transpose(1, 2), None

    @torch.no_grad()
    def init_weights(self) -> None:
        """He-normal convolutions (GELU follows), the projection as a linear layer: unit-scale states for normalised pixels."""
        for m in [*self.convs, self.proj]:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=(2.0 / fan_in if m is not self.proj else 1.0 / fan_in) ** 0.5)
                nn.init.zeros_(m.bias)


def conv_stem_layers(cfg: ViTConfig) -> list[tuple[int, int, int]]:
    """ConvStem's convolutions as (in channels, out channels, stride): a stride per prime factor of the patch side."""
    strides = prime_factors(cfg.patch_size)
    widths = [max(8, cfg.dim // 2 ** (len(strides) - i)) for i in range(len(strides))]
    return list(zip([cfg.in_channels, *widths], widths, strides))


def conv_stem_macs_per_patch(cfg: ViTConfig) -> int:
    """Multiply-adds of ConvStem per output patch: each layer's kernel work times its outputs per final patch."""
    layers, macs = conv_stem_layers(cfg), 0
    for i, (c_in, c_out, s) in enumerate(layers):
        later = math.prod(st for _, _, st in layers[i + 1 :])  # outputs of this layer per final patch, per side
        macs += c_in * (2 * s - 1) ** 2 * c_out * later**2
    return macs + layers[-1][1] * cfg.dim


def prime_factors(n: int) -> list[int]:
    """n's prime factors in ascending order (12 -> [2, 2, 3])."""
    out, f = [], 2
    while n > 1:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    return out


class ViTSpec(ClassifierSpec):
    """Image classification: Fashion-MNIST, scikit-learn's digits or an image folder."""

    name = "vit"
    model_config = ViTConfig
    data_config = ImageDataConfig
    about = "vision transformer (patch stem, learned positions) on images"
    # Positions start at the patch embedding's unit scale, not ViT's 0.02: with small positions a short
    # run first learns a bag of patches and finds out late where they are (measured on digits and Fashion-MNIST).
    positions_std = 1.0

    def stem(self, cfg: ViTConfig) -> nn.Module:
        return PatchStem(cfg)

    def learned_positions(self, cfg: ViTConfig) -> int:
        return cfg.num_patches

    def prepare(self, data: ImageDataConfig, model: ViTConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
        return prepare_images(data, image_size=model.image_size, in_channels=model.in_channels, patch_size=model.patch_size,
                              force=force, log=log)

    def resolve_fields(self, cfg: ViTConfig, prepared: Prepared) -> dict[str, Any]:
        x = prepared.arrays["train_x"]  # (n, channels, size, size)
        return {"image_size": resolved_field("image_size", cfg.image_size, x.shape[-1]),
                "in_channels": resolved_field("in_channels", cfg.in_channels, x.shape[1])}

    def stem_positions(self, cfg: ViTConfig, prepared: Prepared) -> int:
        return cfg.num_patches

    def transform(self, data: ImageDataConfig, prepared: Prepared) -> Transform:
        return image_transform(prepared.meta["mean"], prepared.meta["std"], shift_px=data.shift_px, hflip=data.hflip)

    def stem_matmul_params(self, cfg: ViTConfig) -> int:
        return cfg.in_channels * cfg.patch_size**2 * cfg.dim

    # ---- explanations: integrated gradients on the (normalised) pixels from a black image, drawn over the image
    example_suffixes = tuple(sorted(IMAGE_SUFFIXES))

    def read_example(self, data: ImageDataConfig, model: ViTConfig, ckpt: Path, source: str) -> np.ndarray:
        return read_image(Path(source), model.image_size, model.in_channels)

    def attribution(self, model: Classifier, inputs: torch.Tensor, blank: torch.Tensor) -> Attribution:
        cfg = model.cfg
        side, p = cfg.image_size // cfg.patch_size, cfg.patch_size

        def to_pixels(r: torch.Tensor) -> torch.Tensor:  # rollout over patches -> (b, size, size), each patch's score on its pixels
            grid = pooled_relevance(cfg, r, None).reshape(-1, side, side)
            return grid.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)

        # blank: the normalised all-zero (black) image, the background of Fashion-MNIST and digits
        return Attribution("image", model, inputs, blank, lambda a: a.sum(1), rollout=to_pixels)

    def stem_terms(self, cfg: ViTConfig, micro_batch: int, seq_len: int, layout: Layout) -> StemTerms:
        pixels = cfg.in_channels * cfg.image_size**2
        bf16_pixels = 2 * micro_batch * pixels if layout.compute_bytes == 2 else 0  # the conv's bf16 input (fp32: the batch itself)
        weight_cast = 2 * self.stem_matmul_params(cfg) if layout.autocast else 0  # bf16 patch weight
        return StemTerms(input_bytes=4 * pixels, saved=bf16_pixels + weight_cast, bf16_residual=True)


register(ViTSpec())
