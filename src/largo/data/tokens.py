"""Token shards as one virtual array, and language-model batches addressed by step.

A batch is a pure function of (seed, step): the data position *is* the step, so resuming at
step k reads exactly what an uninterrupted run reads, and every rank can compute its own rows
of the global batch without talking to the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.data.prepare import read_manifest
from largo.fileio import sha256_file
from largo.errors import DataError

_VERIFY_HASH_BYTES = 1 << 30  # hash-check shards at load below this total size; above, sizes only


class TokenShards:
    """The memmapped shards of one split, checked against the manifest, read as one array."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None):
        self.dir = Path(data_dir)
        manifest = manifest or read_manifest(self.dir)
        if split not in manifest["splits"]:
            raise DataError(f"{self.dir}/manifest.json: no split {split!r}")
        self.dtype = np.dtype(manifest["dtype"])
        shards = manifest["splits"][split]["shards"]
        total_bytes = sum(s["tokens"] for s in shards) * self.dtype.itemsize
        self.arrays: list[np.memmap] = []
        for s in shards:
            self.arrays.append(self._open(s, verify_hash=total_bytes < _VERIFY_HASH_BYTES))
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.vocab_size = int(manifest["tokenizer"]["vocab_size"])

    def _open(self, shard: dict[str, Any], *, verify_hash: bool) -> np.memmap:
        path = (self.dir / shard["file"]).resolve()
        if self.dir.resolve() not in path.parents:
            raise DataError(f"{self.dir}/manifest.json: shard path {shard['file']!r} escapes the data folder")
        expected = shard["tokens"] * self.dtype.itemsize
        if not path.is_file():
            raise DataError(f"{path}: missing, manifest.json lists it; rebuild with `largo prepare <config> --force`")
        if path.stat().st_size != expected:
            raise DataError(f"{path}: {path.stat().st_size} bytes, manifest says {expected}; the shard is truncated or corrupt; rebuild with `largo prepare <config> --force`")
        if verify_hash and sha256_file(path) != shard["sha256"]:
            raise DataError(f"{path}: sha256 does not match manifest.json; the shard is corrupt; rebuild with `largo prepare <config> --force`")
        return np.memmap(path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) across shard boundaries, as int64."""
        out = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            i = int(np.searchsorted(self.offsets, start + done, side="right")) - 1
            local = start + done - int(self.offsets[i])
            take = min(n - done, len(self.arrays[i]) - local)
            out[done : done + take] = self.arrays[i][local : local + take]
            done += take
        return out


class LMBatches:
    """Next-token batches: windows of seq_len + 1 tokens at multiples of seq_len, shuffled per epoch."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int):
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.num_windows = (len(shards) - 1) // seq_len
        if self.num_windows < 1:
            raise DataError(f"{shards.dir}: {len(shards)} tokens is fewer than one sequence of {seq_len + 1}")
        self._perm: tuple[int, np.ndarray] | None = None

    def _window(self, sample: int) -> int:
        """Window index of the sample-th example drawn (epoch-wise permutation, cached per epoch)."""
        epoch, k = divmod(sample, self.num_windows)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_windows))
        return int(self._perm[1][k])

    def rows(self, samples: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (len(samples), seq_len)."""
        data = np.stack([self.shards.read(self._window(s) * self.seq_len, self.seq_len + 1) for s in samples])
        t = torch.from_numpy(data)
        return t[:, :-1], t[:, 1:]

    def windows(self, indices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the given windows, unshuffled (for evaluation)."""
        data = np.stack([self.shards.read(int(w) * self.seq_len, self.seq_len + 1) for w in indices])
        t = torch.from_numpy(data)
        return t[:, :-1], t[:, 1:]
