"""Distributed execution on torch.distributed: the process environment and parallelisation steps."""
