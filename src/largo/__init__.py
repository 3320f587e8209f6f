"""largo: train, scale and evaluate large neural models on PyTorch with one config."""

__version__ = "0.1.0"
