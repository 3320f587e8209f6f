"""The language-model dataset: prepared token shards -> next-token batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.data import Batch
from largo.data.prepare import checked_tokenizer_file, read_manifest
from largo.data.tokens import LMBatches, TokenShards


class TextLMData:
    """Train and validation splits of a prepared folder, as `Dataset`."""

    def __init__(self, data_dir: str | Path, seq_len: int, seed: int, manifest: dict[str, Any] | None = None):
        self.manifest = manifest or read_manifest(data_dir)
        checked_tokenizer_file(data_dir, self.manifest)  # it is copied into every checkpoint: it must match the ids
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.train = LMBatches(TokenShards(data_dir, "train", self.manifest), seq_len, seed)
        self.val = LMBatches(TokenShards(data_dir, "val", self.manifest), seq_len, seed)

    def train_rows(self, samples: range) -> Batch:
        return self.train.rows(samples)

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        """Validation windows in file order; when capped, spread evenly over the whole split."""
        n = self.val.num_windows
        total = min(n, max_batches * micro_batch) if max_batches else n
        windows = np.linspace(0, n - 1, total).round().astype(int) if total < n else np.arange(n)
        for i in range(0, total, micro_batch):
            yield self.val.windows(windows[i : i + micro_batch])


class RandomTokens:
    """Uniform random token windows: a training batch's shape and cost without prepared data (for timing steps)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def train_rows(self, samples: range) -> Batch:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + samples.start)
        tokens = torch.randint(self.vocab_size, (len(samples), self.seq_len + 1), generator=generator)
        return tokens[:, :-1], tokens[:, 1:]

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        return iter(())
