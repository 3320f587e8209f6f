"""DCP (torch.distributed.checkpoint) files of a sharded checkpoint: every rank writes its shards, any number reads them.

Layout inside a sharded step folder (the folder, state.json and the atomic protocol are store.py's):
  dcp/__<rank>_0.distcp   each rank's shards of the model weights and optimizer tensors
  dcp/index.json          DCP's index of chunks as JSON (written by rank 0; see dcp_index.py)
DCP only ever sees tensors: everything else lives in state.json. DCP's own index, a pickle in
DCP's writer, is written and read by largo as checked JSON: opening a sharded checkpoint never
unpickles anything.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from largo.checkpoint.dcp_index import IndexReader, IndexWriter
from largo.checkpoint.store import DCP_DIR
from largo.errors import CheckpointError


def dcp_save(folder: Path, tensors: dict[str, Any]) -> None:
    """Every rank writes its shards of `tensors` (nested dicts of tensors) into folder/dcp; a collective."""
    dcp.save(tensors, storage_writer=IndexWriter(folder / DCP_DIR))


def dcp_load(target: dict[str, Any], path: Path) -> None:
    """Fill `target` in place from checkpoint `path`'s DCP files (resharded to target's layout), one line on mismatch."""
    try:
        with warnings.catch_warnings():  # one process (eval, export, a 1-rank resume) is a case DCP supports but warns about
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(target, storage_reader=IndexReader(path / DCP_DIR), no_dist=not dist.is_initialized())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP wraps per-rank failures in a BaseException; its first line names the tensor
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: sharded checkpoint does not fit this model or is unreadable: {first}") from None
