"""The language-model dataset: prepared token shards -> next-token batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from largo.data import Batch
from largo.data.prepare import checked_tokenizer_file, read_manifest
from largo.data.tokens import LMBatches, TokenShards


class TextLMData:
    """Train and validation splits of a prepared folder, as `Dataset`."""

    def __init__(self, data_dir: str | Path, seq_len: int, seed: int):
        self.manifest = read_manifest(data_dir)
        checked_tokenizer_file(data_dir, self.manifest)  # it is copied into every checkpoint: it must match the ids
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.train = LMBatches(TokenShards(data_dir, "train", self.manifest), seq_len, seed)
        self.val = LMBatches(TokenShards(data_dir, "val", self.manifest), seq_len, seed)

    def train_rows(self, samples: range) -> Batch:
        return self.train.rows(samples)

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        total = self.val.num_windows
        if max_batches:
            total = min(total, max_batches * micro_batch)
        for start in range(0, total, micro_batch):
            yield self.val.sequential(start, min(micro_batch, total - start))
