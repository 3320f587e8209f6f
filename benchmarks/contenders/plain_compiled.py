"""The hand-written loop of plain_eager with the model and its loss under torch.compile (bf16 autocast or fp32)."""

from __future__ import annotations

from benchmarks.contenders.common import parse_args
from benchmarks.contenders.plain_eager import ATTENTION, name_for, train

if __name__ == "__main__":
    cli = parse_args(__doc__.splitlines()[0], [ATTENTION])
    train(cli, name_for("plain_compiled", cli), compiled=True)
