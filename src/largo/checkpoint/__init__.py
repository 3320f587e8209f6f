"""Checkpoints: the on-disk format (atomic step folders of safetensors + JSON, sharded DCP), its verified handle and reader."""
