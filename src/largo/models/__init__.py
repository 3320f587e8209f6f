"""Models: one shared transformer block, wrapped by per-modality stems and heads."""

from __future__ import annotations

import torch
from torch import nn

from largo.models.config import ModelConfig
from largo.models.audio import AudioClassifier
from largo.models.gpt import GPT
from largo.models.text_classifier import TextClassifier
from largo.models.vit import ViT

ARCHITECTURES: dict[str, type[nn.Module]] = {"gpt": GPT, "vit": ViT, "audio": AudioClassifier, "text_classifier": TextClassifier}


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Build on the meta device (no memory), materialise on `device`, then init weights from the seed."""
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.arch](cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model


def count_params(model: nn.Module) -> int:
    """Unique trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHITECTURES", "ModelConfig", "build_model", "count_params"]
