"""largo: train, scale and evaluate large neural models on PyTorch with one config."""

__version__ = "0.1.0"

__all__ = ["Trainer"]


def __getattr__(name: str):
    """Import the Python API lazily, so `largo --help` does not pay for torch."""
    if name == "Trainer":
        from largo.api import Trainer

        return Trainer
    raise AttributeError(f"module 'largo' has no attribute {name!r}")
