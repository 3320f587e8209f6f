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

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from largo.checkpoint.dcp_index import IndexReader, IndexWriter, read_index
from largo.checkpoint.store import DCP_DIR, load_tensors
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


class WeightReader:
    """A verified checkpoint's model weights, read a few tensors at a time (never the whole model at once).

    Replicated: tensors come one by one out of model.safetensors (safetensors reads only what is asked for).
    Sharded (FSDP): DCP loads exactly the requested tensors, gathering their chunks from every rank's file.
    """

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path, self.sharded = path, bool(state.get("sharded"))
        if self.sharded:
            index = read_index(path / DCP_DIR).state_dict_metadata
            self.specs = {key[len("model."):]: (tuple(meta.size), meta.properties.dtype)
                          for key, meta in index.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
        else:
            try:  # a verified checkpoint's file: largo wrote it and its sha256 matches state.json
                with safe_open(str(path / "model.safetensors"), framework="pt") as f:
                    self.specs = {k: (tuple(f.get_slice(k).get_shape()), _ST_DTYPES[f.get_slice(k).get_dtype()]) for k in f.keys()}
            except (SafetensorError, OSError, KeyError) as e:
                raise CheckpointError(f"{path}/model.safetensors: not a readable safetensors file ({e})") from None

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors, and nothing else, in memory."""
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            raise CheckpointError(f"{self.path}: holds no weight {unknown[0]!r}")
        if self.sharded:
            target = {"model": {n: torch.empty(self.specs[n][0], dtype=self.specs[n][1]) for n in names}}
            dcp_load(target, self.path)
            return target["model"]
        with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64,
              "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def consolidate(path: Path, out: Path, state: dict[str, Any]) -> Path:
    """Write a verified checkpoint's full model weights as one safetensors file (sharded or not), without building the model."""
    if not state.get("sharded"):
        weights = load_tensors(path / "model.safetensors")
    else:
        index = read_index(path / DCP_DIR).state_dict_metadata
        weights = {key[len("model."):]: torch.empty(meta.size, dtype=meta.properties.dtype)
                   for key, meta in index.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
        target = {"model": weights}
        dcp_load(target, path)
        weights = target["model"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out),
              metadata={"largo_checkpoint": str(path), "step": str(state["step"])})
    return out
