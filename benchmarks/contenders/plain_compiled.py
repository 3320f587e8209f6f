"""The hand-written loop of plain_eager with the model and its loss under torch.compile (bf16 autocast)."""

from __future__ import annotations

from benchmarks.contenders.common import parse_args
from benchmarks.contenders.plain_eager import PRECISION, train

if __name__ == "__main__":
    train(parse_args(__doc__.splitlines()[0], [PRECISION]), "plain_compiled", compiled=True)
