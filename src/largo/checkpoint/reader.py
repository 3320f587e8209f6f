"""The one layout-aware reader of a verified checkpoint's tensors: replicated safetensors files or sharded DCP files.

Every read of weights or optimizer tensors (resume, eval/generate/export, fine-tuning, consolidation) goes
through Reader, the only place that asks which layout wrote the checkpoint:
  replicated  model.safetensors (weights), optim.safetensors ("<parameter name>/<state key>" tensors)
  sharded     dcp/: DCP loads exactly the requested tensors, resharded to the caller's layout
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from largo.checkpoint.dcp_index import read_index
from largo.checkpoint.sharded import dcp_load
from largo.checkpoint.store import DCP_DIR, check_shapes, load_tensors
from largo.errors import CheckpointError

OPTIM_SEP = "/"  # optim.safetensors keys: "<parameter name>/<state key>" (names hold dots, never slashes)
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64,
              "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class Reader:
    """A verified checkpoint's tensors, whichever layout wrote them; the whole model is never read unless asked for."""

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path, self.sharded = path, bool(state.get("sharded"))

    @cached_property
    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Weight name -> (shape, dtype), from the index or the safetensors header (no tensor is read)."""
        if self.sharded:
            index = read_index(self.path / DCP_DIR).state_dict_metadata
            return {key[len("model."):]: (tuple(meta.size), meta.properties.dtype)
                    for key, meta in index.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
        try:  # a verified checkpoint's file: largo wrote it and its sha256 matches state.json
            with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
                return {k: (tuple(f.get_slice(k).get_shape()), _ST_DTYPES[f.get_slice(k).get_dtype()]) for k in f.keys()}
        except (SafetensorError, OSError, KeyError) as e:
            raise CheckpointError(f"{self.path}/model.safetensors: not a readable safetensors file ({e})") from None

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named weights, and nothing else, in memory (FSDP shards gathered)."""
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            raise CheckpointError(f"{self.path}: holds no weight {unknown[0]!r}")
        if self.sharded:
            target = {"model": {n: torch.empty(self.specs[n][0], dtype=self.specs[n][1]) for n in names}}
            dcp_load(target, self.path)
            return target["model"]
        with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}

    def all_weights(self) -> dict[str, torch.Tensor]:
        """Every weight as one full tensor each (a sharded checkpoint's chunks gathered)."""
        return self.read(list(self.specs)) if self.sharded else load_tensors(self.path / "model.safetensors")

    def load(self, model: dict[str, Any], optim: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(weights, optimizer tensors by parameter name) for templates laid out like the live run.

        Sharded: DCP fills the templates in place, resharded to their layout (DTensor shards or plain tensors).
        Replicated: full tensors from the files, shapes checked against the templates (DTensor shapes are global).
        """
        if self.sharded:
            target = {"model": model, **({"optim": optim} if optim is not None else {})}
            dcp_load(target, self.path)
            return target["model"], target.get("optim", {})
        weights = load_tensors(self.path / "model.safetensors")
        check_shapes(model, weights, self.path)
        tensors: dict[str, dict[str, Any]] = {}
        if optim is not None:
            for name, value in load_tensors(self.path / "optim.safetensors").items():
                fqn, _, key = name.rpartition(OPTIM_SEP)
                tensors.setdefault(fqn, {})[key] = value
        return weights, tensors

    def consolidate(self, out: Path, step: int) -> Path:
        """Write the full model weights as one safetensors file (sharded or not), without building the model."""
        weights = self.all_weights()
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(out),
                  metadata={"largo_checkpoint": str(self.path), "step": str(step)})
        return out
