"""Checkpoints: atomic step folders (safetensors + JSON), sharded DCP, export and import."""
