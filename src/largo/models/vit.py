"""Vision transformer: patchify stem + learned positions, then the shared encoder trunk."""

from __future__ import annotations

import torch
from torch import nn

from largo.models.config import ModelConfig
from largo.models.encoder import EncoderTrunk


class ViT(nn.Module):
    """Images (b, channels, size, size), already normalised -> class logits (b, num_classes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size < 1 or cfg.in_channels < 1:
            raise ValueError("ModelConfig.image_size and in_channels must be resolved (> 0) before building a ViT")
        self.cfg = cfg
        # A convolution with stride = kernel = patch is the linear patch embedding of ViT.
        self.patch = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.empty(cfg.num_patches + (1 if cfg.pooling == "cls" else 0), cfg.dim))
        self.trunk = EncoderTrunk(cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # (b, dim, h/p, w/p) -> (b, patches, dim)
        x = self.trunk.add_class_token(x) + self.pos.to(x.dtype)  # (b, [1 +] patches, dim)
        return self.trunk(x)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Patch embedding as a linear layer of fan-in in_channels * patch^2 (unit-scale outputs for normalised pixels).

        Positions start at that same scale, not ViT's 0.02: with small positions a short run first
        learns a bag of patches and finds out late where they are (measured on digits and Fashion-MNIST).
        """
        fan_in = self.cfg.in_channels * self.cfg.patch_size**2
        nn.init.normal_(self.patch.weight, std=fan_in**-0.5)
        nn.init.zeros_(self.patch.bias)
        nn.init.normal_(self.pos, std=1.0)
        self.trunk.init_weights()
