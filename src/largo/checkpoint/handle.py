"""A checkpoint handle: found and verified once, then everything about the checkpoint is read from it.

`Checkpoint.find` decides which checkpoint a path names (store.locate: a checkpoint folder, or a run folder's
newest intact one), verifies it (digest, schema, file hashes, the sharded index, the tokenizer) and keeps the
verified state; callers pass the handle on instead of a path, so nothing reads state.json or verifies twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from largo.checkpoint.reader import Reader
from largo.checkpoint.store import locate, verify_checkpoint
from largo.config import RunConfig, build_config
from largo.errors import CheckpointError, ConfigError
from largo.rundir import STATE, TOKENIZER, RunDir


def _warn(message: str) -> None:
    print(f"largo: {message}", file=sys.stderr)


class Checkpoint(NamedTuple):
    """A verified checkpoint folder and its state.json (a (path, state) pair where a tuple is expected)."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """The checkpoint folder `path` itself, verified."""
        return cls(Path(path), verify_checkpoint(Path(path)))

    @classmethod
    def find(cls, where: str | Path | Checkpoint, *, log: Callable[[str], None] = _warn) -> Checkpoint:
        """A checkpoint folder, or the newest intact checkpoint of a run folder (a damaged newer one is named in a warning)."""
        if isinstance(where, Checkpoint):
            return where
        found = locate(where, log=log)
        assert found is not None  # locate returns None only for --resume auto
        return cls(*found)

    @classmethod
    def resume(cls, where: str | None, run: RunDir, *, log: Callable[[str], None] = print) -> Checkpoint | None:
        """What --resume names for run: None, 'auto' (its newest intact checkpoint, None if it has none) or a checkpoint folder."""
        found = locate(where, log=log, resume_in=run) if where is not None else None
        return cls(*found) if found is not None else None

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def sharded(self) -> bool:
        return bool(self.state.get("sharded"))

    @property
    def adapters(self) -> dict[str, Any] | None:
        """What an adapter checkpoint (LoRA) was trained over, or None for full weights."""
        return self.state.get("adapters")

    @property
    def run(self) -> RunDir | None:
        """The run folder holding this checkpoint, if it is in one."""
        return RunDir.of_checkpoint(self.path)

    def file(self, name: str) -> Path | None:
        """A file the checkpoint carries (verified on opening: its sha256, and a tokenizer's content), or None."""
        return self.path / name if name in self.state["files"] else None

    @property
    def tokenizer(self) -> Path | None:
        return self.file(TOKENIZER)

    def config(self) -> RunConfig:
        """The run config the checkpoint was saved under, or one line saying it does not fit this largo."""
        try:
            return build_config(self.state["config"])
        except (ConfigError, KeyError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{self.path}/{STATE}: its config is not valid for this largo ({e})") from None

    def weights(self) -> Reader:
        """The layout-aware reader of its tensors."""
        return Reader(self.path, self.state)
